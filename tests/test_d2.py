"""detectron2 integration: registration, configs, training/evaluation, checkpoints, cross-engine parity."""

import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip(
    "detectron2", reason="detectron2 is optional and not installed (see docs/detectron2.md to build it)"
)

import cv2  # noqa: E402
from detectron2.config import get_cfg as get_plain_d2_cfg  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY  # noqa: E402
from detectron2.modeling import build_model as build_d2_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402
from torchvision.models.detection import FasterRCNN  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402

from shufflenet_det.detection.faster_rcnn_c4 import ExactAnchorGenerator  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor  # noqa: E402
from torchvision.models.detection.rpn import RPNHead  # noqa: E402
from torchvision.models.detection.transform import GeneralizedRCNNTransform  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402

import shufflenet_det.integrations.d2 as sd2  # noqa: E402
from shufflenet_det import build_model  # noqa: E402
from shufflenet_det.config import get_cfg as get_our_cfg  # noqa: E402
from shufflenet_det.integrations.d2 import parity  # noqa: E402
from shufflenet_det.integrations.d2.train import (  # noqa: E402
    ShuffleNetTrainer,
    d2_evaluate,
    d2_train,
    register_d2_coco,
    register_d2_synthetic,
)
from shufflenet_det.utils.io import CheckpointError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("red", "green", "blue")
COLORS_BGR = ((40, 40, 220), (40, 200, 40), (220, 60, 40))

