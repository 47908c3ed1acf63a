"""RoIAlign as two small matrix products per RoI, ``Wy @ window @ Wx^T`` over the part of the map it touches (bin
weights built term by term as torchvision's kernel does: its results to float rounding), and the backward as the
transposed products, without the per-sample scatter that dominates torchvision's CPU kernel. For CPUs."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

# One RoI's (image, top, bottom, left, right, row weights [S, bottom - top], column weights
# [S, right - left]); None for a RoI entirely outside the map (RoIAlign gives zeros).
Window = Optional[Tuple[int, int, int, int, int, torch.Tensor, torch.Tensor]]


def axis_weights(start: torch.Tensor, size: torch.Tensor, bins: int, grid: torch.Tensor, length: int) -> torch.Tensor:
    """One axis of RoIAlign as weights [R, bins, length]: RoI r covers ``start[r]`` to ``start[r] + size[r]``
    (map units) with ``grid[r]`` points per bin; [r, i, p] is the weight of map position p in bin i."""
    points = max(int(grid.max()), 1) if grid.numel() else 1
    bin_size = (size / bins)[:, None, None]
    bin_index = torch.arange(bins, dtype=start.dtype, device=start.device)[None, :, None]
    point_index = torch.arange(points, dtype=start.dtype, device=start.device)[None, None, :]
    grid = grid[:, None, None]
    position = start[:, None, None] + bin_index * bin_size + (point_index + 0.5) * bin_size / grid.clamp(min=1)
    # As torchvision: points over a pixel outside the map count zero, the rest are clamped into it.
    valid = (point_index < grid) & (position >= -1.0) & (position <= length)
    position = position.clamp(min=0)
    low = position.floor().long()
    at_end = low >= length - 1
    low = torch.where(at_end, length - 1, low)
    high = torch.where(at_end, length - 1, low + 1)
    fraction = torch.where(at_end, torch.zeros_like(position), position - low)
    scale = valid / grid.clamp(min=1)
    weights = torch.zeros(len(start), bins, length, dtype=start.dtype, device=start.device)
    weights.scatter_add_(2, low, (1 - fraction) * scale)
    weights.scatter_add_(2, high, fraction * scale)
    return weights


def weight_support(weights: torch.Tensor) -> Tuple[List[int], List[int]]:
    """Per RoI, the first and one-past-last position with a non-zero weight (0, 0 where there is none)."""
    used = weights.ne(0).any(dim=1)
    empty = ~used.any(dim=1)
    first = used.int().argmax(dim=1)
    stop = used.shape[1] - used.flip(1).int().argmax(dim=1)
    return torch.where(empty, 0, first).tolist(), torch.where(empty, 0, stop).tolist()


def roi_windows(
    rois: torch.Tensor, height: int, width: int, output_size: int, spatial_scale: float, sampling_ratio: int,
    aligned: bool,
) -> List[Window]:
    """The window of the map and its weights for each of ``rois`` [R, 5] (image index, XYXY in image pixels)."""
    corners = rois[:, 1:].to(torch.promote_types(rois.dtype, torch.float32)) * spatial_scale - (0.5 if aligned else 0.0)
    start, extent = corners[:, :2], corners[:, 2:] - corners[:, :2]
    if not aligned:
        extent = extent.clamp(min=1.0)
    grid = (torch.full_like(extent, sampling_ratio) if sampling_ratio > 0 else torch.ceil(extent / output_size)).long()
    rows = axis_weights(start[:, 1], extent[:, 1], output_size, grid[:, 1], height)
    columns = axis_weights(start[:, 0], extent[:, 0], output_size, grid[:, 0], width)
    images = rois[:, 0].long().tolist()
    windows: List[Window] = []
    for index, (top, bottom, left, right) in enumerate(zip(*weight_support(rows), *weight_support(columns))):
        if bottom > top and right > left:
            windows.append((images[index], top, bottom, left, right, rows[index, :, top:bottom],
                            columns[index, :, left:right]))
        else:
            windows.append(None)
    return windows


def pool_window(hwc: torch.Tensor, window: Window, out: torch.Tensor) -> None:
    """One pooled RoI into ``out`` [S, S, C] from the channels-last map ``hwc`` [N, H, W, C]."""
    image, top, bottom, left, right, row_weights, column_weights = window
    patch = hwc[image, top:bottom, left:right].reshape(bottom - top, -1)
    rows = torch.mm(row_weights, patch).view(row_weights.shape[0], column_weights.shape[1], out.shape[-1])
    torch.matmul(column_weights, rows, out=out)


class _SeparableRoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feature_map, rois, output_size, spatial_scale, sampling_ratio, aligned):
        # float32 inside (also under autocast, like torchvision's kernel); float64 stays float64.
        compute_dtype = torch.promote_types(feature_map.dtype, torch.float32)
        with torch.autocast(feature_map.device.type, enabled=False):
            hwc = feature_map.detach().to(compute_dtype).permute(0, 2, 3, 1).contiguous()
            _, height, width, channels = hwc.shape
            windows = roi_windows(rois.to(compute_dtype), height, width, output_size, spatial_scale, sampling_ratio,
                                  aligned)
            pooled = hwc.new_zeros(len(rois), output_size, output_size, channels)
            for roi, window in enumerate(windows):
                if window is not None:
                    pool_window(hwc, window, pooled[roi])
        ctx.windows = windows
        ctx.map_shape, ctx.map_dtype, ctx.compute_dtype = hwc.shape, feature_map.dtype, compute_dtype
        return pooled.permute(0, 3, 1, 2).to(feature_map.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_pooled):
        with torch.autocast(grad_pooled.device.type, enabled=False):
            grad = grad_pooled.to(ctx.compute_dtype).permute(0, 2, 3, 1).contiguous()
            grad_hwc = grad.new_zeros(ctx.map_shape)
            size, channels = grad.shape[1], grad.shape[3]
            for roi, window in enumerate(ctx.windows):
                if window is not None:
                    image, top, bottom, left, right, row_weights, column_weights = window
                    grad_rows = torch.matmul(column_weights.t(), grad[roi])  # [S, window width, C]
                    grad_patch = torch.mm(row_weights.t(), grad_rows.reshape(size, -1))
                    grad_hwc[image, top:bottom, left:right] += grad_patch.view(bottom - top, right - left, channels)
        return grad_hwc.permute(0, 3, 1, 2).to(ctx.map_dtype), None, None, None, None, None


def separable_roi_align(
    feature_map: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float, sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """``torchvision.ops.roi_align`` for rois [R, 5] (image index, XYXY), differentiable in ``feature_map``;
    [R, C, S, S] in channels-last memory."""
    return _SeparableRoIAlign.apply(feature_map, rois, output_size, spatial_scale, sampling_ratio, aligned)
