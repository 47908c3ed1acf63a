"""Classification: recipe configs, data pipeline, loss, evaluation, and whole runs of tools/train_cls.py
on a tiny generated shapes dataset (training to accuracy, exact resume, eval-only, checkpoints that
load as detection backbones, error messages)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from shufflenet_det.classification import (
    ClassificationLoss,
    CorruptDatasetError,
    DatasetMissingError,
    ImageFolderDataset,
    ImagePreprocessing,
    Normalizer,
    ResumableSampler,
    accuracy_table,
    argument_parser,
    benchmark_classifier,
    build_classifier,
    build_test_transform,
    build_train_transform,
    dataset_root,
    label_smoothing_cross_entropy,
    list_classification_configs,
    load_classification_config,
    main,
    topk_correct,
)
from shufflenet_det.classification.synthetic import make_shapes_dataset
from shufflenet_det.config import ConfigError
from shufflenet_det.engine import build_lr_scheduler, build_optimizer, launch
from shufflenet_det.utils.io import safe_torch_load

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "train_cls.py"
MEGVII_NAME = "megvii/megvii_shufflenetv1_0.5x_g3_random.pth.tar"
MEGVII_REFERENCE_NAME = "megvii/megvii_shufflenetv1_0.5x_g3_reference.pt"

IMAGENET_CONFIGS = [
    "mobilenet_v1_1.0",
    "shufflenet_0.5x_g3",
    "shufflenet_0.5x_g8",
    "shufflenet_1.5x_g3",
    "shufflenet_1.5x_g8",
    "shufflenet_1x_g3",
    "shufflenet_1x_g3_noshuffle",
    "shufflenet_1x_g8",
    "shufflenet_2x_g3",
    "shufflenet_2x_g8",
]
ARCHS = {
    "mobilenet_v1_1.0": "mobilenet_v1_x1_0",
    "shufflenet_0.5x_g3": "shufflenet_v1_x0_5_g3",
    "shufflenet_0.5x_g8": "shufflenet_v1_x0_5_g8",
    "shufflenet_1.5x_g3": "shufflenet_v1_x1_5_g3",
    "shufflenet_1.5x_g8": "shufflenet_v1_x1_5_g8",
    "shufflenet_1x_g3": "shufflenet_v1_x1_0_g3",
    "shufflenet_1x_g3_noshuffle": "shufflenet_v1_x1_0_g3",
    "shufflenet_1x_g8": "shufflenet_v1_x1_0_g8",
    "shufflenet_2x_g3": "shufflenet_v1_x2_0_g3",
    "shufflenet_2x_g8": "shufflenet_v1_x2_0_g8",
}
# 40 iterations of 32 images: 8 epochs of the tiny dataset. Checkpoints at 20 and 40.
TRAIN = [
    "SOLVER.MAX_ITER", 40, "SOLVER.CHECKPOINT_PERIOD", 20, "TEST.EVAL_PERIOD", 20,
    "SHUFFLENET_DET.LOG_PERIOD", 5, "SHUFFLENET_DET.CHECKPOINTS_TO_KEEP", 0,
]  # fmt: skip


def fixture_path(name: str) -> Path:
    for folder in (REPO / "tests" / "fixtures", Path("/work/shared/fixtures")):
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"fixture {name} not available")


def run_tool(argv) -> int:
    """``python tools/train_cls.py ARGV`` in this process, on one CPU thread (bit-reproducible), with the
    logger set-up undone afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = argument_parser().parse_args([str(arg) for arg in argv])
        return launch(main, args.num_gpus, args=(args,))
    finally:
        torch.set_num_threads(threads)
        project_logger = logging.getLogger("shufflenet_det")
        for handler in list(project_logger.handlers):
            project_logger.removeHandler(handler)
            handler.close()
        project_logger.propagate = True


