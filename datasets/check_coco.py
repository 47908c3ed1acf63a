#!/usr/bin/env python
"""Check a COCO install under $DETECTRON2_DATASETS (default ./datasets): which annotation files and image
folders exist, how many images and annotations they hold, whether sampled images open, and how to get
what is missing. Exit code 0 when every split checked is complete, 1 otherwise."""

import argparse
import os
import sys

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shufflenet_det.data.builtin import COCO_SPLITS, check_coco, datasets_root  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=None, help="datasets root (default: $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument(
        "--splits", nargs="+", default=["coco_2017_train", "coco_2017_val"], metavar="SPLIT",
        help=f"splits to check (default: coco_2017_train coco_2017_val); any of: {', '.join(COCO_SPLITS)}",
    )
    parser.add_argument("--samples", type=int, default=5, help="images per split to decode (default 5)")
    args = parser.parse_args(argv)
    root = args.root if args.root is not None else datasets_root()
    print(f"datasets root: {os.path.abspath(root)}")
    try:
        reports = check_coco(root, args.splits, args.samples)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for report in reports:
        print(f"{report.name}: {'OK' if report.ok else 'INCOMPLETE'}")
        for line in report.lines:
            print(f"  {line}")
    incomplete = [report.name for report in reports if not report.ok]
    if incomplete:
        print(f"incomplete: {', '.join(incomplete)} (see datasets/README.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
