"""Training and evaluating a detector from a config (behind ``tools/train_net.py``): the engine, which
knows nothing about detection, joined with the detector, the data loaders and COCO evaluation."""

from __future__ import annotations

import argparse
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, Mapping, Sequence

import torch
from fvcore.common.config import CfgNode
from torch import nn

from ..config import load_config
from ..config.loading import ConfigError
from ..data import (DatasetCatalog, DatasetError, MetadataCatalog, UnknownDatasetError, add_register_coco_argument,
                    build_detection_test_loader, build_detection_train_loader, register_coco_datasets)
from ..engine import (SetupError, build_checkpointer, build_grad_scaler, build_lr_scheduler, build_optimizer,
                      build_trainer, create_ddp_model, default_setup, eval_amp_dtype)
from ..evaluation import COCOEvaluator, inference_on_dataset
from ..utils.distributed import is_main_process
from .backbone import names_a_file
from .checkpoint import warn_if_untrained
from .demo import Predictor, drawing_threshold, run_on_images
from .detector import build_detector

logger = logging.getLogger(__name__)

# Mistakes in what the user gave us: reported as one line, not as a traceback.
USER_ERRORS = (ConfigError, DatasetError, UnknownDatasetError, FileExistsError)


def detection_losses(model: nn.Module, batch: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
    """The detector's training losses for a loader batch (contiguous labels 0..K-1 become 1..K)."""
    targets = [{"boxes": item["instances"]["boxes"], "labels": item["instances"]["labels"] + 1} for item in batch]
    return model([item["image"] for item in batch], targets)


def evaluate(cfg: CfgNode, model: nn.Module) -> Dict[str, Any]:
    """COCO box AP on every dataset of DATASETS.TEST; files under OUTPUT_DIR/inference[/NAME]."""
    results: Dict[str, Any] = OrderedDict()
    names = list(cfg.DATASETS.TEST)
    for name in names:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference", *([name] if len(names) > 1 else []))
        evaluator = COCOEvaluator.from_metadata(MetadataCatalog.get(name), output_dir)
        loader = build_detection_test_loader(cfg, name)
        check_num_classes(cfg, [name])  # after loading: a registered COCO file sets its classes then
        amp_dtype = eval_amp_dtype(cfg, next(model.parameters()).device)
        results[name] = inference_on_dataset(model, loader, evaluator, amp_dtype=amp_dtype)
    return results[names[0]] if len(names) == 1 else results


def check_num_classes(cfg: CfgNode, dataset_names: Sequence[str]) -> None:
    """More dataset categories than MODEL.ROI_HEADS.NUM_CLASSES is an error (the loss would fail); fewer is logged."""
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in dataset_names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is None:
            continue
        if len(classes) > num_classes:
            raise ConfigError(
                f"dataset '{name}' has {len(classes)} categories but MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}: "
                f"set MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}"
            )
        if len(classes) < num_classes:
            logger.warning(
                "dataset '%s' has %d categories, MODEL.ROI_HEADS.NUM_CLASSES is %d: the extra classes stay unused",
                name, len(classes), num_classes,
            )


def train(cfg: CfgNode, resume: bool = False) -> Dict[str, Any]:
    """Train the detector ``cfg`` describes; returns the final evaluation results (main process)."""
    model = build_detector(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    grad_scaler = build_grad_scaler(cfg)
    meta = {"meta": model.structure_meta}
    checkpointer = build_checkpointer(cfg, model, optimizer, scheduler, grad_scaler, extra_data=meta)
    # MODEL.WEIGHTS went into the model as it was built; the checkpointer only resumes.
    start_iter = checkpointer.resume_or_load(None, resume=resume).get("iteration", 0)
    loader = build_detection_train_loader(cfg, start_iter=start_iter)
    check_num_classes(cfg, cfg.DATASETS.TRAIN)
    trained = create_ddp_model(model, find_unused_parameters=cfg.SHUFFLENET_DET.DDP_FIND_UNUSED_PARAMETERS)

    results: Dict[str, Any] = {}

    def evaluate_and_keep() -> Dict[str, Any]:
        results.clear()
        results.update(evaluate(cfg, model))
        return results

    trainer = build_trainer(
        cfg, trained, loader, optimizer, scheduler, checkpointer, start_iter=start_iter, loss_fn=detection_losses,
        eval_function=evaluate_and_keep if cfg.DATASETS.TEST else None, grad_scaler=grad_scaler,
    )
    trainer.train()
    if loader.num_failed:
        logger.warning("%d training image(s) could not be read and were skipped (see the log above)", loader.num_failed)
    num_vis = cfg.SHUFFLENET_DET.NUM_VIS_IMAGES
    if is_main_process() and num_vis > 0 and cfg.DATASETS.TEST:
        name, vis_dir = cfg.DATASETS.TEST[0], os.path.join(cfg.OUTPUT_DIR, "vis")
        classes = MetadataCatalog.get(name).get("thing_classes")
        predictor = Predictor(model, cfg.INPUT.FORMAT, classes, drawing_threshold(cfg))
        files = [record["file_name"] for record in DatasetCatalog.get(name)[:num_vis]]
        written = run_on_images(predictor, files, vis_dir).written
        logger.info("Detections drawn on %d %s images in %s", len(written), name, vis_dir)
    return results


def evaluate_only(cfg: CfgNode, resume: bool = False) -> Dict[str, Any]:
    """Evaluate MODEL.WEIGHTS (a trained detector), or with ``resume`` the last checkpoint in OUTPUT_DIR."""
    if not resume:
        if not cfg.MODEL.WEIGHTS:
            raise ConfigError(
                "--eval-only needs a trained detector: set MODEL.WEIGHTS to its checkpoint "
                "(e.g. output/quickstart/model_final.pth) or pass --resume to use OUTPUT_DIR's last one"
            )
        if names_a_file(cfg.MODEL.WEIGHTS) and not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise ConfigError(
                f"MODEL.WEIGHTS file '{cfg.MODEL.WEIGHTS}' not found: --eval-only needs a trained detector "
                "checkpoint (training writes OUTPUT_DIR/model_final.pth), or pass --resume to use OUTPUT_DIR's last one"
            )
        warn_if_untrained(cfg.MODEL.WEIGHTS)
    model = build_detector(cfg)
    if resume:
        checkpointer = build_checkpointer(cfg, model)
        if not checkpointer.has_checkpoint():
            raise ConfigError(
                f"--eval-only --resume: no checkpoint in OUTPUT_DIR '{cfg.OUTPUT_DIR}' to evaluate "
                "(check OUTPUT_DIR, or give MODEL.WEIGHTS instead)"
            )
        checkpointer.resume_or_load(None, resume=True)
    return evaluate(cfg, model)


def setup(args: argparse.Namespace) -> CfgNode:
    """Config from ``--config`` and the trailing overrides, extra datasets, then the engine's start-up."""
    cfg = load_config(args.config, args.opts)
    drawing_threshold(cfg)  # a bad one fails now, not after training
    register_coco_datasets(args.register_coco)
    default_setup(cfg, args)
    return cfg


def main(args: argparse.Namespace) -> Any:
    """One training process: train, or evaluate with ``--eval-only``."""
    try:
        cfg = setup(args)
        if args.eval_only:
            return evaluate_only(cfg, resume=args.resume)
        return train(cfg, resume=args.resume)
    except USER_ERRORS as error:
        raise SetupError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The detection-specific options of train_net.py."""
    add_register_coco_argument(parser)
    parser.add_argument("--engine", choices=("torchvision", "detectron2"), default="torchvision",
                        help="the built-in engine (default) or detectron2's DefaultTrainer (needs detectron2)")
    return parser

