"""Checkpoints of the whole training state on fvcore's ``Checkpointer``, plus what it lacks: atomic saves,
rotation that survives a resume, RNG states, ``weights_only`` loading, and resume with fallback."""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer as _FvcoreCheckpointer
from fvcore.common.config import CfgNode
from torch import nn

from ..utils.distributed import all_gather, get_rank, is_main_process, synchronize
from ..utils.io import CheckpointError, PathLike, atomic_torch_save, atomic_write, safe_torch_load
from .errors import EngineError

logger = logging.getLogger(__name__)

POINTER_FILE = "last_checkpoint"
FINAL_NAME = "model_final"
_PERIODIC_NAME = re.compile(r"^model_(\d{7,})\.pth$")


def periodic_checkpoint_name(iteration: int) -> str:
    """``model_0005000`` for the checkpoint after 5000 iterations."""
    return f"model_{iteration:07d}"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, so saved keys have no ``module.`` prefix."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def rng_state() -> Dict[str, Any]:
    """This process's random generator states as tensors and plain values (``weights_only``-loadable)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    numpy, python = state["numpy"], state["python"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state((numpy["name"], keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    cuda_states, count = state.get("cuda"), torch.cuda.device_count()
    if cuda_states is not None and len(cuda_states) == count:
        torch.cuda.set_rng_state_all(cuda_states)
    elif cuda_states is not None and count:
        logger.warning("CUDA RNG state saved for %d devices, %d visible: not restored", len(cuda_states), count)


class Checkpointer(_FvcoreCheckpointer):
    """fvcore's ``Checkpointer`` of ``model`` and the ``checkpointables`` (optimizer, scheduler, grad_scaler...)
    in ``save_dir``. ``save`` is atomic, main-process only but collective under DDP (it gathers every
    rank's RNG state), stores the config and ``extra_data`` too, and keeps the newest ``keep_last``
    ``model_NNNNNNN.pth`` files (0: all). Files load with ``weights_only=True`` and need a ``"model"``
    entry; ``resume_or_load`` falls back past unreadable checkpoints."""

    def __init__(
        self, model: nn.Module, save_dir: PathLike, optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Optional[Any] = None, *, config: Union[CfgNode, str, None] = None, keep_last: int = 3,
        extra_data: Optional[Mapping[str, Any]] = None, **checkpointables: Any,
    ) -> None:
        named = {"optimizer": optimizer, "scheduler": scheduler, **checkpointables}
        super().__init__(model, os.fspath(save_dir), **{name: obj for name, obj in named.items() if obj is not None})
        self.logger = logger  # fvcore's messages go to our log.txt too
        self.config_yaml = config.dump() if isinstance(config, CfgNode) else config
        self.keep_last = keep_last
        self.extra_data = dict(extra_data or {})  # callers may update it
        self._resuming_from: Optional[str] = None

    def save(self, name: str, **data: Any) -> Path:
        """Write ``save_dir/name.pth`` with ``data`` (plain values, e.g. ``iteration=5000``) and point
        ``last_checkpoint`` at it."""
        rng_states = all_gather(rng_state())
        path = Path(self.save_dir) / f"{name}.pth"
        if is_main_process():
            checkpoint: Dict[str, Any] = {"model": self.model.state_dict()}
            checkpoint.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
            if self.config_yaml is not None:
                checkpoint["config"] = self.config_yaml
            checkpoint["rng"] = rng_states
            checkpoint.update(self.extra_data)
            checkpoint.update(data)
            atomic_torch_save(checkpoint, path, overwrite=True)
            self.tag_last_checkpoint(path.name)
            if self.keep_last > 0:
                for old in self.periodic_checkpoints()[: -self.keep_last]:
                    old.unlink(missing_ok=True)
            logger.info("Saved checkpoint %s", path)
        synchronize()  # no rank leaves (and perhaps exits) before the file is complete
        return path

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        text = last_filename_basename + "\n"
        atomic_write(Path(self.save_dir) / POINTER_FILE, lambda tmp: Path(tmp).write_text(text), overwrite=True)

    def periodic_checkpoints(self) -> List[Path]:
        """``model_NNNNNNN.pth`` files in ``save_dir``, oldest first."""
        folder = Path(self.save_dir)
        if not folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PERIODIC_NAME.match(p.name))]
        return [path for _, path in sorted(found)]

    def has_checkpoint(self) -> bool:
        return bool(self._resume_candidates())

    def _resume_candidates(self) -> List[Path]:
        """The file ``last_checkpoint`` names, then the other periodic checkpoints, newest first."""
        newest = [Path(self.get_checkpoint_file())] if Path(self.save_dir, POINTER_FILE).is_file() else []
        return newest + [path for path in reversed(self.periodic_checkpoints()) if path not in newest]

    def resume_or_load(self, path: Optional[PathLike], *, resume: bool = True) -> Dict[str, Any]:
        """With ``resume`` and a checkpoint in ``save_dir``: restore everything (model strictly, this rank's
        RNG) from the newest readable one and return its other entries (``{"iteration": n, ...}``).
        Otherwise load the ``"model"`` of ``path`` (if given), skipping entries of another shape: ``{}``."""
        if resume:
            candidates = self._resume_candidates()
            errors = []
            for candidate in candidates:
                try:
                    data = self.load(candidate)
                except CheckpointError as error:
                    errors.append(str(error))
                    logger.error("Cannot resume from %s: %s. Trying the previous checkpoint.", candidate.name, error)
                    continue
                states = data.pop("rng", None)
                if states:
                    rank = get_rank()
                    if rank >= len(states):
                        logger.warning("RNG states saved for %d processes; rank %d reuses rank 0's", len(states), rank)
                    set_rng_state(states[rank if rank < len(states) else 0])
                return data
            if candidates:
                raise CheckpointError(f"no usable checkpoint to resume from in {self.save_dir}: " + "; ".join(errors))
            logger.info("No checkpoint in %s to resume from: starting a new run", self.save_dir)
        if path:
            self.load(path, checkpointables=[])
        return {}

    def load(self, path: PathLike, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """fvcore's ``load`` of a local file: the model and ``checkpointables`` (default: all, which is a
        resume and loads the model strictly). Returns the entries not consumed."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise CheckpointError(f"checkpoint not found: {path}")
        # fvcore's load has no strict mode: _load_model reads which file is being resumed from here.
        self._resuming_from = path if checkpointables is None else None
        try:
            return super().load(path, checkpointables)
        finally:
            self._resuming_from = None

    def _load_file(self, f: str) -> Dict[str, Any]:
        checkpoint = safe_torch_load(f)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            raise CheckpointError(
                f"{f} is not a training checkpoint (no 'model' entry); load classification weights "
                "with shufflenet_det.weights instead"
            )
        return checkpoint

    def _load_model(self, checkpoint: Dict[str, Any]) -> Any:
        incompatible = super()._load_model(checkpoint)
        source = self._resuming_from
        if source is None:
            return incompatible
        problems = [
            *(f"missing {key}" for key in incompatible.missing_keys),
            *(f"unexpected {key}" for key in incompatible.unexpected_keys),
            *(f"{key} of shape {was} (model: {now})" for key, was, now in incompatible.incorrect_shapes),
        ]
        if problems:
            raise EngineError(f"{source} does not fit this model (another config?): {', '.join(problems)[:300]}")
        for name in self.checkpointables:
            if name not in checkpoint:
                logger.warning("%s has no '%s' state: it starts fresh", source, name)
        return incompatible
