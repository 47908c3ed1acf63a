"""Per-iteration learning-rate schedules with warmup.

The learning rate of iteration ``i`` (0-based) is a pure function of ``i``:
``lr_group(i) = base_lr_group * warmup(i) * decay(i)``. Nothing accumulates step by step, so setting the
iteration (resume, ``load_state_dict``) restores the schedule exactly.
"""

from __future__ import annotations

import bisect
import logging
import math
from typing import Any, Dict, List, Sequence

import torch
from fvcore.common.config import CfgNode

logger = logging.getLogger(__name__)

WARMUP_METHODS = ("linear", "constant")


class WarmupLRScheduler:
    """Base class: warmup over ``warmup_iters`` from ``warmup_factor``, then ``decay(iteration)``.

    Call ``step()`` once after every optimizer step. ``last_iter`` is the number of steps taken, i.e. the
    index of the iteration whose learning rate is currently set in the optimizer.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iter: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_iter: int = 0,
    ) -> None:
        if max_iter <= 0:
            raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(
                f"unknown SOLVER.WARMUP_METHOD '{warmup_method}': expected one of {', '.join(WARMUP_METHODS)}"
            )
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        # "initial_lr" is torch's convention for the group's undecayed rate; it survives optimizer resume.
        self.base_lrs = [group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups]
        self.set_iteration(last_iter)

    def decay(self, iteration: int) -> float:
        """Multiplier of the main schedule at ``iteration`` (1.0 at iteration 0)."""
        raise NotImplementedError

    def warmup(self, iteration: int) -> float:
        if iteration >= self.warmup_iters:
            return 1.0
        if self.warmup_method == "constant":
            return self.warmup_factor
        alpha = iteration / self.warmup_iters
        return self.warmup_factor * (1.0 - alpha) + alpha

    def multiplier(self, iteration: int) -> float:
        return self.warmup(iteration) * self.decay(iteration)

    def set_iteration(self, iteration: int) -> None:
        """Jump to ``iteration`` and set the optimizer's learning rates for it."""
        self.last_iter = iteration
        factor = self.multiplier(iteration)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor

    def step(self) -> None:
        self.set_iteration(self.last_iter + 1)

    def get_last_lr(self) -> List[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        return {"last_iter": self.last_iter, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"scheduler state has {len(state['base_lrs'])} parameter groups, the optimizer "
                f"{len(self.optimizer.param_groups)}"
            )
        self.base_lrs = list(state["base_lrs"])
        self.set_iteration(state["last_iter"])


class WarmupMultiStepLR(WarmupLRScheduler):
    """Multiply the rate by ``gamma`` at each of ``steps`` (from that iteration on)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iter: int,
        steps: Sequence[int],
        gamma: float = 0.1,
        **warmup: Any,
    ) -> None:
        if list(steps) != sorted(steps):
            raise ValueError(f"SOLVER.STEPS must be increasing, got {tuple(steps)}")
        self.steps = list(steps)
        self.gamma = gamma
        super().__init__(optimizer, max_iter, **warmup)

    def decay(self, iteration: int) -> float:
        return self.gamma ** bisect.bisect_right(self.steps, iteration)


class _DecayToEnd(WarmupLRScheduler):
    """A decay from 1 at iteration 0 to ``end_factor`` at ``max_iter``, shaped by ``curve(progress)``."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, max_iter: int, end_factor: float = 0.0, **warmup: Any
    ) -> None:
        self.end_factor = end_factor
        super().__init__(optimizer, max_iter, **warmup)

    def decay(self, iteration: int) -> float:
        progress = min(iteration, self.max_iter) / self.max_iter
        return self.end_factor + (1.0 - self.end_factor) * self.curve(progress)

    @staticmethod
    def curve(progress: float) -> float:
        raise NotImplementedError


class WarmupCosineLR(_DecayToEnd):
    """Half a cosine from 1 down to ``end_factor`` at ``max_iter``."""

    @staticmethod
    def curve(progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupLinearLR(_DecayToEnd):
    """Straight line from 1 down to ``end_factor`` at ``max_iter`` (the ShuffleNet ImageNet recipe)."""

    @staticmethod
    def curve(progress: float) -> float:
        return 1.0 - progress


SCHEDULERS = {cls.__name__: cls for cls in (WarmupMultiStepLR, WarmupCosineLR, WarmupLinearLR)}


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> WarmupLRScheduler:
    """The schedule named by ``cfg.SOLVER.LR_SCHEDULER_NAME``, starting at iteration 0."""
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    if name not in SCHEDULERS:
        raise ValueError(
            f"unknown SOLVER.LR_SCHEDULER_NAME '{name}': expected one of {', '.join(SCHEDULERS)}"
        )
    warmup = {
        "warmup_factor": solver.WARMUP_FACTOR,
        "warmup_iters": solver.WARMUP_ITERS,
        "warmup_method": solver.WARMUP_METHOD,
    }
    if name == "WarmupMultiStepLR":
        late_steps = [step for step in solver.STEPS if step > solver.MAX_ITER]
        if late_steps:
            logger.warning(
                "SOLVER.STEPS %s lie beyond SOLVER.MAX_ITER=%d and will never be reached",
                late_steps,
                solver.MAX_ITER,
            )
        return WarmupMultiStepLR(optimizer, solver.MAX_ITER, solver.STEPS, solver.GAMMA, **warmup)
    end_factor = solver.BASE_LR_END / solver.BASE_LR if solver.BASE_LR else 0.0
    return SCHEDULERS[name](optimizer, solver.MAX_ITER, end_factor=end_factor, **warmup)
