"""Faster forms of ``ConvNormAct`` and ShuffleNet's shuffle, applied in place to a built model by ``apply_conv_form``:
module classes swapped only (same state dict keys, outputs and gradients; tests compare both)."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d

from .layers import ChannelShuffle, ConvNormAct
from .shufflenet import ShuffleUnit

# SHUFFLENET_DET.CONV_IMPL: "modules" as built (the only form whose convs forward hooks see); "folded": FrozenBN folded
# into the conv weight at each call; "dense": folded, grouped 1x1 convs as block-diagonal dense ones (far better on GPU
# matrix units, 1.5x slower on CPUs), the shuffle as a folded ``compress``'s row order; "auto": "dense" on CUDA.
CONV_IMPLS = ("auto", "modules", "folded", "dense")


def block_diagonal_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped 1x1 conv weight [out, in/groups, 1, 1] as the equivalent dense weight [out, in, 1, 1]."""
    out_channels, in_per_group = weight.shape[:2]
    blocks = weight.reshape(groups, out_channels // groups, in_per_group).unbind(0)
    return torch.block_diag(*blocks).reshape(out_channels, in_per_group * groups, 1, 1)


def fold_norm(
    weight: torch.Tensor, bias: Optional[torch.Tensor], norm: FrozenBatchNorm2d
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias computing ``norm(conv(x))``; differentiable in both, unlike torch's
    ``fuse_conv_bn_weights``, which returns new leaf Parameters."""
    scale = torch.rsqrt(norm.running_var + norm.eps) * norm.weight
    shift = -norm.running_mean * scale + norm.bias
    if bias is not None:
        shift = shift + bias * scale
    return weight * scale.reshape(-1, 1, 1, 1), shift


class FoldedConvNormAct(ConvNormAct):
    """A ConvNormAct as one convolution: FrozenBatchNorm2d folded into the weight at each call, ``dense``
    grouped 1x1 convs with a block-diagonal weight, output channels in ``output_order``."""

    dense = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        weight, bias, groups = conv.weight, conv.bias, conv.groups
        if self.dense:
            weight, groups = block_diagonal_weight(weight, groups), 1
        folded = isinstance(self.norm, FrozenBatchNorm2d)
        if folded:
            weight, bias = fold_norm(weight, bias, self.norm)
        if self.output_order is not None:
            weight, bias = weight[self.output_order], bias[self.output_order]
        x = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, groups)
        if not folded:
            x = self.norm(x)
        return self.act(x) if "act" in self._modules else x


class FoldedShuffle(ChannelShuffle):
    """A shuffle already done by the ``compress`` conv before it (its ``output_order``): passes ``x`` on. It still
    reports its permutation (``ShuffleNetV1.shuffle_layout``); a layout change would leave that order stale: refused."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def inverse(self) -> bool:
        return self.__dict__["inverse"]

    @inverse.setter
    def inverse(self, value: bool) -> None:
        raise ValueError("the shuffle is folded into the compress conv: set the layout before apply_conv_form")


def apply_conv_form(model: nn.Module, form: str, device: Union[str, torch.device, None] = None) -> nn.Module:
    """Rewrite every ConvNormAct (and ShuffleNet shuffle) of ``model`` into ``form`` in place and return it;
    "auto" picks by ``device`` (default CPU). Undoes any earlier form first ("modules": as built), so
    apply it last, after weights and the shuffle layout are loaded."""
    if form not in CONV_IMPLS:
        raise ValueError(f"unknown conv form '{form}': expected one of {', '.join(CONV_IMPLS)}")
    if form == "auto":
        form = "dense" if torch.device(device or "cpu").type == "cuda" else "folded"
    for module in model.modules():  # same children and state, another forward: swap the class
        if isinstance(module, FoldedConvNormAct):
            module.__class__ = ConvNormAct
            module.__dict__.pop("dense", None)
            module._buffers.pop("output_order", None)
        elif isinstance(module, FoldedShuffle):
            module.__class__ = ChannelShuffle
    if form == "modules":
        return model
    for module in model.modules():
        if isinstance(module, ConvNormAct):
            conv = module.conv
            dense = form == "dense" and conv.groups > 1 and conv.kernel_size == (1, 1)
            if dense or isinstance(module.norm, FrozenBatchNorm2d):
                module.__class__ = FoldedConvNormAct
                module.dense = dense
                module.register_buffer("output_order", None, persistent=False)
    if form == "dense":
        for unit in model.modules():
            compress = getattr(unit, "compress", None)
            # A trainable BatchNorm's statistics follow the unshuffled channels: only FrozenBN folds.
            if (isinstance(unit, ShuffleUnit) and isinstance(unit.shuffle, ChannelShuffle)
                    and isinstance(compress, FoldedConvNormAct) and isinstance(compress.norm, FrozenBatchNorm2d)
                    and (compress.conv.groups == 1 or compress.dense)):
                conv = compress.conv
                compress.output_order = unit.shuffle.permutation(conv.out_channels, conv.weight.device)
                unit.shuffle.__class__ = FoldedShuffle
    return model
