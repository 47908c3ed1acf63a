"""The benchmark scripts in benchmarks/: their inputs, options, records and tables. No test asserts a time:
each checks what a defect would change (counts, order, agreement between runtimes, arithmetic)."""

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks import channel_shuffle, detector_latency, drawn_boxes, table8, training_throughput
from benchmarks.common import time_interleaved
from benchmarks.training_throughput import Variant, random_batch


def benchmark_main(argv):
    return training_throughput.main(argv)


def test_time_interleaved_alternates_candidates_and_drops_warmup():
    calls = []
    after = []
    timings = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, runs=3, warmup=2,
        after_warmup=lambda: after.append(len(calls)),
    )
    assert calls == ["a", "b"] * 5
    assert after == [4]  # once, after the two warm-up rounds
    assert [len(timings[name].wall_ms) for name in "ab"] == [3, 3]
    assert [len(timings[name].cpu_ms) for name in "ab"] == [3, 3]
    with pytest.raises(ValueError, match="runs >= 1"):
        time_interleaved({"a": lambda: None}, runs=0, warmup=0)


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
    for module in (detector_latency, training_throughput):
        monkeypatch.setattr(module, "IMAGE_SIZE", (96, 128))
        monkeypatch.setattr(module, "MIN_SIZE", 96)
        monkeypatch.setattr(module, "MAX_SIZE", 128)


def test_benchmark_measures_each_variant_and_skips_a_failing_one(small_inputs, monkeypatch):
    reported = []
    original = training_throughput.build_training_model

    def build(name, variant, device, rois_per_image=512, overrides=()):
        if variant.conv_impl == "modules":
            raise RuntimeError("simulated out of memory")
        return original(name, variant, device, rois_per_image=32, overrides=overrides)

    monkeypatch.setattr(training_throughput, "build_training_model", build)
    results = training_throughput.benchmark_throughput(
        ["shufflenet_0.5x"], [Variant.parse("modules"), Variant.parse("folded+cl")], torch.device("cpu"),
        batch=2, iterations=1, warmup=0, amp_dtype=None, report=reported.append,
    )
    assert [r.variant for r in results] == ["folded+cl"] and reported == results
    result = results[0]
    assert result.batch == 2 and result.infer_images_per_s is not None and result.infer_batch1_ms is not None
    assert result.train_images_per_s == pytest.approx(1000 * 2 / result.train_ms_per_iter, rel=0.01)
    table = training_throughput.results_table(results)
    assert table.splitlines()[2].startswith("| shufflenet_0.5x | folded+cl |") and table.count("\n") == 2
    training_only = training_throughput.benchmark_throughput(
        ["shufflenet_0.5x"], [Variant.parse("folded")], torch.device("cpu"), batch=1, iterations=1, warmup=0,
        amp_dtype=None, inference=False,
    )[0]
    assert training_only.infer_images_per_s is None and training_only.infer_batch1_ms is None
    assert math.isnan(training_only.train_peak_gib)  # CPU memory is measured only when asked for
    assert table_cells(training_throughput.results_table([training_only]))[2][-3:] == ["-", "-", "-"]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak resident memory needs Linux's /proc")
def test_cpu_peak_memory_follows_the_live_tensors_of_the_timed_steps():
    from benchmarks.host_memory import resident_bytes, track_freed_memory

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

    _, peak = training_throughput.measure_training(Model(), [torch.zeros(1)], [{}], iterations=1, warmup=1,
                                          amp_dtype=None, baseline_bytes=baseline)
    assert 0.25 <= peak < 0.75 and len(kept) == 2


def test_profile_names_the_costliest_operators(small_inputs):
    table = training_throughput.profile_training("shufflenet_0.5x", Variant.parse("folded"), torch.device("cpu"), batch=1, steps=1,
                             amp_dtype=None)
    assert "convolution" in table and "Self CPU" in table


