"""MobileNet v1 (Howard et al., 2017), the paper's comparison: a 3x3/2 stem conv and 13 depthwise-separable
blocks, grouped into stages by stride like ShuffleNet's. ReLU as in the paper; timm's weights need ReLU6."""

from __future__ import annotations

from torch import nn

from .layers import ConvNormAct
from .registry import register_model, width_tag
from .staged import FeatureInfo, StagedNetwork

WIDTH_MULTS = (0.25, 0.5, 0.75, 1.0)
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}

# (output channels, stride) of the 13 separable blocks at width 1.0, by stage. The stem conv and
# the first block form the stride-2 "stem"; the stride-16 stage4 is the C4 trunk's last stage.
_STAGES = (
    ("stem", [(64, 1)]),
    ("stage2", [(128, 2), (128, 1)]),
    ("stage3", [(256, 2), (256, 1)]),
    ("stage4", [(512, 2)] + [(512, 1)] * 5),
    ("stage5", [(1024, 2), (1024, 1)]),
)


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.depthwise = ConvNormAct(in_channels, in_channels, 3, stride=stride, groups=in_channels, norm=norm)
        self.pointwise = ConvNormAct(in_channels, out_channels, 1, norm=norm)


class MobileNetV1(StagedNetwork):
    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, norm: str = "BN",
                 activation: str = "relu") -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = width_mult

        def width(channels: int) -> int:
            return max(8, int(channels * width_mult))

        in_channels = width(32)
        feature_info = []
        stride = 2
        for name, blocks in _STAGES:
            layers = [ConvNormAct(3, in_channels, 3, stride=2, norm=norm)] if name == "stem" else []
            for channels, block_stride in blocks:
                layers.append(DepthwiseSeparable(in_channels, width(channels), block_stride, norm))
                in_channels = width(channels)
                stride *= block_stride
            setattr(self, name, nn.Sequential(*layers))
            feature_info.append(FeatureInfo(name, in_channels, stride))
        self._finish(feature_info, num_classes)
        self.set_activation(activation)

    @property
    def activation(self) -> str:
        """Either "relu" (the paper) or "relu6" (TensorFlow's and timm's MobileNet v1)."""
        kinds = {type(m.act) for m in self.modules() if isinstance(m, ConvNormAct) and hasattr(m, "act")}
        names = [name for name, kind in ACTIVATIONS.items() if {kind} == kinds]
        return names[0] if names else "mixed"

    def set_activation(self, activation: str) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got '{activation}'")
        for module in self.modules():
            if isinstance(module, ConvNormAct) and hasattr(module, "act"):
                module.act = ACTIVATIONS[activation](inplace=True)


for _width in WIDTH_MULTS:
    _name = f"mobilenet_v1_{width_tag(_width)}"
    _doc = f"MobileNet v1 {_width}. Keyword arguments: num_classes, norm, activation."
    globals()[_name] = register_model(_name, MobileNetV1, _doc, "mobilenet_v1", width_mult=_width)