# Keys as shufflenet_det/config/defaults.py names them; small sizes keep CPU runs short.
BASE_YAML = """
MODEL:
  BACKBONE:
    NAME: "build_shufflenet_v1_backbone"
    FREEZE_AT: 2
  SHUFFLENET:
    WIDTH_MULT: 0.5
    GROUPS: 3
    CHANNEL_SHUFFLE: True
    NORM: "FrozenBN"
    OUT_FEATURES: ["res4"]
  MOBILENET:
    WIDTH_MULT: 0.25
    NORM: "FrozenBN"
    OUT_FEATURES: ["res4"]
  PIXEL_MEAN: [127.5, 127.5, 127.5]
  PIXEL_STD: [64.0, 64.0, 64.0]
  ANCHOR_GENERATOR:
    SIZES: [[32, 64, 128, 256, 512]]
    ASPECT_RATIOS: [[0.5, 1.0, 2.0]]
  RPN:
    IN_FEATURES: ["res4"]
    PRE_NMS_TOPK_TRAIN: 300
    PRE_NMS_TOPK_TEST: 200
    POST_NMS_TOPK_TRAIN: 64
    POST_NMS_TOPK_TEST: 32
    BATCH_SIZE_PER_IMAGE: 64
  ROI_HEADS:
    NAME: "ShuffleNetC4ROIHeads"
    IN_FEATURES: ["res4"]
    NUM_CLASSES: 3
    BATCH_SIZE_PER_IMAGE: 16
  ROI_BOX_HEAD:
    POOLER_TYPE: "ROIAlignV2"
    POOLER_RESOLUTION: 14
    POOLER_SAMPLING_RATIO: 0
INPUT:
  FORMAT: "BGR"
  MIN_SIZE_TRAIN: (96,)
  MAX_SIZE_TRAIN: 160
  MIN_SIZE_TEST: 96
  MAX_SIZE_TEST: 160
DATALOADER:
  NUM_WORKERS: 0
SOLVER:
  IMS_PER_BATCH: 2
  BASE_LR: 0.01
  WARMUP_ITERS: 2
  MAX_ITER: 3
  STEPS: (100,)
  CHECKPOINT_PERIOD: 1000
TEST:
  EVAL_PERIOD: 0
SHUFFLENET_DET:
  LOG_PERIOD: 1
VERSION: 2
"""
VARIANTS = {
    "shufflenet.yaml": "MODEL:\n  SHUFFLENET:\n    NORM: \"BN\"\n  BACKBONE:\n    FREEZE_AT: 0\n",
    "shufflenet_g8_noshuffle.yaml": "MODEL:\n  SHUFFLENET:\n    GROUPS: 8\n    CHANNEL_SHUFFLE: False\n",
    "mobilenet.yaml": "MODEL:\n  BACKBONE:\n    NAME: \"build_mobilenet_v1_backbone\"\n",
}
# (stride-16 channels, per-RoI head stage, its channels) of each variant.
EXPECTED_SHAPES = {
    "shufflenet.yaml": (240, "stage4", 480),
    "shufflenet_g8_noshuffle.yaml": (384, "stage4", 768),
    "mobilenet.yaml": (128, "stage5", 256),
}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread: these tiny models run 5-40x slower with two threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_configs(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Base-Tiny.yaml").write_text(BASE_YAML)
    paths = {}
    for name, body in VARIANTS.items():
        paths[name] = folder / name
        paths[name].write_text('_BASE_: "Base-Tiny.yaml"\n' + body)
    return paths


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    return _write_configs(tmp_path_factory.mktemp("configs"))


def _write_split(root: Path, split: str, count: int, seed: int) -> None:
    """``count`` 96x128 images with 1-3 colored rectangles each, as a COCO json (the synthetic layout)."""
    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image = np.full((96, 128, 3), 128, np.uint8) + rng.integers(0, 20, (96, 128, 3), dtype=np.uint8)
        image_id = seed * 1000 + index
        for _ in range(rng.integers(1, 4)):
            category = int(rng.integers(0, 3))
            w, h = (int(v) for v in rng.integers(20, 60, 2))
            x, y = int(rng.integers(0, 128 - w)), int(rng.integers(0, 96 - h))
            cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), COLORS_BGR[category], -1)
            annotations.append(
                {"id": len(annotations) + 1 + seed * 1000, "image_id": image_id, "category_id": category + 1,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )
        file_name = f"{image_id}.png"
        cv2.imwrite(str(root / split / file_name), image)
        images.append({"id": image_id, "file_name": file_name, "height": 96, "width": 128})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    payload = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets") / "synthetic"
    _write_split(root, "train", 4, seed=1)
    _write_split(root, "val", 2, seed=2)
    return root


def _classifier_weights(path: Path, arch: str, seed: int = 0) -> dict:
    """A checkpoint in our weights format with random weights and BatchNorm statistics."""
    torch.manual_seed(seed)
    state_dict = build_model(arch, num_classes=10, norm="BN").state_dict()
    for key, value in state_dict.items():
        if key.endswith(("running_mean", "bias")):
            value.normal_(0, 0.1)
        elif key.endswith(("running_var", "norm.weight")):
            value.uniform_(0.5, 1.5)
    torch.save({"format": "shufflenet_det.weights", "version": 1, "state_dict": state_dict,
                "meta": {"arch": arch, "source": "test"}}, path)
    return state_dict


def _training_batch(num_images: int = 2, height: int = 64, width: int = 80):
    torch.manual_seed(0)
    batch = []
    for _ in range(num_images):
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 76.0, 60.0]]))
        instances.gt_classes = torch.tensor([0, 2])
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
        batch.append({"image": image, "instances": instances, "height": height, "width": width})
    return batch


def _forward_backward(model: nn.Module) -> dict:
    model.train()
    with EventStorage():  # detectron2's losses log to the current storage
        losses = model(_training_batch())
    sum(losses.values()).backward()
    return losses


# ------------------------------------------------------------------------------------------ import


def test_import_without_detectron2_explains_how_to_install():
    code = "import sys; sys.modules['detectron2'] = None; import shufflenet_det.integrations.d2"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError")
    assert "optional" in last_line and "--no-build-isolation" in last_line and "docs/detectron2.md" in last_line


def test_registered_in_detectron2():
    assert BACKBONE_REGISTRY.get("build_shufflenet_v1_backbone") is sd2.build_shufflenet_v1_backbone
    assert BACKBONE_REGISTRY.get("build_mobilenet_v1_backbone") is sd2.build_mobilenet_v1_backbone
    assert ROI_HEADS_REGISTRY.get("ShuffleNetC4ROIHeads") is sd2.ShuffleNetC4ROIHeads


# ----------------------------------------------------------------------------------------- configs


