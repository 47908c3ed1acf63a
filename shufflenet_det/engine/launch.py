"""Starting one or many training processes: torchrun environments, ``--num-gpus N`` spawning, DDP.

Three ways to run ``main_func`` through ``launch``:

* plain ``python tools/train_net.py ...``: one process, no process group;
* ``python tools/train_net.py --num-gpus N ...``: N processes spawned here (one per GPU; on a machine
  without CUDA, N CPU processes with the gloo backend, for testing);
* ``torchrun --nproc_per_node N tools/train_net.py ...`` (also multi-node): torchrun starts the
  processes and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; ``launch`` initializes
  the process group from them and ignores ``--num-gpus``.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ..utils.distributed import get_world_size
from ..utils.io import CheckpointError
from .errors import EngineError, SetupError

logger = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)

_local_rank = 0


def get_local_rank() -> int:
    """Index of this process on its machine (its GPU index)."""
    return _local_rank


def started_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed_from_env(timeout: datetime.timedelta = DEFAULT_TIMEOUT) -> None:
    """Join the process group described by torchrun's environment variables (nccl with CUDA, else gloo)."""
    global _local_rank
    _local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(_local_rank)
    dist.init_process_group(_backend(), init_method="env://", timeout=timeout)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
    args: Sequence[Any] = (),
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> int:
    """Run ``main_func(*args)`` in every training process and return an exit status for ``sys.exit``.

    ``EngineError`` and ``CheckpointError`` raised by ``main_func`` are reported as one line and turned
    into their exit status (e.g. 143 after SIGTERM); other exceptions propagate with their traceback.
    With several machines, give every machine the same ``dist_url`` (``tcp://HOST:PORT`` of machine 0).
    """
    if started_by_torchrun():
        if num_gpus_per_machine > 1 or num_machines > 1:
            logger.warning("Started by torchrun: --num-gpus/--num-machines are ignored (torchrun decides)")
        init_distributed_from_env(timeout)
        try:
            return _run_reporting_errors(main_func, args)
        finally:
            dist.destroy_process_group()

    try:
        dist_url = _check_layout(num_gpus_per_machine, num_machines, machine_rank, dist_url)
    except SetupError as error:
        report_error(error)
        return error.exit_code
    world_size = num_gpus_per_machine * num_machines
    if world_size == 1:
        return _run_reporting_errors(main_func, args)
    if not torch.cuda.is_available():
        logger.warning("No CUDA: starting %d CPU processes with the gloo backend", num_gpus_per_machine)
    context = mp.start_processes(
        _worker,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args), timeout),
        nprocs=num_gpus_per_machine,
        join=False,
        start_method="spawn",
    )
    return _join_forwarding_signals(context)


def _check_layout(num_gpus_per_machine: int, num_machines: int, machine_rank: int, dist_url: str) -> str:
    """Validate the process layout; returns the rendezvous URL (a free local port for "auto")."""
    if num_gpus_per_machine < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise SetupError(
            f"invalid process layout: --num-gpus {num_gpus_per_machine} --num-machines {num_machines} "
            f"--machine-rank {machine_rank}"
        )
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise SetupError(
            f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} CUDA device(s) visible"
        )
    if dist_url != "auto":
        return dist_url
    if num_machines > 1:
        raise SetupError(
            "--dist-url tcp://HOST:PORT (an address of machine 0) is required with --num-machines > 1"
        )
    return f"tcp://127.0.0.1:{_free_port()}" if num_gpus_per_machine > 1 else ""


def _join_forwarding_signals(context: Any) -> int:
    """Wait for the spawned workers. A first SIGINT/SIGTERM to this process is passed on to them as
    SIGTERM so they checkpoint and stop together (after Ctrl-C they also got SIGINT from the terminal)."""
    forwarded = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal forwarded
        if forwarded:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        forwarded = True
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    in_main_thread = threading.current_thread() is threading.main_thread()  # handlers only work there
    previous = {
        signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM) if in_main_thread
    }
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as error:
        code = error.exit_code
        return 128 - code if code < 0 else code  # killed by signal N -> 128 + N, as shells report it
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence[Any],
    timeout: datetime.timedelta,
) -> None:
    global _local_rank
    _local_rank = local_rank
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    rank = machine_rank * num_gpus_per_machine + local_rank
    dist.init_process_group(
        _backend(), init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout
    )
    try:
        code = _run_reporting_errors(main_func, args)
    finally:
        dist.destroy_process_group()
    if code:
        sys.exit(code)


def _run_reporting_errors(main_func: Callable[..., Any], args: Sequence[Any]) -> int:
    try:
        result = main_func(*args)
    except (EngineError, CheckpointError) as error:
        report_error(error)
        return getattr(error, "exit_code", 1)
    return result if isinstance(result, int) else 0


def report_error(error: BaseException) -> None:
    """One line on the console (and in log.txt when the logger is set up)."""
    message = f"error: {error}"
    project_logger = logging.getLogger("shufflenet_det")
    if project_logger.handlers:
        project_logger.error(message)
    else:
        print(message, file=sys.stderr)


def create_ddp_model(
    model: nn.Module, find_unused_parameters: bool = False, broadcast_buffers: Optional[bool] = None
) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when there are several processes, else unchanged.

    ``broadcast_buffers=None`` re-sends rank 0's buffers every forward only when the model has plain
    BatchNorm layers (running statistics would drift apart); FrozenBN buffers are constant and SyncBN
    synchronizes itself, so they need no broadcast.
    """
    if get_world_size() == 1:
        return model
    if broadcast_buffers is None:
        broadcast_buffers = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not isinstance(m, nn.SyncBatchNorm)
            and m.track_running_stats
            for m in model.modules()
        )
    device = next(model.parameters()).device
    device_ids = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else None
    )
    # torch >= 2.13 renamed broadcast_buffers (runtime syncing) to forward_sync_buffers.
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
        sync = {"forward_sync_buffers": broadcast_buffers}
    else:
        sync = {"broadcast_buffers": broadcast_buffers}
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters, **sync
    )
