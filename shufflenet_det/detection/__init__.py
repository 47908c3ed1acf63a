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
from .detector import build_detector, check_detector_config, detector_options
from .faster_rcnn_c4 import (
    DETECTION_MODELS,
    FasterRCNNC4,
    assemble_c4_detector,
    fasterrcnn_c4,
    fasterrcnn_mobilenet_v1_x1_0_c4,
    fasterrcnn_shufflenet_v1_x0_5_g3_c4,
    fasterrcnn_shufflenet_v1_x1_0_g3_c4,
    fasterrcnn_shufflenet_v1_x2_0_g3_c4,
)
from .pooler import POOLER_TYPES, RoIPooler, pooler_aligned
from .speed import apply_speed_forms, speed_options
from .transform import DetectionTransform

__all__ = [
    "BACKBONE_REGISTRY",
    "C4Backbone",
    "C4BoxHead",
    "DETECTION_MODELS",
    "DetectionTransform",
    "FasterRCNNC4",
    "POOLER_TYPES",
    "RoIPooler",
    "build_backbone",
    "build_detector",
    "build_mobilenet_v1_backbone",
    "build_shufflenet_v1_backbone",
    "apply_speed_forms",
    "assemble_c4_detector",
    "check_detector_config",
    "detector_options",
    "fasterrcnn_c4",
    "fasterrcnn_mobilenet_v1_x1_0_c4",
    "fasterrcnn_shufflenet_v1_x0_5_g3_c4",
    "fasterrcnn_shufflenet_v1_x1_0_g3_c4",
    "fasterrcnn_shufflenet_v1_x2_0_g3_c4",
    "pooler_aligned",
    "preprocessing_mismatches",
    "speed_options",
    "split_c4",
]
