"""The inference loop: run a detector over a test loader and feed its outputs to an evaluator."""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..engine.trainer import amp_dtype_from_name
from ..utils import distributed as comm

logger = logging.getLogger("shufflenet_det.evaluation")


class DatasetEvaluator:
    """What ``inference_on_dataset`` drives: ``reset()``, then ``process(inputs, outputs)`` per batch,
    then ``evaluate()`` (detectron2's interface)."""

    def reset(self) -> None:
        """Forget everything processed so far (called before the first batch)."""

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Take one batch: the loader's dicts and the model's outputs, in the same order."""
        raise NotImplementedError

    def evaluate(self) -> Dict[str, Any]:
        """The metrics of everything processed (``{}`` on ranks that do not report)."""
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
    """Run ``model`` on every batch of ``data_loader`` and return ``evaluator.evaluate()``.

    Each batch is a list of dicts with an ``"image"`` tensor; the model is called as
    ``model([image, ...])`` in eval mode without gradients (its previous mode is restored afterwards).

    Args:
        device: where images are moved (default: the device of the model's parameters).
        amp_dtype: run the model under autocast with this dtype (``torch.bfloat16``/"bfloat16",
            ``torch.float16``/"float16"); ``None`` runs in full precision.
        log_period_s: seconds between progress lines.
        num_warmup: first iterations left out of the timing (cuDNN autotuning, allocator warm-up).
    """
    device = torch.device(device) if device is not None else _model_device(model)
    autocast_dtype = None if amp_dtype is None else amp_dtype_from_name(amp_dtype)
    total = _length(data_loader)
    if total is not None:
        num_warmup = min(num_warmup, max(total - 1, 0))
    logger.info("Start inference on %s batches", total if total is not None else "an unknown number of")

    evaluator.reset()
    timed_images = timed_batches = 0
    timed_model_s = 0.0
    timed_start = time.perf_counter()
    last_log = timed_start
    num_images = 0
    num_batches = 0
    with _eval_mode(model), torch.no_grad():
        for num_batches, batch in enumerate(data_loader, start=1):
            if num_batches == num_warmup + 1:
                timed_start = time.perf_counter()
                timed_images, timed_batches, timed_model_s = 0, 0, 0.0
            images = [record["image"].to(device, non_blocking=True) for record in batch]
            model_start = time.perf_counter()
            with _autocast(device, autocast_dtype):
                outputs = model(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timed_model_s += time.perf_counter() - model_start
            evaluator.process(batch, outputs)
            num_images += len(batch)
            timed_images += len(batch)
            timed_batches += 1

            now = time.perf_counter()
            if now - last_log >= log_period_s:
                last_log = now
                _log_progress(num_batches, total, timed_batches, timed_images, now - timed_start, timed_model_s)

    timed_s = time.perf_counter() - timed_start
    if num_batches > num_warmup and timed_images:
        logger.info(
            "Inference on %d images (%d batches) done. After %d warm-up batches: total %s, %.4f s/img per "
            "device (model alone %.4f s/img), on %d device(s)",
            num_images,
            num_batches,
            num_warmup,
            datetime.timedelta(seconds=int(timed_s)),
            timed_s / timed_images,
            timed_model_s / timed_images,
            comm.get_world_size(),
        )
    else:
        logger.info("Inference on %d images (%d batches) done; too few batches to time", num_images, num_batches)

    results = evaluator.evaluate()
    return {} if results is None else results


def _log_progress(
    done: int, total: Optional[int], timed_batches: int, timed_images: int, timed_s: float, model_s: float
) -> None:
    if timed_images == 0:
        logger.info("Inference done %d/%s batches (warming up)", done, total if total is not None else "?")
        return
    message = (
        f"Inference done {done}/{total if total is not None else '?'} batches. {timed_s / timed_images:.4f} s/img "
        f"(model {model_s / timed_images:.4f} s/img)"
    )
    if total is not None:
        eta = datetime.timedelta(seconds=int(timed_s / timed_batches * (total - done)))
        message += f". ETA={eta}"
    logger.info(message)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _length(data_loader: Iterable[Any]) -> Optional[int]:
    try:
        return len(data_loader)  # type: ignore[arg-type]
    except TypeError:
        return None


def _autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model.eval()`` for the block; restores each module's own training flag afterwards."""
    modes: List[bool] = [module.training for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in zip(model.modules(), modes):
            module.training = training
