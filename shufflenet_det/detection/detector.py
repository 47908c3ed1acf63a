"""``build_detector(cfg)``: the C4 Faster R-CNN of ``faster_rcnn_c4`` from a config, with the same modules as
the torchvision builders; its images come in 0-255 and INPUT.FORMAT order, as the engine's loaders give them."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from fvcore.common.config import CfgNode

from ..config.loading import ConfigError
from ..weights import apply_structure, model_structure
from .backbone import build_backbone, split_c4
from .checkpoint import load_detector_weights, read_detector_checkpoint
from .faster_rcnn_c4 import C4_STRIDE, CHANNEL_ORDERS, FasterRCNNC4, assemble_c4_detector
from .pooler import pooler_aligned
from .speed import apply_speed_forms, speed_options

# Settings torchvision's Faster R-CNN cannot change: (key, the only value it supports).
_FIXED_SETTINGS = (
    ("MODEL.MASK_ON", False),
    ("MODEL.LOAD_PROPOSALS", False),
    ("MODEL.PROPOSAL_GENERATOR.NAME", "RPN"),
    ("MODEL.ANCHOR_GENERATOR.OFFSET", 0.0),
    ("MODEL.RPN.IOU_LABELS", [0, -1, 1]),
    ("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", True),
    ("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", False),
    ("INPUT.MIN_SIZE_TRAIN_SAMPLING", "choice"),
)


def build_detector(cfg: CfgNode) -> FasterRCNNC4:
    """The C4 Faster R-CNN that ``cfg`` describes, on MODEL.DEVICE, in SHUFFLENET_DET's speed forms: [3, H, W] images
    (0-255, INPUT.FORMAT) and in training targets ``{"boxes": XYXY, "labels": 1..NUM_CLASSES}`` in; losses, or
    ``[{"boxes", "labels", "scores"}]`` in image coordinates out."""
    check_detector_config(cfg)
    network = build_backbone(cfg)
    checkpoint = read_detector_checkpoint(cfg.MODEL.WEIGHTS) if cfg.MODEL.WEIGHTS else None
    if checkpoint is not None:
        # The backbone's structure (shuffle layout, ...) is set before the detector shares its modules.
        apply_structure(network, checkpoint.get("meta") or {})
    backbone, box_head = split_c4(network, cfg.MODEL.RPN.IN_FEATURES[0], C4_STRIDE)
    model = assemble_c4_detector(
        backbone, box_head, cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1, structure_meta=model_structure(network),
        **detector_options(cfg),
    )
    if checkpoint is not None:
        load_detector_weights(model, checkpoint, f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}")
    device, options = torch.device(cfg.MODEL.DEVICE), speed_options(cfg)
    try:
        return apply_speed_forms(model.to(device), **options, device=device)
    except ValueError as error:  # a setting the model cannot run in (recomputation with trainable BN)
        raise ConfigError(f"SHUFFLENET_DET.RECOMPUTE_BOX_HEAD: {error}") from None


def detector_options(cfg: CfgNode) -> Dict[str, Any]:
    """``assemble_c4_detector``'s keyword arguments for a (checked) config: inputs, sizes, RPN and RoI heads."""
    rpn, roi, box_head = cfg.MODEL.RPN, cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD
    rpn_bg_iou, rpn_fg_iou = rpn.IOU_THRESHOLDS
    roi_bg_iou, roi_fg_iou = roi_iou_thresholds(roi.IOU_THRESHOLDS, roi.IOU_LABELS)
    return dict(
        input_format=cfg.INPUT.FORMAT, input_scale=255.0, backbone_format=cfg.INPUT.FORMAT,
        pixel_mean=list(cfg.MODEL.PIXEL_MEAN), pixel_std=list(cfg.MODEL.PIXEL_STD),
        min_size=tuple(cfg.INPUT.MIN_SIZE_TRAIN), max_size=cfg.INPUT.MAX_SIZE_TRAIN,
        min_size_test=cfg.INPUT.MIN_SIZE_TEST, max_size_test=cfg.INPUT.MAX_SIZE_TEST,
        anchor_sizes=tuple(cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]),
        anchor_aspect_ratios=tuple(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]),
        rpn_pre_nms_top_n_train=rpn.PRE_NMS_TOPK_TRAIN, rpn_pre_nms_top_n_test=rpn.PRE_NMS_TOPK_TEST,
        rpn_post_nms_top_n_train=rpn.POST_NMS_TOPK_TRAIN, rpn_post_nms_top_n_test=rpn.POST_NMS_TOPK_TEST,
        rpn_nms_thresh=rpn.NMS_THRESH, rpn_fg_iou_thresh=rpn_fg_iou, rpn_bg_iou_thresh=rpn_bg_iou,
        rpn_batch_size_per_image=rpn.BATCH_SIZE_PER_IMAGE, rpn_positive_fraction=rpn.POSITIVE_FRACTION,
        rpn_bbox_reg_weights=tuple(rpn.BBOX_REG_WEIGHTS), rpn_conv_dim=rpn.CONV_DIMS[0],
        box_pooler_resolution=box_head.POOLER_RESOLUTION, box_pooler_sampling_ratio=box_head.POOLER_SAMPLING_RATIO,
        box_pooler_aligned=pooler_aligned(box_head.POOLER_TYPE),
        box_score_thresh=roi.SCORE_THRESH_TEST, box_nms_thresh=roi.NMS_THRESH_TEST,
        box_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
        box_fg_iou_thresh=roi_fg_iou, box_bg_iou_thresh=roi_bg_iou,
        box_batch_size_per_image=roi.BATCH_SIZE_PER_IMAGE, box_positive_fraction=roi.POSITIVE_FRACTION,
        bbox_reg_weights=tuple(box_head.BBOX_REG_WEIGHTS),
    )


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
    speed_options(cfg)
    if cfg.INPUT.FORMAT not in CHANNEL_ORDERS:
        raise ConfigError(f"INPUT.FORMAT must be one of {', '.join(CHANNEL_ORDERS)}, got {cfg.INPUT.FORMAT!r}")
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
    conv_dims = list(cfg.MODEL.RPN.CONV_DIMS)
    if len(conv_dims) != 1 or not (conv_dims[0] == -1 or conv_dims[0] > 0):
        raise ConfigError(
            f"MODEL.RPN.CONV_DIMS must be one width for the RPN's one 3x3 conv ([-1]: the feature's), got {conv_dims}"
        )
    if len(cfg.MODEL.RPN.IOU_THRESHOLDS) != 2:
        raise ConfigError(
            f"MODEL.RPN.IOU_THRESHOLDS needs [background, foreground], got {list(cfg.MODEL.RPN.IOU_THRESHOLDS)}"
        )
    detector_options(cfg)  # the RoI heads' IoU thresholds and POOLER_TYPE
    if not cfg.INPUT.MIN_SIZE_TRAIN or min(cfg.INPUT.MIN_SIZE_TRAIN) <= 0 or cfg.INPUT.MIN_SIZE_TEST <= 0:
        raise ConfigError("INPUT.MIN_SIZE_TRAIN and INPUT.MIN_SIZE_TEST must be positive sizes")
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES < 1:
        raise ConfigError(f"MODEL.ROI_HEADS.NUM_CLASSES must be at least 1, got {cfg.MODEL.ROI_HEADS.NUM_CLASSES}")


def _get(cfg: CfgNode, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _normalized(value: Any) -> Any:
    """Lists and tuples compare equal (YAML gives lists, defaults hold tuples)."""
    return [_normalized(item) for item in value] if isinstance(value, (list, tuple)) else value
