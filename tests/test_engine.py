"""Engine unit tests: LR schedules, optimizer parameter groups, clipping, checkpoints, writers, setup."""

from __future__ import annotations

import importlib
import json
import logging
import math
from collections import namedtuple

import pytest
import torch
from torch import nn

from engine_toy import ToyRegressor, argument_parser, run_in_process, toy_data
from shufflenet_det.config import get_cfg
from shufflenet_det.engine import (
    Checkpointer,
    EventStorage,
    SetupError,
    Trainer,
    add_gradient_clipping,
    build_lr_scheduler,
    build_optimizer,
    check_output_dir,
    default_setup,
    flatten_results,
    get_param_groups,
    launch,
    move_to_device,
    per_device_batch_size,
    set_deterministic,
)
from shufflenet_det.config.loading import ConfigError
from shufflenet_det.engine.writers import JSONWriter
from shufflenet_det.modeling import convert_frozen_batchnorm
from shufflenet_det.utils.io import CheckpointError, safe_torch_load


def _lrs(scheduler, iterations):
    values = {}
    for iteration in range(max(iterations) + 1):
        if iteration in iterations:
            values[iteration] = scheduler.get_last_lr()[0]
        scheduler.step()
    return values


def _optimizer(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


# ---------------------------------------------------------------------------- LR schedules
def test_multistep_with_linear_warmup():
    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(
        [
            "BASE_LR",
            0.02,
            "MAX_ITER",
            100,
            "STEPS",
            (60, 80),
            "GAMMA",
            0.1,
            "WARMUP_ITERS",
            10,
            "WARMUP_FACTOR",
            0.001,
        ]
    )
    lrs = _lrs(build_lr_scheduler(cfg, _optimizer(0.02)), {0, 5, 10, 59, 60, 79, 80, 99})
    assert lrs[0] == pytest.approx(0.02 * 0.001)
    assert lrs[5] == pytest.approx(0.02 * (0.001 * 0.5 + 0.5))  # halfway through the warmup ramp
    assert lrs[10] == pytest.approx(0.02)
    assert lrs[59] == pytest.approx(0.02)
    assert lrs[60] == pytest.approx(0.002)  # decayed from the step iteration on
    assert lrs[79] == pytest.approx(0.002)
    assert lrs[80] == pytest.approx(0.0002)
    assert lrs[99] == pytest.approx(0.0002)


def test_constant_warmup_and_cosine():
    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(
        [
            "LR_SCHEDULER_NAME",
            "WarmupCosineLR",
            "BASE_LR",
            1.0,
            "BASE_LR_END",
            0.1,
            "MAX_ITER",
            100,
            "WARMUP_ITERS",
            10,
            "WARMUP_FACTOR",
            0.25,
            "WARMUP_METHOD",
            "constant",
        ]
    )
    lrs = _lrs(build_lr_scheduler(cfg, _optimizer()), {0, 9, 10, 50, 100})
    cosine = lambda i: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 100))  # noqa: E731
    assert lrs[0] == pytest.approx(0.25 * cosine(0))
    assert lrs[9] == pytest.approx(0.25 * cosine(9))
    assert lrs[10] == pytest.approx(cosine(10))
    assert lrs[50] == pytest.approx(0.55)
    assert lrs[100] == pytest.approx(0.1)


def test_linear_decay_to_zero_like_the_imagenet_recipe():
    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(
        [
            "LR_SCHEDULER_NAME",
            "WarmupLinearLR",
            "BASE_LR",
            0.5,
            "BASE_LR_END",
            0.0,
            "MAX_ITER",
            300,
            "WARMUP_ITERS",
            0,
        ]
    )
    lrs = _lrs(build_lr_scheduler(cfg, _optimizer(0.5)), {0, 150, 299, 300, 320})
    assert lrs[0] == pytest.approx(0.5)
    assert lrs[150] == pytest.approx(0.25)
    assert lrs[299] == pytest.approx(0.5 / 300)
    assert lrs[300] == 0.0
    assert lrs[320] == 0.0  # clamped past MAX_ITER