def test_two_line_usage_in_a_plain_detectron2_project(configs):
    cfg = get_plain_d2_cfg()  # detectron2's own defaults: ResNet, Res5ROIHeads, ...
    sd2.add_shufflenet_config(cfg)
    cfg.merge_from_file(str(configs["mobilenet.yaml"]))
    cfg.MODEL.DEVICE = "cpu"
    model = build_d2_model(cfg)
    assert isinstance(model.backbone, sd2.ShuffleNetC4Backbone)
    assert isinstance(model.roi_heads, sd2.ShuffleNetC4ROIHeads)
    assert model.backbone.output_shape()["res4"].channels == 128
    losses = _forward_backward(model)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_config_builds_trains_and_infers(configs, name):
    cfg = sd2.setup_d2_cfg(configs[name])
    torch.manual_seed(0)
    model = build_d2_model(cfg)
    trunk_channels, head_stage, head_channels = EXPECTED_SHAPES[name]
    shape = model.backbone.output_shape()
    assert list(shape) == ["res4"] and (shape["res4"].channels, shape["res4"].stride) == (trunk_channels, 16)
    assert model.backbone.size_divisibility == 32
    assert list(dict(model.roi_heads.box_head.named_children())) == [head_stage]
    assert model.roi_heads.box_predictor.cls_score.in_features == head_channels

    losses = _forward_backward(model)
    assert all(torch.isfinite(v) for v in losses.values())
    frozen = cfg.MODEL.BACKBONE.FREEZE_AT
    stem_grad = model.backbone.stem[0].conv.weight.grad
    assert (stem_grad is None) == (frozen >= 1)
    head_grads = [p.grad for p in model.roi_heads.box_head.parameters()]
    assert head_grads and all(g is not None and g.abs().sum() > 0 for g in head_grads)

    model.eval()
    with torch.no_grad():
        outputs = model([{"image": torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8), "height": 140, "width": 180}])
    instances = outputs[0]["instances"]
    assert instances.image_size == (140, 180)
    assert len(instances) <= cfg.TEST.DETECTIONS_PER_IMAGE
    if len(instances):
        boxes = instances.pred_boxes.tensor
        assert boxes[:, 2].max() <= 180 and boxes[:, 3].max() <= 140
        assert instances.pred_classes.max() < 3 and instances.scores.min() > cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST


# Each RoI-head form against the plain one: config key, {value: what the built RoI heads show}, plain
# value first.
ROI_HEAD_FORMS = {
    "recompute": (
        "SHUFFLENET_DET.RECOMPUTE_BOX_HEAD",
        {"False": (False, False), "True": (True, True)},
        lambda heads: (type(heads.box_head).__name__ == "FastBoxHead", type(heads.pooler).__name__ == "DeferringRoIPooler"),
    ),
    "separable RoIAlign": (
        "SHUFFLENET_DET.ROI_ALIGN_IMPL",
        {"torchvision": "RoIPooler", "separable": "SeparableRoIPooler"},
        lambda heads: type(heads.pooler).__name__,
    ),
}


