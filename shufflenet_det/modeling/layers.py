"""Building blocks shared by the model families: conv-norm-act, normalization choice, freezing."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d

NORMS = ("BN", "FrozenBN", "SyncBN")


def get_norm(norm: str, channels: int) -> nn.Module:
    """Normalization layer by detectron2's names: "BN", "FrozenBN" or "SyncBN"."""
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "SyncBN":
        return nn.SyncBatchNorm(channels)
    raise ValueError(f"unknown norm '{norm}': expected one of {', '.join(NORMS)}")


# How ConvNormAct runs its convolution and norm (``set_conv_impl``); every form computes the same function.
# "modules": conv, then the norm layer, as built. "folded": a FrozenBatchNorm2d is folded into the
# conv's weight and bias at each call (one kernel and no extra tensor per layer; gradients still
# reach the conv weight). "dense": folded, and grouped 1x1 convs run as ordinary ones with a
# block-diagonal weight (GPU matrix units run those far better than grouped kernels; on a CPU they
# cost 1.5x more). "auto": "dense" for CUDA inputs, else "folded".
CONV_IMPLS = ("auto", "modules", "folded", "dense")


def block_diagonal_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped 1x1 conv weight [out, in/groups, 1, 1] as the equivalent dense weight [out, in, 1, 1]."""
    out_channels, in_per_group = weight.shape[:2]
    blocks = weight.reshape(groups, out_channels // groups, in_per_group).unbind(0)
    return torch.block_diag(*blocks).reshape(out_channels, in_per_group * groups, 1, 1)


def fold_norm(weight: torch.Tensor, bias: Optional[torch.Tensor], norm: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias that compute ``norm(conv(x))`` in one convolution, for a FrozenBatchNorm2d
    or an eval-mode BatchNorm (differentiable in ``weight`` and ``bias``)."""
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.running_mean is None:
        raise ValueError(f"{type(norm).__name__} without running statistics cannot be folded")
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale.reshape(-1, 1, 1, 1), shift


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class ConvNormAct(nn.Sequential):
    """Bias-free convolution, normalization and an optional ReLU.

    The modules stay a plain ``conv``/``norm``/``act`` sequence (state dicts, freezing and the deploy
    rewrites see them as such); ``conv_impl`` only changes how ``forward`` computes it (``CONV_IMPLS``).
    """

    conv_impl = "auto"

    def resolved_impl(self, x: torch.Tensor) -> str:
        """The form ``forward(x)`` uses: ``conv_impl`` with "auto" resolved for ``x``'s device."""
        if self.conv_impl == "auto":
            return "dense" if x.is_cuda else "folded"
        return self.conv_impl

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        norm: str = "BN",
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.norm = get_norm(norm, out_channels)
        if relu:
            self.act = nn.ReLU(inplace=True)

    def conv_weight_and_bias(self, impl: str) -> Tuple[torch.Tensor, Optional[torch.Tensor], int, bool]:
        """(weight, bias, groups, norm_folded) of the convolution ``forward`` runs in form ``impl``."""
        conv, norm = self.conv, self._modules.get("norm")
        weight, bias, groups = conv.weight, conv.bias, conv.groups
        if impl == "dense" and groups > 1 and conv.kernel_size == (1, 1):
            weight, groups = block_diagonal_weight(weight, groups), 1
        folded = isinstance(norm, FrozenBatchNorm2d)
        if folded:
            weight, bias = fold_norm(weight, bias, norm)
        return weight, bias, groups, folded

    def forward(self, x: torch.Tensor, output_order: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``output_order`` (channel indices) reorders the output channels for free inside the weight;
        it needs a folded norm and an ungrouped convolution (see ``can_reorder_outputs``)."""
        impl = self.resolved_impl(x)
        conv = self._modules.get("conv")
        if impl == "modules" or not isinstance(conv, nn.Conv2d) or _has_hooks(conv):
            # As built, rewritten by the deploy tools (folded norm, other conv forms), or watched by
            # hooks (complexity counters, feature probes) that must see the conv module run.
            if output_order is not None:
                raise ValueError("output_order needs conv_impl 'dense' and a FrozenBatchNorm2d")
            return super().forward(x)
        weight, bias, groups, folded = self.conv_weight_and_bias(impl)
        if output_order is not None:
            if not (folded and groups == 1):
                raise ValueError("output_order needs conv_impl 'dense' and a FrozenBatchNorm2d")
            weight, bias = weight[output_order], bias[output_order]
        x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)
        if not folded and "norm" in self._modules:
            x = self.norm(x)
        act = self._modules.get("act")
        return act(x) if act is not None else x

    def can_reorder_outputs(self, x: torch.Tensor) -> bool:
        """Whether ``forward(x, output_order)`` is available (the reorder costs nothing then)."""
        return (
            self.resolved_impl(x) == "dense"
            and isinstance(self._modules.get("conv"), nn.Conv2d)
            and isinstance(self._modules.get("norm"), FrozenBatchNorm2d)
            and (self.conv.groups == 1 or self.conv.kernel_size == (1, 1))
        )


def channel_shuffle(x: torch.Tensor, groups: int, inverse: bool = False) -> torch.Tensor:
    """The paper's shuffle: view channels as (groups, n), transpose to (n, groups), flatten.

    ``inverse=True`` applies the inverse permutation (view as (n, groups)), the one the official
    release uses; some of its checkpoints can only be reproduced exactly with it.
    """
    batch, channels, height, width = x.shape
    if inverse:
        x = x.view(batch, channels // groups, groups, height, width)
    else:
        x = x.view(batch, groups, channels // groups, height, width)
    return x.transpose(1, 2).reshape(batch, channels, height, width)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int, inverse: bool = False) -> None:
        super().__init__()
        self.groups = groups
        self.inverse = inverse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups, self.inverse)

    def permutation(self, channels: int, device: Optional[torch.device] = None) -> torch.Tensor:
        """Indices ``p`` with ``self(x) == x[:, p]``."""
        index = torch.arange(channels, dtype=torch.float32, device=device).reshape(1, channels, 1, 1)
        return channel_shuffle(index, self.groups, self.inverse).flatten().long()

    def extra_repr(self) -> str:
        return f"groups={self.groups}, inverse={self.inverse}"


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (and SyncBatchNorm) in ``module`` by a FrozenBatchNorm2d with its statistics.

    Returns the converted module; a BatchNorm passed directly is returned as a new object.
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.running_mean is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        converted = convert_frozen_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop gradients and statistics updates: parameters frozen, BatchNorms turned into FrozenBatchNorm2d."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return convert_frozen_batchnorm(module)


def make_divisible(value: float, divisor: int, minimum: Optional[int] = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (halves up), at least ``minimum``."""
    minimum = divisor if minimum is None else minimum
    return max(minimum, int(value / divisor + 0.5) * divisor)


def set_conv_impl(model: nn.Module, impl: str) -> nn.Module:
    """Choose how every ConvNormAct of ``model`` computes (``CONV_IMPLS``); returns ``model``."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv implementation '{impl}': expected one of {', '.join(CONV_IMPLS)}")
    for module in model.modules():
        if isinstance(module, ConvNormAct):
            module.conv_impl = impl
    return model
