#!/usr/bin/env python
"""Generate the synthetic shapes dataset (COCO format) that the builtin names synthetic_train and
synthetic_val load. Default folder: $DETECTRON2_DATASETS/synthetic (./datasets/synthetic).
An existing dataset is verified and kept; --overwrite replaces it."""

import argparse
import os
import sys

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shufflenet_det.data.builtin import SYNTHETIC_DIRNAME, datasets_root  # noqa: E402
from shufflenet_det.data.catalog import DatasetError  # noqa: E402
from shufflenet_det.data.synthetic import SyntheticParams, ensure_synthetic_dataset, generate_synthetic_coco  # noqa: E402

_DEFAULTS = SyntheticParams()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="output folder (default: $DETECTRON2_DATASETS/synthetic)")
    parser.add_argument("--num-train", type=int, default=_DEFAULTS.num_train, help=f"train images (default {_DEFAULTS.num_train})")
    parser.add_argument("--num-val", type=int, default=_DEFAULTS.num_val, help=f"val images (default {_DEFAULTS.num_val})")
    parser.add_argument("--seed", type=int, default=_DEFAULTS.seed, help=f"random seed (default {_DEFAULTS.seed})")
    parser.add_argument("--difficulty", type=float, default=_DEFAULTS.difficulty,
                        help=f"0..1: contrast, textures, rotation, occlusion (default {_DEFAULTS.difficulty})")
    parser.add_argument("--clutter", type=float, default=_DEFAULTS.clutter,
                        help=f"0..1: distractors and background noise (default {_DEFAULTS.clutter})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing synthetic dataset")
    args = parser.parse_args(argv)
    root = args.root if args.root is not None else os.path.join(datasets_root(), SYNTHETIC_DIRNAME)
    options = dict(num_train=args.num_train, num_val=args.num_val, seed=args.seed, difficulty=args.difficulty, clutter=args.clutter)
    try:
        if args.overwrite:
            manifest = generate_synthetic_coco(root, overwrite=True, **options)
        else:
            manifest = ensure_synthetic_dataset(root, SyntheticParams(**options))
    except (DatasetError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"synthetic dataset ready in {os.path.abspath(root)}")
    for split, stats in manifest["stats"].items():
        sizes = ", ".join(f"{size} {stats['per_size'].get(size, 0)}" for size in ("small", "medium", "large"))
        print(
            f"  {split}: {stats['images']} images, {stats['annotations']} objects ({sizes}), "
            f"{stats['crowd_annotations']} crowd regions, {stats['images_without_objects']} images without objects"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
