"""Safe loading, our own formats, bad inputs and the download path of known weights."""

import argparse
import logging
import os
from pathlib import Path

import pytest
import torch

from shufflenet_det import build_model
from shufflenet_det.modeling import ShuffleNetV1
from shufflenet_det.utils.io import safe_torch_load
from shufflenet_det.weights import (
    CheckpointError,
    convert_checkpoint,
    download_weights,
    load_weights,
    model_structure,
    save_weights,
)

FIXTURE = Path(__file__).parent / "fixtures" / "megvii" / "megvii_shufflenetv1_0.5x_g3_random.pth.tar"


def tiny(name="shufflenet_v1_x0_25_g3", **kwargs):
    model = build_model(name, **kwargs).eval()
    with torch.no_grad():
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.uniform_(-0.2, 0.2)
    return model


def same_outputs(a, b, x=None):
    x = torch.rand(1, 3, 64, 64) if x is None else x
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


class RunsCode:
    """Unpickling this would call ``os.system``: safe loading must refuse it before that happens."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"stem.0.conv.weight": torch.zeros(1)}, "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="would run code"):
        load_weights(tiny(), path)
    assert not marker.exists()


def test_reference_script_checkpoint_with_namespace_args_loads(tmp_path):
    """torchvision's reference scripts store their argparse.Namespace beside the weights."""
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.02, model="m")}, path)
    loaded = safe_torch_load(path)
    assert loaded["args"].lr == 0.02 and torch.equal(loaded["model"]["w"], torch.ones(2))


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty"),
        (FIXTURE.read_bytes()[:50_000], "truncated or not a checkpoint"),
        (b"just some text\n", r"is not a PyTorch checkpoint \(a file written by torch.save\)$"),
    ],
    ids=["empty", "truncated", "text"],
)
def test_damaged_files_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_weights(tiny(), path)


@pytest.mark.parametrize(
    "obj,message",
    [
        ([1, 2, 3], "holds a list"),
        ({"model": {"stem.0.conv.weight": 3}}, "not tensors"),
        ({"backbone.body.conv1.weight": torch.zeros(1)}, "not a checkpoint of a known classifier"),
        ({}, "empty"),
    ],
    ids=["list", "non-tensors", "unknown-layout", "empty-dict"],
)
def test_objects_that_are_not_classifier_checkpoints(tmp_path, obj, message):
    path = tmp_path / "x.pth"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=message):
        convert_checkpoint(path)


def test_missing_file_and_unknown_names():
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_weights(tiny(), "no/such/file.pth")
    with pytest.raises(
        CheckpointError, match="unknown pretrained weights 'pytorchcv:nope'.*pytorchcv:shufflenet_g3_w1"
    ):
        load_weights(tiny(), "pytorchcv:nope")
    with pytest.raises(CheckpointError, match="OneDrive.*convert_weights.py"):
        load_weights(tiny("shufflenet_v1_x1_0_g3"), "megvii:1.0x_g3")


def test_wrong_architecture_names_keys_and_shapes(tmp_path):
    source = tiny("shufflenet_v1_x0_25_g3")
    path = save_weights(tmp_path / "w.pth", source.state_dict(), model_structure(source))
    target = tiny("shufflenet_v1_x0_5_g3")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_weights(target, path)
    message = str(info.value)
    assert "does not fit shufflenet_v1_x0_5_g3 (it fits shufflenet_v1_x0_25_g3)" in message
    assert "stem.0.conv.weight [6, 3, 3, 3] vs model [12, 3, 3, 3]" in message
    assert len(message) < 600
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched


def test_non_strict_loads_what_fits(tmp_path):
    source = tiny("shufflenet_v1_x0_25_g3")
    state_dict = source.state_dict()
    state_dict["extra.weight"] = torch.zeros(2)
    del state_dict["stage4.3.expand.conv.weight"]
    target = build_model("shufflenet_v1_x0_25_g3")
    with pytest.raises(CheckpointError, match="missing: stage4.3.expand.conv.weight.*unexpected: extra.weight"):
        load_weights(target, state_dict)
    meta = load_weights(target, state_dict, strict=False)
    assert meta["skipped"] == ["extra.weight"]
    assert torch.equal(target.stem[0].conv.weight, source.stem[0].conv.weight)


