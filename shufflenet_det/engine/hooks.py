"""Hooks the ``Trainer`` runs around each iteration. A hook sees the trainer as ``self.trainer``;
``trainer.iter`` counts completed iterations (in ``after_step`` including the step that just ran)."""

from __future__ import annotations

import logging
import numbers
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Sequence

import torch

from ..config.loading import ConfigError
from ..utils.distributed import synchronize
from .checkpoint import FINAL_NAME, Checkpointer, periodic_checkpoint_name
from .writers import EventWriter, max_memory_mb

if TYPE_CHECKING:
    from .trainer import Trainer

logger = logging.getLogger(__name__)


class HookBase:
    """``after_train`` also runs when training fails or is interrupted: see ``self.trainer.status``
    ("finished", "interrupted" or "failed")."""

    trainer: "Trainer"

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


class PeriodicCheckpointer(HookBase):
    """Saves ``model_NNNNNNN.pth`` every ``period`` iterations, ``model_final.pth`` at ``max_iter`` and,
    when a signal interrupts training, a checkpoint of the iteration reached. Not fvcore's: that names
    files by 0-based index (ours count completed iterations) and rotates from a list in memory, which a
    resumed run lacks (``Checkpointer.save`` rotates by the files on disk)."""

    def __init__(self, checkpointer: Checkpointer, period: int) -> None:
        self.checkpointer = checkpointer
        self.period = period
        self._last_saved: Optional[int] = None
        self.last_path: Optional[Path] = None

    def _save(self, name: str) -> None:
        self.last_path = self.checkpointer.save(name, iteration=self.trainer.iter)
        self._last_saved = self.trainer.iter

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if iteration >= self.trainer.max_iter:
            self._save(FINAL_NAME)
        elif self.period > 0 and iteration % self.period == 0:
            self._save(periodic_checkpoint_name(iteration))

    def after_train(self) -> None:
        if self.trainer.status != "interrupted":
            return  # a failed run's state may be broken: keep the previous checkpoints as they are
        if self._last_saved != self.trainer.iter:
            self._save(periodic_checkpoint_name(self.trainer.iter))
        self.trainer.interrupt_checkpoint = self.last_path


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> Dict[str, float]:
    """``{"bbox": {"AP": 30.1}}`` -> ``{"bbox/AP": 30.1}``; values that are not numbers are left out."""
    flat: Dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_results(value, prefix=f"{name}/"))
        elif isinstance(value, numbers.Number) and not isinstance(value, bool):
            flat[name] = float(value)  # type: ignore[arg-type]
        elif isinstance(value, torch.Tensor) and value.numel() == 1:
            flat[name] = float(value.item())
    return flat


class EvalHook(HookBase):
    """Calls ``eval_function() -> dict`` every ``period`` iterations (0: never) and after the last one, on
    every rank (only the main process's results need be complete); logs and records numeric results."""

    def __init__(self, period: int, eval_function: Callable[[], Optional[Mapping[str, Any]]]) -> None:
        self.period = period
        self.eval_function = eval_function

    def after_step(self) -> None:
        iteration = self.trainer.iter
        if iteration >= self.trainer.max_iter or (self.period > 0 and iteration % self.period == 0):
            flat = flatten_results(self.eval_function() or {})
            self.trainer.model.train()
            if flat:
                self.trainer.storage.put_scalars(smoothing_hint=False, **flat)
                summary = ", ".join(f"{name}={value:.4g}" for name, value in flat.items())
                logger.info("Evaluation after iteration %d: %s", iteration, summary)
            synchronize()


class PeriodicWriter(HookBase):
    """Runs the ``writers`` every ``period`` iterations and at the end, after adding ``eta_seconds`` and
    ``max_mem_mb``; closes them after training."""

    def __init__(self, writers: Sequence[EventWriter], period: int = 20) -> None:
        if period <= 0:
            raise ConfigError(f"SHUFFLENET_DET.LOG_PERIOD must be positive, got {period}")
        self.writers = list(writers)
        self.period = period
        self._written_iter: Optional[int] = None

    def before_train(self) -> None:
        for writer in self.writers:
            writer.start(self.trainer.start_iter)

    def after_step(self) -> None:
        if self.trainer.iter % self.period == 0 or self.trainer.iter >= self.trainer.max_iter:
            self._write()

    def after_train(self) -> None:
        try:
            # A stopped or failed run logs where it ended, unless that iteration was just written.
            if self.trainer.status != "finished" and self._written_iter != self.trainer.storage.iter:
                self._write()
        finally:
            for writer in self.writers:
                writer.close()

    def _write(self) -> None:
        storage = self.trainer.storage
        self._written_iter = storage.iter
        if storage.has("time"):
            remaining = self.trainer.max_iter - self.trainer.iter
            eta = storage.history("time").median(self.period) * remaining
            storage.put_scalar("eta_seconds", eta, smoothing_hint=False)
        memory = max_memory_mb()
        if memory is not None:
            storage.put_scalar("max_mem_mb", memory, smoothing_hint=False)
        for writer in self.writers:
            writer.write(storage)
