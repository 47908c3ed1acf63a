"""pytorchcv and timm weights: exact conversion (random weights), and the catalog's metadata."""

import pytest
import torch
from torch import nn

from shufflenet_det import build_model
from shufflenet_det.weights import find_pretrained, get_pretrained, list_pretrained, load_weights

pytorchcv_shufflenet = pytest.importorskip("pytorchcv.models.shufflenet")
timm = pytest.importorskip("timm")


def randomize(model, seed=0):
    """Random convolution weights scaled to keep activations of order one, and random BN statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                for tensor, low, high in (
                    (module.weight, 0.8, 1.2),
                    (module.bias, -0.2, 0.2),
                    (module.running_mean, -0.2, 0.2),
                    (module.running_var, 0.5, 1.5),
                ):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
            elif isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.05)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.05)
    return model.eval()


def outputs_of(modules, run):
    """Run ``run()`` and return the outputs of ``modules`` (forward hooks)."""
    captured = []
    handles = [m.register_forward_hook(lambda _m, _i, out: captured.append(out)) for m in modules]
    with torch.no_grad():
        result = run()
    for handle in handles:
        handle.remove()
    return result, captured


def assert_same(actual, expected):
    """Equal up to float32 rounding, relative to the tensor's scale (random weights grow activations)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


PYTORCHCV_NAMES = list_pretrained(source="pytorchcv")
# Every group count and the 0.75x width, compared numerically; all names are load-checked below.
PYTORCHCV_NUMERIC = [
    "shufflenet_g1_wd4",
    "shufflenet_g2_w1",
    "shufflenet_g3_wd4",
    "shufflenet_g3_w3d4",
    "shufflenet_g4_w1",
    "shufflenet_g8_w1",
]


def test_catalog_has_every_pytorchcv_shufflenet():
    assert (
        sorted(f"pytorchcv:{name}" for name in pytorchcv_shufflenet.__all__ if name != "ShuffleNet") == PYTORCHCV_NAMES
    )


@pytest.mark.parametrize("name", PYTORCHCV_NAMES)
def test_every_pytorchcv_model_loads_strictly(name):
    entry = get_pretrained(name)
    source = getattr(pytorchcv_shufflenet, entry.remote_name)(pretrained=False)
    model = build_model(entry.arch)
    meta = load_weights(model, source.state_dict())
    assert meta["arch"] == entry.arch and meta["skipped"] == []
    assert torch.equal(model.stem[0].conv.weight, source.features.init_block.conv.weight)


@pytest.mark.parametrize("name", PYTORCHCV_NUMERIC)
def test_pytorchcv_conversion_is_exact(name):
    name = f"pytorchcv:{name}"
    entry = get_pretrained(name)
    source = randomize(getattr(pytorchcv_shufflenet, entry.remote_name)(pretrained=False))
    model = build_model(entry.arch).eval()
    meta = load_weights(model, source.state_dict())
    assert (meta["source"], meta["arch"], meta["weights"]) == ("pytorchcv", entry.arch, name)
    assert meta["concat_order"] == model.concat_order == "branch_first"
    assert meta["input_format"] == "RGB"
    assert meta["pixel_mean"] == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    assert meta["pixel_std"] == pytest.approx([0.229 * 255, 0.224 * 255, 0.225 * 255])

    x = torch.randn(1, 3, 224, 224)  # pytorchcv's final 7x7 pooling fixes the input size
    stages = [getattr(source.features, f"stage{i}") for i in (1, 2, 3)]
    expected_logits, expected_features = outputs_of(stages, lambda: source(x))
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert_same(logits, expected_logits)
    for stage, expected in zip(("stage2", "stage3", "stage4"), expected_features):
        assert_same(features[stage], expected)


def test_pytorchcv_needs_the_branch_first_order():
    source = randomize(pytorchcv_shufflenet.shufflenet_g3_wd4(pretrained=False))
    model = build_model("shufflenet_v1_x0_25_g3").eval()
    load_weights(model, source.state_dict())
    model.set_concat_order("shortcut_first")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = source(x)
        assert (model(x) - expected).abs().max() > 1e-2 * expected.abs().max()


def test_timm_mobilenet_conversion_is_exact():
    source = randomize(timm.create_model("mobilenetv1_100", pretrained=False))
    model = build_model("mobilenet_v1_x1_0").eval()
    meta = load_weights(model, source.state_dict())
    assert (meta["source"], meta["arch"], meta["weights"]) == ("timm", "mobilenet_v1_x1_0", "timm:mobilenetv1_100")
    assert meta["activation"] == model.activation == "relu6"
    x = torch.randn(2, 3, 96, 128)
    expected_logits, blocks = outputs_of(list(source.blocks), lambda: source(x))
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    assert_same(logits, expected_logits)
    for stage, expected in zip(model.stage_names, blocks):
        assert_same(features[stage], expected)


def test_timm_preprocessing_matches_its_pretrained_config():
    cfg = timm.models.get_pretrained_cfg("mobilenetv1_100.ra4_e3600_r224_in1k")
    entry = get_pretrained("timm:mobilenetv1_100")
    assert entry.remote_name == f"timm/{cfg.architecture}.{cfg.tag}"
    pre = entry.preprocessing
    assert list(pre.pixel_mean) == [255 * m for m in cfg.mean] and list(pre.pixel_std) == [255 * s for s in cfg.std]
    assert pre.interpolation == cfg.interpolation
    assert pre.crop_size == cfg.input_size[-1] and pre.resize_size == round(cfg.input_size[-1] / cfg.crop_pct)


@pytest.mark.parametrize("name", PYTORCHCV_NAMES)
def test_pytorchcv_download_names_match_its_model_store(name):
    from pytorchcv.models.common.model_store import get_model_metainfo

    entry = get_pretrained(name)
    params, error, sha1, tag = get_model_metainfo(entry.remote_name)
    assert entry.file_name == f"{entry.remote_name}-{error}-{sha1[:8]}.pth"
    assert entry.url.endswith(f"/{tag}/{entry.file_name}.zip")
    assert entry.params == params
    assert entry.top5_error == pytest.approx(int(error) / 100, abs=0.011)  # its file names carry top-5 error


def multiply_adds(model, size=224):
    """Conv and linear multiply-adds of one forward pass (the paper's FLOPs)."""
    total = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            total.append(output.numel() * module.weight[0].numel())
        else:
            total.append(module.in_features * module.out_features)

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.register_forward_hook(count)
    model(torch.empty(1, 3, size, size, device="meta"))
    return sum(total)


@pytest.mark.parametrize("name", list_pretrained())
def test_catalog_entries_describe_their_model(name):
    entry = get_pretrained(name)
    with torch.device("meta"):
        model = build_model(entry.arch)
    assert sum(p.numel() for p in model.parameters()) == entry.params
    assert multiply_adds(model) / 1e6 == pytest.approx(entry.mflops, abs=0.05)
    assert find_pretrained(entry.source, entry.arch) is entry
    meta = entry.meta()
    assert meta["input_format"] in ("RGB", "BGR") and len(meta["pixel_mean"]) == 3
    assert 0 < entry.top5_error < entry.top1_error < 100
    assert (entry.manual_download is None) == (entry.source != "megvii")