# Learning rates computed by the schedules before they were rebuilt on fvcore and LambdaLR (commit a6e5ad9):
# a rewrite must reproduce them exactly, at every iteration index, including MAX_ITER (the rate left in
# the optimizer after the last step, saved in model_final.pth) and past it.
LR_TABLE = {
    "multistep_linear_warmup": (
        ["BASE_LR", 0.02, "MAX_ITER", 20, "STEPS", (8, 14, 20), "GAMMA", 0.1, "WARMUP_ITERS", 5, "WARMUP_FACTOR", 0.001],
        {0: 2e-05, 1: 0.0040160000000000005, 2: 0.008012, 3: 0.012008, 4: 0.016004, 5: 0.02, 6: 0.02, 7: 0.02,
         8: 0.002, 9: 0.002, 10: 0.002, 11: 0.002, 12: 0.002, 13: 0.002, 14: 0.00020000000000000004,
         15: 0.00020000000000000004, 16: 0.00020000000000000004, 17: 0.00020000000000000004,
         18: 0.00020000000000000004, 19: 0.00020000000000000004, 20: 2.0000000000000005e-05},
    ),
    "cosine_constant_warmup": (
        ["LR_SCHEDULER_NAME", "WarmupCosineLR", "BASE_LR", 0.1, "BASE_LR_END", 0.001, "MAX_ITER", 20,
         "WARMUP_ITERS", 4, "WARMUP_FACTOR", 0.25, "WARMUP_METHOD", "constant"],
        {0: 0.025, 1: 0.024847643214864833, 2: 0.024394324389152528, 3: 0.023651205736831053,
         4: 0.09054634122155991, 5: 0.0855017856687341, 6: 0.07959536998847742, 7: 0.07297252973710756,
         8: 0.0657963412215599, 9: 0.05824350601949144, 10: 0.0505, 11: 0.04275649398050857,
         12: 0.03520365877844011, 13: 0.028027470262892436, 14: 0.021404630011522586, 15: 0.015498214331265903,
         16: 0.010453658778440107, 17: 0.006395177052675795, 18: 0.0034227024433899004, 19: 0.001609427140540686,
         20: 0.001},
    ),
    "linear_to_end": (
        ["LR_SCHEDULER_NAME", "WarmupLinearLR", "BASE_LR", 0.5, "BASE_LR_END", 0.01, "MAX_ITER", 20,
         "WARMUP_ITERS", 3, "WARMUP_FACTOR", 0.1],
        {0: 0.05, 1: 0.1902, 2: 0.3157, 3: 0.4265, 4: 0.402, 5: 0.3775, 6: 0.353, 7: 0.3285, 8: 0.304, 9: 0.2795,
         10: 0.255, 11: 0.23049999999999998, 12: 0.20600000000000002, 13: 0.1815, 14: 0.15700000000000003,
         15: 0.1325, 16: 0.10799999999999997, 17: 0.0835, 18: 0.05899999999999999, 19: 0.034500000000000024,
         20: 0.01, 21: 0.01, 22: 0.01},
    ),
    "linear_to_zero": (
        ["LR_SCHEDULER_NAME", "WarmupLinearLR", "BASE_LR", 0.5, "BASE_LR_END", 0.0, "MAX_ITER", 300000,
         "WARMUP_ITERS", 0],
        {0: 0.5, 1: 0.4999983333333333, 75000: 0.375, 150000: 0.25, 299999: 1.6666666666775853e-06, 300000: 0.0},
    ),
    "detection_1x": (
        ["BASE_LR", 0.02, "MAX_ITER", 90000, "STEPS", (60000, 80000), "WARMUP_ITERS", 1000, "WARMUP_FACTOR", 0.001],
        {0: 2e-05, 1: 3.998e-05, 500: 0.01001, 999: 0.01998002, 1000: 0.02, 59999: 0.02, 60000: 0.002,
         79999: 0.002, 80000: 0.00020000000000000004, 89999: 0.00020000000000000004, 90000: 0.00020000000000000004},
    ),
    "long_multistep": (  # over 1e6 iterations, where a schedule of the training fraction could round a step off
        ["BASE_LR", 0.01, "MAX_ITER", 3000000, "STEPS", (2000000, 2500000), "WARMUP_ITERS", 1000],
        {1999999: 0.01, 2000000: 0.001, 2499999: 0.001, 2500000: 0.00010000000000000002,
         3000000: 0.00010000000000000002},
    ),
}


