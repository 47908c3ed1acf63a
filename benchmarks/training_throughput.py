"""Training and inference throughput of the C4 detectors beside torchvision's MobileNet v3 FPN detector.

Every model gets the same random batch (480x640 images with 1-10 random boxes each, resized by the
model to 600px) already on the device, so the figures are the models' own speed with data loading
excluded (``tools/train_net.py`` logs the data loader's share of a real run). Training runs forward,
backward and an SGD step under autocast in --amp-dtype. Peak memory: the CUDA allocator's peak over
the timed steps on a GPU; on a CPU (Linux, with --cpu-peak-memory) the peak resident memory of the
timed steps above the process's before the model was built. A *variant* says how our detectors
compute: ``SHUFFLENET_DET.CONV_IMPL`` plus the options ``cl`` (channels_last), ``compile``
(``torch.compile`` on the per-RoI box head) and ``recompute`` (``SHUFFLENET_DET.RECOMPUTE_BOX_HEAD``),
joined by "+", e.g. ``dense+cl``; torchvision's model takes only ``cl``. Example (one GPU;
docs/engine.md has the figures):
  python -m benchmarks.training_throughput --models shufflenet_1x shufflenet_2x tv_mobilenet_v3_fpn \
      --variants modules folded+cl dense+cl --json throughput.json
Trailing KEY VALUE pairs change our detectors' configs (not torchvision's model), e.g. to compare
recipes: ... --models shufflenet_1x MODEL.RPN.PRE_NMS_TOPK_TRAIN 2000
--mult-adds prints the multiply-adds per image by detector part instead (CPU, no timing).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN

from benchmarks.common import machine_info, time_interleaved, write_json
from benchmarks.detector_latency import (
    C4_MODELS,
    IMAGE_SIZE,
    MAX_SIZE,
    MIN_SIZE,
    MODELS,
    NUM_CLASSES,
    TORCHVISION_MODELS,
    build_random_c4_detector,
    build_random_torchvision_detector,
    in_model_range,
)
from benchmarks.host_memory import peak_resident_bytes, reset_peak_resident, resident_bytes, track_freed_memory
from shufflenet_det.analysis import count_mult_adds_while
from shufflenet_det.config import load_config, split_trailing_overrides
from shufflenet_det.detection.detector import check_detector_config
from shufflenet_det.modeling import CONV_IMPLS
from shufflenet_det.utils.io import OutputPathError, check_output_file
from shufflenet_det.utils.text_table import format_table

VARIANT_OPTIONS = ("cl", "compile", "recompute")


@dataclass(frozen=True)
class Variant:
    conv_impl: str = "auto"
    channels_last: bool = False
    compile: bool = False
    recompute: bool = False

    @classmethod
    def parse(cls, text: str) -> "Variant":
        """``"dense+cl+compile"`` -> Variant("dense", True, True); the conv form may be left out ("cl")."""
        parts = [part for part in text.split("+") if part]
        impls = [part for part in parts if part in CONV_IMPLS]
        unknown = [part for part in parts if part not in CONV_IMPLS and part not in VARIANT_OPTIONS]
        if unknown or len(impls) > 1 or not parts:
            raise ValueError(
                f"bad variant '{text}': join at most one of {', '.join(CONV_IMPLS)} with options "
                f"{', '.join(VARIANT_OPTIONS)} by '+', e.g. 'dense+cl'"
            )
        return cls(impls[0] if impls else "auto", "cl" in parts, "compile" in parts, "recompute" in parts)

    def __str__(self) -> str:
        options = [name for name, on in zip(VARIANT_OPTIONS, (self.channels_last, self.compile, self.recompute)) if on]
        return "+".join([self.conv_impl] + options)


@dataclass
class ThroughputResult:
    model: str
    variant: str
    batch: int
    train_images_per_s: float
    train_ms_per_iter: float
    train_peak_gib: float
    infer_images_per_s: Optional[float]
    infer_batch1_ms: Optional[float]


def build_training_model(
    name: str, variant: Variant, device: torch.device, rois_per_image: int = 512, overrides: Sequence = ()
) -> FasterRCNN:
    """A random-weight detector in training mode with 80 classes at 600px, as ``variant`` says; our
    detectors' configs are further changed by ``overrides`` (KEY VALUE ..., e.g. to compare recipes)."""
    if name in C4_MODELS:
        model = build_random_c4_detector(
            name,
            [
                "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", rois_per_image,
                "INPUT.MIN_SIZE_TRAIN", (MIN_SIZE,),
                "INPUT.MAX_SIZE_TRAIN", MAX_SIZE,
                "SHUFFLENET_DET.CONV_IMPL", variant.conv_impl,
                "SHUFFLENET_DET.RECOMPUTE_BOX_HEAD", variant.recompute,
                "MODEL.DEVICE", str(device),
            ]
            + list(overrides),
        )
    elif name in TORCHVISION_MODELS:
        model = build_random_torchvision_detector(name, box_batch_size_per_image=rois_per_image).to(device)
    else:
        raise ValueError(f"unknown benchmark model '{name}'; choose from {', '.join(MODELS)}")
    if variant.channels_last:
        model.to(memory_format=torch.channels_last)
    if variant.compile:
        model.roi_heads.box_head = torch.compile(model.roi_heads.box_head)
    return model.train()


