"""DataLoader workers that leave SIGINT and SIGTERM to the training process, so that Ctrl-C, torchrun or a
scheduler signalling the whole process group lets training write its interrupt checkpoint instead of failing
with "DataLoader worker is killed by signal". Workers ignore SIGINT, and SIGTERM from anyone but the training
process (whose DataLoader and exit handler still stop them). Exact for the "fork" start method on Linux."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable, Optional

from torch.utils.data import DataLoader

_HAS_SIGMASK = hasattr(signal, "pthread_sigmask")
_HAS_SIGWAITINFO = hasattr(signal, "sigwaitinfo")


class WorkerSignalGuard:
    """A picklable ``worker_init_fn``: ignore SIGINT, and SIGTERM from anyone but ``main_pid``; then run
    ``worker_init_fn(worker_id)`` if given."""

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
    """A ``DataLoader`` whose workers leave SIGINT and SIGTERM to the training process; same arguments."""

    def __init__(self, *args: Any, worker_init_fn: Optional[Callable[[int], None]] = None, **kwargs: Any) -> None:
        super().__init__(*args, worker_init_fn=WorkerSignalGuard(os.getpid(), worker_init_fn), **kwargs)

    def _get_iterator(self) -> Any:
        # Workers start here (once with persistent_workers) and inherit this thread's signal mask: with
        # SIGINT and SIGTERM blocked meanwhile, none reaches a worker before WorkerSignalGuard has run.
        if self.num_workers == 0 or not _HAS_SIGMASK:
            return super()._get_iterator()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            return super()._get_iterator()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
