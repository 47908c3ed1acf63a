"""CPU inference latency of the C4 detectors beside torchvision's MobileNet v3 FPN Faster R-CNN.

All models run on the same 480x640 image resized to 600px with the same proposal budget: at most
--pre-nms top-scoring anchors per feature level go into the RPN's NMS (torchvision caps per level;
the C4 models have one level) and --proposals boxes per image come out and go through the box head.
Score thresholds are 0, so every model does the full post-processing (per-class NMS over all RoIs,
then the top 100), as on real images with trained weights. Weights are random.

Each C4 model runs in up to three runtimes: "eager" (PyTorch, the model as built), "deploy" (the
deployment path ``shufflenet_det.deploy.deploy_detector``: conv parts in ONNX Runtime, RoIAlign as
matrix products) and "onnx" (the whole detector exported by ``export_detector``; its parts are not
timed). torchvision's model runs eager. Runs are interleaved between models.
Example: OMP_NUM_THREADS=1 python -m benchmarks.detector_latency --threads 1 --runs 5 --json latency.json
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_fpn

from benchmarks.common import machine_info, time_interleaved, write_json
from shufflenet_det.config.loading import load_config
from shufflenet_det.deploy.detector import OnnxDetector, deploy_detector, detector_onnx_bytes, example_image
from shufflenet_det.detection.detector import build_detector
from shufflenet_det.utils.io import OutputPathError, check_output_file
from shufflenet_det.utils.text_table import format_table

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
BASELINE = "tv_mobilenet_v3_fpn"

# Timed parts of a torchvision GeneralizedRCNN, by module path. In the deploy runtime RoIAlign runs
# inside the box head, chunk by chunk (``roi_pool`` then only passes the proposals on).
PARTS = {"backbone": "backbone", "rpn": "rpn", "roi_pool": "roi_heads.box_roi_pool", "box_head": "roi_heads.box_head"}
# The module whose input has one row per RoI in every runtime.
ROI_COUNTER = "roi_heads.box_predictor"
RUNTIMES = ("eager", "deploy", "onnx")
DEFAULT_RUNTIMES = ("eager", "deploy")


@dataclass
class LatencyResult:
    model: str
    runtime: str
    params_m: float
    median_ms: float
    min_ms: float
    # Process CPU time per run (all threads): on a busy machine, closer to the unloaded latency x threads.
    cpu_median_ms: float
    rois: int
    parts_median_ms: Dict[str, float] = field(default_factory=dict)
    # Deploy / onnx runtimes: largest distance (pixels) of a detection from the nearest eager detection
    # of its class, and the score difference of those pairs (inf: different detection or class counts).
    max_box_difference: Optional[float] = None
    max_score_difference: Optional[float] = None


def build_random_c4_detector(name: str, overrides: Sequence[Any] = ()) -> FasterRCNN:
    """The C4 model ``name`` of ``C4_MODELS`` with random weights and 80 classes at 600px, its config
    changed by ``overrides`` (KEY VALUE ...)."""
    config, model_overrides = C4_MODELS[name]
    cfg = load_config(
        config,
        list(model_overrides)
        + ["MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES]
        + ["INPUT.MIN_SIZE_TEST", MIN_SIZE, "INPUT.MAX_SIZE_TEST", MAX_SIZE]
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
    """torchvision's detector ``name`` with random weights, 80 classes, 600px; ``options`` go to its builder."""
    return TORCHVISION_MODELS[name](
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1, min_size=MIN_SIZE, max_size=MAX_SIZE,
        **options,
    )


def build_benchmark_model(name: str, proposals: int, pre_nms: int) -> FasterRCNN:
    """A random-weight detector on the CPU in eval mode with the shared proposal budget and score threshold 0."""
    if name in C4_MODELS:
        return build_random_c4_detector(
            name,
            ["MODEL.RPN.PRE_NMS_TOPK_TEST", pre_nms, "MODEL.RPN.POST_NMS_TOPK_TEST", proposals]
            + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0, "MODEL.DEVICE", "cpu"],
        ).eval()
    return build_random_torchvision_detector(
        name, rpn_pre_nms_top_n_test=pre_nms, rpn_post_nms_top_n_test=proposals, rpn_score_thresh=0.0,
        box_score_thresh=0.0,
    ).eval()


