"""CPU inference latency of the C4 detectors beside torchvision's MobileNet v3 FPN Faster R-CNN.

All models run on the same image at the same input size with the same proposal budget: at most
``pre_nms`` top-scoring anchors per feature level go into the RPN's NMS (torchvision applies this cap
per level; the C4 models have one level) and ``proposals`` boxes per image come out of it and go
through the box head. Score thresholds are 0 so that every model does the full post-processing
(per-class NMS over all RoIs, then the top 100), as on real images with trained weights.

Each C4 model runs in up to three runtimes: "eager" (the model as built, PyTorch eager), "deploy" (the
deployment path, ``shufflenet_det.deploy.detector.deploy_detector``: trunk, RPN head and per-RoI head
in ONNX Runtime with BatchNorm folded, RoIAlign as matrix products, NMS stopped at the proposals kept,
the rest torchvision's) and "onnx" (the whole detector exported by ``export_detector``, in ONNX
Runtime; its parts are not timed). The torchvision model runs eager. Runs are interleaved (one
forward of each model in turn), so that load from other processes hits all models alike.
"""

from __future__ import annotations

import logging
import platform
import statistics
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

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

# Timed parts of a torchvision GeneralizedRCNN, by module path. In the deploy runtime RoIAlign runs
# inside the box head, chunk by chunk (``roi_pool`` then only passes the proposals on).
PARTS = {"backbone": "backbone", "rpn": "rpn", "roi_pool": "roi_heads.box_roi_pool", "box_head": "roi_heads.box_head"}
# The module whose input has one row per RoI in every runtime.
_ROI_COUNTER = "roi_heads.box_predictor"
RUNTIMES = ("eager", "deploy", "onnx")
DEFAULT_RUNTIMES = ("eager", "deploy")


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
    runtime: str = "eager"
    # Deploy / onnx runtimes: largest distance (pixels) of a detection from the nearest eager detection
    # of its class on the benchmark image, and the score difference of those pairs (inf: different
    # detection or class counts); None for eager runs.
    max_box_difference: Optional[float] = None
    max_score_difference: Optional[float] = None

    def as_dict(self) -> dict:
        return asdict(self)


def build_random_c4_detector(name: str, overrides: Sequence[Any] = ()) -> FasterRCNN:
    """The C4 benchmark model ``name`` (see ``C4_MODELS``) with random weights and 80 classes at 600px,
    its config changed by ``overrides`` (KEY VALUE ...)."""
    config, model_overrides = C4_MODELS[name]
    cfg = load_config(
        config,
        list(model_overrides)
        + [
            "MODEL.WEIGHTS", "",
            "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES,
            "INPUT.MIN_SIZE_TEST", MIN_SIZE,
            "INPUT.MAX_SIZE_TEST", MAX_SIZE,
        ]
        + list(overrides),
    )
    # Random weights are the point here: silence the advice about training from scratch.
    detection_logger = logging.getLogger("shufflenet_det.detection")
    level = detection_logger.level
    detection_logger.setLevel(logging.ERROR)
    try:
        return build_detector(cfg)
    finally:
        detection_logger.setLevel(level)


def build_random_torchvision_detector(name: str, **options: Any) -> FasterRCNN:
    """torchvision's detector ``name`` (see ``TORCHVISION_MODELS``) with random weights, 80 classes, 600px;
    ``options`` go to its builder (e.g. ``rpn_post_nms_top_n_test``)."""
    return TORCHVISION_MODELS[name](
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1, min_size=MIN_SIZE, max_size=MAX_SIZE,
        **options,
    )


def build_benchmark_model(name: str, proposals: int, pre_nms: int) -> FasterRCNN:
    """A random-weight detector in eval mode with the shared proposal budget and score threshold 0."""
    if name in C4_MODELS:
        return build_random_c4_detector(
            name,
            [
                "MODEL.RPN.PRE_NMS_TOPK_TEST", pre_nms,
                "MODEL.RPN.POST_NMS_TOPK_TEST", proposals,
                "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
                "MODEL.DEVICE", "cpu",
            ],
        ).eval()
    if name in TORCHVISION_MODELS:
        return build_random_torchvision_detector(
            name,
            rpn_pre_nms_top_n_test=pre_nms,
            rpn_post_nms_top_n_test=proposals,
            rpn_score_thresh=0.0,
            box_score_thresh=0.0,
        ).eval()
    raise ValueError(f"unknown benchmark model '{name}'; choose from {', '.join(MODELS)}")


