"""C4 Faster R-CNN (no FPN) as torchvision builds detectors: ``GeneralizedRCNN``, a stride-16 trunk, torchvision's RPN
and RoIHeads, the network's last stage run per RoI as box head. Checkpoints rely on the module names (``backbone.body``,
``rpn.anchor_generator``, ``rpn.head``, ``roi_heads.box_roi_pool`` / ``box_head`` / ``box_predictor``)."""

from __future__ import annotations

import logging
import math
import os
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ..modeling import MODEL_REGISTRY
from ..weights import apply_structure, build_model, model_structure
from ..weights.catalog import MEGVII_PREPROCESSING
from .backbone import C4Backbone, C4BoxHead, split_c4
from .checkpoint import load_detector_weights, read_detector_checkpoint
from .pooler import RoIPooler
from .proposals import C4RegionProposalNetwork

logger = logging.getLogger(__name__)

C4_STRIDE = 16
C4_FEATURE = "res4"
CHANNEL_ORDERS = ("BGR", "RGB")
TORCHVISION_NUM_CLASSES = 91  # COCO's category ids, background included
DEFAULT_FROZEN_STAGES = 2  # Table 7 freezes the stem and the first stage (detectron2's FREEZE_AT 2)


class ExactAnchorGenerator(AnchorGenerator):
    """torchvision's generator with detectron2's cell anchors: exact, not rounded to whole pixels. The
    per-location order stays torchvision's (ratio-major; ``torchvision_to_d2_state_dict`` maps it)."""

    def generate_anchors(self, scales: Sequence[int], aspect_ratios: Sequence[float], dtype=torch.float32,
                         device=torch.device("cpu")) -> torch.Tensor:
        corners = []
        for ratio in aspect_ratios:
            for size in scales:
                # detectron2's definition: area size**2, height / width = ratio.
                width = math.sqrt(float(size) ** 2 / float(ratio))
                height = float(ratio) * width
                corners.append([-width / 2, -height / 2, width / 2, height / 2])
        return torch.tensor(corners, dtype=dtype, device=device)


class DetectionTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` whose ``train()`` / ``eval()`` switch between a train and a test
    (min_size, max_size) pair (training draws a shorter side per image from ``min_size_train``, as
    detectron2's "choice" sampling). Integer images become float; ``reverse_channels`` swaps RGB <-> BGR
    before ``image_mean`` / ``image_std`` (input scale, backbone order) apply."""

    def __init__(
        self, min_size_train: Sequence[int], max_size_train: int, min_size_test: int, max_size_test: int,
        image_mean: Sequence[float], image_std: Sequence[float], reverse_channels: bool = False, **kwargs: Any,
    ) -> None:
        super().__init__(tuple(min_size_train), max_size_train, list(image_mean), list(image_std), **kwargs)
        self.train_sizes = (tuple(min_size_train), max_size_train)
        self.test_sizes = ((min_size_test,), max_size_test)
        self.reverse_channels = reverse_channels

    def train(self, mode: bool = True) -> "DetectionTransform":
        self.min_size, self.max_size = self.train_sizes if mode else self.test_sizes
        return super().train(mode)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        if not image.is_floating_point():
            image = image.float()
        if self.reverse_channels:
            image = image[torch.tensor([2, 1, 0], device=image.device)]  # a gather, not flip(): any ONNX opset
        return super().normalize(image)


class FasterRCNNC4(GeneralizedRCNN):
    """``GeneralizedRCNN`` plus ``structure_meta``: what a checkpoint records to rebuild it the same way
    (the backbone's ``model_structure`` and its ``input_format``, ``pixel_mean``, ``pixel_std`` on 0-255)."""

    def __init__(self, backbone: C4Backbone, rpn: C4RegionProposalNetwork, roi_heads: RoIHeads,
                 transform: DetectionTransform, structure_meta: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.structure_meta = dict(structure_meta or {})


def assemble_c4_detector(
    backbone: C4Backbone,
    box_head: C4BoxHead,
    num_classes: int,
    *,
    # inputs and the backbone's preprocessing
    input_format: str = "RGB",
    input_scale: float = 1.0,
    backbone_format: str = MEGVII_PREPROCESSING.input_format,
    pixel_mean: Sequence[float] = MEGVII_PREPROCESSING.pixel_mean,
    pixel_std: Sequence[float] = MEGVII_PREPROCESSING.pixel_std,
    image_mean: Optional[Sequence[float]] = None,
    image_std: Optional[Sequence[float]] = None,
    # transform
    min_size: Union[int, Sequence[int]] = 600, max_size: int = 1000,
    min_size_test: Optional[int] = None, max_size_test: Optional[int] = None,
    size_divisible: int = 32, fixed_size: Optional[Tuple[int, int]] = None, _skip_resize: bool = False,
    # RPN
    anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512), anchor_aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_pre_nms_top_n_train: int = 12000, rpn_pre_nms_top_n_test: int = 6000,
    rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_thresh: float = 0.7, rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3,
    rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5, rpn_score_thresh: float = 0.0,
    rpn_bbox_reg_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), rpn_conv_dim: int = -1,
    # RoIAlign and box head
    box_pooler_resolution: int = 14, box_pooler_sampling_ratio: int = 0, box_pooler_aligned: bool = True,
    box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5, box_detections_per_img: int = 100,
    box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5,
    box_batch_size_per_image: int = 512, box_positive_fraction: float = 0.25,
    bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
    structure_meta: Optional[Mapping[str, Any]] = None,
) -> FasterRCNNC4:
    """The C4 detector from a trunk and a per-RoI head (``split_c4``); the defaults are Table 7's recipe.

    Argument names are torchvision ``FasterRCNN``'s (``num_classes`` counts the background), plus anchors,
    RPN box weights, the RPN conv's width (``rpn_conv_dim``, -1: the feature's) and RoIAlign settings.
    Inputs come in ``input_format`` with white at ``input_scale``; the backbone expects ``backbone_format``
    and ``(x - pixel_mean) / pixel_std`` on 0-255. torchvision's ``image_mean`` / ``image_std``, when given,
    replace them and are in the input's scale and order.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background class too, so it must be at least 2, got {num_classes}")
    for name, value in (("input_format", input_format), ("backbone_format", backbone_format)):
        if value not in CHANNEL_ORDERS:
            raise ValueError(f"{name} must be one of {', '.join(CHANNEL_ORDERS)}, got {value!r}")
    reverse_channels = input_format != backbone_format
    if image_mean is not None:
        pixel_mean = _backbone_scale(image_mean, input_scale, reverse_channels)
    if image_std is not None:
        pixel_std = _backbone_scale(image_std, input_scale, reverse_channels)
    train_sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    transform = DetectionTransform(
        train_sizes, max_size,
        train_sizes[-1] if min_size_test is None else min_size_test,
        max_size if max_size_test is None else max_size_test,
        image_mean=[value * (input_scale / 255.0) for value in pixel_mean],
        image_std=[value * (input_scale / 255.0) for value in pixel_std],
        reverse_channels=reverse_channels, size_divisible=size_divisible, fixed_size=fixed_size,
        _skip_resize=_skip_resize,
    )
    anchor_generator = ExactAnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(anchor_aspect_ratios),))
    rpn = C4RegionProposalNetwork(
        anchor_generator,
        _rpn_head(backbone.out_channels, anchor_generator.num_anchors_per_location()[0], rpn_conv_dim),
        rpn_fg_iou_thresh, rpn_bg_iou_thresh, rpn_batch_size_per_image, rpn_positive_fraction,
        dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
        dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
        rpn_nms_thresh, score_thresh=rpn_score_thresh, bbox_reg_weights=rpn_bbox_reg_weights,
    )
    pooler = RoIPooler(backbone.feature_name, box_pooler_resolution, 1.0 / backbone.stride,
                       box_pooler_sampling_ratio, box_pooler_aligned)
    roi_heads = RoIHeads(
        pooler, box_head, _box_predictor(box_head.out_channels, num_classes),
        box_fg_iou_thresh, box_bg_iou_thresh, box_batch_size_per_image, box_positive_fraction,
        tuple(bbox_reg_weights), box_score_thresh, box_nms_thresh, box_detections_per_img,
    )
    preprocessing = {"input_format": backbone_format, "pixel_mean": list(pixel_mean), "pixel_std": list(pixel_std)}
    return FasterRCNNC4(backbone, rpn, roi_heads, transform, {**(structure_meta or {}), **preprocessing})


def _backbone_scale(values: Sequence[float], input_scale: float, reverse_channels: bool) -> list:
    """Per-channel values given on the input's scale and channel order, on 0-255 in the backbone's order."""
    values = [value * 255.0 / input_scale for value in values]
    return values[::-1] if reverse_channels else values


def _rpn_head(in_channels: int, num_anchors: int, conv_dim: int) -> RPNHead:
    """torchvision's RPN head; with ``conv_dim`` > 0 (detectron2's MODEL.RPN.CONV_DIMS [conv_dim]) its 3x3 conv
    maps the feature to that many channels: on a small trunk a narrower conv costs far less than the trunk's width."""
    if conv_dim == -1 or conv_dim == in_channels:
        return RPNHead(in_channels, num_anchors)
    if conv_dim < 1:
        raise ValueError(f"rpn_conv_dim must be -1 (the feature's width) or positive, got {conv_dim}")
    head = RPNHead(conv_dim, num_anchors)
    conv = nn.Conv2d(in_channels, conv_dim, kernel_size=3, padding=1)
    nn.init.normal_(conv.weight, std=0.01)  # torchvision's RPN initialization
    nn.init.constant_(conv.bias, 0)
    head.conv[0][0] = conv
    return head


def _box_predictor(in_channels: int, num_classes: int) -> FastRCNNPredictor:
    predictor = FastRCNNPredictor(in_channels, num_classes)
    # detectron2's initialization: small class logits and smaller box deltas at the start.
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    for layer in (predictor.cls_score, predictor.bbox_pred):
        nn.init.zeros_(layer.bias)
    return predictor


def fasterrcnn_c4(
    arch: str, *, weights: Optional[str] = None, weights_backbone: Optional[str] = None,
    num_classes: Optional[int] = None, trainable_backbone_layers: Optional[int] = None, progress: bool = True,
    **kwargs: Any,
) -> FasterRCNNC4:
    """A C4 Faster R-CNN on any ``shufflenet_det.list_models()`` architecture, torchvision-style.

    Inputs are torchvision's: float RGB images in 0-1 and targets with labels 1..num_classes-1.
    ``weights``: a trained detector file, which also sets ``num_classes`` and the preprocessing.
    ``weights_backbone``: ImageNet weights (file or ``list_pretrained()`` name), whose metadata sets the
    preprocessing; with either, norms are FrozenBN, else trainable BN and every stage trains.
    ``trainable_backbone_layers`` counts stages from the last. ``progress`` is accepted for torchvision's
    interface. ``kwargs`` go to ``assemble_c4_detector``.
    """
    if arch not in MODEL_REGISTRY:
        raise ValueError(MODEL_REGISTRY.unknown_message(arch))
    checkpoint = None
    if weights is not None:
        checkpoint = _read_detector(weights)
        trained_classes = checkpoint["model"]["roi_heads.box_predictor.cls_score.weight"].shape[0]
        if num_classes is not None and num_classes != trained_classes:
            raise ValueError(
                f"num_classes is {num_classes} but weights {weights} is a detector for {trained_classes} classes "
                "(background included): leave num_classes out, or train from weights_backbone instead"
            )
        num_classes = trained_classes
        weights_backbone = None  # the detector's weights replace the backbone's, as in torchvision
    elif num_classes is None:
        num_classes = TORCHVISION_NUM_CLASSES
    is_trained = weights is not None or weights_backbone is not None
    network = build_model(arch, norm="FrozenBN" if is_trained else "BN", weights=weights_backbone)
    network.freeze(_frozen_stages(len(network.stage_names), trainable_backbone_layers, is_trained))
    if checkpoint is not None:
        meta = checkpoint.get("meta") or {}
        apply_structure(network, meta)
    else:
        meta = getattr(network, "weights_meta", {})
    backbone, box_head = split_c4(network, C4_FEATURE, C4_STRIDE)
    model = assemble_c4_detector(
        backbone, box_head, num_classes, **_backbone_preprocessing(meta, weights or weights_backbone),
        structure_meta=model_structure(network), **kwargs,
    )
    if checkpoint is not None:
        load_detector_weights(model, checkpoint, f"weights {weights}")
    return model


def _read_detector(weights: str) -> Dict[str, Any]:
    if not os.path.isfile(weights):
        raise ValueError(f"weights file '{weights}' not found (weights takes a trained detector file)")
    checkpoint = read_detector_checkpoint(weights)
    if checkpoint is None:
        raise ValueError(
            f"weights {weights} holds no C4 detector (no backbone.body.* and roi_heads.box_head.* keys under "
            "'model'): pass ImageNet weights as weights_backbone"
        )
    return checkpoint


def _frozen_stages(num_stages: int, trainable_layers: Optional[int], is_trained: bool) -> int:
    """detectron2's FREEZE_AT for torchvision's ``trainable_backbone_layers``."""
    if not is_trained:
        if trainable_layers is not None:
            warnings.warn(
                f"trainable_backbone_layers={trainable_layers} has no effect without weights or weights_backbone: "
                f"all {num_stages} backbone stages train"
            )
        return 0
    if trainable_layers is None:
        trainable_layers = num_stages - DEFAULT_FROZEN_STAGES
    if not 0 <= trainable_layers <= num_stages:
        raise ValueError(f"trainable_backbone_layers must be in [0, {num_stages}] for this backbone, "
                         f"got {trainable_layers}")
    return num_stages - trainable_layers


def _backbone_preprocessing(meta: Mapping[str, Any], source: Optional[str]) -> Dict[str, Any]:
    """``assemble_c4_detector``'s preprocessing arguments for 0-1 RGB inputs and the weights' ``meta``."""
    keys = ("input_format", "pixel_mean", "pixel_std")
    missing = [key for key in keys if meta.get(key) is None]
    if source is not None and missing:
        logger.warning("%s records no %s: assuming the official ShuffleNet weights' input (BGR 0-255, mean 0, std 1)",
                       source, ", ".join(missing))
    chosen = {key: getattr(MEGVII_PREPROCESSING, key) if key in missing else meta[key] for key in keys}
    return dict(
        input_format="RGB", input_scale=1.0, backbone_format=str(chosen["input_format"]).upper(),
        pixel_mean=[float(value) for value in chosen["pixel_mean"]],
        pixel_std=[float(value) for value in chosen["pixel_std"]],
    )


def fasterrcnn_shufflenet_v1_x0_5_g3_c4(**kwargs: Any) -> FasterRCNNC4:
    """The quickstart's ShuffleNet 0.5x (g=3) C4 Faster R-CNN; arguments as ``fasterrcnn_c4``."""
    return fasterrcnn_c4("shufflenet_v1_x0_5_g3", **kwargs)


def fasterrcnn_shufflenet_v1_x1_0_g3_c4(**kwargs: Any) -> FasterRCNNC4:
    """Table 7's ShuffleNet 1x (g=3) C4 Faster R-CNN; arguments as ``fasterrcnn_c4``."""
    return fasterrcnn_c4("shufflenet_v1_x1_0_g3", **kwargs)


def fasterrcnn_shufflenet_v1_x2_0_g3_c4(**kwargs: Any) -> FasterRCNNC4:
    """Table 7's ShuffleNet 2x (g=3) C4 Faster R-CNN; arguments as ``fasterrcnn_c4``."""
    return fasterrcnn_c4("shufflenet_v1_x2_0_g3", **kwargs)


def fasterrcnn_mobilenet_v1_x1_0_c4(**kwargs: Any) -> FasterRCNNC4:
    """Table 7's MobileNet v1 (1.0) C4 Faster R-CNN; arguments as ``fasterrcnn_c4``."""
    return fasterrcnn_c4("mobilenet_v1_x1_0", **kwargs)


# The builders registered with torchvision by name (``register_torchvision_models``).
DETECTION_MODELS = {
    builder.__name__: builder
    for builder in (fasterrcnn_shufflenet_v1_x0_5_g3_c4, fasterrcnn_shufflenet_v1_x1_0_g3_c4,
                    fasterrcnn_shufflenet_v1_x2_0_g3_c4, fasterrcnn_mobilenet_v1_x1_0_c4)
}
