#!/usr/bin/env python
"""Training and inference throughput of the C4 detectors beside torchvision's MobileNet v3 FPN detector.

Random 480x640 images with random boxes, already on the device (no data loading), resized to 600px;
autocast in --amp-dtype. Peak memory: the CUDA allocator's peak on a GPU; on a CPU (Linux, with
--cpu-peak-memory) the peak resident memory of the timed steps above the process's before the model was
built. Example (one GPU; docs/engine.md has the figures):
  python tools/benchmark_training.py --models shufflenet_1x shufflenet_2x tv_mobilenet_v3_fpn \
      --variants modules folded+cl dense+cl --json throughput.json
Trailing KEY VALUE pairs change our detectors' configs (not torchvision's model), e.g. to compare
recipes: ... --models shufflenet_1x MODEL.RPN.PRE_NMS_TOPK_TRAIN 2000
--mult-adds prints the multiply-adds per image by detector part instead (CPU, no timing).
"""

import argparse
import json
import logging
import os
import sys

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from shufflenet_det.config import load_config, split_trailing_overrides
from shufflenet_det.detection.benchmark import C4_MODELS, MODELS
from shufflenet_det.detection.detector import check_detector_config
from shufflenet_det.detection.throughput import (
    Variant,
    benchmark_throughput,
    markdown_table,
    mult_adds_per_image,
    profile_training,
)
from shufflenet_det.utils.io import OutputPathError, atomic_write, check_output_file

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
        what = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        what = f"CPU, {torch.get_num_threads()} threads"
    print(f"{what}, torch {torch.__version__}; batch {args.batch}, 480x640 -> 600px, autocast {args.amp_dtype}; "
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
            report=lambda r: print(f"  {r.model} {r.variant}: train {r.train_images_per_s} img/s, "
                                   f"{r.train_peak_gib} GiB" + ("" if r.infer_images_per_s is None else
                                   f"; inference {r.infer_images_per_s} img/s"), flush=True),
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    if args.json:
        payload = {"device": what, "torch": torch.__version__, "batch": args.batch, "amp_dtype": args.amp_dtype,
                   "overrides": list(args.opts), "results": [r.as_dict() for r in results]}
        atomic_write(args.json, lambda tmp: open(tmp, "w").write(json.dumps(payload, indent=2)),
                     overwrite=args.overwrite)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
