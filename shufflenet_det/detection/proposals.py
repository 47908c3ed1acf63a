"""RPN proposal selection for all images of a batch at once, with an NMS that stops at the boxes kept (torchvision's
goes image by image, its GPU NMS scanning every box, 12000 in C4 training, in one thread block):
``greedy_nms_first_k`` resolves greedy NMS a block of boxes at a time with batched matrix operations."""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.rpn import RegionProposalNetwork


def iou_above(
    boxes: torch.Tensor, areas: torch.Tensor, others: torch.Tensor, other_areas: torch.Tensor, threshold: float
) -> torch.Tensor:
    """[..., len(boxes), len(others)]: IoU > threshold, computed in the order of torchvision's NMS kernels
    (compared in double: the same answer as their float comparison of float32 IoUs)."""
    first, second = boxes[..., :, None, :], others[..., None, :, :]
    width = torch.minimum(first[..., 2], second[..., 2]) - torch.maximum(first[..., 0], second[..., 0])
    height = torch.minimum(first[..., 3], second[..., 3]) - torch.maximum(first[..., 1], second[..., 1])
    intersection = width.clamp(min=0) * height.clamp(min=0)
    iou = intersection / (areas[..., :, None] + other_areas[..., None, :] - intersection)
    return iou.double() > threshold


def greedy_nms_first_k(
    boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, iou_threshold: float, k: int, block: int = 1024
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Greedy NMS for a batch: boxes [N, M, 4] (XYXY), scores [N, M], valid [N, M] (boxes to consider).

    Returns ``(indices [N, k], counts [N])``: ``indices[n, :counts[n]]`` equals
    ``torchvision.ops.nms(boxes[n][valid[n]], scores[n][valid[n]], iou_threshold)[:k]`` mapped back to M
    (equal scores in index order). Boxes are visited in score order, ``block`` at a time: a box drops out
    if a box kept in an earlier block overlaps it; within the block, box i survives if no earlier survivor
    overlaps it, applied to all at once until nothing changes (each round settles at least one box).
    """
    images, count = scores.shape
    indices = torch.zeros(images, k, dtype=torch.int64, device=scores.device)
    counts = torch.zeros(images, dtype=torch.int64, device=scores.device)
    if count == 0 or k <= 0:
        return indices, counts
    # torchvision's NMS runs in float32 under autocast too; float64 stays float64.
    compute_dtype = torch.promote_types(boxes.dtype, torch.float32)
    boxes, scores = boxes.to(compute_dtype), scores.to(compute_dtype)
    ranked = scores.masked_fill(~valid, float("-inf"))
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices
    ordered = boxes.gather(1, order[..., None].expand(-1, -1, 4))
    ordered_valid = valid.gather(1, order)
    areas = (ordered[..., 2] - ordered[..., 0]) * (ordered[..., 3] - ordered[..., 1])
    kept = torch.zeros_like(ordered_valid)  # by position in score order
    # Beyond the last valid box of every image nothing is left to keep.
    last = int(ordered_valid.sum(dim=1).max())
    for start in range(0, last, block):
        stop = min(start + block, last)
        candidates, candidate_areas = ordered[:, start:stop], areas[:, start:stop]
        # Images that have their k boxes take no more.
        alive = ordered_valid[:, start:stop] & (kept[:, :start].sum(dim=1) < k)[:, None]
        if start:
            # The boxes kept so far, packed to the front of each row (fewer than k + block per image).
            width = int(kept[:, :start].sum(dim=1).max())
            packed = torch.sort((~kept[:, :start]).to(torch.uint8), dim=1, stable=True).indices[:, :width]
            earlier_kept = kept[:, :start].gather(1, packed)
            earlier_boxes = ordered[:, :start].gather(1, packed[..., None].expand(-1, -1, 4))
            earlier_areas = areas[:, :start].gather(1, packed)
            overlap = iou_above(candidates, candidate_areas, earlier_boxes, earlier_areas, iou_threshold)
            alive &= ~(overlap & earlier_kept[:, None, :]).any(dim=2)
        # earlier[n, i, j]: box j comes before box i in score order and overlaps it.
        earlier = iou_above(candidates, candidate_areas, candidates, candidate_areas, iou_threshold).tril(-1).float()
        survivors = alive
        while True:
            suppressed = torch.bmm(earlier, survivors.float()[..., None])[..., 0] > 0
            updated = alive & ~suppressed
            if torch.equal(updated, survivors):
                break
            survivors = updated
        kept[:, start:stop] = survivors
        if bool((kept[:, :stop].sum(dim=1) >= k).all()):
            break
    counts = kept.sum(dim=1).clamp(max=k)
    positions = torch.sort((~kept).to(torch.uint8), dim=1, stable=True).indices[:, :k]
    width = positions.shape[1]
    indices[:, :width] = order.gather(1, positions)
    return indices, counts


class C4RegionProposalNetwork(RegionProposalNetwork):
    """torchvision's RPN with settable box-delta weights (MODEL.RPN.BBOX_REG_WEIGHTS; torchvision fixes 1s)."""

    def __init__(self, *args: Any, bbox_reg_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.box_coder = BoxCoder(tuple(bbox_reg_weights))


class BatchedProposalRPN(C4RegionProposalNetwork):
    """torchvision's RPN with ``filter_proposals`` run for all images at once (the C4 RPN's single level):
    the same proposals in the same order (equal scores in index order). ``select`` is the NMS."""

    nms_block = 1024  # boxes per step of ``greedy_nms_first_k``

    def filter_proposals(
        self, proposals: torch.Tensor, objectness: torch.Tensor, image_shapes: List[Tuple[int, int]],
        num_anchors_per_level: List[int],
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        # Top PRE_NMS_TOPK, sigmoid, clipping, then the size and score filters as validity [N, M].
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        rows = torch.arange(num_images, device=proposals.device)[:, None]
        boxes, scores = proposals[rows, top], torch.sigmoid(objectness[rows, top])
        sizes = torch.tensor(image_shapes, dtype=boxes.dtype, device=boxes.device)  # [N, (height, width)]
        limits = sizes.flip(1).repeat(1, 2)[:, None, :]  # width, height, width, height
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        widths, heights = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        valid = (widths >= self.min_size) & (heights >= self.min_size) & (scores >= self.score_thresh)
        selected = self.select(boxes, scores, valid)
        return [boxes[n, keep] for n, keep in enumerate(selected)], [scores[n, keep] for n, keep in enumerate(selected)]

    def select(self, boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor) -> List[torch.Tensor]:
        """Per image, the indices (into M) of its proposals: NMS, then the best POST_NMS_TOPK."""
        keep, counts = greedy_nms_first_k(boxes, scores, valid, self.nms_thresh, self.post_nms_top_n(), self.nms_block)
        return [keep[image, :kept] for image, kept in enumerate(counts.tolist())]
