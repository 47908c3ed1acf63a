
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from shufflenet_det import build_model
from benchmarks.table8 import build_trunk
from shufflenet_det.deploy.export import create_ort_session, export_onnx, export_torchscript, onnx_bytes
from shufflenet_det.deploy.fuse import (
    ChannelSlice,
    GatherShuffle,
    GroupedMatmul,
    fold_batchnorm,
    optimize_shufflenet,
)
from shufflenet_det.deploy.runtime import create_runner, deploy_rewrite
from shufflenet_det.modeling import ChannelShuffle, ShuffleUnit, channel_shuffle
from tool_loading import load_tool

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a loaded 2-core machine OpenMP's spinning threads slow tiny convs 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial statistics and affine parameters, so that folding mistakes show."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, NORMS):
            channels = module.running_mean.numel()
            module.running_mean.copy_(torch.rand(channels, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(channels, generator=generator) - 0.5)
    return model.eval()


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)[model.stage_names[-1]] if hasattr(model, "forward_features") else model(x)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    scale = expected.abs().max().item()
    assert scale > 0
    assert (actual - expected).abs().max().item() <= rtol * scale + 1e-6


@pytest.fixture(scope="module")
def shufflenet():
    torch.manual_seed(0)
    return randomize_norms(build_model("shufflenet_v1_x0_5_g3"))


@pytest.mark.parametrize("name,norm", [("shufflenet_v1_x0_5_g3", "BN"), ("shufflenet_v1_x0_5_g3", "FrozenBN"),
                                       ("mobilenet_v1_x0_25", "BN")])
