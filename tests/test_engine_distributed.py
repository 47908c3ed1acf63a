"""Two CPU processes with gloo, started by ``launch`` (``--num-gpus 2``), against one process.

With DDP each rank computes the mean loss over its half of the global batch and the gradients are
averaged over the ranks, which for equal halves is exactly the gradient of the mean over the whole batch.
The toy model has no BatchNorm or dropout, so the only difference from a one-process run is the order
of float32 additions (two partial sums, then their average): after a few SGD steps weights and losses
agree to ~1e-7 relative. rtol=1e-5 leaves room for that and still catches a wrong gradient scale
(a sum instead of a mean would be off by 2x) or a wrong data split.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine_toy import run_in_process
from test_engine_resume import start_toy, wait_for_file
from shufflenet_det.utils.io import safe_torch_load

pytestmark = pytest.mark.slow  # whole training runs

RUN = [
    "SOLVER.IMS_PER_BATCH",
    8,
    "SOLVER.MAX_ITER",
    6,
    "SOLVER.CHECKPOINT_PERIOD",
    2,
    "SHUFFLENET_DET.LOG_PERIOD",
    1,
]


def _metrics(output_dir: Path):
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


def _two_process_run(argv, timeout: float = 300.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(Path(__file__).with_name("engine_toy.py")), "--num-gpus", "2", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_two_processes_match_one_process_through_sigterm_and_resume(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    assert run_in_process([*RUN, "OUTPUT_DIR", single]) == 0

    # 1 s per batch leaves ample time to stop the run between its first checkpoint and its end.
    process = start_toy(["--num-gpus", 2, "--sleep", 1.0, *RUN, "OUTPUT_DIR", double])
    wait_for_file(double / "model_0000002.pth", process, timeout=300)
    process.send_signal(signal.SIGTERM)  # to the launcher, which passes it on to both workers
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output
    reports = re.findall(r"(\[rank1\] )?.*error: training stopped by .* after iteration (\d+)", output)
    assert sorted(prefix for prefix, _ in reports) == ["", "[rank1] "], output
    iterations = {int(iteration) for _, iteration in reports}
    assert len(iterations) == 1, output  # all ranks stopped together
    stopped_at = iterations.pop()
    assert 2 <= stopped_at < 6
    assert (double / "last_checkpoint").read_text().strip() == f"model_{stopped_at:07d}.pth"

    result = _two_process_run(["--resume", *RUN, "OUTPUT_DIR", double])
    assert result.returncode == 0, result.stdout + result.stderr

    final_1, final_2 = safe_torch_load(single / "model_final.pth"), safe_torch_load(
        double / "model_final.pth"
    )
    initial = safe_torch_load(single / "model_0000002.pth")["model"]["fc1.weight"]
    assert not torch.allclose(
        final_1["model"]["fc1.weight"], initial, rtol=1e-3
    )  # training moved the weights
    for key, value in final_1["model"].items():
        assert torch.allclose(final_2["model"][key], value, rtol=1e-5, atol=1e-6), key
    assert len(final_2["rng"]) == 2  # every rank's RNG state, so each resumes its own stream

    lines_1, lines_2 = _metrics(single), _metrics(double)
    assert [line["iteration"] for line in lines_2] == [1, 2, 3, 4, 5, 6]  # each written once, by rank 0
    for line_1, line_2 in zip(lines_1, lines_2):
        # the logged loss is the mean over ranks = the loss of the whole global batch
        assert abs(line_2["total_loss"] - line_1["total_loss"]) <= 1e-5 * abs(line_1["total_loss"])
        assert line_2["lr"] == line_1["lr"]

    # Only rank 0 writes files: the same kinds as the single process (one event file per launch).
    def names(directory):
        return sorted(
            {
                re.sub(r"tfevents\..*", "tfevents", p.name)
                for p in directory.iterdir()
                if not re.match(r"model_\d+", p.name)
            }
        )

    assert names(double) == names(single)
    assert len(list(double.glob("events.out.tfevents.*"))) == 2
    rank1_lines = [line for line in (output + result.stdout).splitlines() if line.startswith("[rank1]")]
    assert rank1_lines and not any("iter:" in line or "Saved checkpoint" in line for line in rank1_lines)
