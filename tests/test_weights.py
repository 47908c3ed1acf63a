"""Official megvii ShuffleNetV1 checkpoints: exact conversion, reloading, metadata."""

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from shufflenet_det import build_model
from shufflenet_det.weights import convert_checkpoint, load_weights, save_weights

FIXTURES = Path(__file__).parent / "fixtures" / "megvii"
RANDOM_CHECKPOINT = FIXTURES / "megvii_shufflenetv1_0.5x_g3_random.pth.tar"
REFERENCE = FIXTURES / "megvii_shufflenetv1_0.5x_g3_reference.pt"
MANIFEST = json.loads((FIXTURES / "megvii_shufflenetv1_state_dict_manifest.json").read_text())
# Flat unit index after which each stage ends in the official network (4, 8, 4 units).
STAGE_ENDS = {3: "stage2", 11: "stage3", 15: "stage4"}


def official_arch(size, groups):
    return f"shufflenet_v1_x{size[:-1].replace('.', '_')}_g{groups}"


def official_forward(state_dict, x, groups):
    """The official ShuffleNetV1 forward (megvii blocks.py/network.py), written from its description:
    compress -> BN-ReLU -> depthwise -> BN -> shuffle viewed as (n, g) -> expand -> BN; stride-2
    units concatenate a 3x3/2 average-pooled shortcut before relu(branch)."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}

    def bn(y, name):
        return F.batch_norm(
            y,
            sd[f"{name}.running_mean"],
            sd[f"{name}.running_var"],
            sd[f"{name}.weight"],
            sd[f"{name}.bias"],
            False,
            0.0,
            1e-5,
        )

    x = F.relu(bn(F.conv2d(x, sd["first_conv.0.weight"], stride=2, padding=1), "first_conv.1"))
    x = F.max_pool2d(x, 3, 2, 1)
    features = {}
    for unit in range(16):
        p = f"features.{unit}.branch_main_"
        stride = 2 if unit in (0, 4, 12) else 1
        compress = sd[p + "1.0.weight"]
        y = F.relu(bn(F.conv2d(x, compress, groups=x.shape[1] // compress.shape[1]), p + "1.1"))
        y = bn(F.conv2d(y, sd[p + "1.3.weight"], stride=stride, padding=1, groups=y.shape[1]), p + "1.4")
        b, c, h, w = y.shape
        y = y.reshape(b, c // groups, groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)
        y = bn(F.conv2d(y, sd[p + "2.0.weight"], groups=groups), p + "2.1")
        x = torch.cat((F.avg_pool2d(x, 3, 2, 1), F.relu(y)), 1) if stride == 2 else F.relu(x + y)
        if unit in STAGE_ENDS:
            features[STAGE_ENDS[unit]] = x
    logits = F.linear(F.avg_pool2d(x, x.shape[-2:]).flatten(1), sd["classifier.0.weight"])
    return logits, features


def random_official_state_dict(shapes, seed):
    """Random weights in the official key layout, scaled so activations stay of order one."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state_dict[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state_dict[key] = torch.rand(shape, generator=generator) + 0.5
        elif len(shape) == 1:  # BN weight, bias, mean
            state_dict[key] = torch.rand(shape, generator=generator) * 0.4 + (0.8 if key.endswith(".weight") else -0.2)
        else:
            fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1)
            state_dict[key] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return {"state_dict": state_dict}


def test_fixture_checkpoint_reproduces_the_official_outputs():
    reference = torch.load(REFERENCE, weights_only=True)
    model = build_model("shufflenet_v1_x0_5_g3").eval()
    meta = load_weights(model, RANDOM_CHECKPOINT)
    x = reference["input_bgr_uint8"].float()  # BGR 0..255, no normalization, as the official code feeds it
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model(x)
    for name in ("stage2", "stage3", "stage4"):
        torch.testing.assert_close(features[name], reference[name], rtol=0, atol=1e-4)
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-4)
    assert meta["source"] == "megvii" and meta["arch"] == "shufflenet_v1_x0_5_g3"
    assert meta["input_format"] == "BGR"
    assert meta["pixel_mean"] == [0.0, 0.0, 0.0] and meta["pixel_std"] == [1.0, 1.0, 1.0]
    assert meta["shuffle_layout"] == "paper" and model.shuffle_layout == "paper"
    assert (meta["top1_error"], meta["top5_error"]) == (42.7, 20.0)
    assert meta["skipped"] == []


def test_test_reimplementation_matches_the_fixture():
    """The official forward written in this file reproduces the fixture's reference outputs."""
    reference = torch.load(REFERENCE, weights_only=True)
    checkpoint = torch.load(RANDOM_CHECKPOINT, weights_only=True)
    with torch.no_grad():
        logits, features = official_forward(checkpoint["state_dict"], reference["input_bgr_uint8"].float(), groups=3)
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-4)
    torch.testing.assert_close(features["stage3"], reference["stage3"], rtol=0, atol=1e-4)


