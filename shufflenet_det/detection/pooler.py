"""RoIAlign on the single stride-16 map, called as torchvision's ``box_roi_pool``."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torchvision.ops import roi_align

from ..config.loading import ConfigError

# detectron2's pooler names -> torchvision's ``aligned`` flag (V2 shifts sample points by half a pixel).
POOLER_TYPES = {"ROIAlignV2": True, "ROIAlign": False}


def pooler_aligned(pooler_type: str) -> bool:
    """``aligned`` for a detectron2 POOLER_TYPE name."""
    if pooler_type not in POOLER_TYPES:
        raise ConfigError(
            f"unknown MODEL.ROI_BOX_HEAD.POOLER_TYPE '{pooler_type}': expected one of {', '.join(POOLER_TYPES)}"
        )
    return POOLER_TYPES[pooler_type]


def rois_with_image_index(boxes: List[torch.Tensor], device: Optional[torch.device] = None) -> torch.Tensor:
    """One [R, 5] tensor (image index, XYXY) from per-image [R_i, 4] boxes (``device``: for an empty list)."""
    if not boxes:
        return torch.zeros(0, 5, device=device)
    return torch.cat([torch.cat([b.new_full((len(b), 1), image), b], dim=1) for image, b in enumerate(boxes)])


class RoIPooler(nn.Module):
    """Every proposal pooled to [R, C, output_size, output_size] from the map ``feature_name``.

    ``sampling_ratio`` 0 is adaptive (points per bin from the RoI size). ``detection.speed`` swaps in
    faster forms by overriding ``align``.
    """

    def __init__(
        self, feature_name: str, output_size: int, spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True
    ) -> None:
        super().__init__()
        self.feature_name = feature_name
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features: Dict[str, torch.Tensor], proposals: List[torch.Tensor],
                image_shapes: Optional[List[Tuple[int, int]]] = None) -> torch.Tensor:
        return self.align(features[self.feature_name], proposals)

    def align(self, feature_map: torch.Tensor, rois: Union[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        """RoIAlign of ``rois``: [R, 5] with the image index first, or one [R_i, 4] tensor per image."""
        return roi_align(feature_map, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"feature={self.feature_name}, output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