@pytest.mark.parametrize("name", sorted(LR_TABLE))
def test_schedules_reproduce_the_table(name):
    overrides, expected = LR_TABLE[name]
    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(overrides)
    scheduler = build_lr_scheduler(cfg, _optimizer(cfg.SOLVER.BASE_LR))
    for iteration, lr in expected.items():
        scheduler.set_iteration(iteration)
        assert scheduler.get_last_lr()[0] == lr, iteration
    if len(expected) > 20:  # stepping, as training does, gives the same rates
        stepped = build_lr_scheduler(cfg, _optimizer(cfg.SOLVER.BASE_LR))
        assert _lrs(stepped, set(expected)) == expected


def test_scheduler_state_round_trip_and_group_factors():
    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(
        ["BASE_LR", 0.1, "MAX_ITER", 50, "STEPS", (20,), "WARMUP_ITERS", 5, "BIAS_LR_FACTOR", 2.0]
    )
    model = nn.Linear(3, 2)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(23):
        scheduler.step()
    assert sorted(scheduler.get_last_lr()) == pytest.approx([0.01, 0.02])  # weight, bias (x2) after the step
    fresh_optimizer = build_optimizer(cfg, nn.Linear(3, 2))
    fresh = build_lr_scheduler(cfg, fresh_optimizer)
    fresh.load_state_dict(scheduler.state_dict())
    assert fresh.last_epoch == 23
    assert fresh.get_last_lr() == scheduler.get_last_lr()


def test_schedule_config_errors(caplog):
    cfg = get_cfg()
    cfg.SOLVER.MAX_ITER = 100
    cfg.SOLVER.STEPS = (50, 200)
    with caplog.at_level(logging.WARNING):
        build_lr_scheduler(cfg, _optimizer())
    assert "200" in caplog.text and "never be reached" in caplog.text
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    with pytest.raises(ValueError, match="WarmupMultiStepLR"):
        build_lr_scheduler(cfg, _optimizer())
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    cfg.SOLVER.STEPS = (80, 40)
    with pytest.raises(ValueError, match="increasing"):
        build_lr_scheduler(cfg, _optimizer())


# ---------------------------------------------------------------------------- optimizer
class _NetWithNorms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=True)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.frozen = convert_frozen_batchnorm(nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)
        self.tied = self.head  # the same module twice: its parameters must appear once
        self.stem = nn.Conv2d(3, 3, 1)
        self.stem.requires_grad_(False)


def test_param_groups_decay_and_membership():
    model = _NetWithNorms()
    groups = get_param_groups(
        model,
        base_lr=0.1,
        weight_decay=1e-4,
        weight_decay_norm=0.0,
        weight_decay_bias=0.0,
        bias_lr_factor=2.0,
    )
    by_param = {}
    for group in groups:
        for param in group["params"]:
            assert param not in by_param, "a parameter appears in two groups"
            by_param[param] = (group["lr"], group["weight_decay"])
    trainable = [p for p in model.parameters() if p.requires_grad]  # model.parameters() already dedups
    assert set(by_param) == set(trainable)
    assert model.stem.weight not in by_param
    assert by_param[model.conv.weight] == (0.1, 1e-4)
    assert by_param[model.head.weight] == (0.1, 1e-4)
    assert by_param[model.conv.bias] == (0.2, 0.0)
    assert by_param[model.bn.weight] == (0.1, 0.0)
    assert by_param[model.gn.bias] == (0.2, 0.0)
    # weight_decay_bias=None means "like the other weights"; norm parameters keep their own decay
    groups = get_param_groups(model, 0.1, 1e-4, weight_decay_norm=0.0, weight_decay_bias=None)
    decay = {p: g["weight_decay"] for g in groups for p in g["params"]}
    assert decay[model.conv.bias] == 1e-4 and decay[model.bn.bias] == 0.0


