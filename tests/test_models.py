import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from shufflenet_det import build_model, list_models
from shufflenet_det.modeling import ChannelShuffle, channel_shuffle, model_architecture, shufflenet_v1_channels
from shufflenet_det.modeling.cli import main as list_main

# Official parameter counts (docs/reference.md section 2); ours add the classifier bias (1000).
OFFICIAL_PARAMS = {
    "shufflenet_v1_x0_5_g3": 717_324,
    "shufflenet_v1_x1_0_g3": 1_864_728,
    "shufflenet_v1_x1_5_g3": 3_441_168,
    "shufflenet_v1_x2_0_g3": 5_449_776,
    "shufflenet_v1_x0_5_g8": 1_010_448,
    "shufflenet_v1_x1_0_g8": 2_433_768,
    "shufflenet_v1_x1_5_g8": 4_268_952,
    "shufflenet_v1_x2_0_g8": 6_521_232,
}


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_variant():
    names = list_models()
    assert len(list_models("shufflenet_v1_*")) == 30
    assert list_models("mobilenet_v1_*") == [
        "mobilenet_v1_x0_25",
        "mobilenet_v1_x0_5",
        "mobilenet_v1_x0_75",
        "mobilenet_v1_x1_0",
    ]
    assert "shufflenet_v1_x2_0_g8" in names
    assert model_architecture("shufflenet_v1_x0_25_g4") == {"family": "shufflenet_v1", "width_mult": 0.25, "groups": 4}


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError, match="shufflenet_v1_x1_0_g3") as info:
        build_model("shufflenet_v1_x1_0_g5")
    assert "Did you mean" in str(info.value)


def test_command_line_listing(capsys):
    assert list_main(["mobilenet_v1_x1*"]) == 0
    assert capsys.readouterr().out.split() == ["mobilenet_v1_x1_0"]
    assert list_main(["nothing*"]) == 1


@pytest.mark.parametrize("name,params", sorted(OFFICIAL_PARAMS.items()))
def test_official_parameter_counts(name, params):
    assert count(build_model(name)) == params + 1000


def test_mobilenet_parameter_count():
    assert count(build_model("mobilenet_v1_x1_0")) == 4_231_976


