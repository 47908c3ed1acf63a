"""A tiny ImageNet-layout dataset of colored shapes, for smoke tests and examples.

    python -m shufflenet_det.classification.synthetic datasets/synthetic_classification

writes ``ROOT/train/<class>/*.JPEG`` and ``ROOT/val/<class>/*.JPEG``. Each class is a shape with its
own hue (disk, square, triangle, horizontal stripes, ...) at a random position and size on a noisy
background, so a small network learns it in a few epochs on a CPU, also from random crops.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw


def _box(rng: np.random.Generator, size: int):
    extent = rng.uniform(0.45, 0.8) * size
    x0, y0 = rng.uniform(0, size - extent, 2)
    return x0, y0, x0 + extent, y0 + extent


def _disk(draw, rng, size, color):
    draw.ellipse(_box(rng, size), fill=color)


def _square(draw, rng, size, color):
    draw.rectangle(_box(rng, size), fill=color)


def _triangle(draw, rng, size, color):
    x0, y0, x1, y1 = _box(rng, size)
    draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)


def _stripes(draw, rng, size, color):
    period = int(rng.integers(6, 11))
    offset = int(rng.integers(0, period))
    for y in range(offset - period, size, period):
        draw.rectangle((0, y, size, y + period // 2 - 1), fill=color)


def _ring(draw, rng, size, color):
    draw.ellipse(_box(rng, size), outline=color, width=max(2, size // 10))


def _cross(draw, rng, size, color):
    x0, y0, x1, y1 = _box(rng, size)
    width = (x1 - x0) / 4
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    draw.rectangle((cx - width / 2, y0, cx + width / 2, y1), fill=color)
    draw.rectangle((x0, cy - width / 2, x1, cy + width / 2), fill=color)


# name: (draw function, RGB color)
SHAPES: Dict[str, tuple] = {
    "disk": (_disk, (220, 40, 40)),
    "square": (_square, (40, 180, 60)),
    "triangle": (_triangle, (50, 80, 230)),
    "stripes": (_stripes, (230, 200, 40)),
    "ring": (_ring, (200, 60, 220)),
    "cross": (_cross, (40, 200, 210)),
}


def draw_shape_image(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size`` x ``size`` RGB image of ``shape`` (a key of ``SHAPES``) on a noisy gray background."""
    draw_function, color = SHAPES[shape]
    background = rng.normal(rng.uniform(90, 160), 25, (size, size, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    jittered = tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in color)
    draw_function(ImageDraw.Draw(image), rng, size, jittered)
    return image


def make_shapes_dataset(
    root: Union[str, Path],
    num_classes: int = 4,
    train_per_class: int = 40,
    val_per_class: int = 10,
    image_size: int = 64,
    seed: int = 0,
    splits: Optional[Sequence[str]] = None,
) -> Path:
    """Write the dataset under ``root`` (``train/`` and ``val/``, JPEG files) and return ``root``.

    The first ``num_classes`` shapes of ``SHAPES`` are the classes. The same arguments always write
    the same images. Refuses to write into a non-empty split folder.
    """
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
                image = draw_shape_image(shape, image_size, rng)
                image.save(folder / shape / f"{shape}_{index:04d}.JPEG", quality=90)
    return root


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write a tiny ImageNet-layout dataset of colored shapes.")
    parser.add_argument("root", help="output folder (train/ and val/ are created in it)")
    parser.add_argument("--num-classes", type=int, default=4)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
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
