"""What every training tool does the same way: arguments, start-up checks, logging, seeding, and the
trainer with its standard hooks built from a config."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, List, Mapping, Optional

import numpy as np
import torch
import torchvision
from fvcore.common.config import CfgNode
from torch import nn

from ..config.loading import ConfigError, resolve_config_path
from ..data.build import per_device_batch_size
from ..utils.distributed import get_rank, get_world_size, is_main_process
from ..utils.io import atomic_write
from ..utils.logger import setup_logger
from .checkpoint import Checkpointer
from .errors import SetupError
from .hooks import EvalHook, HookBase, PeriodicCheckpointer, PeriodicWriter
from .trainer import LossFunction, Trainer, amp_dtype_from_name
from .writers import ConsoleWriter, EventWriter, JSONWriter, TensorboardWriter

logger = logging.getLogger(__name__)

# Files of a training run in OUTPUT_DIR (last_checkpoint is checkpoint.POINTER_FILE), which --overwrite removes.
_RUN_FILES = re.compile(
    r"^(model_\d{7,}\.pth|model_final\.pth|last_checkpoint|metrics\.json|events\.out\.tfevents\..*)$"
)


def default_argument_parser(description: str) -> argparse.ArgumentParser:
    """The arguments shared by the training tools; add your own before parsing."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  one process:          %(prog)s --config NAME [KEY VALUE ...]\n"
            "  8 GPUs, one machine:  %(prog)s --config NAME --num-gpus 8\n"
            "  continue a run:       %(prog)s --config NAME --resume\n"
            "  with torchrun:        torchrun --nproc_per_node 8 %(prog)s --config NAME\n"
        ),
    )
    parser.add_argument("--config", default="", metavar="NAME_OR_PATH", help="config name or YAML file")
    parser.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS (or the last checkpoint with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT_DIR")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="start a new run in an OUTPUT_DIR that holds one (deletes its checkpoints, metrics, events)",
    )
    parser.add_argument("--num-gpus", type=int, default=1, help="processes per machine (CPU processes without CUDA)")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0, help="this machine's index, 0 .. num-machines - 1")
    parser.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 (required with several machines)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides, e.g. SOLVER.BASE_LR 0.01")
    return parser


