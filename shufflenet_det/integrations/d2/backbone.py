"""ShuffleNet v1 / MobileNet v1 C4 backbones in detectron2's ``BACKBONE_REGISTRY``: our network cut at stride 16,
the stages up to it as the backbone ("res4"), the stage after it as ``ShuffleNetC4ROIHeads``' per-RoI head. Both
keep the network's stage names, so a classification state dict maps onto the detector by prefix only."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ...detection.backbone import split_c4
from ...detection.speed import speed_options
from ...modeling import StagedNetwork, create_model, model_args_from_config
from ...modeling.speed import apply_conv_form

C4_STRIDE = 16
# As our torchvision engine (GeneralizedRCNNTransform): the same padding keeps features identical near the
# bottom/right border, where BatchNorm shifts the padded zeros (docs/detectron2.md, "Parity").
SIZE_DIVISIBILITY = 32


class ShuffleNetC4Backbone(Backbone):
    """The stages up to stride 16 (``split_at_stride(16)``'s trunk, as children under their own names, so
    parameters are ``stem.*``, ``stage2.*``, ...), returning ``{out_feature: [N, C, H/16, W/16]}``."""

    size_divisibility = SIZE_DIVISIBILITY  # replaces Backbone's property (0)

    def __init__(self, stages: nn.Sequential, out_channels: int, out_feature: str = "res4") -> None:
        super().__init__()
        self.stage_names = [name for name, _ in stages.named_children()]
        for name, stage in stages.named_children():
            self.add_module(name, stage)
        self._out_features = [out_feature]
        self._out_feature_channels = {out_feature: out_channels}
        self._out_feature_strides = {out_feature: C4_STRIDE}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return {self._out_features[0]: x}


def network_from_cfg(cfg: CfgNode) -> Tuple[StagedNetwork, str]:
    """The network MODEL.BACKBONE.NAME describes (norm and FREEZE_AT applied, no weights: in detectron2 the
    checkpointer loads MODEL.WEIGHTS) and its C4 feature's name (MODEL.SHUFFLENET / MOBILENET .OUT_FEATURES[0])."""
    arch, kwargs, node = model_args_from_config(cfg)
    out_features = cfg.MODEL.SHUFFLENET.OUT_FEATURES if node == "MODEL.SHUFFLENET" else cfg.MODEL.MOBILENET.OUT_FEATURES
    if len(out_features) != 1:
        raise ValueError(
            f"{node}.OUT_FEATURES must name the one stride-16 C4 feature, e.g. ['res4'], got {list(out_features)}"
        )
    network = create_model(arch, **kwargs)
    apply_conv_form(network, speed_options(cfg)["conv"], cfg.MODEL.DEVICE)
    return network, out_features[0]


def _build_c4_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ShuffleNetC4Backbone:
    if input_shape.channels != 3:
        raise ValueError(f"the backbone takes 3-channel images; MODEL.PIXEL_MEAN has {input_shape.channels} values")
    network, out_feature = network_from_cfg(cfg)
    trunk, _ = split_c4(network, out_feature, C4_STRIDE)  # our engine's cut: trunk.body holds the stages
    return ShuffleNetC4Backbone(trunk.body, trunk.out_channels, out_feature)


@BACKBONE_REGISTRY.register()
def build_shufflenet_v1_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ShuffleNetC4Backbone:
    """ShuffleNet v1 C4 backbone from MODEL.SHUFFLENET (WIDTH_MULT, GROUPS, CHANNEL_SHUFFLE, NORM, OUT_FEATURES)."""
    return _build_c4_backbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_mobilenet_v1_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ShuffleNetC4Backbone:
    """MobileNet v1 C4 backbone from MODEL.MOBILENET (WIDTH_MULT, NORM, OUT_FEATURES)."""
    return _build_c4_backbone(cfg, input_shape)
