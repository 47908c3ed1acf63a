"""What the drawn images show, counted: a detector's boxes at the drawing threshold, judged per image.

Issue 13 asks that a drawn image box each clear object once with its right name. For each image of the
config's DATASETS.TEST[0] and each threshold this counts the objects boxed with their right name (IoU >= 0.5;
one box per object), the objects missed, and the other boxes drawn: on an object that already has its box
or under another name (IoU >= 0.5), on a part of one (IoU 0.1-0.5), or on background. An image is "clean"
when every object of 32 px and more (box area >= 32 x 32, COCO's "small" limit) has its box and nothing
else is drawn; smaller objects count when boxed, and are not required.

    python benchmarks/drawn_boxes.py --config quickstart.yaml --weights output/quickstart/model_final.pth
    python benchmarks/drawn_boxes.py --thresholds 0.5 0.7 --config quickstart.yaml --weights W INPUT.MIN_SIZE_TEST 384
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Sequence

import cv2
import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shufflenet_det.config import ConfigError, load_config  # noqa: E402
from shufflenet_det.data import (  # noqa: E402
    DatasetCatalog,
    DatasetError,
    UnknownDatasetError,
    add_register_coco_argument,
    register_coco_datasets,
)
from shufflenet_det.detection import build_detector  # noqa: E402
from shufflenet_det.detection.demo import Predictor  # noqa: E402
from shufflenet_det.utils.io import CheckpointError  # noqa: E402

SMALL_AREA = 32 * 32


def judge_image(gt_boxes: torch.Tensor, gt_labels: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor) -> Counter:
    """Counts for one image: ``gt_*`` its objects (XYXY, class), ``boxes`` / ``labels`` the boxes drawn."""
    counts: Counter = Counter()
    iou = box_iou(gt_boxes, boxes) if len(gt_boxes) and len(boxes) else torch.zeros(len(gt_boxes), len(boxes))
    right = (iou >= 0.5) & (gt_labels[:, None] == labels[None, :])
    used = torch.zeros(len(boxes), dtype=torch.bool)
    complete = True
    for index, box in enumerate(gt_boxes):
        size = "small" if (box[2] - box[0]) * (box[3] - box[1]) < SMALL_AREA else "32px+"
        candidates = (right[index] & ~used).nonzero().flatten()
        if len(candidates):
            used[candidates[0]] = True
            counts[f"boxed {size}"] += 1
        else:
            counts[f"missed {size}"] += 1
            complete = complete and size == "small"
    for index in (~used).nonzero().flatten().tolist():
        overlap = float(iou[:, index].max()) if len(gt_boxes) else 0.0
        counts["other: " + ("on an object" if overlap >= 0.5 else "on a part" if overlap >= 0.1 else "background")] += 1
    counts["clean images"] += int(complete and bool(used.all()))
    counts["images"] += 1
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--weights", required=True, help="a trained detector")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8],
                        help="drawing thresholds to count at; before the other options when config overrides follow")
    add_register_coco_argument(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.weights):
        parser.error(f"--weights {args.weights}: no such file (a trained detector, e.g. output/quickstart/model_final.pth)")
    try:
        cfg = load_config(args.config, list(args.opts) + ["MODEL.WEIGHTS", args.weights])
        register_coco_datasets(args.register_coco)
        records = DatasetCatalog.get(cfg.DATASETS.TEST[0])
        predictor = Predictor(build_detector(cfg), cfg.INPUT.FORMAT, None, 0.0)
    except (ConfigError, DatasetError, UnknownDatasetError, CheckpointError) as error:
        parser.error(str(error))
    totals = {threshold: Counter() for threshold in args.thresholds}
    for record in records:
        image = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
        if image is None:
            print(f"{record['file_name']}: not an image OpenCV can read, skipped", file=sys.stderr)
            continue
        output = predictor.detect(image)
        objects = record.get("annotations", [])
        gt_boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in objects)]).reshape(-1, 4)
        gt_labels = torch.tensor([a["category_id"] + 1 for a in objects], dtype=torch.long)
        for threshold, total in totals.items():
            keep = output["scores"] >= threshold
            total.update(judge_image(gt_boxes, gt_labels, output["boxes"][keep], output["labels"][keep]))
    keys = ["clean images", "boxed 32px+", "missed 32px+", "boxed small", "missed small",
            "other: on an object", "other: on a part", "other: background"]
    print(f"{cfg.DATASETS.TEST[0]}, {totals[args.thresholds[0]]['images']} images; boxes drawn from each threshold:")
    print("threshold | " + " | ".join(keys))
    for threshold, total in totals.items():
        print(f"{threshold} | " + " | ".join(str(total[key]) for key in keys))


if __name__ == "__main__":
    main()
