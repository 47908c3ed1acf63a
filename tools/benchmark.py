#!/usr/bin/env python
"""CPU latency of ShuffleNet / MobileNet / AlexNet feature trunks in the layout of the paper's Table 8.

python tools/benchmark.py                                   # eager vs ONNX Runtime, 1 thread, 3 sizes
python tools/benchmark.py --models shufflenet_v1_x0_5_g3,alexnet --sizes 224x224 --runs 30
python tools/benchmark.py --backends eager,eager_optimized,torchscript,onnxruntime --json out.json
python tools/benchmark.py --variants --models shufflenet_v1_x2_0_g3 --sizes 224x224   # shuffle / 1x1 forms
python tools/benchmark.py --ablation --models shufflenet_v1_x0_5_g3 --sizes 224x224     # ONNX Runtime steps
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shufflenet_det.deploy.benchmark import (
    PAPER_SIZES,
    TABLE8_MODELS,
    benchmark_model_names,
    compare_rewrites,
    format_ablation,
    format_report,
    format_rewrites,
    ort_ablation,
    machine_info,
    run_benchmark,
    summarize,
)
from shufflenet_det.deploy.runtime import BACKENDS
from shufflenet_det.utils.io import OutputPathError, atomic_write, check_output_file


def parse_sizes(text: str) -> List[Tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        height, sep, width = item.strip().lower().partition("x")
        if not sep or not height.isdigit() or not width.isdigit() or int(height) < 32 or int(width) < 32:
            raise ValueError(f"--sizes expects HxW items of at least 32x32, e.g. 224x224,480x640; got '{item}'")
        sizes.append((int(height), int(width)))
    return sizes


def parse_list(text: str, choices: Sequence[str], option: str) -> List[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in choices]
    if unknown or not items:
        raise ValueError(f"{option}: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(choices)}")
    return items


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(TABLE8_MODELS), help="comma-separated model names")
    parser.add_argument(
        "--sizes", default=",".join(f"{h}x{w}" for h, w in PAPER_SIZES), help="comma-separated HxW input sizes"
    )
    parser.add_argument("--backends", help=f"comma-separated, from {', '.join(BACKENDS)} (default eager,onnxruntime)")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per model, size and backend")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (paper: 1)")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="instead of the table, time each exact ShuffleNet shuffle / grouped-1x1 form per backend "
        "(backends default to eager_optimized,onnxruntime)",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="instead of the table, build the ONNX Runtime path up step by step and time each step",
    )
    parser.add_argument(
        "--kernel-time",
        action="store_true",
        help="also profile ONNX Runtime per node and report the sum of each node's fastest run "
        "(a latency estimate that load from other processes disturbs little)",
    )
    parser.add_argument(
        "--detector",
        action="store_true",
        help="after the table, time the ShuffleNet 1x C4 detector (eager and deployment path) and torchvision's "
        "fasterrcnn_mobilenet_v3_large_fpn at 600px, 300 proposals, in the same run (tools/benchmark_detector.py "
        "has more models and options)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write records, ratios and machine info as JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = parser.parse_args(argv)
    try:
        models = parse_list(args.models, benchmark_model_names(), "--models")
        default_backends = "eager_optimized,onnxruntime" if args.variants else "eager,onnxruntime"
        backends = parse_list(args.backends or default_backends, BACKENDS, "--backends")
        if args.variants and args.ablation:
            raise ValueError("choose one of --variants and --ablation")
        if args.variants and backends == ["eager"]:
            raise ValueError("--variants compares deploy copies: give backends other than eager")
        sizes = parse_sizes(args.sizes)
        if args.runs < 1 or args.warmup < 0 or args.threads < 1:
            raise ValueError("--runs and --threads must be >= 1, --warmup >= 0")
        if args.json:
            check_output_file(args.json, args.overwrite)
    except (ValueError, OutputPathError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    info = machine_info(args.threads)
    print(f"machine: {json.dumps(info)}", flush=True)
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if args.ablation:
        records = ort_ablation(models, sizes, runs=args.runs, warmup=args.warmup, threads=args.threads, log=log)
        print(format_ablation(records))
        write_json(args, {"machine": info, "runs": args.runs, "warmup": args.warmup, "records": records})
        return 0
    if args.variants:
        records = compare_rewrites(
            models, sizes, [b for b in backends if b != "eager"], runs=args.runs, warmup=args.warmup,
            threads=args.threads, log=log,
        )
        print(format_rewrites(records))
        write_json(args, {"machine": info, "runs": args.runs, "warmup": args.warmup, "records": records})
        return 0
    records = run_benchmark(
        models,
        sizes,
        backends,
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
        log=log,
        kernel_time=args.kernel_time,
    )
    summary = summarize(records)
    extra = {"fastest runs": summarize(records, "min_ms")["ratios"]}
    if args.kernel_time:
        extra["onnxruntime kernel times"] = summarize(records, "kernel_ms")["ratios"]
    info["load_average_end"] = machine_info(args.threads).get("load_average")
    print(format_report(records, extra))
    print(
        "\nFeature trunks (no pooling / classifier), batch 1, random weights, median of "
        f"{args.runs} runs after {args.warmup} warm-up runs. eager = the model as built (BatchNorm "
        "unfolded, NCHW; the same computation as the official implementation's forward). "
        f"Load average at start / end: {info.get('load_average')} / {info.get('load_average_end')}."
    )
    summary["more_ratios"] = extra
    if args.detector:
        summary["detector"] = [result.as_dict() for result in time_detectors(args.threads, log)]
    write_json(args, {"machine": info, "runs": args.runs, "warmup": args.warmup, "records": records, **summary})
    return 0


def time_detectors(threads: int, log) -> list:
    """The detector part of the run: ShuffleNet 1x C4 (eager, deployment path) beside torchvision's detector."""
    from shufflenet_det.detection.benchmark import benchmark as detector_benchmark
    from shufflenet_det.detection.benchmark import markdown_table as detector_table
    from shufflenet_det.detection.benchmark import speed_ratios

    log("timing the detectors at 600px (300 proposals)")
    results = detector_benchmark(["shufflenet_1x", "tv_mobilenet_v3_fpn"], threads=threads, runs=5, warmup=1,
                                 runtimes=("eager", "deploy"))
    print("\nDetectors, 480x640 image resized to 600px, 300 proposals, median of 5 runs:\n")
    print(detector_table(results))
    for line in speed_ratios(results):
        print(line)
    return results


def write_json(args: argparse.Namespace, payload: dict) -> None:
    if args.json:
        text = json.dumps(payload, indent=2)
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text), overwrite=args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
