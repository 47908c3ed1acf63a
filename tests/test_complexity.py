import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from shufflenet_det import build_model
from tool_loading import load_tool
from shufflenet_det.analysis import (
    REFERENCES,
    analyze_models,
    complexity,
    count_mult_adds,
    count_parameters,
    format_breakdown,
    format_table,
)

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "analyze_model.py"

# The official release (docs/reference.md section 2): exact parameter counts (no classifier bias) and
# conv + linear multiply-adds of its model code at 224x224.
OFFICIAL = {
    "shufflenet_v1_x0_5_g3": (717_324, 37.6e6),
    "shufflenet_v1_x1_0_g3": (1_864_728, 137.5e6),
    "shufflenet_v1_x1_5_g3": (3_441_168, 292.4e6),
    "shufflenet_v1_x2_0_g3": (5_449_776, 524.0e6),
    "shufflenet_v1_x0_5_g8": (1_010_448, 40.5e6),
    "shufflenet_v1_x1_0_g8": (2_433_768, 138.4e6),
    "shufflenet_v1_x1_5_g8": (4_268_952, 290.2e6),
    "shufflenet_v1_x2_0_g8": (6_521_232, 521.9e6),
}
# Paper Table 1: complexity (MFLOPs) of ShuffleNet 1x by group count.
PAPER_TABLE1 = {1: 143e6, 2: 140e6, 3: 137e6, 4: 133e6, 8: 137e6}


@pytest.fixture(scope="module")
def rows():
    names = sorted(set(OFFICIAL) | {f"shufflenet_v1_x1_0_g{g}" for g in PAPER_TABLE1} | {"mobilenet_v1_x1_0"})
    return {row["arch"]: row for row in analyze_models(names)}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_variants_match_the_release(rows, name):
    params, mult_adds = OFFICIAL[name]
    row = rows[name]
    assert row["params_without_classifier_bias"] == params
    assert row["params"] == params + 1000
    assert row["mult_adds"] == pytest.approx(mult_adds, rel=0.01)
    official = row["references"]["official"]
    assert official["params"] == params and official["params_diff"] == 0
    assert abs(official["mult_adds_diff"]) < 0.01


@pytest.mark.parametrize("groups", sorted(PAPER_TABLE1))
def test_paper_table1_complexity(rows, groups):
    row = rows[f"shufflenet_v1_x1_0_g{groups}"]
    assert row["mult_adds"] == pytest.approx(PAPER_TABLE1[groups], rel=0.02)
    assert row["references"]["paper"]["mult_adds"] == PAPER_TABLE1[groups]


def test_mobilenet_matches_its_paper(rows):
    row = rows["mobilenet_v1_x1_0"]
    assert row["mult_adds"] == pytest.approx(569e6, rel=0.01)
    assert round(row["params"] / 1e6, 1) == 4.2
    # The MobileNet paper's count includes its classifier bias, so it is compared with our total.
    paper = row["references"]["paper"]
    assert paper["params_counts_classifier_bias"]
    assert paper["params_diff"] == pytest.approx(row["params"] / 4.2e6 - 1)


def test_every_reference_names_a_registered_model_and_cites_a_source():
    from shufflenet_det import list_models

    assert set(REFERENCES) <= set(list_models())
    for by_source in REFERENCES.values():
        for figures in by_source.values():
            assert figures.citation and figures.mult_adds