def test_overrides_change_our_detectors_recipe_and_bad_ones_are_reported(small_inputs, capsys):
    model = training_throughput.build_training_model("shufflenet_0.5x", Variant("folded"), torch.device("cpu"),
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

    rois = 24
    training = training_throughput.mult_adds_per_image("shufflenet_0.5x", training=True, rois_per_image=rois)
    model = training_throughput.build_training_model("shufflenet_0.5x", Variant("modules"), torch.device("cpu"))
    head, rpn_head = model.roi_heads.box_head, model.rpn.head
    # Every training image brings exactly ``rois`` sampled RoIs through the per-RoI head.
    assert training["roi_heads.box_head"] == rois * count_mult_adds(head, (14, 14), in_channels=480 // 2)
    # The RPN head: a 3x3 conv and two 1x1 convs on the stride-16 map of the 96x128 test image.
    channels, anchors, positions = rpn_head.conv[0][0].in_channels, 15, (96 // 16) * (128 // 16)
    assert training["rpn.head"] == positions * (channels * channels * 9 + channels * anchors * 5)
    assert training["roi_heads.box_predictor"] == rois * head.out_channels * (81 + 4 * 81)
    assert set(training) == {"backbone.body", "rpn.head", "roi_heads.box_head", "roi_heads.box_predictor"}
    inference = training_throughput.mult_adds_per_image("shufflenet_0.5x", training=False)
    assert inference["backbone.body"] == training["backbone.body"] and inference["rpn.head"] == training["rpn.head"]
    proposals = inference["roi_heads.box_head"] // (training["roi_heads.box_head"] // rois)
    assert 0 < proposals <= 1000 and inference["roi_heads.box_head"] % proposals == 0


def test_tool_prints_mult_adds_per_part(small_inputs, capsys):
    assert benchmark_main(["--device", "cpu", "--mult-adds", "--models", "shufflenet_0.5x",
                           "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("shufflenet_0.5x training: ") and "roi_heads.box_head" in lines[-2]
    assert lines[-1].startswith("shufflenet_0.5x inference: ")


# ---------------------------------------------------------------------------- latency benchmark


def table_cells(table):
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()]


# ---------------------------------------------------------------------------- detector latency


def test_detector_models_share_proposal_budget_and_input_size():
    for name in ("shufflenet_0.5x", "tv_mobilenet_v3_fpn"):
        model = detector_latency.build_benchmark_model(name, proposals=123, pre_nms=456)
        assert not model.training
        assert model.rpn._post_nms_top_n["testing"] == 123 and model.rpn._pre_nms_top_n["testing"] == 456
        assert model.rpn.score_thresh == 0.0 and model.roi_heads.score_thresh == 0.0
        assert model.transform.min_size == (600,) and model.transform.max_size == 1000
        assert model.roi_heads.box_predictor.cls_score.out_features == 81


def test_detector_latency_times_every_runtime_and_checks_they_agree(small_inputs):
    pytest.importorskip("onnxruntime")
    results = detector_latency.benchmark(["shufflenet_0.5x"], threads=1, runs=2, warmup=0, proposals=20,
                                         pre_nms=200, runtimes=("eager", "deploy", "onnx"))
    assert [r.runtime for r in results] == ["eager", "deploy", "onnx"]
    eager, deployed, exported = results
    assert eager.rois == deployed.rois == 20  # every proposal reaches the box predictor
    assert eager.max_box_difference is None
    for result in (deployed, exported):
        assert result.max_box_difference < 0.01 and result.max_score_difference < 1e-4
        assert result.median_ms >= result.min_ms
    assert set(eager.parts_median_ms) == set(detector_latency.PARTS)
    assert set(deployed.parts_median_ms) == set(detector_latency.PARTS)
    assert exported.parts_median_ms == {}  # one graph: no parts to time
    rows = table_cells(detector_latency.results_table(results))
    assert rows[0][:4] == ["model", "runtime", "params (M)", "RoIs"]
    assert rows[4][:4] == ["shufflenet_0.5x", "onnx", "1.0", "-"]  # the onnx graph has no RoI counter
    assert detector_latency.speed_ratios(results) == []  # no torchvision model to compare with


def test_detection_differences_match_boxes_of_the_same_class():
    class Fixed(torch.nn.Module):
        def __init__(self, boxes, labels, scores):
            super().__init__()
            self.output = {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels), "scores": torch.tensor(scores)}

        def forward(self, images):
            return [self.output]

    model = Fixed([[0.0, 0, 10, 10], [5, 5, 20, 20]], [1, 2], [0.9, 0.8])
    swapped = Fixed([[5.0, 5, 20, 21], [0, 0, 10, 10]], [2, 1], [0.75, 0.9])  # same detections, other order
    box, score = detector_latency.detection_differences(model, swapped, torch.zeros(3, 8, 8))
    assert box == pytest.approx(1.0) and score == pytest.approx(0.05)
    other_class = Fixed([[0.0, 0, 10, 10], [5, 5, 20, 20]], [1, 1], [0.9, 0.8])
    assert detector_latency.detection_differences(model, other_class, torch.zeros(3, 8, 8)) == (math.inf, math.inf)


def test_detector_latency_rejects_bad_input_in_one_line(tmp_path, capsys):
    assert detector_latency.main(["--models", "resnet50"]) == 2
    assert "unknown model(s) resnet50" in capsys.readouterr().err
    assert detector_latency.main(["--runtimes", "eager", "tensorrt"]) == 2
    error = capsys.readouterr().err.strip()
    assert "unknown runtime(s) tensorrt" in error and "\n" not in error
    assert detector_latency.main(["--roi-chunk", "0"]) == 2
    assert "roi chunk >= 1" in capsys.readouterr().err
    existing = tmp_path / "latency.json"
    existing.write_text("keep me")
    assert detector_latency.main(["--json", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_text() == "keep me"


# ---------------------------------------------------------------------------- Table 8 trunks


def test_summary_ratios_and_speedups():
    records = [
        {"model": model, "size": [224, 224], "backend": backend, "median_ms": ms, "min_ms": ms, "runs": 1}
        for model, backend, ms in [
            ("alexnet", "eager", 20.0), ("shufflenet_v1_x0_5_g3", "eager", 10.0),
            ("alexnet", "onnxruntime", 12.0), ("shufflenet_v1_x0_5_g3", "onnxruntime", 1.5),
        ]
    ]
    summary = table8.summarize(records)
    by_backend = {row["backend"]: row for row in summary["ratios"]}
    assert by_backend["onnxruntime"]["values"]["224x224"] == pytest.approx(8.0)
    assert by_backend["eager"]["paper"]["224x224"] == pytest.approx(184.0 / 15.2)
    speedups = {row["model"]: row["values"]["224x224"] for row in summary["speedups"]}
    assert speedups == {"alexnet": pytest.approx(20 / 12), "shufflenet_v1_x0_5_g3": pytest.approx(10 / 1.5)}
    for record in records:  # the fastest ONNX Runtime runs twice as fast as its median
        record["min_ms"] = record["median_ms"] / (2 if record["backend"] == "onnxruntime" else 1)
    report = table8.format_report(records)
    medians = report.split("Speedup over eager PyTorch (x), median runs")[1].split("fastest runs")[0]
    fastest = report.split("Speedup over eager PyTorch (x), fastest runs")[1]
    assert "6.67" in medians and "13.33" in fastest and "13.33" not in medians


def test_run_benchmark_records():
    pytest.importorskip("onnxruntime")
    records = table8.run_benchmark(["mobilenet_v1_x0_25"], [(64, 64)], ["eager", "onnxruntime"], runs=2,
                                   warmup=0, kernel_time=True)
    assert [(r["model"], r["size"], r["backend"], r["runs"]) for r in records] == [
        ("mobilenet_v1_x0_25", [64, 64], backend, 2) for backend in ("eager", "onnxruntime")
    ]
    assert all(r["median_ms"] >= r["min_ms"] for r in records)
    assert "kernel_ms" not in records[0] and "kernel_ms" in records[1]
    with pytest.raises(ValueError, match="unknown model"):
        table8.build_trunk("resnet50")
    with pytest.raises(ValueError, match="backend"):
        table8.run_benchmark(["alexnet"], [(64, 64)], ["tvm"])


def test_ort_ablation_covers_every_step():
    pytest.importorskip("onnxruntime")
    records = table8.ort_ablation(["shufflenet_v1_x0_25_g3"], [(64, 64)], runs=1, warmup=0)
    assert [r["step"] for r in records] == [step[0] for step in table8.ORT_STEPS]
    assert all(set(r) >= {"median_ms", "min_ms", "kernel_ms"} for r in records)


def test_table8_errors_and_json(tmp_path, capsys):
    assert table8.main(["--models", "shufflenet_v1_x0_5_g3,resnet50"]) == 2
    error = capsys.readouterr().err.strip()
    assert "unknown resnet50" in error and "\n" not in error
    assert table8.main(["--sizes", "224"]) == 2
    assert "HxW" in capsys.readouterr().err
    assert table8.main(["--variants", "--ablation"]) == 2
    assert "one of --variants and --ablation" in capsys.readouterr().err
    output = tmp_path / "bench.json"
    args = ["--models", "mobilenet_v1_x0_25", "--sizes", "64x64", "--runs", "1", "--warmup", "0",
            "--backends", "eager", "--json", str(output)]
    assert table8.main(args) == 0
    payload = json.loads(output.read_text())
    assert payload["records"][0]["model"] == "mobilenet_v1_x0_25" and payload["machine"]["threads"] == 1
    assert "Speedup" not in capsys.readouterr().out
    assert table8.main(args) == 2
    assert "already exists" in capsys.readouterr().err


def test_channel_shuffle_forms_agree_and_the_benchmark_restores_the_models_form(capsys):
    import shufflenet_det.modeling.layers as layers

    x = torch.randn(2, 12, 3, 5).contiguous(memory_format=torch.channels_last)
    for inverse in (False, True):
        expected = channel_shuffle.reshape_shuffle(x, 3, inverse)
        assert torch.equal(layers.channel_shuffle(x, 3, inverse), expected)
        assert not torch.equal(expected, x)
    assert layers.channel_shuffle(x, 3).is_contiguous(memory_format=torch.channels_last)
    original = layers.channel_shuffle
    channel_shuffle.main(["--models", "shufflenet_v1_x0_5_g3", "--sizes", "64x64", "--runs", "2", "--warmup", "0"])
    assert layers.channel_shuffle is original
    row = [line for line in capsys.readouterr().out.splitlines() if "64x64 eager" in line]
    assert len(row) == 1


def test_drawn_boxes_judges_each_image_as_a_user_would():
    objects = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 200.0, 220.0, 220.0]])  # one 100 px, one small
    labels = torch.tensor([1, 2])
    judge = drawn_boxes.judge_image
    # The large object boxed once with its name; the small one missed: still clean.
    assert judge(objects, labels, torch.tensor([[2.0, 0.0, 100.0, 98.0]]), torch.tensor([1]))["clean images"] == 1
    drawn = torch.tensor([
        [2.0, 0.0, 100.0, 98.0],      # right
        [0.0, 0.0, 100.0, 100.0],     # a second box on it: "on an object"
        [0.0, 0.0, 100.0, 100.0],     # another name on it: "on an object"
        [0.0, 50.0, 100.0, 100.0],    # its lower half: IoU 0.5, a right box again, so "on an object" too
        [0.0, 0.0, 30.0, 30.0],       # a corner: IoU 0.09, "background"
        [0.0, 0.0, 40.0, 40.0],       # a larger corner: IoU 0.16, "on a part"
        [200.0, 200.0, 220.0, 220.0], # the small object, right
        [300.0, 300.0, 350.0, 350.0], # background
    ])
    counts = judge(objects, labels, drawn, torch.tensor([1, 1, 3, 1, 1, 1, 2, 4]))
    assert counts["boxed 32px+"] == 1 and counts["boxed small"] == 1 and counts["clean images"] == 0
    assert (counts["other: on an object"], counts["other: on a part"], counts["other: background"]) == (3, 1, 2)
    # Named wrongly, the large object counts as missed and its box as another one on it.
    counts = judge(objects, labels, drawn[:1], torch.tensor([2]))
    assert counts["missed 32px+"] == 1 and counts["missed small"] == 1 and counts["other: on an object"] == 1
    empty = judge(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), drawn[:1], torch.tensor([1]))
    assert empty["other: background"] == 1 and empty["clean images"] == 0 and empty["images"] == 1
