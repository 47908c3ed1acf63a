"""Top-1 / top-5 accuracy of a classifier over a (sharded) loader, summed over processes."""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from typing import Callable, Dict, Iterable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..utils.distributed import get_world_size

logger = logging.getLogger(__name__)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """How many rows have their label among the ``k`` highest logits, for each ``k`` (capped at the
    number of classes: with 4 classes "top-5" counts every image)."""
    largest = min(max(ks), logits.shape[1])
    top = logits.topk(largest, dim=1).indices
    hits = top == labels.view(-1, 1)
    return torch.stack([hits[:, : min(k, largest)].any(dim=1).sum() for k in ks])


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    data_loader: Iterable[Mapping[str, torch.Tensor]],
    normalize: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    log_period_s: float = 10.0,
) -> Dict[str, float]:
    """Top-1 and top-5 accuracy (%) of ``model`` over every process's part of the data.

    Batches are ``{"image": uint8 [N, 3, H, W], "label": [N], "skipped": [N]}``; ``normalize`` turns the
    images into model input on ``device``. Returns ``{"top1", "top5", "top1_error", "top5_error",
    "num_images", "skipped_images"}`` with counts summed over processes (the model's mode is restored).
    """
    was_training = model.training
    model.eval()
    # correct@1, correct@5, images, skipped files
    totals = torch.zeros(4, dtype=torch.int64, device=device)
    total_batches = len(data_loader) if hasattr(data_loader, "__len__") else None
    start = last_log = time.perf_counter()
    try:
        for index, batch in enumerate(data_loader):
            images = normalize(batch["image"].to(device, non_blocking=True))
            labels = batch["label"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                logits = model(images)
            totals[:2] += topk_correct(logits.float(), labels)
            totals[2] += labels.numel()
            totals[3] += batch["skipped"].sum().to(device)
            now = time.perf_counter()
            if now - last_log > log_period_s and total_batches:
                done = index + 1
                eta = (now - start) / done * (total_batches - done)
                logger.info(
                    "Evaluated %d/%d batches, %.0f images/s, eta %s",
                    done,
                    total_batches,
                    int(totals[2]) / (now - start),
                    datetime.timedelta(seconds=int(eta)),
                )
                last_log = now
    finally:
        model.train(was_training)
    if get_world_size() > 1:
        dist.all_reduce(totals)
    correct1, correct5, count, skipped = (int(value) for value in totals.cpu())
    if count == 0:
        raise ValueError("evaluation saw no images")
    top1, top5 = 100.0 * correct1 / count, 100.0 * correct5 / count
    logger.info(
        "Evaluated %d images in %.1f s: top-1 %.2f%%, top-5 %.2f%%", count, time.perf_counter() - start, top1, top5
    )
    return {
        "top1": top1,
        "top5": top5,
        "top1_error": 100.0 - top1,
        "top5_error": 100.0 - top5,
        "num_images": count,
        "skipped_images": skipped,
    }