def test_build_optimizer_reads_solver():
    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(["BASE_LR", 0.3, "MOMENTUM", 0.8, "NESTEROV", True, "WEIGHT_DECAY", 4e-5])
    optimizer = build_optimizer(cfg, _NetWithNorms())
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 and g["nesterov"] for g in optimizer.param_groups)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {4e-5, 0.0}
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(cfg, frozen)


def test_build_optimizer_adamw_keeps_param_groups():
    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(["OPTIMIZER", "AdamW", "BASE_LR", 1e-3, "WEIGHT_DECAY", 0.05])
    model = _NetWithNorms()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {p: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    # decoupled decay on conv weights only; norms and biases keep theirs (0)
    assert decay[model.conv.weight] == 0.05 and decay[model.bn.weight] == 0.0 and decay[model.conv.bias] == 0.0
    # first AdamW step moves every weight by about lr whatever its gradient's scale
    model.conv.weight.grad = torch.full_like(model.conv.weight, 1e3)
    before = model.conv.weight.detach().clone()
    optimizer.step()
    step = (before * (1 - 1e-3 * 0.05) - model.conv.weight.detach()).abs()
    assert torch.allclose(step, torch.full_like(step, 1e-3), rtol=1e-3)
    cfg.SOLVER.OPTIMIZER = "Adam"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER 'Adam'.*SGD, AdamW"):
        build_optimizer(cfg, model)


# Gradients: weight [30, 40] (norm 50), bias [0.5] (norm 0.5); total norm about 50.0025.
@pytest.mark.parametrize(
    "clip_type, expected_weight, expected_bias",
    [
        ("value", [-1.0, -1.0], [-0.5]),
        # detectron2's "norm": each parameter clipped on its own, so the small bias gradient is kept.
        ("norm", [-0.6, -0.8], [-0.5]),
        # "full_model": one scale for all gradients, so the bias gradient shrinks too.
        ("full_model", [-30 / 50.0025, -40 / 50.0025], [-0.5 / 50.0025]),
    ],
)
def test_gradient_clipping_matches_detectron2(clip_type, expected_weight, expected_bias):
    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(["BASE_LR", 1.0, "MOMENTUM", 0.0, "WEIGHT_DECAY", 0.0, "WEIGHT_DECAY_BIAS", 0.0])
    cfg.SOLVER.CLIP_GRADIENTS.merge_from_list(["ENABLED", True, "CLIP_TYPE", clip_type, "CLIP_VALUE", 1.0])
    model = nn.Linear(2, 1)
    nn.init.zeros_(model.weight)
    nn.init.zeros_(model.bias)
    optimizer = build_optimizer(cfg, model)
    model.weight.grad = torch.tensor([[30.0, 40.0]])
    model.bias.grad = torch.tensor([0.5])
    optimizer.step()
    assert model.weight.detach().flatten().tolist() == pytest.approx(expected_weight, rel=1e-5)
    assert model.bias.detach().tolist() == pytest.approx(expected_bias, rel=1e-5)


def test_gradient_clipping_rejects_unknown_type():
    with pytest.raises(ValueError, match="CLIP_TYPE 'total'"):
        add_gradient_clipping(torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1), "total", 1.0)


