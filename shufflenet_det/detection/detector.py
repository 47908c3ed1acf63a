"""``build_detector(cfg)``: a C4 Faster R-CNN (no FPN) as a torchvision ``FasterRCNN``.

Module names (the engine's checkpoints and weight loading rely on them):
``backbone.body.<stem|stage2|stage3...>`` trunk, ``rpn.head`` RPN, ``roi_heads.box_roi_pool`` RoIAlign,
``roi_heads.box_head.<last stage>`` per-RoI head, ``roi_heads.box_predictor`` classes and boxes,
``transform`` resizing and normalization.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
from fvcore.common.config import CfgNode
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead

from ..config.loading import ConfigError
from ..modeling.layers import NORMS
from ..weights import model_structure
from .anchors import ExactAnchorGenerator
from .backbone import build_backbone, split_c4
from .checkpoint import load_detector_weights, read_detector_checkpoint
from .pooler import ROI_ALIGN_IMPLS, RoIPooler, pooler_aligned
from .proposals import BatchedProposalRPN
from .transform import DetectionTransform

INPUT_FORMATS = ("BGR", "RGB")
RPN_NMS_IMPLS = ("torchvision", "batched")
C4_STRIDE = 16

# Settings torchvision's Faster R-CNN cannot change: (key, the only value it supports).
_FIXED_SETTINGS = (
    ("MODEL.MASK_ON", False),
    ("MODEL.LOAD_PROPOSALS", False),
    ("MODEL.PROPOSAL_GENERATOR.NAME", "RPN"),
    ("MODEL.ANCHOR_GENERATOR.OFFSET", 0.0),
    ("MODEL.RPN.CONV_DIMS", [-1]),
    ("MODEL.RPN.IOU_LABELS", [0, -1, 1]),
    ("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", True),
    ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False),
    ("INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice"),
)


def build_detector(cfg: CfgNode) -> FasterRCNN:
    """The C4 Faster R-CNN that ``cfg`` describes, on MODEL.DEVICE.

    Input: a list of [3, H, W] images, uint8 or float in 0-255, in INPUT.FORMAT channel order; in
    training also targets ``{"boxes": XYXY, "labels": 1..NUM_CLASSES}``. Output: a loss dict in
    training, ``[{"boxes", "labels", "scores"}]`` in the original image coordinates in eval mode.
    """
    check_detector_config(cfg)
    feature_name = cfg.MODEL.RPN.IN_FEATURES[0]
    network = build_backbone(cfg)
    backbone, box_head = split_c4(network, feature_name, C4_STRIDE)
    try:
        box_head.set_recompute(cfg.SHUFFLENET_DET.RECOMPUTE_BOX_HEAD)
    except ValueError as error:
        raise ConfigError(f"SHUFFLENET_DET.RECOMPUTE_BOX_HEAD: {error}") from None

    anchor_generator = ExactAnchorGenerator(
        sizes=(tuple(cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]),),
        aspect_ratios=(tuple(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]),),
    )
    rpn, roi = cfg.MODEL.RPN, cfg.MODEL.ROI_HEADS
    rpn_bg_iou, rpn_fg_iou = rpn.IOU_THRESHOLDS
    roi_bg_iou, roi_fg_iou = roi_iou_thresholds(roi.IOU_THRESHOLDS, roi.IOU_LABELS)
    model = FasterRCNN(
        backbone,
        rpn_anchor_generator=anchor_generator,
        rpn_head=RPNHead(backbone.out_channels, anchor_generator.num_anchors_per_location()[0]),
        rpn_pre_nms_top_n_train=rpn.PRE_NMS_TOPK_TRAIN,
        rpn_pre_nms_top_n_test=rpn.PRE_NMS_TOPK_TEST,
        rpn_post_nms_top_n_train=rpn.POST_NMS_TOPK_TRAIN,
        rpn_post_nms_top_n_test=rpn.POST_NMS_TOPK_TEST,
        rpn_nms_thresh=rpn.NMS_THRESH,
        rpn_fg_iou_thresh=rpn_fg_iou,
        rpn_bg_iou_thresh=rpn_bg_iou,
        rpn_batch_size_per_image=rpn.BATCH_SIZE_PER_IMAGE,
        rpn_positive_fraction=rpn.POSITIVE_FRACTION,
        box_head=box_head,
        box_predictor=_box_predictor(box_head.out_channels, roi.NUM_CLASSES + 1),
        box_score_thresh=roi.SCORE_THRESH_TEST,
        box_nms_thresh=roi.NMS_THRESH_TEST,
        box_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
        box_fg_iou_thresh=roi_fg_iou,
        box_bg_iou_thresh=roi_bg_iou,
        box_batch_size_per_image=roi.BATCH_SIZE_PER_IMAGE,
        box_positive_fraction=roi.POSITIVE_FRACTION,
        bbox_reg_weights=tuple(cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS),
    )
    # FasterRCNN's constructor only takes a multi-level pooler, one input size pair and fixed RPN
    # box weights: put in the C4 parts afterwards.
    model.rpn.box_coder = BoxCoder(tuple(rpn.BBOX_REG_WEIGHTS))
    if cfg.SHUFFLENET_DET.RPN_NMS_IMPL == "batched":
        # Same state, one method replaced (FasterRCNN builds its RPN itself).
        model.rpn.__class__ = BatchedProposalRPN
    model.roi_heads.box_roi_pool = RoIPooler(
        feature_name,
        cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION,
        spatial_scale=1.0 / backbone.stride,
        sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
        aligned=pooler_aligned(cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE),
        impl=cfg.SHUFFLENET_DET.ROI_ALIGN_IMPL,
    )
    # A recomputing head pools its RoIs itself, a slice at a time, so that none is kept for backward.
    model.roi_heads.box_roi_pool.defer = box_head.recompute
    model.transform = build_transform(cfg)
    checkpoint = read_detector_checkpoint(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else None
    if checkpoint is not None:
        load_detector_weights(model, network, checkpoint, cfg.MODEL.WEIGHTS)
    # What checkpoints of this detector must record so that it is rebuilt the same way.
    model.structure_meta = model_structure(network)
    return model.to(torch.device(cfg.MODEL.DEVICE))


def build_transform(cfg: CfgNode) -> DetectionTransform:
    """Resizing (INPUT.MIN/MAX_SIZE_TRAIN/TEST) and normalization (MODEL.PIXEL_MEAN/STD, 0-255)."""
    return DetectionTransform(
        min_size_train=cfg.INPUT.MIN_SIZE_TRAIN,
        max_size_train=cfg.INPUT.MAX_SIZE_TRAIN,
        min_size_test=cfg.INPUT.MIN_SIZE_TEST,
        max_size_test=cfg.INPUT.MAX_SIZE_TEST,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
    )


def _box_predictor(in_channels: int, num_classes: int) -> FastRCNNPredictor:
    predictor = FastRCNNPredictor(in_channels, num_classes)
    # detectron2's initialization: small class logits and smaller box deltas at the start.
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    return predictor


def roi_iou_thresholds(thresholds: List[float], labels: List[int]) -> Tuple[float, float]:
    """(background below, foreground from) for the RoI matcher, from detectron2's IOU_THRESHOLDS / IOU_LABELS."""
    if list(labels) == [0, 1] and len(thresholds) == 1:
        return thresholds[0], thresholds[0]
    if list(labels) == [0, -1, 1] and len(thresholds) == 2:
        return thresholds[0], thresholds[1]
    raise ConfigError(
        f"MODEL.ROI_HEADS.IOU_THRESHOLDS {list(thresholds)} with IOU_LABELS {list(labels)} is not supported: "
        "use one threshold with labels [0, 1] or two with labels [0, -1, 1]"
    )


