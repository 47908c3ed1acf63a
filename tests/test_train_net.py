"""tools/train_net.py end to end on a small, easy synthetic dataset, and its handling of bad input."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from shufflenet_det.data.synthetic import generate_synthetic_coco

REPO = Path(__file__).resolve().parents[1]
TRAIN_NET = str(REPO / "tools" / "train_net.py")

# Small images, one worker-less process, few RoIs: a training run of about a minute on 2 cores.
FAST = [
    "INPUT.MIN_SIZE_TRAIN", "(192,)", "INPUT.MAX_SIZE_TRAIN", "320",
    "INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "320",
    "DATALOADER.NUM_WORKERS", "0", "SEED", "0",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "SHUFFLENET_DET.LOG_PERIOD", "10", "SHUFFLENET_DET.NUM_VIS_IMAGES", "2",
    "SHUFFLENET_DET.MIN_FREE_DISK_GB", "0.0",
]


def run(*args, env=None, timeout=900):
    return subprocess.run(
        [sys.executable, TRAIN_NET, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


@pytest.fixture(scope="module")
def easy_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("easy")
    generate_synthetic_coco(root, 64, 16, seed=1, difficulty=0.0, clutter=0.0, overwrite=True)
    return root


def register_args(root):
    return [
        "--register-coco", "easy_train", str(root / "annotations/instances_train.json"), str(root / "train"),
        "--register-coco", "easy_val", str(root / "annotations/instances_val.json"), str(root / "val"),
    ]


@pytest.fixture(scope="module")
def trained_run(easy_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    result = run(
        "--config", "quickstart.yaml", *register_args(easy_dataset),
        "DATASETS.TRAIN", "('easy_train',)", "DATASETS.TEST", "('easy_val',)",
        "SOLVER.MAX_ITER", "80", "SOLVER.STEPS", "(70,)", "SOLVER.CHECKPOINT_PERIOD", "40",
        "OUTPUT_DIR", str(output), *FAST,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, result


@pytest.mark.slow
def test_training_learns_and_reports_pycocotools_ap(trained_run, easy_dataset):
    output, _ = trained_run
    results = json.loads((output / "inference" / "results.json").read_text())
    box = results["bbox"] if "bbox" in results else results["metrics"]["bbox"]
    # An untrained detector scores AP50 ~0.001 here. 80 iterations of the quickstart recipe (AdamW, 16 RoIs per
    # image, NMS 0.3, a 64-channel RPN conv) reached AP50 6.8, 2.1, 4.0, 3.5, 2.1 and 3.8 with SEED 0-5 (measured
    # 2026-12-04; with the RPN conv at the feature's width 4.7, 4.6, 3.1; SGD's recipe before 1.2-3.6): the floor
    # lies far above the untrained score and below that spread.
    assert box["AP50"] > 1.0, box
    # The reported AP is pycocotools' own on the detections file the run wrote.
    gt = COCO(str(easy_dataset / "annotations/instances_val.json"))
    detections = gt.loadRes(str(output / "inference" / "coco_instances_results.json"))
    evaluation = COCOeval(gt, detections, "bbox")
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert box["AP"] == pytest.approx(100 * evaluation.stats[0], abs=1e-6)
    assert box["AP50"] == pytest.approx(100 * evaluation.stats[1], abs=1e-6)


@pytest.mark.slow
def test_run_writes_checkpoints_metrics_and_drawings(trained_run):
    output, _ = trained_run
    assert (output / "model_final.pth").is_file()
    assert (output / "model_0000040.pth").is_file()
    lines = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    assert any("total_loss" in line for line in lines)
    assert len(list((output / "vis").glob("*.jpg"))) == 2


@pytest.mark.slow
def test_eval_only_reproduces_the_final_evaluation(trained_run, easy_dataset, tmp_path):
    output, _ = trained_run
    final = json.loads((output / "inference" / "results.json").read_text())
    (tmp_path / "config.yaml").write_text("# the training run's config\n")
    result = run(
        "--config", "quickstart.yaml", "--eval-only", *register_args(easy_dataset),
        "DATASETS.TEST", "('easy_val',)", "MODEL.WEIGHTS", str(output / "model_final.pth"),
        "OUTPUT_DIR", str(tmp_path), *FAST,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((tmp_path / "inference" / "results.json").read_text())
    final_box = final.get("bbox", final.get("metrics", {}).get("bbox"))
    again_box = again.get("bbox", again.get("metrics", {}).get("bbox"))
    assert again_box["AP"] == pytest.approx(final_box["AP"], abs=1e-6)
    # An evaluation writes its config beside a training run's, not over it.
    assert (tmp_path / "config.yaml").read_text() == "# the training run's config\n"
    assert "easy_val" in (tmp_path / "config_eval.yaml").read_text()


@pytest.mark.parametrize(
    "args,message",
    [
        (["SOLVER.BASE_LRR", "0.1"], "SOLVER.BASE_LR"),
        (["MODEL.WEIGHTS", "/nonexistent/weights.pth"], "tools/convert_weights.py"),
        (["DATASETS.TRAIN", "('coco_2017_train',)"], "coco/annotations/instances_train2017.json"),
        (["DATASETS.TRAIN", "('no_such_set',)"], "no_such_set"),
        (["--eval-only"], "MODEL.WEIGHTS"),
        (["--eval-only", "MODEL.WEIGHTS", "out/model_final.pth"], "training writes OUTPUT_DIR/model_final.pth"),
        (["--eval-only", "--resume"], "no checkpoint in OUTPUT_DIR"),
        (["MODEL.ROI_HEADS.NUM_CLASSES", "3"], "has 5 categories but MODEL.ROI_HEADS.NUM_CLASSES is 3"),
        (["SHUFFLENET_DET.VIS_SCORE_THRESH", "70.0"], "SHUFFLENET_DET.VIS_SCORE_THRESH must be between 0 and 1"),
    ],
)
def test_user_mistakes_are_one_line_errors(args, message, tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    options = [a for a in args if a.startswith("--")]
    overrides = [a for a in args if not a.startswith("--")]
    result = run("--config", "quickstart.yaml", *options, "OUTPUT_DIR", str(tmp_path / "out"), *overrides, env=env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    error_lines = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert any(message in line for line in error_lines), result.stdout[-2000:] + result.stderr[-2000:]
    assert "holds no detector" not in result.stdout + result.stderr  # no advice about a file that is not there


def test_misplaced_option_and_taken_dataset_name(tmp_path, easy_dataset):
    result = run("--config", "quickstart.yaml", "OUTPUT_DIR", str(tmp_path / "a"), "--num-gpus", "2")
    log = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in log
    assert "'--num-gpus' came after the KEY VALUE overrides" in log
    result = run(
        "--config", "quickstart.yaml", "--register-coco", "synthetic_train",
        str(easy_dataset / "annotations/instances_val.json"), str(easy_dataset / "val"), "OUTPUT_DIR", str(tmp_path / "b"),
    )
    log = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in log
    assert "--register-coco: the name 'synthetic_train' is taken" in log


def test_detectron2_engine_without_detectron2_is_a_one_line_error(tmp_path):
    if importlib.util.find_spec("detectron2") is not None:
        pytest.skip("detectron2 is installed: test_d2.py runs --engine detectron2")
    result = run("--engine", "detectron2", "--config", "quickstart.yaml", "OUTPUT_DIR", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: shufflenet_det.integrations.d2 needs detectron2")


def test_missing_config_lists_the_available_ones(tmp_path):
    result = run("--config", "no_such_config.yaml", "OUTPUT_DIR", str(tmp_path))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "quickstart" in result.stderr + result.stdout


@pytest.mark.slow
def test_demo_draws_detections_and_reports_unreadable_inputs(trained_run, easy_dataset, tmp_path):
    import re

    import skimage

    output, _ = trained_run
    photos = Path(skimage.__file__).parent / "data"
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not an image")
    result = subprocess.run(
        [
            sys.executable, str(REPO / "tools" / "demo.py"), "--config", "quickstart.yaml",
            "--weights", str(output / "model_final.pth"),
            "--output", str(tmp_path / "demo"), "--confidence-threshold", "0.05",
            # Overrides typed right after the input list are overrides, not inputs.
            "--input", str(easy_dataset / "val"), str(photos / "astronaut.png"), str(not_an_image),
            "INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "320",
        ],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-2000:]  # one input failed, the rest were processed
    assert "notes.jpg: not an image" in log and "Traceback" not in log
    assert "INPUT.MIN_SIZE_TEST" not in log
    written = sorted(p.name for p in (tmp_path / "demo").iterdir())
    assert "astronaut.jpg" in written and len(written) == 16 + 1
    counts = [int(n) for n in re.findall(r"val/\d+\.jpg: (\d+) detection", log)]
    assert len(counts) == 16 and sum(counts) > 0  # the trained model finds objects on synthetic images

    # Without --confidence-threshold the config's SHUFFLENET_DET.VIS_SCORE_THRESH decides what is drawn.
    result = subprocess.run(
        [
            sys.executable, str(REPO / "tools" / "demo.py"), "--config", "quickstart.yaml",
            "--weights", str(output / "model_final.pth"), "--output", str(tmp_path / "demo_cfg"),
            "--input", str(easy_dataset / "val"), "INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "320",
            "SHUFFLENET_DET.VIS_SCORE_THRESH", "0.05",
        ],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    drawn = [int(n) for n in re.findall(r"val/\d+\.jpg: (\d+) detection", result.stdout + result.stderr)]
    assert result.returncode == 0 and drawn == counts, (drawn, counts)


def run_demo(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), "--config", "quickstart.yaml", *args,
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )


def test_demo_never_replaces_files_unasked(easy_dataset, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = photos / "1.jpg"
    photo.write_bytes((easy_dataset / "val").glob("*.jpg").__next__().read_bytes())
    original = photo.read_bytes()
    refusals = {
        # Into the input's own folder: the drawing would replace the photo, even with --overwrite.
        "would replace it": ("--input", str(photo), "--output", str(photos), "--overwrite"),
        "no image files": ("--input", str(tmp_path / "*.png"), "--output", str(tmp_path / "out")),
        "--confidence-threshold must be between 0 and 1": ("--input", str(photo), "--confidence-threshold", "5"),
        "SHUFFLENET_DET.VIS_SCORE_THRESH must be between 0 and 1": (
            "--input", str(photo), "SHUFFLENET_DET.VIS_SCORE_THRESH", "-0.5"),
        "missing.pth: no such file": ("--input", str(photo), "--weights", str(tmp_path / "missing.pth")),
    }
    for message, args in refusals.items():
        result = run_demo(*args)
        log = result.stdout + result.stderr
        assert result.returncode == 2 and message in log and "Traceback" not in log, (message, log[-1500:])
    assert photo.read_bytes() == original

    out = tmp_path / "out"
    result = run_demo("--input", str(photo), "--output", str(out))
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-1500:]
    assert "MODEL.WEIGHTS is empty: the detector has random weights" in log  # said, not hidden
    (out / "1.jpg").write_bytes(b"keep me")
    result = run_demo("--input", str(photo), "--output", str(out))
    assert result.returncode == 2 and "already exists; pass --overwrite" in result.stderr
    assert (out / "1.jpg").read_bytes() == b"keep me"
    assert run_demo("--input", str(photo), "--output", str(out), "--overwrite").returncode == 0
    assert (out / "1.jpg").read_bytes()[:2] == b"\xff\xd8"  # a new drawing (JPEG) in its place


def test_drawing_threshold_comes_from_the_command_line_or_the_config():
    from shufflenet_det.config import load_config
    from shufflenet_det.config.loading import ConfigError
    from shufflenet_det.detection.demo import drawing_threshold

    cfg = load_config("quickstart.yaml", ["SHUFFLENET_DET.VIS_SCORE_THRESH", "0.3"])
    assert drawing_threshold(cfg) == 0.3
    assert drawing_threshold(cfg, 0.6) == 0.6 and drawing_threshold(cfg, 0.0) == 0.0  # the command line wins
    with pytest.raises(ConfigError, match="--confidence-threshold must be between 0 and 1"):
        drawing_threshold(cfg, 50.0)
    with pytest.raises(ConfigError, match="SHUFFLENET_DET.VIS_SCORE_THRESH must be between 0 and 1"):
        drawing_threshold(load_config("quickstart.yaml", ["SHUFFLENET_DET.VIS_SCORE_THRESH", "1.5"]))
