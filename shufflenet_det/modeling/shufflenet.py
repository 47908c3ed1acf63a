"""ShuffleNet v1 (Zhang et al., CVPR 2018), unit as in the paper's Fig. 2: grouped 1x1 conv -> shuffle ->
3x3 depthwise (no ReLU) -> grouped 1x1 conv; stride 1 adds the input, stride 2 concatenates a 3x3 average-pooled
shortcut. Two details that differ between public implementations without changing any shape are switchable on
a built model: the shuffle permutation (``set_shuffle_layout``; megvii's is the inverse of the paper's) and the
stride-2 concatenation order (``set_concat_order``; megvii puts the shortcut first, pytorchcv the branch)."""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .layers import ChannelShuffle, ConvNormAct
from .registry import register_model, width_tag
from .staged import FeatureInfo, StagedNetwork

GROUPS = (1, 2, 3, 4, 8)
# 0.75 is not in the paper; pytorchcv publishes 0.75x weights ("w3d4").
WIDTH_MULTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
CONCAT_ORDERS = ("shortcut_first", "branch_first")
UNITS_PER_STAGE = (4, 8, 4)

# Paper Table 1: stage 2 output channels at 1x; stages 3 and 4 double it each time.
_STAGE2_CHANNELS_1X = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}

# The official release's channel plans, [stem, stage2, stage3, stage4]. Its 1.5x models keep a
# 24-channel stem, which the generic rule below would make 36, so these are stated explicitly.
_OFFICIAL_CHANNELS = {
    (3, 0.5): (12, 120, 240, 480),
    (3, 1.0): (24, 240, 480, 960),
    (3, 1.5): (24, 360, 720, 1440),
    (3, 2.0): (48, 480, 960, 1920),
    (8, 0.5): (16, 192, 384, 768),
    (8, 1.0): (24, 384, 768, 1536),
    (8, 1.5): (24, 576, 1152, 2304),
    (8, 2.0): (48, 768, 1536, 3072),
}


def shufflenet_v1_channels(width_mult: float, groups: int) -> Tuple[int, List[int]]:
    """Stem and stage widths: the official release's plan where it has one; else the paper's widths scaled and
    rounded to a multiple of 4 * groups (so the quarter-width bottleneck splits into groups), and a stem of
    24 * width_mult rounded to a multiple of groups (so the first unit's branch, stage2 - stem wide, splits too)."""
    if groups not in _STAGE2_CHANNELS_1X:
        raise ValueError(f"ShuffleNet v1 groups must be one of {GROUPS}, got {groups}")
    if width_mult <= 0:
        raise ValueError(f"width_mult must be positive, got {width_mult}")
    official = _OFFICIAL_CHANNELS.get((groups, float(width_mult)))
    if official is not None:
        return official[0], list(official[1:])

    def multiple_of(divisor: int, value: float) -> int:  # the nearest one (halves up), at least ``divisor``
        return max(divisor, int(value / divisor + 0.5) * divisor)

    stage2 = multiple_of(4 * groups, _STAGE2_CHANNELS_1X[groups] * width_mult)
    stem = multiple_of(groups, 24 * width_mult)
    return stem, [stage2, 2 * stage2, 4 * stage2]


