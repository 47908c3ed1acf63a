"""ImageNet training and evaluation on the shared engine: what ``tools/train_cls.py`` runs.

``main(args)`` trains (``--resume`` continues), evaluates (``--eval-only``) or measures throughput
(``--benchmark``), for one process or one of several (``launch`` / torchrun, DDP).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..config.loading import ConfigError, config_dir, load_config
from ..data import DatasetError, add_register_coco_argument, register_coco_datasets
from ..engine import (
    Checkpointer,
    HookBase,
    IterationTimer,
    SetupError,
    Trainer,
    build_checkpointer,
    build_grad_scaler,
    build_lr_scheduler,
    build_optimizer,
    build_trainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    device_from_config,
    eval_amp_dtype,
    per_device_batch_size,
)
from ..modeling import CONV_IMPLS, apply_conv_form, create_model, model_args_from_config
from ..utils.distributed import broadcast, is_main_process
from ..utils.io import atomic_torch_save, atomic_write, safe_torch_load
from ..utils.logger import setup_logger
from ..utils.text_table import format_table
from ..weights import load_weights
from .data import (
    ImageFolderDataset,
    ImagePreprocessing,
    Normalizer,
    build_dataset,
    build_test_loader,
    build_test_transform,
    build_train_loader,
    build_train_transform,
)
from .evaluation import evaluate_classifier
from .loss import label_smoothing_cross_entropy

logger = logging.getLogger(__name__)

CONFIG_FOLDER = "classification"
# Model properties that weights depend on but shapes do not show (see shufflenet_det.weights).
_STRUCTURE_PROPERTIES = ("shuffle_layout", "concat_order", "activation")


# ---------------------------------------------------------------------------- config
def list_classification_configs() -> List[str]:
    """Names of the configs in ``configs/classification/``."""
    folder = config_dir() / CONFIG_FOLDER
    return sorted(path.stem for path in folder.glob("*.yaml")) if folder.is_dir() else []


def load_classification_config(name_or_path: str, overrides: Sequence[Any] = ()) -> CfgNode:
    """``load_config`` for a YAML file, or a bare name under ``configs/classification/`` (then ``configs/``)."""
    if not name_or_path:
        raise ConfigError(f"--config is required; classification configs: {', '.join(list_classification_configs())}")
    path = Path(name_or_path)
    if not path.is_file():
        for folder in (config_dir() / CONFIG_FOLDER, config_dir()):
            found = [c for c in (folder / name_or_path, folder / f"{name_or_path}.yaml") if c.is_file()]
            if found:
                path = found[0]
                break
        else:
            raise ConfigError(
                f"config '{name_or_path}' not found; classification configs: {', '.join(list_classification_configs())}"
            )
    return load_config(path, overrides)


# ---------------------------------------------------------------------------- model and weights
def build_classifier(cfg: CfgNode, device: Optional[torch.device] = None) -> nn.Module:
    """The network of MODEL.BACKBONE.NAME (MODEL.SHUFFLENET.* / MODEL.MOBILENET.*, as for detection)
    with CLASSIFICATION.NUM_CLASSES outputs, and MODEL.WEIGHTS loaded through ``shufflenet_det.weights``
    (any supported source; their metadata in ``model.weights_meta``, else ``{}``), on ``device`` (default
    CPU) in the conv form SHUFFLENET_DET.CONV_IMPL gives for it."""
    conv_form = cfg.SHUFFLENET_DET.CONV_IMPL
    if conv_form not in CONV_IMPLS:
        raise ConfigError(f"SHUFFLENET_DET.CONV_IMPL must be one of {', '.join(CONV_IMPLS)}, got {conv_form!r}")
    arch, kwargs, _ = model_args_from_config(cfg)
    model = create_model(arch, num_classes=cfg.CLASSIFICATION.NUM_CLASSES, **kwargs)
    model.weights_meta = dict(load_weights(model, cfg.MODEL.WEIGHTS)) if cfg.MODEL.WEIGHTS else {}
    if device is not None:
        model = model.to(device)
    return apply_conv_form(model, conv_form, device)


def checkpoint_meta(model: nn.Module, preprocessing: ImagePreprocessing, classes: Sequence[str]) -> Dict[str, Any]:
    """What our checkpoints record so they load as pretrained weights (``shufflenet_det.weights``):
    architecture, input format and normalization, class names, structure settings."""
    meta: Dict[str, Any] = {"source": "shufflenet_det", "arch": model.arch, "num_classes": len(classes)}
    meta.update(preprocessing.meta())
    meta["classes"] = list(classes)
    meta.update({key: getattr(model, key) for key in _STRUCTURE_PROPERTIES if hasattr(model, key)})
    return meta


# ---------------------------------------------------------------------------- loss and hooks
class ClassificationLoss:
    """``loss_fn(model, batch) -> {"loss_cls"}`` for the engine: normalizes the uint8 images on the device,
    runs the model, applies label smoothing. Counts the unreadable images the loader skipped."""

    def __init__(self, normalize: Callable[[torch.Tensor], torch.Tensor], label_smoothing: float) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"CLASSIFICATION.LABEL_SMOOTHING must be in [0, 1), got {label_smoothing}")
        self.normalize = normalize
        self.label_smoothing = label_smoothing
        self._skipped: Optional[torch.Tensor] = None  # on the device: reading it every step would sync

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        skipped = batch["skipped"].sum()
        self._skipped = skipped if self._skipped is None else self._skipped + skipped
        logits = model(self.normalize(batch["image"]))
        return {"loss_cls": label_smoothing_cross_entropy(logits, batch["label"], self.label_smoothing)}

    @property
    def skipped_images(self) -> int:
        return int(self._skipped) if self._skipped is not None else 0


class SkippedImagesHook(HookBase):
    """Records ``skipped_images`` (unreadable files passed over so far, this process) once there are any."""

    def __init__(self, loss: ClassificationLoss, period: int) -> None:
        self.loss = loss
        self.period = period

    def after_step(self) -> None:
        if self.trainer.iter % self.period == 0 or self.trainer.iter >= self.trainer.max_iter:
            count = self.loss.skipped_images
            if count:
                self.trainer.storage.put_scalar("skipped_images", count, smoothing_hint=False)


# ---------------------------------------------------------------------------- the tool's modes
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
    """Entry point of every process: ``--benchmark``, ``--eval-only`` or training. Config problems are
    reported as ``SetupError`` (one line, exit status 2)."""
    try:
        register_coco_datasets(args.register_coco)
        cfg = load_classification_config(args.config, args.opts)
        if args.benchmark:
            return run_benchmark(cfg, args.benchmark_iters)
        if args.eval_only:
            return run_evaluation(cfg, args)
        return run_training(cfg, args)
    except (ConfigError, DatasetError) as error:
        raise SetupError(str(error)) from None


def _data_seed(cfg: CfgNode) -> int:
    """SEED, or (SEED < 0) one drawn on rank 0 and shared: the data order must agree across processes."""
    return cfg.SEED if cfg.SEED >= 0 else broadcast(int.from_bytes(os.urandom(4), "little"))


def _check_same_classes(train: ImageFolderDataset, val: ImageFolderDataset) -> None:
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:3]
        only_val = sorted(set(val.classes) - set(train.classes))[:3]
        raise SetupError(
            f"class folders differ between {train.root} and {val.root} (only in train: {only_train}, "
            f"only in val: {only_val}): labels would not match"
        )


def run_training(cfg: CfgNode, args: argparse.Namespace) -> int:
    """Train with the engine (checkpoints, exact ``--resume``, evaluation every TEST.EVAL_PERIOD and at the end)."""
    device = device_from_config(cfg)
    default_setup(cfg, args)
    options = cfg.CLASSIFICATION
    preprocessing = ImagePreprocessing.from_config(cfg)
    train_set = build_dataset(
        cfg,
        options.TRAIN_SPLIT,
        build_train_transform(
            options.TRAIN_CROP_SIZE,
            options.CROP_SCALE,
            options.CROP_RATIO,
            options.COLOR_JITTER,
            cfg.INPUT.RANDOM_FLIP,
            preprocessing.input_format,
            preprocessing.interpolation,
        ),
    )
    val_set = None
    if options.VAL_SPLIT:
        val_set = build_dataset(cfg, options.VAL_SPLIT, build_test_transform(preprocessing))
        _check_same_classes(train_set, val_set)

    model = build_classifier(cfg, device)
    _, differences = preprocessing.with_metadata(model.weights_meta)
    for difference in differences:
        logger.warning(
            "MODEL.WEIGHTS expects other input than the config says (training uses the config): %s", difference
        )
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    grad_scaler = build_grad_scaler(cfg)
    meta = checkpoint_meta(model, preprocessing, train_set.classes)
    checkpointer = build_checkpointer(
        cfg, model, optimizer, scheduler, grad_scaler, extra_data={"meta": meta, "data_seed": _data_seed(cfg)}
    )
    resumed = checkpointer.resume_or_load(None, resume=args.resume)
    start_iter = resumed.get("iteration", 0)
    checkpointer.extra_data["data_seed"] = data_seed = resumed.get("data_seed", checkpointer.extra_data["data_seed"])
    logger.info("Data order seed %d; training from iteration %d", data_seed, start_iter)

    loader = build_train_loader(cfg, train_set, per_device_batch_size(cfg), data_seed, start_iter)
    channels_last = cfg.SHUFFLENET_DET.CHANNELS_LAST
    loss = ClassificationLoss(Normalizer(preprocessing, channels_last), options.LABEL_SMOOTHING)
    results: Dict[str, Any] = {}
    eval_function = None
    if val_set is not None:
        val_loader = build_test_loader(cfg, val_set)
        normalize = Normalizer(preprocessing, channels_last)
        amp_dtype = eval_amp_dtype(cfg, device)

        def eval_function() -> Dict[str, Any]:
            results.update(evaluate_classifier(model, val_loader, normalize, device, amp_dtype))
            return {options.VAL_SPLIT: results}

    trainer = build_trainer(
        cfg,
        create_ddp_model(model, find_unused_parameters=cfg.SHUFFLENET_DET.DDP_FIND_UNUSED_PARAMETERS),
        loader,
        optimizer,
        scheduler,
        checkpointer,
        start_iter=start_iter,
        loss_fn=loss,
        eval_function=eval_function,
        grad_scaler=grad_scaler,
        extra_hooks=[SkippedImagesHook(loss, cfg.SHUFFLENET_DET.LOG_PERIOD)],
    )
    trainer.train()
    if results and trainer.status == "finished" and is_main_process():
        _record_final_accuracy(
            Path(cfg.OUTPUT_DIR) / "model_final.pth",
            results,
            f"its training run, {options.VAL_SPLIT} split, iteration {trainer.iter}",
        )
    return 0


def _record_final_accuracy(path: Path, results: Mapping[str, Any], where: str) -> None:
    """Add the final evaluation to the final checkpoint's metadata: ``--eval-only`` shows it as reported."""
    checkpoint = safe_torch_load(path)
    checkpoint["meta"].update(top1_error=results["top1_error"], top5_error=results["top5_error"], metrics_from=where)
    atomic_torch_save(checkpoint, path, overwrite=True)


