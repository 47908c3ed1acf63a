"""Non-maximum suppression that stops once it has the boxes a detector keeps anyway.

torchvision's RPN runs NMS over all ``PRE_NMS_TOPK_TEST`` (6000) proposals and then keeps the first
``POST_NMS_TOPK_TEST`` (300): its CPU kernel compares every kept box with every later one, about
n^2 / 2 IoUs. Greedy NMS keeps a box when no box kept before it (in score order) overlaps it by more
than the threshold, so the first k kept boxes depend only on the boxes up to the k-th kept one.
``nms_first_k`` walks the boxes in blocks, in score order, compares each block with the boxes kept so
far and within itself, and stops at k: the same boxes in the same order as
``torchvision.ops.nms(boxes, scores, threshold)[:k]``, with the same float IoU arithmetic.
"""

from __future__ import annotations

from typing import Optional

import torch


def _overlaps(
    boxes: torch.Tensor, areas: torch.Tensor, others: torch.Tensor, other_areas: torch.Tensor, threshold: float
) -> torch.Tensor:
    """[len(boxes), len(others)]: IoU > threshold, computed as torchvision's CPU NMS kernel does (float32
    terms in the same order, compared with the threshold in double precision)."""
    first, second = boxes[:, None], others[None, :]
    width = torch.minimum(first[..., 2], second[..., 2]) - torch.maximum(first[..., 0], second[..., 0])
    height = torch.minimum(first[..., 3], second[..., 3]) - torch.maximum(first[..., 1], second[..., 1])
    intersection = width.clamp(min=0) * height.clamp(min=0)
    iou = intersection / (areas[:, None] + other_areas[None, :] - intersection)
    return iou.double() > threshold


def nms_first_k(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, k: Optional[int] = None, block: int = 128
) -> torch.Tensor:
    """Indices of the first ``k`` boxes (XYXY) that greedy NMS keeps, by decreasing score (all if k is None).

    Equals ``torchvision.ops.nms(boxes, scores, iou_threshold)[:k]`` (ties in score keep index order).
    """
    count = len(boxes)
    limit = count if k is None else min(k, count)
    if count == 0 or limit <= 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = boxes[order]
    areas = (ordered[:, 2] - ordered[:, 0]) * (ordered[:, 3] - ordered[:, 1])
    kept = torch.zeros(0, dtype=torch.int64, device=boxes.device)
    for start in range(0, count, block):
        stop = min(start + block, count)
        candidates, candidate_areas = ordered[start:stop], areas[start:stop]
        alive = ~_overlaps(candidates, candidate_areas, ordered[kept], areas[kept], iou_threshold).any(dim=1)
        # Within the block, box i survives if no earlier surviving box overlaps it. Iterating that rule
        # from "all alive" fixes one more leading box per step and stops at greedy NMS's answer.
        earlier = _overlaps(candidates, candidate_areas, candidates, candidate_areas, iou_threshold).tril(-1)
        survivors = alive
        while True:
            updated = alive & ~(earlier & survivors[None, :]).any(dim=1)
            if torch.equal(updated, survivors):
                break
            survivors = updated
        kept = torch.cat([kept, start + survivors.nonzero().flatten()])
        if len(kept) >= limit:
            break
    return order[kept[:limit]]
