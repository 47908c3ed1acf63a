"""Inference-only copies of a model with the same outputs (new eval-mode plain module trees for export and
benchmarks; state dict keys differ): BatchNorm folded, ShuffleNet units in the forms of ``optimize_shufflenet``."""

from __future__ import annotations

import copy
from typing import Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.ops import FrozenBatchNorm2d

from ..modeling.layers import ChannelShuffle
from ..modeling.shufflenet import ShuffleUnit
from ..modeling.speed import apply_conv_form, block_diagonal_weight

# Grouped 1x1 convs as trained, block-diagonal dense (``groups`` times the multiply-adds) or one batched matmul;
# the shuffle as trained, one fixed-index Gather where it moves least data, or a dense compress's row order.
POINTWISE_MODES = ("grouped", "dense", "matmul")
SHUFFLE_MODES = ("reshape", "gather", "fold")
# Zero-channel padding that ``align`` may add, as a fraction of a unit's 1x1-conv multiply-adds: +20% paid
# off in ONNX Runtime (ShuffleNet 2x stage 2), +60% did not.
ALIGN_MAX_OVERHEAD = 0.25
_NORMS = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (convs as built, gradients off) with every BatchNorm / FrozenBatchNorm2d that has
    running statistics and directly follows a ``Conv2d`` in an ``nn.Sequential`` folded into that conv."""
    model = apply_conv_form(copy.deepcopy(model).eval(), "modules").requires_grad_(False)
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):  # only there does a norm surely read the conv before it
            continue
        names = list(module._modules)
        for previous, name in zip(names, names[1:]):
            conv, norm = module._modules[previous], module._modules[name]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, _NORMS) and norm.running_mean is not None:
                module._modules[previous] = fuse_conv_bn_eval(conv, norm)
                module._modules[name] = None
        for name in [name for name in names if module._modules[name] is None]:
            del module._modules[name]
    return model


def _zero_conv(in_channels: int, out_channels: int, kernel_size=1, stride=1, padding=0, groups=1) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups).requires_grad_(False)
    conv.weight.zero_()
    conv.bias.zero_()
    return conv


@torch.no_grad()
def dense_pointwise(conv: nn.Conv2d) -> nn.Conv2d:
    """A folded grouped 1x1 convolution as an ordinary one with a block-diagonal weight (same outputs)."""
    dense = _zero_conv(conv.in_channels, conv.out_channels, 1, conv.stride)
    dense.weight.copy_(block_diagonal_weight(conv.weight, conv.groups))
    dense.bias.copy_(conv.bias)
    return dense


class GatherShuffle(nn.Module):
    """A channel shuffle as one gather of channels with a fixed index (a single ONNX Gather)."""

    def __init__(self, permutation: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("permutation", permutation.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, 1, self.permutation)


class GroupedMatmul(nn.Module):
    """A folded grouped 1x1 convolution (stride 1) as one batched matrix product: (g, out/g, in/g) @ (g, in/g, H*W)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.groups = groups = conv.groups
        self.register_buffer("weight", conv.weight.detach().reshape(groups, conv.out_channels // groups, -1).clone())
        self.register_buffer("bias", conv.bias.detach().reshape(1, -1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        y = torch.matmul(self.weight, x.reshape(batch, self.groups, channels // self.groups, height * width))
        return (y.reshape(batch, -1, height * width) + self.bias).reshape(batch, -1, height, width)


class ChannelSlice(nn.Module):
    """Keep the first ``channels`` channels (drops zero channels added for alignment)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.channels]


def _pointwise(conv: nn.Conv2d, mode: str) -> nn.Module:
    if conv.groups == 1 or mode == "grouped":
        return conv
    return dense_pointwise(conv) if mode == "dense" else GroupedMatmul(conv)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _real_positions(channels: int, groups: int, block: int) -> torch.Tensor:
    """Where real channel r sits when each group's channels start a block of ``block`` positions."""
    index = torch.arange(channels)
    return (index // (channels // groups)) * block + index % (channels // groups)


def _aligned_blocks(unit: ShuffleUnit, multiple: int) -> Tuple[int, int]:
    """Channels per group of ``compress``'s output and ``expand``'s input, padded for ``multiple`` only where
    that lets all three convs use ONNX Runtime's blocked (NCHWc) kernels (every group's input and output
    a multiple of the block) within ``ALIGN_MAX_OVERHEAD``; otherwise the unit's own widths."""
    compress, expand = unit.compress.conv, unit.expand.conv
    mid, groups_c, groups_e = compress.out_channels, compress.groups, expand.groups
    unpadded = (mid // groups_c, mid // groups_e)
    if multiple <= 1:
        return unpadded
    block_c = _round_up(mid // groups_c, multiple) if groups_c > 1 else mid
    block_e = _round_up(mid // groups_e, multiple)
    if (groups_c > 1 and (compress.in_channels // groups_c) % multiple) or (expand.out_channels // groups_e) % multiple:
        return unpadded
    if max(block_c * groups_c, block_e * groups_e) > (1 + ALIGN_MAX_OVERHEAD) * mid:
        return unpadded
    return block_c, block_e


@torch.no_grad()
def _gather_unit(unit: ShuffleUnit, multiple: int = 0) -> None:
    """Rewrite a folded unit in place with its shuffle as at most one Gather: none after a dense ``compress``
    (it writes its rows shuffled), after the depthwise conv in stride-2 units (a quarter of the pixels),
    else before it. ``multiple`` > 1 also pads groups with zero channels (``_aligned_blocks``) that the
    Gather places; their zero weights keep the outputs."""
    compress, depthwise, expand = unit.compress.conv, unit.depthwise.conv, unit.expand.conv
    mid, groups_c, groups_e = compress.out_channels, compress.groups, expand.groups
    block_c, block_e = _aligned_blocks(unit, multiple)
    padded_c, padded_e = block_c * groups_c, block_e * groups_e
    # Real channel r of the shuffled sequence comes from compress output source[shuffled[r]] and
    # feeds expand input target[r]; the original depthwise conv's channel r is in shuffled order.
    source = _real_positions(mid, groups_c, block_c)
    target = _real_positions(mid, groups_e, block_e)
    shuffled = unit.shuffle.permutation(mid) if isinstance(unit.shuffle, ChannelShuffle) else torch.arange(mid)
    fold = groups_c == 1
    after_depthwise = not fold and depthwise.stride != (1, 1)
    depthwise_channels = padded_e
    if multiple > 1 and padded_e % multiple:
        # The bottleneck stays unaligned, but a plain-layout depthwise conv is very slow: pad its
        # channels at the end (the Gather writes them) and slice them off before ``expand``.
        depthwise_channels, after_depthwise = _round_up(padded_e, multiple), False
    if fold:  # compress rows land directly at expand's positions
        source, padded_c, rows = target, depthwise_channels, shuffled
    else:
        rows = torch.arange(mid)
    depthwise_positions = source[shuffled] if after_depthwise else target

    wide_compress = _zero_conv(compress.in_channels, padded_c, groups=groups_c)
    wide_compress.weight[source] = compress.weight[rows]
    wide_compress.bias[source] = compress.bias[rows]
    channels = padded_c if after_depthwise else depthwise_channels
    wide_depthwise = _zero_conv(channels, channels, depthwise.kernel_size, depthwise.stride, depthwise.padding,
                                channels)
    wide_depthwise.weight[depthwise_positions] = depthwise.weight
    wide_depthwise.bias[depthwise_positions] = depthwise.bias
    wide_expand = _zero_conv(padded_e, expand.out_channels, groups=groups_e)
    wide_expand.weight[:, : mid // groups_e] = expand.weight
    wide_expand.bias.copy_(expand.bias)
    unit.compress.conv, unit.depthwise.conv, unit.expand.conv = wide_compress, wide_depthwise, wide_expand

    gather = torch.zeros(depthwise_channels, dtype=torch.long)  # padding reads channel 0; nothing uses it
    gather[target] = source[shuffled]
    shuffle = nn.Identity() if fold or torch.equal(gather, torch.arange(depthwise_channels)) else GatherShuffle(gather)
    unit.shuffle = nn.Identity()
    if after_depthwise:
        unit.depthwise = nn.Sequential(unit.depthwise, shuffle)
    else:
        unit.shuffle = shuffle
    if depthwise_channels != padded_e:
        unit.depthwise = nn.Sequential(unit.depthwise, ChannelSlice(padded_e))


@torch.no_grad()
def align_stem(model: nn.Module, multiple: int = 16) -> nn.Module:
    """Pad a folded ShuffleNet stem's output (``stem`` and ``stage2`` children) with zero channels to a multiple
    of ``multiple``, in place; ``model`` unchanged if it has none. ONNX Runtime's x86 kernels work on 16- or
    8-channel blocks: a 12- or 24-channel stem runs its max pool and the first unit's average pool in slow
    plain loops. The first unit's dense ``compress`` gets zero columns, its shortcut drops the padding."""
    stem, stage2 = getattr(model, "stem", None), getattr(model, "stage2", None)
    if not isinstance(stem, nn.Sequential) or not isinstance(stage2, nn.Sequential):
        return model
    conv, unit = getattr(stem[0], "conv", None), stage2[0]
    if not isinstance(conv, nn.Conv2d) or not isinstance(unit, ShuffleUnit) or unit.compress.conv.groups != 1:
        return model
    channels, compress = conv.out_channels, unit.compress.conv
    padded = _round_up(channels, multiple)
    if padded == channels or conv.bias is None or compress.bias is None:
        return model
    stem[0].conv = _zero_conv(conv.in_channels, padded, conv.kernel_size, conv.stride, conv.padding)
    stem[0].conv.weight[:channels] = conv.weight
    stem[0].conv.bias[:channels] = conv.bias
    unit.compress.conv = _zero_conv(padded, compress.out_channels)
    unit.compress.conv.weight[:, :channels] = compress.weight
    unit.compress.conv.bias.copy_(compress.bias)
    unit.shortcut = nn.Sequential(unit.shortcut, ChannelSlice(channels))
    return model.requires_grad_(False)


@torch.no_grad()
def optimize_shufflenet(
    model: nn.Module, pointwise: str = "grouped", shuffle: str = "reshape", align: int = 0
) -> nn.Module:
    """A copy of ``model`` (any module holding ``ShuffleUnit``s: classifier, detector trunk or head) with
    BatchNorm folded and every unit in these forms. ``align`` > 0 (grouped / gather only) pads the stem and
    bottlenecks with zero channels to multiples of ``align`` where that unlocks blocked kernels."""
    if pointwise not in POINTWISE_MODES:
        raise ValueError(f"pointwise must be one of {POINTWISE_MODES}, got '{pointwise}'")
    if shuffle not in SHUFFLE_MODES:
        raise ValueError(f"shuffle must be one of {SHUFFLE_MODES}, got '{shuffle}'")
    if align and (pointwise, shuffle) != ("grouped", "gather"):
        raise ValueError("align needs pointwise='grouped' and shuffle='gather'")
    model = fold_batchnorm(model)
    if align:
        for module in list(model.modules()):  # the trunk may sit inside a detector
            align_stem(module, align)
    for unit in [module for module in model.modules() if isinstance(module, ShuffleUnit)]:
        if shuffle == "fold" and isinstance(unit.shuffle, ChannelShuffle):  # gathered into a dense compress's rows
            unit.compress.conv = dense_pointwise(unit.compress.conv)
        if shuffle != "reshape":
            _gather_unit(unit, align)
        unit.compress.conv = _pointwise(unit.compress.conv, pointwise)
        unit.expand.conv = _pointwise(unit.expand.conv, pointwise)
    return model
