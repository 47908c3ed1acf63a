"""Checkpoints of the whole training state, atomic saves, rotation, and resume with fallback.

A checkpoint is a ``torch.save`` of plain containers and tensors only (loadable with
``weights_only=True``): ``{"model", "optimizer", "scheduler", <other checkpointables>, "iteration",
"config" (YAML text), "rng" (one entry per rank), ...}``. ``iteration`` is the number of completed
iterations, so a resumed run starts its loop at ``iteration``.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np
import torch
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
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": py_version,
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["state"].tolist()), python_state["gauss_next"])
    )
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available():
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                "CUDA RNG state saved for %d devices, %d visible: not restored",
                len(cuda_states),
                torch.cuda.device_count(),
            )


def _strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str = "module.") -> Dict[str, torch.Tensor]:
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


class Checkpointer:
    """Saves and restores ``model`` and the ``checkpointables`` (objects with ``state_dict`` /
    ``load_state_dict``: optimizer, scheduler, grad_scaler, ...) in ``save_dir``.

    Only the main process writes files; ``save`` is collective under DDP (it gathers every rank's RNG
    state), so call it on all ranks. ``keep_last`` periodic checkpoints (``model_NNNNNNN.pth``) are kept
    (0 keeps all); other names such as ``model_final.pth`` are never deleted. ``extra_data`` (plain values)
    goes into every checkpoint, e.g. ``{"meta": ...}`` describing the model; callers may update it.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: PathLike,
        optimizer: Optional[torch.optim.Optimizer] = None,
        scheduler: Optional[Any] = None,
        *,
        config: Union[CfgNode, str, None] = None,
        keep_last: int = 3,
        extra_data: Optional[Mapping[str, Any]] = None,
        **checkpointables: Any,
    ) -> None:
        self.model = unwrap_model(model)
        self.extra_data = dict(extra_data or {})
        self.save_dir = Path(save_dir)
        named = {"optimizer": optimizer, "scheduler": scheduler, **checkpointables}
        self.checkpointables = {name: obj for name, obj in named.items() if obj is not None}
        self.config_yaml = config.dump() if isinstance(config, CfgNode) else config
        self.keep_last = keep_last

    # ------------------------------------------------------------------ saving
    def save(self, name: str, **data: Any) -> Path:
        """Write ``save_dir/name.pth`` (atomically) and point ``last_checkpoint`` at it.

        ``data`` (e.g. ``iteration=5000``) is stored alongside; it must be plain values or tensors.
        """
        rng_states = all_gather(rng_state())
        path = self.save_dir / f"{name}.pth"
        if is_main_process():
            checkpoint: Dict[str, Any] = {"model": self.model.state_dict()}
            checkpoint.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
            if self.config_yaml is not None:
                checkpoint["config"] = self.config_yaml
            checkpoint["rng"] = rng_states
            checkpoint.update(self.extra_data)
            checkpoint.update(data)
            atomic_torch_save(checkpoint, path, overwrite=True)
            atomic_write(
                self.save_dir / POINTER_FILE,
                lambda tmp: Path(tmp).write_text(path.name + "\n"),
                overwrite=True,
            )
            self._delete_old_periodic()
            logger.info("Saved checkpoint %s", path)
        synchronize()  # no rank leaves (and perhaps exits) before the file is complete
        return path

    def periodic_checkpoints(self) -> List[Path]:
        """``model_NNNNNNN.pth`` files in ``save_dir``, oldest first."""
        if not self.save_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.save_dir.iterdir() if (m := _PERIODIC_NAME.match(p.name))]
        return [path for _, path in sorted(found)]

    def _delete_old_periodic(self) -> None:
        if self.keep_last <= 0:
            return
        for path in self.periodic_checkpoints()[: -self.keep_last]:
            path.unlink(missing_ok=True)
            logger.debug("Deleted old checkpoint %s", path)

    # ------------------------------------------------------------------ loading
    def last_checkpoint(self) -> Optional[Path]:
        """The file named in ``save_dir/last_checkpoint``, if that pointer exists."""
        pointer = self.save_dir / POINTER_FILE
        if not pointer.is_file():
            return None
        return self.save_dir / pointer.read_text().strip()

    def has_checkpoint(self) -> bool:
        return self.last_checkpoint() is not None or bool(self.periodic_checkpoints())

    def _resume_candidates(self) -> List[Path]:
        newest = self.last_checkpoint()
        older = [path for path in reversed(self.periodic_checkpoints()) if path != newest]
        return ([newest] if newest is not None else []) + older

    def resume_or_load(self, path: Optional[PathLike], *, resume: bool = True) -> Dict[str, Any]:
        """Resume the full training state, or load model weights only.

        With ``resume`` and a checkpoint in ``save_dir``: restore everything from the newest one; when it
        is unreadable (truncated, corrupt) report it and try the previous ones. Returns the checkpoint's
        remaining entries, e.g. ``{"iteration": 5000, ...}``. Otherwise load the ``"model"`` entry of
        ``path`` (if given) and return ``{}``: the run starts at iteration 0.
        """
        if resume:
            candidates = self._resume_candidates()
            errors = []
            for candidate in candidates:
                try:
                    return self.load(candidate, resume=True)
                except CheckpointError as error:
                    errors.append(str(error))
                    logger.error(
                        "Cannot resume from %s: %s. Trying the previous checkpoint.", candidate.name, error
                    )
            if candidates:
                raise CheckpointError(
                    f"no usable checkpoint to resume from in {self.save_dir}: " + "; ".join(errors)
                )
            logger.info("No checkpoint in %s to resume from: starting a new run", self.save_dir)
        if path:
            self.load(path, resume=False)
        return {}

    def load(self, path: PathLike, *, resume: bool = False) -> Dict[str, Any]:
        """Load ``path``: with ``resume`` the model strictly and every checkpointable and RNG state found;
        otherwise only the model weights, skipping (and reporting) entries whose shape does not fit.
        Returns the entries not consumed (``iteration``, ``config``, extra data)."""
        checkpoint = safe_torch_load(path)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            raise CheckpointError(
                f"{path} is not a training checkpoint (no 'model' entry); load classification weights "
                "with shufflenet_det.weights instead"
            )
        logger.info("%s %s", "Resuming from" if resume else "Loading model weights from", path)
        self._load_model(checkpoint.pop("model"), strict=resume, source=path)
        if not resume:
            return {}
        for name, obj in self.checkpointables.items():
            if name in checkpoint:
                obj.load_state_dict(checkpoint.pop(name))
            else:
                logger.warning("%s has no '%s' state: it starts fresh", path, name)
        rng_states = checkpoint.pop("rng", None)
        if rng_states:
            rank = get_rank()
            if rank >= len(rng_states):
                logger.warning(
                    "RNG states saved for %d processes; rank %d reuses rank 0's", len(rng_states), rank
                )
            set_rng_state(rng_states[rank if rank < len(rng_states) else 0])
        return checkpoint

    def _load_model(self, state_dict: Dict[str, torch.Tensor], strict: bool, source: PathLike) -> None:
        state_dict = _strip_prefix(state_dict)
        if strict:
            try:
                self.model.load_state_dict(state_dict)
            except RuntimeError as error:
                reason = " ".join(str(error).split())[:300]
                raise EngineError(f"{source} does not fit this model (another config?): {reason}") from None
            return
        own = self.model.state_dict()
        mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
        for key in mismatched:
            logger.warning(
                "Skipping '%s': shape %s in the checkpoint, %s in the model",
                key,
                tuple(state_dict[key].shape),
                tuple(own[key].shape),
            )
            del state_dict[key]
        result = self.model.load_state_dict(state_dict, strict=False)
        if result.missing_keys:
            logger.warning("Not in the checkpoint (left as initialized): %s", ", ".join(result.missing_keys))
        if result.unexpected_keys:
            logger.warning("Not in the model (ignored): %s", ", ".join(result.unexpected_keys))
