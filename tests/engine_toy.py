"""A tiny end-to-end training script on the engine, for the engine tests (and a template for tools).

    python tests/engine_toy.py [--resume] [--num-gpus N] [--sleep S] [--nan-at K] [KEY VALUE ...]

Model: a 2-layer MLP regressing a linear function of 16 random features; its training forward returns
``{"loss_mse", "loss_l1"}``. Data: 64 fixed samples, visited in a per-epoch permutation seeded by
(seed, epoch); the batch of iteration i is a pure function of i, which is what makes resume exact.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence

if __name__ == "__main__":  # run from a clone: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from shufflenet_det.config import get_cfg
from shufflenet_det.engine import (
    build_checkpointer,
    build_grad_scaler,
    build_lr_scheduler,
    build_optimizer,
    build_trainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    launch,
    per_device_batch_size,
    unwrap_model,
)
from shufflenet_det.utils.distributed import get_rank, get_world_size

NUM_SAMPLES = 64
NUM_FEATURES = 16


def toy_data(seed: int = 0) -> Dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(NUM_SAMPLES, NUM_FEATURES, generator=generator)
    w = torch.randn(NUM_FEATURES, 1, generator=generator)
    y = x @ w + 0.1 * torch.randn(NUM_SAMPLES, 1, generator=generator)
    return {"x": x, "y": y}


class ResumableBatches:
    """Global batch ``i`` = samples at stream positions ``i*B .. i*B+B-1`` of the concatenated epoch
    permutations; each rank takes its contiguous slice. Iteration starts at ``start_iter``."""

    def __init__(
        self,
        data: Dict[str, torch.Tensor],
        global_batch: int,
        seed: int,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
        sleep: float = 0.0,
        nan_at: int = 0,
    ) -> None:
        self.data = data
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.seed = seed
        self.start_iter = start_iter
        self.rank = rank
        self.sleep = sleep
        self.nan_at = nan_at

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, NUM_SAMPLES)
        permutation = torch.randperm(
            NUM_SAMPLES, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch)
        )
        return int(permutation[offset])

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        iteration = self.start_iter
        while True:
            first = iteration * self.global_batch + self.rank * self.per_rank
            indices = [self._index(p) for p in range(first, first + self.per_rank)]
            batch = {key: value[indices].clone() for key, value in self.data.items()}
            iteration += 1
            if iteration == self.nan_at:  # 1-based iteration number, as in the logs
                batch["y"].fill_(float("nan"))
            if self.sleep:
                time.sleep(self.sleep)
            yield batch


class ToyRegressor(nn.Module):
    def __init__(self, dropout: float = 0.0, batch_norm: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(NUM_FEATURES, 32)
        self.norm = nn.BatchNorm1d(32) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(32, 1)

    def forward(self, batch: Dict[str, torch.Tensor]) -> Any:
        prediction = self.fc2(self.dropout(torch.relu(self.norm(self.fc1(batch["x"])))))
        if not self.training:
            return prediction
        error = prediction - batch["y"]
        return {"loss_mse": error.pow(2).mean(), "loss_l1": 0.1 * error.abs().mean()}


def main(args: Any) -> int:
    torch.set_num_threads(1)  # bitwise-reproducible CPU math, and no oversubscription of small machines
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.SEED = 7
    cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.MAX_ITER = 20
    cfg.SOLVER.STEPS = (12, 16)
    cfg.SOLVER.WARMUP_ITERS = 4
    cfg.SOLVER.WARMUP_FACTOR = 0.1
    cfg.SOLVER.CHECKPOINT_PERIOD = 4
    cfg.SHUFFLENET_DET.LOG_PERIOD = 2
    cfg.SHUFFLENET_DET.MIN_FREE_DISK_GB = 0.0
    cfg.merge_from_list(args.opts)
    default_setup(cfg, args)

    model = ToyRegressor(dropout=args.dropout, batch_norm=args.batch_norm).to(cfg.MODEL.DEVICE)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    grad_scaler = build_grad_scaler(cfg)
    checkpointer = build_checkpointer(cfg, model, optimizer, scheduler, grad_scaler)
    start_iter = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume).get("iteration", 0)
    model = create_ddp_model(model, find_unused_parameters=cfg.SHUFFLENET_DET.DDP_FIND_UNUSED_PARAMETERS)

    per_device_batch_size(cfg)  # fails clearly on a global batch that does not split evenly
    data = toy_data()
    batches = ResumableBatches(
        data,
        global_batch=cfg.SOLVER.IMS_PER_BATCH,
        seed=cfg.SEED,
        start_iter=start_iter,
        rank=get_rank(),
        world_size=get_world_size(),
        sleep=args.sleep,
        nan_at=args.nan_at,
    )

    def evaluate() -> Dict[str, Any]:
        net = unwrap_model(model).eval()
        with torch.no_grad():
            mse = (net(data) - data["y"]).pow(2).mean().item()
        return {"val": {"mse": mse}}

    trainer = build_trainer(
        cfg,
        model,
        batches,
        optimizer,
        scheduler,
        checkpointer,
        start_iter=start_iter,
        eval_function=evaluate,
        grad_scaler=grad_scaler,
    )
    trainer.train()
    return 0


def argument_parser():
    parser = default_argument_parser("Train the engine's toy regressor.")
    parser.add_argument(
        "--sleep", type=float, default=0.0, help="seconds per batch (to interrupt runs in tests)"
    )
    parser.add_argument("--nan-at", type=int, default=0, help="iteration whose targets are NaN")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--batch-norm", action="store_true")
    return parser


def run(argv: Sequence[Any]) -> int:
    """What ``python tests/engine_toy.py ARGV`` does, returning the exit status."""
    arguments = argument_parser().parse_args([str(arg) for arg in argv])
    return launch(
        main,
        arguments.num_gpus,
        num_machines=arguments.num_machines,
        machine_rank=arguments.machine_rank,
        dist_url=arguments.dist_url,
        args=(arguments,),
    )


def run_in_process(argv: Sequence[Any]) -> int:
    """``run`` inside a test process, undoing its global side effects (logger set-up, thread count)."""
    threads = torch.get_num_threads()
    try:
        return run(argv)
    finally:
        torch.set_num_threads(threads)
        project_logger = logging.getLogger("shufflenet_det")
        for handler in list(project_logger.handlers):
            project_logger.removeHandler(handler)
            handler.close()
        project_logger.propagate = True


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
