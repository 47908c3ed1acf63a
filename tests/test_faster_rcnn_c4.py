"""The torchvision-style C4 detector builders: torchvision's arguments and conventions, the same modules
and outputs as build_detector(cfg), and training the way torchvision's reference scripts do."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from shufflenet_det import build_model
from shufflenet_det.config import load_config
from shufflenet_det.data.synthetic import generate_synthetic_coco
from shufflenet_det.detection import (
    build_detector,
    fasterrcnn_c4,
    fasterrcnn_mobilenet_v1_x1_0_c4,
    fasterrcnn_shufflenet_v1_x0_5_g3_c4,
)
from shufflenet_det.engine import Checkpointer
from shufflenet_det.integrations.torchvision_models import register_torchvision_models
from shufflenet_det.weights import model_structure, save_weights

FIXTURE = Path(__file__).parent / "fixtures" / "megvii" / "megvii_shufflenetv1_0.5x_g3_random.pth.tar"
IMAGENET_MEAN, IMAGENET_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
# Tiny inputs and few proposals and RoIs keep every test fast.
TINY = dict(
    min_size=64, max_size=128, rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=24,
    rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=24, rpn_batch_size_per_image=32,
    box_batch_size_per_image=16,
)


def settings(model):
    """Everything a detector's construction decides, except the input convention and the norm layers."""
    rpn, roi, transform = model.rpn, model.roi_heads, model.transform
    return {
        "modules": [(name, type(module).__name__) for name, module in model.named_modules()
                    if not isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d))],
        "sizes": (transform.train_sizes, transform.test_sizes, transform.size_divisible),
        "anchors": (rpn.anchor_generator.sizes, rpn.anchor_generator.aspect_ratios),
        "rpn": (rpn._pre_nms_top_n, rpn._post_nms_top_n, rpn.nms_thresh, rpn.score_thresh,
                rpn.proposal_matcher.low_threshold, rpn.proposal_matcher.high_threshold,
                rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction, rpn.box_coder.weights),
        "pooler": repr(roi.box_roi_pool),
        "roi_heads": (roi.proposal_matcher.low_threshold, roi.proposal_matcher.high_threshold,
                      roi.fg_bg_sampler.batch_size_per_image, roi.fg_bg_sampler.positive_fraction,
                      roi.box_coder.weights, roi.score_thresh, roi.nms_thresh, roi.detections_per_img),
        "classes": roi.box_predictor.cls_score.out_features,
    }


