"""RoIAlign on the single stride-16 map, with the call signature of torchvision's ``box_roi_pool``."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torchvision.ops import roi_align

# detectron2's pooler names -> torchvision's ``aligned`` flag (V2 shifts sample points by half a pixel).
POOLER_TYPES = {"ROIAlignV2": True, "ROIAlign": False}


def pooler_aligned(pooler_type: str) -> bool:
    """``aligned`` for a detectron2 POOLER_TYPE name."""
    if pooler_type not in POOLER_TYPES:
        raise ValueError(
            f"unknown MODEL.ROI_BOX_HEAD.POOLER_TYPE '{pooler_type}': expected one of {', '.join(POOLER_TYPES)}"
        )
    return POOLER_TYPES[pooler_type]


class RoIPooler(nn.Module):
    """Pools every proposal to ``output_size`` x ``output_size`` from one feature map: [R, C, S, S].

    ``spatial_scale`` is 1 / the feature's stride; ``sampling_ratio`` 0 picks the number of sample
    points per bin from the RoI size (detectron2's and torchvision's adaptive mode).
    """

    def __init__(
        self,
        feature_name: str,
        output_size: int,
        spatial_scale: float,
        sampling_ratio: int = 0,
        aligned: bool = True,
    ) -> None:
        super().__init__()
        self.feature_name = feature_name
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[torch.Tensor],
        image_shapes: Optional[List[Tuple[int, int]]] = None,
    ) -> torch.Tensor:
        return roi_align(
            features[self.feature_name],
            proposals,
            output_size=self.output_size,
            spatial_scale=self.spatial_scale,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )

    def extra_repr(self) -> str:
        return (
            f"feature={self.feature_name}, output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