def random_image(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """A random float image [3, height, width] with integer values in 0-255."""
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8).float()


def in_model_range(name: str, image: torch.Tensor) -> torch.Tensor:
    """A 0-255 image in the value range model ``name`` expects (0-255 ours, 0-1 torchvision's)."""
    return image / 255.0 if name in TORCHVISION_MODELS else image


def benchmark_image(name: str, seed: int = 0) -> torch.Tensor:
    """The fixed 480x640 test image, in the value range the model expects."""
    return in_model_range(name, random_image(*IMAGE_SIZE, torch.Generator().manual_seed(seed)))


class _PartTimer:
    """Forward hooks that record the wall time of each part in ``PARTS`` and the RoI count per call."""

    def __init__(self, model: nn.Module) -> None:
        self.times: Dict[str, List[float]] = {part: [] for part in PARTS}
        self.rois = 0
        self.handles = []
        for part, path in PARTS.items():
            starts: List[float] = []
            try:
                module = model.get_submodule(path)
            except AttributeError:  # a runtime without this part (one exported graph)
                continue

            def start(_module, _inputs, starts=starts):
                starts.append(time.perf_counter())

            def stop(_module, _inputs, _output, starts=starts, part=part):
                self.times[part].append(1000 * (time.perf_counter() - starts.pop()))

            self.handles += [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]
        try:
            self.handles.append(model.get_submodule(_ROI_COUNTER).register_forward_pre_hook(self._count))
        except AttributeError:
            pass

    def _count(self, _module, inputs) -> None:
        self.rois = inputs[0].shape[0]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _Timed:
    """One model under test: its forward, hooks and the times of its timed runs."""

    def __init__(self, name: str, runtime: str, model: nn.Module, image: torch.Tensor) -> None:
        self.name, self.runtime, self.model, self.image = name, runtime, model, image
        self.parts = _PartTimer(model)
        self.totals: List[float] = []
        self.cpu_totals: List[float] = []

    def run(self, timed: bool) -> None:
        begin, cpu_begin = time.perf_counter(), time.process_time()
        self.model([self.image])
        if timed:
            self.totals.append(1000 * (time.perf_counter() - begin))
            self.cpu_totals.append(1000 * (time.process_time() - cpu_begin))
        else:  # warm-up: drop its part times
            for times in self.parts.times.values():
                times.clear()


def _interleaved(entries: Sequence[_Timed], runs: int, warmup: int) -> None:
    try:
        with torch.inference_mode():
            for index in range(warmup + runs):
                for entry in entries:
                    entry.run(timed=index >= warmup)
    finally:
        for entry in entries:
            entry.parts.remove()


def measure_latency(
    model: nn.Module, image: torch.Tensor, runs: int, warmup: int
) -> tuple[List[float], List[float], Dict[str, List[float]], int]:
    """Wall-clock and CPU ms of ``runs`` forward passes after ``warmup`` ones, wall ms of each part, RoIs per image."""
    entry = _Timed("model", "eager", model, image)
    _interleaved([entry], runs, warmup)
    return entry.totals, entry.cpu_totals, entry.parts.times, entry.parts.rois


def _differences(model: nn.Module, deployed: nn.Module, image: torch.Tensor) -> Tuple[float, float]:
    """How far ``deployed``'s detections on ``image`` are from ``model``'s: the largest distance (pixels)
    from a detection to the nearest one of the same class in the other output, and the largest score
    difference of those pairs; inf when the detection counts or class counts differ.

    Matching instead of comparing row by row: with random weights many scores nearly tie, and float
    rounding may swap the order of such detections.
    """
    with torch.inference_mode():
        expected, got = model([image])[0], deployed([image])[0]
    if expected["boxes"].shape != got["boxes"].shape or not torch.equal(
        expected["labels"].sort().values, got["labels"].sort().values
    ):
        return float("inf"), float("inf")
    if len(got["boxes"]) == 0:
        return 0.0, 0.0
    distance = (expected["boxes"][:, None] - got["boxes"][None]).abs().amax(dim=2)
    distance[expected["labels"][:, None] != got["labels"][None]] = float("inf")
    nearest = distance.min(dim=1)
    score = (expected["scores"] - got["scores"][nearest.indices]).abs().max().item()
    return nearest.values.max().item(), score


