"""tools/train_net.py under faults: a signal to the whole process group (Ctrl-C in a terminal, torchrun,
``kill -- -PGID``) while DataLoader workers run, an exact resume of the detector, a crashing worker.

A tiny ShuffleNet 0.5x C4 detector with trainable BatchNorm learns from scratch on 128 px synthetic
images, on one CPU thread with a fixed seed, so an uninterrupted run and a stopped-and-resumed one
must agree bit for bit: the data order and flips (a function of the iteration), the multi-scale sizes
and the RPN/RoI sampling (torch's global RNG, saved in the checkpoint), BN statistics and momentum.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shufflenet_det.data.synthetic import generate_synthetic_coco
from shufflenet_det.utils.io import safe_torch_load

pytestmark = pytest.mark.slow  # whole training runs

REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = str(REPO / "tools" / "train_net.py")
MAX_ITER = 20
# Two train sizes and a warmup plus a step: the resumed run must restore the size RNG and the LR.
TINY = [
    "DATASETS.TRAIN", "('faults_train',)", "DATASETS.TEST", "()",
    "INPUT.MIN_SIZE_TRAIN", "(112, 128)", "INPUT.MAX_SIZE_TRAIN", "160",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.005", "SOLVER.WARMUP_ITERS", "4",
    "SOLVER.STEPS", "(14,)", "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", "3",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "300", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "SEED", "0", "SHUFFLENET_DET.TORCH_THREADS", "1", "SHUFFLENET_DET.LOG_PERIOD", "1",
    "SHUFFLENET_DET.MIN_FREE_DISK_GB", "0.0", "SHUFFLENET_DET.NUM_VIS_IMAGES", "0",
    "SHUFFLENET_DET.CHECKPOINTS_TO_KEEP", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_data")
    generate_synthetic_coco(root, 12, 2, seed=2, overwrite=True)
    return root


def command(dataset: Path, output_dir: Path, *args: str, workers: int = 1) -> list:
    annotations = str(dataset / "annotations/instances_train.json")
    register = ["--register-coco", "faults_train", annotations, str(dataset / "train")]
    return [sys.executable, TRAIN_NET, "--config", "quickstart.yaml", *args, *register, *TINY,
            "DATALOADER.NUM_WORKERS", str(workers), "OUTPUT_DIR", str(output_dir)]  # fmt: skip


def start(argv: list) -> subprocess.Popen:
    # A session of its own: the process group holds the trainer and its DataLoader workers only.
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip


def logged_iterations(output_dir: Path) -> list:
    path = output_dir / "metrics.json"
    if not path.exists():
        return []
    iterations = []
    for line in path.read_text().splitlines():
        try:
            iterations.append(json.loads(line)["iteration"])
        except ValueError:  # a line being written
            pass
    return iterations


def wait_for_iteration(process: subprocess.Popen, output_dir: Path, iteration: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while max(logged_iterations(output_dir), default=0) < iteration:
        if process.poll() is not None:
            raise AssertionError(f"run ended (status {process.returncode}) early:\n{process.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"iteration {iteration} not reached within {timeout} s")
        time.sleep(0.02)


def children(pid: int) -> list:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    argv = command(dataset, output_dir, workers=0)
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output_dir


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_sigterm_to_the_process_group_checkpoints_and_resume_is_exact(dataset, uninterrupted, tmp_path):
    process = start(command(dataset, tmp_path))
    wait_for_iteration(process, tmp_path, 4)
    workers = children(process.pid)
    assert workers, "the run has no DataLoader worker"
    os.killpg(process.pid, signal.SIGTERM)  # reaches the trainer and its DataLoader worker
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "DataLoader worker" not in output and "Traceback" not in output, output[-3000:]
    stopped = re.search(r"error: training stopped by SIGTERM after iteration (\d+); checkpoint (\S+) written", output)
    assert stopped, output[-3000:]
    iteration = int(stopped.group(1))
    assert 4 <= iteration < MAX_ITER
    checkpoint = safe_torch_load(stopped.group(2))
    assert checkpoint["iteration"] == iteration
    assert (tmp_path / "last_checkpoint").read_text().strip() == Path(stopped.group(2)).name
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived the run"

    argv = command(dataset, tmp_path, "--resume")
    resumed = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    expected, final = safe_torch_load(uninterrupted / "model_final.pth"), safe_torch_load(tmp_path / "model_final.pth")
    assert final["iteration"] == expected["iteration"] == MAX_ITER
    learning_rates = [[group["lr"] for group in c["optimizer"]["param_groups"]] for c in (expected, final)]
    assert learning_rates[0] == learning_rates[1]
    assert final["scheduler"] == expected["scheduler"]
    assert expected["model"].keys() == final["model"].keys()
    assert any(key.endswith("running_mean") for key in final["model"])  # trainable BN: buffers compared too
    for key, value in expected["model"].items():
        assert torch.equal(value, final["model"][key]), key
    # Every optimizer state tensor (SGD's momentum, AdamW's moments and step count) agrees too.
    assert expected["optimizer"]["state"], "the optimizer saved no state"
    for index, state in expected["optimizer"]["state"].items():
        assert state.keys() == final["optimizer"]["state"][index].keys()
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(final["optimizer"]["state"][index][name])), name
    # Every iteration's logged losses agree, and each appears once.
    logged = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    reference = [json.loads(line) for line in (uninterrupted / "metrics.json").read_text().splitlines()]
    assert [line["iteration"] for line in logged] == list(range(1, MAX_ITER + 1))
    for mine, theirs in zip(logged, reference):
        assert {k: v for k, v in mine.items() if k.startswith(("loss", "total_loss", "lr"))} == {
            k: v for k, v in theirs.items() if k.startswith(("loss", "total_loss", "lr"))
        }, mine["iteration"]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_crashing_worker_still_stops_the_run(dataset, tmp_path):
    process = start(command(dataset, tmp_path))
    wait_for_iteration(process, tmp_path, 2)
    (worker,) = children(process.pid)
    os.kill(worker, signal.SIGKILL)  # what the out-of-memory killer does
    output, _ = process.communicate(timeout=120)
    assert process.returncode not in (0, 128 + signal.SIGTERM, 128 + signal.SIGINT), output[-3000:]
    assert f"DataLoader worker (pid {worker}) is killed by signal" in output, output[-3000:]