def test_other_class_count_skips_only_the_classifier(caplog):
    source = tiny("shufflenet_v1_x0_25_g3")
    target = build_model("shufflenet_v1_x0_25_g3", num_classes=7)
    fc_before = target.fc.weight.clone()
    with caplog.at_level(logging.WARNING, logger="shufflenet_det.weights"):
        meta = load_weights(target, source.state_dict())
    assert meta["skipped"] == ["fc.bias", "fc.weight"] and meta["num_classes"] == 1000
    assert "1000 classes, the model 7" in caplog.text
    assert torch.equal(target.fc.weight, fc_before)
    assert torch.equal(target.stage4[3].expand.conv.weight, source.stage4[3].expand.conv.weight)


def test_training_checkpoint_with_meta_restores_the_structure(tmp_path):
    source = tiny("shufflenet_v1_x0_25_g3")
    source.set_shuffle_layout("inverse")
    source.set_concat_order("branch_first")
    state_dict = {f"module.{k}": v for k, v in source.state_dict().items()}  # saved from DataParallel
    path = tmp_path / "model_0001.pth"
    torch.save({"model": state_dict, "optimizer": {}, "iteration": 1, "meta": model_structure(source)}, path)
    target = tiny("shufflenet_v1_x0_25_g3")
    meta = load_weights(target, path)
    assert (meta["source"], meta["format"]) == ("shufflenet_det", "training")
    assert (target.shuffle_layout, target.concat_order) == ("inverse", "branch_first")
    assert same_outputs(source, target)


def test_checkpoint_without_structure_leaves_the_model_as_it_is():
    source = tiny("shufflenet_v1_x0_25_g3")
    source.set_shuffle_layout("inverse")
    target = tiny("shufflenet_v1_x0_25_g3")
    target.set_shuffle_layout("inverse")
    meta = load_weights(target, {"model": source.state_dict()})
    assert meta["shuffle_layout"] == target.shuffle_layout == "inverse"
    assert meta["input_format"] is None  # a bare training checkpoint does not say
    assert same_outputs(source, target)


def test_shuffle_presence_must_match():
    plain = tiny("shufflenet_v1_x0_25_g3", channel_shuffle=False)
    with pytest.raises(CheckpointError, match="channel_shuffle=False"):
        load_weights(tiny("shufflenet_v1_x0_25_g3"), {"model": plain.state_dict(), "meta": model_structure(plain)})
    with pytest.raises(CheckpointError, match="need channel shuffle"):
        load_weights(plain, {"model": plain.state_dict(), "meta": {"shuffle_layout": "paper"}})


def test_mobilenet_activation_travels_with_its_weights(tmp_path):
    source = tiny("mobilenet_v1_x0_25", activation="relu6")
    path = save_weights(tmp_path / "m.pth", source.state_dict(), model_structure(source))
    target = tiny("mobilenet_v1_x0_25")
    assert load_weights(target, path)["activation"] == target.activation == "relu6"
    assert same_outputs(source, target, torch.rand(1, 3, 64, 64) * 50)


def test_unregistered_width_loads_into_the_same_model_but_needs_an_arch_to_convert():
    source = ShuffleNetV1(width_mult=0.3, groups=2).eval()
    target = ShuffleNetV1(width_mult=0.3, groups=2).eval()
    meta = load_weights(target, source.state_dict())
    assert meta["arch"] is None and same_outputs(source, target)
    with pytest.raises(CheckpointError, match="no registered model fits.*--arch"):
        convert_checkpoint(source.state_dict())


