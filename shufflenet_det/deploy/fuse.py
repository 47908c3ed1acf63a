"""Inference-only rewrites that keep a model's outputs: BatchNorm folding and ShuffleNet pointwise variants.

Every function returns a new model in eval mode and leaves the one it was given untouched. The
rewritten models are plain module trees (state dict keys differ from the original's), meant for
export and benchmarks, not for training or for loading checkpoints.

ShuffleNet's unit is ``compress`` (grouped 1x1 conv) -> channel shuffle -> 3x3 depthwise ->
``expand`` (grouped 1x1 conv). ``optimize_shufflenet`` runs its grouped 1x1 convs (``pointwise``) as

- ``"grouped"``: the grouped convolution kernel (as trained);
- ``"dense"``: one ordinary 1x1 convolution with a block-diagonal weight (``groups`` times the
  multiply-adds, in case dense kernels beat grouped ones);
- ``"matmul"``: one batched matrix product over the groups,

and the shuffle (``shuffle``) as

- ``"reshape"``: reshape-transpose-reshape (as trained);
- ``"gather"``: one gather of channels with a fixed index, placed where it moves least data: none
  after a dense ``compress`` (its rows are written already shuffled), after the depthwise conv in
  stride-2 units (a quarter of the pixels), else between ``compress`` and the depthwise conv;
- ``"fold"``: no op at all. The shuffle permutes the channels ``compress`` writes, so ``compress``
  becomes a dense 1x1 conv whose output rows are permuted (exact, because ReLU is per channel);
  the first unit's ``compress`` is dense anyway, so there the shuffle is free to drop.
"""

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

POINTWISE_MODES = ("grouped", "dense", "matmul")
SHUFFLE_MODES = ("reshape", "gather", "fold")
# Zero-channel padding that ``optimize_shufflenet(align=...)`` accepts, as a fraction of a unit's
# 1x1-conv multiply-adds: +20% paid off in ONNX Runtime (ShuffleNet 2x stage 2), +60% did not.
ALIGN_MAX_OVERHEAD = 0.25
_NORMS = (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d)


def deploy_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with gradients off, its convs as built: the starting point of every rewrite here."""
    model = apply_conv_form(copy.deepcopy(model).eval(), "modules")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _fold_in_place(module: nn.Module) -> None:
    for child in module.children():
        _fold_in_place(child)
    if not isinstance(module, nn.Sequential):
        # Only a Sequential guarantees that a norm layer reads exactly the conv before it.
        return
    names = list(module._modules)
    for previous, name in zip(names, names[1:]):
        conv, norm = module._modules[previous], module._modules[name]
        # A BatchNorm without running statistics normalizes by each batch's: it cannot be folded.
        if isinstance(conv, nn.Conv2d) and isinstance(norm, _NORMS) and norm.running_mean is not None:
            module._modules[previous] = fuse_conv_bn_eval(conv, norm)
            module._modules[name] = None
    for name in [name for name in names if module._modules[name] is None]:
        del module._modules[name]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm / FrozenBatchNorm2d folded into the conv before it.

    Folding (torch's ``fuse_conv_bn_eval``) happens where a norm layer with running statistics directly
    follows a ``Conv2d`` inside an ``nn.Sequential`` (ConvNormAct and torchvision's conv blocks); other
    norm layers are kept.
    """
    model = deploy_copy(model)
    _fold_in_place(model)
    return model


@torch.no_grad()
def dense_pointwise(conv: nn.Conv2d) -> nn.Conv2d:
    """A grouped 1x1 convolution as an ordinary one with a block-diagonal weight (same outputs)."""
    dense = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride, bias=conv.bias is not None)
    dense.weight.copy_(block_diagonal_weight(conv.weight, conv.groups))
    if conv.bias is not None:
        dense.bias.copy_(conv.bias)
    return dense.requires_grad_(False)


