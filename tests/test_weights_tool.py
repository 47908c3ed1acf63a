"""tools/convert_weights.py as a user runs it: a subprocess, one line per error, nothing overwritten.

The invocations run a few at a time (each spends most of its time importing torch), then the tests
check their results.
"""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from shufflenet_det import build_model
from shufflenet_det.weights import load_weights
from tool_loading import load_tool

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "megvii" / "megvii_shufflenetv1_0.5x_g3_random.pth.tar"
PRECIOUS = b"precious"


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def prepare_cases(root):
    """case -> (argument list, destination path)."""
    truncated = root / "cut.pth.tar"
    truncated.write_bytes(FIXTURE.read_bytes()[:100_000])
    not_checkpoint = root / "notes.pth"
    torch.save("hello", not_checkpoint)
    unsafe = root / "evil.pth"
    torch.save({"state_dict": {}, "x": RunsCode(root / "executed")}, unsafe)
    kept = root / "kept.pth"
    kept.write_bytes(PRECIOUS)
    cases = {
        "success": [FIXTURE, root / "out" / "converted.pth", "--from", "megvii"],
        "exists": [FIXTURE, kept],
        "unknown-arch": [FIXTURE, root / "a.pth", "--arch", "shufflenet_v1_x3_0_g3"],
        "wrong-arch": [FIXTURE, root / "b.pth", "--arch", "shufflenet_v1_x1_0_g3"],
        "truncated": [truncated, root / "d.pth"],
        "not-a-checkpoint": [not_checkpoint, root / "e.pth"],
        "unsafe": [unsafe, root / "f.pth"],
    }
    return {case: ([str(a) for a in args], Path(args[1])) for case, args in cases.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tool")
    cases = prepare_cases(root)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tool = str(ROOT / "tools" / "convert_weights.py")

    def run(args):
        return subprocess.run([sys.executable, tool, *args], capture_output=True, text=True, env=env, timeout=600)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        finished = dict(zip(cases, pool.map(run, [args for args, _ in cases.values()])))
    results = {case: (r.returncode, r.stdout, r.stderr, cases[case][1]) for case, r in finished.items()}
    results["root"] = root
    return results


def test_converts_and_reports(runs):
    code, stdout, stderr, dst = runs["success"]
    assert code == 0, stderr
    assert "source: megvii" in stdout and "arch: shufflenet_v1_x0_5_g3" in stdout
    assert "shuffle_layout: paper" in stdout and f"wrote {dst}" in stdout
    meta = load_weights(build_model("shufflenet_v1_x0_5_g3"), dst)
    assert meta["source"] == "megvii" and meta["format"] == "shufflenet_det.weights"


def test_overwrite_flag_and_source_check_in_process(tmp_path, capsys):
    main = load_tool("convert_weights").main
    dst = tmp_path / "w.pth"
    dst.write_bytes(PRECIOUS)
    assert main([str(FIXTURE), str(dst), "--from", "timm", "--overwrite"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {FIXTURE} looks like a megvii checkpoint, not timm"
    assert dst.read_bytes() == PRECIOUS
    assert main([str(FIXTURE), str(dst), "--overwrite"]) == 0
    assert torch.load(dst, weights_only=True)["meta"]["arch"] == "shufflenet_v1_x0_5_g3"


@pytest.mark.parametrize(
    "case,fragment",
    [
        ("exists", "already exists; pass --overwrite"),
        ("unknown-arch", "unknown model 'shufflenet_v1_x3_0_g3'. Did you mean"),
        ("wrong-arch", "does not fit shufflenet_v1_x1_0_g3: shape mismatch: stem.0.conv.weight [12, 3, 3, 3]"),
        ("truncated", "is truncated or not a checkpoint"),
        ("not-a-checkpoint", "holds a str, not a state dict"),
        ("unsafe", "refusing to load"),
    ],
)
def test_errors_are_one_line_and_write_nothing(runs, case, fragment):
    code, stdout, stderr, dst = runs[case]
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert fragment in lines[0]
    assert stdout == ""
    if case == "exists":
        assert dst.read_bytes() == PRECIOUS
    else:
        assert not dst.exists()
    assert not (runs["root"] / "executed").exists()