def random_batch(
    name: str, batch: int, device: torch.device, seed: int = 0
) -> Tuple[List[torch.Tensor], List[Dict[str, torch.Tensor]]]:
    """``batch`` random 480x640 images (0-255 for ours, 0-1 for torchvision's) with 1-10 random boxes each."""
    generator = torch.Generator().manual_seed(seed)
    height, width = IMAGE_SIZE
    images, targets = [], []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8).float()
        images.append(in_model_range(name, image).to(device))
        count = int(torch.randint(1, 11, (1,), generator=generator))
        corner = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
        size = (0.05 + 0.5 * torch.rand(count, 2, generator=generator)) * torch.tensor([width, height])
        far = torch.minimum(corner + size, torch.tensor([width - 1.0, height - 1.0]))
        boxes = torch.cat([corner, far], dim=1)
        labels = torch.randint(1, NUM_CLASSES + 1, (count,), generator=generator)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def _median_ms(run: Callable[[], object], iterations: int, warmup: int, device: torch.device, **options) -> float:
    """Median wall ms of ``run`` (device synchronized); ``options`` go to ``time_interleaved``."""
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return time_interleaved({"run": run}, iterations, warmup, synchronize, **options)["run"].median_ms


def measure_training(
    model: nn.Module,
    images: List[torch.Tensor],
    targets: List[Dict[str, torch.Tensor]],
    iterations: int,
    warmup: int,
    amp_dtype: Optional[torch.dtype],
    baseline_bytes: Optional[int] = None,
) -> Tuple[float, float]:
    """Median ms per training step (forward, backward, SGD step) and the peak GiB of the timed steps:
    on a GPU the allocator's peak, on a CPU the peak resident memory above ``baseline_bytes`` (taken
    before the model was built, with ``track_freed_memory()`` on; benchmarks/host_memory.py); NaN if unknown."""
    device = images[0].device
    parameters = [p for p in model.parameters() if p.requires_grad]
    # A tiny learning rate keeps random weights from diverging within the timed steps.
    optimizer = torch.optim.SGD(parameters, lr=1e-5, momentum=0.9)
    losses: List[torch.Tensor] = []

    def step() -> None:
        with _autocast(device, amp_dtype):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[:] = [loss.detach()]

    peak_was_reset = [device.type == "cuda"]

    def reset_peak() -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        else:
            peak_was_reset[0] = reset_peak_resident()

    median = _median_ms(step, iterations, warmup, device, after_warmup=reset_peak)
    if not torch.isfinite(losses[0]):
        raise RuntimeError(f"non-finite training loss {losses[0].item()} in the benchmark")
    if device.type == "cuda":
        return median, torch.cuda.max_memory_allocated(device) / 2**30
    high = peak_resident_bytes()
    if high is None or baseline_bytes is None or not peak_was_reset[0]:
        return median, float("nan")
    return median, (high - baseline_bytes) / 2**30


@torch.no_grad()
def measure_inference(
    model: nn.Module, images: List[torch.Tensor], iterations: int, warmup: int, amp_dtype: Optional[torch.dtype]
) -> float:
    """Median ms of an eval-mode forward of ``images`` (one batch)."""
    device = images[0].device

    def forward() -> None:
        with _autocast(device, amp_dtype):
            model(images)

    was_training = model.training
    model.eval()
    try:
        return _median_ms(forward, iterations, warmup, device)
    finally:
        model.train(was_training)