def metrics(output_dir: Path):
    return [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", num_classes=4)
    # A damaged file: the loader must log it, count it and go on with the next image.
    good = next((root / "train" / "disk").iterdir()).read_bytes()
    (root / "train" / "disk" / "zz_truncated.JPEG").write_bytes(good[: len(good) // 3])
    return root


@pytest.fixture(scope="module")
def trained(shapes_root, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("train")
    argv = ["--config", "tiny_shapes", *TRAIN, "CLASSIFICATION.DATASET_ROOT", shapes_root, "OUTPUT_DIR", output_dir]
    assert run_tool([*argv, "DATALOADER.NUM_WORKERS", 0]) == 0
    return output_dir


# ---------------------------------------------------------------------------- recipe and configs
def test_shipped_configs_are_listed():
    assert list_classification_configs() == sorted(["Base-Classification", "quickstart_crops", "tiny_shapes", *IMAGENET_CONFIGS])


@pytest.mark.parametrize("name", IMAGENET_CONFIGS)
def test_imagenet_configs_follow_the_paper_recipe(name):
    cfg = load_classification_config(name)
    solver = cfg.SOLVER
    assert solver.IMS_PER_BATCH == 1024 and solver.BASE_LR == 0.5  # 0.5 per 1024 images
    assert solver.MAX_ITER == 300_000 and solver.WARMUP_ITERS == 0
    assert solver.LR_SCHEDULER_NAME == "WarmupLinearLR" and solver.BASE_LR_END == 0.0
    assert solver.MOMENTUM == 0.9 and solver.WEIGHT_DECAY == 4e-5
    assert cfg.CLASSIFICATION.LABEL_SMOOTHING == 0.1 and cfg.CLASSIFICATION.NUM_CLASSES == 1000
    assert cfg.CLASSIFICATION.COLOR_JITTER == (0.4, 0.4, 0.4) and cfg.INPUT.RANDOM_FLIP == "horizontal"
    assert (cfg.CLASSIFICATION.TRAIN_CROP_SIZE, cfg.CLASSIFICATION.TEST_RESIZE_SIZE) == (224, 256)
    assert cfg.SOLVER.AMP.ENABLED and cfg.SHUFFLENET_DET.CHANNELS_LAST
    with torch.device("meta"):  # architecture only
        model = build_classifier(cfg)
    assert model.arch == ARCHS[name] and model.fc.out_features == 1000
    if name.startswith("shufflenet"):
        assert (model.shuffle_layout == "none") == name.endswith("noshuffle")


def test_linear_schedule_decays_to_zero_at_max_iter():
    cfg = load_classification_config("shufflenet_0.5x_g3", ["MODEL.DEVICE", "cpu"])
    optimizer = build_optimizer(cfg, torch.nn.Linear(2, 2))
    scheduler = build_lr_scheduler(cfg, optimizer)
    for iteration, lr in ((0, 0.5), (75_000, 0.375), (150_000, 0.25), (300_000, 0.0)):
        scheduler.set_iteration(iteration)
        assert scheduler.get_last_lr()[0] == pytest.approx(lr, abs=1e-12)


def test_weight_decay_only_on_conv_and_linear_weights():
    cfg = load_classification_config("shufflenet_0.5x_g3", ["MODEL.DEVICE", "cpu"])
    model = build_classifier(cfg)
    optimizer = build_optimizer(cfg, model)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(decay_of) == sum(1 for _ in model.parameters())
    for name, param in model.named_parameters():
        assert decay_of[id(param)] == (4e-5 if param.dim() > 1 else 0.0), name
    assert sum(1 for p in model.parameters() if p.dim() > 1) > 0 and model.fc.bias is not None


def test_config_names_resolve_and_unknown_names_list_the_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    by_name = load_classification_config("shufflenet_1x_g8")
    assert by_name == load_classification_config("shufflenet_1x_g8.yaml")
    assert by_name == load_classification_config(str(REPO / "configs/classification/shufflenet_1x_g8.yaml"))
    with pytest.raises(ConfigError, match=r"config 'shufflenet_3x' not found; classification configs: .*tiny_shapes"):
        load_classification_config("shufflenet_3x")
    with pytest.raises(ConfigError, match="--config is required"):
        load_classification_config("")


# ---------------------------------------------------------------------------- loss and metrics
def test_label_smoothing_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([0, 1])
    expected = 0.0
    for row, label in zip(logits.tolist(), labels.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        log_p = [v - log_z for v in row]
        target = [0.1 / 3 + (0.9 if k == label else 0.0) for k in range(3)]
        expected += -sum(t * lp for t, lp in zip(target, log_p)) / 2
    assert label_smoothing_cross_entropy(logits, labels, 0.1).item() == pytest.approx(expected, rel=1e-6)
    plain = -(logits.log_softmax(1)[[0, 1], labels]).mean()
    assert label_smoothing_cross_entropy(logits, labels, 0.0).item() == pytest.approx(plain.item(), rel=1e-6)
    assert label_smoothing_cross_entropy(logits.bfloat16(), labels).dtype == torch.float32
    with pytest.raises(ValueError, match="LABEL_SMOOTHING"):
        ClassificationLoss(lambda images: images, 1.0)


def test_topk_counts_and_caps_k_at_the_number_of_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 1])
    assert topk_correct(logits, labels, (1, 2, 5)).tolist() == [1, 2, 3]


def test_accuracy_table_shows_reported_accuracy_beside_measured():
    results = {"num_images": 50000, "top1": 67.5, "top5": 87.0, "top1_error": 32.5, "top5_error": 13.0}
    meta = {"top1_error": 32.2, "top5_error": 12.3, "metrics_from": "megvii README"}
    table = accuracy_table(results, meta)
    assert "| measured" in table and "| reported (megvii README)" in table
    assert "67.80" in table and "87.70" in table and "32.20" in table
    assert "reported" not in accuracy_table(results, {"source": "shufflenet_det"})


# ---------------------------------------------------------------------------- data
def test_transforms_channel_order_and_normalization():
    image = Image.new("RGB", (80, 60), (200, 100, 10))
    spec = ImagePreprocessing("BGR", (10.0, 20.0, 30.0), (2.0, 4.0, 5.0), resize_size=64, crop_size=56)
    tensor = build_test_transform(spec)(image)
    assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (3, 56, 56)
    assert tensor[:, 20, 20].tolist() == [10, 100, 200]  # BGR
    normalized = Normalizer(spec)(tensor[None])
    assert normalized[0, :, 20, 20].tolist() == [0.0, 20.0, 34.0]
    rgb = build_train_transform(48, (0.5, 1.0), color_jitter=(0, 0, 0), input_format="RGB")(image)
    assert tuple(rgb.shape) == (3, 48, 48) and rgb[:, 24, 24].tolist() == [200, 100, 10]
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        ImagePreprocessing("YUV")


def test_preprocessing_from_metadata_replaces_the_config_and_says_what_changed():
    config = ImagePreprocessing("BGR", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    meta = {"input_format": "RGB", "pixel_mean": [123.675, 116.28, 103.53], "pixel_std": None, "crop_size": 224}
    used, changes = config.with_metadata(meta)
    assert used.input_format == "RGB" and used.pixel_mean == (123.675, 116.28, 103.53)
    assert used.pixel_std == (1.0, 1.0, 1.0) and used.crop_size == 224
    assert changes == [
        "input_format: config BGR, weights RGB",
        "pixel_mean: config [0.0, 0.0, 0.0], weights [123.675, 116.28, 103.53]",
    ]
    assert config.with_metadata({}) == (config, [])


def test_sampler_batches_are_a_function_of_the_iteration():
    def take(sampler, count):
        stream = iter(sampler)
        return [next(stream) for _ in range(count)]

    whole = take(ResumableSampler(10, global_batch=4, seed=3), 4 * 6)
    assert sorted(index for index, _ in whole[:10]) == list(range(10))  # each epoch a permutation
    assert sorted(index for index, _ in whole[10:20]) == list(range(10))
    assert [i for i, _ in whole[:10]] != [i for i, _ in whole[10:20]]  # reshuffled per epoch
    assert take(ResumableSampler(10, 4, seed=3, start_iter=2), 8) == whole[8:16]  # resume by arithmetic
    rank0 = take(ResumableSampler(10, 4, seed=3, rank=0, world_size=2), 6)
    rank1 = take(ResumableSampler(10, 4, seed=3, rank=1, world_size=2), 6)
    interleaved = [
        item for step in range(3) for item in rank0[2 * step : 2 * step + 2] + rank1[2 * step : 2 * step + 2]
    ]
    assert interleaved == whole[:12]  # the same global batches at any number of processes
    assert len({seed for _, seed in whole}) == len(whole)  # a fresh augmentation seed per position
    assert take(ResumableSampler(10, 4, seed=4), 8) != whole[:8]


def test_seeded_items_augment_reproducibly(shapes_root):
    transform = build_train_transform(40, (0.2, 1.0))
    dataset = ImageFolderDataset(shapes_root / "train", transform)
    first, again, other = dataset[(5, 123)], dataset[(5, 123)], dataset[(5, 124)]
    assert torch.equal(first["image"], again["image"]) and not torch.equal(first["image"], other["image"])


def test_unreadable_images_are_skipped_and_counted(shapes_root, tmp_path, caplog):
    dataset = ImageFolderDataset(
        shapes_root / "train", build_test_transform(ImagePreprocessing(resize_size=64, crop_size=56))
    )
    index = next(i for i, (path, _) in enumerate(dataset.samples) if path.endswith("zz_truncated.JPEG"))
    with caplog.at_level(logging.WARNING, logger="shufflenet_det"):
        item = dataset[index]
    assert item["skipped"] == 1 and item["label"] == dataset.samples[index + 1][1]
    assert "Skipping unreadable image" in caplog.text and "zz_truncated.JPEG" in caplog.text
    broken = tmp_path / "broken" / "only"
    broken.mkdir(parents=True)
    for k in range(20):
        (broken / f"{k}.JPEG").write_bytes(b"not an image")
    broken_dataset = ImageFolderDataset(broken.parent, build_test_transform(ImagePreprocessing()))
    with pytest.raises(CorruptDatasetError, match="16 unreadable images in a row"):
        broken_dataset[0]
    with pytest.raises(CorruptDatasetError) as raised:  # from a worker process: still one line
        next(iter(torch.utils.data.DataLoader(broken_dataset, num_workers=1)))
    assert str(raised.value).startswith("16 unreadable images in a row") and "\n" not in str(raised.value)


def test_dataset_root_from_config_or_environment(monkeypatch):
    cfg = load_classification_config("shufflenet_1x_g3")
    monkeypatch.delenv("IMAGENET", raising=False)
    with pytest.raises(
        DatasetMissingError, match=r"CLASSIFICATION.DATASET_ROOT is empty and \$IMAGENET is not set; get ImageNet"
    ):
        dataset_root(cfg)
    monkeypatch.setenv("IMAGENET", "/data/imagenet")
    assert dataset_root(cfg) == Path("/data/imagenet")
    assert dataset_root(load_classification_config("tiny_shapes")) == Path("datasets/synthetic_classification")


def test_missing_imagenet_is_one_line_with_exit_status_2(tmp_path):
    missing = tmp_path / "nowhere"
    result = subprocess.run(
        [sys.executable, str(TOOL), "--config", "shufflenet_0.5x_g3", "MODEL.DEVICE", "cpu",
         "CLASSIFICATION.DATASET_ROOT", missing, "OUTPUT_DIR", tmp_path / "out"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error:" in line]
    assert len(errors) == 1
    assert f"dataset split not found: {missing}/train does not exist" in errors[0]
    assert "https://image-net.org" in errors[0] and "IMAGENET=ROOT" in errors[0]


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("CLASSIFICATION.NUM_CLASSES", 5, "has 4 class folders but CLASSIFICATION.NUM_CLASSES is 5"),
        ("INPUT.FORMAT", "YUV", "INPUT.FORMAT must be one of RGB, BGR, got 'YUV'"),
        ("CLASSIFICATION.LABEL_SMOOTHING", 1.0, "CLASSIFICATION.LABEL_SMOOTHING must be in [0, 1), got 1.0"),
        ("CLASSIFICATION.SMOOTHING", 0.1, "nearest valid key: CLASSIFICATION.LABEL_SMOOTHING"),
    ],
)
def test_bad_settings_are_one_line_errors(setting, value, message, shapes_root, tmp_path, capsys):
    argv = ["--config", "tiny_shapes", setting, value, "CLASSIFICATION.DATASET_ROOT", shapes_root]
    assert run_tool([*argv, "OUTPUT_DIR", tmp_path, "DATALOADER.NUM_WORKERS", 0]) == 2
    output = capsys.readouterr()
    errors = [line for line in (output.out + output.err).splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "last_checkpoint").exists()


def test_eval_only_needs_weights(shapes_root, tmp_path, capsys):
    argv = ["--eval-only", "--config", "tiny_shapes", "CLASSIFICATION.DATASET_ROOT", shapes_root]
    assert run_tool([*argv, "OUTPUT_DIR", tmp_path]) == 2
    output = capsys.readouterr()
    assert "--eval-only needs trained weights: set MODEL.WEIGHTS" in output.out + output.err
    assert not (tmp_path / "eval_results.json").exists()


# ---------------------------------------------------------------------------- whole runs
@pytest.mark.slow
def test_training_learns_the_tiny_dataset(trained):
    lines = metrics(trained)
    evaluations = [line for line in lines if "val/top1" in line]
    assert [line["iteration"] for line in evaluations] == [20, 40]
    assert evaluations[-1]["val/top1"] >= 75.0  # chance is 25%
    assert evaluations[-1]["val/num_images"] == 40
    losses = [line["total_loss"] for line in lines if "total_loss" in line]
    assert losses[-1] < 0.8 * math.log(4)
    assert any(line.get("skipped_images", 0) >= 1 for line in lines)  # the truncated file was met and counted


@pytest.mark.slow
def test_checkpoints_carry_the_weights_metadata(trained):
    final = safe_torch_load(trained / "model_final.pth")
    meta = final["meta"]
    assert meta["source"] == "shufflenet_det" and meta["arch"] == "shufflenet_v1_x0_25_g3"
    assert (
        meta["input_format"] == "BGR" and meta["pixel_mean"] == [0.0, 0.0, 0.0] and meta["pixel_std"] == [1.0, 1.0, 1.0]
    )
    assert meta["classes"] == ["disk", "square", "stripes", "triangle"] and meta["num_classes"] == 4
    assert meta["shuffle_layout"] == "paper" and (meta["resize_size"], meta["crop_size"]) == (64, 56)
    top1 = [line["val/top1"] for line in metrics(trained) if "val/top1" in line][-1]
    assert (
        meta["top1_error"] == pytest.approx(100 - top1)
        and meta["metrics_from"] == "its training run, val split, iteration 40"
    )
    assert final["iteration"] == 40 and isinstance(final["data_seed"], int)
    assert safe_torch_load(trained / "model_0000020.pth")["meta"]["arch"] == "shufflenet_v1_x0_25_g3"


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(trained, shapes_root, tmp_path):
    # As if the run had been killed after its iteration-20 checkpoint; the resumed run also uses data
    # worker processes, which must not change the data order or the augmentation.
    shutil.copy(trained / "model_0000020.pth", tmp_path / "model_0000020.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000020.pth\n")
    argv = ["--resume", "--config", "tiny_shapes", *TRAIN, "CLASSIFICATION.DATASET_ROOT", shapes_root]
    assert run_tool([*argv, "DATALOADER.NUM_WORKERS", 2, "OUTPUT_DIR", tmp_path]) == 0
    expected, resumed = safe_torch_load(trained / "model_final.pth"), safe_torch_load(tmp_path / "model_final.pth")
    assert expected["model"].keys() == resumed["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for index, state in expected["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][index]["momentum_buffer"])
    assert expected["meta"] == resumed["meta"] and expected["data_seed"] == resumed["data_seed"]
    logged = ("total_loss", "lr", "val/top1", "val/top5")
    after_resume = [
        {k: line.get(k) for k in ("iteration", *logged)} for line in metrics(tmp_path) if line["iteration"] > 20
    ]
    uninterrupted = [
        {k: line.get(k) for k in ("iteration", *logged)} for line in metrics(trained) if line["iteration"] > 20
    ]
    assert after_resume == uninterrupted


@pytest.mark.slow
def test_eval_only_uses_the_checkpoint_preprocessing(trained, shapes_root, tmp_path, capsys):
    final_top1 = [line["val/top1"] for line in metrics(trained) if "val/top1" in line][-1]
    shutil.copy(trained / "model_final.pth", tmp_path / "model_final.pth")
    (tmp_path / "last_checkpoint").write_text("model_final.pth\n")
    # The config disagrees with the checkpoint: the checkpoint's metadata wins, and the log says so.
    argv = ["--eval-only", "--resume", "--config", "tiny_shapes", "CLASSIFICATION.DATASET_ROOT", shapes_root,
            "INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", "[100.0, 100.0, 100.0]", "OUTPUT_DIR", tmp_path]  # fmt: skip
    assert run_tool(argv) == 0
    output = capsys.readouterr().out
    assert "Using the weights' preprocessing, not the config's: input_format: config RGB, weights BGR" in output
    assert "pixel_mean: config [100.0, 100.0, 100.0], weights [0.0, 0.0, 0.0]" in output
    report = json.loads((tmp_path / "eval_results.json").read_text())
    assert report["top1"] == pytest.approx(final_top1) and report["num_images"] == 40
    assert report["preprocessing"]["input_format"] == "BGR"
    assert report["reported"]["top1_error"] == pytest.approx(100 - final_top1)
    assert "| measured" in output and "| reported (its training run, val split, iteration 40)" in output


def test_benchmark_reports_throughput():
    cfg = load_classification_config("tiny_shapes", ["SOLVER.IMS_PER_BATCH", 8])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = benchmark_classifier(cfg, iterations=2, warmup=1)
    finally:
        torch.set_num_threads(threads)
        logging.getLogger("shufflenet_det").handlers.clear()
        logging.getLogger("shufflenet_det").propagate = True
    assert results["arch"] == "shufflenet_v1_x0_25_g3" and results["batch_size"] == 8
    assert results["image_size"] == cfg.CLASSIFICATION.TRAIN_CROP_SIZE
    assert results["device"] == "cpu" and results["setting"] == "1 CPU threads"
    # A training step is a forward, a backward and an update: several times an inference's work.
    assert results["inference_images_per_s"] > results["train_images_per_s"]


# ---------------------------------------------------------------------------- with shufflenet_det.weights
@pytest.mark.slow
def test_eval_only_of_a_training_checkpoint_as_model_weights(trained, shapes_root, tmp_path, capsys):
    argv = ["--eval-only", "--config", "tiny_shapes", "CLASSIFICATION.DATASET_ROOT", shapes_root,
            "MODEL.WEIGHTS", trained / "model_final.pth", "OUTPUT_DIR", tmp_path]  # fmt: skip
    assert run_tool(argv) == 0
    report = json.loads((tmp_path / "eval_results.json").read_text())
    final_top1 = [line["val/top1"] for line in metrics(trained) if "val/top1" in line][-1]
    assert report["top1"] == pytest.approx(final_top1)
    capsys.readouterr()
    assert run_tool([*argv, "CLASSIFICATION.NUM_CLASSES", 5]) == 2
    assert "the weights classify 4 classes but CLASSIFICATION.NUM_CLASSES is 5" in capsys.readouterr().out


@pytest.mark.parametrize("form", ["official", "converted"])
def test_megvii_weights_give_the_reference_logits(form, tmp_path):
    from shufflenet_det import weights

    reference = torch.load(fixture_path(MEGVII_REFERENCE_NAME), weights_only=True)
    path = fixture_path(MEGVII_NAME)
    if form == "converted":  # what tools/convert_weights.py writes
        path = weights.save_weights(tmp_path / "converted.pth", *weights.convert_checkpoint(path))
    cfg = load_classification_config(
        "shufflenet_0.5x_g3", ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(path),
                               "INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", "[1.0, 2.0, 3.0]"]  # fmt: skip
    )
    model = build_classifier(cfg).eval()
    # The evaluation input pipeline, configured from the weights' metadata (BGR, no normalization).
    preprocessing, changes = ImagePreprocessing.from_config(cfg).with_metadata(model.weights_meta)
    assert preprocessing.input_format == "BGR" and changes
    with torch.no_grad():
        logits = model(Normalizer(preprocessing)(reference["input_bgr_uint8"]))
    torch.testing.assert_close(logits, reference["logits"], rtol=0, atol=1e-4)

    # The same through image files and the evaluation loop: the reference's argmax as labels gives 100%.
    # 256x256 files (the input padded by 16 pixels) resize to themselves and center crop to the input.
    root = tmp_path / "imagenet"
    labels = reference["logits"].argmax(1).tolist()
    for label in range(1000):  # a subset of ImageNet keeps all class folders, most of them empty
        (root / "val" / f"class{label:04d}").mkdir(parents=True)
    for k, (image, label) in enumerate(zip(reference["input_bgr_uint8"], labels)):
        padded = torch.nn.functional.pad(image.flip(0), (16, 16, 16, 16), value=128)  # files are RGB
        Image.fromarray(padded.permute(1, 2, 0).numpy()).save(root / "val" / f"class{label:04d}" / f"{k}.png")
    argv = ["--eval-only", "--config", "shufflenet_0.5x_g3", "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", path,
            "CLASSIFICATION.DATASET_ROOT", root, "DATALOADER.NUM_WORKERS", 0,
            "SHUFFLENET_DET.MIN_FREE_DISK_GB", 0.0, "OUTPUT_DIR", tmp_path / "out"]  # fmt: skip
    assert run_tool(argv) == 0
    report = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert report["top1"] == 100.0 and report["num_images"] == 2
    assert report["reported"]["top1_error"] == 42.7  # the official README's figure for 0.5x g3


@pytest.mark.slow
def test_training_checkpoint_loads_as_a_detection_backbone(trained):
    from shufflenet_det.config import load_config
    from shufflenet_det.detection import build_backbone, build_detector

    checkpoint = safe_torch_load(trained / "model_final.pth")["model"]
    cfg = load_config(
        "quickstart", ["MODEL.SHUFFLENET.WIDTH_MULT", "0.25", "MODEL.WEIGHTS", str(trained / "model_final.pth")]
    )
    backbone = build_backbone(cfg)
    for key, value in backbone.state_dict().items():
        if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, checkpoint[key], rtol=0, atol=0, msg=key)
    detector = build_detector(cfg)
    trunk = detector.backbone.body.state_dict()
    assert torch.equal(trunk["stage3.0.compress.conv.weight"], checkpoint["stage3.0.compress.conv.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_process_group_checkpoints_and_resume_is_exact(signum, trained, shapes_root, tmp_path):
    # Ctrl-C in a terminal (SIGINT) and torchrun or `kill -- -PGID` (SIGTERM) reach every process of the
    # group: the trainer and its (persistent) DataLoader worker, which must leave the signal to the trainer.
    # One torch thread, as in run_tool: the interrupted run must compute what the `trained` run did.
    argv = ["--config", "tiny_shapes", *TRAIN, "CLASSIFICATION.DATASET_ROOT", shapes_root, "OUTPUT_DIR", tmp_path,
            "SHUFFLENET_DET.TORCH_THREADS", 1]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(TOOL), *map(str, argv), "DATALOADER.NUM_WORKERS", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "metrics.json").exists() or not (tmp_path / "metrics.json").read_text().strip():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no iteration logged within 120 s"
        time.sleep(0.02)
    os.killpg(process.pid, signum)
    output, _ = process.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, output[-3000:]
    assert "DataLoader worker" not in output and "Traceback" not in output, output[-3000:]
    assert output.count(f"{name} received") == 1, output[-3000:]  # the trainer's notice, not also a worker's
    stopped = re.search(rf"error: training stopped by {name} after iteration (\d+); checkpoint (\S+) written", output)
    assert stopped and 5 <= int(stopped.group(1)) < 40, output[-3000:]
    assert safe_torch_load(stopped.group(2))["iteration"] == int(stopped.group(1))

    assert run_tool(["--resume", *argv, "DATALOADER.NUM_WORKERS", 1]) == 0
    expected, resumed = safe_torch_load(trained / "model_final.pth"), safe_torch_load(tmp_path / "model_final.pth")
    assert resumed["iteration"] == 40
    for key, value in expected["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
