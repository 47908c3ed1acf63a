"""Side by side: how well our C4 detector and torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` learn.

Both are trained from scratch on the same batches (one loader, the config's DATASETS.TRAIN), with the
same optimizer, schedule, image sizes and RPN / RoI sampling (all from the config), then evaluated
with pycocotools on DATASETS.TEST. Besides COCO AP the script prints two diagnostics on the test
split: the RPN's recall of the ground-truth boxes (IoU >= 0.5 and 0.7) among its first 100 / 300
proposals, and the box head's accuracy when it classifies the ground-truth boxes themselves, which
separates "the proposals miss the objects" from "the head names them wrongly".

    python benchmarks/detection_learning.py --config quickstart.yaml --seeds 0,1
    python benchmarks/detection_learning.py --config quickstart.yaml --models ours SOLVER.MAX_ITER 100
    python benchmarks/detection_learning.py --peer-opts "SOLVER.OPTIMIZER SGD SOLVER.BASE_LR 0.01 SOLVER.WEIGHT_DECAY 0.0001"

Trailing KEY VALUE pairs override the config for both models (SOLVER.*, INPUT.*, RPN / ROI_HEADS
sampling); model-specific keys (MODEL.SHUFFLENET.*) only change ours. ``--peer-opts`` gives
torchvision's model overrides of its own on top (the same data, batches and number of images, another
optimizer or rate): a recipe that suits one model may not suit the other, and each should be judged
at its best as well as side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shufflenet_det.config import load_config  # noqa: E402
from shufflenet_det.data import (  # noqa: E402
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from shufflenet_det.detection.detector import build_detector, detector_options  # noqa: E402
from shufflenet_det.detection.runner import detection_losses  # noqa: E402
from shufflenet_det.engine import build_lr_scheduler, build_optimizer  # noqa: E402
from shufflenet_det.evaluation import COCOEvaluator, inference_on_dataset  # noqa: E402

MODELS = ("ours", "torchvision")


class RGBUnitInput(nn.Module):
    """Feeds torchvision's detector (float RGB in 0-1) from our loader's uint8 images in INPUT.FORMAT."""

    def __init__(self, detector: nn.Module, input_format: str) -> None:
        super().__init__()
        self.detector = detector
        self.flip = input_format == "BGR"

    def convert(self, image: torch.Tensor) -> torch.Tensor:
        image = image.float() / 255.0
        return image.flip(0) if self.flip else image

    def forward(self, images: List[torch.Tensor], targets: Any = None) -> Any:
        return self.detector([self.convert(image) for image in images], targets)


# ``detector_options`` keys that torchvision's FasterRCNN takes under the same names and meanings.
PEER_OPTIONS = (
    "min_size", "max_size", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
    "rpn_post_nms_top_n_test", "rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh",
    "rpn_batch_size_per_image", "rpn_positive_fraction", "box_score_thresh", "box_nms_thresh",
    "box_detections_per_img", "box_fg_iou_thresh", "box_bg_iou_thresh", "box_batch_size_per_image",
    "box_positive_fraction", "bbox_reg_weights",
)


def build_peer(cfg: Any) -> nn.Module:
    """torchvision's MobileNet v3 FPN detector with the config's sizes, sampling and thresholds (read as
    for our detector, by ``detector_options``), trainable BN."""
    options = detector_options(cfg)
    peer = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1,
        **{name: options[name] for name in PEER_OPTIONS},
    )
    return RGBUnitInput(peer, cfg.INPUT.FORMAT)


def set_test_size(model: nn.Module, cfg: Any, training: bool) -> None:
    """torchvision's transform uses its last training size in eval mode: give the peer the test size."""
    if isinstance(model, RGBUnitInput):
        transform = model.detector.transform
        transform.min_size = tuple(cfg.INPUT.MIN_SIZE_TRAIN) if training else (cfg.INPUT.MIN_SIZE_TEST,)
        transform.max_size = cfg.INPUT.MAX_SIZE_TRAIN if training else cfg.INPUT.MAX_SIZE_TEST