def test_frozen_batchnorm_model_loads_through_build_model():
    reference = torch.load(REFERENCE, weights_only=True)
    model = build_model("shufflenet_v1_x0_5_g3", norm="FrozenBN", freeze_at=2, weights=str(RANDOM_CHECKPOINT)).eval()
    assert model.weights_meta["arch"] == "shufflenet_v1_x0_5_g3"
    with torch.no_grad():
        stage4 = model.forward_features(reference["input_bgr_uint8"].float())["stage4"]
    torch.testing.assert_close(stage4, reference["stage4"], rtol=0, atol=1e-4)


# Which official models an in-group reordering brings to the paper's shuffle (see converters.py).
EXPECTED_LAYOUT = {
    "0.5x_g3": "paper",
    "1.0x_g3": "paper",
    "1.5x_g3": "paper",
    "2.0x_g3": "paper",
    "0.5x_g8": "inverse",
    "1.0x_g8": "inverse",
    "1.5x_g8": "inverse",
    "2.0x_g8": "paper",
}


@pytest.mark.parametrize("variant", sorted(MANIFEST))
def test_every_official_model_converts_completely(variant):
    size, groups = variant.split("_g")
    shapes = MANIFEST[variant]["keys"]
    checkpoint = {"state_dict": {key: torch.zeros(shape) for key, shape in shapes.items()}}
    state_dict, meta = convert_checkpoint(checkpoint)
    arch = official_arch(size, groups)
    assert meta["arch"] == arch
    model = build_model(arch)
    assert set(state_dict) == set(model.state_dict())  # nothing missing, nothing unexpected
    assert all(state_dict[k].shape == v.shape for k, v in model.state_dict().items())
    assert sum(
        state_dict[k].numel()
        for k in state_dict
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ) == (
        MANIFEST[variant]["params"] + model.fc.out_features  # plus our zero classifier bias
    )
    assert meta["shuffle_layout"] == EXPECTED_LAYOUT[variant]


@pytest.mark.parametrize("variant", ["0.5x_g8", "2.0x_g8"])
def test_g8_conversion_is_exact(variant, tmp_path):
    """0.5x g8 needs the inverse shuffle layout, 2.0x g8 reaches the paper's: both exact, also after saving."""
    size, groups = variant.split("_g")
    checkpoint = random_official_state_dict(MANIFEST[variant]["keys"], seed=1)
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        expected_logits, expected_features = official_forward(checkpoint["state_dict"], x, groups=8)
    model = build_model(official_arch(size, groups)).eval()
    meta = load_weights(model, checkpoint)
    assert model.shuffle_layout == meta["shuffle_layout"] == EXPECTED_LAYOUT[variant]

    path = save_weights(tmp_path / "converted.pth", *convert_checkpoint(checkpoint))
    reloaded = build_model(official_arch(size, groups)).eval()
    assert load_weights(reloaded, path)["shuffle_layout"] == EXPECTED_LAYOUT[variant]
    for candidate in (model, reloaded):
        with torch.no_grad():
            features = candidate.forward_features(x)
            logits = candidate(x)
        scale = expected_logits.abs().max()
        torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-4 * scale)
        for name, expected in expected_features.items():
            torch.testing.assert_close(features[name], expected, rtol=0, atol=1e-4 * expected.abs().max())


def test_inverse_layout_is_needed_for_g8():
    """With the paper's permutation the converted 0.5x g8 model would compute something else."""
    checkpoint = random_official_state_dict(MANIFEST["0.5x_g8"]["keys"], seed=2)
    x = torch.rand(1, 3, 64, 64) * 255
    model = build_model("shufflenet_v1_x0_5_g8").eval()
    load_weights(model, checkpoint)
    with torch.no_grad():
        expected, _ = official_forward(checkpoint["state_dict"], x, groups=8)
        model.set_shuffle_layout("paper")
        wrong = model(x)
    assert (wrong - expected).abs().max() > 1e-2 * expected.abs().max()


def test_converted_file_keeps_metadata_and_loads_with_plain_torch(tmp_path):
    state_dict, meta = convert_checkpoint(str(RANDOM_CHECKPOINT))
    path = save_weights(tmp_path / "w.pth", state_dict, meta)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "shufflenet_det.weights" and raw["version"] == 1
    assert raw["meta"]["arch"] == "shufflenet_v1_x0_5_g3" and raw["meta"]["source"] == "megvii"
    assert torch.equal(raw["state_dict"]["fc.bias"], torch.zeros(1000))
    model = build_model("shufflenet_v1_x0_5_g3").eval()
    meta = load_weights(model, path)
    assert meta["format"] == "shufflenet_det.weights" and meta["source"] == "megvii"
    assert meta["top1_error"] == 42.7
