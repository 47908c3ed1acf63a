"""CPU latency of ShuffleNet / MobileNet / AlexNet feature trunks in the layout of the paper's Table 8.

The paper times the networks on one ARM core at batch 1; here every model runs as a feature trunk
(stem and stages, no pooling or classifier) in the backends of ``shufflenet_det.deploy.runtime``, all
in one process, with the backends of one model interleaved run by run so that load changes hit them alike.

python -m benchmarks.table8                                   # eager vs ONNX Runtime, 1 thread, 3 sizes
python -m benchmarks.table8 --models shufflenet_v1_x0_5_g3,alexnet --sizes 224x224 --runs 30
python -m benchmarks.table8 --backends eager,eager_optimized,torchscript,onnxruntime --json out.json
python -m benchmarks.table8 --variants --models shufflenet_v1_x2_0_g3 --sizes 224x224   # shuffle / 1x1 forms
python -m benchmarks.table8 --ablation --models shufflenet_v1_x0_5_g3 --sizes 224x224     # ONNX Runtime steps
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import OrderedDict
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from benchmarks import detector_latency
from benchmarks.common import Timings, machine_info, time_interleaved, write_json
from shufflenet_det.deploy.export import create_ort_session, onnx_bytes
from shufflenet_det.deploy.fuse import optimize_shufflenet
from shufflenet_det.deploy.runtime import BACKENDS, BEST_REWRITE, Runner, create_runner, deploy_rewrite, ort_runner
from shufflenet_det.modeling import StagedNetwork, create_model, list_models
from shufflenet_det.utils.io import OutputPathError, check_output_file
from shufflenet_det.utils.text_table import format_table

Size = Tuple[int, int]

PAPER_SIZES: Tuple[Size, ...] = ((224, 224), (480, 640), (720, 1280))
TABLE8_MODELS = (
    "shufflenet_v1_x0_5_g3",
    "shufflenet_v1_x1_0_g3",
    "shufflenet_v1_x2_0_g3",
    "mobilenet_v1_x1_0",
    "alexnet",
)
# Paper Table 8: single-thread Snapdragon 820, ms at 224x224 / 480x640 / 720x1280.
PAPER_TABLE8_MS: Dict[str, Tuple[float, float, float]] = {
    "shufflenet_v1_x0_5_g3": (15.2, 87.4, 260.1),
    "shufflenet_v1_x1_0_g3": (37.8, 222.2, 684.5),
    "shufflenet_v1_x2_0_g3": (108.8, 617.0, 1857.6),
    "alexnet": (184.0, 1156.7, 3633.9),
    "mobilenet_v1_x1_0": (110.0, 612.0, 1879.2),
}
# (numerator, denominator) model pairs whose latency ratios the paper discusses.
RATIOS = (("alexnet", "shufflenet_v1_x0_5_g3"), ("mobilenet_v1_x1_0", "shufflenet_v1_x2_0_g3"))
DISPLAY_NAMES = {
    "shufflenet_v1_x0_5_g3": "ShuffleNet 0.5x (g=3)",
    "shufflenet_v1_x1_0_g3": "ShuffleNet 1x (g=3)",
    "shufflenet_v1_x2_0_g3": "ShuffleNet 2x (g=3)",
    "mobilenet_v1_x1_0": "1.0 MobileNet-224",
    "alexnet": "AlexNet (torchvision)",
}


def benchmark_model_names() -> List[str]:
    return list_models() + ["alexnet"]


def build_trunk(name: str) -> nn.Module:
    """The feature trunk of a registered model or torchvision's AlexNet: all convs, no pool / classifier.

    Weights are random (timing does not depend on them).
    """
    if name == "alexnet":
        import torchvision

        return torchvision.models.alexnet(weights=None).features.eval()
    if name not in list_models():
        raise ValueError(f"unknown model '{name}'; choose from alexnet or {', '.join(list_models())}")
    model = create_model(name)
    if not isinstance(model, StagedNetwork):
        raise ValueError(f"model '{name}' has no stage interface to cut a feature trunk from")
    return nn.Sequential(OrderedDict((stage, model.stage(stage)) for stage in model.stage_names)).eval()


def time_runners(runners: Dict[str, Runner], x: torch.Tensor, runs: int, warmup: int) -> Dict[str, Timings]:
    """Times of each runner's forward on ``x``, converted once beforehand, runners interleaved run by run."""
    prepared = {name: runner.prepare(x) for name, runner in runners.items()}
    calls = {name: (lambda r=runner, p=prepared[name]: r.run(p)) for name, runner in runners.items()}
    return time_interleaved(calls, runs, warmup)


