"""The inference loop: run a model over a test loader and feed its outputs to an evaluator."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Sequence, Union

import torch
from torch import nn

from ..engine.trainer import amp_dtype_from_name
from ..utils import distributed as comm

logger = logging.getLogger("shufflenet_det.evaluation")


class DatasetEvaluator:
    """detectron2's evaluator interface: ``reset()``, then ``process(inputs, outputs)`` per batch (the loader's
    batch and the model's outputs), then ``evaluate()`` (``{}`` on ranks that do not report)."""

    def reset(self) -> None:
        pass

    def process(self, inputs: Any, outputs: Any) -> None:
        raise NotImplementedError

    def evaluate(self) -> Dict[str, Any]:
        raise NotImplementedError


def image_list(batch: Sequence[Mapping[str, Any]], device: torch.device) -> list:
    """A detector's input: the ``"image"`` of each dict of a batch, on ``device``."""
    return [record["image"].to(device, non_blocking=True) for record in batch]


def inference_on_dataset(
    model: nn.Module,
    data_loader: Iterable[Any],
    evaluator: DatasetEvaluator,
    device: Union[str, torch.device, None] = None,
    amp_dtype: Union[torch.dtype, str, None] = None,
    log_period_s: float = 5.0,
    num_warmup: int = 5,
    inputs: Callable[[Any, torch.device], Any] = image_list,
) -> Dict[str, Any]:
    """Run ``model(inputs(batch, device))`` on every batch in eval mode without gradients (modes restored
    after), on ``device`` (default: the model's), under autocast if ``amp_dtype`` is given; return
    ``evaluator.evaluate()``. The first ``num_warmup`` batches are left out of the timing."""
    if device is None:
        first = next(itertools.chain(model.parameters(), model.buffers()), None)
        device = first.device if first is not None else "cpu"
    device = torch.device(device)
    autocast = torch.autocast(device.type, amp_dtype_from_name(amp_dtype)) if amp_dtype else contextlib.nullcontext()
    try:
        total = len(data_loader)
    except TypeError:  # a DataLoader over an IterableDataset has __len__ but may not know its length
        total = None
    if total is not None:
        num_warmup = min(num_warmup, max(total - 1, 0))
    logger.info("Start inference on %s batches", total if total is not None else "an unknown number of")

    evaluator.reset()
    timed_images = num_images = num_batches = 0
    model_s = 0.0
    start = last_log = time.perf_counter()
    modes = [module.training for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for num_batches, batch in enumerate(data_loader, start=1):
                if num_batches == num_warmup + 1:
                    start, timed_images, model_s = time.perf_counter(), 0, 0.0
                model_input = inputs(batch, device)
                model_start = time.perf_counter()
                with autocast:
                    outputs = model(model_input)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                model_s += time.perf_counter() - model_start
                evaluator.process(batch, outputs)
                num_images += len(outputs)
                timed_images += len(outputs)
                if time.perf_counter() - last_log >= log_period_s:
                    last_log = time.perf_counter()
                    done = f"Inference done {num_batches}/{total if total is not None else '?'} batches"
                    if num_batches <= num_warmup:
                        logger.info("%s (warming up)", done)
                        continue
                    seconds = last_log - start
                    done += f". {seconds / timed_images:.4f} s/img (model {model_s / timed_images:.4f} s/img)"
                    if total is not None:
                        remaining = seconds / (num_batches - num_warmup) * (total - num_batches)
                        done += f". ETA={datetime.timedelta(seconds=int(remaining))}"
                    logger.info(done)
    finally:
        for module, training in zip(model.modules(), modes):
            module.training = training

    timed_s = time.perf_counter() - start
    if num_batches > num_warmup and timed_images:
        logger.info(
            "Inference on %d images (%d batches) done. After %d warm-up batches: total %s, %.4f s/img per "
            "device (model alone %.4f s/img), on %d device(s)", num_images, num_batches, num_warmup,
            datetime.timedelta(seconds=int(timed_s)), timed_s / timed_images, model_s / timed_images,
            comm.get_world_size(),
        )
    else:
        logger.info("Inference on %d images (%d batches) done; too few batches to time", num_images, num_batches)
    results = evaluator.evaluate()
    return {} if results is None else results
