"""The training loop: one ``run_step`` per iteration, hooks around it, signals turned into a clean stop."""

from __future__ import annotations

import datetime
import logging
import math
import os
import signal
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn

from ..utils.distributed import get_world_size
from .errors import EngineError, NonFiniteLossError, TrainingInterrupted
from .hooks import HookBase
from .launch import stop_on_signals
from .optimizer import WarmupLRScheduler
from .writers import EventStorage

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
LossFunction = Callable[[nn.Module, Any], Union[Mapping[str, torch.Tensor], torch.Tensor]]


def move_to_device(batch: Any, device: Union[str, torch.device], channels_last: bool = False) -> Any:
    """``batch`` with every tensor in it (nested dicts, lists, tuples) moved ``non_blocking`` to ``device``
    (4-D float tensors also to channels_last when asked); mappings come back as dicts."""
    if isinstance(batch, torch.Tensor):
        moved = batch.to(device, non_blocking=True)
        if channels_last and moved.dim() == 4 and moved.is_floating_point():
            moved = moved.contiguous(memory_format=torch.channels_last)
        return moved
    if isinstance(batch, Mapping):
        return {key: move_to_device(value, device, channels_last) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(value, device, channels_last) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(value, device, channels_last) for value in batch)
    return batch


def amp_dtype_from_name(name: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in AMP_DTYPES:
        raise ValueError(f"unknown AMP dtype '{name}' (SHUFFLENET_DET.AMP_DTYPE): expected one of {', '.join(AMP_DTYPES)}")
    return AMP_DTYPES[name]


def _announce_stop(signum: int) -> None:
    # os.write, not logging: the handler may run while the main thread is inside a logging call.
    message = "stopping after this iteration and saving a checkpoint (Ctrl-C again aborts without one)"
    os.write(2, f"\n{signal.Signals(signum).name} received: {message}\n".encode())


class Trainer:
    """A training loop for any model whose training forward (or ``loss_fn(model, batch)``) yields scalar
    losses. For an exact resume ``data_loader`` must yield the batches of iterations ``start_iter, ...``.
    Up to ``max_bad_batches`` non-finite losses in a row are skipped; SIGTERM/SIGINT finish the iteration,
    run the hooks' ``after_train`` (the checkpoint hook saves) and raise ``TrainingInterrupted``. float16
    AMP needs ``grad_scaler`` (made when not given; pass the same one to the ``Checkpointer``)."""

    def __init__(
        self, model: nn.Module, data_loader: Iterable[Any], optimizer: torch.optim.Optimizer,
        scheduler: Optional[Any] = None, *, loss_fn: Optional[LossFunction] = None, max_iter: int,
        start_iter: int = 0, hooks: Sequence[HookBase] = (), amp_enabled: bool = False,
        amp_dtype: Union[str, torch.dtype] = "bfloat16", grad_scaler: Optional[torch.amp.GradScaler] = None,
        max_bad_batches: int = 0, device: Union[str, torch.device, None] = None, channels_last: bool = False,
    ) -> None:
        self.model = model
        self.data_loader = data_loader
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loss_fn = loss_fn
        self.max_iter = max_iter
        self.start_iter = self.iter = start_iter
        self.max_bad_batches = max_bad_batches
        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)
        if device is None:
            device = next((p.device for p in model.parameters()), "cpu")
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype_from_name(amp_dtype)
        if amp_enabled and self.device.type != "cuda":
            logger.warning("AMP runs on CUDA only: training on %s in float32 (SOLVER.AMP.ENABLED ignored)", self.device)
            amp_enabled = False
        self.amp_enabled = amp_enabled
        if amp_enabled and self.amp_dtype == torch.float16 and grad_scaler is None:
            grad_scaler = torch.amp.GradScaler("cuda")
        self.grad_scaler = grad_scaler if amp_enabled else None

        self.storage = EventStorage(start_iter)
        self.status = "created"  # then "running", and "finished", "interrupted" or "failed"
        self.interrupt_checkpoint: Optional[Path] = None  # set by the checkpoint hook on interruption
        self._hooks = list(hooks)
        for hook in self._hooks:
            hook.trainer = weakref.proxy(self)  # type: ignore[assignment]  # no reference cycle
        self._data_iter: Optional[Iterator[Any]] = None
        self._bad_in_row = 0
        self._stop_signals: List[int] = []

    def train(self) -> None:
        """Run iterations ``start_iter`` .. ``max_iter - 1``."""
        logger.info("Starting training: iterations %d -> %d", self.start_iter, self.max_iter)
        self.iter = self.start_iter
        self.storage = EventStorage(self.start_iter)
        # The schedule is a function of the iteration: make it agree with where training starts.
        if isinstance(self.scheduler, WarmupLRScheduler) and self.scheduler.last_epoch != self.start_iter:
            logger.info("Setting the LR schedule to iteration %d (it was at %d)", self.start_iter, self.scheduler.last_epoch)
            self.scheduler.set_iteration(self.start_iter)
        self.model.train()
        self.status = "running"
        # The logged lr is the largest parameter group's: bias or norm groups' factors do not hide it.
        sizes = [sum(p.numel() for p in group["params"]) for group in self.optimizer.param_groups]
        lr_group = self.optimizer.param_groups[sizes.index(max(sizes))]
        train_start = time.perf_counter()
        with stop_on_signals(_announce_stop) as self._stop_signals:
            try:
                self._call_hooks("before_train")
                while self.iter < self.max_iter:
                    self.storage.iter = self.iter + 1
                    self.storage.put_scalar("lr", lr_group["lr"], smoothing_hint=False)
                    self._call_hooks("before_step")
                    step_start = time.perf_counter()
                    stop = self.run_step()
                    self.storage.put_scalar("time", time.perf_counter() - step_start)
                    self.iter += 1
                    self._call_hooks("after_step")
                    if stop and self.iter < self.max_iter:
                        self.status = "interrupted"
                        break
                else:
                    self.status = "finished"
            except BaseException:
                self.status = "failed"
                raise
            finally:
                done, elapsed = self.iter - self.start_iter, time.perf_counter() - train_start
                if done > 0:  # data_time and time were put once per step
                    data, step = (self.storage.history(name).global_avg() for name in ("data_time", "time"))
                    logger.info(
                        "Ran %d iterations in %s (%.4f s/it including hooks); waiting for data: %.1f%% of step time",
                        done, datetime.timedelta(seconds=int(elapsed)), elapsed / done, 100 * data / max(step, 1e-9),
                    )
                self._call_hooks("after_train")
        if self.status == "interrupted":
            signum = self._stop_signals[0] if self._stop_signals else signal.SIGTERM
            cause = signal.Signals(signum).name if self._stop_signals else "a signal to another process"
            saved = self.interrupt_checkpoint
            where = f"checkpoint {saved} written" if saved is not None else "no checkpoint hook: nothing saved"
            message = f"training stopped by {cause} after iteration {self.iter}; {where}. Continue with --resume."
            raise TrainingInterrupted(message, signum)

    def run_step(self) -> bool:
        """One iteration. Returns True when a process (any rank) was asked to stop."""
        start = time.perf_counter()
        batch = move_to_device(self._next_batch(), self.device, self.channels_last)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled):
            loss_dict = self._compute_losses(batch)
        total = torch.stack([loss.float() for loss in loss_dict.values()]).sum()
        self.optimizer.zero_grad(set_to_none=True)
        # Backward runs even on a bad loss so that DDP's gradient all-reduce stays in step on all ranks.
        (self.grad_scaler.scale(total) if self.grad_scaler is not None else total).backward()
        values, stop = self._reduce_losses(loss_dict, total)

        self.storage.put_scalar("data_time", data_time)
        if all(math.isfinite(value) for value in values.values()):
            self._bad_in_row = 0
            if self.grad_scaler is not None:
                self.grad_scaler.step(self.optimizer)
                self.grad_scaler.update()
            else:
                self.optimizer.step()
            self.storage.put_scalars(**values)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self._skip_bad_batch(values)
        if self.scheduler is not None:
            self.scheduler.step()
        return stop

    def _call_hooks(self, stage: str) -> None:
        for hook in self._hooks:
            getattr(hook, stage)()

    def _next_batch(self) -> Any:
        for attempt in range(2):
            if self._data_iter is None:
                self._data_iter = iter(self.data_loader)
            try:
                return next(self._data_iter)
            except StopIteration:
                self._data_iter = None
                if attempt == 0:
                    logger.info("Data loader exhausted at iteration %d: starting it again", self.iter)
        raise EngineError("the training data loader yields no batches")

    def _compute_losses(self, batch: Any) -> Dict[str, torch.Tensor]:
        losses = self.loss_fn(self.model, batch) if self.loss_fn is not None else self.model(batch)
        if isinstance(losses, torch.Tensor):
            losses = {"loss": losses}
        if not isinstance(losses, Mapping) or not losses:
            raise TypeError(
                f"the training forward must return a non-empty dict of scalar loss tensors, got {type(losses).__name__}"
            )
        for name, loss in losses.items():
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
                raise TypeError(f"loss '{name}' must be a scalar tensor, got {shape}")
        return {name: losses[name] for name in sorted(losses)}  # all ranks all-reduce them in one order

    def _reduce_losses(
        self, loss_dict: Dict[str, torch.Tensor], total: torch.Tensor
    ) -> Tuple[Dict[str, float], bool]:
        """Loss values averaged over processes and the global stop flag, in one all-reduce."""
        local = torch.stack([total.detach()] + [loss.detach().float().reshape(()) for loss in loss_dict.values()])
        requested = bool(self._stop_signals)
        world_size = get_world_size()
        if world_size > 1:
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
            packed = torch.cat([local, local.new_tensor([float(requested)])]).to(device)
            dist.all_reduce(packed)
            packed = packed.cpu()
            numbers = (packed[:-1] / world_size).tolist()
            requested = bool(packed[-1].item() > 0)
        else:
            numbers = local.cpu().tolist()
        return dict(zip(["total_loss"] + list(loss_dict), numbers)), requested

    def _skip_bad_batch(self, values: Dict[str, float]) -> None:
        self._bad_in_row += 1
        detail = ", ".join(f"{name}={value:.6g}" for name, value in values.items())
        iteration = self.iter + 1
        if self._bad_in_row > self.max_bad_batches:
            in_row = f" ({self._bad_in_row} bad batches in a row)" if self._bad_in_row > 1 else ""
            raise NonFiniteLossError(
                f"non-finite loss at iteration {iteration}{in_row}: {detail}. Stopped without saving this "
                "state; earlier checkpoints are intact (resume with --resume, e.g. with a lower "
                "SOLVER.BASE_LR or SOLVER.CLIP_GRADIENTS.ENABLED True)"
            )
        logger.warning(
            "Skipping iteration %d: non-finite loss (%s); bad batch %d of at most %d in a row",
            iteration, detail, self._bad_in_row, self.max_bad_batches,
        )