def test_save_weights_is_safe(tmp_path):
    model = tiny()
    path = save_weights(tmp_path / "w.pth", model.state_dict(), {"arch": "x", "values": [1, 2.5, None]})
    assert torch.load(path, weights_only=True)["meta"]["values"] == [1, 2.5, None]
    with pytest.raises(FileExistsError, match="--overwrite"):
        save_weights(path, model.state_dict(), {})
    with pytest.raises(TypeError, match="plain types"):
        save_weights(tmp_path / "other.pth", model.state_dict(), {"bad": torch.zeros(1)})
    assert not (tmp_path / "other.pth").exists()
    save_weights(path, model.state_dict(), {"arch": "y"}, overwrite=True)
    assert torch.load(path, weights_only=True)["meta"] == {"arch": "y"}


def test_newer_format_version_is_refused(tmp_path):
    path = tmp_path / "future.pth"
    torch.save({"format": "shufflenet_det.weights", "version": 99, "state_dict": {}, "meta": {}}, path)
    with pytest.raises(CheckpointError, match="version 99"):
        load_weights(tiny(), path)


def test_source_assertion(tmp_path):
    with pytest.raises(CheckpointError, match="looks like a shufflenet_det checkpoint, not megvii"):
        convert_checkpoint(tiny().state_dict(), source="megvii")


# ------------------------------------------------------------------------------ downloads
@pytest.fixture
def hub_dir(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_pytorchcv_name_downloads_into_the_hub_cache(hub_dir, monkeypatch):
    pytorchcv_shufflenet = pytest.importorskip("pytorchcv.models.shufflenet")
    model_store = pytest.importorskip("pytorchcv.models.common.model_store")

    calls = []

    def fake_get_model_file(model_name, local_model_store_dir_path):
        calls.append(model_name)
        path = Path(local_model_store_dir_path) / f"{model_name}.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(pytorchcv_shufflenet.shufflenet_g3_wd4().state_dict(), path)
        return str(path)

    monkeypatch.setattr(model_store, "get_model_file", fake_get_model_file)
    model = build_model("shufflenet_v1_x0_25_g3", weights="pytorchcv:shufflenet_g3_wd4")
    assert calls == ["shufflenet_g3_wd4"]
    assert (hub_dir / "checkpoints" / "pytorchcv" / "shufflenet_g3_wd4.pth").is_file()
    assert model.weights_meta["weights"] == "pytorchcv:shufflenet_g3_wd4"
    assert model.weights_meta["top1_error"] == 61.74
    assert model.concat_order == "branch_first"


def test_timm_name_downloads_safetensors_into_the_hub_cache(hub_dir, monkeypatch):
    timm = pytest.importorskip("timm")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    save_file = pytest.importorskip("safetensors.torch").save_file

    source = timm.create_model("mobilenetv1_100").eval()

    def fake_download(repo_id, filename, cache_dir):
        assert (repo_id, filename) == ("timm/mobilenetv1_100.ra4_e3600_r224_in1k", "model.safetensors")
        path = Path(cache_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(source.state_dict(), str(path))
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = build_model("mobilenet_v1_x1_0").eval()
    meta = load_weights(model, "timm:mobilenetv1_100")
    assert (hub_dir / "checkpoints" / "huggingface" / "model.safetensors").is_file()
    assert meta["pixel_mean"] == [127.5] * 3 and meta["interpolation"] == "bicubic"
    assert torch.equal(model.fc.weight, source.classifier.weight)


def test_download_failure_is_one_clear_error(hub_dir, monkeypatch):
    model_store = pytest.importorskip("pytorchcv.models.common.model_store")

    def offline(model_name, local_model_store_dir_path):
        raise ConnectionError("Name or service not known\nmore lines")

    monkeypatch.setattr(model_store, "get_model_file", offline)
    with pytest.raises(CheckpointError) as info:
        download_weights("pytorchcv:shufflenet_g1_w1")
    message = str(info.value)
    assert "could not download pytorchcv:shufflenet_g1_w1 from https://github.com/osmr/imgclsmob" in message
    assert "Name or service not known" in message and "\n" not in message


def test_truncated_safetensors_file(tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file

    path = tmp_path / "model.safetensors"
    save_file({"conv_stem.weight": torch.zeros(8, 3, 3, 3)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        convert_checkpoint(path)
