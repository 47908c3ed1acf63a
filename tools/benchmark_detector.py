#!/usr/bin/env python
"""CPU inference latency of the C4 Faster R-CNN detectors and torchvision's MobileNet v3 FPN detector.

Example: python tools/benchmark_detector.py --threads 2 --runs 3 --json latency.json
"""

import argparse
import json
import os
import sys

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from shufflenet_det.detection.benchmark import (
    DEFAULT_MODELS,
    IMAGE_SIZE,
    MIN_SIZE,
    MODELS,
    benchmark,
    cpu_name,
    markdown_table,
)
from shufflenet_det.utils.io import atomic_write


def parse_args(argv=None):
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
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.json and os.path.exists(args.json) and not args.overwrite:
        print(f"error: {args.json} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    height, width = IMAGE_SIZE
    print(f"{cpu_name()} ({os.cpu_count()} logical CPUs), torch {torch.__version__}, {args.threads} thread(s); "
          f"{height}x{width} image resized to {MIN_SIZE}px shorter side; {args.proposals} proposals "
          f"(pre-NMS {args.pre_nms} per level); median of {args.runs} runs after {args.warmup} warm-up", flush=True)
    try:
        results = benchmark(args.models, threads=args.threads, runs=args.runs, warmup=args.warmup,
                            proposals=args.proposals, pre_nms=args.pre_nms,
                            report=lambda r: print(f"  {r.model}: {r.median_ms} ms", flush=True))
    except ValueError as error:  # bad arguments or configs (ConfigError is a ValueError)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    if args.json:
        payload = {"settings": vars(args), "torch": torch.__version__, "results": [r.as_dict() for r in results]}
        atomic_write(args.json, lambda tmp: open(tmp, "w").write(json.dumps(payload, indent=2)), overwrite=True)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
