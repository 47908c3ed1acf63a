"""CPU inference latency of the C4 detectors beside torchvision's MobileNet v3 FPN Faster R-CNN.

All models run on the same image at the same input size with the same proposal budget: at most
``pre_nms`` top-scoring anchors per feature level go into the RPN's NMS (torchvision applies this cap
per level; the C4 models have one level) and ``proposals`` boxes per image come out of it and go
through the box head. Score thresholds are 0 so that every model does the full post-processing
(per-class NMS over all RoIs, then the top 100), as on real images with trained weights.
"""

from __future__ import annotations

import logging
import platform
import statistics
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_fpn

from ..config.loading import load_config
from .detector import build_detector

IMAGE_SIZE = (480, 640)  # height, width: resized to 600 x 800 by every model
MIN_SIZE, MAX_SIZE = 600, 1000
NUM_CLASSES = 80

# Our detectors: benchmark name -> (config, overrides).
C4_MODELS = {
    "shufflenet_0.5x": ("shufflenet_1x_frcnn", ["MODEL.SHUFFLENET.WIDTH_MULT", 0.5]),
    "shufflenet_1x": ("shufflenet_1x_frcnn", []),
    "shufflenet_2x": ("shufflenet_2x_frcnn", []),
    "mobilenet_v1": ("mobilenet_v1_frcnn", []),
}
TORCHVISION_MODELS = {"tv_mobilenet_v3_fpn": fasterrcnn_mobilenet_v3_large_fpn}
MODELS = tuple(C4_MODELS) + tuple(TORCHVISION_MODELS)
DEFAULT_MODELS = ("shufflenet_1x", "shufflenet_2x", "mobilenet_v1", "tv_mobilenet_v3_fpn")

# Timed parts of a torchvision GeneralizedRCNN, by module path.
PARTS = {"backbone": "backbone", "rpn": "rpn", "roi_pool": "roi_heads.box_roi_pool", "box_head": "roi_heads.box_head"}


@dataclass
class LatencyResult:
    model: str
    params_m: float
    median_ms: float
    min_ms: float
    # Process CPU time per run (all threads): on a busy machine, closer to the unloaded latency x threads.
    cpu_median_ms: float
    runs: int
    threads: int
    rois: int
    parts_median_ms: Dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def build_benchmark_model(name: str, proposals: int, pre_nms: int) -> FasterRCNN:
    """A random-weight detector in eval mode with the shared proposal budget and score threshold 0."""
    if name in C4_MODELS:
        config, overrides = C4_MODELS[name]
        cfg = load_config(
            config,
            list(overrides)
            + [
                "MODEL.WEIGHTS", "",
                "MODEL.RPN.PRE_NMS_TOPK_TEST", pre_nms,
                "MODEL.RPN.POST_NMS_TOPK_TEST", proposals,
                "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
                "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES,
                "INPUT.MIN_SIZE_TEST", MIN_SIZE,
                "INPUT.MAX_SIZE_TEST", MAX_SIZE,
                "MODEL.DEVICE", "cpu",
            ],
        )
        # Random weights are the point here: silence the advice about training from scratch.
        detection_logger = logging.getLogger("shufflenet_det.detection")
        level = detection_logger.level
        detection_logger.setLevel(logging.ERROR)
        try:
            return build_detector(cfg).eval()
        finally:
            detection_logger.setLevel(level)
    if name in TORCHVISION_MODELS:
        return TORCHVISION_MODELS[name](
            weights=None,
            weights_backbone=None,
            num_classes=NUM_CLASSES + 1,
            min_size=MIN_SIZE,
            max_size=MAX_SIZE,
            rpn_pre_nms_top_n_test=pre_nms,
            rpn_post_nms_top_n_test=proposals,
            rpn_score_thresh=0.0,
            box_score_thresh=0.0,
        ).eval()
    raise ValueError(f"unknown benchmark model '{name}'; choose from {', '.join(MODELS)}")


def benchmark_image(name: str, seed: int = 0) -> torch.Tensor:
    """The fixed 480x640 test image, in the value range the model expects (0-255 ours, 0-1 torchvision's)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, *IMAGE_SIZE), generator=generator, dtype=torch.uint8).float()
    return image / 255.0 if name in TORCHVISION_MODELS else image


def measure_latency(
    model: nn.Module, image: torch.Tensor, runs: int, warmup: int
) -> tuple[List[float], List[float], Dict[str, List[float]], int]:
    """Wall-clock and CPU ms of ``runs`` forward passes after ``warmup`` ones, wall ms of each part, RoIs per image."""
    part_times: Dict[str, List[float]] = {part: [] for part in PARTS}
    rois = [0]
    handles = []
    for part, path in PARTS.items():
        module = model.get_submodule(path)
        starts: List[float] = []

        def start(_module, inputs, starts=starts, part=part):
            if part == "box_head":
                rois[0] = inputs[0].shape[0]
            starts.append(time.perf_counter())

        def stop(_module, _inputs, _output, starts=starts, part=part):
            part_times[part].append(1000 * (time.perf_counter() - starts.pop()))

        handles += [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]
    totals, cpu_totals = [], []
    try:
        with torch.inference_mode():
            for index in range(warmup + runs):
                begin, cpu_begin = time.perf_counter(), time.process_time()
                model([image])
                if index >= warmup:
                    totals.append(1000 * (time.perf_counter() - begin))
                    cpu_totals.append(1000 * (time.process_time() - cpu_begin))
    finally:
        for handle in handles:
            handle.remove()
    return totals, cpu_totals, {part: times[warmup:] for part, times in part_times.items()}, rois[0]


def benchmark(
    names: Sequence[str],
    threads: int = 2,
    runs: int = 5,
    warmup: int = 1,
    proposals: int = 300,
    pre_nms: int = 6000,
    report: Callable[[LatencyResult], None] = lambda result: None,
) -> List[LatencyResult]:
    """Latency of each named model (see ``MODELS``), batch 1, on ``threads`` CPU threads."""
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if runs < 1 or warmup < 0 or threads < 1 or proposals < 1 or pre_nms < proposals:
        raise ValueError("need runs >= 1, warmup >= 0, threads >= 1 and 1 <= proposals <= pre-NMS count")
    torch.set_num_threads(threads)
    results = []
    for name in names:
        torch.manual_seed(0)
        model = build_benchmark_model(name, proposals, pre_nms)
        totals, cpu_totals, parts, rois = measure_latency(model, benchmark_image(name), runs, warmup)
        result = LatencyResult(
            model=name,
            params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            median_ms=round(statistics.median(totals), 1),
            min_ms=round(min(totals), 1),
            cpu_median_ms=round(statistics.median(cpu_totals), 1),
            runs=runs,
            threads=threads,
            rois=rois,
            parts_median_ms={part: round(statistics.median(times), 1) for part, times in parts.items()},
        )
        report(result)
        results.append(result)
    return results


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def markdown_table(results: Sequence[LatencyResult]) -> str:
    lines = [
        "| model | params (M) | RoIs | median ms | min ms | CPU ms | backbone ms | RPN ms | RoIAlign ms "
        "| box head ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        parts = r.parts_median_ms
        lines.append(
            f"| {r.model} | {r.params_m} | {r.rois} | {r.median_ms} | {r.min_ms} | {r.cpu_median_ms} "
            f"| {parts['backbone']} | {parts['rpn']} | {parts['roi_pool']} | {parts['box_head']} |"
        )
    return "\n".join(lines)