# ---------------------------------------------------------------------------- checkpoints
def _checkpointer(tmp_path, model, keep_last=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return Checkpointer(model, tmp_path, optimizer, config="SOLVER:\n  BASE_LR: 0.1\n", keep_last=keep_last)


def test_checkpoint_contents_rotation_and_pointer(tmp_path):
    model = nn.Linear(3, 2)
    checkpointer = _checkpointer(tmp_path, model, keep_last=2)
    for iteration in (2, 4, 6):
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    checkpointer.save("model_final", iteration=8)
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["model_0000004.pth", "model_0000006.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files
    checkpoint = safe_torch_load(tmp_path / "model_final.pth")  # weights_only=True
    assert set(checkpoint) >= {"model", "optimizer", "iteration", "config", "rng"}
    assert checkpoint["iteration"] == 8 and checkpoint["config"].startswith("SOLVER")
    assert set(checkpoint["rng"][0]) >= {"torch", "numpy", "python"}


def test_rng_states_are_restored(tmp_path):
    checkpointer = _checkpointer(tmp_path, nn.Linear(2, 2))
    import random

    import numpy as np

    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    checkpointer.save("model_0000001", iteration=1)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(10), np.random.rand(10), random.random()
    assert checkpointer.resume_or_load(None, resume=True)["iteration"] == 1
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_corrupt_last_checkpoint_falls_back_to_previous(tmp_path, caplog):
    model = nn.Linear(3, 2)
    checkpointer = _checkpointer(tmp_path, model)
    saved = {}
    for iteration in (2, 4):
        with torch.no_grad():
            model.weight.fill_(float(iteration))
        saved[iteration] = model.weight.detach().clone()
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    newest = tmp_path / "model_0000004.pth"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated mid-write

    restored = nn.Linear(3, 2)
    with caplog.at_level(logging.ERROR):
        data = _checkpointer(tmp_path, restored).resume_or_load(None, resume=True)
    assert data["iteration"] == 2
    assert torch.equal(restored.weight, saved[2])
    assert "model_0000004.pth" in caplog.text and "truncated" in caplog.text

    (tmp_path / "model_0000002.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        _checkpointer(tmp_path, nn.Linear(3, 2)).resume_or_load(None, resume=True)


def test_pointer_to_a_deleted_checkpoint_falls_back(tmp_path, caplog):
    checkpointer = _checkpointer(tmp_path, nn.Linear(3, 2))
    for iteration in (2, 4):
        checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
    (tmp_path / "model_0000004.pth").unlink()
    with caplog.at_level(logging.ERROR):
        assert _checkpointer(tmp_path, nn.Linear(3, 2)).resume_or_load(None, resume=True)["iteration"] == 2
    assert "checkpoint not found" in caplog.text


def test_load_weights_only_strips_ddp_prefix_and_skips_mismatched_shapes(tmp_path, caplog):
    source = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = tmp_path / "weights.pth"
    torch.save({"model": state, "iteration": 9}, path)
    target = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5))  # another number of classes
    with caplog.at_level(logging.WARNING):
        data = Checkpointer(target, tmp_path / "run").resume_or_load(path, resume=False)
    assert data == {}  # a weights load starts at iteration 0
    assert torch.equal(target[0].weight, source[0].weight)
    assert "1.weight" in caplog.text
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="shufflenet_det.weights"):
        Checkpointer(target, tmp_path / "run").resume_or_load(path, resume=False)


def test_resume_into_another_model_is_a_clear_error(tmp_path):
    _checkpointer(tmp_path, nn.Linear(3, 2)).save("model_0000001", iteration=1)
    from shufflenet_det.engine import EngineError

    with pytest.raises(EngineError, match="does not fit this model"):
        _checkpointer(tmp_path, nn.Linear(3, 7)).resume_or_load(None, resume=True)


# ---------------------------------------------------------------------------- trainer pieces
def test_move_to_device_walks_containers():
    Pair = namedtuple("Pair", "a b")
    batch = {"images": [torch.ones(1, 3, 4, 4)], "meta": Pair(torch.zeros(2), "name"), "id": 7}
    moved = move_to_device(batch, "cpu", channels_last=True)
    assert moved["images"][0].is_contiguous(memory_format=torch.channels_last)
    assert isinstance(moved["meta"], Pair) and moved["meta"].b == "name" and moved["id"] == 7


