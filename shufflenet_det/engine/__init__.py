"""Task-agnostic training engine: optimizer and LR schedules, the training loop and its hooks, checkpoints
with exact resume, metric writers, distributed launch. It takes a model, batches and a loss function."""

from ..data.build import per_device_batch_size
from ..utils.data_workers import SignalSafeDataLoader, WorkerSignalGuard
from .checkpoint import Checkpointer, periodic_checkpoint_name, rng_state, set_rng_state, unwrap_model
from .defaults import (
    build_checkpointer, build_grad_scaler, build_trainer, check_output_dir, default_argument_parser, default_setup,
    device_from_config, eval_amp_dtype, seed_all, set_deterministic,
)
from .errors import EngineError, NonFiniteLossError, SetupError, TrainingInterrupted
from .hooks import EvalHook, HookBase, PeriodicCheckpointer, PeriodicWriter, flatten_results
from .launch import create_ddp_model, launch, report_error
from .optimizer import WarmupLRScheduler, add_gradient_clipping, build_lr_scheduler, build_optimizer, get_param_groups
from .trainer import Trainer, move_to_device
from .writers import (
    ConsoleWriter, EventStorage, EventWriter, JSONWriter, TensorboardWriter, max_memory_mb
)

__all__ = [
    "Checkpointer", "ConsoleWriter", "EngineError", "EvalHook", "EventStorage", "EventWriter", "HookBase",
    "JSONWriter", "NonFiniteLossError", "PeriodicCheckpointer", "PeriodicWriter",
    "SetupError", "SignalSafeDataLoader", "TensorboardWriter", "Trainer", "TrainingInterrupted",
    "WarmupLRScheduler", "WorkerSignalGuard", "add_gradient_clipping", "build_checkpointer", "build_grad_scaler",
    "build_lr_scheduler", "build_optimizer", "build_trainer", "check_output_dir", "create_ddp_model",
    "default_argument_parser", "default_setup", "device_from_config",
    "eval_amp_dtype", "flatten_results", "get_param_groups", "launch", "max_memory_mb", "move_to_device",
    "per_device_batch_size", "periodic_checkpoint_name", "report_error", "rng_state", "seed_all",
    "set_deterministic", "set_rng_state", "unwrap_model",
]