@pytest.mark.parametrize("name", list_models())
def test_every_variant_runs_at_any_size(name):
    model = build_model(name, num_classes=7).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 97, 130))
        logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7)
    strides = {info.name: info.stride for info in model.feature_info}
    for info in model.feature_info:
        feature = features[info.name]
        assert feature.shape[1] == info.channels
        # Each stride-2 step rounds up: ceil(97 / stride), ceil(130 / stride).
        assert feature.shape[2:] == (-(-97 // strides[info.name]), -(-130 // strides[info.name]))
    assert [i.stride for i in model.feature_info][-4:] == [4, 8, 16, 32]


def test_paper_channel_plan():
    assert shufflenet_v1_channels(1.0, 1) == (24, [144, 288, 576])
    assert shufflenet_v1_channels(1.0, 8) == (24, [384, 768, 1536])
    assert shufflenet_v1_channels(1.5, 3) == (24, [360, 720, 1440])  # official stem
    stem, stages = shufflenet_v1_channels(0.25, 2)
    assert stages[0] % 8 == 0 and stem % 2 == 0
    with pytest.raises(ValueError, match="groups must be one of"):
        shufflenet_v1_channels(1.0, 5)


def test_channel_shuffle_permutations():
    x = torch.arange(12.0).view(1, 12, 1, 1)
    paper = channel_shuffle(x, 3).flatten().tolist()
    assert paper == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    inverse = channel_shuffle(x, 3, inverse=True)
    assert torch.equal(channel_shuffle(inverse, 3), x)


def test_no_shuffle_ablation_and_layout_switch():
    plain = build_model("shufflenet_v1_x0_5_g3", channel_shuffle=False)
    assert not any(isinstance(m, ChannelShuffle) for m in plain.modules())
    assert plain.shuffle_layout == "none"
    model = build_model("shufflenet_v1_x0_5_g3")
    assert model.shuffle_layout == "paper"
    model.set_shuffle_layout("inverse")
    assert model.shuffle_layout == "inverse"


def test_concat_order_switch_reorders_stride2_outputs_only():
    model = build_model("shufflenet_v1_x0_25_g3").eval()
    assert model.concat_order == "shortcut_first"
    unit, x = model.stage2[0], torch.rand(1, model.stem[0].conv.out_channels, 16, 16)
    with torch.no_grad():
        before = unit(x)
        model.set_concat_order("branch_first")
        after = unit(x)
    assert model.concat_order == "branch_first"
    shortcut = x.shape[1]
    torch.testing.assert_close(after[:, -shortcut:], before[:, :shortcut])
    torch.testing.assert_close(after[:, :-shortcut], before[:, shortcut:])
    with pytest.raises(ValueError, match="concat order"):
        model.set_concat_order("random")


def test_mobilenet_activation_choice():
    model = build_model("mobilenet_v1_x0_25", activation="relu6").eval()
    assert model.activation == "relu6"
    x = torch.full((1, 3, 32, 32), 100.0)
    with torch.no_grad():
        assert model.stem[0](x).max() <= 6.0
    model.set_activation("relu")
    assert model.activation == "relu"
    with pytest.raises(ValueError, match="activation"):
        model.set_activation("gelu")


@pytest.mark.parametrize("norm,kind", [("BN", nn.BatchNorm2d), ("FrozenBN", FrozenBatchNorm2d), ("SyncBN", nn.SyncBatchNorm)])
def test_norm_choice(norm, kind):
    model = build_model("shufflenet_v1_x0_5_g3", norm=norm)
    assert isinstance(model.stem[0].norm, kind)
    with pytest.raises(ValueError, match="unknown norm"):
        build_model("shufflenet_v1_x0_5_g3", norm="LN")


def test_freeze_at_freezes_stem_and_first_stages_only():
    model = build_model("shufflenet_v1_x0_5_g3", freeze_at=2)
    assert all(not p.requires_grad for n in ("stem", "stage2") for p in model.stage(n).parameters())
    assert all(p.requires_grad for p in model.stage3.parameters())
    assert isinstance(model.stage2[0].compress.norm, FrozenBatchNorm2d)
    assert isinstance(model.stage3[0].compress.norm, nn.BatchNorm2d)
    with pytest.raises(ValueError, match="freeze_at"):
        model.freeze(9)


def test_frozen_model_keeps_its_outputs():
    model = build_model("shufflenet_v1_x0_5_g3").eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        after = model.freeze(4)(x)
    torch.testing.assert_close(before, after, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["shufflenet_v1_x1_0_g3", "mobilenet_v1_x1_0"])
def test_c4_split_reproduces_the_full_network(name):
    model = build_model(name).eval()
    trunk, head = model.split_at_stride(16)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        c4 = trunk(x)
    last_stride16 = [i.name for i in model.feature_info if i.stride == 16][-1]
    torch.testing.assert_close(c4, features[last_stride16])
    torch.testing.assert_close(head(c4), features[model.stage_names[-1]])
    assert set(trunk.state_dict()) | set(head.state_dict()) == {k for k in model.state_dict() if not k.startswith("fc.")}


def _random_norm_statistics(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize(
    "arch, layout, frozen",
    [
        ("shufflenet_v1_x0_5_g3", "paper", True),
        ("shufflenet_v1_x0_5_g3", "inverse", True),
        ("shufflenet_v1_x0_25_g8", "paper", True),
        ("shufflenet_v1_x0_5_g3", "paper", False),
        ("mobilenet_v1_x0_25", None, True),
    ],
)
def test_conv_forms_compute_the_same_outputs_and_gradients(arch, layout, frozen):
    from shufflenet_det.modeling import CONV_IMPLS, apply_conv_form
    from shufflenet_det.modeling.layers import convert_frozen_batchnorm

    torch.manual_seed(0)
    model = build_model(arch)
    _random_norm_statistics(model)
    if layout:
        model.set_shuffle_layout(layout)
    if frozen:
        model = convert_frozen_batchnorm(model)
    else:
        model.eval()  # trainable BN with fixed statistics: the same function under every impl
    images = torch.randn(2, 3, 64, 80)
    results = {}
    keys = list(model.state_dict())
    for impl in CONV_IMPLS:  # "auto" is "folded" on a CPU
        apply_conv_form(model, impl)
        assert list(model.state_dict()) == keys
        model.zero_grad()
        output = model(images)
        output.square().sum().backward()
        gradients = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[impl] = (output.detach(), gradients)
    reference_output, reference_gradients = results["modules"]
    for impl in ("folded", "dense"):
        output, gradients = results[impl]
        # Only float32 rounding differs (measured 1e-7 relative): a wrong fold or order gives ~1.
        assert gradients.numel() == reference_gradients.numel()
        assert (output - reference_output).norm() / reference_output.norm() < 1e-5, impl
        assert (gradients - reference_gradients).norm() / reference_gradients.norm() < 1e-5, impl


def test_dense_form_absorbs_the_shuffle_only_with_frozen_norms():
    from shufflenet_det.modeling import apply_conv_form
    from shufflenet_det.modeling.layers import convert_frozen_batchnorm
    from shufflenet_det.modeling.speed import FoldedConvNormAct, FoldedShuffle

    model = apply_conv_form(build_model("shufflenet_v1_x0_5_g3"), "dense")
    unit = model.stage3[1]
    # Trainable BN would need permuted statistics: only the grouped 1x1 convs turn dense.
    assert isinstance(unit.compress, FoldedConvNormAct) and unit.compress.dense
    assert unit.compress.output_order is None and type(unit.shuffle).__name__ == "ChannelShuffle"
    assert type(unit.depthwise).__name__ == "ConvNormAct"
    frozen = apply_conv_form(convert_frozen_batchnorm(model), "dense")
    unit = frozen.stage3[1]
    assert isinstance(unit.shuffle, FoldedShuffle)
    assert torch.equal(unit.compress.output_order, unit.shuffle.permutation(60))
    assert frozen.shuffle_layout == "paper"  # still reported for checkpoint metadata
    with pytest.raises(ValueError, match="set the layout before apply_conv_form"):
        frozen.set_shuffle_layout("inverse")
    for impl in ("folded", "auto"):  # "auto" means "folded" on a CPU
        apply_conv_form(frozen, impl)
        assert frozen.stage3[1].compress.output_order is None and not frozen.stage3[1].compress.dense
        assert type(frozen.stage3[1].shuffle).__name__ == "ChannelShuffle"
    apply_conv_form(frozen, "modules")
    assert not any(isinstance(m, FoldedConvNormAct) for m in frozen.modules())
    frozen.set_shuffle_layout("inverse")  # as built again
    assert isinstance(apply_conv_form(frozen, "auto", "cuda").stage3[1].shuffle, FoldedShuffle)  # dense on CUDA
    with pytest.raises(ValueError, match="unknown conv form"):
        apply_conv_form(frozen, "fast")


def test_forward_hooks_see_the_convs_run_once_the_forms_are_undone():
    from shufflenet_det.analysis import count_mult_adds_while
    from shufflenet_det.modeling import apply_conv_form

    model = build_model("shufflenet_v1_x0_5_g3").eval()
    images = torch.randn(1, 3, 64, 64)
    plain = count_mult_adds_while(model, lambda: model(images))
    apply_conv_form(model, "dense")
    assert sum(count_mult_adds_while(model, lambda: model(images)).values()) < sum(plain.values())
    apply_conv_form(model, "modules")
    assert count_mult_adds_while(model, lambda: model(images)) == plain