def run_evaluation(cfg: CfgNode, args: argparse.Namespace) -> int:
    """Evaluate MODEL.WEIGHTS (with ``--resume``: the last checkpoint in OUTPUT_DIR) with the
    preprocessing its metadata asks for, and print top-1/top-5 beside the accuracy reported for it."""
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
    weights_classes = meta.get("num_classes")
    if weights_classes is not None and weights_classes != cfg.CLASSIFICATION.NUM_CLASSES:
        raise SetupError(
            f"the weights classify {weights_classes} classes but CLASSIFICATION.NUM_CLASSES is "
            f"{cfg.CLASSIFICATION.NUM_CLASSES}: evaluate them on a dataset of their classes"
        )
    preprocessing, differences = ImagePreprocessing.from_config(cfg).with_metadata(meta)
    for difference in differences:
        logger.warning("Using the weights' preprocessing, not the config's: %s", difference)
    logger.info("Evaluation input: %s", preprocessing)
    if cfg.SHUFFLENET_DET.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    val_set = build_dataset(cfg, cfg.CLASSIFICATION.VAL_SPLIT, build_test_transform(preprocessing))
    results = evaluate_classifier(
        model,
        build_test_loader(cfg, val_set),
        Normalizer(preprocessing, cfg.SHUFFLENET_DET.CHANNELS_LAST),
        device,
        eval_amp_dtype(cfg, device),
    )
    if is_main_process():
        table = accuracy_table(results, meta)
        logger.info("Accuracy on %s:\n%s", val_set.root, table)
        report = {"weights": cfg.MODEL.WEIGHTS, "dataset": str(val_set.root), "preprocessing": preprocessing.meta()}
        report.update(results)
        report["reported"] = {key: meta.get(key) for key in ("top1_error", "top5_error", "metrics_from")}
        text = json.dumps(report, indent=2) + "\n"
        path = Path(cfg.OUTPUT_DIR) / "eval_results.json"
        atomic_write(path, lambda tmp: Path(tmp).write_text(text), overwrite=True)
        logger.info("Results written to %s", path)
    return 0


