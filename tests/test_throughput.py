"""The GPU throughput benchmark's inputs and options (the timing itself runs on a GPU: docs/engine.md)."""

import importlib.util
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
