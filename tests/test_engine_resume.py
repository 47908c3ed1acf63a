"""Resume, interruption and failure behaviour of whole (toy) training runs.

Run A trains uninterrupted in this process; the other runs are subprocesses of tests/engine_toy.py that
are killed (SIGKILL) or stopped (SIGTERM) part-way and then resumed. Everything runs on one CPU thread
with fixed seeds, so a correct resume reproduces A bit for bit: model weights and BatchNorm buffers,
momentum buffers, LR schedule, dropout RNG and the data order (a position-indexed sampler).
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine_toy import run_in_process
from shufflenet_det.utils.io import safe_torch_load

pytestmark = pytest.mark.slow  # whole training runs

TOY_SCRIPT = Path(__file__).with_name("engine_toy.py")
# Dropout and BatchNorm make the RNG state and buffers part of what a resume must restore.
# A log period of 1 makes every iteration's logged loss unsmoothed, so the runs' metrics compare exactly.
RUN = [
    "--dropout",
    0.2,
    "--batch-norm",
    "SOLVER.MAX_ITER",
    24,
    "SOLVER.CHECKPOINT_PERIOD",
    4,
    "TEST.EVAL_PERIOD",
    8,
    "SHUFFLENET_DET.LOG_PERIOD",
    1,
]


def start_toy(argv) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TOY_SCRIPT), *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"run ended (status {process.returncode}) before {path.name}:\n{process.stdout.read()}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path.name} not written within {timeout} s")
        time.sleep(0.05)


def metrics(output_dir: Path):
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def last_logged_iteration(output_dir: Path) -> int:
    """Of a run still writing: complete lines only."""
    iterations = [0]
    for line in (output_dir / "metrics.json").read_text().splitlines():
        try:
            iterations.append(json.loads(line)["iteration"])
        except ValueError:
            pass
    return max(iterations)


def assert_same_training_state(a: Path, b: Path) -> None:
    final_a, final_b = safe_torch_load(a / "model_final.pth"), safe_torch_load(b / "model_final.pth")
    assert final_a["iteration"] == final_b["iteration"] == 24
    assert final_a["model"].keys() == final_b["model"].keys()
    for key, value in final_a["model"].items():
        assert torch.equal(value, final_b["model"][key]), key
    momentum_a, momentum_b = final_a["optimizer"]["state"], final_b["optimizer"]["state"]
    assert momentum_a.keys() == momentum_b.keys()
    for index in momentum_a:
        assert torch.equal(momentum_a[index]["momentum_buffer"], momentum_b[index]["momentum_buffer"])
    assert final_a["scheduler"] == final_b["scheduler"]
    assert [g["lr"] for g in final_a["optimizer"]["param_groups"]] == [
        g["lr"] for g in final_b["optimizer"]["param_groups"]
    ]
    # Logged values match too, and the resumed run wrote every iteration exactly once.
    lines_a, lines_b = metrics(a), metrics(b)
    assert [line["iteration"] for line in lines_b] == [line["iteration"] for line in lines_a]
    for line_a, line_b in zip(lines_a, lines_b):
        for key in ("total_loss", "loss_mse", "lr", "val/mse"):
            assert line_a.get(key) == line_b.get(key), (line_a["iteration"], key)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("run_a")
    assert run_in_process([*RUN, "OUTPUT_DIR", output_dir]) == 0
    evaluated = [line["iteration"] for line in metrics(output_dir) if "val/mse" in line]
    assert evaluated == [8, 16, 24]  # TEST.EVAL_PERIOD and the end
    return output_dir


def test_resume_after_sigkill_is_exact(uninterrupted_run, tmp_path):
    process = start_toy(["--sleep", 0.2, *RUN, "OUTPUT_DIR", tmp_path])
    wait_for_file(tmp_path / "model_0000008.pth", process)
    while last_logged_iteration(tmp_path) < 10:  # let it log past its last checkpoint
        time.sleep(0.02)
    process.kill()  # SIGKILL: no handler runs, whatever was being written is cut off
    process.communicate()
    resume_point = safe_torch_load(tmp_path / (tmp_path / "last_checkpoint").read_text().strip())["iteration"]
    assert resume_point < 24
    assert metrics(tmp_path)[-1]["iteration"] > resume_point  # lines the resumed run must not duplicate

    assert run_in_process(["--resume", *RUN, "OUTPUT_DIR", tmp_path]) == 0
    assert_same_training_state(uninterrupted_run, tmp_path)
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 2  # one per process; the second purges the first's steps after the resume point


def test_sigterm_saves_a_checkpoint_and_resume_continues(uninterrupted_run, tmp_path):
    process = start_toy(["--sleep", 0.2, *RUN, "OUTPUT_DIR", tmp_path])
    wait_for_file(tmp_path / "model_0000004.pth", process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output
    stopped = re.search(
        r"error: training stopped by SIGTERM after iteration (\d+); checkpoint (\S+) written", output
    )
    assert stopped, output
    iteration = int(stopped.group(1))
    assert 4 <= iteration < 24 and "Traceback" not in output
    assert Path(stopped.group(2)).name == f"model_{iteration:07d}.pth"
    assert (tmp_path / "last_checkpoint").read_text().strip() == f"model_{iteration:07d}.pth"
    assert safe_torch_load(tmp_path / f"model_{iteration:07d}.pth")["iteration"] == iteration

    assert run_in_process(["--resume", *RUN, "OUTPUT_DIR", tmp_path]) == 0
    assert_same_training_state(uninterrupted_run, tmp_path)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    run = ["SOLVER.MAX_ITER", 12, "SOLVER.CHECKPOINT_PERIOD", 2, "OUTPUT_DIR", tmp_path]
    assert run_in_process(["--nan-at", 7, *run]) == 3
    output = capsys.readouterr().out
    message = next(line for line in output.splitlines() if "error:" in line)
    assert "non-finite loss at iteration 7:" in message
    assert "loss_mse=nan" in message and "loss_l1=nan" in message and "total_loss=nan" in message
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "model_0000002.pth",
        "model_0000004.pth",
        "model_0000006.pth",
    ]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_0000006.pth"
    checkpoint = safe_torch_load(tmp_path / "model_0000006.pth")
    assert checkpoint["iteration"] == 6
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values())
    lines = metrics(tmp_path)
    assert [line["iteration"] for line in lines][-1] == 7 and "total_loss" not in lines[-1]

    # The data problem fixed, the run resumes from the good checkpoint.
    assert run_in_process(["--resume", *run]) == 0
    assert safe_torch_load(tmp_path / "model_final.pth")["iteration"] == 12


def test_bad_batches_can_be_skipped(tmp_path, capsys):
    run = ["--nan-at", 7, "SHUFFLENET_DET.MAX_BAD_BATCHES", 1, "SOLVER.MAX_ITER", 10, "OUTPUT_DIR", tmp_path]
    assert run_in_process(run) == 0
    assert "Skipping iteration 7: non-finite loss" in capsys.readouterr().out
    final = safe_torch_load(tmp_path / "model_final.pth")
    assert all(torch.isfinite(value).all() for value in final["model"].values())
    assert all(math.isfinite(line["total_loss"]) for line in metrics(tmp_path) if "total_loss" in line)
