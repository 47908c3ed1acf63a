"""RoIAlign on the single stride-16 map, with the call signature of torchvision's ``box_roi_pool``."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torchvision.ops import roi_align

from .roi_align import separable_roi_align

# How RoIAlign runs: torchvision's kernels, the separable matrix form (detection/roi_align.py: same
# results, a much faster backward on CPUs), or "auto" (separable for CPU tensors, else torchvision).
ROI_ALIGN_IMPLS = ("auto", "torchvision", "separable")

# detectron2's pooler names -> torchvision's ``aligned`` flag (V2 shifts sample points by half a pixel).
POOLER_TYPES = {"ROIAlignV2": True, "ROIAlign": False}


def pooler_aligned(pooler_type: str) -> bool:
    """``aligned`` for a detectron2 POOLER_TYPE name."""
    if pooler_type not in POOLER_TYPES:
        raise ValueError(
            f"unknown MODEL.ROI_BOX_HEAD.POOLER_TYPE '{pooler_type}': expected one of {', '.join(POOLER_TYPES)}"
        )
    return POOLER_TYPES[pooler_type]


class DeferredRoIs:
    """RoIs to be pooled later, any slice at a time: ``pooled(start, stop)`` is [stop - start, C, S, S].

    A per-RoI head that recomputes its activations in backward (``C4BoxHead.set_recompute``) pools and
    runs one slice after another, so that no pooled RoI has to be kept for backward.
    ``rois`` is [R, 5]: image index, then XYXY in image pixels (torchvision's ``roi_align`` format).
    """

    def __init__(self, pool: Callable[[torch.Tensor], torch.Tensor], rois: torch.Tensor) -> None:
        self.pool = pool
        self.rois = rois

    def __len__(self) -> int:
        return len(self.rois)

    def pooled(self, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        return self.pool(self.rois[start:stop])


def rois_with_image_index(boxes: List[torch.Tensor], device: Optional[torch.device] = None) -> torch.Tensor:
    """One [R, 5] tensor (image index, XYXY) from a list of per-image [R_i, 4] box tensors (``device``:
    where an empty list's result goes)."""
    if not boxes:
        return torch.zeros(0, 5, device=device)
    return torch.cat([torch.cat([b.new_full((len(b), 1), image), b], dim=1) for image, b in enumerate(boxes)])


class RoIPooler(nn.Module):
    """Pools every proposal to ``output_size`` x ``output_size`` from one feature map: [R, C, S, S].

    ``spatial_scale`` is 1 / the feature's stride; ``sampling_ratio`` 0 picks the number of sample
    points per bin from the RoI size (detectron2's and torchvision's adaptive mode). ``impl`` is one of
    ``ROI_ALIGN_IMPLS``. With ``defer`` (for a box head that recomputes, ``C4BoxHead.set_recompute``),
    training-mode calls that record gradients return ``DeferredRoIs`` for the box head to pool.
    """

    def __init__(
        self,
        feature_name: str,
        output_size: int,
        spatial_scale: float,
        sampling_ratio: int = 0,
        aligned: bool = True,
        impl: str = "auto",
        defer: bool = False,
    ) -> None:
        super().__init__()
        if impl not in ROI_ALIGN_IMPLS:
            raise ValueError(f"unknown RoIAlign implementation '{impl}': expected one of {', '.join(ROI_ALIGN_IMPLS)}")
        self.impl = impl
        self.feature_name = feature_name
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.defer = defer

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[torch.Tensor],
        image_shapes: Optional[List[Tuple[int, int]]] = None,
    ) -> Union[torch.Tensor, DeferredRoIs]:
        feature_map = features[self.feature_name]
        if self.defer and self.training and torch.is_grad_enabled():
            rois = rois_with_image_index(proposals, feature_map.device)
            return DeferredRoIs(lambda chosen: self._align(feature_map, chosen), rois)
        return self._align(feature_map, proposals)

    def _align(self, feature_map: torch.Tensor, rois: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        if self.impl == "separable" or (self.impl == "auto" and feature_map.device.type == "cpu"):
            rois = rois if isinstance(rois, torch.Tensor) else rois_with_image_index(rois, feature_map.device)
            return separable_roi_align(
                feature_map, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
            )
        return roi_align(
            feature_map,
            rois,
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )

    def extra_repr(self) -> str:
        return (
            f"feature={self.feature_name}, output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, impl={self.impl}"
        )
