"""The official recipe's label-smoothed loss, and top-1 / top-5 accuracy over a (sharded) loader."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from ..config.loading import ConfigError
from ..evaluation import DatasetEvaluator, inference_on_dataset
from ..utils.distributed import get_world_size

logger = logging.getLogger(__name__)


def label_smoothing_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy against ``(1 - smoothing) * one_hot + smoothing / K`` (K classes, the true one included:
    torch's and the official recipe's definition), in float32 whatever the logits' dtype."""
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"CLASSIFICATION.LABEL_SMOOTHING must be in [0, 1), got {smoothing}")
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """How many rows have their label among the ``k`` highest logits, for each ``k`` (capped at the
    number of classes: with 4 classes "top-5" counts every image)."""
    largest = min(max(ks), logits.shape[1])
    hits = logits.topk(largest, dim=1).indices == labels.view(-1, 1)
    return torch.stack([hits[:, : min(k, largest)].any(dim=1).sum() for k in ks])


class TopKAccuracy(DatasetEvaluator):
    """Top-1 / top-5 of the logits for batches with ``"label"`` and ``"skipped"`` (unreadable files passed
    over), summed over every process."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        self.totals = torch.zeros(4, dtype=torch.int64, device=self.device)  # correct@1, correct@5, images, skipped

    def process(self, batch: Mapping[str, torch.Tensor], logits: torch.Tensor) -> None:
        labels = batch["label"].to(self.device, non_blocking=True)
        self.totals[:2] += topk_correct(logits.float(), labels)
        self.totals[2] += labels.numel()
        self.totals[3] += batch["skipped"].sum().to(self.device)

    def evaluate(self) -> Dict[str, Any]:
        if get_world_size() > 1:
            dist.all_reduce(self.totals)
        correct1, correct5, count, skipped = (int(value) for value in self.totals.cpu())
        if count == 0:
            raise ValueError("evaluation saw no images")
        top1, top5 = 100.0 * correct1 / count, 100.0 * correct5 / count
        logger.info("Evaluated %d images: top-1 %.2f%%, top-5 %.2f%%", count, top1, top5)
        return {"top1": top1, "top5": top5, "top1_error": 100.0 - top1, "top5_error": 100.0 - top5,
                "num_images": count, "skipped_images": skipped}


def evaluate_classifier(model: nn.Module, data_loader: Iterable[Mapping[str, torch.Tensor]],
                        normalize: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                        amp_dtype: Optional[torch.dtype] = None) -> Dict[str, float]:
    """``{"top1", "top5", "top1_error", "top5_error" (%), "num_images", "skipped_images"}`` of ``model`` over
    every process's part of the data: batches of uint8 ``"image"``s that ``normalize`` makes model input on
    ``device``, ``"label"``s and ``"skipped"`` counts (the evaluation package's inference loop)."""
    return inference_on_dataset(model, data_loader, TopKAccuracy(device), device, amp_dtype, log_period_s=10.0,
                                inputs=lambda batch, device: normalize(batch["image"].to(device, non_blocking=True)))
