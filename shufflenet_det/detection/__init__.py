"""C4 Faster R-CNN on torchvision with ShuffleNet v1 / MobileNet v1 backbones (no FPN)."""

from .backbone import C4Backbone, C4BoxHead, build_backbone, preprocessing_mismatches, split_c4
from .detector import build_detector, check_detector_config, detector_options
from .faster_rcnn_c4 import (DETECTION_MODELS, DetectionTransform, FasterRCNNC4, assemble_c4_detector, fasterrcnn_c4,
                             fasterrcnn_mobilenet_v1_x1_0_c4, fasterrcnn_shufflenet_v1_x0_5_g3_c4,
                             fasterrcnn_shufflenet_v1_x1_0_g3_c4, fasterrcnn_shufflenet_v1_x2_0_g3_c4)
from .pooler import POOLER_TYPES, RoIPooler, pooler_aligned
from .speed import apply_speed_forms, speed_options

__all__ = [
    # modules
    "C4Backbone", "C4BoxHead", "DetectionTransform", "FasterRCNNC4", "RoIPooler",
    # torchvision-style builders
    "DETECTION_MODELS", "fasterrcnn_c4", "fasterrcnn_mobilenet_v1_x1_0_c4", "fasterrcnn_shufflenet_v1_x0_5_g3_c4",
    "fasterrcnn_shufflenet_v1_x1_0_g3_c4", "fasterrcnn_shufflenet_v1_x2_0_g3_c4",
    # from a config
    "build_backbone", "build_detector", "check_detector_config", "detector_options", "preprocessing_mismatches",
    # assembly and speed forms
    "POOLER_TYPES", "apply_speed_forms", "assemble_c4_detector", "pooler_aligned", "speed_options", "split_c4",
]
