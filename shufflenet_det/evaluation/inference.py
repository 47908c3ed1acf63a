"""The inference loop: run a detector over a test loader and feed its outputs to an evaluator."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import time
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..engine.trainer import amp_dtype_from_name
from ..utils import distributed as comm

logger = logging.getLogger("shufflenet_det.evaluation")


class DatasetEvaluator:
    """detectron2's evaluator interface: ``reset()``, then ``process(inputs, outputs)`` per batch (the loader's
    dicts and the model's outputs, in order), then ``evaluate()`` (``{}`` on ranks that do not report)."""

    def reset(self) -> None:
        pass

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    def evaluate(self) -> Dict[str, Any]:
        raise NotImplementedError


def inference_on_dataset(
    model: nn.Module,
    data_loader: Iterable[Sequence[Mapping[str, Any]]],
    evaluator: DatasetEvaluator,
    device: Union[str, torch.device, None] = None,
    amp_dtype: Union[torch.dtype, str, None] = None,
    log_period_s: float = 5.0,
    num_warmup: int = 5,
) -> Dict[str, Any]:
    """Run ``model([image, ...])`` on every batch (dicts with an ``"image"``) in eval mode without gradients
    (modes restored after), on ``device`` (default: the model's), under autocast if ``amp_dtype`` is given; return
    ``evaluator.evaluate()``. The first ``num_warmup`` batches are left out of the timing."""
    if device is None:
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        device = first.device if first is not None else "cpu"
    device = torch.device(device)
    autocast_dtype = None if amp_dtype is None else amp_dtype_from_name(amp_dtype)
    try:
        total: Optional[int] = len(data_loader)  # type: ignore[arg-type]
        num_warmup = min(num_warmup, max(total - 1, 0))
    except TypeError:
        total = None
    logger.info("Start inference on %s batches", total if total is not None else "an unknown number of")

    evaluator.reset()
    timed_images = timed_batches = num_images = num_batches = 0
    timed_model_s = 0.0
    timed_start = last_log = time.perf_counter()
    modes = [module.training for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for num_batches, batch in enumerate(data_loader, start=1):
                if num_batches == num_warmup + 1:
                    timed_start = time.perf_counter()
                    timed_images, timed_batches, timed_model_s = 0, 0, 0.0
                images = [record["image"].to(device, non_blocking=True) for record in batch]
                model_start = time.perf_counter()
                autocast = torch.autocast(device.type, autocast_dtype) if autocast_dtype is not None else None
                with autocast or contextlib.nullcontext():
                    outputs = model(images)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timed_model_s += time.perf_counter() - model_start
                evaluator.process(batch, outputs)
                num_images += len(batch)
                timed_images += len(batch)
                timed_batches += 1
                if time.perf_counter() - last_log >= log_period_s:
                    last_log = time.perf_counter()
                    elapsed = last_log - timed_start
                    _log_progress(num_batches, total, timed_batches, timed_images, elapsed, timed_model_s)
    finally:
        for module, training in zip(model.modules(), modes):
            module.training = training

    timed_s = time.perf_counter() - timed_start
    if num_batches > num_warmup and timed_images:
        logger.info(
            "Inference on %d images (%d batches) done. After %d warm-up batches: total %s, %.4f s/img per "
            "device (model alone %.4f s/img), on %d device(s)", num_images, num_batches, num_warmup,
            datetime.timedelta(seconds=int(timed_s)), timed_s / timed_images, timed_model_s / timed_images,
            comm.get_world_size(),
        )
    else:
        logger.info("Inference on %d images (%d batches) done; too few batches to time", num_images, num_batches)
    results = evaluator.evaluate()
    return {} if results is None else results


def _log_progress(done: int, total: Optional[int], timed_batches: int, timed_images: int, timed_s: float,
                  model_s: float) -> None:
    if timed_images == 0:
        logger.info("Inference done %d/%s batches (warming up)", done, total if total is not None else "?")
        return
    message = (f"Inference done {done}/{total if total is not None else '?'} batches. {timed_s / timed_images:.4f} "
               f"s/img (model {model_s / timed_images:.4f} s/img)")
    if total is not None:
        message += f". ETA={datetime.timedelta(seconds=int(timed_s / timed_batches * (total - done)))}"
    logger.info(message)
