"""Starting the training processes: one plain process, ``--num-gpus N`` spawned here (N CPU processes
with gloo where there is no CUDA), or torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ..config.loading import ConfigError
from ..utils.distributed import get_world_size
from ..utils.io import CheckpointError
from .errors import EngineError, SetupError

logger = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


@contextlib.contextmanager
def stop_on_signals(on_first: Callable[[int], None]) -> Iterator[List[int]]:
    """While active, the first SIGTERM or SIGINT calls ``on_first(signum)`` and is appended to the yielded
    list; later ones are ignored except a second SIGINT (Ctrl-C twice), which raises KeyboardInterrupt."""
    received: List[int] = []

    def handle(signum: int, frame: Any) -> None:
        if received:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        received.append(signum)
        on_first(signum)

    in_main_thread = threading.current_thread() is threading.main_thread()  # Python allows handlers only there
    previous = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _init_process_group(local_rank: int, **kwargs: Any) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", **kwargs)


def launch(
    main_func: Callable[..., Any], num_gpus_per_machine: int, num_machines: int = 1, machine_rank: int = 0,
    dist_url: str = "auto", args: Sequence[Any] = (), timeout: datetime.timedelta = DEFAULT_TIMEOUT,
) -> int:
    """Run ``main_func(*args)`` in every training process and return an exit status for ``sys.exit``.

    ``EngineError``, ``CheckpointError`` and ``ConfigError`` (status 2) are reported as one line and give
    their exit status (143 after SIGTERM); other exceptions propagate. Several machines share ``dist_url`` (machine 0's)."""
    if all(name in os.environ for name in TORCHRUN_VARIABLES):
        if num_gpus_per_machine > 1 or num_machines > 1:
            logger.warning("Started by torchrun: --num-gpus/--num-machines are ignored (torchrun decides)")
        _init_process_group(int(os.environ["LOCAL_RANK"]), init_method="env://", timeout=timeout)
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
        args=(main_func, world_size, machine_rank * num_gpus_per_machine, dist_url, tuple(args), timeout),
        nprocs=num_gpus_per_machine,
        join=False,
        start_method="spawn",
    )

    def forward(signum: int) -> None:
        # Workers checkpoint and stop together (after Ctrl-C the terminal sent them SIGINT too).
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    with stop_on_signals(forward):
        try:
            while not context.join():
                pass
        except mp.ProcessExitedException as error:
            return 128 - error.exit_code if error.exit_code < 0 else error.exit_code  # killed by N: 128 + N
    return 0


def _check_layout(num_gpus_per_machine: int, num_machines: int, machine_rank: int, dist_url: str) -> str:
    """Validate the process layout; returns the rendezvous URL (a free local port for "auto")."""
    if num_gpus_per_machine < 1 or num_machines < 1 or not 0 <= machine_rank < num_machines:
        raise SetupError(
            f"invalid process layout: --num-gpus {num_gpus_per_machine} --num-machines {num_machines} "
            f"--machine-rank {machine_rank}"
        )
    if torch.cuda.is_available() and num_gpus_per_machine > torch.cuda.device_count():
        raise SetupError(f"--num-gpus {num_gpus_per_machine} but only {torch.cuda.device_count()} CUDA device(s) visible")
    if dist_url != "auto":
        return dist_url
    if num_machines > 1:
        raise SetupError("--dist-url tcp://HOST:PORT (an address of machine 0) is required with --num-machines > 1")
    if num_gpus_per_machine == 1:
        return ""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _worker(
    local_rank: int, main_func: Callable[..., Any], world_size: int, first_rank: int, dist_url: str,
    args: Sequence[Any], timeout: datetime.timedelta,
) -> None:
    rank = first_rank + local_rank
    _init_process_group(local_rank, init_method=dist_url, world_size=world_size, rank=rank, timeout=timeout)
    try:
        code = _run_reporting_errors(main_func, args)
    finally:
        dist.destroy_process_group()
    if code:
        sys.exit(code)


def _run_reporting_errors(main_func: Callable[..., Any], args: Sequence[Any]) -> int:
    try:
        result = main_func(*args)
    except (EngineError, CheckpointError, ConfigError) as error:
        report_error(error)
        return getattr(error, "exit_code", 2 if isinstance(error, ConfigError) else 1)
    return result if isinstance(result, int) else 0


def report_error(error: BaseException) -> None:
    """One line on the console (and in log.txt when the logger is set up)."""
    project_logger = logging.getLogger("shufflenet_det")
    if project_logger.handlers:
        project_logger.error(f"error: {error}")
    else:
        print(f"error: {error}", file=sys.stderr)


def create_ddp_model(
    model: nn.Module, find_unused_parameters: bool = False, broadcast_buffers: Optional[bool] = None
) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes. ``broadcast_buffers=None``
    re-sends rank 0's buffers each forward only for plain BatchNorm (FrozenBN is constant, SyncBN syncs)."""
    if get_world_size() == 1:
        return model
    if broadcast_buffers is None:
        broadcast_buffers = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
            and m.track_running_stats
            for m in model.modules()
        )
    device = next(model.parameters()).device
    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    # torch >= 2.13 renamed broadcast_buffers (runtime syncing) to forward_sync_buffers.
    renamed = "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    sync = {"forward_sync_buffers" if renamed else "broadcast_buffers": broadcast_buffers}
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused_parameters, **sync
    )
