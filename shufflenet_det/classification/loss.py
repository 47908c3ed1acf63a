"""Cross-entropy with label smoothing, as in the official ShuffleNet training (epsilon 0.1)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def label_smoothing_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Mean over the batch of ``-sum_k q_k log p_k`` with ``q = (1 - smoothing) * one_hot + smoothing / K``.

    ``K`` is the number of classes (the smoothing mass is spread over all classes, the true one
    included), which is both torch's ``label_smoothing`` and the official recipe's definition. The
    loss is computed in float32 whatever the logits' dtype (AMP).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"CLASSIFICATION.LABEL_SMOOTHING must be in [0, 1), got {smoothing}")
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
