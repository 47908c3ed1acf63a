"""Latency of one forward pass: median of timed runs after warm-up, batch 1, eval mode, no grad."""

from __future__ import annotations

import statistics
import time
from typing import Optional, Sequence

import torch
from torch import nn

from .complexity import REFERENCE_INPUT_SIZE, check_input_size, num_threads


def measure_latency(
    model: nn.Module,
    input_size: Sequence[int] = REFERENCE_INPUT_SIZE,
    runs: int = 20,
    warmup: int = 5,
    threads: Optional[int] = 1,
    in_channels: int = 3,
) -> float:
    """Median milliseconds of ``runs`` batch-1 forward passes after ``warmup`` untimed ones.

    ``threads`` sets ``torch.set_num_threads`` for the measurement (None keeps the current setting);
    the previous setting and the model's train/eval mode are restored afterwards.
    """
    height, width = check_input_size(input_size)
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    inputs = torch.randn(1, in_channels, height, width, device=device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    was_training = model.training
    model.eval()
    timings = []
    try:
        with torch.no_grad(), num_threads(threads):
            for index in range(warmup + runs):
                synchronize()
                start = time.perf_counter()
                model(inputs)
                synchronize()
                if index >= warmup:
                    timings.append((time.perf_counter() - start) * 1000.0)
    finally:
        model.train(was_training)
    return statistics.median(timings)
