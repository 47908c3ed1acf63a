"""SignalSafeDataLoader: workers leave SIGINT/SIGTERM sent to the process group to the main process,
still obey the main process's own SIGTERM (its shutdown at exit), and still report a real crash."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The main process turns the signal into a flag (as the trainer does), reads on after it, and exits with
# its DataLoader iterator still alive: Python's exit handler then terminates the workers (SIGTERM from the
# main process), which must end them quietly instead of hanging or reporting a failure.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from torch.utils.data import IterableDataset
    from shufflenet_det.engine import SignalSafeDataLoader

    class Counter(IterableDataset):
        def __iter__(self):
            count = 0
            while True:
                time.sleep(0.01)
                yield count
                count += 1

    received = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: received.append(signum))
    items = iter(SignalSafeDataLoader(Counter(), batch_size=None, num_workers=2))
    next(items)
    print("workers", *[w.pid for w in items._workers], flush=True)
    for count in (1, 2):
        while len(received) < count:
            next(items)
        taken = [next(items) for _ in range(30)]
        print("read on after", signal.Signals(received[-1]).name, len(taken), flush=True)
    """
)


def start_child() -> tuple:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    first = process.stdout.readline().split()
    assert first and first[0] == "workers", first + [process.stdout.read()]
    return process, [int(pid) for pid in first[1:]]


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="needs sigwaitinfo (Linux)")
def test_workers_survive_signals_to_the_process_group_and_end_with_the_main_process():
    process, workers = start_child()
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C in a terminal; torchrun, kill -- -PGID
        os.killpg(process.pid, signum)
        line = process.stdout.readline()
        assert line.strip() == f"read on after {signal.Signals(signum).name} 30", line + process.stdout.read()
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "DataLoader worker" not in output and "Traceback" not in output, output
    time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived the main process"


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="needs sigwaitinfo (Linux)")
def test_a_killed_worker_is_still_reported():
    process, workers = start_child()
    os.kill(workers[0], signal.SIGKILL)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert f"DataLoader worker (pid {workers[0]}) is killed by signal: Killed" in output, output
