"""What every network here offers detection: a stem and stages (child modules) with known strides, so that
generic code (backbones, feature extraction, freezing) works from ``feature_info`` whatever the family."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .layers import convert_frozen_batchnorm, init_weights


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    channels: int
    stride: int


class StagedNetwork(nn.Module):
    """Base class: subclasses build their stages, then call ``_finish(feature_info, num_classes)`` (which adds the
    classifier and initializes every weight)."""

    feature_info: List[FeatureInfo]

    def _finish(self, feature_info: Sequence[FeatureInfo], num_classes: int) -> None:
        self.feature_info = list(feature_info)
        self.num_classes = num_classes
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.feature_info[-1].channels, num_classes)
        init_weights(self)

    @property
    def stage_names(self) -> List[str]:
        return [info.name for info in self.feature_info]

    def forward_features(self, x: torch.Tensor, out_features: Optional[Sequence[str]] = None) -> Dict[str, Tensor]:
        """Run the stages; return the named feature maps asked for (all of them by default)."""
        wanted = set(self.stage_names if out_features is None else out_features)
        unknown = wanted - set(self.stage_names)
        if unknown:
            raise KeyError(f"unknown feature(s) {sorted(unknown)}; this model has {self.stage_names}")
        outputs: Dict[str, torch.Tensor] = OrderedDict()
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in wanted:
                outputs[name] = x
            if len(outputs) == len(wanted):
                break
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.stage_names[-1]
        features = self.forward_features(x, [last])[last]
        return self.fc(torch.flatten(self.pool(features), 1))

    def stage(self, name: str) -> nn.Module:
        return getattr(self, name)

    def split_at_stride(self, stride: int = 16) -> Tuple[nn.Sequential, nn.Sequential]:
        """The C4 split: (trunk up to the last stage of ``stride``, the stages after it), sharing this network's
        parameters and stage names (state dict keys stay ``<stage>.<...>``)."""
        strides = [info.stride for info in self.feature_info]
        if stride not in strides:
            raise ValueError(f"no stage of stride {stride}; strides are {strides}")
        cut = len(strides) - strides[::-1].index(stride)
        names = self.stage_names
        trunk = nn.Sequential(OrderedDict((name, self.stage(name)) for name in names[:cut]))
        rest = nn.Sequential(OrderedDict((name, self.stage(name)) for name in names[cut:]))
        return trunk, rest

    def freeze(self, freeze_at: int) -> "StagedNetwork":
        """detectron2's FREEZE_AT: 0 freezes nothing, 1 the stem, k the stem and the next k-1 stages."""
        if not 0 <= freeze_at <= len(self.stage_names):
            raise ValueError(f"freeze_at must be in [0, {len(self.stage_names)}], got {freeze_at}")
        for name in self.stage_names[:freeze_at]:
            for parameter in self.stage(name).parameters():
                parameter.requires_grad_(False)
            setattr(self, name, convert_frozen_batchnorm(self.stage(name)))  # no statistics updates either
        return self
