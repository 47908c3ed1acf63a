#!/usr/bin/env python
"""CPU inference latency of the C4 Faster R-CNN detectors and torchvision's MobileNet v3 FPN detector.

Each C4 detector runs in PyTorch eager and in the deployment path (ONNX Runtime for the conv parts,
see shufflenet_det.deploy.detector); torchvision's runs eager. Runs are interleaved between models.
Example: OMP_NUM_THREADS=1 python tools/benchmark_detector.py --threads 1 --runs 5 --json latency.json
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
    DEFAULT_RUNTIMES,
    IMAGE_SIZE,
    MIN_SIZE,
    MODELS,
    RUNTIMES,
    benchmark,
    cpu_name,
    markdown_table,
    speed_ratios,
)
from shufflenet_det.utils.io import OutputPathError, atomic_write, check_output_file


def load_average() -> str:
    """The 1 / 5 / 15-minute load averages (other processes share the CPU: compare within one run)."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


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
    parser.add_argument("--runtimes", nargs="+", default=list(DEFAULT_RUNTIMES), metavar="RUNTIME",
                        help=f"runtimes of the C4 models (default: %(default)s); choose from {', '.join(RUNTIMES)} "
                             "(onnx: the whole exported detector in ONNX Runtime)")
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
    except OutputPathError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    height, width = IMAGE_SIZE
    load = load_average()
    print(f"{cpu_name()} ({os.cpu_count()} logical CPUs, load average {load}), torch {torch.__version__}, "
          f"{args.threads} thread(s); "
          f"{height}x{width} image resized to {MIN_SIZE}px shorter side; {args.proposals} proposals "
          f"(pre-NMS {args.pre_nms} per level); median of {args.runs} runs after {args.warmup} warm-up", flush=True)
    try:
        results = benchmark(args.models, threads=args.threads, runs=args.runs, warmup=args.warmup,
                            proposals=args.proposals, pre_nms=args.pre_nms, runtimes=args.runtimes,
                            roi_chunk=args.roi_chunk,
                            report=lambda r: print(f"  {r.model} ({r.runtime}): {r.median_ms} ms", flush=True))
    except ValueError as error:  # bad arguments or configs (ConfigError is a ValueError)
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    for line in speed_ratios(results):
        print(line)
    print(f"load average at the end: {load_average()}")
    if args.json:
        machine = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "load_start": load, "load_end": load_average()}
        payload = {"settings": vars(args), "torch": torch.__version__, "machine": machine,
                   "results": [r.as_dict() for r in results]}
        atomic_write(args.json, lambda tmp: open(tmp, "w").write(json.dumps(payload, indent=2)), overwrite=True)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
