"""SGD or AdamW with per-parameter-kind weight decay and learning rate, gradient clipping, and the
per-iteration warmup schedules (a torch ``LambdaLR`` whose decay curves come from fvcore)."""

from __future__ import annotations

import bisect
import logging
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
from fvcore.common.config import CfgNode
from fvcore.common.param_scheduler import CosineParamScheduler, LinearParamScheduler
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.hooks import RemovableHandle
from torchvision.ops import FrozenBatchNorm2d

from ..config.loading import ConfigError, check_choice

logger = logging.getLogger(__name__)

# _NormBase covers BatchNorm*, SyncBatchNorm and InstanceNorm*.
NORM_MODULE_TYPES = (
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, FrozenBatchNorm2d
)
CLIP_TYPES = ("value", "norm", "full_model")
OPTIMIZERS = ("SGD", "AdamW")
WARMUP_METHODS = ("linear", "constant")
SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupLinearLR")


def get_param_groups(
    model: nn.Module, base_lr: float, weight_decay: float, weight_decay_norm: float = 0.0,
    weight_decay_bias: Optional[float] = 0.0, bias_lr_factor: float = 1.0,
) -> List[Dict[str, Any]]:
    """Trainable parameters, each once, grouped by (lr, weight decay): norm layers' parameters get
    ``weight_decay_norm``, other biases ``weight_decay_bias`` (None: ``weight_decay``), every bias
    ``base_lr * bias_lr_factor``. Groups keep model order, so they match across runs (resume)."""
    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    seen = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, decay = base_lr, weight_decay
            if name == "bias":
                lr = base_lr * bias_lr_factor
                decay = weight_decay if weight_decay_bias is None else weight_decay_bias
            if isinstance(module, NORM_MODULE_TYPES):
                decay = weight_decay_norm
            groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def add_gradient_clipping(
    optimizer: torch.optim.Optimizer, clip_type: str, clip_value: float, norm_type: float = 2.0
) -> RemovableHandle:
    """Clip gradients before every ``optimizer.step()`` as detectron2 does: ``"value"`` clamps elements,
    ``"norm"`` each parameter's gradient norm on its own, ``"full_model"`` their total norm. As a step
    pre-hook it runs after a ``GradScaler`` has unscaled the gradients."""
    check_choice("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", clip_type, CLIP_TYPES)
    if clip_value <= 0:
        raise ConfigError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be positive, got {clip_value}")

    def clip_before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        if clip_type == "value":
            nn.utils.clip_grad_value_(params, clip_value)
        elif clip_type == "norm":
            for param in params:
                nn.utils.clip_grad_norm_(param, clip_value, norm_type)
        else:
            nn.utils.clip_grad_norm_(params, clip_value, norm_type)

    return optimizer.register_step_pre_hook(clip_before_step)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER (SGD with MOMENTUM / NESTEROV, or AdamW) over ``get_param_groups`` of ``model``."""
    solver = cfg.SOLVER
    check_choice("SOLVER.OPTIMIZER", solver.OPTIMIZER, OPTIMIZERS)
    param_groups = get_param_groups(
        model, solver.BASE_LR, solver.WEIGHT_DECAY, solver.WEIGHT_DECAY_NORM, solver.WEIGHT_DECAY_BIAS,
        solver.BIAS_LR_FACTOR,
    )
    if not param_groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    optimizer: torch.optim.Optimizer
    if solver.OPTIMIZER == "AdamW":
        optimizer = torch.optim.AdamW(param_groups, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)
    else:
        optimizer = torch.optim.SGD(
            param_groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM, nesterov=solver.NESTEROV,
            weight_decay=solver.WEIGHT_DECAY,
        )
    if solver.CLIP_GRADIENTS.ENABLED:
        clip = solver.CLIP_GRADIENTS
        add_gradient_clipping(optimizer, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE)
    return optimizer


class WarmupLRScheduler(LambdaLR):
    """``LambdaLR`` whose factor is a pure function of the iteration index, so setting the iteration (resume)
    restores it exactly. Step once per iteration; the state dict is ``{"last_iter", "base_lrs"}``."""

    def set_iteration(self, iteration: int) -> None:
        """Jump to ``iteration`` and set the optimizer's learning rates for it."""
        self.last_epoch = iteration - 1
        with warnings.catch_warnings():
            # torch warns of a skipped rate when this steps before optimizer.step() (a skipped bad batch or
            # GradScaler overflow); here each rate belongs to its iteration.
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
    """SOLVER.LR_SCHEDULER_NAME at iteration 0. Cosine and linear decay along fvcore curves of
    ``min(i, MAX_ITER) / MAX_ITER`` to BASE_LR_END / BASE_LR. Multistep counts whole iterations:
    fvcore's ``MultiStepParamScheduler`` moves steps one early once MAX_ITER reaches 10^6."""
    solver = cfg.SOLVER
    name, max_iter = solver.LR_SCHEDULER_NAME, solver.MAX_ITER
    check_choice("SOLVER.LR_SCHEDULER_NAME", name, SCHEDULERS)
    check_choice("SOLVER.WARMUP_METHOD", solver.WARMUP_METHOD, WARMUP_METHODS)
    if max_iter <= 0:
        raise ConfigError(f"SOLVER.MAX_ITER must be positive, got {max_iter}")
    if name == "WarmupMultiStepLR":
        steps, gamma = list(solver.STEPS), solver.GAMMA
        if steps != sorted(steps):
            raise ConfigError(f"SOLVER.STEPS must be increasing, got {tuple(steps)}")
        late_steps = [step for step in steps if step > max_iter]
        if late_steps:
            logger.warning("SOLVER.STEPS %s lie beyond SOLVER.MAX_ITER=%d and will never be reached", late_steps, max_iter)

        def decay(iteration: int) -> float:
            return gamma ** bisect.bisect_right(steps, iteration)

    else:
        end_factor = solver.BASE_LR_END / solver.BASE_LR if solver.BASE_LR else 0.0
        curve = (CosineParamScheduler if name == "WarmupCosineLR" else LinearParamScheduler)(1.0, 0.0)

        def decay(iteration: int) -> float:
            # Scaled here, not by the curve's end_value: fvcore's linear form rounds differently.
            return end_factor + (1.0 - end_factor) * curve(min(iteration, max_iter) / max_iter)

    warmup_iters, warmup_factor, linear = solver.WARMUP_ITERS, solver.WARMUP_FACTOR, solver.WARMUP_METHOD == "linear"

    def factor(iteration: int) -> float:
        # detectron2's legacy warmup: "linear" ramps from WARMUP_FACTOR to 1, "constant" holds it.
        warmup = 1.0
        if iteration < warmup_iters:
            alpha = iteration / warmup_iters if linear else 0.0
            warmup = warmup_factor * (1.0 - alpha) + alpha
        return warmup * decay(iteration)

    return WarmupLRScheduler(optimizer, factor)