def in_model_range(name: str, image: torch.Tensor) -> torch.Tensor:
    """A 0-255 image in the value range model ``name`` expects (0-255 ours, 0-1 torchvision's)."""
    return image / 255.0 if name in TORCHVISION_MODELS else image


class PartTimer:
    """Forward hooks that record the wall ms of each part in ``PARTS`` and the RoI count per call."""

    def __init__(self, model: nn.Module) -> None:
        self.times: Dict[str, List[float]] = {part: [] for part in PARTS}
        self.rois = 0
        self.handles = []
        for part, path in PARTS.items():
            try:
                module = model.get_submodule(path)
            except AttributeError:  # a runtime without this part (one exported graph)
                continue
            starts: List[float] = []
            self.handles.append(module.register_forward_pre_hook(lambda *_, s=starts: s.append(time.perf_counter())))
            self.handles.append(module.register_forward_hook(
                lambda *_, s=starts, p=part: self.times[p].append(1000 * (time.perf_counter() - s.pop()))
            ))
        try:
            counter = model.get_submodule(ROI_COUNTER)
        except AttributeError:
            return
        self.handles.append(counter.register_forward_pre_hook(lambda _, inputs: setattr(self, "rois", len(inputs[0]))))

    def clear(self) -> None:
        for times in self.times.values():
            times.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def detection_differences(model: nn.Module, deployed: nn.Module, image: torch.Tensor) -> Tuple[float, float]:
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
    runtimes: Sequence[str] = DEFAULT_RUNTIMES,
    roi_chunk: int = 4,
) -> List[LatencyResult]:
    """Latency of each named model in each of ``runtimes`` (torchvision's: eager only), batch 1,
    ``threads`` CPU threads; ``roi_chunk`` is the deploy runtime's RoIs per box-head call."""
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    unknown = [runtime for runtime in runtimes if runtime not in RUNTIMES]
    if unknown or not runtimes:
        raise ValueError(f"unknown runtime(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(RUNTIMES)}")
    if runs < 1 or warmup < 0 or threads < 1 or proposals < 1 or pre_nms < proposals or roi_chunk < 1:
        raise ValueError(
            "need runs >= 1, warmup >= 0, threads >= 1, roi chunk >= 1 and 1 <= proposals <= pre-NMS count"
        )
    torch.set_num_threads(threads)
    candidates: Dict[Tuple[str, str], nn.Module] = {}
    differences: Dict[Tuple[str, str], Tuple[float, float]] = {}
    images: Dict[str, torch.Tensor] = {}
    params: Dict[str, float] = {}
    for name in names:
        torch.manual_seed(0)
        model = build_benchmark_model(name, proposals, pre_nms)
        image = images[name] = in_model_range(name, example_image(*IMAGE_SIZE))
        params[name] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        if "eager" in runtimes or name in TORCHVISION_MODELS:
            candidates[(name, "eager")] = model
        if name in TORCHVISION_MODELS:
            continue
        if "deploy" in runtimes:
            candidates[(name, "deploy")] = deploy_detector(model, threads=threads, roi_chunk=roi_chunk)
        if "onnx" in runtimes:
            candidates[(name, "onnx")] = OnnxDetector(detector_onnx_bytes(model, image), threads=threads)
        for key in [(name, "deploy"), (name, "onnx")]:
            if key in candidates:
                differences[key] = detection_differences(model, candidates[key], image)
    parts = {key: PartTimer(model) for key, model in candidates.items()}
    calls = {key: (lambda m=model, i=images[key[0]]: m([i])) for key, model in candidates.items()}
    try:
        with torch.inference_mode():
            timings = time_interleaved(calls, runs, warmup, after_warmup=lambda: [p.clear() for p in parts.values()])
    finally:
        for timer in parts.values():
            timer.remove()
    results = []
    for (name, runtime), timing in timings.items():
        box, score = differences.get((name, runtime), (None, None))
        results.append(LatencyResult(
            model=name, runtime=runtime, params_m=params[name],
            median_ms=round(timing.median_ms, 1), min_ms=round(timing.min_ms, 1),
            cpu_median_ms=round(statistics.median(timing.cpu_ms), 1),
            rois=parts[(name, runtime)].rois,
            parts_median_ms={p: round(statistics.median(t), 1) for p, t in parts[(name, runtime)].times.items() if t},
            max_box_difference=box, max_score_difference=score,
        ))
    return results