@pytest.mark.parametrize("form", sorted(ROI_HEAD_FORMS))
def test_roi_head_forms_give_the_same_losses_and_gradients(configs, monkeypatch, form):
    from shufflenet_det.detection.speed import FastBoxHead

    key, expected, shown = ROI_HEAD_FORMS[form]
    plain, other = expected
    monkeypatch.setattr(FastBoxHead, "recompute_chunk", 5)  # several slices of RoIs, the last one partial
    results, built = {}, {}
    for value in expected:
        cfg = sd2.setup_d2_cfg(configs["mobilenet.yaml"], [key, value])
        torch.manual_seed(0)
        model = build_d2_model(cfg)
        built[value] = shown(model.roi_heads)
        torch.manual_seed(1)  # the same proposal sampling in both runs
        losses = _forward_backward(model)
        results[value] = (losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert built == expected
    (plain_losses, plain_grads), (losses, grads) = results[plain], results[other]
    for name in plain_losses:
        torch.testing.assert_close(losses[name], plain_losses[name])
    assert grads.keys() == plain_grads.keys() and any(n.startswith("backbone.") for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6)


def test_repository_configs_build():
    paths = sorted((REPO / "configs").glob("*.yaml")) if (REPO / "configs").is_dir() else []
    paths = [p for p in paths if not p.name.startswith("Base-")]
    if not paths:
        pytest.skip("no configs/*.yaml in this checkout")
    opts = ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "8", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32"]
    for path in paths:
        cfg = sd2.setup_d2_cfg(path, opts)
        model = build_d2_model(cfg)
        assert model.backbone.output_shape()[cfg.MODEL.RPN.IN_FEATURES[0]].stride == 16, path.name
        losses = _forward_backward(model)
        assert all(torch.isfinite(v) for v in losses.values()), path.name


def test_config_errors_are_one_line(configs, tmp_path):
    with pytest.raises(ValueError, match=r"^Non-existent key: SOLVER.BASE_LRR \(in the options\)$"):
        sd2.setup_d2_cfg(configs["shufflenet.yaml"], ["SOLVER.BASE_LRR", "0.1"])
    with pytest.raises(ValueError, match="config file not found"):
        sd2.setup_d2_cfg(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="has no value"):
        sd2.setup_d2_cfg(configs["shufflenet.yaml"], ["SOLVER.BASE_LR"])
    cfg = sd2.setup_d2_cfg(configs["shufflenet.yaml"], ["MODEL.SHUFFLENET.WIDTH_MULT", "0.3"])
    cfg.defrost()
    with pytest.raises(ValueError, match="MODEL.SHUFFLENET asks for unknown model 'shufflenet_v1_x0_3_g3'"):
        build_d2_model(cfg)
    cfg.MODEL.SHUFFLENET.WIDTH_MULT, cfg.MODEL.SHUFFLENET.OUT_FEATURES = 0.5, ["res3", "res4"]
    with pytest.raises(ValueError, match="OUT_FEATURES must name the one stride-16"):
        build_d2_model(cfg)
    cfg.MODEL.SHUFFLENET.OUT_FEATURES = ["res4"]
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIPool"
    with pytest.raises(ValueError, match="unknown MODEL.ROI_BOX_HEAD.POOLER_TYPE 'ROIPool'"):
        build_d2_model(cfg)


def test_our_defaults_carry_over_to_detectron2():
    ours = get_our_cfg()
    ours.SOLVER.BASE_LR = 0.5
    assert sd2.setup_d2_cfg(ours).SOLVER.BASE_LR == 0.5  # a config of our own engine converts too
    cfg = sd2.get_shufflenet_d2_cfg()
    assert cfg.MODEL.BACKBONE.NAME == "build_shufflenet_v1_backbone"
    assert cfg.MODEL.ROI_HEADS.NAME == "ShuffleNetC4ROIHeads"
    assert list(cfg.MODEL.PIXEL_MEAN) == [0.0, 0.0, 0.0] and cfg.INPUT.MIN_SIZE_TEST == 600
    assert cfg.MODEL.KEYPOINT_ON is False  # detectron2's own keys stay


def test_solver_optimizer_is_honoured_by_detectron2s_trainer():
    # quickstart.yaml trains with AdamW: the same file must not silently train with SGD in detectron2
    cfg = sd2.setup_d2_cfg(str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"))
    assert cfg.SOLVER.OPTIMIZER == "AdamW"
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    optimizer = ShuffleNetTrainer.build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {p: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay[model[0].weight] == cfg.SOLVER.WEIGHT_DECAY and decay[model[1].weight] == 0.0
    cfg.defrost()
    cfg.SOLVER.OPTIMIZER = "SGD"
    assert isinstance(ShuffleNetTrainer.build_optimizer(cfg, model), torch.optim.SGD)


# ------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    "backbone, arch, head_stage",
    [("build_shufflenet_v1_backbone", "shufflenet_v1_x0_5_g3", "stage4"),
     ("build_mobilenet_v1_backbone", "mobilenet_v1_x0_25", "stage5")],
)
def test_imagenet_weights_load_through_the_checkpointer(tmp_path, backbone, arch, head_stage):
    source = _classifier_weights(tmp_path / "weights.pth", arch)
    cfg = sd2.get_shufflenet_d2_cfg()
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.SHUFFLENET.WIDTH_MULT, cfg.MODEL.MOBILENET.WIDTH_MULT = 0.5, 0.25
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    model = build_d2_model(cfg)
    checkpointer = sd2.ShuffleNetCheckpointer(model)
    extra = checkpointer.load(str(tmp_path / "weights.pth"))
    assert extra["meta"]["arch"] == arch

    report = checkpointer.last_incompatible_keys
    assert report.unexpected_keys == [] and report.incorrect_shapes == []
    assert report.missing_keys and all(
        k.startswith(("proposal_generator.", "roi_heads.box_predictor.")) for k in report.missing_keys
    )
    loaded = model.state_dict()
    for key, value in source.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        target = f"roi_heads.box_head.{key}" if key.startswith(head_stage + ".") else f"backbone.{key}"
        assert torch.equal(loaded[target], value), key


def test_checkpointer_refuses_unsafe_and_unknown_files(tmp_path):
    cfg = sd2.get_shufflenet_d2_cfg()
    cfg.MODEL.SHUFFLENET.WIDTH_MULT = 0.5
    model = build_d2_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = sd2.ShuffleNetCheckpointer(model)

    torch.save({"model": {"stem": nn.Identity()}}, tmp_path / "code.pth")  # a pickled module: needs code
    with pytest.raises(CheckpointError, match="refusing to load"):
        checkpointer.load(str(tmp_path / "code.pth"))
    (tmp_path / "zoo.pkl").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="pickle files can run code"):
        checkpointer.load(str(tmp_path / "zoo.pkl"))
    torch.save({"state_dict": {"first_conv.0.weight": torch.zeros(1)}}, tmp_path / "megvii.pth")
    with pytest.raises(CheckpointError, match="none of the checkpoint's 1 keys"):
        checkpointer.load(str(tmp_path / "megvii.pth"))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        checkpointer.load(str(tmp_path / "absent.pth"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------ train and evaluate


def _pycocotools_box_ap(annotation_file: Path, detections: list) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ground_truth = COCO(str(annotation_file))
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return float(evaluation.stats[0])


@pytest.mark.slow
def test_train_resume_and_evaluate_on_a_tiny_coco(configs, synthetic_root, tmp_path):
    register_d2_synthetic(str(synthetic_root))
    source = _classifier_weights(tmp_path / "imagenet.pth", "shufflenet_v1_x0_5_g3")
    output = tmp_path / "run"
    opts = ["MODEL.WEIGHTS", str(tmp_path / "imagenet.pth"), "OUTPUT_DIR", str(output),
            "DATASETS.TRAIN", "('synthetic_train',)", "DATASETS.TEST", "('synthetic_val',)",
            "MODEL.BACKBONE.FREEZE_AT", "2", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]
    cfg = sd2.setup_d2_cfg(configs["shufflenet.yaml"], opts)

    results = d2_train(cfg)
    assert set(results["bbox"]) >= {"AP", "AP50", "AP-red", "AP-blue"}
    # Two iterations from random weights learn nothing, so no AP floor would hold; what must hold is
    # that the AP reported is pycocotools' on the detections written for the val images, and that those
    # carry the annotation file's image and category ids (contiguous ids mapped back).
    detections = json.loads((output / "inference" / "synthetic_val" / "coco_instances_results.json").read_text())
    assert {d["image_id"] for d in detections} == {2000, 2001}
    assert {d["category_id"] for d in detections} <= {1, 2, 3}
    expected = 100 * _pycocotools_box_ap(synthetic_root / "annotations" / "instances_val.json", detections)
    assert results["bbox"]["AP"] == pytest.approx(expected, abs=1e-4)
    metrics = [json.loads(line) for line in (output / "metrics.json").read_text().splitlines()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    assert len(losses) == 3 and all(np.isfinite(losses))

    final = torch.load(output / "model_final.pth", weights_only=True)
    assert final["iteration"] == 2
    trained = final["model"]
    # Frozen (FREEZE_AT 2: stem, stage2) weights are the ImageNet ones; stage3 and the head trained.
    assert torch.equal(trained["backbone.stem.0.conv.weight"], source["stem.0.conv.weight"])
    assert torch.equal(trained["backbone.stage2.1.expand.norm.running_var"], source["stage2.1.expand.norm.running_var"])
    assert not torch.equal(trained["backbone.stage3.0.compress.conv.weight"], source["stage3.0.compress.conv.weight"])
    assert not torch.equal(trained["roi_heads.box_head.stage4.3.expand.conv.weight"], source["stage4.3.expand.conv.weight"])

    # Evaluating the saved weights reproduces the evaluation at the end of training.
    eval_cfg = sd2.setup_d2_cfg(cfg, ["MODEL.WEIGHTS", str(output / "model_final.pth"), "OUTPUT_DIR", str(output)])
    training_config = (output / "config.yaml").read_text()
    assert d2_evaluate(eval_cfg)["bbox"] == pytest.approx(results["bbox"], nan_ok=True)
    # Evaluated into the training run's folder: its config.yaml stays, the evaluation's goes beside it.
    assert (output / "config.yaml").read_text() == training_config
    assert "model_final.pth" in (output / "config_eval.yaml").read_text()

    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        d2_train(cfg)
    resumed_cfg = sd2.setup_d2_cfg(cfg, ["SOLVER.MAX_ITER", "4", "DATASETS.TEST", "()"])
    d2_train(resumed_cfg, resume=True)  # optimizer, scheduler and iteration come back through weights_only loading
    resumed = torch.load(output / "model_final.pth", weights_only=True)
    assert resumed["iteration"] == 3
    assert resumed["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 4


def test_dataset_registration_errors(tmp_path):
    with pytest.raises(ValueError, match="annotation file not found"):
        register_d2_coco("missing_set", str(tmp_path / "x.json"), str(tmp_path))
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        d2_evaluate(sd2.setup_d2_cfg(sd2.get_shufflenet_d2_cfg()))


# ----------------------------------------------------------------------------------------- parity


class _RoIAlignV2(nn.Module):
    """torchvision's side of ROIAlignV2 on one feature map, with RoIHeads' box_roi_pool signature."""

    def __init__(self, feature_name: str, stride: int = 16) -> None:
        super().__init__()
        self.feature_name, self.stride = feature_name, stride

    def forward(self, features, boxes, image_sizes):
        return roi_align(features[self.feature_name], boxes, 14, 1.0 / self.stride, 0, aligned=True)


class _Trunk(nn.Module):
    def __init__(self, body: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body, self.out_channels = body, out_channels

    def forward(self, x):
        return OrderedDict(res4=self.body(x))


class _Head(nn.Sequential):
    def forward(self, x):
        return super().forward(x).mean(dim=(2, 3))


def _torchvision_c4(cfg, anchor_generator_class):
    """The torchvision C4 Faster R-CNN the detection branch builds, from torchvision parts and our network."""
    network = build_model("shufflenet_v1_x0_5_g3", norm="FrozenBN")
    trunk, head = network.split_at_stride(16)
    sizes, ratios = cfg.MODEL.ANCHOR_GENERATOR.SIZES[0], cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]
    anchors = anchor_generator_class((tuple(sizes),), (tuple(ratios),))
    model = FasterRCNN(
        _Trunk(trunk, 240), rpn_anchor_generator=anchors, rpn_head=RPNHead(240, len(sizes) * len(ratios)),
        box_head=_Head(OrderedDict(head.named_children())), box_predictor=FastRCNNPredictor(480, 4),
        rpn_pre_nms_top_n_test=cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, rpn_post_nms_top_n_test=cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
        box_score_thresh=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, box_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
    )
    model.roi_heads.box_roi_pool = _RoIAlignV2("res4")  # the constructor only takes MultiScaleRoIAlign
    model.transform = GeneralizedRCNNTransform(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST,
                                               list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD))
    return model


@pytest.fixture(scope="module")
def engines(configs):
    # Anchors small enough to lie inside the image: clipping would hide anchor differences.
    opts = ["MODEL.SHUFFLENET.NORM", "FrozenBN", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "256",
            "MODEL.ANCHOR_GENERATOR.SIZES", "[[16, 32, 64]]"]
    cfg = sd2.setup_d2_cfg(configs["shufflenet.yaml"], opts)
    torch.manual_seed(0)
    tv_model = _torchvision_c4(cfg, ExactAnchorGenerator)
    state_dict = tv_model.state_dict()
    for key, value in state_dict.items():  # random statistics and predictors that produce detections
        if "running_var" in key:
            value.uniform_(0.5, 1.5)
        elif "running_mean" in key or key.endswith("norm.bias"):
            value.normal_(0, 0.1)
        elif "box_predictor" in key or "rpn.head.cls_logits" in key:
            value.normal_(0, 0.3 if "weight" in key else 1.0)
    d2_model = build_d2_model(cfg)
    d2_model.load_state_dict(sd2.torchvision_to_d2_state_dict(state_dict, *sd2.anchor_layout(cfg)), strict=True)
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 128, 176), dtype=torch.uint8)
    return cfg, tv_model.eval(), d2_model.eval(), image


def test_parity_level1_input_and_features(engines):
    _, tv_model, d2_model, image = engines
    differences, features = parity.compare_features(tv_model, d2_model, image)
    assert features.shape == (1, 240, 8, 12)  # 176 px wide, padded to 192
    assert differences["input"] == 0.0
    assert differences["features"] <= 1e-5


def test_parity_level2_roi_heads_on_given_proposals(engines):
    _, tv_model, d2_model, image = engines
    _, features = parity.compare_features(tv_model, d2_model, image)
    torch.manual_seed(2)
    corners = torch.rand(24, 2, 2) * torch.tensor([176.0, 128.0])
    proposals = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values + 4], dim=1)
    differences = parity.compare_roi_heads(tv_model, d2_model, features, proposals, (128, 176))
    assert differences["roi_logits"] <= 1e-4 and differences["roi_deltas"] <= 1e-4
    assert differences["roi_compared"] >= 10
    assert differences["roi_detection_count"] == 0 and differences["roi_label_mismatches"] == 0
    assert differences["roi_boxes"] <= 1e-3 and differences["roi_scores"] <= 1e-5


