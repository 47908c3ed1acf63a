"""What ``tools/train_cls.py`` runs on the shared engine: ``main(args)`` trains (``--resume`` continues),
evaluates (``--eval-only``) or measures throughput (``--benchmark``), in one process or one of several; the
recipe's label-smoothed loss and top-1 / top-5 accuracy."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
from fvcore.common.config import CfgNode
from torch import nn
from torch.nn import functional as F

from ..config.loading import ConfigError, config_dir, load_config
from ..data import DatasetError, add_register_coco_argument, register_coco_datasets
from ..engine import Checkpointer, HookBase, SetupError, Trainer, build_checkpointer, build_grad_scaler
from ..engine import build_lr_scheduler, build_optimizer, build_trainer, create_ddp_model, default_argument_parser
from ..engine import default_setup, device_from_config, eval_amp_dtype, per_device_batch_size
from ..evaluation import DatasetEvaluator, inference_on_dataset
from ..modeling import CONV_IMPLS, apply_conv_form, create_model, model_args_from_config
from ..utils.distributed import broadcast, get_world_size, is_main_process
from ..utils.io import atomic_torch_save, atomic_write, safe_torch_load
from ..utils.logger import setup_logger
from ..utils.text_table import format_table
from ..weights import load_weights, model_structure
from .data import ImagePreprocessing, Normalizer, build_dataset, build_test_loader, build_test_transform
from .data import build_train_loader, build_train_transform

logger = logging.getLogger(__name__)

CONFIG_FOLDER = "classification"


def list_classification_configs() -> List[str]:
    """Names of the configs in ``configs/classification/``."""
    return sorted(path.stem for path in (config_dir() / CONFIG_FOLDER).glob("*.yaml"))


def load_classification_config(name_or_path: str, overrides: Sequence[Any] = ()) -> CfgNode:
    """``load_config`` for a YAML file, or a bare name under ``configs/classification/`` (then ``configs/``)."""
    folders = (config_dir() / CONFIG_FOLDER, config_dir())
    candidates = [Path(name_or_path)] + [f / f"{name_or_path}{ext}" for f in folders for ext in ("", ".yaml")]
    path = next((candidate for candidate in candidates if name_or_path and candidate.is_file()), None)
    if path is None:
        problem = f"config '{name_or_path}' not found" if name_or_path else "--config is required"
        raise ConfigError(f"{problem}; classification configs: {', '.join(list_classification_configs())}")
    return load_config(path, overrides)


def build_classifier(cfg: CfgNode, device: Optional[torch.device] = None) -> nn.Module:
    """The network of MODEL.BACKBONE.NAME (MODEL.SHUFFLENET.* / MODEL.MOBILENET.*, as for detection) with
    CLASSIFICATION.NUM_CLASSES outputs and MODEL.WEIGHTS (any ``shufflenet_det.weights`` source; their metadata
    in ``model.weights_meta``), on ``device`` (default CPU) in the conv form of SHUFFLENET_DET.CONV_IMPL."""
    conv_form = cfg.SHUFFLENET_DET.CONV_IMPL
    if conv_form not in CONV_IMPLS:
        raise ConfigError(f"SHUFFLENET_DET.CONV_IMPL must be one of {', '.join(CONV_IMPLS)}, got {conv_form!r}")
    arch, kwargs, _ = model_args_from_config(cfg)
    model = create_model(arch, num_classes=cfg.CLASSIFICATION.NUM_CLASSES, **kwargs)
    model.weights_meta = dict(load_weights(model, cfg.MODEL.WEIGHTS)) if cfg.MODEL.WEIGHTS else {}
    return apply_conv_form(model if device is None else model.to(device), conv_form, device)


def checkpoint_meta(model: nn.Module, preprocessing: ImagePreprocessing, classes: Sequence[str]) -> Dict[str, Any]:
    """What our checkpoints record to load as pretrained weights: architecture, input format and
    normalization, class names, structure settings."""
    meta: Dict[str, Any] = {"source": "shufflenet_det", "arch": model.arch, "num_classes": len(classes)}
    return {**meta, **preprocessing.meta(), "classes": list(classes), **model_structure(model)}


def label_smoothing_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy against ``(1 - smoothing) * one_hot + smoothing / K`` (K classes, the true one included:
    torch's and the official recipe's definition), in float32; ``ClassificationLoss`` checks the configured value."""
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


