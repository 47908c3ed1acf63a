"""SGD or AdamW with per-parameter-kind weight decay and learning rate, and optional gradient clipping."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from fvcore.common.config import CfgNode
from torch import nn
from torch.utils.hooks import RemovableHandle
from torchvision.ops import FrozenBatchNorm2d

from ..config.loading import ConfigError

# _NormBase covers BatchNorm*, SyncBatchNorm and InstanceNorm*.
NORM_MODULE_TYPES: Tuple[type, ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    FrozenBatchNorm2d,
)

CLIP_TYPES = ("value", "norm", "full_model")
OPTIMIZERS = ("SGD", "AdamW")


def get_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float = 0.0,
    weight_decay_bias: Optional[float] = 0.0,
    bias_lr_factor: float = 1.0,
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups: trainable parameters only, each once, grouped by (lr, weight decay).

    Parameters of normalization layers get ``weight_decay_norm``; other biases get ``weight_decay_bias``
    (``None``: same as ``weight_decay``); every bias gets ``base_lr * bias_lr_factor``. Groups keep the
    order in which their first parameter appears in the model, so they match across runs (resume).
    """
    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    seen = set()
    for module in model.modules():
        is_norm = isinstance(module, NORM_MODULE_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr, decay = base_lr, weight_decay
            if name == "bias":
                lr = base_lr * bias_lr_factor
                decay = weight_decay if weight_decay_bias is None else weight_decay_bias
            if is_norm:
                decay = weight_decay_norm
            groups.setdefault((lr, decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


def add_gradient_clipping(
    optimizer: torch.optim.Optimizer, clip_type: str, clip_value: float, norm_type: float = 2.0
) -> RemovableHandle:
    """Clip gradients right before every ``optimizer.step()``, with detectron2's meaning of each type.

    ``"value"`` clamps each gradient element to [-clip_value, clip_value]; ``"norm"`` scales each
    parameter's gradient on its own to a ``norm_type``-norm of at most ``clip_value``; ``"full_model"``
    scales all gradients together so their total norm is at most ``clip_value``. Running as a step
    pre-hook means a ``GradScaler`` has already unscaled the gradients when clipping happens.
    """
    clip: Callable[[List[torch.Tensor]], Any]
    if clip_type == "value":
        clip = lambda params: nn.utils.clip_grad_value_(params, clip_value)  # noqa: E731
    elif clip_type == "norm":
        clip = lambda params: [nn.utils.clip_grad_norm_(p, clip_value, norm_type) for p in params]  # noqa: E731
    elif clip_type == "full_model":
        clip = lambda params: nn.utils.clip_grad_norm_(params, clip_value, norm_type)  # noqa: E731
    else:
        raise ValueError(
            f"unknown SOLVER.CLIP_GRADIENTS.CLIP_TYPE '{clip_type}': expected one of {', '.join(CLIP_TYPES)}"
        )
    if clip_value <= 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be positive, got {clip_value}")

    def clip_before_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if params:
            clip(params)

    return optimizer.register_step_pre_hook(clip_before_step)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER ("SGD" with SOLVER.MOMENTUM / NESTEROV, or "AdamW") from ``cfg.SOLVER`` over the
    trainable parameters of ``model`` (see ``get_param_groups``)."""
    solver = cfg.SOLVER
    if solver.OPTIMIZER not in OPTIMIZERS:
        raise ConfigError(f"unknown SOLVER.OPTIMIZER '{solver.OPTIMIZER}': expected one of {', '.join(OPTIMIZERS)}")
    param_groups = get_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
    )
    if not param_groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    optimizer: torch.optim.Optimizer
    if solver.OPTIMIZER == "AdamW":
        optimizer = torch.optim.AdamW(param_groups, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY)
    else:
        optimizer = torch.optim.SGD(
            param_groups,
            lr=solver.BASE_LR,
            momentum=solver.MOMENTUM,
            nesterov=solver.NESTEROV,
            weight_decay=solver.WEIGHT_DECAY,
        )
    if solver.CLIP_GRADIENTS.ENABLED:
        clip = solver.CLIP_GRADIENTS
        add_gradient_clipping(optimizer, clip.CLIP_TYPE, clip.CLIP_VALUE, clip.NORM_TYPE)
    return optimizer
