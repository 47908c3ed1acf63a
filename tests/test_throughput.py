"""The GPU throughput benchmark's inputs and options (the timing itself runs on a GPU: docs/engine.md)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from shufflenet_det.detection.throughput import Variant, random_batch


def benchmark_main(argv):
    tool = Path(__file__).resolve().parents[1] / "tools" / "benchmark_training.py"
    spec = importlib.util.spec_from_file_location("benchmark_training", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_variant_names_round_trip_and_default_to_auto():
    assert Variant.parse("dense+cl+compile") == Variant("dense", True, True)
    assert Variant.parse("recompute+cl") == Variant("auto", True, False, True)
    assert str(Variant.parse("recompute+cl+modules")) == "modules+cl+recompute"
    assert Variant.parse("cl") == Variant("auto", True, False)
    assert str(Variant.parse("compile+folded")) == "folded+compile"
    for bad in ("fast", "dense+folded", "", "dense+cl+x"):
        with pytest.raises(ValueError, match="bad variant"):
            Variant.parse(bad)


@pytest.mark.parametrize("name, top", [("shufflenet_1x", 255.0), ("tv_mobilenet_v3_fpn", 1.0)])
def test_random_batch_has_valid_boxes_in_each_models_value_range(name, top):
    images, targets = random_batch(name, 4, torch.device("cpu"), seed=1)
    assert len(images) == len(targets) == 4
    for image, target in zip(images, targets):
        assert image.shape == (3, 480, 640) and image.max() <= top and image.max() > top / 2
        boxes = target["boxes"]
        assert 1 <= len(boxes) <= 10 and len(target["labels"]) == len(boxes)
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert boxes.min() >= 0 and (boxes[:, 2] < 640).all() and (boxes[:, 3] < 480).all()
        assert target["labels"].min() >= 1 and target["labels"].max() <= 80
    again, _ = random_batch(name, 4, torch.device("cpu"), seed=1)
    assert torch.equal(images[0], again[0])


def test_tool_rejects_bad_arguments(tmp_path, capsys):
    assert benchmark_main(["--device", "cpu", "--variants", "turbo"]) == 2
    assert "bad variant 'turbo'" in capsys.readouterr().err
    assert benchmark_main(["--device", "cpu", "--models", "resnet"]) == 2
    assert "unknown model(s) resnet" in capsys.readouterr().err
    existing = tmp_path / "out.json"
    existing.write_text("{}")
    assert benchmark_main(["--device", "cpu", "--json", str(existing)]) == 2
    assert existing.read_text() == "{}"


@pytest.fixture
def small_inputs(monkeypatch):
    """Shrink the benchmark's image and resize sizes so a CPU step takes a fraction of a second."""
    from shufflenet_det.detection import benchmark, throughput

    for module in (benchmark, throughput):
        monkeypatch.setattr(module, "IMAGE_SIZE", (96, 128))
        monkeypatch.setattr(module, "MIN_SIZE", 96)
        monkeypatch.setattr(module, "MAX_SIZE", 128)


def test_benchmark_measures_each_variant_and_skips_a_failing_one(small_inputs, monkeypatch):
    from shufflenet_det.detection import throughput

    reported = []
    original = throughput.build_training_model

    def build(name, variant, device, rois_per_image=512, overrides=()):
        if variant.conv_impl == "modules":
            raise RuntimeError("simulated out of memory")
        return original(name, variant, device, rois_per_image=32, overrides=overrides)

    monkeypatch.setattr(throughput, "build_training_model", build)
    results = throughput.benchmark_throughput(
        ["shufflenet_0.5x"], [Variant.parse("modules"), Variant.parse("folded+cl")], torch.device("cpu"),
        batch=2, iterations=1, warmup=0, amp_dtype=None, report=reported.append,
    )
    assert [r.variant for r in results] == ["folded+cl"] and reported == results
    result = results[0]
    assert result.batch == 2 and result.train_images_per_s > 0 and result.infer_images_per_s > 0
    assert result.train_images_per_s == pytest.approx(1000 * 2 / result.train_ms_per_iter, rel=0.01)
    table = throughput.markdown_table(results)
    assert "| shufflenet_0.5x | folded+cl |" in table and table.count("\n") == 2
    training_only = throughput.benchmark_throughput(
        ["shufflenet_0.5x"], [Variant.parse("folded")], torch.device("cpu"), batch=1, iterations=1, warmup=0,
        amp_dtype=None, inference=False,
    )[0]
    assert training_only.infer_images_per_s is None and training_only.train_images_per_s > 0
    assert math.isnan(training_only.train_peak_gib)  # CPU memory is measured only when asked for
    assert "| - | - |" in throughput.markdown_table([training_only])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak resident memory needs Linux's /proc")