def check_detector_config(cfg: CfgNode) -> None:
    """Raise ConfigError (one line) for a setting this C4 Faster R-CNN cannot honor."""
    for key, supported in _FIXED_SETTINGS:
        value = _get(cfg, key)
        if _normalized(value) != _normalized(supported):
            raise ConfigError(f"{key} {value!r} is not supported by the torchvision C4 detector (use {supported!r})")
    if cfg.SHUFFLENET_DET.ROI_ALIGN_IMPL not in ROI_ALIGN_IMPLS:
        raise ConfigError(
            f"SHUFFLENET_DET.ROI_ALIGN_IMPL must be one of {', '.join(ROI_ALIGN_IMPLS)}, "
            f"got {cfg.SHUFFLENET_DET.ROI_ALIGN_IMPL!r}"
        )
    if cfg.SHUFFLENET_DET.RPN_NMS_IMPL not in RPN_NMS_IMPLS:
        raise ConfigError(
            f"SHUFFLENET_DET.RPN_NMS_IMPL must be one of {', '.join(RPN_NMS_IMPLS)}, got {cfg.SHUFFLENET_DET.RPN_NMS_IMPL!r}"
        )
    if cfg.INPUT.FORMAT not in INPUT_FORMATS:
        raise ConfigError(f"INPUT.FORMAT must be one of {', '.join(INPUT_FORMATS)}, got {cfg.INPUT.FORMAT!r}")
    for key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"):
        if len(_get(cfg, key)) != 3:
            raise ConfigError(f"{key} needs 3 values (one per channel, 0-255 scale), got {list(_get(cfg, key))}")
    if min(cfg.MODEL.PIXEL_STD) <= 0:
        raise ConfigError(f"MODEL.PIXEL_STD must be positive, got {list(cfg.MODEL.PIXEL_STD)}")
    for key in ("MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"):
        value = _get(cfg, key)
        if len(value) != 1 or not isinstance(value[0], (list, tuple)) or not value[0]:
            raise ConfigError(f"{key} must be one list for the single C4 feature map, e.g. [[...]]; got {value}")
    for key in ("MODEL.RPN.IN_FEATURES", "MODEL.ROI_HEADS.IN_FEATURES"):
        if len(_get(cfg, key)) != 1 or _get(cfg, key)[0] != cfg.MODEL.RPN.IN_FEATURES[0]:
            raise ConfigError(f"{key} must name the one C4 feature, e.g. ['res4'], got {list(_get(cfg, key))}")
    if len(cfg.MODEL.RPN.IOU_THRESHOLDS) != 2:
        raise ConfigError(
            f"MODEL.RPN.IOU_THRESHOLDS needs [background, foreground], got {list(cfg.MODEL.RPN.IOU_THRESHOLDS)}"
        )
    roi_iou_thresholds(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS, cfg.MODEL.ROI_HEADS.IOU_LABELS)
    try:
        pooler_aligned(cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for key in ("MODEL.SHUFFLENET.NORM", "MODEL.MOBILENET.NORM"):
        if _get(cfg, key) not in NORMS:
            raise ConfigError(f"{key} must be one of {', '.join(NORMS)}, got {_get(cfg, key)!r}")
    if not cfg.INPUT.MIN_SIZE_TRAIN or min(cfg.INPUT.MIN_SIZE_TRAIN) <= 0 or cfg.INPUT.MIN_SIZE_TEST <= 0:
        raise ConfigError("INPUT.MIN_SIZE_TRAIN and INPUT.MIN_SIZE_TEST must be positive sizes")
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES < 1:
        raise ConfigError(f"MODEL.ROI_HEADS.NUM_CLASSES must be at least 1, got {cfg.MODEL.ROI_HEADS.NUM_CLASSES}")


def _get(cfg: CfgNode, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _normalized(value: Any) -> Any:
    """Lists and tuples compare equal (YAML gives lists, defaults hold tuples)."""
    return [_normalized(item) for item in value] if isinstance(value, (list, tuple)) else value