def mult_adds_per_image(
    name: str, training: bool = True, rois_per_image: int = 512, overrides: Sequence = ()
) -> Dict[str, int]:
    """Conv + linear multiply-adds per benchmark image (480x640 resized to 600px), by detector part
    (``backbone.body``, ``rpn.head``, ``roi_heads.box_head``, ...): the forward work of a training step
    (``rois_per_image`` sampled RoIs) or of inference (the RPN's test proposals). A backward pass costs
    about twice its forward. Counted on the CPU with random weights, grouped convs as built."""
    model = build_training_model(name, Variant("modules"), torch.device("cpu"), rois_per_image, overrides)
    model.train(training)
    images, targets = random_batch(name, 1, torch.device("cpu"))
    with torch.no_grad():
        by_layer = count_mult_adds_while(model, lambda: model(images, targets) if training else model(images))
    by_part: Dict[str, int] = {}
    for layer, count in by_layer.items():
        part = ".".join(layer.split(".")[:2])
        by_part[part] = by_part.get(part, 0) + count
    return dict(sorted(by_part.items(), key=lambda item: -item[1]))


def profile_training(
    name: str, variant: Variant, device: torch.device, batch: int = 16, steps: int = 3,
    amp_dtype: Optional[torch.dtype] = torch.bfloat16, row_limit: int = 25, overrides: Sequence = (),
) -> str:
    """A table of the operators that take the most time over ``steps`` training steps (after two warm-up
    steps), sorted by device time on a GPU and by CPU time otherwise: where an iteration's time goes."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = build_training_model(name, variant, device, overrides=overrides)
    images, targets = random_batch(name, batch, device)
    measure_training(model, images, targets, iterations=1, warmup=1, amp_dtype=amp_dtype)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        measure_training(model, images, targets, iterations=steps, warmup=0, amp_dtype=amp_dtype)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=row_limit)


def benchmark_throughput(
    names: Sequence[str],
    variants: Sequence[Variant],
    device: torch.device,
    batch: int = 16,
    iterations: int = 10,
    warmup: int = 3,
    amp_dtype: Optional[torch.dtype] = torch.bfloat16,
    report: Callable[[ThroughputResult], None] = lambda result: None,
    overrides: Sequence = (),
    inference: bool = True,
    cpu_peak_memory: bool = False,
) -> List[ThroughputResult]:
    """Training and inference throughput of each model under each variant (torchvision's model: the
    variants' distinct channels_last settings only; ``overrides`` change our detectors' configs only;
    ``inference`` False skips the inference timing). A variant that fails is reported and skipped.
    On a CPU, peak memory is measured only with ``cpu_peak_memory``, which makes glibc return freed
    memory at once (``track_freed_memory``) for the rest of the process and slows CPU steps: time and
    measure memory in separate runs."""
    track_memory = device.type == "cpu" and cpu_peak_memory and track_freed_memory()
    if batch < 1 or iterations < 1 or warmup < 0:
        raise ValueError("need batch >= 1, iterations >= 1 and warmup >= 0")
    results = []
    for name in names:
        if name in TORCHVISION_MODELS:
            model_variants = sorted({Variant("modules", v.channels_last) for v in variants}, key=str)
        else:
            model_variants = list(variants)
        for variant in model_variants:
            try:
                result = _benchmark_one(
                    name, variant, device, batch, iterations, warmup, amp_dtype, overrides, inference, track_memory
                )
            except Exception as error:  # noqa: BLE001  (one failing variant must not end the whole run)
                logging.getLogger(__name__).error("%s %s failed: %s: %s", name, variant, type(error).__name__, error)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            report(result)
            results.append(result)
    return results


def _benchmark_one(
    name: str, variant: Variant, device: torch.device, batch: int, iterations: int, warmup: int,
    amp_dtype: Optional[torch.dtype], overrides: Sequence, inference: bool, track_memory: bool,
) -> ThroughputResult:
    torch.manual_seed(0)
    baseline = resident_bytes() if track_memory else None
    model = build_training_model(name, variant, device, overrides=overrides)
    images, targets = random_batch(name, batch, device)
    batch_ms = single_ms = None
    try:
        train_ms, peak = measure_training(model, images, targets, iterations, warmup, amp_dtype, baseline)
        if inference:
            batch_ms = measure_inference(model, images, max(2, iterations // 2), 1, amp_dtype)
            single_ms = measure_inference(model, images[:1], iterations * 2, warmup, amp_dtype)
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return ThroughputResult(
        model=name,
        variant=str(variant),
        batch=batch,
        # Unrounded, so that derived figures (images/s from ms, ratios) agree; tables round.
        train_images_per_s=1000 * batch / train_ms,
        train_ms_per_iter=train_ms,
        train_peak_gib=peak,
        infer_images_per_s=None if batch_ms is None else 1000 * batch / batch_ms,
        infer_batch1_ms=None if single_ms is None else single_ms,
    )


def results_table(results: Sequence[ThroughputResult], baseline: str = "tv_mobilenet_v3_fpn") -> str:
    """One row per (model, variant); the training ratio is against the baseline model's fastest variant."""
    reference = max((r.train_images_per_s for r in results if r.model == baseline), default=None)
    headers = ["model", "variant", "train img/s", "x baseline", "train ms/iter", "peak GiB", "infer img/s",
               "infer batch-1 ms"]
    rows = [
        [r.model, r.variant, r.train_images_per_s, r.train_images_per_s / reference if reference else None,
         r.train_ms_per_iter, r.train_peak_gib, r.infer_images_per_s, r.infer_batch1_ms]
        for r in results
    ]
    return format_table(headers, rows, digits=2)


AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "none": None}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["shufflenet_1x", "shufflenet_2x", "tv_mobilenet_v3_fpn"],
                        metavar="NAME", help=f"choose from {', '.join(MODELS)} (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", default=["dense+cl"], metavar="VARIANT",
                        help="conv form (auto, modules, folded, dense) and options (cl, compile, recompute) joined by '+' "
                             "(default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16, help="images per training step (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=10, help="timed training steps (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    parser.add_argument("--amp-dtype", default="bfloat16", choices=sorted(AMP_DTYPES))
    parser.add_argument("--profile", action="store_true",
                        help="instead of timing, print the operators that take the most time in 3 training steps "
                             "of each model and variant (torch.profiler)")
    parser.add_argument("--mult-adds", action="store_true",
                        help="instead of timing, print each model's conv + linear multiply-adds per image by part, "
                             "in a training step (512 RoIs) and in inference (CPU, random weights)")
    parser.add_argument("--skip-inference", action="store_true", help="time training only")
    parser.add_argument("--cpu-peak-memory", action="store_true",
                        help="on a CPU (Linux), measure the peak resident memory of the training steps; this "
                             "slows CPU steps, so take timings from a run without it")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides for our detectors, e.g. MODEL.RPN.PRE_NMS_TOPK_TRAIN 2000")
    return parser.parse_args(argv)


def print_mult_adds(models, overrides) -> None:
    for name in models:
        for training in (True, False):
            parts = mult_adds_per_image(name, training=training, overrides=overrides)
            listed = ", ".join(f"{part} {count / 1e9:.2f}" for part, count in parts.items())
            print(f"{name} {'training' if training else 'inference'}: {sum(parts.values()) / 1e9:.2f} GMAC per image "
                  f"({listed})", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.json:
            check_output_file(args.json, args.overwrite)
    except OutputPathError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.models, swallowed = split_trailing_overrides(args.models)
    args.variants, swallowed_after_variants = split_trailing_overrides(args.variants)
    args.opts = swallowed + swallowed_after_variants + list(args.opts)
    unknown = [name for name in args.models if name not in MODELS]
    if unknown:
        print(f"error: unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    try:
        variants = [Variant.parse(text) for text in args.variants]
        device = torch.device(args.device)
        for name in args.models:
            if name in C4_MODELS:
                check_detector_config(load_config(C4_MODELS[name][0], args.opts))
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.opts and not any(name in C4_MODELS for name in args.models):
        print("error: KEY VALUE overrides change our detectors' configs; none of --models is one of them",
              file=sys.stderr)
        return 2
    if args.mult_adds:
        print_mult_adds(args.models, args.opts)
        return 0
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    machine = machine_info(torch.get_num_threads())
    print(f"{machine}; device {device}; batch {args.batch}, 480x640 -> 600px, autocast {args.amp_dtype}; "
          f"median of {args.iters} steps after {args.warmup}", flush=True)
    amp_dtype = AMP_DTYPES[args.amp_dtype]
    if args.profile:
        for name in args.models:
            for variant in variants:
                print(f"--- {name} {variant}", flush=True)
                print(profile_training(name, variant, device, batch=args.batch, amp_dtype=amp_dtype,
                                       overrides=args.opts), flush=True)
        return 0
    try:
        results = benchmark_throughput(
            args.models, variants, device, batch=args.batch, iterations=args.iters, warmup=args.warmup,
            amp_dtype=amp_dtype, overrides=args.opts, inference=not args.skip_inference,
            cpu_peak_memory=args.cpu_peak_memory,
            report=lambda r: print(f"  {r.model} {r.variant}: train {r.train_images_per_s:.1f} img/s, "
                                   f"{r.train_peak_gib:.2f} GiB" + ("" if r.infer_images_per_s is None else
                                   f"; inference {r.infer_images_per_s:.1f} img/s"), flush=True),
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(results_table(results))
    write_json(args.json, {"settings": vars(args), "machine": machine, "results": [asdict(r) for r in results]},
               overwrite=args.overwrite)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