def test_fold_batchnorm_is_exact_and_leaves_the_model_alone(name, norm):
    torch.manual_seed(0)
    model = randomize_norms(build_model(name, norm=norm)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert model.training and not folded.training
    assert not any(isinstance(m, NORMS) for m in folded.modules())
    assert sum(isinstance(m, NORMS) for m in model.modules()) > 20
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randn(2, 3, 80, 96)
    assert_close(features(folded, x), features(model.eval(), x))
    assert_close(folded(x), model(x))


def test_shuffle_permutation_matches_channel_shuffle():
    x = torch.randn(1, 12, 2, 2)
    for inverse in (False, True):
        permutation = ChannelShuffle(3, inverse=inverse).permutation(12)
        assert torch.equal(x[:, permutation], channel_shuffle(x, 3, inverse))
    assert not torch.equal(ChannelShuffle(3).permutation(12), ChannelShuffle(3, True).permutation(12))


@pytest.mark.parametrize("layout", ["paper", "inverse"])
@pytest.mark.parametrize("pointwise,shuffle", [("grouped", "reshape"), ("grouped", "gather"), ("dense", "reshape"),
                                               ("matmul", "gather"), ("grouped", "fold"), ("dense", "fold")])
def test_shufflenet_rewrites_are_exact(shufflenet, layout, pointwise, shuffle):
    shufflenet.set_shuffle_layout(layout)
    try:
        rewritten = optimize_shufflenet(shufflenet, pointwise=pointwise, shuffle=shuffle)
        x = torch.randn(1, 3, 64, 96)
        assert_close(features(rewritten, x), features(shufflenet, x))
    finally:
        shufflenet.set_shuffle_layout("paper")
    modules = list(rewritten.modules())
    convs = [m for m in modules if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    shuffles = sum(isinstance(m, ChannelShuffle) for m in modules)
    # The first unit's compress is dense: the gather form writes its rows already shuffled.
    assert sum(isinstance(m, GatherShuffle) for m in modules) == (15 if shuffle == "gather" else 0)
    assert shuffles == (16 if shuffle == "reshape" else 0)
    if pointwise == "dense":
        assert all(conv.groups == 1 for conv in convs)
    assert sum(isinstance(m, GroupedMatmul) for m in modules) == (31 if pointwise == "matmul" else 0)
    assert shufflenet.shuffle_layout == "paper" and any(isinstance(m, NORMS) for m in shufflenet.modules())


def depthwise_conv(unit: ShuffleUnit) -> nn.Conv2d:
    return next(m for m in unit.depthwise.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", ["shufflenet_v1_x0_5_g3", "shufflenet_v1_x1_0_g3", "shufflenet_v1_x2_0_g3"])
@pytest.mark.parametrize("layout", ["paper", "inverse"])
def test_channel_alignment_is_exact(name, layout):
    torch.manual_seed(0)
    model = randomize_norms(build_model(name))
    model.set_shuffle_layout(layout)
    aligned = optimize_shufflenet(model, pointwise="grouped", shuffle="gather", align=16)
    x = torch.randn(1, 3, 64, 80)
    assert_close(features(aligned, x), features(model, x))
    assert aligned.stem[0].conv.out_channels % 16 == 0
    assert (aligned.stem[0].conv.out_channels > model.stem[0].conv.out_channels) == (name != "shufflenet_v1_x2_0_g3")
    # Units whose padding stays within ALIGN_MAX_OVERHEAD get 16-channel groups in all three convs.
    padded = [u for u in aligned.modules() if isinstance(u, ShuffleUnit) and u.expand.conv.in_channels % 48 == 0]
    original = {u.expand.conv.in_channels for u in model.modules() if isinstance(u, ShuffleUnit)}
    assert padded and any(c % 48 for c in original)
    for unit in padded:
        assert (unit.compress.conv.out_channels // unit.compress.conv.groups) % 16 == 0
        assert (unit.expand.conv.in_channels // unit.expand.conv.groups) % 16 == 0
    # Every depthwise conv gets whole 16-channel blocks, also in units whose bottleneck stays unaligned.
    assert all(depthwise_conv(u).out_channels % 16 == 0 for u in aligned.modules() if isinstance(u, ShuffleUnit))


def test_gather_form_places_each_shuffle_where_it_moves_least_data(shufflenet):
    x = torch.randn(1, 3, 96, 64)
    for align in (0, 16):
        rewritten = optimize_shufflenet(shufflenet, pointwise="grouped", shuffle="gather", align=align)
        assert_close(features(rewritten, x), features(shufflenet, x))
        units = [m for m in rewritten.modules() if isinstance(m, ShuffleUnit)]
        assert len(units) == 16
        for unit in units:
            in_shuffle = isinstance(unit.shuffle, GatherShuffle)
            after_depthwise = any(isinstance(m, GatherShuffle) for m in unit.depthwise.modules())
            if unit.compress.conv.groups == 1:  # dense compress: the shuffle is in its weights
                assert not in_shuffle and not after_depthwise
            elif depthwise_conv(unit).stride == (2, 2) and not any(isinstance(m, ChannelSlice) for m in unit.depthwise.modules()):
                # A stride-2 unit shuffles after its depthwise conv: a quarter of the pixels.
                assert after_depthwise and not in_shuffle
                assert depthwise_conv(unit).in_channels == unit.compress.conv.out_channels
            else:
                assert in_shuffle and not after_depthwise
        if align:  # 0.5x stage 3 (20 channels per group) keeps its widths but pads the depthwise conv
            stage3 = [u for u in units if u.expand.conv.in_channels == 60]
            assert stage3 and all(depthwise_conv(u).out_channels == 64 for u in stage3)


def test_rewrite_rejects_unknown_modes(shufflenet):
    with pytest.raises(ValueError, match="pointwise"):
        optimize_shufflenet(shufflenet, pointwise="sparse")
    with pytest.raises(ValueError, match="shuffle"):
        optimize_shufflenet(shufflenet, shuffle="roll")
    with pytest.raises(ValueError, match="align"):
        optimize_shufflenet(shufflenet, shuffle="reshape", align=16)


def test_onnx_export_runs_in_onnxruntime_at_two_sizes(shufflenet, tmp_path):
    pytest.importorskip("onnxruntime")
    deployed = deploy_rewrite(shufflenet, "onnxruntime")  # the deployment path: gather shuffle, align 16
    path = export_onnx(deployed, torch.rand(1, 3, 96, 96), tmp_path / "model.onnx", output_names=["logits"])
    session = create_ort_session(path, threads=1)
    assert [i.name for i in session.get_inputs()] == ["input"]
    for size in ((64, 64), (96, 160)):
        x = torch.rand(2, 3, *size)
        (logits,) = session.run(None, {"input": x.numpy()})
        assert_close(torch.from_numpy(logits), shufflenet(x).detach())
    with pytest.raises(FileExistsError):
        export_onnx(deployed, torch.rand(1, 3, 96, 96), path)
    with pytest.raises(ValueError, match="opset"):
        onnx_bytes(deployed, torch.rand(1, 3, 64, 64), opset=13)


def test_torchscript_export_matches_at_two_sizes(shufflenet, tmp_path):
    path = export_torchscript(optimize_shufflenet(shufflenet), torch.rand(1, 3, 64, 64), tmp_path / "model.pt")
    loaded = torch.jit.load(str(path))
    for size in ((64, 64), (80, 112)):
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            assert_close(loaded(x), shufflenet(x))


@pytest.mark.parametrize("backend", ["eager", "eager_optimized", "torchscript", "onnxruntime"])
def test_runners_agree_with_the_model(backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    trunk = randomize_norms(build_trunk("shufflenet_v1_x0_5_g3"))
    x = torch.rand(1, 3, 64, 64)
    runner = create_runner(trunk, backend, x, threads=1)
    with torch.no_grad():
        assert_close(runner(x).contiguous(), trunk(x))


def test_export_tool_errors_and_refuses_to_overwrite(tmp_path, capsys):
    export_main = load_tool("export_model").main
    output = tmp_path / "model.onnx"
    assert export_main(["--arch", "shufflenet_v9", "--format", "onnx", "--output", str(output)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: unknown --arch 'shufflenet_v9'") and "\n" not in error
    output.write_text("keep me")
    assert export_main(["--arch", "mobilenet_v1_x0_25", "--format", "onnx", "--output", str(output)]) == 2
    assert "already exists" in capsys.readouterr().err and output.read_text() == "keep me"
    missing = str(tmp_path / "missing.pth")
    assert export_main(["--arch", "mobilenet_v1_x0_25", "--format", "torchscript", "--output",
                        str(tmp_path / "m.pt"), "--weights", missing]) == 2
    assert "is not a file" in capsys.readouterr().err


def test_export_tool_writes_torchscript_and_onnx(tmp_path, capsys):
    export_main = load_tool("export_model").main
    output = tmp_path / "model.pt"
    common = ["--arch", "mobilenet_v1_x0_25", "--input-size", "64", "64"]
    assert export_main(common + ["--format", "torchscript", "--output", str(output)]) == 0
    assert output.stat().st_size > 0 and "wrote" in capsys.readouterr().out
    scripted = torch.jit.load(str(output))
    assert scripted(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_text("old")
    assert export_main(common + ["--format", "onnx", "--output", str(onnx_path), "--overwrite"]) == 0
    session = create_ort_session(onnx_path)
    assert session.run(None, {"input": torch.rand(1, 3, 96, 80).numpy()})[0].shape == (1, 1000)


@pytest.mark.parametrize("inverse", [False, True])
def test_channel_shuffle_exports_to_onnx_for_any_height_and_width(inverse):
    pytest.importorskip("onnxruntime")
    session = create_ort_session(onnx_bytes(ChannelShuffle(3, inverse), torch.randn(1, 12, 4, 6)))
    for shape in ((1, 12, 4, 6), (2, 12, 7, 3)):
        x = torch.randn(*shape)
        (exported,) = session.run(None, {"input": x.numpy()})
        assert torch.equal(torch.from_numpy(exported), channel_shuffle(x, 3, inverse))
        assert not torch.equal(torch.from_numpy(exported), x)