def accuracy_table(results: Mapping[str, Any], meta: Optional[Mapping[str, Any]]) -> str:
    """Measured top-1/top-5 accuracy and error, and the weights' reported ones when their metadata has them."""
    rows: List[List[Any]] = [
        [
            "measured",
            results["num_images"],
            results["top1"],
            results["top5"],
            results["top1_error"],
            results["top5_error"],
        ]
    ]
    meta = meta or {}
    top1_error, top5_error = meta.get("top1_error"), meta.get("top5_error")
    if top1_error is not None or top5_error is not None:
        rows.append(
            [
                f"reported ({meta.get('metrics_from') or meta.get('source') or 'weights metadata'})",
                None,
                None if top1_error is None else 100.0 - top1_error,
                None if top5_error is None else 100.0 - top5_error,
                top1_error,
                top5_error,
            ]
        )
    headers = ["", "images", "top-1 acc %", "top-5 acc %", "top-1 err %", "top-5 err %"]
    return format_table(headers, rows, digits=2)


def run_benchmark(cfg: CfgNode, iterations: int, warmup: int = 5) -> int:
    """Training and inference images/s of the configured model on random data at SOLVER.IMS_PER_BATCH
    images per step, with the config's AMP and channels_last settings, one process. Data loading is not
    included. Logs and returns 0."""
    results = benchmark_classifier(cfg, iterations, warmup)
    logger.info(
        "Benchmark %s: batch %d, %dx%d, %s: training %.1f images/s, inference %.1f images/s",
        results["arch"],
        results["batch_size"],
        results["image_size"],
        results["image_size"],
        results["setting"],
        results["train_images_per_s"],
        results["inference_images_per_s"],
    )
    return 0


