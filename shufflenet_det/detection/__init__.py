"""C4 Faster R-CNN on torchvision with ShuffleNet v1 / MobileNet v1 backbones (no FPN): torchvision-style builders,
``build_detector(cfg)`` and the speed forms. The names imported here are the API."""

from .backbone import C4Backbone, C4BoxHead, build_backbone, preprocessing_mismatches, split_c4
from .detector import build_detector, check_detector_config, detector_options
from .faster_rcnn_c4 import (DETECTION_MODELS, DetectionTransform, FasterRCNNC4, assemble_c4_detector, fasterrcnn_c4,
                             fasterrcnn_mobilenet_v1_x1_0_c4, fasterrcnn_shufflenet_v1_x0_5_g3_c4,
                             fasterrcnn_shufflenet_v1_x1_0_g3_c4, fasterrcnn_shufflenet_v1_x2_0_g3_c4)
from .pooler import POOLER_TYPES, RoIPooler, pooler_aligned
from .speed import apply_speed_forms, speed_options
