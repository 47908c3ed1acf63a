"""RoIAlign as two small matrix products per RoI: torchvision's results, several times faster on CPU.

Bilinear sampling at a grid of points and the mean over each bin's points factor into a part along
the rows and a part along the columns: a pooled RoI is ``Wy @ window @ Wx^T``, where ``window`` is
the part of the feature map the RoI touches, ``Wy`` [S, rows] and ``Wx`` [S, columns] hold each bin's
averaged interpolation weights. The products run in BLAS, where torchvision's CPU kernel loops over
every sample point of every channel; the weights follow that kernel term by term (points more than
one pixel outside the map count zero, the rest are clamped into it; adaptive or fixed sampling grid;
``aligned`` half-pixel offset), so results agree to float rounding.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from ..detection.pooler import RoIPooler


def axis_weights(start: torch.Tensor, size: torch.Tensor, bins: int, grid: torch.Tensor, length: int) -> torch.Tensor:
    """One axis of RoIAlign as weights [R, bins, length].

    RoI r covers ``start[r] .. start[r] + size[r]`` (feature-map units, after the aligned offset) and
    samples ``grid[r]`` points per bin; entry [r, i, p] is the weight of map position p in bin i.
    """
    points = max(int(grid.max()), 1) if grid.numel() else 1
    bin_size = (size / bins)[:, None, None]
    bin_index = torch.arange(bins, dtype=start.dtype)[None, :, None]
    point_index = torch.arange(points, dtype=start.dtype)[None, None, :]
    grid = grid[:, None, None]
    position = start[:, None, None] + bin_index * bin_size + (point_index + 0.5) * bin_size / grid.clamp(min=1)
    valid = (point_index < grid) & (position >= -1.0) & (position <= length)
    position = position.clamp(min=0)
    low = position.floor().long()
    at_end = low >= length - 1
    low = torch.where(at_end, length - 1, low)
    high = torch.where(at_end, length - 1, low + 1)
    fraction = torch.where(at_end, torch.zeros_like(position), position - low)
    scale = valid / grid.clamp(min=1)
    weights = torch.zeros(len(start), bins, length, dtype=start.dtype)
    weights.scatter_add_(2, low, (1 - fraction) * scale)
    weights.scatter_add_(2, high, fraction * scale)
    return weights


def _support(weights: torch.Tensor) -> Tuple[List[int], List[int]]:
    """Per RoI, the first and one-past-last position with a non-zero weight (0, 0 where there is none)."""
    used = weights.ne(0).any(dim=1)
    empty = ~used.any(dim=1)
    first = used.int().argmax(dim=1)
    stop = used.shape[1] - used.flip(1).int().argmax(dim=1)
    return torch.where(empty, 0, first).tolist(), torch.where(empty, 0, stop).tolist()


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
            row_weights, column_weights = self.weights(boxes, hwc.shape[0], hwc.shape[1])
            tops, bottoms = _support(row_weights)
            lefts, rights = _support(column_weights)
            for index, (top, bottom, left, right) in enumerate(zip(tops, bottoms, lefts, rights)):
                if bottom > top and right > left:
                    window = hwc[top:bottom, left:right].reshape(bottom - top, -1)
                    entries.append((window, row_weights[index, :, top:bottom], column_weights[index, :, left:right]))
                else:  # the RoI lies entirely outside the map: RoIAlign gives zeros
                    entries.append(None)
        return RoIPlan(entries, feature_map.shape[1])

    def pool_into(self, plan: RoIPlan, start: int, stop: int, out: torch.Tensor) -> None:
        """Pool RoIs ``start .. stop - 1`` of ``plan`` into ``out[0 .. stop - start - 1]`` ([*, S, S, C])."""
        size = self.output_size
        for offset, entry in enumerate(plan.entries[start:stop]):
            if entry is None:
                out[offset].zero_()
                continue
            window, row_weights, column_weights = entry
            rows = torch.mm(row_weights, window).view(size, column_weights.shape[1], plan.channels)
            torch.matmul(column_weights, rows, out=out[offset])

    def weights(self, boxes: torch.Tensor, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Row weights [R, S, height] and column weights [R, S, width] of ``boxes`` (XYXY, image pixels)."""
        offset = 0.5 if self.aligned else 0.0
        corners = boxes.float() * self.spatial_scale - offset
        start, extent = corners[:, :2], corners[:, 2:] - corners[:, :2]
        if not self.aligned:
            extent = extent.clamp(min=1.0)
        if self.sampling_ratio > 0:
            grid = torch.full_like(extent, self.sampling_ratio)
        else:
            grid = torch.ceil(extent / self.output_size)
        grid = grid.long()
        rows = axis_weights(start[:, 1], extent[:, 1], self.output_size, grid[:, 1], height)
        columns = axis_weights(start[:, 0], extent[:, 0], self.output_size, grid[:, 0], width)
        return rows, columns

    def extra_repr(self) -> str:
        return (
            f"feature={self.feature_name}, output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
