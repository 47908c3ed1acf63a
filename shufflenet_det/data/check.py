"""Check a COCO installation under the datasets root: what exists, what is missing and how to get it."""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import List

import cv2

from .builtin import COCO_SPLITS, CocoSplit


@dataclass
class SplitReport:
    name: str
    ok: bool = True
    lines: List[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.ok = False
        self.lines.append(text)


def check_coco_split(split: CocoSplit, root: str, num_samples: int = 5, seed: int = 0) -> SplitReport:
    """Check one split: its JSON parses, its image folder holds every listed file, sampled images decode
    at their annotated size. Missing pieces come with the archive that provides them."""
    report = SplitReport(split.name)
    json_path = os.path.abspath(os.path.join(root, split.json_file))
    image_dir = os.path.abspath(os.path.join(root, split.image_dir))
    coco_dir = os.path.abspath(os.path.join(root, "coco"))
    if not os.path.isfile(json_path):
        report.problem(f"missing annotations {json_path}: download {split.annotation_archive} and unpack it in {coco_dir}")
    if not os.path.isdir(image_dir):
        report.problem(f"missing images {image_dir}/: download {split.image_archive} and unzip it in {coco_dir}")
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
    missing = [image["file_name"] for image in images if image["file_name"] not in on_disk]
    if missing:
        report.problem(
            f"{len(missing)} of {len(images)} image files are missing from {image_dir}/ (e.g. {', '.join(missing[:3])}); "
            f"unzip {split.image_archive} there again"
        )
    else:
        report.lines.append(f"{image_dir}/: all {len(images)} image files present")
    present = [image for image in images if image["file_name"] in on_disk]
    samples = random.Random(seed).sample(present, min(num_samples, len(present)))
    bad = []
    for image in samples:
        pixels = cv2.imread(os.path.join(image_dir, image["file_name"]), cv2.IMREAD_COLOR)
        if pixels is None:
            bad.append(f"{image['file_name']} does not decode")
        elif pixels.shape[:2] != (image["height"], image["width"]):
            bad.append(f"{image['file_name']} is {pixels.shape[1]}x{pixels.shape[0]}, annotated {image['width']}x{image['height']}")
    if bad:
        report.problem(f"{len(bad)} of {len(samples)} sampled images are broken: {'; '.join(bad)}")
    elif samples:
        report.lines.append(f"{len(samples)} sampled images decode at their annotated size")
    return report


def check_coco(root: str, splits: List[str], num_samples: int = 5) -> List[SplitReport]:
    """Reports for the named builtin splits (see ``COCO_SPLITS``); raises ValueError for unknown names."""
    unknown = [name for name in splits if name not in COCO_SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(COCO_SPLITS)}")
    return [check_coco_split(COCO_SPLITS[name], root, num_samples) for name in splits]