def ort_kernel_ms(onnx_model: bytes, x: torch.Tensor, runs: int, threads: int = 1, optimization: str = "all") -> float:
    """ONNX Runtime latency estimate that load from other processes disturbs little (ms).

    Runs the model with ONNX Runtime's profiler and sums, over the graph's nodes, each node's
    fastest kernel time. It leaves out the per-run overhead between kernels (a few microseconds per
    node), so it is a lower bound of an unloaded run.
    """
    with tempfile.TemporaryDirectory() as folder:
        session = create_ort_session(
            onnx_model, threads=threads, optimization=optimization, profile_prefix=os.path.join(folder, "profile")
        )
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(runs):
            session.run(None, feed)
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    fastest: Dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            fastest[event["name"]] = min(fastest.get(event["name"], float("inf")), event["dur"])
    return sum(fastest.values()) / 1e3


def run_benchmark(
    models: Sequence[str] = TABLE8_MODELS,
    sizes: Sequence[Size] = PAPER_SIZES,
    backends: Sequence[str] = ("eager", "onnxruntime"),
    runs: int = 15,
    warmup: int = 3,
    threads: int = 1,
    log: Optional[Callable[[str], None]] = None,
    kernel_time: bool = False,
) -> List[Dict]:
    """Median / minimum latency (ms) of every model x size x backend, batch 1.

    Returns records ``{"model", "size": [H, W], "backend", "median_ms", "min_ms", "runs"}``. With
    ``kernel_time``, onnxruntime records also get ``kernel_ms`` (``ort_kernel_ms``).
    """
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if runs < 1 or warmup < 0:
        raise ValueError("runs must be >= 1 and warmup >= 0")
    trunks = {name: build_trunk(name) for name in models}
    records = []
    torch.manual_seed(0)
    for height, width in sizes:
        x = torch.rand(1, 3, height, width)
        for name, trunk in trunks.items():
            runners = {b: create_runner(trunk, b, x, threads=threads) for b in backends}
            times = time_runners(runners, x, runs, warmup)
            for backend in backends:
                record = {
                    "model": name,
                    "size": [height, width],
                    "backend": backend,
                    "median_ms": times[backend].median_ms,
                    "min_ms": times[backend].min_ms,
                    "runs": runs,
                }
                if kernel_time and backend == "onnxruntime":
                    deployed = onnx_bytes(deploy_rewrite(trunk, "onnxruntime"), x, dynamic=False)
                    record["kernel_ms"] = ort_kernel_ms(deployed, x, runs, threads)
                records.append(record)
                if log:
                    log(f"{name} {height}x{width} {backend}: {record['median_ms']:.2f} ms")
    return records


# Exact ShuffleNet forms compared by ``compare_rewrites`` (pointwise, shuffle, align); see deploy.fuse.
REWRITE_VARIANTS = (
    ("grouped", "reshape", 0),
    ("grouped", "gather", 0),
    ("grouped", "gather", 16),
    ("grouped", "fold", 0),
    ("dense", "reshape", 0),
    ("dense", "fold", 0),
    ("matmul", "reshape", 0),
)


def variant_name(pointwise: str, shuffle: str, align: int = 0) -> str:
    return f"{pointwise}/{shuffle}" + (f"+align{align}" if align else "")