class ClassificationLoss(HookBase):
    """The engine's ``loss_fn(model, batch) -> {"loss_cls"}``: normalizes the uint8 images on the device, runs
    the model, applies label smoothing. As a hook, logs ``skipped_images`` (unreadable files passed over by
    this process) every ``period`` iterations once there are any."""

    def __init__(self, normalize: Callable[[torch.Tensor], torch.Tensor], label_smoothing: float, period: int = 20):
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"CLASSIFICATION.LABEL_SMOOTHING must be in [0, 1), got {label_smoothing}")
        self.normalize, self.label_smoothing, self.period = normalize, label_smoothing, period
        self.skipped: Any = 0  # becomes a tensor on the device: reading it every step would sync

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        self.skipped = self.skipped + batch["skipped"].sum()
        logits = model(self.normalize(batch["image"]))
        return {"loss_cls": label_smoothing_cross_entropy(logits, batch["label"], self.label_smoothing)}

    def after_step(self) -> None:
        if self.trainer.iter % self.period == 0 or self.trainer.iter >= self.trainer.max_iter:
            count = int(self.skipped)
            if count:
                self.trainer.storage.put_scalar("skipped_images", count, smoothing_hint=False)


def argument_parser() -> argparse.ArgumentParser:
    """The engine's training arguments plus ``--benchmark``."""
    parser = default_argument_parser("Train or evaluate an ImageNet classifier (ShuffleNet v1, MobileNet v1).")
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="measure training and inference images/s on random data (SOLVER.IMS_PER_BATCH images per step)",
    )
    parser.add_argument("--benchmark-iters", type=int, default=20, help="timed iterations of --benchmark")
    add_register_coco_argument(parser)  # detection datasets for CLASSIFICATION.BOX_CROPS_OF
    return parser


def main(args: argparse.Namespace) -> int:
    """Entry point of every process. Config and dataset problems are a ``SetupError`` (one line, status 2)."""
    try:
        register_coco_datasets(args.register_coco)
        cfg = load_classification_config(args.config, args.opts)
        if args.benchmark:
            logger.info(
                "Benchmark %(arch)s: batch %(batch_size)d, %(image_size)dx%(image_size)d, %(setting)s: training "
                "%(train_images_per_s).1f images/s, inference %(inference_images_per_s).1f images/s",
                benchmark_classifier(cfg, args.benchmark_iters),
            )
            return 0
        return run_evaluation(cfg, args) if args.eval_only else run_training(cfg, args)
    except (ConfigError, DatasetError) as error:
        raise SetupError(str(error)) from None