def test_parity_level3_end_to_end_with_unrounded_anchors(engines):
    _, tv_model, d2_model, image = engines
    differences = parity.compare_end_to_end(tv_model, d2_model, image)
    assert differences["proposal_count"] == 0 and differences["proposals"] <= 1e-3
    assert differences["compared"] >= 10
    assert differences["detection_count"] == 0 and differences["label_mismatches"] == 0
    assert differences["boxes"] <= 1e-3 and differences["scores"] <= 1e-5


def test_torchvision_rounded_anchors_break_end_to_end_parity(engines):
    cfg, tv_model, d2_model, image = engines
    sizes, ratios = cfg.MODEL.ANCHOR_GENERATOR.SIZES[0], cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0]
    exact = tv_model.rpn.anchor_generator
    rounded = AnchorGenerator((tuple(sizes),), (tuple(ratios),))
    assert torch.equal(rounded.cell_anchors[0], exact.cell_anchors[0].round())
    tv_model.rpn.anchor_generator = rounded
    try:
        differences = parity.compare_end_to_end(tv_model, d2_model, image)
    finally:
        tv_model.rpn.anchor_generator = exact
    assert differences["proposals"] > 0.1 and differences["boxes"] > 0.1


def test_torchvision_engine_checkpoints_load_into_detectron2(engines, tmp_path):
    cfg, tv_model, d2_model, _ = engines
    torch.save({"model": tv_model.state_dict(), "iteration": 7}, tmp_path / "tv_engine.pth")
    fresh = build_d2_model(cfg)
    with pytest.raises(CheckpointError, match="needs the anchor layout"):
        sd2.ShuffleNetCheckpointer(fresh).load(str(tmp_path / "tv_engine.pth"))
    checkpointer = sd2.ShuffleNetCheckpointer(fresh, anchor_layout=sd2.anchor_layout(cfg))
    checkpointer.load(str(tmp_path / "tv_engine.pth"))
    report = checkpointer.last_incompatible_keys
    assert report.missing_keys == [] and report.unexpected_keys == [] and report.incorrect_shapes == []
    expected = d2_model.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in fresh.state_dict().items())


@pytest.mark.slow
def test_train_net_with_the_detectron2_engine(tmp_path):
    """tools/train_net.py --engine detectron2 trains and evaluates one of our configs unchanged."""
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [
            sys.executable, str(repo / "tools" / "train_net.py"), "--engine", "detectron2", "--config", "quickstart.yaml",
            "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)",
            "INPUT.MIN_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0",
        ],
        capture_output=True, text=True, timeout=600, env=env, cwd=repo,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "model_final.pth").is_file()
    assert "copypaste: AP,AP50" in result.stdout + result.stderr
    bad = subprocess.run(
        [sys.executable, str(repo / "tools" / "train_net.py"), "--engine", "detectron2", "--config", "quickstart.yaml",
         "OUTPUT_DIR", str(tmp_path / "out2"), "SOLVER.NO_SUCH_KEY", "1"],
        capture_output=True, text=True, timeout=300, env=env, cwd=repo,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "NO_SUCH_KEY" in bad.stderr