def compare_rewrites(
    models: Sequence[str],
    sizes: Sequence[Size],
    backends: Sequence[str] = ("eager_optimized", "onnxruntime"),
    variants: Sequence[Tuple[str, str, int]] = REWRITE_VARIANTS,
    runs: int = 15,
    warmup: int = 3,
    threads: int = 1,
    log: Optional[Callable[[str], None]] = None,
) -> List[Dict]:
    """Median latency (ms) of each ShuffleNet form in each backend, variants interleaved run by run.

    Returns records ``{"model", "size", "backend", "variant": "pointwise/shuffle[+alignN]", "median_ms", "min_ms"}``.
    """
    rewritable = [b for b in backends if b in BEST_REWRITE]
    if not rewritable:
        raise ValueError(f"compare_rewrites needs backends from {', '.join(sorted(BEST_REWRITE))}")
    records = []
    for height, width in sizes:
        x = torch.rand(1, 3, height, width)
        for name in models:
            trunk = build_trunk(name)
            for backend in rewritable:
                runners = {
                    variant_name(pointwise, shuffle, align): create_runner(
                        trunk, backend, x, threads, rewrite={"pointwise": pointwise, "shuffle": shuffle, "align": align}
                    )
                    for pointwise, shuffle, align in variants
                }
                times = time_runners(runners, x, runs, warmup)
                for variant, timing in times.items():
                    records.append({
                        "model": name,
                        "size": [height, width],
                        "backend": backend,
                        "variant": variant,
                        "median_ms": timing.median_ms,
                        "min_ms": timing.min_ms,
                        "runs": runs,
                    })
                if log:
                    best = min(times, key=lambda v: times[v].median_ms)
                    log(f"{name} {height}x{width} {backend}: fastest {best}")
    return records


def format_rewrites(records: Sequence[Dict]) -> str:
    """One table per backend: model and size by rows, ShuffleNet forms by columns (median ms)."""
    variants = list(OrderedDict.fromkeys(r["variant"] for r in records))
    blocks = []
    for backend in OrderedDict.fromkeys(r["backend"] for r in records):
        rows: Dict[Tuple[str, str], Dict[str, float]] = OrderedDict()
        for r in records:
            if r["backend"] == backend:
                key = (DISPLAY_NAMES.get(r["model"], r["model"]), "x".join(map(str, r["size"])))
                rows.setdefault(key, {})[r["variant"]] = r["median_ms"]
        table = format_table(
            ["model", "size"] + variants, [list(key) + [v.get(n) for n in variants] for key, v in rows.items()], 2
        )
        blocks.append(f"{backend}: median ms by pointwise/shuffle form\n{table}")
    return "\n\n".join(blocks)


# The ONNX Runtime deployment path built up one step at a time: (label, optimize_shufflenet
# arguments or None for the model as built, dynamic height / width, graph optimization level).
ORT_STEPS = (
    ("plain export, dynamic H/W, level extended", None, True, "extended"),
    ("plain export, dynamic H/W, level all", None, True, "all"),
    ("+ BatchNorm folded, static shapes", {}, False, "all"),
    ("+ shuffle as one Gather", {"shuffle": "gather"}, False, "all"),
    ("+ align 16 (stem, bottlenecks)", {"shuffle": "gather", "align": 16}, False, "all"),
)


def ort_ablation(
    models: Sequence[str],
    sizes: Sequence[Size],
    runs: int = 15,
    warmup: int = 3,
    threads: int = 1,
    log: Optional[Callable[[str], None]] = None,
) -> List[Dict]:
    """What each step of ``ORT_STEPS`` buys: median ms (steps interleaved) and kernel time per step.

    Returns records ``{"model", "size", "step", "median_ms", "min_ms", "kernel_ms"}``.
    """
    records = []
    for height, width in sizes:
        x = torch.rand(1, 3, height, width)
        for name in models:
            trunk = build_trunk(name)
            runners, kernel = {}, {}
            for label, rewrite, dynamic, level in ORT_STEPS:
                model = trunk if rewrite is None else optimize_shufflenet(trunk, **rewrite)
                data = onnx_bytes(model, x, dynamic=dynamic)
                runners[label] = ort_runner(data, threads, level)
                kernel[label] = ort_kernel_ms(data, x, runs, threads, level)
            times = time_runners(runners, x, runs, warmup)
            for label, timing in times.items():
                records.append({
                    "model": name,
                    "size": [height, width],
                    "step": label,
                    "median_ms": timing.median_ms,
                    "min_ms": timing.min_ms,
                    "kernel_ms": kernel[label],
                })
            if log:
                log(f"{name} {height}x{width}: ablation done")
    return records


