"""Metric writers: console line, ``metrics.json`` (JSON lines) and TensorBoard events.

Writers are created on the main process only. Every scalar carries the iteration it was recorded at
(the number of completed iterations, as in checkpoint names).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..utils.io import PathLike, atomic_write
from .events import EventStorage

logger = logging.getLogger(__name__)


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


def _new_scalars(storage: EventStorage, window: int, after_iter: int) -> Dict[int, Dict[str, float]]:
    """Scalars recorded after ``after_iter``, smoothed over ``window``, grouped by their iteration."""
    by_iter: Dict[int, Dict[str, float]] = {}
    for name, (value, iteration) in sorted(storage.latest_smoothed(window).items()):
        if iteration > after_iter:
            by_iter.setdefault(iteration, {})[name] = value
    return dict(sorted(by_iter.items()))


class ConsoleWriter(EventWriter):
    """One log line: iteration, ETA, losses (median over ``window``), time, data time, lr, memory."""

    def __init__(self, max_iter: int, window: int = 20) -> None:
        self.max_iter = max_iter
        self.window = window

    def write(self, storage: EventStorage) -> None:
        iteration = storage.iter
        latest = storage.latest_smoothed(self.window)

        def current(name: str) -> Optional[float]:
            value, at = latest.get(name, (None, -1))
            return value if at == iteration else None

        parts = [f"iter: {iteration}/{self.max_iter}"]
        eta = current("eta_seconds")
        if eta is not None:
            parts.append(f"eta: {datetime.timedelta(seconds=int(eta))}")
        losses = sorted(
            (name for name, (_, at) in latest.items() if "loss" in name and at == iteration),
            key=lambda n: (n != "total_loss", n),
        )
        parts += [f"{name}: {latest[name][0]:.4g}" for name in losses]
        for name, fmt in (("time", "{:.4f}"), ("data_time", "{:.4f}"), ("lr", "{:.5g}")):
            value = current(name)
            if value is not None:
                parts.append(f"{name}: {fmt.format(value)}")
        memory = current("max_mem_mb")
        if memory is not None:
            parts.append(f"max_mem: {memory:.0f}M")
        logger.info("  ".join(parts))


class JSONWriter(EventWriter):
    """Appends one JSON object per iteration, ``{"iteration": n, name: value, ...}``, to ``path``.

    On ``start(k)`` lines of iterations after ``k`` (written by a run that died after its last
    checkpoint) are removed, so a resumed run does not duplicate them; unreadable lines (a write cut
    short by a crash) are dropped with a warning.
    """

    def __init__(self, path: PathLike, window: int = 20) -> None:
        self.path = Path(path)
        self.window = window
        self._handle: Optional[Any] = None
        self._last_written = 0

    def start(self, start_iter: int) -> None:
        self._last_written = start_iter
        if self.path.exists():
            self._drop_lines_after(start_iter)
        self._handle = open(self.path, "a", encoding="utf-8")

    def _drop_lines_after(self, start_iter: int) -> None:
        kept: List[str] = []
        dropped = unreadable = 0
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                iteration = json.loads(line)["iteration"]
            except (ValueError, KeyError, TypeError):
                unreadable += 1
                continue
            if iteration <= start_iter:
                kept.append(line)
            else:
                dropped += 1
        if unreadable:
            logger.warning("%s: dropped %d unreadable line(s)", self.path, unreadable)
        if dropped or unreadable:
            text = "".join(line + "\n" for line in kept)
            atomic_write(self.path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True)
            if dropped:
                logger.info(
                    "%s: removed %d line(s) after iteration %d (resuming from there)",
                    self.path,
                    dropped,
                    start_iter,
                )

    def write(self, storage: EventStorage) -> None:
        if self._handle is None:
            raise RuntimeError("JSONWriter.write() before start()")
        for iteration, scalars in _new_scalars(storage, self.window, self._last_written).items():
            self._handle.write(json.dumps({"iteration": iteration, **scalars}, sort_keys=False) + "\n")
            self._last_written = iteration
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


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
        # Events at steps >= purge_step written earlier to this directory are hidden by TensorBoard.
        purge_step = start_iter + 1 if start_iter > 0 else None
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step, flush_secs=30)

    def write(self, storage: EventStorage) -> None:
        if self._writer is None:
            raise RuntimeError("TensorboardWriter.write() before start()")
        for iteration, scalars in _new_scalars(storage, self.window, self._last_written).items():
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, iteration)
            self._last_written = iteration

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def default_writers(output_dir: PathLike, max_iter: int, window: int = 20) -> List[EventWriter]:
    """Console, ``output_dir/metrics.json`` and TensorBoard events in ``output_dir``."""
    return [
        ConsoleWriter(max_iter, window),
        JSONWriter(Path(output_dir) / "metrics.json", window),
        TensorboardWriter(output_dir, window),
    ]
