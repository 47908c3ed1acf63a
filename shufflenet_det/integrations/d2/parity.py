"""Do the detectron2 model and our torchvision engine (as ``build_detector`` builds it) compute the same thing?
Stage by stage, for two eval-mode models with the same weights (``torchvision_to_d2_state_dict``); each function
returns the largest absolute differences (docs/detectron2.md, "Parity")."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from detectron2.structures import Boxes, Instances
from torch import nn

Differences = Dict[str, float]


@torch.no_grad()
def compare_features(tv_model: nn.Module, d2_model: nn.Module, image: torch.Tensor) -> Tuple[Differences, torch.Tensor]:
    """Level 1: the normalized, padded input and the C4 feature map of one uint8 [3, H, W] image at the test size
    (so that neither engine resizes it: their interpolations differ); also returns detectron2's feature map."""
    tv_images, _ = tv_model.transform([image.float()])
    d2_images = d2_model.preprocess_image([{"image": image}])
    if tv_images.tensors.shape != d2_images.tensor.shape:
        shapes = f"{tuple(tv_images.tensors.shape)} and {tuple(d2_images.tensor.shape)}"
        raise ValueError(f"the engines prepared inputs of shapes {shapes}: give an image at the test size "
                         "(shorter side INPUT.MIN_SIZE_TEST) so neither resizes it")
    tv_features = _single(tv_model.backbone(tv_images.tensors))
    d2_features = _single(d2_model.backbone(d2_images.tensor))
    differences = {"input": _max_diff(tv_images.tensors, d2_images.tensor),
                   "features": _max_diff(tv_features, d2_features)}
    return differences, d2_features


@torch.no_grad()
def compare_roi_heads(tv_model: nn.Module, d2_model: nn.Module, features: torch.Tensor, proposals: torch.Tensor,
                      image_size: Tuple[int, int]) -> Differences:
    """Level 2: both RoI heads on one feature map [1, C, h, w] and XYXY proposals [R, 4]: class logits
    (torchvision's background is class 0, detectron2's the last), box deltas and the detections after NMS."""
    tv_heads, d2_heads = tv_model.roi_heads, d2_model.roi_heads
    pooler = tv_heads.box_roi_pool  # our RoIPooler or torchvision's MultiScaleRoIAlign
    feature_name = getattr(pooler, "feature_name", None) or pooler.featmap_names[0]
    tv_pooled = pooler({feature_name: features}, [proposals], [image_size])
    tv_logits, tv_deltas = tv_heads.box_predictor(tv_heads.box_head(tv_pooled))
    d2_logits, d2_deltas = d2_heads.box_predictions({d2_heads.in_feature: features}, [Boxes(proposals)])
    num_classes = d2_logits.shape[1] - 1
    logits = max(_max_diff(tv_logits[:, 1:], d2_logits[:, :num_classes]),
                 _max_diff(tv_logits[:, 0], d2_logits[:, num_classes]))
    differences = {"roi_logits": logits, "roi_deltas": _max_diff(tv_deltas[:, 4:], d2_deltas)}
    tv_boxes, tv_scores, tv_labels = tv_heads.postprocess_detections(tv_logits, tv_deltas, [proposals], [image_size])
    d2_proposals = [Instances(image_size, proposal_boxes=Boxes(proposals))]
    d2_instances, _ = d2_heads.box_predictor.inference((d2_logits, d2_deltas), d2_proposals)
    tv_detections = {"boxes": tv_boxes[0], "scores": tv_scores[0], "labels": tv_labels[0]}
    differences.update(_compare_detections(tv_detections, d2_instances[0], "roi_"))
    return differences


@torch.no_grad()
def compare_end_to_end(tv_model: nn.Module, d2_model: nn.Module, image: torch.Tensor) -> Differences:
    """Level 3: RPN proposals and final detections for one uint8 [3, H, W] image at the test size."""
    tv_images, _ = tv_model.transform([image.float()])
    tv_proposals, _ = tv_model.rpn(tv_images, tv_model.backbone(tv_images.tensors))
    d2_images = d2_model.preprocess_image([{"image": image}])
    d2_proposals, _ = d2_model.proposal_generator(d2_images, d2_model.backbone(d2_images.tensor))
    tv_boxes, d2_boxes = tv_proposals[0], d2_proposals[0].proposal_boxes.tensor
    differences = {"proposal_count": float(abs(len(tv_boxes) - len(d2_boxes))),
                   "proposals": _max_diff(tv_boxes[: len(d2_boxes)], d2_boxes[: len(tv_boxes)])}
    height, width = image.shape[-2:]
    tv_detections = tv_model([image.float()])[0]
    d2_instances = d2_model([{"image": image, "height": height, "width": width}])[0]["instances"]
    differences.update(_compare_detections(tv_detections, d2_instances, ""))
    return differences


def _compare_detections(tv_detections: Dict[str, torch.Tensor], d2_instances: Instances, prefix: str) -> Differences:
    """Detections in score order (torchvision labels are 1..K, detectron2's 0..K-1); ``<prefix>compared`` is the
    number of detections compared, not a difference."""
    count = min(len(tv_detections["scores"]), len(d2_instances))
    mismatches = (tv_detections["labels"][:count] - 1 != d2_instances.pred_classes[:count]).sum()
    return {
        f"{prefix}compared": float(count),
        f"{prefix}detection_count": float(abs(len(tv_detections["scores"]) - len(d2_instances))),
        f"{prefix}boxes": _max_diff(tv_detections["boxes"][:count], d2_instances.pred_boxes.tensor[:count]),
        f"{prefix}scores": _max_diff(tv_detections["scores"][:count], d2_instances.scores[:count]),
        f"{prefix}label_mismatches": float(mismatches),
    }


def _single(features: Dict[str, torch.Tensor]) -> torch.Tensor:
    if len(features) != 1:
        raise ValueError(f"expected one C4 feature map, got {sorted(features)}")
    return next(iter(features.values()))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
