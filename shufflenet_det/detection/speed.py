"""Faster forms of a built C4 detector, applied in place by ``apply_speed_forms``: the same outputs and gradients
(tests compare both) from the same parameters and buffers under the same names, so checkpoints load in every form.
Convs: ``apply_conv_form``; RPN: ``BatchedProposalRPN``; RoIAlign: ``SeparableRoIPooler``; head: ``FastBoxHead``."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List, NamedTuple, Union

import torch
from fvcore.common.config import CfgNode
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config.loading import ConfigError
from ..modeling.speed import CONV_IMPLS, apply_conv_form
from .backbone import C4BoxHead
from .pooler import RoIPooler, rois_with_image_index
from .proposals import BatchedProposalRPN, C4RegionProposalNetwork
from .roi_align import separable_roi_align

Device = Union[str, torch.device, None]

ROI_ALIGN_IMPLS = ("auto", "torchvision", "separable")  # "auto": separable for CPU tensors
RPN_NMS_IMPLS = ("torchvision", "batched")
# GPU inference pads RoI counts to multiples of ROI_BUCKET: cuDNN plans every new input shape anew (without
# buckets an H100 evaluated the quickstart model at 0.12 s per image, 6x its training step).
ROI_BUCKET = 64
# Every form off: the detector as built.
PLAIN = dict(conv="modules", roi_align="torchvision", rpn_nms="torchvision", recompute_box_head=False)


class DeferredRoIs(NamedTuple):
    """RoIs [R, 5] (image index, XYXY) that ``pool`` turns into pooled RoIs [n, C, S, S] later, a slice at a time."""

    pool: Callable[[torch.Tensor], torch.Tensor]
    rois: torch.Tensor


class SeparableRoIPooler(RoIPooler):
    """RoIAlign as two small matrix products per RoI (``separable_roi_align``: a several times faster backward on
    CPUs, slow on GPUs)."""

    def align(self, feature_map: torch.Tensor, rois: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        if not isinstance(rois, torch.Tensor):
            rois = rois_with_image_index(rois, feature_map.device)
        return separable_roi_align(
            feature_map, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )


class DeferringRoIPooler(RoIPooler):
    """``pooler``, except that training calls recording gradients return ``DeferredRoIs`` (for a recomputing head)."""

    def __init__(self, pooler: RoIPooler) -> None:
        super().__init__(pooler.feature_name, pooler.output_size, pooler.spatial_scale, pooler.sampling_ratio,
                         pooler.aligned)
        self.pooler = pooler

    def align(self, feature_map: torch.Tensor, rois: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        return self.pooler.align(feature_map, rois)

    def forward(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor], image_shapes=None):
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(features, proposals)
        feature_map = features[self.feature_name]
        return DeferredRoIs(partial(self.align, feature_map), rois_with_image_index(proposals, feature_map.device))


class FastBoxHead(C4BoxHead):
    """``C4BoxHead`` with RoI-count buckets of ``roi_bucket`` in inference (0: none; the padding RoIs are
    zeros, dropped from the output; eval-mode layers treat RoIs independently) and, with ``recompute``,
    training on ``recompute_chunk`` RoIs at a time under activation checkpointing, keeping none of their
    activations (nor pooled RoIs, with ``DeferringRoIPooler``): backward runs each slice again."""

    # Bounds the activations alive at once in backward (ShuffleNet 1x in bfloat16: about 1.1 MB per RoI).
    recompute_chunk = 1024

    def __init__(self, head: C4BoxHead, roi_bucket: int = 0, recompute: bool = False) -> None:
        if recompute and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in head.modules()):
            # Training-mode BatchNorm mixes RoIs and would update its running statistics twice.
            raise ValueError("recomputing the per-RoI head needs frozen norms (FrozenBN), not BN / SyncBN")
        super().__init__(head, head.out_channels)
        self.roi_bucket = roi_bucket
        self.recompute = recompute

    def forward(self, rois: Union[torch.Tensor, DeferredRoIs]) -> torch.Tensor:
        if isinstance(rois, DeferredRoIs) or (self.recompute and self.training and torch.is_grad_enabled()):
            pool, rois = rois if isinstance(rois, DeferredRoIs) else (nn.Identity(), rois)
            run = partial(checkpoint, lambda part: C4BoxHead.forward(self, pool(part)), use_reentrant=False)
            return torch.cat([run(part) for part in rois.split(self.recompute_chunk)])
        count = rois.shape[0]
        padding = -count % self.roi_bucket if self.roi_bucket and not self.training else 0
        if padding:
            rois = torch.cat([rois, rois.new_zeros((padding, *rois.shape[1:]))])
        return super().forward(rois)[:count]


def fast_box_head(head: C4BoxHead, recompute: bool = False, device: Device = None) -> C4BoxHead:
    """The per-RoI head (sharing ``head``'s modules) with buckets on CUDA and ``recompute``; plain if neither."""
    bucket = ROI_BUCKET if torch.device(device or "cpu").type == "cuda" else 0
    plain = C4BoxHead(head, head.out_channels)
    return (FastBoxHead(plain, bucket, recompute) if bucket or recompute else plain).train(head.training)


def fast_pooler(pooler: RoIPooler, roi_align: str = "auto", defer: bool = False, device: Device = None) -> RoIPooler:
    """The pooler with RoIAlign in form ``roi_align`` ("auto" by ``device``), deferring in training if ``defer``."""
    if roi_align not in ROI_ALIGN_IMPLS:
        raise ValueError(f"unknown RoIAlign form '{roi_align}': expected one of {', '.join(ROI_ALIGN_IMPLS)}")
    while isinstance(pooler, DeferringRoIPooler):
        pooler = pooler.pooler
    separable = roi_align == "separable" or (roi_align == "auto" and torch.device(device or "cpu").type == "cpu")
    arguments = (pooler.feature_name, pooler.output_size, pooler.spatial_scale, pooler.sampling_ratio, pooler.aligned)
    training = pooler.training
    pooler = SeparableRoIPooler(*arguments) if separable else RoIPooler(*arguments)
    return (DeferringRoIPooler(pooler) if defer else pooler).train(training)


def apply_speed_forms(
    model: nn.Module,
    conv: str = "auto",
    roi_align: str = "auto",
    rpn_nms: str = "torchvision",
    recompute_box_head: bool = False,
    device: Device = None,
) -> nn.Module:
    """Rewrite a built C4 detector into these forms for ``device`` (default CPU), in place; returns it.
    Earlier forms are replaced (``**PLAIN``: as built). Apply it last, after weights and ``.to(device)``."""
    if rpn_nms not in RPN_NMS_IMPLS:
        raise ValueError(f"unknown RPN NMS form '{rpn_nms}': expected one of {', '.join(RPN_NMS_IMPLS)}")
    apply_conv_form(model, conv, device)
    roi_heads = model.roi_heads
    roi_heads.box_roi_pool = fast_pooler(roi_heads.box_roi_pool, roi_align, recompute_box_head, device)
    roi_heads.box_head = fast_box_head(roi_heads.box_head, recompute_box_head, device)
    # Same state, another proposal selection (the RPN's constructor cannot take an existing RPN's parts).
    model.rpn.__class__ = BatchedProposalRPN if rpn_nms == "batched" else C4RegionProposalNetwork
    return model


def speed_options(cfg: CfgNode) -> Dict[str, Any]:
    """``apply_speed_forms``' options from SHUFFLENET_DET (ConfigError for a value it does not know)."""
    options = cfg.SHUFFLENET_DET
    for key, known in (("CONV_IMPL", CONV_IMPLS), ("ROI_ALIGN_IMPL", ROI_ALIGN_IMPLS), ("RPN_NMS_IMPL", RPN_NMS_IMPLS)):
        if options[key] not in known:
            raise ConfigError(f"SHUFFLENET_DET.{key} must be one of {', '.join(known)}, got {options[key]!r}")
    return dict(conv=options.CONV_IMPL, roi_align=options.ROI_ALIGN_IMPL, rpn_nms=options.RPN_NMS_IMPL,
                recompute_box_head=bool(options.RECOMPUTE_BOX_HEAD))