def train(cfg: Any, model: nn.Module, iterations: int, log_period: int) -> float:
    """Train ``model`` in place on the config's loader; returns seconds per iteration."""
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    loader = build_detection_train_loader(cfg)
    model.train()
    set_test_size(model, cfg, training=True)
    start = time.perf_counter()
    for iteration, batch in zip(range(iterations), loader):
        losses = detection_losses(model, batch)
        total = sum(losses.values())
        if not math.isfinite(total.item()):
            raise FloatingPointError(f"loss {total.item()} at iteration {iteration}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        scheduler.step()
        if (iteration + 1) % log_period == 0 or iteration + 1 == iterations:
            terms = "  ".join(f"{name}={value.item():.3f}" for name, value in losses.items())
            logging.info("iter %d  total=%.3f  %s", iteration + 1, total.item(), terms)
    return (time.perf_counter() - start) / max(iterations, 1)


@torch.no_grad()
def diagnose(cfg: Any, model: nn.Module, dataset_name: str) -> Dict[str, float]:
    """RPN recall of the ground truth among the first 100 / 300 proposals, and the box head's accuracy
    on the ground-truth boxes, over the dataset's images."""
    detector = model.detector if isinstance(model, RGBUnitInput) else model
    ground_truth = _ground_truth(dataset_name)
    model.eval()
    set_test_size(model, cfg, training=False)
    found = {(k, t): 0 for k in (100, 300) for t in (0.5, 0.7)}
    num_gt = correct = 0
    for batch in build_detection_test_loader(cfg, dataset_name):
        item = batch[0]
        if item["image_id"] not in ground_truth:
            continue
        boxes, labels = ground_truth[item["image_id"]]
        image = item["image"]
        if isinstance(model, RGBUnitInput):
            image = model.convert(image)
        images, _ = detector.transform([image])
        scale_y = images.image_sizes[0][0] / image.shape[1]
        scale_x = images.image_sizes[0][1] / image.shape[2]
        scaled = boxes * torch.tensor([scale_x, scale_y, scale_x, scale_y])
        features = detector.backbone(images.tensors)
        proposals = detector.rpn(images, features)[0][0]
        for (k, threshold) in found:
            if len(proposals):
                best = box_iou(scaled, proposals[:k]).max(dim=1).values
                found[(k, threshold)] += int((best >= threshold).sum())
        pooled = detector.roi_heads.box_roi_pool(features, [scaled], images.image_sizes)
        logits, _ = detector.roi_heads.box_predictor(detector.roi_heads.box_head(pooled))
        correct += int((logits.argmax(dim=1) == labels + 1).sum())
        num_gt += len(labels)
    result = {f"recall@{k}_iou{t}": 100.0 * n / max(num_gt, 1) for (k, t), n in found.items()}
    result["gt_box_accuracy"] = 100.0 * correct / max(num_gt, 1)
    return result


def _ground_truth(dataset_name: str) -> Dict[Any, Tuple[torch.Tensor, torch.Tensor]]:
    """image id -> (XYXY boxes, contiguous labels) of its non-crowd objects, for images that have any."""
    table = {}
    for record in DatasetCatalog.get(dataset_name):
        kept = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        if kept:
            boxes = torch.tensor([a["bbox"] for a in kept], dtype=torch.float32).reshape(-1, 4)
            boxes[:, 2:] += boxes[:, :2]  # XYWH -> XYXY
            table[record["image_id"]] = (boxes, torch.tensor([a["category_id"] for a in kept], dtype=torch.int64))
    return table


def evaluate(cfg: Any, model: nn.Module, output_dir: Path) -> Dict[str, float]:
    name = cfg.DATASETS.TEST[0]
    set_test_size(model, cfg, training=False)
    evaluator = COCOEvaluator.from_metadata(MetadataCatalog.get(name), str(output_dir), distributed=False)
    results = inference_on_dataset(model, build_detection_test_loader(cfg, name), evaluator)
    return dict(results["bbox"])


def run(args: argparse.Namespace) -> List[Dict[str, Any]]:
    rows = []
    for seed in args.seeds:
        cfg = load_config(args.config, list(args.opts) + ["SEED", str(seed)])
        if cfg.SHUFFLENET_DET.TORCH_THREADS > 0:
            torch.set_num_threads(cfg.SHUFFLENET_DET.TORCH_THREADS)
        for name in args.models:
            torch.manual_seed(seed)
            own_opts = args.peer_opts if name == "torchvision" else []
            model_cfg = load_config(args.config, list(args.opts) + own_opts + ["SEED", str(seed)]) if own_opts else cfg
            model = build_detector(model_cfg) if name == "ours" else build_peer(model_cfg)
            if name == "ours" and model_cfg.SHUFFLENET_DET.CHANNELS_LAST:
                model = model.to(memory_format=torch.channels_last)
            seconds = train(model_cfg, model, model_cfg.SOLVER.MAX_ITER, args.log_period)
            row: Dict[str, Any] = {"model": name, "seed": seed, "s_per_iter": round(seconds, 3),
                                   "own_opts": " ".join(own_opts)}
            row.update(evaluate(model_cfg, model, Path(args.output_dir) / f"{name}_seed{seed}"))
            row.update(diagnose(model_cfg, model, model_cfg.DATASETS.TEST[0]))
            rows.append(row)
            logging.info("%s", json.dumps(row))
    return rows


def print_table(rows: Sequence[Dict[str, Any]]) -> None:
    columns = ["model", "own_opts", "seed", "AP", "AP50", "AP75", "APs", "APm", "APl", "recall@100_iou0.5",
               "recall@300_iou0.7", "gt_box_accuracy", "s_per_iter"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.1f}" if isinstance(row.get(c), float) and c != "s_per_iter" else str(row.get(c, "")) for c in columns]
        print("| " + " | ".join(cells) + " |")


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="quickstart.yaml")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--peer-opts", default="", help='"KEY VALUE ..." for torchvision\'s model only')
    parser.add_argument("--log-period", type=int, default=50)
    parser.add_argument("--output-dir", default="output/detection_learning")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(list(argv) or None)
    args.models = args.models.split(",")
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.peer_opts = shlex.split(args.peer_opts)
    if len(args.peer_opts) % 2:
        parser.error("--peer-opts: KEY VALUE pairs expected")
    if set(args.models) - set(MODELS):
        parser.error(f"--models: choose from {', '.join(MODELS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = run(args)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
