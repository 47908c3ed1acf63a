"""C4 RoI heads for ShuffleNet / MobileNet backbones, like detectron2's ``Res5ROIHeads``: every proposal is pooled
from the stride-16 feature by our engine's ``RoIPooler`` (in the forms ``detection.speed`` selects), run through the
network's last stage (stride 2: 14x14 -> 7x7), mean-pooled and fed to detectron2's ``FastRCNNOutputLayers``."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import ROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, ImageList, Instances
from torch import nn

from ...detection.backbone import C4BoxHead, split_c4
from ...detection.pooler import RoIPooler, pooler_aligned
from ...detection.speed import fast_box_head, fast_pooler, speed_options
from .backbone import C4_STRIDE, network_from_cfg


@ROI_HEADS_REGISTRY.register()
class ShuffleNetC4ROIHeads(ROIHeads):
    """RoI pooling on the one C4 feature, the network's last stage as the per-RoI head, box predictor; parameters
    under ``box_head.<stage>`` and ``box_predictor.{cls_score,bbox_pred}``, as in our engine's ``roi_heads``."""

    @configurable
    def __init__(self, *, in_feature: str, pooler: RoIPooler, box_head: C4BoxHead, box_predictor: nn.Module,
                 **kwargs) -> None:  # kwargs: ROIHeads's
        super().__init__(**kwargs)
        self.in_feature = in_feature
        self.pooler = pooler
        self.box_head = box_head
        self.box_predictor = box_predictor

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> dict:
        if cfg.MODEL.MASK_ON or cfg.MODEL.KEYPOINT_ON:
            raise ValueError("ShuffleNetC4ROIHeads predicts boxes only: set MODEL.MASK_ON and MODEL.KEYPOINT_ON False")
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        if len(in_features) != 1 or in_features[0] not in input_shape:
            raise ValueError(f"MODEL.ROI_HEADS.IN_FEATURES must name the backbone's one feature {sorted(input_shape)}, "
                             f"got {in_features}")
        network, _ = network_from_cfg(cfg)
        _, box_head = split_c4(network, in_features[0], C4_STRIDE)
        box_head_cfg = cfg.MODEL.ROI_BOX_HEAD
        # The torchvision engine's forms: RoI-count buckets in GPU inference, recomputation, RoIAlign's form.
        options, device = speed_options(cfg), cfg.MODEL.DEVICE
        recompute = options["recompute_box_head"]
        box_head = fast_box_head(box_head, recompute, device)
        pooler = RoIPooler(in_features[0], box_head_cfg.POOLER_RESOLUTION,
                           spatial_scale=1.0 / input_shape[in_features[0]].stride,
                           sampling_ratio=box_head_cfg.POOLER_SAMPLING_RATIO,
                           aligned=pooler_aligned(box_head_cfg.POOLER_TYPE))
        pooler = fast_pooler(pooler, options["roi_align"], recompute, device)
        return {
            **super().from_config(cfg),
            "in_feature": in_features[0],
            "pooler": pooler,
            "box_head": box_head,
            "box_predictor": FastRCNNOutputLayers(cfg, ShapeSpec(channels=box_head.out_channels)),
        }

    def box_predictions(self, features: Dict[str, torch.Tensor],
                        proposal_boxes: List[Boxes]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Class logits [R, K+1] (background last) and box deltas [R, 4K] of the boxes of all images."""
        roi_features = self.pooler(features, [boxes.tensor for boxes in proposal_boxes])
        return self.box_predictor(self.box_head(roi_features))

    def forward(self, images: ImageList, features: Dict[str, torch.Tensor], proposals: List[Instances],
                targets: Optional[List[Instances]] = None) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        del images
        if self.training:
            if not targets:
                raise ValueError("ShuffleNetC4ROIHeads needs targets in training mode")
            proposals = self.label_and_sample_proposals(proposals, targets)
        predictions = self.box_predictions(features, [p.proposal_boxes for p in proposals])
        if self.training:
            return [], self.box_predictor.losses(predictions, proposals)
        instances, _ = self.box_predictor.inference(predictions, proposals)
        return instances, {}