class ShuffleUnit(nn.Module):
    """One ShuffleNet unit. ``compress_groups`` is 1 for the very first unit (too few input channels)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int, compress_groups: int,
                 shuffle: bool = True, norm: str = "BN") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 unit needs equal input and output channels")
        mid_channels = out_channels // 4
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        for what, channels, divisor in (
            ("input channels", in_channels, compress_groups),
            ("bottleneck channels", mid_channels, groups),
            ("branch output channels", branch_channels, groups),
        ):
            if channels <= 0 or channels % divisor:
                raise ValueError(
                    f"{what} ({channels}) must be a positive multiple of groups ({divisor}); "
                    f"unit {in_channels}->{out_channels}, stride {stride}"
                )
        self.stride = stride
        self.shortcut_first = True
        self.compress = ConvNormAct(in_channels, mid_channels, 1, groups=compress_groups, norm=norm)
        self.shuffle = ChannelShuffle(groups) if shuffle and groups > 1 else nn.Identity()
        self.depthwise = ConvNormAct(mid_channels, mid_channels, 3, stride=stride, groups=mid_channels, norm=norm,
                                     relu=False)
        self.expand = ConvNormAct(mid_channels, branch_channels, 1, groups=groups, norm=norm, relu=False)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.shuffle(self.compress(x))
        branch = self.expand(self.depthwise(mixed))
        if self.stride == 1:
            return F.relu(x + branch)
        parts = (self.shortcut(x), F.relu(branch))
        return torch.cat(parts if self.shortcut_first else parts[::-1], dim=1)


class ShuffleNetV1(StagedNetwork):
    """Stem (3x3/2 conv + 3x3/2 max pool, stride 4), stages 2-4 (strides 8, 16, 32), pool, fc."""

    def __init__(self, width_mult: float = 1.0, groups: int = 3, num_classes: int = 1000, channel_shuffle: bool = True,
                 norm: str = "BN") -> None:
        super().__init__()
        self.width_mult = width_mult
        self.groups = groups
        stem_channels, stage_channels = shufflenet_v1_channels(width_mult, groups)
        stem_conv = ConvNormAct(3, stem_channels, 3, stride=2, norm=norm)
        self.stem = nn.Sequential(stem_conv, nn.MaxPool2d(3, stride=2, padding=1))
        feature_info = [FeatureInfo("stem", stem_channels, 4)]
        in_channels = stem_channels
        for index, (units, out_channels) in enumerate(zip(UNITS_PER_STAGE, stage_channels)):
            name = f"stage{index + 2}"
            blocks = []
            for unit in range(units):
                first = unit == 0
                compress_groups = 1 if index == 0 and first else groups
                blocks.append(ShuffleUnit(in_channels, out_channels, groups, stride=2 if first else 1,
                                          compress_groups=compress_groups, shuffle=channel_shuffle, norm=norm))
                in_channels = out_channels
            setattr(self, name, nn.Sequential(*blocks))
            feature_info.append(FeatureInfo(name, out_channels, 2 ** (index + 3)))
        self._finish(feature_info, num_classes)

    @property
    def shuffle_layout(self) -> str:
        """Which permutation the shuffles apply: "paper", "inverse" (the official release's) or "none"."""
        layouts = {"inverse" if m.inverse else "paper" for m in self.modules() if isinstance(m, ChannelShuffle)}
        if len(layouts) != 1:
            return "mixed" if layouts else "none"
        return layouts.pop()

    def set_shuffle_layout(self, layout: str) -> None:
        if layout not in ("paper", "inverse"):
            raise ValueError(f"shuffle layout must be 'paper' or 'inverse', got '{layout}'")
        for module in self.modules():
            if isinstance(module, ChannelShuffle):
                module.inverse = layout == "inverse"

    @property
    def concat_order(self) -> str:
        """Stride-2 units' output: "shortcut_first" (official, the default) or "branch_first" (pytorchcv)."""
        orders = {"shortcut_first" if m.shortcut_first else "branch_first"
                  for m in self.modules() if isinstance(m, ShuffleUnit) and m.stride == 2}
        return orders.pop() if len(orders) == 1 else "mixed"

    def set_concat_order(self, order: str) -> None:
        if order not in CONCAT_ORDERS:
            raise ValueError(f"concat order must be one of {', '.join(CONCAT_ORDERS)}, got '{order}'")
        for module in self.modules():
            if isinstance(module, ShuffleUnit):
                module.shortcut_first = order == "shortcut_first"


for _groups in GROUPS:
    for _width in WIDTH_MULTS:
        _name = f"shufflenet_v1_{width_tag(_width)}_g{_groups}"
        _doc = (f"ShuffleNet v1 {_width}x, g={_groups}. Keyword arguments: num_classes, "
                "channel_shuffle (False gives the paper's Table 3 ablation), norm.")
        _fixed = {"width_mult": _width, "groups": _groups}
        globals()[_name] = register_model(_name, ShuffleNetV1, _doc, "shufflenet_v1", **_fixed)