def run_training(cfg: CfgNode, args: argparse.Namespace) -> int:
    """Train with the engine (checkpoints, exact ``--resume``, evaluation every TEST.EVAL_PERIOD and at the end)."""
    device = device_from_config(cfg)
    default_setup(cfg, args)
    options, channels_last = cfg.CLASSIFICATION, cfg.SHUFFLENET_DET.CHANNELS_LAST
    preprocessing = ImagePreprocessing.from_config(cfg)
    train_transform = build_train_transform(
        options.TRAIN_CROP_SIZE, options.CROP_SCALE, options.CROP_RATIO, options.COLOR_JITTER,
        cfg.INPUT.RANDOM_FLIP, preprocessing.input_format, preprocessing.interpolation,
    )  # fmt: skip
    train_set = build_dataset(cfg, options.TRAIN_SPLIT, train_transform)
    val_set = build_dataset(cfg, options.VAL_SPLIT, build_test_transform(preprocessing)) if options.VAL_SPLIT else None
    if val_set is not None and train_set.classes != val_set.classes:
        only_train = sorted(set(train_set.classes) - set(val_set.classes))[:3]
        only_val = sorted(set(val_set.classes) - set(train_set.classes))[:3]
        raise SetupError(
            f"class folders differ between {train_set.root} and {val_set.root} (only in train: {only_train}, "
            f"only in val: {only_val}): labels would not match"
        )

    model = build_classifier(cfg, device)
    for difference in preprocessing.with_metadata(model.weights_meta)[1]:
        logger.warning(
            "MODEL.WEIGHTS expects other input than the config says (training uses the config): %s",
            difference,
        )
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    grad_scaler = build_grad_scaler(cfg)
    # The data order's seed: SEED, or one drawn on rank 0 and shared (all processes must agree), kept in checkpoints.
    seed = cfg.SEED if cfg.SEED >= 0 else broadcast(int.from_bytes(os.urandom(4), "little"))
    meta = checkpoint_meta(model, preprocessing, train_set.classes)
    checkpointer = build_checkpointer(
        cfg, model, optimizer, scheduler, grad_scaler, extra_data={"meta": meta, "data_seed": seed}
    )
    resumed = checkpointer.resume_or_load(None, resume=args.resume)
    start_iter = resumed.get("iteration", 0)
    checkpointer.extra_data["data_seed"] = data_seed = resumed.get("data_seed", seed)
    logger.info("Data order seed %d; training from iteration %d", data_seed, start_iter)

    loader = build_train_loader(cfg, train_set, per_device_batch_size(cfg), data_seed, start_iter)
    normalize = Normalizer(preprocessing, channels_last)  # for training and evaluation
    loss = ClassificationLoss(normalize, options.LABEL_SMOOTHING, cfg.SHUFFLENET_DET.LOG_PERIOD)
    results: Dict[str, Any] = {}
    eval_function = None
    if val_set is not None:
        val_loader, amp_dtype = build_test_loader(cfg, val_set), eval_amp_dtype(cfg, device)

        def eval_function() -> Dict[str, Any]:
            results.update(evaluate_classifier(model, val_loader, normalize, device, amp_dtype))
            return {options.VAL_SPLIT: results}

    trainer = build_trainer(
        cfg, create_ddp_model(model, find_unused_parameters=cfg.SHUFFLENET_DET.DDP_FIND_UNUSED_PARAMETERS),
        loader, optimizer, scheduler, checkpointer, start_iter=start_iter, loss_fn=loss,
        eval_function=eval_function, grad_scaler=grad_scaler, extra_hooks=[loss],
    )  # fmt: skip
    trainer.train()
    if results and trainer.status == "finished" and is_main_process():
        # The final evaluation goes into the final checkpoint's metadata: --eval-only shows it as reported.
        path = Path(cfg.OUTPUT_DIR) / "model_final.pth"
        checkpoint = safe_torch_load(path)
        checkpoint["meta"].update(
            top1_error=results["top1_error"],
            top5_error=results["top5_error"],
            metrics_from=f"its training run, {options.VAL_SPLIT} split, iteration {trainer.iter}",
        )
        atomic_torch_save(checkpoint, path, overwrite=True)
    return 0


def run_evaluation(cfg: CfgNode, args: argparse.Namespace) -> int:
    """Evaluate MODEL.WEIGHTS (with ``--resume``: OUTPUT_DIR's last checkpoint) with the preprocessing its
    metadata asks for; log top-1/top-5 beside the accuracy reported for it, write eval_results.json."""
    device = device_from_config(cfg)
    if not args.resume and not cfg.MODEL.WEIGHTS:
        raise SetupError(
            "--eval-only needs trained weights: set MODEL.WEIGHTS (a checkpoint file or a catalog name) "
            "or pass --resume to use OUTPUT_DIR's last checkpoint"
        )
    default_setup(cfg, args)
    model = build_classifier(cfg, device)
    meta = model.weights_meta
    if args.resume:
        checkpointer = Checkpointer(model, cfg.OUTPUT_DIR)
        if not checkpointer.has_checkpoint():
            raise SetupError(f"--resume: no checkpoint in OUTPUT_DIR {cfg.OUTPUT_DIR} to evaluate")
        meta = checkpointer.resume_or_load(None, resume=True).get("meta", {})
    num_classes = meta.get("num_classes")
    if num_classes is not None and num_classes != cfg.CLASSIFICATION.NUM_CLASSES:
        raise SetupError(
            f"the weights classify {num_classes} classes but CLASSIFICATION.NUM_CLASSES is "
            f"{cfg.CLASSIFICATION.NUM_CLASSES}: evaluate them on a dataset of their classes"
        )
    preprocessing, differences = ImagePreprocessing.from_config(cfg).with_metadata(meta)
    for difference in differences:
        logger.warning("Using the weights' preprocessing, not the config's: %s", difference)
    logger.info("Evaluation input: %s", preprocessing)
    channels_last = cfg.SHUFFLENET_DET.CHANNELS_LAST
    if channels_last:
        model.to(memory_format=torch.channels_last)
    val_set = build_dataset(cfg, cfg.CLASSIFICATION.VAL_SPLIT, build_test_transform(preprocessing))
    loader, normalize = build_test_loader(cfg, val_set), Normalizer(preprocessing, channels_last)
    results = evaluate_classifier(model, loader, normalize, device, eval_amp_dtype(cfg, device))
    if is_main_process():
        logger.info("Accuracy on %s:\n%s", val_set.root, accuracy_table(results, meta))
        report = {"weights": cfg.MODEL.WEIGHTS, "dataset": str(val_set.root), "preprocessing": preprocessing.meta()}
        report.update(results, reported={key: meta.get(key) for key in ("top1_error", "top5_error", "metrics_from")})
        text = json.dumps(report, indent=2) + "\n"
        path = Path(cfg.OUTPUT_DIR) / "eval_results.json"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text), overwrite=True)
        logger.info("Results written to %s", path)
    return 0