def test_cpu_peak_memory_follows_the_live_tensors_of_the_timed_steps():
    from shufflenet_det.detection import throughput
    from shufflenet_det.utils.host_memory import resident_bytes, track_freed_memory

    assert track_freed_memory()
    baseline = resident_bytes()
    weight = torch.nn.Parameter(torch.ones(1))
    kept = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = weight

        def forward(self, images, targets):
            big = torch.ones(64, 2**20) * self.weight  # 256 MiB alive during the step, saved for backward
            kept.append(big.shape)
            return {"loss": big.sum() * 1e-9}

    _, peak = throughput.measure_training(Model(), [torch.zeros(1)], [{}], iterations=1, warmup=1,
                                          amp_dtype=None, baseline_bytes=baseline)
    assert 0.25 <= peak < 0.75 and len(kept) == 2


def test_profile_names_the_costliest_operators(small_inputs):
    from shufflenet_det.detection.throughput import profile_training

    table = profile_training("shufflenet_0.5x", Variant.parse("folded"), torch.device("cpu"), batch=1, steps=1,
                             amp_dtype=None)
    assert "convolution" in table and "Self CPU" in table


def test_overrides_change_our_detectors_recipe_and_bad_ones_are_reported(small_inputs, capsys):
    from shufflenet_det.detection.throughput import build_training_model

    model = build_training_model("shufflenet_0.5x", Variant("folded"), torch.device("cpu"),
                                 overrides=["MODEL.RPN.PRE_NMS_TOPK_TRAIN", 2000])
    assert model.rpn._pre_nms_top_n["training"] == 2000
    assert benchmark_main(["--device", "cpu", "--models", "shufflenet_0.5x", "MODEL.RPN.NO_SUCH_KEY", "1"]) == 2
    error = capsys.readouterr().err
    assert "MODEL.RPN.NO_SUCH_KEY" in error and "unknown model" not in error
    assert benchmark_main(["--device", "cpu", "--mult-adds", "--models", "shufflenet_0.5x",
                           "SHUFFLENET_DET.ROI_ALIGN_IMPL", "fast"]) == 2
    assert "ROI_ALIGN_IMPL must be one of" in capsys.readouterr().err
    assert benchmark_main(["--device", "cpu", "--models", "tv_mobilenet_v3_fpn", "MODEL.RPN.NMS_THRESH", "0.6"]) == 2
    assert "none of --models" in capsys.readouterr().err


def test_mult_adds_per_image_by_part_match_the_traced_count_of_each_part(small_inputs):
    from shufflenet_det.analysis import count_mult_adds
    from shufflenet_det.detection.throughput import build_training_model, mult_adds_per_image

    rois = 24
    training = mult_adds_per_image("shufflenet_0.5x", training=True, rois_per_image=rois)
    model = build_training_model("shufflenet_0.5x", Variant("modules"), torch.device("cpu"))
    head, rpn_head = model.roi_heads.box_head, model.rpn.head
    # Every training image brings exactly ``rois`` sampled RoIs through the per-RoI head.
    assert training["roi_heads.box_head"] == rois * count_mult_adds(head, (14, 14), in_channels=480 // 2)
    # The RPN head: a 3x3 conv and two 1x1 convs on the stride-16 map of the 96x128 test image.
    channels, anchors, positions = rpn_head.conv[0][0].in_channels, 15, (96 // 16) * (128 // 16)
    assert training["rpn.head"] == positions * (channels * channels * 9 + channels * anchors * 5)
    assert training["roi_heads.box_predictor"] == rois * head.out_channels * (81 + 4 * 81)
    assert set(training) == {"backbone.body", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor"}
    inference = mult_adds_per_image("shufflenet_0.5x", training=False)
    assert inference["backbone.body"] == training["backbone.body"] and inference["rpn.head"] == training["rpn.head"]
    proposals = inference["roi_heads.box_head"] // (training["roi_heads.box_head"] // rois)
    assert 0 < proposals <= 1000 and inference["roi_heads.box_head"] % proposals == 0


def test_tool_prints_mult_adds_per_part(small_inputs, capsys):
    assert benchmark_main(["--device", "cpu", "--mult-adds", "--models", "shufflenet_0.5x",
                           "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("shufflenet_0.5x training: ") and "roi_heads.box_head" in lines[-2]
    assert lines[-1].startswith("shufflenet_0.5x inference: ")