def benchmark_classifier(cfg: CfgNode, iterations: int = 20, warmup: int = 5) -> Dict[str, Any]:
    """``{"train_images_per_s", "inference_images_per_s", ...}``: medians over ``iterations`` steps after
    ``warmup`` (the engine's own training step: forward, loss, backward, SGD step)."""
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
    preprocessing = ImagePreprocessing.from_config(cfg)
    channels_last = cfg.SHUFFLENET_DET.CHANNELS_LAST
    normalize = Normalizer(preprocessing, channels_last)
    optimizer = build_optimizer(cfg, model)
    trainer = Trainer(
        model,
        itertools.repeat(batch),
        optimizer,
        build_lr_scheduler(cfg, optimizer),
        loss_fn=ClassificationLoss(normalize, cfg.CLASSIFICATION.LABEL_SMOOTHING),
        max_iter=warmup + iterations,
        hooks=[IterationTimer()],
        amp_enabled=cfg.SOLVER.AMP.ENABLED,
        amp_dtype=cfg.SHUFFLENET_DET.AMP_DTYPE,
        grad_scaler=build_grad_scaler(cfg),
        channels_last=channels_last,
    )
    trainer.train()  # every step reads its loss back, so step times include the device's work
    train_time = trainer.storage.history("time").median(iterations)

    amp_dtype = eval_amp_dtype(cfg, device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    model.eval()
    times = []
    with torch.no_grad(), autocast:
        for _ in range(warmup + iterations):
            start = _synchronized_time(device)
            model(normalize(batch["image"]))
            times.append(_synchronized_time(device) - start)
    inference_time = sorted(times[warmup:])[iterations // 2]
    setting = (
        ", ".join(
            part
            for part, on in (
                (f"AMP {cfg.SHUFFLENET_DET.AMP_DTYPE}", trainer.amp_enabled),
                ("channels_last", channels_last),
                (f"{torch.get_num_threads()} CPU threads", device.type == "cpu"),
            )
            if on
        )
        or "float32"
    )
    return {
        "arch": model.arch,
        "batch_size": batch_size,
        "image_size": size,
        "device": str(device),
        "setting": setting,
        "train_images_per_s": batch_size / train_time,
        "inference_images_per_s": batch_size / inference_time,
    }


def _synchronized_time(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