class TinyNet(nn.Module):
    """Convolutions and a linear layer among ops that must not be counted (BN, ReLU, pools, add, cat)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = x + F.max_pool2d(x, 3, 1, 1)
        shortcut = F.avg_pool2d(x, 2)
        x = torch.cat((self.grouped(x), shortcut), dim=1)
        return self.fc(torch.flatten(self.pool(x), 1))


def test_counts_convolutions_and_linear_layers_only():
    model = TinyNet()
    conv = 10 * 12 * 8 * 3 * 3 * 3  # output pixels * out channels * in channels * kernel
    grouped = 5 * 6 * 8 * (8 // 4) * 3 * 3
    linear = 16 * 5
    result = complexity(model, (10, 12))
    assert result.mult_adds == conv + grouped + linear == count_mult_adds(model, (10, 12))
    assert result.mult_adds_by_stage == {"conv": conv, "bn": 0, "grouped": grouped, "pool": 0, "fc": linear}
    assert {"aten::batch_norm", "aten::add", "aten::avg_pool2d", "aten::max_pool2d"} <= set(result.uncounted_ops)
    assert result.params == count_parameters(model) == (8 * 27 + 8) + 16 + 8 * 2 * 9 + (16 * 5 + 5)
    assert result.params_without_classifier_bias == result.params - 5


def test_counting_leaves_the_model_as_it_was():
    model = build_model("shufflenet_v1_x0_25_g8").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    complexity(model, (64, 64))
    assert model.training
    assert torch.get_num_threads() == threads
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_stage_breakdown_adds_up(rows):
    row = rows["shufflenet_v1_x1_0_g3"]
    stages = row["mult_adds_by_stage"]
    assert list(stages) == ["stem", "stage2", "stage3", "stage4", "pool", "fc"]
    assert sum(stages.values()) == row["mult_adds"]
    assert stages["fc"] == 960 * 1000
    assert sum(row["params_by_stage"].values()) == row["params"]
    text = format_breakdown(row)
    assert "stage3" in text and "1,865,728 parameters" in text


def test_table_shows_references_and_differences(rows):
    table = format_table([rows["shufflenet_v1_x0_5_g3"], rows["mobilenet_v1_x1_0"]])
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()}
    assert cells["model"][:3] == ["params", "params-nb", "MAdds"]
    shufflenet = cells["shufflenet_v1_x0_5_g3"]
    assert shufflenet[:3] == ["0.718", "0.717", "37.6"] and "exact" in shufflenet
    mobilenet = " | ".join(cells["mobilenet_v1_x1_0"])
    assert "568.7" in mobilenet and "569" in mobilenet


def test_bad_input_sizes_are_refused():
    model = TinyNet()
    for size in [(0, 10), (10,), (10.5, 10), (-1, 4)]:
        with pytest.raises(ValueError, match="two positive integers"):
            complexity(model, size)


def run_tool(*args: str):
    return load_tool("analyze_model").main(list(args))


def test_tool_json_holds_the_numbers(capsys):
    assert run_tool("--arch", "shufflenet_v1_x0_5_g3", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    (row,) = report["models"]
    assert report["input_size"] == [224, 224]
    assert row["params"] == 718_324 and row["params_without_classifier_bias"] == 717_324
    assert row["mult_adds"] == pytest.approx(37.6e6, rel=0.01)
    assert row["references"]["official"]["params_diff"] == 0


def test_tool_scales_with_input_size(capsys):
    counts = {}
    for size in (("224", "224"), ("320", "480")):
        assert run_tool("--arch", "mobilenet_v1_x0_25", "--input-size", *size, "--json") == 0
        counts[size] = json.loads(capsys.readouterr().out)["models"][0]
    small, large = counts[("224", "224")], counts[("320", "480")]
    pixels = (320 * 480) / (224 * 224)
    assert large["mult_adds"] / small["mult_adds"] == pytest.approx(pixels, rel=0.03)
    # Everything but the classifier is convolutional: exactly proportional at multiples of 32.
    conv = {k: v["mult_adds"] - v["mult_adds_by_stage"]["fc"] for k, v in (("s", small), ("l", large))}
    assert conv["l"] / conv["s"] == pytest.approx(pixels, rel=1e-9)
    # Published figures are for 224x224: at another size only parameters are compared.
    assert large["references"]["paper"]["mult_adds"] is None
    assert large["references"]["paper"]["params"] == 500_000


@pytest.mark.parametrize(
    "args,message",
    [
        (("--input-size", "0", "480"), "error: --input-size needs two positive integers (height width), got 0 480"),
        (("--input-size", "320"), "error: argument --input-size: expected 2 arguments"),
        (("--latency",), "error: unrecognized arguments: --latency"),
    ],
)
def test_tool_rejects_bad_input_in_one_line(capsys, args, message):
    assert run_tool(*args) == 2
    assert capsys.readouterr().err.strip() == message


def test_tool_output_file_is_not_overwritten(tmp_path, capsys):
    target = tmp_path / "complexity.json"
    target.write_text("keep me")
    args = ("--arch", "shufflenet_v1_x0_25_g1", "--input-size", "64", "64", "--json", "--output", str(target))
    assert run_tool(*args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert target.read_text() == "keep me"
    assert run_tool(*args, "--overwrite") == 0
    assert json.loads(target.read_text())["models"][0]["arch"] == "shufflenet_v1_x0_25_g1"


def test_unknown_model_exits_2_with_the_valid_names():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the tool finds the package itself
    result = subprocess.run(
        [sys.executable, str(TOOL), "--arch", "shufflenet_v1_x1_0_g5"],
        capture_output=True,
        text=True,
        cwd=str(REPO.parent),
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: unknown model 'shufflenet_v1_x1_0_g5'. Valid names: mobilenet_v1_x0_25, ")
    assert "shufflenet_v1_x1_0_g3" in lines[0]
    assert result.stdout == ""
