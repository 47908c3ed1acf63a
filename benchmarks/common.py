"""What every benchmark script shares: the timing loop, the machine description, JSON output.
Tables are ``shufflenet_det.utils.text_table.format_table`` (pipe tables that also render as Markdown).

All timing goes through ``time_interleaved``. It calls each candidate once per round, in turn, so
that load from other processes on a shared machine hits all candidates alike; that is why it is not
``torch.utils.benchmark.Timer``, which times one statement at a time.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

import torch

from shufflenet_det.utils.io import atomic_write


@dataclass
class Timings:
    """Wall-clock and process CPU milliseconds (all threads) of each timed call."""

    wall_ms: List[float] = field(default_factory=list)
    cpu_ms: List[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.wall_ms)

    @property
    def min_ms(self) -> float:
        return min(self.wall_ms)


def time_interleaved(
    calls: Mapping[str, Callable[[], object]],
    runs: int,
    warmup: int,
    synchronize: Callable[[], None] = lambda: None,
    after_warmup: Callable[[], None] = lambda: None,
) -> Dict[str, Timings]:
    """Times of ``runs`` rounds after ``warmup`` untimed ones; each round calls every candidate once.

    ``synchronize`` waits for queued device work (``torch.cuda.synchronize`` on a GPU) before each
    clock read; ``after_warmup`` runs once before the first timed round (to reset peak counters).
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    timings = {name: Timings() for name in calls}
    for index in range(warmup + runs):
        if index == warmup:
            after_warmup()
        for name, call in calls.items():
            synchronize()
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            synchronize()
            if index >= warmup:
                timings[name].wall_ms.append(1000 * (time.perf_counter() - wall))
                timings[name].cpu_ms.append(1000 * (time.process_time() - cpu))
    return timings


def machine_info(threads: Optional[int] = None) -> Dict[str, object]:
    """What the figures depend on: CPU (or GPU), versions, threads, load average."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info: Dict[str, object] = {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__}
    if threads is not None:
        info["threads"] = threads
    if torch.cuda.is_available():
        info["gpu"] = f"{torch.cuda.get_device_name()}, CUDA {torch.version.cuda}"
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(value, 2) for value in os.getloadavg()]
    return info


def write_json(path: Optional[str], payload: Mapping[str, object], overwrite: bool) -> None:
    """Write ``payload`` to ``path`` atomically (nothing when ``path`` is None)."""
    if path:
        text = json.dumps(payload, indent=2)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text), overwrite=overwrite)

