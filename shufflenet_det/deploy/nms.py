"""Non-maximum suppression that stops once it has the boxes a detector keeps anyway.

torchvision's RPN runs NMS over all ``PRE_NMS_TOPK_TEST`` (6000) proposals and then keeps the first
``POST_NMS_TOPK_TEST`` (300): its CPU kernel compares every kept box with every later one, about
n^2 / 2 IoUs. Greedy NMS keeps a box when no box kept before it (in score order) overlaps it by more
than the threshold, so the first k kept boxes depend only on the boxes up to the k-th kept one.
``nms_first_k`` is ``detection.proposals.greedy_nms_first_k`` for one image: it walks the boxes in
blocks, in score order, compares each block with the boxes kept so far and within itself, and stops at
k: the same boxes in the same order as ``torchvision.ops.nms(boxes, scores, threshold)[:k]``, with the
same float IoU arithmetic.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..detection.proposals import greedy_nms_first_k


def nms_first_k(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, k: Optional[int] = None, block: int = 128
) -> torch.Tensor:
    """Indices of the first ``k`` boxes (XYXY) that greedy NMS keeps, by decreasing score (all if k is None).

    Equals ``torchvision.ops.nms(boxes, scores, iou_threshold)[:k]`` (ties in score keep index order).
    """
    limit = len(boxes) if k is None else max(min(k, len(boxes)), 0)
    everything = torch.ones(1, len(boxes), dtype=torch.bool, device=boxes.device)
    indices, counts = greedy_nms_first_k(boxes[None], scores[None], everything, iou_threshold, limit, block)
    return indices[0, : int(counts[0])]
