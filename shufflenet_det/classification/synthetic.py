"""A tiny ImageNet-layout dataset of colored shapes for smoke tests (each class a shape in its own hue at a random
place and size): ``python -m shufflenet_det.classification.synthetic ROOT`` writes ROOT/{train,val}/<shape>/*.JPEG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

# The classes, in order, and their RGB colors.
SHAPES = {
    "disk": (220, 40, 40),
    "square": (40, 180, 60),
    "triangle": (50, 80, 230),
    "stripes": (230, 200, 40),
    "ring": (200, 60, 220),
    "cross": (40, 200, 210),
}


def draw_shape_image(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size`` x ``size`` RGB image of ``shape`` (a key of ``SHAPES``) on a noisy gray background."""
    background = rng.normal(rng.uniform(90, 160), 25, (size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    color = tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in SHAPES[shape])
    if shape == "stripes":
        period = int(rng.integers(6, 11))
        for y in range(int(rng.integers(0, period)) - period, size, period):
            draw.rectangle((0, y, size, y + period // 2 - 1), fill=color)
        return image
    extent = rng.uniform(0.45, 0.8) * size
    x0, y0 = rng.uniform(0, size - extent, 2)
    x1, y1 = x0 + extent, y0 + extent
    if shape == "disk":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "ring":
        draw.ellipse((x0, y0, x1, y1), outline=color, width=max(2, size // 10))
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)
    else:  # cross
        half, cx, cy = (x1 - x0) / 8, (x0 + x1) / 2, (y0 + y1) / 2
        draw.rectangle((cx - half, y0, cx + half, y1), fill=color)
        draw.rectangle((x0, cy - half, x1, cy + half), fill=color)
    return image


def make_shapes_dataset(root: Union[str, Path], num_classes: int = 4, train_per_class: int = 40,
                        val_per_class: int = 10, image_size: int = 64, seed: int = 0,
                        splits: Optional[Sequence[str]] = None) -> Path:
    """Write the first ``num_classes`` shapes' ``train/`` and ``val/`` JPEGs under ``root`` (the same
    arguments always write the same images) and return ``root``. Refuses a non-empty split folder."""
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be 1..{len(SHAPES)}, got {num_classes}")
    root = Path(root)
    counts = {"train": train_per_class, "val": val_per_class}
    for split in splits or ("train", "val"):
        folder = root / split
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not empty: choose another folder")
        rng = np.random.default_rng([seed, *split.encode()])
        for shape in list(SHAPES)[:num_classes]:
            (folder / shape).mkdir(parents=True, exist_ok=True)
            for index in range(counts[split]):
                draw_shape_image(shape, image_size, rng).save(folder / shape / f"{shape}_{index:04d}.JPEG", quality=90)
    return root


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write a tiny ImageNet-layout dataset of colored shapes.")
    parser.add_argument("root", help="output folder (train/ and val/ are created in it)")
    defaults = {"num-classes": 4, "train-per-class": 40, "val-per-class": 10, "image-size": 64, "seed": 0}
    for option, default in defaults.items():
        parser.add_argument(f"--{option}", type=int, default=default)
    args = parser.parse_args(argv)
    try:
        root = make_shapes_dataset(
            args.root, args.num_classes, args.train_per_class, args.val_per_class, args.image_size, args.seed
        )
    except (ValueError, FileExistsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {root}/train and {root}/val")
    return 0


if __name__ == "__main__":
    sys.exit(main())
