"""The CPU deployment path's RoIAlign: the separable form of detection/roi_align.py (two small matrix
products per RoI; torchvision's results to float rounding), pooling into channels-last buffers, any
slice of the RoIs at a time.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from ..detection.pooler import RoIPooler
from ..detection.roi_align import pool_window, roi_windows


class RoIPlan:
    """What pooling a set of RoIs from one batch of feature maps needs: per RoI its channels-last
    feature map, the window it touches and that window's row and column weights."""

    def __init__(self, entries: List[Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]], channels: int):
        self.entries = entries
        self.channels = channels

    def __len__(self) -> int:
        return len(self.entries)


class SeparableRoIAlign(RoIPooler):
    """``torchvision.ops.roi_align`` on one feature map (any ``aligned`` / ``sampling_ratio``), channels last.

    Takes ``RoIPooler``'s arguments (features by name, one XYXY box tensor per image) and returns
    [R, S, S, C]. ``plan`` + ``pool_into`` pool any slice of the RoIs into a given buffer (used to run
    RoIAlign and the per-RoI head chunk by chunk).
    """

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[torch.Tensor],
        image_shapes: Optional[List[Tuple[int, int]]] = None,
    ) -> torch.Tensor:
        plan = self.plan(features[self.feature_name], proposals)
        size = self.output_size
        pooled = features[self.feature_name].new_empty(len(plan), size, size, plan.channels)
        self.pool_into(plan, 0, len(plan), pooled)
        return pooled

    def plan(self, feature_map: torch.Tensor, proposals: List[torch.Tensor]) -> RoIPlan:
        """Weights and windows of every RoI (``proposals[i]`` are boxes on ``feature_map[i]``)."""
        entries: List[Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []
        for image_index, boxes in enumerate(proposals):
            hwc = feature_map[image_index].permute(1, 2, 0).contiguous()
            windows = roi_windows(boxes, image_index, hwc.shape[0], hwc.shape[1], self.output_size,
                                  self.spatial_scale, self.sampling_ratio, self.aligned)
            for window in windows:
                if window is None:  # the RoI lies entirely outside the map: RoIAlign gives zeros
                    entries.append(None)
                    continue
                _, top, bottom, left, right, row_weights, column_weights = window
                entries.append((hwc[top:bottom, left:right].reshape(bottom - top, -1), row_weights, column_weights))
        return RoIPlan(entries, feature_map.shape[1])

    def pool_into(self, plan: RoIPlan, start: int, stop: int, out: torch.Tensor) -> None:
        """Pool RoIs ``start .. stop - 1`` of ``plan`` into ``out[0 .. stop - start - 1]`` ([*, S, S, C])."""
        for offset, entry in enumerate(plan.entries[start:stop]):
            if entry is None:
                out[offset].zero_()
                continue
            pool_window(*entry, out[offset])

    def extra_repr(self) -> str:
        return (
            f"feature={self.feature_name}, output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
