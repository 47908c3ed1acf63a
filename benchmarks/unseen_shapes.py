#!/usr/bin/env python
"""A small COCO-format detection dataset of shapes this project never trains on (issue 13).

It checks that the quickstart recipe (configs/quickstart.yaml) is not tuned to our own synthetic
generator, so it differs from it in each respect issue 13 lists: shapes (star, hexagon, ellipse,
chevron, crescent), colours (every other image a single-channel grayscale PNG, the others pastel
objects on striped, checkered or gradient backgrounds), object sizes (12-45% of the shorter side),
image sizes (shorter side 240-360, aspect 1-1.7 either way) and category ids (7, 13, 21, 34, 55).
Only numpy and OpenCV, nothing from shufflenet_det: the data shares no code, so no bug, with what
it checks. Boxes are tight around each object's visible pixels; later objects hide at most 20% of
earlier ones. (datasets/synthetic*/ is git-ignored.)

    D=datasets/synthetic_unseen  # also: --num-train 240 --num-val 60 --seed 0 --overwrite
    python benchmarks/unseen_shapes.py --root $D

then README's two quickstart steps on it through --register-coco (docs/quickstart.md has the commands).
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

import cv2
import numpy as np

CATEGORIES = {7: "star", 13: "hexagon", 21: "ellipse", 34: "chevron", 55: "crescent"}
OUTPUTS = ("train", "val", "annotations")
MAX_COVERED = 0.2  # the largest fraction of an object that objects drawn later may hide
# Unit-size outlines, scaled to fit a circle of diameter 1 so every shape fits the same margin.
_STAR_T, _HEX_T = np.arange(10) * np.pi / 5, np.arange(6) * np.pi / 3
STAR = np.stack([np.cos(_STAR_T), np.sin(_STAR_T)], 1) * np.where(np.arange(10) % 2, 0.2, 0.5)[:, None]
HEXAGON = np.stack([np.cos(_HEX_T), np.sin(_HEX_T)], 1) * 0.5
CHEVRON = np.array([[-0.5, -0.5], [0, -0.5], [0.5, 0], [0, 0.5], [-0.5, 0.5], [0, 0]]) / np.sqrt(2)


def shape_mask(name, hw, center, size, rng):
    """The boolean mask of one shape, drawn without anti-aliasing: exactly the pixels it covers."""
    mask = np.zeros(hw, np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    c = tuple(int(round(v)) for v in center)
    if name == "ellipse":
        axes = (int(size / 2), int(size / 2 * rng.uniform(0.35, 0.7)))
        cv2.ellipse(mask, c, axes, np.degrees(angle), 0, 360, 1, -1)
    elif name == "crescent":  # a disc with an offset, smaller disc cut out of it
        r = size / 2
        cv2.circle(mask, c, int(r), 1, -1)
        cut = np.array(center) + 0.45 * r * np.array([np.cos(angle), np.sin(angle)])
        cv2.circle(mask, tuple(int(round(v)) for v in cut), int(0.8 * r), 0, -1)
    else:
        unit = {"star": STAR, "hexagon": HEXAGON, "chevron": CHEVRON}[name]
        rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        cv2.fillPoly(mask, [np.round(unit @ rot * size + center).astype(np.int32)], 1)
    return mask > 0


def background(rng, h, w, channels):
    """Dark, muted two-tone stripes, checkerboard or gradient, so the light objects stand out."""
    a, b = rng.uniform(20, 110, (2, channels))
    y, x = np.mgrid[:h, :w].astype(np.float32)
    kind, t = rng.integers(3), rng.uniform(0, np.pi)
    if kind == 0:
        weight = ((x * np.cos(t) + y * np.sin(t)) // rng.uniform(5, 20)) % 2
    elif kind == 1:
        weight = (x // (cell := rng.integers(12, 41)) + y // cell) % 2
    else:
        proj = x * np.cos(2 * t) + y * np.sin(2 * t)
        weight = (proj - proj.min()) / np.ptp(proj)
    return a + (b - a) * weight[..., None]


def make_image(rng, gray):
    """(HxWxC uint8 image, [(category id, visible mask)])."""
    short, aspect = int(rng.integers(240, 361)), rng.uniform(1.0, 1.7)
    h, w = (short, round(short * aspect)) if rng.random() < 0.5 else (round(short * aspect), short)
    image = background(rng, h, w, 1 if gray else 3)
    labels = np.zeros((h, w), np.int16)  # which object (1-based) each pixel shows; 0 = background
    objects, areas, visible = [], [], []  # category ids; full and still-visible pixel counts
    for _ in range(rng.integers(1, 7)):
        for _attempt in range(20):  # crowded images simply end up with fewer objects
            size = rng.uniform(0.12, 0.45) * short
            center = rng.uniform(size / 2 + 1, [w - size / 2 - 1, h - size / 2 - 1])
            cat = list(CATEGORIES)[rng.integers(len(CATEGORIES))]
            mask = shape_mask(CATEGORIES[cat], (h, w), center, size, rng)
            hidden = np.bincount(labels[mask], minlength=len(areas) + 1)[1:]
            if all(a - v + x <= MAX_COVERED * a for a, v, x in zip(areas, visible, hidden)):
                break
        else:
            continue
        if gray:  # far from the level of any object it covers, so touching objects stay apart
            under = image[mask & (labels > 0)].mean() if hidden.any() else rng.uniform(150, 250)
            image[mask] = rng.uniform(150, 180) if under > 200 else rng.uniform(220, 250)
        else:  # pastel: light, weakly saturated colours of any hue
            hsv = np.uint8([[[rng.integers(180), rng.integers(60, 130), rng.integers(215, 256)]]])
            image[mask] = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
        visible = [v - x for v, x in zip(visible, hidden)] + [int(mask.sum())]
        areas.append(int(mask.sum()))
        objects.append(cat)
        labels[mask] = len(objects)
    image = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    if gray and rng.random() < 0.5:  # half the grayscale images: dark objects on a light background
        image = 255 - image
    return image, [(cat, labels == k + 1) for k, cat in enumerate(objects)]


def annotation(ann_id, image_id, cat, mask):
    ys, xs = np.nonzero(mask)
    contours = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    return {
        "id": ann_id, "image_id": image_id, "category_id": cat, "iscrowd": 0, "area": int(mask.sum()),
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
        "segmentation": [c.ravel().tolist() for c in contours if len(c) >= 3],
    }


def write_split(root, split, num_images, seed):
    os.makedirs(os.path.join(root, split))
    images, annotations = [], []
    for i in range(num_images):
        # One generator per image: an image does not depend on how many others are made.
        rng = np.random.default_rng([seed, OUTPUTS.index(split), i])
        gray = i % 2 == 1  # a single-channel PNG: the loader must convert it
        image, objects = make_image(rng, gray)
        file_name = f"{i:06d}.png"
        if not cv2.imwrite(os.path.join(root, split, file_name), image[..., 0] if gray else image):
            raise OSError(f"cannot write {os.path.join(root, split, file_name)}")
        images.append({"id": i + 1, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        annotations += [annotation(len(annotations) + k + 1, i + 1, c, m) for k, (c, m) in enumerate(objects)]
    categories = [{"id": k, "name": v, "supercategory": "shape"} for k, v in CATEGORIES.items()]
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return len(annotations)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --root")
    args = parser.parse_args(argv)
    if min(args.num_train, args.num_val) < 1 or args.seed < 0:
        parser.error("--num-train and --num-val must be at least 1, --seed at least 0")
    root = os.path.abspath(args.root)
    existing = [name for name in OUTPUTS if os.path.exists(os.path.join(root, name))]
    if existing and not args.overwrite:
        print(f"error: {root} already holds {'/, '.join(existing)}/; pass --overwrite to replace", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(root), exist_ok=True)
    # Write next to root, then move into place: an interrupted run leaves no half dataset behind.
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.", dir=os.path.dirname(root))
    try:
        splits = {"train": args.num_train, "val": args.num_val}
        counts = [write_split(tmp, split, n, args.seed) for split, n in splits.items()]
        os.makedirs(root, exist_ok=True)
        for name in OUTPUTS:
            if os.path.exists(os.path.join(root, name)):
                os.replace(os.path.join(root, name), os.path.join(tmp, name + ".old"))
            os.replace(os.path.join(tmp, name), os.path.join(root, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.num_train} train images ({counts[0]} objects) and {args.num_val} val ({counts[1]}) to {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