def check_output_dir(output_dir: str, min_free_gb: float) -> None:
    """Create ``output_dir`` and check that it is writable and has ``min_free_gb`` GiB free: a problem
    shows at start-up, not at the first checkpoint hours later."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SetupError(f"cannot create OUTPUT_DIR '{output_dir}': {error.strerror or error}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SetupError(f"OUTPUT_DIR '{output_dir}' is not writable: no permission to write in it")
    free_gb = shutil.disk_usage(path).free / 2**30
    if free_gb < min_free_gb:
        raise SetupError(
            f"only {free_gb:.2f} GiB free on the disk of OUTPUT_DIR '{output_dir}', less than "
            f"SHUFFLENET_DET.MIN_FREE_DISK_GB={min_free_gb:g}: free space or choose another OUTPUT_DIR"
        )


def device_from_config(cfg: CfgNode) -> torch.device:
    """MODEL.DEVICE as a device this machine has (a one-line SetupError otherwise)."""
    try:
        device = torch.device(cfg.MODEL.DEVICE)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        problem = "is not a device" if device is None else "is not supported"
        raise SetupError(f"MODEL.DEVICE '{cfg.MODEL.DEVICE}' {problem}: use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"MODEL.DEVICE is {cfg.MODEL.DEVICE} but no CUDA device is visible: set MODEL.DEVICE cpu")
    return device


def check_run_settings(cfg: CfgNode, training: bool = True) -> None:
    """One-line errors for settings that would otherwise fail deep inside torch, or after start-up."""
    device_from_config(cfg)
    if cfg.DATALOADER.NUM_WORKERS < 0:
        raise SetupError(f"DATALOADER.NUM_WORKERS must be 0 (load in the main process) or more, got {cfg.DATALOADER.NUM_WORKERS}")
    if not training:
        return
    if cfg.SOLVER.MAX_ITER <= 0:
        raise SetupError(f"SOLVER.MAX_ITER must be positive, got {cfg.SOLVER.MAX_ITER}")
    if not 0 <= cfg.SOLVER.BASE_LR < float("inf"):
        raise SetupError(f"SOLVER.BASE_LR must be a finite number >= 0, got {cfg.SOLVER.BASE_LR}")
    if cfg.SOLVER.IMS_PER_BATCH <= 0:
        raise SetupError(f"SOLVER.IMS_PER_BATCH (the global batch) must be positive, got {cfg.SOLVER.IMS_PER_BATCH}")


def seed_all(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (all devices) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(seed: int = 0) -> None:
    """Seed everything and ask cuDNN for deterministic kernels (tests). Full CUDA determinism also needs
    ``torch.use_deterministic_algorithms(True)`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``."""
    seed_all(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def default_setup(cfg: CfgNode, args: Optional[argparse.Namespace] = None) -> int:
    """Start-up shared by the tools (docs/engine.md "Start-up checks"): checks, logging (``log.txt``),
    ``scale_to_world_size``, ``config.yaml`` (``config_eval.yaml`` with ``--eval-only``), seeds (``SEED +
    rank``; ``SEED < 0``: random), cuDNN benchmarking, CPU threads. Returns this process's seed."""
    rank, main = get_rank(), is_main_process()
    output_dir = cfg.OUTPUT_DIR
    training = not getattr(args, "eval_only", False)
    check_run_settings(cfg, training)
    resume = bool(getattr(args, "resume", False)) or not training
    # An evaluation keeps the training run's config.yaml and writes its own beside it.
    config_path = Path(output_dir) / ("config.yaml" if training else "config_eval.yaml")
    keep_config_file = False
    if getattr(args, "config", "") and config_path.is_file():
        try:
            keep_config_file = resolve_config_path(args.config).samefile(config_path)
        except (ConfigError, OSError):
            pass
    if keep_config_file and training and not resume:
        raise SetupError(
            f"--config is {config_path}, which a new run in OUTPUT_DIR '{output_dir}' writes: pass --resume "
            "to continue that run, or copy the file elsewhere or choose another OUTPUT_DIR"
        )
    if main:
        check_output_dir(output_dir, cfg.SHUFFLENET_DET.MIN_FREE_DISK_GB)
    setup_logger(output_dir if main else None, distributed_rank=rank)
    if main and not resume:
        # A new run over an earlier run's files (also metrics of one stopped before its first checkpoint)
        # needs --overwrite, which deletes them.
        found = sorted(p for p in Path(output_dir).iterdir() if _RUN_FILES.match(p.name))
        if found and not getattr(args, "overwrite", False):
            raise SetupError(
                f"OUTPUT_DIR '{output_dir}' holds a training run already ({', '.join(p.name for p in found[:3])}): "
                "pass --resume to continue it, --overwrite to replace it, or choose another OUTPUT_DIR"
            )
        for file in found:
            file.unlink()
        if found:
            logger.info("--overwrite: removed %d file(s) of the previous run in %s", len(found), output_dir)
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        device = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {', '.join(names)}"
    else:
        device = f"CPU only, {torch.get_num_threads()} threads"
    logger.info("Rank %d of %d. Python %s, torch %s, torchvision %s, %s", rank, get_world_size(),
                platform.python_version(), torch.__version__, torchvision.__version__, device)
    scale_to_world_size(cfg, get_world_size())
    if training:
        per_device_batch_size(cfg)  # ConfigError unless the global batch splits evenly over the processes
    if args is not None:
        logger.info("Arguments: %s", vars(args))
    if main and keep_config_file:
        logger.info("Config file %s is the --config file: left as it is", config_path)
    elif main:
        text = cfg.dump()
        atomic_write(config_path, lambda tmp: Path(tmp).write_text(text), overwrite=True)
        logger.info("Config written to %s", config_path)
        logger.debug("Config:\n%s", text)

    seed = cfg.SEED + rank if cfg.SEED >= 0 else int.from_bytes(os.urandom(4), "little")
    seed_all(seed)
    logger.info("Random seed %d%s", seed, "" if cfg.SEED >= 0 else " (SEED < 0: drawn at random)")
    torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
    if cfg.SHUFFLENET_DET.TORCH_THREADS > 0:
        torch.set_num_threads(cfg.SHUFFLENET_DET.TORCH_THREADS)
        logger.info("torch uses %d CPU thread(s) (SHUFFLENET_DET.TORCH_THREADS)", cfg.SHUFFLENET_DET.TORCH_THREADS)
    return seed


def scale_to_world_size(cfg: CfgNode, world_size: int) -> None:
    """detectron2's SOLVER.REFERENCE_WORLD_SIZE, in place: a config for that many processes runs on
    ``world_size`` with batch and learning rate scaled by world_size / reference and the iteration counts
    (MAX_ITER, STEPS, WARMUP_ITERS, CHECKPOINT_PERIOD, TEST.EVAL_PERIOD) by the inverse. It then becomes
    ``world_size``, so a saved config is not scaled again. 0 turns this off."""
    reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
    if reference == 0 or reference == world_size:
        return
    if reference < 0 or cfg.SOLVER.IMS_PER_BATCH % reference:
        raise SetupError(
            f"SOLVER.REFERENCE_WORLD_SIZE {reference} must be positive and divide SOLVER.IMS_PER_BATCH "
            f"{cfg.SOLVER.IMS_PER_BATCH} (0: no scaling)"
        )
    scale = world_size / reference
    frozen = cfg.is_frozen()
    cfg.defrost()
    solver = cfg.SOLVER
    old = (solver.IMS_PER_BATCH, solver.BASE_LR, solver.MAX_ITER)
    solver.IMS_PER_BATCH = solver.IMS_PER_BATCH // reference * world_size
    solver.BASE_LR *= scale
    solver.MAX_ITER, solver.WARMUP_ITERS = (int(round(n / scale)) for n in (solver.MAX_ITER, solver.WARMUP_ITERS))
    solver.STEPS = tuple(int(round(step / scale)) for step in solver.STEPS)
    solver.CHECKPOINT_PERIOD = max(1, int(round(solver.CHECKPOINT_PERIOD / scale)))
    if cfg.TEST.EVAL_PERIOD > 0:
        cfg.TEST.EVAL_PERIOD = max(1, int(round(cfg.TEST.EVAL_PERIOD / scale)))
    solver.REFERENCE_WORLD_SIZE = world_size
    if frozen:
        cfg.freeze()
    logger.info(
        "SOLVER.REFERENCE_WORLD_SIZE %d -> %d processes: IMS_PER_BATCH %d -> %d, BASE_LR %g -> %g, MAX_ITER %d -> %d",
        reference, world_size, old[0], solver.IMS_PER_BATCH, old[1], solver.BASE_LR, old[2], solver.MAX_ITER,
    )


def eval_amp_dtype(cfg: CfgNode, device: torch.device) -> Optional[torch.dtype]:
    """Evaluation's autocast dtype: SHUFFLENET_DET.AMP_DTYPE when SOLVER.AMP.ENABLED on CUDA, else None."""
    return amp_dtype_from_name(cfg.SHUFFLENET_DET.AMP_DTYPE) if cfg.SOLVER.AMP.ENABLED and device.type == "cuda" else None


def build_grad_scaler(cfg: CfgNode) -> Optional[torch.amp.GradScaler]:
    """A GradScaler when training in float16 on CUDA, else None (bfloat16 and float32 need none)."""
    float16 = amp_dtype_from_name(cfg.SHUFFLENET_DET.AMP_DTYPE) == torch.float16
    return torch.amp.GradScaler("cuda") if cfg.SOLVER.AMP.ENABLED and float16 and torch.cuda.is_available() else None


def build_checkpointer(
    cfg: CfgNode, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Optional[Any] = None,
    grad_scaler: Optional[torch.amp.GradScaler] = None, extra_data: Optional[Mapping[str, Any]] = None,
) -> Checkpointer:
    """A Checkpointer over OUTPUT_DIR that also stores the config, ``extra_data`` and the grad scaler."""
    keep_last = cfg.SHUFFLENET_DET.CHECKPOINTS_TO_KEEP  # Checkpointer leaves out a grad_scaler of None
    return Checkpointer(model, cfg.OUTPUT_DIR, optimizer, scheduler, config=cfg, keep_last=keep_last,
                        extra_data=extra_data, grad_scaler=grad_scaler)


def build_trainer(
    cfg: CfgNode, model: nn.Module, data_loader: Iterable[Any], optimizer: torch.optim.Optimizer,
    scheduler: Optional[Any], checkpointer: Checkpointer, *, start_iter: int = 0,
    loss_fn: Optional[LossFunction] = None, eval_function: Optional[Callable[[], Optional[Mapping[str, Any]]]] = None,
    grad_scaler: Optional[torch.amp.GradScaler] = None, extra_hooks: Iterable[HookBase] = (),
) -> Trainer:
    """A Trainer with the AMP, bad-batch and channels_last settings of ``cfg`` and the standard hooks, in the
    order they must run: periodic checkpoints, evaluation (with ``eval_function``), ``extra_hooks``, metric
    writers (console, metrics.json, TensorBoard on the main process)."""
    hooks: List[HookBase] = [PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD)]
    if eval_function is not None:
        hooks.append(EvalHook(cfg.TEST.EVAL_PERIOD, eval_function))
    period, output_dir = cfg.SHUFFLENET_DET.LOG_PERIOD, Path(cfg.OUTPUT_DIR)
    writers: List[EventWriter] = []
    if is_main_process():
        metrics = JSONWriter(output_dir / "metrics.json", period)
        writers = [ConsoleWriter(cfg.SOLVER.MAX_ITER, period), metrics, TensorboardWriter(output_dir, period)]
    hooks += [*extra_hooks, PeriodicWriter(writers, period)]
    return Trainer(
        model, data_loader, optimizer, scheduler, loss_fn=loss_fn, max_iter=cfg.SOLVER.MAX_ITER, start_iter=start_iter,
        hooks=hooks, amp_enabled=cfg.SOLVER.AMP.ENABLED, amp_dtype=cfg.SHUFFLENET_DET.AMP_DTYPE, grad_scaler=grad_scaler,
        max_bad_batches=cfg.SHUFFLENET_DET.MAX_BAD_BATCHES, channels_last=cfg.SHUFFLENET_DET.CHANNELS_LAST,
    )