def format_ablation(records: Sequence[Dict]) -> str:
    """Steps by rows, model and size by columns; cells "median / kernel time" in ms."""
    columns = list(OrderedDict.fromkeys((r["model"], tuple(r["size"])) for r in records))
    cells = {(r["step"], r["model"], tuple(r["size"])): f"{r['median_ms']:.2f} / {r['kernel_ms']:.2f}" for r in records}
    steps = list(OrderedDict.fromkeys(r["step"] for r in records))
    headers = ["ONNX Runtime step"] + [f"{DISPLAY_NAMES.get(m, m).split(' (')[0]} {'x'.join(map(str, s))}" for m, s in columns]
    rows = [[step] + [cells.get((step, m, s), "-") for m, s in columns] for step in steps]
    return "median ms / kernel time ms\n" + format_table(headers, rows)


def _lookup(records: Sequence[Dict], key: str = "median_ms") -> Dict[Tuple[str, str, Tuple[int, int]], float]:
    return {(r["model"], r["backend"], tuple(r["size"])): r[key] for r in records if key in r}


def summarize(records: Sequence[Dict], key: str = "median_ms") -> Dict[str, List[Dict]]:
    """Ratios beside the paper's, and each backend's speedup over eager, from ``run_benchmark`` records.

    ``key`` picks the statistic: "median_ms" (the table's), "min_ms" (the fastest run) or
    "kernel_ms" (onnxruntime only; see ``ort_kernel_ms``), the last two less disturbed by load.
    """
    latency = _lookup(records, key)
    backends = list(OrderedDict.fromkeys(r["backend"] for r in records))
    sizes = list(OrderedDict.fromkeys(tuple(r["size"]) for r in records))
    models = list(OrderedDict.fromkeys(r["model"] for r in records))
    ratios = []
    for numerator, denominator in RATIOS:
        for backend in backends:
            row = {"ratio": f"{numerator} / {denominator}", "backend": backend, "values": {}, "paper": {}}
            for size in sizes:
                top, bottom = latency.get((numerator, backend, size)), latency.get((denominator, backend, size))
                row["values"]["x".join(map(str, size))] = top / bottom if top and bottom else None
                if size in PAPER_SIZES:
                    index = PAPER_SIZES.index(size)
                    paper = PAPER_TABLE8_MS[numerator][index] / PAPER_TABLE8_MS[denominator][index]
                    row["paper"]["x".join(map(str, size))] = paper
            if any(v is not None for v in row["values"].values()):
                ratios.append(row)
    speedups = []
    if "eager" in backends:
        for backend in [b for b in backends if b != "eager"]:
            for model in models:
                values = {}
                for size in sizes:
                    base, fast = latency.get((model, "eager", size)), latency.get((model, backend, size))
                    values["x".join(map(str, size))] = base / fast if base and fast else None
                speedups.append({"model": model, "backend": backend, "values": values})
    return {"ratios": ratios, "speedups": speedups}


