"""Per-iteration learning-rate schedules with warmup: a torch ``LambdaLR`` whose factor comes from fvcore.

The rate of iteration ``i`` (0-based) is ``base_lr * warmup(i) * decay(i)``, a pure function of ``i``, so
setting the iteration (resume, ``load_state_dict``) restores the schedule exactly. The cosine and linear
decays follow fvcore ``ParamScheduler`` curves of the training fraction ``min(i, MAX_ITER) / MAX_ITER``,
as in detectron2, from 1 down to ``BASE_LR_END / BASE_LR``. The multistep decay counts passed steps in whole iterations instead: fvcore's
``MultiStepParamScheduler`` turns the fraction back into an iteration with a 1e-6 margin, which moves a
step one iteration early once MAX_ITER reaches a million, and it rejects steps at or past MAX_ITER.
"""

from __future__ import annotations

import bisect
import logging
import warnings
from typing import Any, Callable, Dict

import torch
from fvcore.common.config import CfgNode
from fvcore.common.param_scheduler import CosineParamScheduler, LinearParamScheduler
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)

WARMUP_METHODS = ("linear", "constant")
SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupLinearLR")


class WarmupLRScheduler(LambdaLR):
    """``LambdaLR`` with the factor ``warmup(i) * decay(i)``: over the first ``warmup_iters`` iterations
    ``"linear"`` warmup ramps from ``warmup_factor`` to 1 and ``"constant"`` holds ``warmup_factor``.

    Call ``step()`` once after every optimizer step; ``last_epoch`` is the index of the iteration whose
    rate is set. The state dict is ``{"last_iter", "base_lrs"}``, as in checkpoints of earlier versions.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        decay: Callable[[int], float],
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
    ) -> None:
        if warmup_method not in WARMUP_METHODS:
            raise ValueError(
                f"unknown SOLVER.WARMUP_METHOD '{warmup_method}': expected one of {', '.join(WARMUP_METHODS)}"
            )
        self.decay = decay
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, self.multiplier)

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
        self.last_epoch = iteration - 1
        with warnings.catch_warnings():
            # torch warns when the first step comes before optimizer.step() (a skipped bad batch, a
            # GradScaler skipping an overflow) that a rate was skipped; here each rate belongs to its iteration.
            warnings.simplefilter("ignore", UserWarning)
            super().step()

    def step(self) -> None:  # type: ignore[override]
        self.set_iteration(self.last_epoch + 1)

    def state_dict(self) -> Dict[str, Any]:
        return {"last_iter": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise ValueError(
                f"scheduler state has {len(state['base_lrs'])} parameter groups, the optimizer "
                f"{len(self.optimizer.param_groups)}"
            )
        self.base_lrs = list(state["base_lrs"])
        self.set_iteration(state["last_iter"])


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> WarmupLRScheduler:
    """The schedule named by ``cfg.SOLVER.LR_SCHEDULER_NAME``, starting at iteration 0."""
    solver = cfg.SOLVER
    name, max_iter = solver.LR_SCHEDULER_NAME, solver.MAX_ITER
    if name not in SCHEDULERS:
        raise ValueError(f"unknown SOLVER.LR_SCHEDULER_NAME '{name}': expected one of {', '.join(SCHEDULERS)}")
    if max_iter <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
    if name == "WarmupMultiStepLR":
        steps, gamma = list(solver.STEPS), solver.GAMMA
        if steps != sorted(steps):
            raise ValueError(f"SOLVER.STEPS must be increasing, got {tuple(steps)}")
        late_steps = [step for step in steps if step > max_iter]
        if late_steps:
            logger.warning("SOLVER.STEPS %s lie beyond SOLVER.MAX_ITER=%d and will never be reached", late_steps, max_iter)

        def decay(iteration: int) -> float:
            return gamma ** bisect.bisect_right(steps, iteration)

    else:
        end_factor = solver.BASE_LR_END / solver.BASE_LR if solver.BASE_LR else 0.0
        shape = CosineParamScheduler if name == "WarmupCosineLR" else LinearParamScheduler
        curve = shape(start_value=1.0, end_value=0.0)

        def decay(iteration: int) -> float:
            # Scaled here, not by the curve's end_value: fvcore's linear form rounds differently.
            return end_factor + (1.0 - end_factor) * curve(min(iteration, max_iter) / max_iter)

    return WarmupLRScheduler(optimizer, decay, solver.WARMUP_FACTOR, solver.WARMUP_ITERS, solver.WARMUP_METHOD)