def random_bgr_image(height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def rgb_0_1(bgr_image):
    return bgr_image.flip(0).float() / 255


@pytest.fixture(scope="module")
def registered():
    return register_torchvision_models()


# ---------------------------------------------------------------------------- one assembly


def test_builder_and_config_build_the_same_detector_with_the_same_outputs():
    """Table 7's recipe from the builder's defaults equals build_detector(Table 7 config); the same
    megvii weights (BGR 0-255) serve the config's BGR 0-255 inputs and the builder's RGB 0-1 inputs."""
    # Smaller images and every detection kept (an untrained predictor scores about 1/81), the same in both.
    cfg = load_config("shufflenet_1x_frcnn", [
        "MODEL.SHUFFLENET.WIDTH_MULT", "0.5", "MODEL.WEIGHTS", str(FIXTURE), "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TRAIN", "200", "INPUT.MAX_SIZE_TEST", "200",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    ])
    from shufflenet_det.detection.speed import apply_speed_forms, speed_options

    from_config = build_detector(cfg).eval()
    built = fasterrcnn_shufflenet_v1_x0_5_g3_c4(
        weights_backbone=str(FIXTURE), num_classes=81, min_size=128, max_size=200, box_score_thresh=0.0
    ).eval()
    apply_speed_forms(built, **speed_options(cfg))  # what build_detector applies last: the config's forms

    assert settings(built) == settings(from_config)
    assert built.state_dict().keys() == from_config.state_dict().keys()
    assert built.structure_meta == from_config.structure_meta
    assert built.structure_meta["input_format"] == "BGR" and built.transform.reverse_channels
    assert not from_config.transform.reverse_channels

    built.load_state_dict(from_config.state_dict())  # the same randomly initialized RPN and predictor
    bgr = random_bgr_image(90, 120, seed=3)
    with torch.no_grad():
        expected, got = from_config([bgr])[0], built([rgb_0_1(bgr)])[0]
    assert len(expected["boxes"]) > 0
    for key in ("boxes", "scores"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-3)
    assert torch.equal(got["labels"], expected["labels"])


def test_builder_defaults_are_table_7s_recipe():
    model = fasterrcnn_mobilenet_v1_x1_0_c4()
    rpn, roi = model.rpn, model.roi_heads
    assert model.transform.train_sizes == ((600,), 1000) and model.transform.test_sizes == ((600,), 1000)
    assert rpn._pre_nms_top_n == {"training": 12000, "testing": 6000}
    assert rpn._post_nms_top_n == {"training": 2000, "testing": 1000}
    assert rpn.anchor_generator.sizes == ((32, 64, 128, 256, 512),)
    assert (roi.fg_bg_sampler.batch_size_per_image, roi.box_coder.weights) == (512, (10.0, 10.0, 5.0, 5.0))
    assert roi.box_predictor.cls_score.out_features == 91  # torchvision's default
    assert model.backbone.out_channels == 512 and roi.box_head.out_channels == 1024


def test_torchvision_options_reach_the_modules():
    model = fasterrcnn_shufflenet_v1_x0_5_g3_c4(
        num_classes=5, min_size=(64, 80), max_size=160, rpn_score_thresh=0.1, rpn_nms_thresh=0.6,
        box_score_thresh=0.2, box_detections_per_img=7, _skip_resize=True,
    )
    assert model.transform.train_sizes == ((64, 80), 160) and model.transform.test_sizes == ((80,), 160)
    assert model.transform._skip_resize
    assert (model.rpn.score_thresh, model.rpn.nms_thresh) == (0.1, 0.6)
    assert (model.roi_heads.score_thresh, model.roi_heads.detections_per_img) == (0.2, 7)
    assert model.roi_heads.box_predictor.cls_score.out_features == 5


def test_builders_models_take_the_speed_forms_with_the_same_detections():
    from shufflenet_det.detection.speed import apply_speed_forms

    torch.manual_seed(0)
    model = fasterrcnn_shufflenet_v1_x0_5_g3_c4(num_classes=5, min_size=96, max_size=160, box_score_thresh=0.0).eval()
    assert type(model.rpn).__name__ == "C4RegionProposalNetwork"  # built plain
    image = torch.rand(3, 80, 120, generator=torch.Generator().manual_seed(1))
    keys = list(model.state_dict())
    with torch.no_grad():
        expected = model([image])[0]
        apply_speed_forms(model, conv="dense", roi_align="separable", rpn_nms="batched")
        found = model([image])[0]
    assert type(model.rpn).__name__ == "BatchedProposalRPN" and list(model.state_dict()) == keys
    assert len(expected["boxes"]) > 0
    torch.testing.assert_close(found["boxes"], expected["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(found["scores"], expected["scores"], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- weights and preprocessing


def test_backbone_weights_metadata_sets_the_input_conversion(tmp_path):
    network = build_model("shufflenet_v1_x0_5_g3")
    meta = {**model_structure(network), "input_format": "RGB", "pixel_mean": IMAGENET_MEAN, "pixel_std": IMAGENET_STD}
    path = save_weights(tmp_path / "imagenet_rgb.pth", network.state_dict(), meta)
    model = fasterrcnn_shufflenet_v1_x0_5_g3_c4(weights_backbone=str(path), **TINY)
    transform = model.transform
    assert not transform.reverse_channels
    torch.testing.assert_close(torch.tensor(transform.image_mean), torch.tensor(IMAGENET_MEAN) / 255)
    torch.testing.assert_close(torch.tensor(transform.image_std), torch.tensor(IMAGENET_STD) / 255)
    body = model.backbone.body.state_dict()
    stage3 = {key: value for key, value in network.state_dict().items() if key.startswith("stage3.") and key in body}
    assert stage3 and all(torch.equal(body[key], value) for key, value in stage3.items())

    # torchvision's image_mean / image_std: on the input's 0-1 RGB scale, as in torchvision.
    other = fasterrcnn_shufflenet_v1_x0_5_g3_c4(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.2, 0.25])
    assert other.transform.reverse_channels  # no weights: the official weights' BGR convention
    assert other.transform.image_mean == pytest.approx([0.3, 0.4, 0.5])
    assert other.structure_meta["pixel_std"] == pytest.approx([63.75, 51.0, 51.0])


@pytest.mark.parametrize("trainable,frozen", [(None, ["stem", "stage2"]), (0, ["stem", "stage2", "stage3", "stage4"]),
                                              (4, [])])
def test_trainable_backbone_layers_with_pretrained_weights(trainable, frozen):
    model = fasterrcnn_shufflenet_v1_x0_5_g3_c4(weights_backbone=str(FIXTURE), trainable_backbone_layers=trainable)
    stages = {**dict(model.backbone.body.named_children()), "stage4": model.roi_heads.box_head.stage4}
    for name, stage in stages.items():
        assert all(p.requires_grad == (name not in frozen) for p in stage.parameters()), name
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_without_weights_every_stage_trains_with_batchnorm():
    with pytest.warns(UserWarning, match="trainable_backbone_layers=2 has no effect without weights"):
        model = fasterrcnn_shufflenet_v1_x0_5_g3_c4(trainable_backbone_layers=2)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 20


def test_trained_detector_reloads_with_its_classes_and_preprocessing(tmp_path):
    network = build_model("shufflenet_v1_x0_5_g3")
    meta = {**model_structure(network), "input_format": "RGB", "pixel_mean": IMAGENET_MEAN, "pixel_std": IMAGENET_STD}
    backbone_file = save_weights(tmp_path / "rgb.pth", network.state_dict(), meta)
    torch.manual_seed(0)
    trained = fasterrcnn_shufflenet_v1_x0_5_g3_c4(weights_backbone=str(backbone_file), num_classes=7, **TINY).eval()
    Checkpointer(trained, tmp_path, extra_data={"meta": trained.structure_meta}).save("model_final")
    path = str(tmp_path / "model_final.pth")

    torch.manual_seed(1)
    reloaded = fasterrcnn_shufflenet_v1_x0_5_g3_c4(weights=path, **TINY).eval()
    assert reloaded.roi_heads.box_predictor.cls_score.out_features == 7
    assert reloaded.transform.image_mean == trained.transform.image_mean and not reloaded.transform.reverse_channels
    image = rgb_0_1(random_bgr_image(80, 96, seed=2))
    with torch.no_grad():
        expected, got = trained([image])[0], reloaded([image])[0]
    torch.testing.assert_close(got["boxes"], expected["boxes"])
    torch.testing.assert_close(got["scores"], expected["scores"])

    with pytest.raises(ValueError, match="num_classes is 91 but weights .* is a detector for 7 classes"):
        fasterrcnn_shufflenet_v1_x0_5_g3_c4(weights=path, num_classes=91)
    with pytest.raises(ValueError, match="pass ImageNet weights as weights_backbone"):
        fasterrcnn_shufflenet_v1_x0_5_g3_c4(weights=str(backbone_file))
    with pytest.raises(ValueError, match="is a detector checkpoint for another configuration"):
        fasterrcnn_c4("shufflenet_v1_x1_0_g3", weights=path)
    with pytest.raises(RuntimeError, match="for a ShuffleNet .*not a MobileNet"):
        fasterrcnn_mobilenet_v1_x1_0_c4(weights=path)


@pytest.mark.parametrize("call,message", [
    (lambda: fasterrcnn_c4("shufflenet_v1_x3_0_g3"), "unknown model 'shufflenet_v1_x3_0_g3'"),
    (lambda: fasterrcnn_shufflenet_v1_x0_5_g3_c4(num_classes=1), "num_classes counts the background"),
    (lambda: fasterrcnn_shufflenet_v1_x0_5_g3_c4(weights_backbone=str(FIXTURE), trainable_backbone_layers=5),
     r"trainable_backbone_layers must be in \[0, 4\]"),
    (lambda: fasterrcnn_shufflenet_v1_x0_5_g3_c4(weights="missing.pth"), "weights file 'missing.pth' not found"),
    (lambda: fasterrcnn_shufflenet_v1_x0_5_g3_c4(weights_backbone="missing.pth"), "checkpoint not found: missing.pth"),
    (lambda: fasterrcnn_shufflenet_v1_x0_5_g3_c4(box_sore_thresh=0.1), "unexpected keyword argument 'box_sore_thresh'"),
])
def test_bad_arguments_are_one_line_errors(call, message):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message) as info:
        call()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- torchvision's way


def test_get_model_builds_the_registered_detectors(registered):
    names = ["fasterrcnn_shufflenet_v1_x0_5_g3_c4", "fasterrcnn_shufflenet_v1_x1_0_g3_c4",
             "fasterrcnn_shufflenet_v1_x2_0_g3_c4", "fasterrcnn_mobilenet_v1_x1_0_c4"]
    assert set(names) <= set(registered) and set(names) <= set(torchvision.models.list_models())
    # What torchvision's references/detection/train.py passes, --weights-backbone arriving as a string.
    model = torchvision.models.get_model(
        "FasterRCNN_ShuffleNet_v1_x0_5_g3_C4", weights=None, weights_backbone=str(FIXTURE), num_classes=91,
        trainable_backbone_layers=3, rpn_score_thresh=0.05, _skip_resize=True,
    )
    assert type(model).__name__ == "FasterRCNNC4" and model.rpn.score_thresh == 0.05
    assert [all(p.requires_grad for p in model.backbone.body.stage2.parameters()),
            all(p.requires_grad for p in model.backbone.body.stem.parameters())] == [True, False]


def coco_batch(coco, root, image_ids):
    """torchvision's reference pipeline in short: RGB floats in 0-1, XYXY boxes, COCO category ids as labels."""
    images, targets = [], []
    for image_id in image_ids:
        info = coco.loadImgs(image_id)[0]
        array = np.array(Image.open(root / info["file_name"]).convert("RGB"))
        images.append(torch.from_numpy(array).permute(2, 0, 1).float() / 255)
        annotations = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
        targets.append({"boxes": boxes, "labels": labels, "image_id": image_id})
    return images, targets


def test_trains_and_evaluates_in_torchvision_reference_style(tmp_path, registered):
    root = tmp_path / "coco"
    # Large objects need a short side of at least 152 px; the model resizes to 64 (TINY).
    generate_synthetic_coco(root, num_train=4, num_val=2, short_side=(160, 176), aspect_ratio=(1.0, 1.3),
                            max_objects=3, empty_fraction=0.0, crowd_fraction=0.0)
    train = COCO(str(root / "annotations" / "instances_train.json"))
    torch.manual_seed(0)
    # The scores of an untrained detector lie near 1/91: a zero threshold keeps detections to evaluate.
    model = torchvision.models.get_model("fasterrcnn_shufflenet_v1_x0_5_g3_c4", weights=None, weights_backbone=None,
                                         num_classes=91, trainable_backbone_layers=None, box_score_thresh=0.0, **TINY)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    images, targets = coco_batch(train, root / "train", sorted(train.getImgIds())[:2])
    model.train()
    totals = []
    for _ in range(8):
        losses = model(images, targets)
        total = sum(losses.values())
        assert torch.isfinite(total), losses
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert min(totals[-3:]) < 0.8 * totals[0], totals  # it learns the batch it sees

    val = COCO(str(root / "annotations" / "instances_val.json"))
    model.eval()
    results = []
    with torch.no_grad():
        for image_id in sorted(val.getImgIds()):
            images, _ = coco_batch(val, root / "val", [image_id])
            output = model(images)[0]
            assert output["boxes"].shape[1] == 4 and (output["labels"] >= 1).all() and (output["labels"] <= 90).all()
            for box, score, label in zip(output["boxes"].tolist(), output["scores"].tolist(), output["labels"].tolist()):
                x0, y0, x1, y1 = box
                results.append({"image_id": image_id, "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "score": score})
    assert results
    (tmp_path / "results.json").write_text(json.dumps(results))
    evaluation = COCOeval(val, val.loadRes(str(tmp_path / "results.json")), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert len(evaluation.stats) == 12 and all(-1 <= value <= 1 for value in evaluation.stats)


def test_module_runs_an_unmodified_script_that_builds_by_name(tmp_path):
    """``python -m shufflenet_det.integrations.torchvision_models train.py ARGS``: the script sees its own
    arguments, imports the modules next to it, and get_model finds our detectors."""
    import subprocess
    import sys

    (tmp_path / "helpers.py").write_text("NUM_CLASSES = 91\n")
    (tmp_path / "train.py").write_text(
        "import sys, torchvision, helpers\n"
        "model = torchvision.models.get_model(sys.argv[1], weights=None, weights_backbone=None,\n"
        "                                     num_classes=helpers.NUM_CLASSES, trainable_backbone_layers=None)\n"
        "print(type(model).__name__, model.roi_heads.box_predictor.cls_score.out_features)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "shufflenet_det.integrations.torchvision_models", str(tmp_path / "train.py"),
         "fasterrcnn_shufflenet_v1_x0_5_g3_c4"],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["FasterRCNNC4", "91"]
