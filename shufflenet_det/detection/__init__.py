"""C4 Faster R-CNN on torchvision with ShuffleNet v1 / MobileNet v1 backbones (no FPN)."""

from .backbone import (
    BACKBONE_REGISTRY,
    C4Backbone,
    C4BoxHead,
    build_backbone,
    build_mobilenet_v1_backbone,
    build_shufflenet_v1_backbone,
    preprocessing_mismatches,
    split_c4,
)
from .detector import build_detector, build_transform, check_detector_config
from .pooler import POOLER_TYPES, RoIPooler, pooler_aligned
from .transform import DetectionTransform

__all__ = [
    "BACKBONE_REGISTRY",
    "C4Backbone",
    "C4BoxHead",
    "DetectionTransform",
    "POOLER_TYPES",
    "RoIPooler",
    "build_backbone",
    "build_detector",
    "build_mobilenet_v1_backbone",
    "build_shufflenet_v1_backbone",
    "build_transform",
    "check_detector_config",
    "pooler_aligned",
    "preprocessing_mismatches",
    "split_c4",
]
