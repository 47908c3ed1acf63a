"""Training and evaluation with detectron2's ``DefaultTrainer`` and ``COCOEvaluator``, for ``tools/train_net.py
--engine detectron2`` (:func:`run_from_args`). detectron2 registers the COCO datasets itself under our names and
layout; ``register_d2_*`` registers the others."""

from __future__ import annotations

import logging
import os
import sys
import weakref
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer, HookBase, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils.logger import setup_logger

from ...config.loading import check_choice, resolve_config_path
from ...data.builtin import SYNTHETIC_DIRNAME, SYNTHETIC_SPLITS, datasets_root
from ...data.catalog import DatasetError
from ...data.synthetic import ensure_synthetic_dataset
from ...engine.optimizer import OPTIMIZERS
from ...utils.io import CheckpointError, atomic_write
from .checkpoint import ShuffleNetCheckpointer, anchor_layout
from .config import setup_d2_cfg

__all__ = ["ShuffleNetTrainer", "d2_evaluate", "d2_train", "register_d2_coco", "register_d2_synthetic", "setup_d2_cfg"]

logger = logging.getLogger(__name__)


class ShuffleNetTrainer(DefaultTrainer):
    """``DefaultTrainer`` with COCO evaluation, :class:`ShuffleNetCheckpointer` (safe loading, our weight formats)
    and metrics written every SHUFFLENET_DET.LOG_PERIOD iterations (not 20)."""

    def build_hooks(self) -> List[HookBase]:
        # DefaultTrainer.__init__ creates a plain DetectionCheckpointer just before calling this,
        # which hands it to the PeriodicCheckpointer hook: put ours in its place first.
        self.checkpointer = ShuffleNetCheckpointer(self._trainer.model, self.cfg.OUTPUT_DIR,
                                                   anchor_layout=anchor_layout(self.cfg), trainer=weakref.proxy(self))
        period = self.cfg.SHUFFLENET_DET.LOG_PERIOD
        return [hooks.PeriodicWriter(self.build_writers(), period=period) if isinstance(hook, hooks.PeriodicWriter)
                else hook for hook in super().build_hooks()]

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: Any) -> Any:
        """detectron2's SGD, or AdamW over the same parameter groups when SOLVER.OPTIMIZER asks for it
        (a key of ours: detectron2's yacs config has SGD only)."""
        if cfg.SOLVER.OPTIMIZER == "SGD":
            return super().build_optimizer(cfg, model)
        check_choice("SOLVER.OPTIMIZER", cfg.SOLVER.OPTIMIZER, OPTIMIZERS)
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        )
        adamw = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        return adamw(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None) -> COCOEvaluator:
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder, max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)


def register_d2_coco(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format dataset in detectron2's catalogs, replacing an entry of the same name."""
    if not os.path.isfile(json_file):
        raise ValueError(f"dataset '{name}': annotation file not found: {json_file}")
    if not os.path.isdir(image_root):
        raise ValueError(f"dataset '{name}': image folder not found: {image_root}")
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, json_file, image_root)


def register_d2_synthetic(root: str) -> None:
    """Register ``synthetic_train`` / ``synthetic_val`` for a synthetic dataset in ``root``."""
    for name, (image_dir, json_file) in SYNTHETIC_SPLITS.items():
        register_d2_coco(name, os.path.join(root, json_file), os.path.join(root, image_dir))


def d2_train(cfg: CfgNode, resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Train (or ``resume``) with ``ShuffleNetTrainer``; returns the final evaluation on DATASETS.TEST. An OUTPUT_DIR
    holding another run's checkpoints is refused unless ``overwrite``."""
    _check_weights(cfg)
    if not resume and not overwrite and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        raise ValueError(
            f"{cfg.OUTPUT_DIR} holds checkpoints of an earlier run: resume it (--resume), choose another "
            "OUTPUT_DIR, or pass --overwrite to start over there"
        )
    _prepare_output_dir(cfg)
    trainer = ShuffleNetTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    # DefaultTrainer's evaluation hook keeps the final results here (train() returns them only with EXPECTED_RESULTS).
    return getattr(trainer, "_last_eval_results", None) or {}


def d2_evaluate(cfg: CfgNode) -> Dict[str, Any]:
    """COCO box AP of MODEL.WEIGHTS on every DATASETS.TEST: ``{dataset: {"bbox": {"AP": ..., ...}}}``."""
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: give the checkpoint to evaluate (MODEL.WEIGHTS path/to/model.pth)")
    _check_weights(cfg)
    _prepare_output_dir(cfg, "config_eval.yaml")
    model = ShuffleNetTrainer.build_model(cfg)
    ShuffleNetCheckpointer(model, cfg.OUTPUT_DIR, anchor_layout=anchor_layout(cfg)).load(cfg.MODEL.WEIGHTS)
    return ShuffleNetTrainer.test(cfg, model)


def _check_weights(cfg: CfgNode) -> None:
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise ValueError(f"MODEL.WEIGHTS file not found: {weights} (convert ImageNet weights with "
                         "tools/convert_weights.py, or set MODEL.WEIGHTS \"\" to train from scratch)")


def _prepare_output_dir(cfg: CfgNode, config_name: str = "config.yaml") -> None:
    """Logging into OUTPUT_DIR and the config written there (an evaluation's under its own name)."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(output=cfg.OUTPUT_DIR, name="detectron2")
    setup_logger(output=cfg.OUTPUT_DIR, name="shufflenet_det", abbrev_name="sdet")
    path = os.path.join(cfg.OUTPUT_DIR, config_name)
    atomic_write(path, lambda tmp: Path(tmp).write_text(cfg.dump()), overwrite=True)
    logger.info("detectron2 engine; config written to %s", path)


def run_from_args(args: Any) -> int:
    """``tools/train_net.py --engine detectron2``: returns an exit status; user mistakes are one line."""
    try:
        cfg = setup_d2_cfg(resolve_config_path(args.config), args.opts)
        for name, json_file, image_root in args.register_coco or ():
            register_d2_coco(name, json_file, image_root)
        if any(name in SYNTHETIC_SPLITS for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)):
            synthetic_root = os.path.join(datasets_root(), SYNTHETIC_DIRNAME)
            ensure_synthetic_dataset(synthetic_root)  # generated on first use, as with our engine
            register_d2_synthetic(synthetic_root)
        results = d2_evaluate(cfg) if args.eval_only else d2_train(cfg, args.resume, args.overwrite)
    except (ValueError, CheckpointError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logger.info("Results: %s", results)
    return 0
