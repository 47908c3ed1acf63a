"""Scalars recorded during training (``EventStorage``, on fvcore ``HistoryBuffer``) and their writers:
console line, ``metrics.json`` (JSON lines), TensorBoard. Writers exist on the main process only."""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from fvcore.common.history_buffer import HistoryBuffer

from ..utils.io import PathLike, atomic_write

logger = logging.getLogger(__name__)

# Values kept per scalar: writers look back one log period; fvcore's default (a million) would hold a
# whole run's scalars in memory.
HISTORY_LENGTH = 10000


class EventStorage:
    """Scalars put by the trainer and hooks, stamped with ``iter``: the 1-based number of the iteration in
    progress (the number completed once it ends), as in checkpoint names and metrics files."""

    def __init__(self, start_iter: int = 0) -> None:
        self.iter = start_iter
        self._histories: Dict[str, HistoryBuffer] = {}
        self._smoothing: Dict[str, bool] = {}

    def put_scalar(self, name: str, value: float, smoothing_hint: bool = True) -> None:
        """Record ``value``; writers report the median over their window when ``smoothing_hint``."""
        self._histories.setdefault(name, HistoryBuffer(HISTORY_LENGTH)).update(float(value), self.iter)
        self._smoothing[name] = smoothing_hint

    def put_scalars(self, *, smoothing_hint: bool = True, **scalars: float) -> None:
        for name, value in scalars.items():
            self.put_scalar(name, value, smoothing_hint)

    def history(self, name: str) -> HistoryBuffer:
        if name not in self._histories:
            raise KeyError(f"no scalar named '{name}' recorded yet (have: {', '.join(sorted(self._histories))})")
        return self._histories[name]

    def has(self, name: str) -> bool:
        return name in self._histories

    def new_scalars(self, window: int, after_iter: int) -> Dict[int, Dict[str, float]]:
        """Each scalar's latest value if put after ``after_iter`` (smoothed ones: the median over the last
        ``window`` values), grouped by the iteration it was put at (ascending)."""
        by_iter: Dict[int, Dict[str, float]] = {}
        for name, buffer in sorted(self._histories.items()):
            value, iteration = buffer.values()[-1]
            if iteration > after_iter:
                smoothed = float(buffer.median(window)) if self._smoothing[name] else value
                by_iter.setdefault(iteration, {})[name] = smoothed
        return dict(sorted(by_iter.items()))


def max_memory_mb() -> Optional[float]:
    """Peak CUDA memory allocated by this process (MiB), or its peak resident memory on CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class EventWriter:
    """Base class: ``start`` once before training, ``write`` periodically, ``close`` at the end."""

    def start(self, start_iter: int) -> None:
        """Prepare for a run that starts (or resumes) after ``start_iter`` completed iterations."""

    def write(self, storage: EventStorage) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release files."""


class ConsoleWriter(EventWriter):
    """One log line: iteration, ETA, losses (median over ``window``), time, data time, lr, memory."""

    def __init__(self, max_iter: int, window: int = 20) -> None:
        self.max_iter = max_iter
        self.window = window

    def write(self, storage: EventStorage) -> None:
        iteration = storage.iter
        current = storage.new_scalars(self.window, iteration - 1).get(iteration, {})
        parts = [f"iter: {iteration}/{self.max_iter}"]
        if "eta_seconds" in current:
            parts.append(f"eta: {datetime.timedelta(seconds=int(current['eta_seconds']))}")
        losses = sorted((name for name in current if "loss" in name), key=lambda n: (n != "total_loss", n))
        parts += [f"{name}: {current[name]:.4g}" for name in losses]
        for name, fmt in (("time", "{:.4f}"), ("data_time", "{:.4f}"), ("lr", "{:.5g}")):
            if name in current:
                parts.append(f"{name}: {fmt.format(current[name])}")
        if "max_mem_mb" in current:
            parts.append(f"max_mem: {current['max_mem_mb']:.0f}M")
        logger.info("  ".join(parts))


class JSONWriter(EventWriter):
    """Appends ``{"iteration": n, name: value, ...}`` lines to ``path``. ``start(k)`` first removes lines
    after iteration ``k`` (from a run that died after its last checkpoint) and unreadable ones."""

    def __init__(self, path: PathLike, window: int = 20) -> None:
        self.path = Path(path)
        self.window = window
        self._handle: Optional[Any] = None
        self._last_written = 0

    def start(self, start_iter: int) -> None:
        self._last_written = start_iter
        text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        lines = [line for line in text.splitlines() if line.strip()]
        kept = [line for line in lines if _line_iteration(line) <= start_iter]
        if len(kept) < len(lines):
            text = "".join(line + "\n" for line in kept)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True)
            logger.info("%s: removed %d line(s) after iteration %d or cut short (resuming from there)",
                        self.path, len(lines) - len(kept), start_iter)
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, storage: EventStorage) -> None:
        for iteration, scalars in storage.new_scalars(self.window, self._last_written).items():
            self._handle.write(json.dumps({"iteration": iteration, **scalars}) + "\n")
            self._last_written = iteration
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _line_iteration(line: str) -> float:
    try:
        return float(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):  # a write cut short by a crash
        return math.inf


class TensorboardWriter(EventWriter):
    """TensorBoard scalars in ``log_dir``; a resumed run hides the old run's events after its resume point."""

    def __init__(self, log_dir: PathLike, window: int = 20) -> None:
        self.log_dir = Path(log_dir)
        self.window = window
        self._writer: Optional[Any] = None
        self._last_written = 0

    def start(self, start_iter: int) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: slow, only when used

        self._last_written = start_iter
        # TensorBoard hides events at steps >= purge_step written earlier to this directory.
        purge_step = start_iter + 1 if start_iter > 0 else None
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step, flush_secs=30)

    def write(self, storage: EventStorage) -> None:
        for iteration, scalars in storage.new_scalars(self.window, self._last_written).items():
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, iteration)
            self._last_written = iteration

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
