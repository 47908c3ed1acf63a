#!/usr/bin/env python
"""Check a COCO install under $DETECTRON2_DATASETS (default ./datasets): which annotation files and image
folders exist, how many images and annotations they hold, whether sampled images open, and how to get
what is missing. Exit code 0 when every split checked is complete, 1 otherwise."""

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass, field
from typing import List

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shufflenet_det.data import DatasetMapper, ImageReadError  # noqa: E402
from shufflenet_det.data.builtin import COCO_SPLITS, CocoSplit, coco_missing, datasets_root  # noqa: E402


@dataclass
class SplitReport:
    name: str
    ok: bool = True
    lines: List[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.ok = False
        self.lines.append(text)


def check_split(split: CocoSplit, root: str, num_samples: int = 5, seed: int = 0) -> SplitReport:
    """Check that the split's JSON parses, its image folder holds every listed file and sampled images decode
    at their annotated size. Missing pieces come with the archive that provides them."""
    report = SplitReport(split.name)
    json_path = os.path.abspath(os.path.join(root, split.json_file))
    image_dir = os.path.abspath(os.path.join(root, split.image_dir))
    for line in coco_missing(split, root):
        report.problem(line)
    if not os.path.isfile(json_path):
        return report
    try:
        with open(json_path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
        images = data["images"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        report.problem(f"{json_path} is not a readable COCO file ({type(error).__name__}: {error}); download it again")
        return report
    report.lines.append(
        f"{json_path}: {len(images)} images, {len(data.get('annotations') or [])} annotations, "
        f"{len(data.get('categories') or [])} categories"
    )
    if not os.path.isdir(image_dir):
        return report
    on_disk = set(os.listdir(image_dir))
    present = [image for image in images if image["file_name"] in on_disk]
    missing = [image["file_name"] for image in images if image["file_name"] not in on_disk]
    if missing:
        report.problem(
            f"{len(missing)} of {len(images)} image files are missing from {image_dir}/ (e.g. {', '.join(missing[:3])}); "
            f"unzip {split.image_archive} there again"
        )
    else:
        report.lines.append(f"{image_dir}/: all {len(images)} image files present")
    samples = random.Random(seed).sample(present, min(num_samples, len(present)))
    mapper = DatasetMapper(is_train=False)  # the checks, and messages, that loading for training or testing gives
    bad = []
    for image in samples:
        try:
            mapper({"file_name": os.path.join(image_dir, image["file_name"]), "height": image["height"],
                    "width": image["width"], "image_id": image.get("id")})
        except ImageReadError as error:
            bad.append(str(error))
    if bad:
        report.problem(f"{len(bad)} of {len(samples)} sampled images are broken: {'; '.join(bad)}")
    elif samples:
        report.lines.append(f"{len(samples)} sampled images decode at their annotated size")
    return report


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
    unknown = [name for name in args.splits if name not in COCO_SPLITS]
    if unknown:
        print(f"error: unknown split(s) {', '.join(unknown)}; choose from {', '.join(COCO_SPLITS)}", file=sys.stderr)
        return 2
    reports = [check_split(COCO_SPLITS[name], root, args.samples) for name in args.splits]
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