def test_trainer_with_loss_fn_amp_on_cpu_and_metrics(tmp_path, caplog):
    """Classification style: the model returns logits and a loss_fn makes the loss dict."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    batches = [(torch.randn(6, 4), torch.randint(0, 3, (6,))) for _ in range(3)]  # finite: restarted
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(net, batch):
        images, labels = batch
        return {"loss_cls": nn.functional.cross_entropy(net(images), labels)}

    from shufflenet_det.engine import PeriodicWriter
    from shufflenet_det.engine.writers import ConsoleWriter, TensorboardWriter

    writers = [ConsoleWriter(7), JSONWriter(tmp_path / "metrics.json", 2), TensorboardWriter(tmp_path, 2)]
    hooks = [PeriodicWriter(writers, period=2)]
    with caplog.at_level(logging.INFO):
        trainer = Trainer(
            model, batches, optimizer, loss_fn=loss_fn, max_iter=7, hooks=hooks, amp_enabled=True
        )
        trainer.train()
    assert "AMP runs on CUDA only" in caplog.text and "iter: 6/7" in caplog.text
    assert "Ran 7 iterations in" in caplog.text and "waiting for data:" in caplog.text
    assert trainer.status == "finished" and trainer.iter == 7
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [line["iteration"] for line in lines] == [2, 4, 6, 7]
    for line in lines:
        assert {"total_loss", "loss_cls", "lr", "time", "data_time"} <= set(line)
        assert line["lr"] == 0.1 and line["total_loss"] == pytest.approx(line["loss_cls"])
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_an_interrupted_run_logs_its_last_iteration_once():
    import os
    import signal

    from shufflenet_det.engine import EventWriter, HookBase, PeriodicWriter, TrainingInterrupted

    class Recorder(EventWriter):
        def __init__(self):
            self.iterations = []

        def write(self, storage):
            self.iterations.append(storage.iter)

    class SignalAt(HookBase):
        def __init__(self, iteration):
            self.iteration = iteration

        def before_step(self):
            if self.trainer.iter + 1 == self.iteration:
                os.kill(os.getpid(), signal.SIGTERM)  # handled: stop after this iteration

    model = nn.Linear(2, 1)
    batches = [torch.randn(4, 2)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for stop_at, expected in ((4, [2, 4]), (5, [2, 4, 5])):
        recorder = Recorder()
        hooks = [SignalAt(stop_at), PeriodicWriter([recorder], period=2)]
        trainer = Trainer(model, batches, optimizer, loss_fn=lambda net, x: net(x).pow(2).mean(), max_iter=9, hooks=hooks)
        with pytest.raises(TrainingInterrupted, match=f"after iteration {stop_at}"):
            trainer.train()
        assert recorder.iterations == expected


def test_json_writer_drops_lines_after_resume_point(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(
        "".join(json.dumps({"iteration": i, "loss": 1.0}) + "\n" for i in (2, 4, 6)) + '{"iteration": 8, "lo'
    )
    writer = JSONWriter(path, window=1)
    writer.start(4)
    storage = EventStorage(5)
    storage.put_scalar("loss", 0.5)
    writer.write(storage)
    writer.close()
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [2, 4, 5]


def test_flatten_results():
    results = {"bbox": {"AP": 30.5, "AP50": torch.tensor(50.0), "per_class": "table"}, "ok": True, "n": 3}
    assert flatten_results(results) == {"bbox/AP": 30.5, "bbox/AP50": 50.0, "n": 3.0}


# ---------------------------------------------------------------------------- setup
def _args(*argv):
    return argument_parser().parse_args([str(arg) for arg in argv])


def test_unwritable_output_dir_is_reported_at_start(tmp_path, capsys, monkeypatch):
    # A logger set up by an earlier in-process run (e.g. tests/test_d2.py) would take the message.
    monkeypatch.setattr(logging.getLogger("shufflenet_det"), "handlers", [])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(blocker / "run")
    with pytest.raises(SetupError, match="cannot create OUTPUT_DIR"):
        default_setup(cfg, _args())
    # through launch, as a tool runs it: one line, exit status 2, no traceback
    code = run_in_process(["OUTPUT_DIR", blocker / "run"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot create OUTPUT_DIR") and "Traceback" not in err


def test_free_disk_check(tmp_path):
    with pytest.raises(SetupError, match="MIN_FREE_DISK_GB"):
        check_output_dir(str(tmp_path / "run"), min_free_gb=1e12)
    check_output_dir(str(tmp_path / "run"), min_free_gb=0.0)


def test_existing_run_needs_resume_or_overwrite(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert run_in_process(["OUTPUT_DIR", run, "SOLVER.MAX_ITER", 4]) == 0
    assert run_in_process(["OUTPUT_DIR", run, "SOLVER.MAX_ITER", 4]) == 2
    assert "holds a training run already" in capsys.readouterr().out
    assert run_in_process(["--overwrite", "OUTPUT_DIR", run, "SOLVER.MAX_ITER", 2]) == 0
    assert not (tmp_path / "run" / "model_0000004.pth").exists()  # the old run's files were removed
    assert safe_torch_load(tmp_path / "run" / "model_final.pth")["iteration"] == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["SOLVER.MAX_ITER", 0], "SOLVER.MAX_ITER must be positive, got 0"),
        (["SOLVER.BASE_LR", -1.0], "SOLVER.BASE_LR must be a finite number >= 0, got -1.0"),
        (["SOLVER.IMS_PER_BATCH", 0], "SOLVER.IMS_PER_BATCH (the global batch) must be positive, got 0"),
        (["DATALOADER.NUM_WORKERS", -1], "DATALOADER.NUM_WORKERS must be 0 (load in the main process) or more"),
        (["MODEL.DEVICE", "gpu"], "MODEL.DEVICE 'gpu' is not a device: use cpu, cuda or cuda:N"),
        (["MODEL.DEVICE", "meta"], "MODEL.DEVICE 'meta' is not supported"),
    ],
)
def test_bad_run_settings_stop_before_anything_is_written(tmp_path, capsys, overrides, message):
    run = tmp_path / "run"
    assert run_in_process(["OUTPUT_DIR", run, *overrides]) == 2
    captured = capsys.readouterr()
    assert message in captured.out + captured.err and "Traceback" not in captured.err
    assert not run.exists()


def test_bad_solver_choice_is_one_line(tmp_path, capsys):
    assert run_in_process(["OUTPUT_DIR", tmp_path / "run", "SOLVER.WARMUP_METHOD", "cosine"]) == 2
    captured = capsys.readouterr()
    assert "unknown SOLVER.WARMUP_METHOD 'cosine': expected one of linear, constant" in captured.out + captured.err
    assert "Traceback" not in captured.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_reported(tmp_path, capsys):
    assert run_in_process(["OUTPUT_DIR", tmp_path / "run", "MODEL.DEVICE", "cuda"]) == 2
    captured = capsys.readouterr()
    assert "no CUDA device is visible: set MODEL.DEVICE cpu" in captured.out + captured.err


def test_a_new_run_keeps_other_files_and_its_own_config(tmp_path, capsys):
    # metrics without a checkpoint: a run stopped early, or someone's file; a new run would append to it.
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"mine": 1}\n')
    assert run_in_process(["OUTPUT_DIR", run]) == 2
    captured = capsys.readouterr()
    assert "holds a training run already (metrics.json)" in captured.out + captured.err
    assert (run / "metrics.json").read_text() == '{"mine": 1}\n'
    # The --config file is the config.yaml a new run in that folder writes.
    other = tmp_path / "other"
    other.mkdir()
    config = other / "config.yaml"
    config.write_text("# my settings\n")
    assert run_in_process(["--config", config, "OUTPUT_DIR", other]) == 2
    captured = capsys.readouterr()
    assert f"--config is {config}, which a new run" in captured.out + captured.err
    assert config.read_text() == "# my settings\n"


def test_bad_process_layout_is_reported(capsys):
    assert launch(print, 0) == 2
    assert launch(print, 4, num_machines=2) == 2
    err = capsys.readouterr().err
    assert "invalid process layout: --num-gpus 0" in err and "--dist-url tcp://HOST:PORT" in err


def test_per_device_batch_size_must_divide(monkeypatch):
    build_module = importlib.import_module("shufflenet_det.data.build")
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 16
    monkeypatch.setattr(build_module, "get_world_size", lambda: 3)
    with pytest.raises(ConfigError, match="IMS_PER_BATCH=16"):
        per_device_batch_size(cfg)
    monkeypatch.setattr(build_module, "get_world_size", lambda: 4)
    assert per_device_batch_size(cfg) == 4


def test_uneven_global_batch_is_a_setup_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(importlib.import_module("shufflenet_det.data.build"), "get_world_size", lambda: 3)
    assert run_in_process(["OUTPUT_DIR", tmp_path / "run", "SOLVER.IMS_PER_BATCH", 8]) == 2
    captured = capsys.readouterr()
    assert "IMS_PER_BATCH=8 (the global batch) must be a positive multiple of the number of processes (3)" in (
        captured.out + captured.err
    )


def test_toy_model_learns():
    """Sanity check of the toy task the resume tests rely on: the loss does go down, reproducibly."""
    set_deterministic(0)
    data = toy_data()
    model = ToyRegressor()
    first_weights = model.fc1.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    first = model(data)["loss_mse"].item()
    Trainer(model, [data], optimizer, max_iter=30).train()
    assert model(data)["loss_mse"].item() < 0.2 * first
    set_deterministic(0)
    assert torch.equal(ToyRegressor().fc1.weight, first_weights)  # same seed, same initialization


def test_reference_world_size_scales_batch_rate_and_iterations():
    from shufflenet_det.engine.defaults import scale_to_world_size

    cfg = get_cfg()
    cfg.SOLVER.merge_from_list(["IMS_PER_BATCH", 16, "BASE_LR", 0.02, "MAX_ITER", 90000, "STEPS", (60000, 80000),
                                "WARMUP_ITERS", 1000, "CHECKPOINT_PERIOD", 5000, "REFERENCE_WORLD_SIZE", 8])
    cfg.TEST.EVAL_PERIOD = 10000
    cfg.freeze()
    scale_to_world_size(cfg, 4)
    solver = cfg.SOLVER
    assert (solver.IMS_PER_BATCH, solver.MAX_ITER, solver.STEPS) == (8, 180000, (120000, 160000))
    assert solver.BASE_LR == pytest.approx(0.01)
    assert (solver.WARMUP_ITERS, solver.CHECKPOINT_PERIOD, cfg.TEST.EVAL_PERIOD) == (2000, 10000, 20000)
    assert solver.REFERENCE_WORLD_SIZE == 4 and cfg.is_frozen()
    scale_to_world_size(cfg, 4)  # a config saved after scaling is not scaled again
    assert (solver.IMS_PER_BATCH, solver.MAX_ITER) == (8, 180000)

    unscaled = get_cfg()
    scale_to_world_size(unscaled, 4)  # REFERENCE_WORLD_SIZE 0: nothing changes
    assert (unscaled.SOLVER.IMS_PER_BATCH, unscaled.SOLVER.BASE_LR) == (get_cfg().SOLVER.IMS_PER_BATCH, get_cfg().SOLVER.BASE_LR)

    odd = get_cfg()
    odd.SOLVER.REFERENCE_WORLD_SIZE = 3
    with pytest.raises(SetupError, match="must be positive and divide SOLVER.IMS_PER_BATCH 16"):
        scale_to_world_size(odd, 2)