def accuracy_table(results: Mapping[str, Any], meta: Optional[Mapping[str, Any]]) -> str:
    """Measured top-1/top-5 accuracy and error, and the weights' reported ones when their metadata has them."""
    rows = [["measured", results["num_images"], *(results[k] for k in ("top1", "top5", "top1_error", "top5_error"))]]
    meta = meta or {}
    errors = [meta.get("top1_error"), meta.get("top5_error")]
    if errors != [None, None]:
        where = meta.get("metrics_from") or meta.get("source") or "weights metadata"
        rows.append([f"reported ({where})", None, *(None if e is None else 100.0 - e for e in errors), *errors])
    return format_table(["", "images", "top-1 acc %", "top-5 acc %", "top-1 err %", "top-5 err %"], rows, digits=2)


def benchmark_classifier(cfg: CfgNode, iterations: int = 20, warmup: int = 5) -> Dict[str, Any]:
    """Training and inference images/s of the configured model on random uint8 data (no data loading), one
    process, SOLVER.IMS_PER_BATCH images per step, with the config's AMP and channels_last: medians over
    ``iterations`` steps after ``warmup`` (training: the engine's own step, forward, loss, backward, update)."""
    if iterations < 1:
        raise SetupError("--benchmark-iters must be at least 1")
    setup_logger(None)
    if cfg.SEED >= 0:
        torch.manual_seed(cfg.SEED)
    device = device_from_config(cfg)
    torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""  # speed does not depend on the weights
    model = build_classifier(cfg, device)
    batch_size, size = cfg.SOLVER.IMS_PER_BATCH, cfg.CLASSIFICATION.TRAIN_CROP_SIZE
    batch = {
        "image": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device),
        "label": torch.randint(0, cfg.CLASSIFICATION.NUM_CLASSES, (batch_size,), device=device),
        "skipped": torch.zeros(batch_size, dtype=torch.int64, device=device),
    }
    channels_last = cfg.SHUFFLENET_DET.CHANNELS_LAST
    normalize = Normalizer(ImagePreprocessing.from_config(cfg), channels_last)
    optimizer = build_optimizer(cfg, model)
    trainer = Trainer(
        model, itertools.repeat(batch), optimizer, build_lr_scheduler(cfg, optimizer),
        loss_fn=ClassificationLoss(normalize, cfg.CLASSIFICATION.LABEL_SMOOTHING), max_iter=warmup + iterations,
        amp_enabled=cfg.SOLVER.AMP.ENABLED, amp_dtype=cfg.SHUFFLENET_DET.AMP_DTYPE,
        grad_scaler=build_grad_scaler(cfg), channels_last=channels_last,
    )  # fmt: skip
    trainer.train()  # every step reads its loss back, so step times include the device's work
    train_time = trainer.storage.history("time").median(iterations)

    amp_dtype = eval_amp_dtype(cfg, device)
    model.eval()
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
        for _ in range(warmup + iterations):  # the previous step ended synchronized
            start = time.perf_counter()
            model(normalize(batch["image"]))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    setting = [f"AMP {cfg.SHUFFLENET_DET.AMP_DTYPE}"] if trainer.amp_enabled else []
    setting += ["channels_last"] if channels_last else []
    setting += [f"{torch.get_num_threads()} CPU threads"] if device.type == "cpu" else []
    return {
        "arch": model.arch,
        "batch_size": batch_size,
        "image_size": size,
        "device": str(device),
        "setting": ", ".join(setting) or "float32",
        "train_images_per_s": batch_size / train_time,
        "inference_images_per_s": batch_size / sorted(times[warmup:])[iterations // 2],
    }