class GatherShuffle(nn.Module):
    """A channel shuffle as one gather of channels with a fixed index (exports as a single ONNX Gather)."""

    def __init__(self, permutation: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("permutation", permutation.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, 1, self.permutation)


class GroupedMatmul(nn.Module):
    """A grouped 1x1 convolution (stride 1) as one batched matrix product: (g, out/g, in/g) @ (g, in/g, H*W)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0):
            raise ValueError("GroupedMatmul only replaces stride-1 1x1 convolutions without padding")
        self.groups = conv.groups
        weight = conv.weight.detach().reshape(self.groups, conv.out_channels // self.groups, -1)
        self.register_buffer("weight", weight.clone())
        bias = conv.bias.detach().reshape(1, -1, 1) if conv.bias is not None else None
        self.register_buffer("bias", None if bias is None else bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        y = torch.matmul(self.weight, x.reshape(batch, self.groups, channels // self.groups, height * width))
        y = y.reshape(batch, -1, height * width)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(batch, -1, height, width)


def _pointwise(conv: nn.Conv2d, mode: str) -> nn.Module:
    if conv.groups == 1 or mode == "grouped":
        return conv
    return dense_pointwise(conv) if mode == "dense" else GroupedMatmul(conv)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _real_positions(channels: int, groups: int, block: int) -> torch.Tensor:
    """Where real channel r sits when each group's channels start a block of ``block`` positions."""
    per_group = channels // groups
    index = torch.arange(channels)
    return (index // per_group) * block + index % per_group


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


def _aligned_blocks(unit: ShuffleUnit, multiple: int) -> Tuple[int, int]:
    """Channels per group of ``compress``'s output and ``expand``'s input once padded for ``multiple``.

    Padding happens only where it lets all three convs of the unit use ONNX Runtime's blocked
    (NCHWc) kernels, which need every group's input and output channels to be multiples of the
    block, and where it adds at most ``ALIGN_MAX_OVERHEAD`` of the 1x1 convs' multiply-adds;
    otherwise the unit keeps its widths.
    """
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
    """Rewrite a folded unit, in place, with its shuffle as (at most) one Gather placed where it costs least.

    - A dense ``compress`` (the first unit of stage 2) writes its channels already shuffled: no op.
    - In a stride-2 unit the Gather runs after the depthwise conv (whose weights follow the
      channels' pre-shuffle order), on a quarter of the pixels.
    - Otherwise it runs between ``compress`` and the depthwise conv, as trained.

    With ``multiple`` > 1, bottleneck groups are also padded with zero channels (``_aligned_blocks``);
    the Gather then places the padding too. Padded depthwise channels have zero weights and padded
    ``expand`` inputs zero weights, so the outputs are unchanged.
    """
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

    wide_compress = nn.Conv2d(compress.in_channels, padded_c, 1, groups=groups_c)
    wide_compress.weight.zero_()
    wide_compress.bias.zero_()
    wide_compress.weight[source] = compress.weight[rows]
    wide_compress.bias[source] = _bias(compress)[rows]
    channels = padded_c if after_depthwise else depthwise_channels
    wide_depthwise = nn.Conv2d(channels, channels, depthwise.kernel_size, depthwise.stride, depthwise.padding, groups=channels)
    wide_depthwise.weight.zero_()
    wide_depthwise.bias.zero_()
    wide_depthwise.weight[depthwise_positions] = depthwise.weight
    wide_depthwise.bias[depthwise_positions] = _bias(depthwise)
    wide_expand = nn.Conv2d(padded_e, expand.out_channels, 1, groups=groups_e)
    wide_expand.weight.zero_()
    wide_expand.weight[:, : mid // groups_e] = expand.weight
    wide_expand.bias.copy_(_bias(expand))
    for conv in (wide_compress, wide_depthwise, wide_expand):
        conv.requires_grad_(False)
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
def optimize_shufflenet(
    model: nn.Module, pointwise: str = "grouped", shuffle: str = "reshape", align: int = 0
) -> nn.Module:
    """A copy of ``model`` with BatchNorm folded and every ShuffleUnit's 1x1 convs rewritten.

    Works on any module that contains ``ShuffleUnit``s (a classifier, a detector's trunk or head);
    other modules only get their BatchNorms folded. See the module docstring for the modes.
    ``align`` > 0 (with the grouped / gather form) pads the stem and bottlenecks with zero channels
    to multiples of ``align`` where that unlocks blocked kernels (``align_stem``, ``_aligned_blocks``).
    """
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
    for unit in list(model.modules()):
        if not isinstance(unit, ShuffleUnit):
            continue
        if shuffle == "gather":
            _gather_unit(unit, align)
        compress = unit.compress.conv
        permutation = None
        if isinstance(unit.shuffle, ChannelShuffle):
            permutation = unit.shuffle.permutation(compress.out_channels)
        if shuffle == "fold" and permutation is not None:
            dense = dense_pointwise(compress)
            dense.weight.copy_(dense.weight[permutation])
            if dense.bias is not None:
                dense.bias.copy_(dense.bias[permutation])
            unit.compress.conv = dense
            unit.shuffle = nn.Identity()
        else:
            unit.compress.conv = _pointwise(compress, pointwise)
        unit.expand.conv = _pointwise(unit.expand.conv, pointwise)
    return model


class ChannelSlice(nn.Module):
    """Keep the first ``channels`` channels (drops the zero channels that ``align_stem`` adds)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.channels]


@torch.no_grad()
def align_stem(model: nn.Module, multiple: int = 16) -> nn.Module:
    """Pad a ShuffleNet stem's output channels with zero channels up to a multiple of ``multiple``, in place.

    ONNX Runtime's x86 kernels work on blocks of 16 (AVX-512) or 8 channels; a 12- or 24-channel
    stem (0.5x, 1x) otherwise runs its max pool and the first unit's average pool in slow plain
    loops. The stem conv gets zero rows, the first unit's (dense) compress conv zero columns, and its
    shortcut drops the padding after pooling, so outputs are unchanged. Expects BatchNorm folded
    (``fold_batchnorm``) and a module with ``stem`` (conv block, max pool) and ``stage2`` children,
    as ShuffleNetV1 and its ``split_at_stride`` trunk have; returns ``model`` unchanged otherwise.
    """
    stem, stage2 = getattr(model, "stem", None), getattr(model, "stage2", None)
    if not isinstance(stem, nn.Sequential) or not isinstance(stage2, nn.Sequential):
        return model
    conv, unit = getattr(stem[0], "conv", None), stage2[0]
    if not isinstance(conv, nn.Conv2d) or not isinstance(unit, ShuffleUnit) or unit.compress.conv.groups != 1:
        return model
    channels = conv.out_channels
    padded = _round_up(channels, multiple)
    if padded == channels or conv.bias is None or unit.compress.conv.bias is None:
        return model
    wide = nn.Conv2d(conv.in_channels, padded, conv.kernel_size, conv.stride, conv.padding)
    wide.weight.zero_()
    wide.bias.zero_()
    wide.weight[:channels] = conv.weight
    wide.bias[:channels] = conv.bias
    stem[0].conv = wide
    compress = unit.compress.conv
    widened = nn.Conv2d(padded, compress.out_channels, 1)
    widened.weight.zero_()
    widened.weight[:, :channels] = compress.weight
    widened.bias.copy_(compress.bias)
    unit.compress.conv = widened
    unit.shortcut = nn.Sequential(unit.shortcut, ChannelSlice(channels))
    return model.requires_grad_(False)
