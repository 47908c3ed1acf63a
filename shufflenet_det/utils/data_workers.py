"""DataLoader worker processes that leave SIGINT and SIGTERM to the training process.

Ctrl-C in a terminal, ``kill -TERM -- -PGID``, torchrun (which signals each trainer's process group) and
cluster schedulers (which signal every process of a job) deliver the signal to the DataLoader workers too.
By default they die of it, and the training process, instead of finishing its iteration and writing its
interrupt checkpoint, fails with "DataLoader worker (pid N) is killed by signal". Workers started by
:class:`SignalSafeDataLoader` instead

- ignore SIGINT (the training process never sends it to them);
- ignore SIGTERM unless it comes from the training process itself: its DataLoader terminates workers
  that do not stop on request at shutdown, and Python's exit handler terminates remaining daemonic
  children. Both must still work, or a run could hang at exit. The sender is known because a thread of
  the worker takes SIGTERM with ``sigwaitinfo`` (Linux; elsewhere SIGTERM keeps its default action).

Everything else is unchanged: a worker that crashes (segfault, out-of-memory kill, SIGKILL) is reported
by the DataLoader as before, and workers still exit on their own when the training process dies.

This holds for the "fork" start method (Linux's default up to Python 3.13). A "spawn" or "forkserver"
worker starts with a fresh signal mask, and threads its imports create (numpy's BLAS pool) before this
module runs can still take a SIGTERM and die of it; SIGINT is ignored there too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Callable, Iterator, Optional

from torch.utils.data import DataLoader

_HAS_SIGMASK = hasattr(signal, "pthread_sigmask")
_HAS_SIGWAITINFO = hasattr(signal, "sigwaitinfo")


@contextlib.contextmanager
def termination_signals_blocked() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM in the calling thread while the block runs; they are delivered when
    it ends. Processes forked (or spawned) meanwhile start with both blocked, so a signal arriving while
    DataLoader workers start cannot reach a worker before :class:`WorkerSignalGuard` has run."""
    if not _HAS_SIGMASK:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class WorkerSignalGuard:
    """A DataLoader ``worker_init_fn``: the worker ignores SIGINT, and SIGTERM from anyone but
    ``main_pid`` (the process that owns the DataLoader); then ``worker_init_fn(worker_id)`` runs if given.

    Picklable (a plain object), so it also works with the "spawn" and "forkserver" start methods.
    """

    def __init__(self, main_pid: int, worker_init_fn: Optional[Callable[[int], None]] = None) -> None:
        self.main_pid = main_pid
        self.worker_init_fn = worker_init_fn

    def __call__(self, worker_id: int) -> None:
        if _HAS_SIGMASK:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if _HAS_SIGWAITINFO:
                # Threads inherit the mask: blocked here, SIGTERM reaches only the waiting thread.
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
                threading.Thread(target=self._wait_for_sigterm, args=(os.getppid(),), daemon=True,
                                 name="sigterm_from_main_process").start()
            else:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)

    def _wait_for_sigterm(self, parent_pid: int) -> None:
        while True:
            sender = signal.sigwaitinfo({signal.SIGTERM}).si_pid
            # A changed parent means the main process is gone: nobody will stop this worker but a signal.
            if sender == self.main_pid or os.getppid() != parent_pid:
                os._exit(0)  # as a plain DataLoader worker does on its parent's SIGTERM


class SignalSafeDataLoader(DataLoader):
    """A ``torch.utils.data.DataLoader`` whose worker processes leave SIGINT and SIGTERM to the training
    process (see the module docstring); same arguments. ``worker_init_fn``, if given, still runs."""

    def __init__(self, *args: Any, worker_init_fn: Optional[Callable[[int], None]] = None, **kwargs: Any) -> None:
        super().__init__(*args, worker_init_fn=WorkerSignalGuard(os.getpid(), worker_init_fn), **kwargs)

    def _get_iterator(self) -> Any:
        # Workers start here (once with persistent_workers); they inherit this thread's signal mask.
        if self.num_workers == 0:
            return super()._get_iterator()
        with termination_signals_blocked():
            return super()._get_iterator()