def benchmark(
    names: Sequence[str],
    threads: int = 2,
    runs: int = 5,
    warmup: int = 1,
    proposals: int = 300,
    pre_nms: int = 6000,
    report: Callable[[LatencyResult], None] = lambda result: None,
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
    roi_chunk: int = 4,
) -> List[LatencyResult]:
    """Latency of each named model (see ``MODELS``) in each of ``runtimes``, batch 1, ``threads`` CPU threads.

    torchvision's models run eager only. ``roi_chunk`` is the deploy runtime's RoIs per box-head call.
    ``report`` is called with each result as soon as all are measured.
    """
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    unknown = [runtime for runtime in runtimes if runtime not in RUNTIMES]
    if unknown or not runtimes:
        given = ", ".join(unknown) or "(none given)"
        raise ValueError(f"unknown runtime(s) {given}; choose from {', '.join(RUNTIMES)}")
    if runs < 1 or warmup < 0 or threads < 1 or proposals < 1 or pre_nms < proposals or roi_chunk < 1:
        raise ValueError(
            "need runs >= 1, warmup >= 0, threads >= 1, roi chunk >= 1 and 1 <= proposals <= pre-NMS count"
        )
    torch.set_num_threads(threads)
    entries: List[_Timed] = []
    differences: Dict[Tuple[str, str], Tuple[float, float]] = {}
    params: Dict[str, float] = {}
    for name in names:
        torch.manual_seed(0)
        model = build_benchmark_model(name, proposals, pre_nms)
        image = benchmark_image(name)
        params[name] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        if "eager" in runtimes or name in TORCHVISION_MODELS:
            entries.append(_Timed(name, "eager", model, image))
        if name not in C4_MODELS:
            continue
        from ..deploy.detector import OnnxDetector, deploy_detector, detector_onnx_bytes

        if "deploy" in runtimes:
            deployed = deploy_detector(model, threads=threads, roi_chunk=roi_chunk)
            differences[(name, "deploy")] = _differences(model, deployed, image)
            entries.append(_Timed(name, "deploy", deployed, image))
        if "onnx" in runtimes:
            exported = OnnxDetector(detector_onnx_bytes(model, image), threads=threads)
            differences[(name, "onnx")] = _differences(model, exported, image)
            entries.append(_Timed(name, "onnx", exported, image))
    _interleaved(entries, runs, warmup)
    results = []
    for entry in entries:
        box, score = differences.get((entry.name, entry.runtime), (None, None))
        result = LatencyResult(
            model=entry.name,
            params_m=params[entry.name],
            median_ms=round(statistics.median(entry.totals), 1),
            min_ms=round(min(entry.totals), 1),
            cpu_median_ms=round(statistics.median(entry.cpu_totals), 1),
            runs=runs,
            threads=threads,
            rois=entry.parts.rois,
            parts_median_ms={part: round(statistics.median(t), 1) for part, t in entry.parts.times.items() if t},
            runtime=entry.runtime,
            max_box_difference=box,
            max_score_difference=score,
        )
        report(result)
        results.append(result)
    return results


def speed_ratios(results: Sequence[LatencyResult], reference: str = "tv_mobilenet_v3_fpn") -> List[str]:
    """One line per C4 result: its speed relative to ``reference`` in eager (median and fastest runs)."""
    references = [r for r in results if r.model == reference and r.runtime == "eager"]
    if not references:
        return []
    base = references[0]
    return [
        f"{r.model} {r.runtime}: {base.median_ms / r.median_ms:.2f}x the speed of {reference} eager "
        f"(fastest runs {base.min_ms / r.min_ms:.2f}x)"
        for r in results
        if r.model in C4_MODELS
    ]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def markdown_table(results: Sequence[LatencyResult]) -> str:
    """The results as a Markdown table (deploy rows: RoIAlign is timed inside the box head)."""
    lines = [
        "| model | runtime | params (M) | RoIs | median ms | min ms | CPU ms | backbone ms | RPN ms | RoIAlign ms "
        "| box head ms | max box / score diff vs eager |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        parts = r.parts_median_ms
        difference = (
            "" if r.max_box_difference is None else f"{r.max_box_difference:.1e} / {r.max_score_difference:.1e}"
        )
        part_cells = " | ".join(str(parts.get(part, "-")) for part in ("backbone", "rpn", "roi_pool", "box_head"))
        lines.append(
            f"| {r.model} | {r.runtime} | {r.params_m} | {r.rois or '-'} | {r.median_ms} | {r.min_ms} "
            f"| {r.cpu_median_ms} | {part_cells} | {difference} |"
        )
    return "\n".join(lines)
