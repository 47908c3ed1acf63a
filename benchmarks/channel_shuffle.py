"""The channel shuffle as torch's ``channel_shuffle`` operator (what the models run) against the paper's
reshape-transpose-reshape, alternating in one process: ShuffleNet trunks in eager inference (NCHW) and,
with ``--train``, the quickstart detector's training step (channels_last, where the reshapes return NCHW
tensors and the per-RoI head's convolutions slow down).

    PYTHONPATH=. python -m benchmarks.channel_shuffle [--models ...] [--sizes 224x224,480x640] [--train]
"""

from __future__ import annotations

import argparse
from typing import Callable, List

import torch

import shufflenet_det.modeling.layers as layers
from shufflenet_det import build_model
from shufflenet_det.utils.text_table import format_table

from .common import machine_info, time_interleaved


def reshape_shuffle(x: torch.Tensor, groups: int, inverse: bool = False) -> torch.Tensor:
    batch, channels, height, width = x.shape
    shape = (channels // groups, groups) if inverse else (groups, channels // groups)
    return x.view(batch, *shape, height, width).transpose(1, 2).reshape(batch, channels, height, width)


FORMS = {"torch operator": layers.channel_shuffle, "reshapes": reshape_shuffle}


def with_form(form: Callable, call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        layers.channel_shuffle = form
        try:
            return call()
        finally:
            layers.channel_shuffle = FORMS["torch operator"]
    return run


def compare(name: str, call: Callable[[], object], runs: int, warmup: int) -> List[object]:
    timings = time_interleaved({form: with_form(fn, call) for form, fn in FORMS.items()}, runs, warmup)
    ratios = sorted(a / b for a, b in zip(timings["torch operator"].wall_ms, timings["reshapes"].wall_ms))
    return [name, timings["torch operator"].median_ms, timings["reshapes"].median_ms, ratios[len(ratios) // 2]]


def quickstart_step() -> Callable[[], object]:
    from shufflenet_det.config import load_config
    from shufflenet_det.data import build_detection_train_loader
    from shufflenet_det.detection import build_detector
    from shufflenet_det.detection.runner import detection_losses

    cfg = load_config("quickstart", ["DATALOADER.NUM_WORKERS", "0"])
    model = build_detector(cfg).train().to(memory_format=torch.channels_last)
    batch = next(iter(build_detection_train_loader(cfg)))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        sum(detection_losses(model, batch).values()).backward()
    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="shufflenet_v1_x0_5_g3,shufflenet_v1_x1_0_g3")
    parser.add_argument("--sizes", default="224x224,480x640", help="comma-separated HxW")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train", action="store_true", help="also time the quickstart detector's training step")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows: List[List[object]] = []
    for arch in args.models.split(","):
        trunk = build_model(arch).eval()
        for size in args.sizes.split(","):
            image = torch.randn(1, 3, *map(int, size.split("x")))
            with torch.inference_mode():
                rows.append(compare(f"{arch} {size} eager", lambda: trunk(image), args.runs, args.warmup))
    if args.train:
        rows.append(compare("quickstart detector training step", quickstart_step(), args.runs, args.warmup))
    print(machine_info(threads=1))
    print(format_table(["what", "torch operator ms", "reshapes ms", "median paired ratio"], rows, digits=3))


if __name__ == "__main__":
    main()