def format_report(records: Sequence[Dict], extra_ratios: Optional[Dict[str, List[Dict]]] = None) -> str:
    """Plain-text tables: latency per backend (Table 8 layout, paper's ARM numbers first), ratios, speedups.

    ``extra_ratios`` maps a title to more ratio rows (``summarize(records, "min_ms")["ratios"]``).
    """
    summary = summarize(records)
    latency = _lookup(records)
    sizes = list(OrderedDict.fromkeys(tuple(r["size"]) for r in records))
    size_names = ["x".join(map(str, s)) for s in sizes]
    models = list(OrderedDict.fromkeys(r["model"] for r in records))
    backends = list(OrderedDict.fromkeys(r["backend"] for r in records))
    blocks = []
    paper_rows = [
        [DISPLAY_NAMES.get(m, m)] + [PAPER_TABLE8_MS[m][PAPER_SIZES.index(s)] if s in PAPER_SIZES else None for s in sizes]
        for m in models
        if m in PAPER_TABLE8_MS
    ]
    if paper_rows:
        blocks.append("Paper Table 8 (Snapdragon 820, 1 thread, ms)\n" + format_table(["model"] + size_names, paper_rows, 1))
    for backend in backends:
        rows = [[DISPLAY_NAMES.get(m, m)] + [latency.get((m, backend, s)) for s in sizes] for m in models]
        blocks.append(f"{backend}: median ms, batch 1, feature trunk\n" + format_table(["model"] + size_names, rows, 2))
    kernel = _lookup(records, "kernel_ms")
    if kernel:
        rows = [[DISPLAY_NAMES.get(m, m)] + [kernel.get((m, "onnxruntime", s)) for s in sizes] for m in models]
        blocks.append(
            "onnxruntime kernel time: sum of each node's fastest run, ms (load-robust lower bound)\n"
            + format_table(["model"] + size_names, rows, 2)
        )
    for title, ratios in [("median runs", summary["ratios"])] + list((extra_ratios or {}).items()):
        if not ratios:
            continue
        headers = ["ratio", "backend"] + [f"{n} (paper)" for n in size_names]
        rows = []
        for row in ratios:
            names = row["ratio"].split(" / ")
            label = " / ".join(DISPLAY_NAMES.get(n, n).split(" (")[0] for n in names)
            cells = []
            for n in size_names:
                value, paper = row["values"].get(n), row["paper"].get(n)
                cells.append("-" if value is None else f"{value:.2f}" + (f" ({paper:.2f})" if paper else ""))
            rows.append([label, row["backend"]] + cells)
        blocks.append(f"Latency ratios of the {title} (paper's ARM ratios in parentheses)\n" + format_table(headers, rows))
    # Fastest runs as well as medians: on a shared machine the medians of one backend can be hit by load.
    for title, key in (("median runs", "median_ms"), ("fastest runs", "min_ms")):
        speedups = summarize(records, key)["speedups"]
        if speedups:
            rows = [
                [DISPLAY_NAMES.get(s["model"], s["model"]), s["backend"]] + [s["values"].get(n) for n in size_names]
                for s in speedups
            ]
            blocks.append(
                f"Speedup over eager PyTorch (x), {title}\n" + format_table(["model", "backend"] + size_names, rows, 2)
            )
    return "\n\n".join(blocks)


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
        "fasterrcnn_mobilenet_v3_large_fpn at 600px, 300 proposals, in the same run (python -m benchmarks.detector_latency "
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
        write_json(args.json, {"machine": info, "runs": args.runs, "warmup": args.warmup, "records": records}, args.overwrite)
        return 0
    if args.variants:
        records = compare_rewrites(
            models, sizes, [b for b in backends if b != "eager"], runs=args.runs, warmup=args.warmup,
            threads=args.threads, log=log,
        )
        print(format_rewrites(records))
        write_json(args.json, {"machine": info, "runs": args.runs, "warmup": args.warmup, "records": records}, args.overwrite)
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
        summary["detector"] = [asdict(result) for result in time_detectors(args.threads, log)]
    write_json(args.json, {"machine": info, "runs": args.runs, "warmup": args.warmup, "records": records, **summary}, args.overwrite)
    return 0


def time_detectors(threads: int, log) -> list:
    """The detector part of the run: ShuffleNet 1x C4 (eager, deployment path) beside torchvision's detector."""
    log("timing the detectors at 600px (300 proposals)")
    results = detector_latency.benchmark(["shufflenet_1x", "tv_mobilenet_v3_fpn"], threads=threads, runs=5, warmup=1,
                                         runtimes=("eager", "deploy"))
    print("\nDetectors, 480x640 image resized to 600px, 300 proposals, median of 5 runs:\n")
    print(detector_latency.results_table(results))
    for line in detector_latency.speed_ratios(results):
        print(line)
    return results


if __name__ == "__main__":
    sys.exit(main())