def speed_ratios(results: Sequence[LatencyResult]) -> List[str]:
    """One line per C4 result: its speed relative to the baseline in eager (median and fastest runs)."""
    base = next((r for r in results if r.model == BASELINE and r.runtime == "eager"), None)
    if base is None:
        return []
    return [
        f"{r.model} {r.runtime}: {base.median_ms / r.median_ms:.2f}x the speed of {BASELINE} eager "
        f"(fastest runs {base.min_ms / r.min_ms:.2f}x)"
        for r in results
        if r.model in C4_MODELS
    ]


def results_table(results: Sequence[LatencyResult]) -> str:
    """The results as a pipe table (deploy rows: RoIAlign is timed inside the box head)."""
    headers = ["model", "runtime", "params (M)", "RoIs", "median ms", "min ms", "CPU ms", "backbone ms", "RPN ms",
               "RoIAlign ms", "box head ms", "max box / score diff vs eager"]
    rows = [
        [r.model, r.runtime, r.params_m, r.rois or None, r.median_ms, r.min_ms, r.cpu_median_ms]
        + [r.parts_median_ms.get(part) for part in PARTS]
        + ["" if r.max_box_difference is None else f"{r.max_box_difference:.1e} / {r.max_score_difference:.1e}"]
        for r in results
    ]
    return format_table(headers, rows, digits=1)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME",
                        help=f"models to time (default: %(default)s); choose from {', '.join(MODELS)}")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per model; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default: %(default)s)")
    parser.add_argument("--proposals", type=int, default=300,
                        help="RPN proposals per image after NMS, for every model (default: %(default)s)")
    parser.add_argument("--pre-nms", type=int, default=6000,
                        help="top anchors per feature level kept before the RPN's NMS (default: %(default)s)")
    parser.add_argument("--runtimes", nargs="+", default=list(DEFAULT_RUNTIMES), metavar="RUNTIME",
                        help=f"runtimes of the C4 models (default: %(default)s); choose from {', '.join(RUNTIMES)}")
    parser.add_argument("--roi-chunk", type=int, default=4,
                        help="deploy runtime: RoIs per call of the box head (default: %(default)s)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.json:
            check_output_file(args.json, args.overwrite)
        machine = machine_info(args.threads)
        print(f"{machine}; {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} image resized to {MIN_SIZE}px shorter side; "
              f"{args.proposals} proposals (pre-NMS {args.pre_nms} per level); median of {args.runs} runs after "
              f"{args.warmup} warm-up", flush=True)
        results = benchmark(args.models, threads=args.threads, runs=args.runs, warmup=args.warmup,
                            proposals=args.proposals, pre_nms=args.pre_nms, runtimes=args.runtimes,
                            roi_chunk=args.roi_chunk)
    except (ValueError, OutputPathError) as error:  # bad arguments or configs (ConfigError is a ValueError)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(results_table(results))
    print("\n".join(speed_ratios(results)))
    machine["load_average_end"] = machine_info().get("load_average")
    print(f"load average at the end: {machine['load_average_end']}")
    write_json(args.json, {"settings": vars(args), "machine": machine, "results": [asdict(r) for r in results]},
               overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
