"""C4 backbones: a classification network cut at stride 16 into a trunk (one feature map for the RPN and
RoIAlign) and a per-RoI box head (the later stages, then global average pooling, as detectron2's R50-C4).
Both keep the network's stage names, so ImageNet weights map onto a detector by prefix only."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..config.loading import ConfigError
from ..modeling import StagedNetwork, model_args_from_config
from ..weights import build_model
from .checkpoint import read_detector_checkpoint

logger = logging.getLogger(__name__)

# A MODEL.WEIGHTS value with one of these endings (or a folder part) is a file path, not a weight name.
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".pkl", ".ckpt", ".bin", ".safetensors")


class C4Backbone(nn.Module):
    """The trunk, returning its stride-16 map as ``{feature_name: tensor}`` (what torchvision's RPN reads)."""

    def __init__(self, body: nn.Module, out_channels: int, stride: int, feature_name: str = "res4") -> None:
        super().__init__()
        self.body = body
        self.out_channels = out_channels
        self.stride = stride
        self.feature_name = feature_name

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return OrderedDict([(self.feature_name, self.body(images))])


class C4BoxHead(nn.Sequential):
    """The network's last stage(s) on pooled RoIs [R, C, 14, 14], mean-pooled to [R, out_channels]."""

    def __init__(self, stages: nn.Sequential, out_channels: int) -> None:
        super().__init__(OrderedDict(stages.named_children()))
        self.out_channels = out_channels

    def forward(self, roi_features: torch.Tensor) -> torch.Tensor:
        return super().forward(roi_features).mean(dim=(2, 3))


def split_c4(network: StagedNetwork, feature_name: str = "res4", stride: int = 16) -> Tuple[C4Backbone, C4BoxHead]:
    """Cut a staged network into its C4 trunk and per-RoI head; both share the network's modules."""
    trunk, rest = network.split_at_stride(stride)
    if len(rest) == 0:
        raise ValueError(f"{type(network).__name__} has no stage after stride {stride} to use as the box head")
    info = {feature.name: feature for feature in network.feature_info}
    trunk_channels = info[list(trunk.named_children())[-1][0]].channels
    head_channels = info[list(rest.named_children())[-1][0]].channels
    return C4Backbone(trunk, trunk_channels, stride, feature_name), C4BoxHead(rest, head_channels)


def build_backbone(cfg: CfgNode) -> StagedNetwork:
    """The network of MODEL.BACKBONE.NAME and MODEL.SHUFFLENET / MOBILENET, with its weights, norm and FREEZE_AT."""
    arch, kwargs, node = model_args_from_config(cfg)
    weights, norm, freeze_at, norm_key = cfg.MODEL.WEIGHTS, kwargs["norm"], kwargs["freeze_at"], f"{node}.NORM"
    if weights and names_a_file(weights) and not os.path.isfile(weights):
        raise ConfigError(
            f"MODEL.WEIGHTS file '{weights}' not found: download the ImageNet weights and convert them with "
            "tools/convert_weights.py (see docs/weights.md), or set MODEL.WEIGHTS \"\" to train from scratch "
            "(with NORM \"BN\" and MODEL.BACKBONE.FREEZE_AT 0)"
        )
    if weights and read_detector_checkpoint(weights) is not None:
        weights = ""  # a whole trained detector: build_detector loads it once the detector exists
    elif not weights and (norm == "FrozenBN" or freeze_at):
        logger.warning(
            "MODEL.WEIGHTS is empty (training from scratch) but %s is %s and MODEL.BACKBONE.FREEZE_AT is %d: "
            "randomly initialized frozen layers never learn; set %s \"BN\" (or \"SyncBN\") and "
            "MODEL.BACKBONE.FREEZE_AT 0",
            norm_key, norm, freeze_at, norm_key,
        )
    network = build_model(arch, weights=weights or None, **kwargs)
    if weights:
        meta = getattr(network, "weights_meta", None)
        for message in preprocessing_mismatches(meta, cfg.INPUT.FORMAT, cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD):
            logger.warning("MODEL.WEIGHTS %s: %s", weights, message)
    return network


def names_a_file(weights: str) -> bool:
    """Whether a MODEL.WEIGHTS value is a file path (not the name of known weights)."""
    return os.sep in weights or "/" in weights or weights.endswith(_CHECKPOINT_SUFFIXES)


def preprocessing_mismatches(
    meta: Optional[Mapping[str, Any]], input_format: str, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> List[str]:
    """One message per key where the weights' metadata (``load_weights``'s: ``input_format``, ``pixel_mean``,
    ``pixel_std`` on 0-255, ``source``) differs from the config; absent fields match."""
    meta = meta or {}
    source = meta.get("source") or "these weights"
    messages = []
    expected_format = meta.get("input_format")
    if expected_format and str(expected_format).upper() != input_format.upper():
        messages.append(
            f"{source} weights expect {expected_format} input but INPUT.FORMAT is {input_format}; "
            f"set INPUT.FORMAT {expected_format} (and the loader will read images that way)"
        )
    for name, configured in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        key = f"MODEL.{name.upper()}"
        if meta.get(name) is None:
            continue
        expected = [float(value) for value in meta[name]]
        if len(expected) != len(configured) or any(abs(a - b) > 1e-3 for a, b in zip(expected, configured)):
            messages.append(
                f"{source} weights were trained with {name} {expected} (0-255 scale) but {key} is "
                f"{list(configured)}; set {key} {expected}"
            )
    return messages
