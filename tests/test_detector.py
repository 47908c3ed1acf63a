"""The C4 Faster R-CNN: configs build and train, the data contract, pooling, the per-RoI head, freezing,
preprocessing and weights. Small widths, tiny images and few RoIs keep it fast."""

import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from shufflenet_det import build_model
from shufflenet_det.config import ConfigError, list_configs, load_config
from shufflenet_det.detection import (
    RoIPooler,
    build_backbone,
    build_detector,
    pooler_aligned,
    preprocessing_mismatches,
)
from shufflenet_det.modeling import ChannelShuffle

# Small everything: 64-96 px images, a few dozen proposals and sampled RoIs. No ImageNet weights, so
# trainable BN (random FrozenBN is an identity that lets activations vanish; tested separately).
TINY = [
    "MODEL.WEIGHTS", "",
    "INPUT.MIN_SIZE_TRAIN", "(64, 80)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "300", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "24",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "300", "MODEL.RPN.POST_NMS_TOPK_TEST", "24",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
]
SMALL_WIDTH = {"MODEL.SHUFFLENET.WIDTH_MULT": "0.5", "MODEL.MOBILENET.WIDTH_MULT": "0.25"}
FIXTURE = "megvii/megvii_shufflenetv1_0.5x_g3_random.pth.tar"
LOSSES = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}


def tiny_cfg(name="quickstart", *overrides):
    """A shipped config, narrowed to 0.5x ShuffleNet / 0.25 MobileNet with BN and tiny inputs."""
    family = "MOBILENET" if "mobilenet" in load_config(name).MODEL.BACKBONE.NAME else "SHUFFLENET"
    width_key = f"MODEL.{family}.WIDTH_MULT"
    return load_config(name, TINY + [width_key, SMALL_WIDTH[width_key], f"MODEL.{family}.NORM", "BN", *overrides])


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_detector(cfg)


def random_image(height, width, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)


def targets(num_classes):
    return [
        {"boxes": torch.tensor([[8.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 30.0, 70.0, 90.0]]), "labels": torch.tensor([num_classes])},
    ]


# ---------------------------------------------------------------------------- every config


@pytest.mark.parametrize("name", list_configs())
def test_config_builds_and_trains_one_step(name):
    cfg = tiny_cfg(name)
    model = build(cfg).train()
    images = [random_image(72, 96, 1), random_image(100, 80, 2)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    predictor_before = model.roi_heads.box_predictor.cls_score.weight.detach().clone()

    losses = model(images, targets(cfg.MODEL.ROI_HEADS.NUM_CLASSES))
    assert set(losses) == LOSSES
    assert all(torch.isfinite(value) and value > 0 for value in losses.values()), losses
    sum(losses.values()).backward()
    torch.optim.SGD(trainable, lr=0.01, momentum=0.9).step()

    assert all(torch.isfinite(p).all() for p in trainable)
    changed = [not torch.equal(a, p.detach()) for a, p in zip(before, trainable)]
    assert sum(changed) > len(changed) // 2
    assert not torch.equal(predictor_before, model.roi_heads.box_predictor.cls_score.weight)


@pytest.mark.parametrize(
    "name,trunk_channels,head_channels",
    [("shufflenet_2x_frcnn", 960, 1920), ("shufflenet_1x_frcnn_300", 480, 960), ("mobilenet_v1_frcnn", 512, 1024)],
)
def test_full_width_models_build(name, trunk_channels, head_channels):
    cfg = load_config(name, ["MODEL.WEIGHTS", ""])
    model = build(cfg)
    assert model.backbone.out_channels == trunk_channels
    assert model.roi_heads.box_head.out_channels == head_channels
    assert model.roi_heads.box_predictor.cls_score.out_features == 81
    assert model.rpn.head.cls_logits.out_channels == 15  # 5 sizes x 3 ratios on one level
    # The trunk and head together hold exactly the classification network minus its classifier.
    network = build_backbone(cfg)
    split = sum(p.numel() for p in model.backbone.parameters()) + sum(
        p.numel() for p in model.roi_heads.box_head.parameters()
    )
    assert split == sum(p.numel() for p in network.parameters()) - sum(p.numel() for p in network.fc.parameters())


def test_settings_reach_torchvision():
    cfg = load_config("shufflenet_1x_frcnn", ["MODEL.WEIGHTS", ""])
    model = build(cfg)
    rpn, roi = model.rpn, model.roi_heads
    assert rpn._pre_nms_top_n == {"training": 12000, "testing": 6000}
    assert rpn._post_nms_top_n == {"training": 2000, "testing": 1000}
    assert rpn.nms_thresh == 0.7 and rpn.proposal_matcher.low_threshold == 0.3
    assert rpn.proposal_matcher.high_threshold == 0.7 and rpn.proposal_matcher.allow_low_quality_matches
    assert rpn.fg_bg_sampler.batch_size_per_image == 256 and rpn.fg_bg_sampler.positive_fraction == 0.5
    assert rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert roi.proposal_matcher.low_threshold == roi.proposal_matcher.high_threshold == 0.5
    assert roi.fg_bg_sampler.batch_size_per_image == 512 and roi.fg_bg_sampler.positive_fraction == 0.25
    assert roi.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert (roi.score_thresh, roi.nms_thresh, roi.detections_per_img) == (0.05, 0.5, 100)
    pool = roi.box_roi_pool
    assert (pool.output_size, pool.sampling_ratio, pool.aligned, pool.spatial_scale) == (14, 0, True, 1 / 16)
    sizes = model.rpn.anchor_generator.sizes
    assert sizes == ((32, 64, 128, 256, 512),)
    assert model.transform.image_mean == [0.0, 0.0, 0.0] and model.transform.image_std == [1.0, 1.0, 1.0]
    assert model.rpn.head.conv[0][0].out_channels == model.backbone.out_channels == 480  # CONV_DIMS [-1]


def test_rpn_conv_dims_narrows_the_rpn_conv_and_trains():
    model = build(tiny_cfg("quickstart", "MODEL.RPN.CONV_DIMS", "[32]")).train()
    head = model.rpn.head
    assert (head.conv[0][0].in_channels, head.conv[0][0].out_channels) == (model.backbone.out_channels, 32)
    assert head.cls_logits.in_channels == head.bbox_pred.in_channels == 32
    images = [random_image(64, 80, 1).float(), random_image(72, 96, 2).float()]
    losses = model(images, targets(5))
    sum(losses.values()).backward()
    assert head.conv[0][0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- data contract


def test_eval_output_contract_in_original_coordinates():
    cfg = tiny_cfg("quickstart")
    model = build(cfg).eval()
    small = random_image(64, 96, 3)
    # Nearest 2x upsampling, then the model's 0.5x bilinear resize, give back exactly the small image:
    # the network sees the same input, so the big image's boxes must be the small one's times 2.
    big = small.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    with torch.no_grad():
        out_small, out_big = model([small, big])
    for out, (height, width) in ((out_small, (64, 96)), (out_big, (128, 192))):
        assert set(out) == {"boxes", "labels", "scores"}
        count = len(out["boxes"])
        assert 0 < count <= cfg.TEST.DETECTIONS_PER_IMAGE
        assert out["boxes"].shape == (count, 4) and out["boxes"].dtype == torch.float32
        assert out["labels"].dtype == torch.int64 and out["scores"].shape == (count,)
        assert out["labels"].min() >= 1 and out["labels"].max() <= cfg.MODEL.ROI_HEADS.NUM_CLASSES
        assert (out["scores"] >= 0).all() and (out["scores"] <= 1).all()
        boxes = out["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    torch.testing.assert_close(out_big["boxes"], 2 * out_small["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(out_big["scores"], out_small["scores"])
    assert torch.equal(out_big["labels"], out_small["labels"])


def test_train_and_test_sizes_are_both_honored():
    cfg = tiny_cfg("quickstart", "INPUT.MIN_SIZE_TRAIN", "(88, 104)", "INPUT.MIN_SIZE_TEST", "64")
    model = build(cfg)
    image = random_image(100, 120, 4)
    model.eval()
    assert model.transform([image])[0].image_sizes == [(64, 76)]
    model.train()
    seen = {model.transform([image], [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}])[0]
            .image_sizes[0][0] for _ in range(20)}
    assert seen == {88, 104}
    model.eval()
    assert model.transform([image])[0].image_sizes == [(64, 76)]


# ---------------------------------------------------------------------------- RoI pooling and head


def test_roi_pooler_shape_and_alignment():
    # A feature map whose value is its column index: RoIAlign returns the mean sample x position.
    feature = torch.arange(8.0).expand(1, 4, 8, 8).contiguous()
    box = [torch.tensor([[32.0, 32.0, 64.0, 64.0], [0.0, 0.0, 16.0, 48.0]])]
    aligned = RoIPooler("res4", 14, 1 / 16, aligned=pooler_aligned("ROIAlignV2"))({"res4": feature}, box, [(128, 128)])
    legacy = RoIPooler("res4", 14, 1 / 16, aligned=pooler_aligned("ROIAlign"))({"res4": feature}, box, [(128, 128)])
    assert aligned.shape == legacy.shape == (2, 4, 14, 14)
    # Box 32..64 px is 2..4 on the stride-16 map; V2 shifts it by half a cell to 1.5..3.5.
    assert aligned[0].mean().item() == pytest.approx(2.5, abs=1e-5)
    assert legacy[0].mean().item() == pytest.approx(3.0, abs=1e-5)
    with pytest.raises(ValueError, match="ROIAlignV2, ROIAlign"):
        pooler_aligned("ROIPool")


def test_full_image_roi_reproduces_feature_map():
    # With ROIAlignV2 a box over the whole 224 px image samples each stride-16 cell at its center.
    feature = torch.randn(1, 6, 14, 14)
    pooler = RoIPooler("res4", 14, 1 / 16, aligned=True)
    pooled = pooler({"res4": feature}, [torch.tensor([[0.0, 0.0, 224.0, 224.0]])], [(224, 224)])
    torch.testing.assert_close(pooled, feature)


def test_pooler_type_from_config():
    legacy = build(tiny_cfg("quickstart", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlign"))
    assert not legacy.roi_heads.box_roi_pool.aligned
    with pytest.raises(ConfigError, match="POOLER_TYPE 'ROIPool'"):
        build(tiny_cfg("quickstart", "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIPool"))


@pytest.mark.parametrize("name,trunk_stage,head_stage", [("quickstart", "stage3", "stage4"),
                                                         ("mobilenet_v1_frcnn", "stage4", "stage5")])
def test_trunk_and_box_head_are_the_network_stages(name, trunk_stage, head_stage):
    cfg = tiny_cfg(name, "MODEL.BACKBONE.FREEZE_AT", "0")
    detector = build(cfg, seed=5).eval()
    torch.manual_seed(5)
    network = build_backbone(cfg).eval()  # the same random init: the detector builds its backbone first
    image = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        feature = detector.backbone(image)["res4"]
        torch.testing.assert_close(feature, network.forward_features(image, [trunk_stage])[trunk_stage])
        boxes = [torch.tensor([[0.0, 0.0, 40.0, 40.0], [10.0, 20.0, 90.0, 60.0], [30.0, 5.0, 60.0, 50.0]])]
        pooled = detector.roi_heads.box_roi_pool({"res4": feature}, boxes, [(64, 96)])
        vectors = detector.roi_heads.box_head(pooled)
        expected = getattr(network, head_stage)(pooled).mean(dim=(2, 3))
    channels = {info.name: info.channels for info in network.feature_info}
    assert pooled.shape == (3, channels[trunk_stage], 14, 14)
    assert vectors.shape == (3, channels[head_stage])
    torch.testing.assert_close(vectors, expected)


def test_box_head_rounds_the_roi_count_up_in_inference_only_on_cuda(monkeypatch):
    from shufflenet_det.detection import speed

    detector = build(tiny_cfg("quickstart")).eval()
    plain = detector.roi_heads.box_head
    assert type(speed.fast_box_head(plain, device="cpu")) is type(plain)  # nothing to do on a CPU
    monkeypatch.setattr(speed, "ROI_BUCKET", 4)
    head = speed.fast_box_head(plain, device="cuda")  # the form for CUDA, run here on the CPU
    assert list(head.state_dict()) == list(plain.state_dict())
    rois = torch.randn(5, detector.backbone.out_channels, 14, 14)
    calls = []
    handle = head[0].register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    with torch.no_grad():
        bucketed = head(rois)
        expected = plain(rois)
        head.train()
        trained = head(rois)
    handle.remove()
    assert calls == [8, 5, 5]  # padded only in eval mode
    assert bucketed.shape == expected.shape == (5, head.out_channels)
    torch.testing.assert_close(bucketed, expected)
    assert trained.shape == expected.shape


def _saved_bytes(function):
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = function()
    return output, sum(storages.values())


def test_recomputed_box_head_saves_less_and_gives_the_same_gradients():
    results = {}
    for recompute in (False, True):
        cfg = tiny_cfg("shufflenet_1x_frcnn", "MODEL.SHUFFLENET.NORM", "FrozenBN", "MODEL.BACKBONE.FREEZE_AT", "0",
                       "SHUFFLENET_DET.RECOMPUTE_BOX_HEAD", str(recompute))
        head = build(cfg).train().roi_heads.box_head
        rois = torch.randn(6, 240, 14, 14, generator=torch.Generator().manual_seed(0), requires_grad=True)
        output, saved = _saved_bytes(lambda: head(rois))
        output.square().sum().backward()
        results[recompute] = (output.detach(), rois.grad, head.stage4[1].expand.conv.weight.grad, saved)
    plain, recomputed = results[False], results[True]
    for a, b in zip(plain[:3], recomputed[:3]):
        torch.testing.assert_close(a, b)
    assert recomputed[3] < 0.6 * plain[3]  # measured 0.45 for ShuffleNet 1x's stage 4


def test_recomputing_detector_pools_rois_in_slices_with_the_same_losses_and_gradients(monkeypatch):
    from shufflenet_det.detection.speed import DeferringRoIPooler, FastBoxHead

    monkeypatch.setattr(FastBoxHead, "recompute_chunk", 5)  # several slices, the last one partial
    images = [random_image(64, 96, seed=1).float(), random_image(80, 64, seed=2).float()]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 50.0, 40.0], [30.0, 10.0, 90.0, 60.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 70.0]]), "labels": torch.tensor([3])},
    ]
    results = {}
    for recompute in (False, True):
        cfg = tiny_cfg("shufflenet_1x_frcnn", "MODEL.SHUFFLENET.NORM", "FrozenBN", "MODEL.BACKBONE.FREEZE_AT", "0",
                       "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "SHUFFLENET_DET.RECOMPUTE_BOX_HEAD", str(recompute))
        model = build(cfg).train()
        assert isinstance(model.roi_heads.box_roi_pool, DeferringRoIPooler) == recompute
        torch.manual_seed(5)  # the same RPN / RoI sampling in both runs
        losses, saved = _saved_bytes(lambda: model(images, targets))
        sum(losses.values()).backward()
        gradients = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
        results[recompute] = (losses, gradients, saved)
    (plain_losses, plain_grads, plain_saved), (losses, grads, saved) = results[False], results[True]
    assert plain_losses.keys() == losses.keys()
    for name in losses:
        torch.testing.assert_close(losses[name], plain_losses[name])
    assert plain_grads.keys() == grads.keys() and any(name.startswith("backbone.body") for name in grads)
    for name in grads:  # the trunk's gradients flow through the recomputed RoIAlign
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-4, atol=1e-6)
    # No pooled RoI or per-RoI activation is kept for backward: what stays is the trunk's and RPN's.
    assert saved < 0.25 * plain_saved  # measured 0.18 (0.33 when the pooled RoIs are kept)


def two_image_batch():
    """Two small images of different sizes with one box each (float 0-255, as training gets them)."""
    images = [random_image(64, 96, seed=1).float(), random_image(80, 64, seed=2).float()]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 50.0, 40.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 70.0]]), "labels": torch.tensor([3])},
    ]
    return images, targets


def test_batched_rpn_nms_gives_the_same_losses_and_detections():
    images, targets = two_image_batch()
    results = {}
    for impl in ("torchvision", "batched"):
        model = build(tiny_cfg("quickstart", "SHUFFLENET_DET.RPN_NMS_IMPL", impl)).train()
        assert (type(model.rpn).__name__ == "BatchedProposalRPN") == (impl == "batched")
        torch.manual_seed(5)
        losses = model(images, targets)
        with torch.no_grad():
            detections = model.eval()(images)
        results[impl] = (losses, detections)
    (losses, detections), (plain_losses, plain_detections) = results["batched"], results["torchvision"]
    for name in plain_losses:
        torch.testing.assert_close(losses[name], plain_losses[name], rtol=0, atol=0)
    for found, expected in zip(detections, plain_detections):
        assert len(expected["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(found[key], expected[key])
    with pytest.raises(ConfigError, match="RPN_NMS_IMPL must be one of torchvision, batched"):
        build_detector(tiny_cfg("quickstart", "SHUFFLENET_DET.RPN_NMS_IMPL", "fast"))


def test_separable_roi_align_trains_like_torchvisions():
    # In float64: the separable pooler returns channels_last features, whose convolutions round differently,
    # and trainable BN amplifies that on the way back to the stem.
    images, targets = two_image_batch()
    images = [image.double() for image in images]
    targets = [{**target, "boxes": target["boxes"].double()} for target in targets]
    results = {}
    for impl in ("torchvision", "separable"):
        model = build(tiny_cfg("quickstart", "SHUFFLENET_DET.ROI_ALIGN_IMPL", impl)).double().train()
        assert (type(model.roi_heads.box_roi_pool).__name__ == "SeparableRoIPooler") == (impl == "separable")
        torch.manual_seed(5)
        losses = model(images, targets)
        sum(losses.values()).backward()
        results[impl] = (losses, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (losses, grads), (plain_losses, plain_grads) = results["separable"], results["torchvision"]
    for name in plain_losses:
        torch.testing.assert_close(losses[name], plain_losses[name], rtol=1e-5, atol=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], plain_grads[name], rtol=1e-3, atol=1e-5)
    with pytest.raises(ConfigError, match="ROI_ALIGN_IMPL must be one of auto, torchvision, separable"):
        build_detector(tiny_cfg("quickstart", "SHUFFLENET_DET.ROI_ALIGN_IMPL", "fast"))


def test_recomputing_a_head_with_trainable_bn_is_refused():
    with pytest.raises(ConfigError, match="RECOMPUTE_BOX_HEAD: .*needs frozen norms"):
        build_detector(tiny_cfg("quickstart", "SHUFFLENET_DET.RECOMPUTE_BOX_HEAD", "True"))


@pytest.mark.parametrize("impl", ["modules", "folded", "dense"])
def test_conv_impls_give_the_same_detections(impl):
    cfg = tiny_cfg("shufflenet_1x_frcnn", "MODEL.SHUFFLENET.NORM", "FrozenBN", "MODEL.BACKBONE.FREEZE_AT", "0")
    image = random_image(64, 96, seed=3)
    with torch.no_grad():
        reference = build(cfg).eval()([image])[0]
        cfg.defrost()
        cfg.SHUFFLENET_DET.CONV_IMPL = impl
        detections = build(cfg).eval()([image])[0]
    assert len(reference["boxes"]) > 0
    torch.testing.assert_close(detections["boxes"], reference["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(detections["scores"], reference["scores"], atol=1e-4, rtol=1e-4)


def test_speed_forms_keep_state_dict_keys_and_checkpoints_load_across_forms():
    from shufflenet_det.detection.speed import PLAIN, apply_speed_forms

    cfg = tiny_cfg("shufflenet_1x_frcnn", "MODEL.SHUFFLENET.NORM", "FrozenBN", "MODEL.BACKBONE.FREEZE_AT", "0")
    model = build(cfg).eval()  # the CPU defaults: folded convs, separable RoIAlign
    assert type(model.roi_heads.box_roi_pool).__name__ == "SeparableRoIPooler"
    keys = list(model.state_dict())
    image = random_image(64, 96, seed=3)
    # Every form at once (CUDA's RoI buckets and dense convs too), run on the CPU.
    apply_speed_forms(model, conv="dense", roi_align="separable", rpn_nms="batched", recompute_box_head=True,
                      device="cuda")
    assert list(model.state_dict()) == keys
    plain = apply_speed_forms(build(cfg, seed=1), **PLAIN).eval()
    assert list(plain.state_dict()) == keys
    speed_classes = {"FoldedConvNormAct", "FoldedShuffle", "FastBoxHead", "SeparableRoIPooler", "DeferringRoIPooler",
                     "BatchedProposalRPN"}
    assert {type(m).__name__ for m in model.modules()} >= speed_classes
    assert not {type(m).__name__ for m in plain.modules()} & speed_classes
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected, found = plain([image])[0], model([image])[0]
    assert len(expected["boxes"]) > 0
    torch.testing.assert_close(found["boxes"], expected["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(found["scores"], expected["scores"], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- norm and freezing


def requires_grad_of(module):
    flags = {p.requires_grad for p in module.parameters()}
    assert len(flags) == 1, "a stage is partly frozen"
    return flags.pop()


def test_default_is_frozen_bn_with_freeze_at_2(caplog):
    cfg = tiny_cfg("shufflenet_1x_frcnn", "MODEL.SHUFFLENET.NORM", "FrozenBN")
    with caplog.at_level(logging.WARNING, logger="shufflenet_det.detection"):
        model = build(cfg)
    assert "randomly initialized frozen layers never learn" in caplog.text
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) > 20
    body = model.backbone.body
    assert [requires_grad_of(body.stem), requires_grad_of(body.stage2), requires_grad_of(body.stage3)] == [
        False, False, True]
    assert requires_grad_of(model.roi_heads.box_head) and requires_grad_of(model.rpn) and requires_grad_of(
        model.roi_heads.box_predictor)


@pytest.mark.parametrize("freeze_at,frozen", [(0, []), (1, ["stem"]), (3, ["stem", "stage2", "stage3"]),
                                              (4, ["stem", "stage2", "stage3", "stage4"])])
def test_freeze_at_with_trainable_bn(freeze_at, frozen):
    model = build(tiny_cfg("quickstart", "MODEL.BACKBONE.FREEZE_AT", str(freeze_at)))
    stages = dict(model.backbone.body.named_children())
    stages["stage4"] = model.roi_heads.box_head.stage4
    for name, stage in stages.items():
        assert requires_grad_of(stage) == (name not in frozen), name
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in stage.modules())
        assert has_bn == (name not in frozen), name
    assert requires_grad_of(model.rpn)


def test_no_warning_when_training_from_scratch_properly(caplog):
    with caplog.at_level(logging.WARNING, logger="shufflenet_det.detection"):
        build(tiny_cfg("quickstart"))
    assert [record.message for record in caplog.records if record.name.startswith("shufflenet_det")] == []


# ---------------------------------------------------------------------------- preprocessing


def test_mean_std_are_applied_in_0_255_scale():
    cfg = tiny_cfg("quickstart", "MODEL.PIXEL_MEAN", "[10.0, 20.0, 30.0]", "MODEL.PIXEL_STD", "[2.0, 4.0, 8.0]")
    model = build(cfg).eval()
    image = torch.full((3, 64, 64), 110, dtype=torch.uint8)
    batch = model.transform([image])[0].tensors[0]
    for channel, expected in enumerate((50.0, 22.5, 10.0)):
        torch.testing.assert_close(batch[channel], torch.full((64, 64), expected))
    torch.testing.assert_close(model.transform([image.float()])[0].tensors, batch[None])


def test_bgr_and_rgb_give_the_same_detections_when_swapped_consistently():
    mean_bgr, std_bgr = [103.5, 116.3, 123.7], [57.4, 57.1, 58.4]
    bgr = build(tiny_cfg("quickstart", "INPUT.FORMAT", "BGR", "MODEL.PIXEL_MEAN", str(mean_bgr),
                         "MODEL.PIXEL_STD", str(std_bgr))).eval()
    rgb = build(tiny_cfg("quickstart", "INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", str(mean_bgr[::-1]),
                         "MODEL.PIXEL_STD", str(std_bgr[::-1])), seed=1).eval()
    state = bgr.state_dict()
    first_conv = "backbone.body.stem.0.conv.weight"
    state[first_conv] = state[first_conv].flip(1)  # the RGB model's first layer reads channels reversed
    rgb.load_state_dict(state)
    image_bgr = random_image(72, 90, 7)

    def features(model, image):
        return model.backbone(model.transform([image])[0].tensors)["res4"]

    with torch.no_grad():
        expected = features(bgr, image_bgr)
        torch.testing.assert_close(features(rgb, image_bgr.flip(0)), expected, atol=1e-4, rtol=1e-4)
        assert (features(rgb, image_bgr) - expected).abs().max() > 0.1  # channel order matters
        detections_bgr, detections_rgb = bgr([image_bgr])[0], rgb([image_bgr.flip(0)])[0]
    assert len(detections_bgr["boxes"]) > 0
    torch.testing.assert_close(detections_rgb["boxes"], detections_bgr["boxes"], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("overrides,message", [
    (["INPUT.FORMAT", "YUV"], "INPUT.FORMAT must be one of BGR, RGB"),
    (["MODEL.PIXEL_MEAN", "[0.0, 0.0]"], "MODEL.PIXEL_MEAN needs 3 values"),
    (["MODEL.PIXEL_STD", "[1.0, 0.0, 1.0]"], "MODEL.PIXEL_STD must be positive"),
    (["MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64]]"], "one list for the single C4 feature map"),
    (["MODEL.MASK_ON", "True"], "MODEL.MASK_ON True is not supported"),
    (["MODEL.ROI_HEADS.IN_FEATURES", "['res5']"], "MODEL.ROI_HEADS.IN_FEATURES must name the one C4 feature"),
    (["MODEL.SHUFFLENET.NORM", "GN"], "MODEL.SHUFFLENET.NORM must be one of BN, FrozenBN, SyncBN"),
    (["MODEL.SHUFFLENET.WIDTH_MULT", "0.6"], "shufflenet_v1_x0_6_g3"),
    (["MODEL.BACKBONE.NAME", "build_shufflenet_backbone"], "expected 'build_shufflenet_v1_backbone' or 'build_mob"),
    (["SHUFFLENET_DET.CONV_IMPL", "fast"], "SHUFFLENET_DET.CONV_IMPL must be one of auto, modules"),
    (["MODEL.RPN.CONV_DIMS", "[64, 64]"], r"MODEL.RPN.CONV_DIMS must be one width .*got \[64, 64\]"),
    (["MODEL.RPN.CONV_DIMS", "[0]"], r"MODEL.RPN.CONV_DIMS must be one width .*got \[0\]"),
])
def test_bad_settings_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_detector(tiny_cfg("quickstart", *overrides))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------- weights


def test_missing_weights_file_says_how_to_get_them(tmp_path):
    missing = str(tmp_path / "weights" / "shufflenet_v1_x1_0_g3-megvii.pth")
    with pytest.raises(ConfigError) as info:
        build_detector(tiny_cfg("shufflenet_1x_frcnn", "MODEL.WEIGHTS", missing))
    message = str(info.value)
    assert missing in message and "tools/convert_weights.py" in message and "docs/weights.md" in message
    assert 'MODEL.WEIGHTS ""' in message


def test_preprocessing_mismatches_name_keys_and_values():
    megvii = {"source": "megvii", "input_format": "BGR", "pixel_mean": [0, 0, 0], "pixel_std": [1, 1, 1]}
    assert preprocessing_mismatches(megvii, "BGR", [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]) == []
    assert preprocessing_mismatches(None, "RGB", [1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) == []
    messages = preprocessing_mismatches(megvii, "RGB", [123.675, 116.28, 103.53], [1.0, 1.0, 1.0])
    assert len(messages) == 2
    assert "BGR" in messages[0] and "INPUT.FORMAT is RGB" in messages[0] and "set INPUT.FORMAT BGR" in messages[0]
    assert "MODEL.PIXEL_MEAN is [123.675, 116.28, 103.53]" in messages[1] and "[0.0, 0.0, 0.0]" in messages[1]


def test_weights_with_other_preprocessing_warn(tmp_path, monkeypatch, caplog):
    from shufflenet_det.detection import backbone as backbone_module

    checkpoint = tmp_path / "timm.pth"
    torch.save({"state_dict": {}}, checkpoint)  # a stand-in: loading is replaced below

    def build_with_meta(name, weights=None, **kwargs):
        model = build_model(name, **kwargs)
        model.weights_meta = {"source": "timm", "input_format": "RGB", "pixel_mean": [127.5, 127.5, 127.5],
                              "pixel_std": [127.5, 127.5, 127.5]}
        assert weights == str(checkpoint)
        return model

    monkeypatch.setattr(backbone_module, "build_model", build_with_meta)
    with caplog.at_level(logging.WARNING, logger="shufflenet_det.detection"):
        build_detector(tiny_cfg("mobilenet_v1_frcnn", "MODEL.WEIGHTS", str(checkpoint), "INPUT.FORMAT", "BGR"))
    assert "INPUT.FORMAT is BGR" in caplog.text and "timm" in caplog.text
    assert "MODEL.PIXEL_MEAN" not in caplog.text  # the config's mean already matches


def fixture_path():
    return Path(__file__).parent / "fixtures" / FIXTURE


def test_official_checkpoint_maps_onto_trunk_and_box_head():
    path = fixture_path()
    cfg = tiny_cfg("shufflenet_1x_frcnn", "MODEL.WEIGHTS", str(path), "MODEL.SHUFFLENET.NORM", "FrozenBN")
    detector = build(cfg).eval()
    network = build_model("shufflenet_v1_x0_5_g3", norm="FrozenBN", weights=str(path)).eval()

    trunk = set(dict(detector.backbone.body.named_children()))
    expected = {}
    for key, value in network.state_dict().items():
        stage = key.split(".")[0]
        if stage != "fc":
            expected[("backbone.body." if stage in trunk else "roi_heads.box_head.") + key] = value
    detection_heads = ("rpn.", "roi_heads.box_predictor.")
    loaded = {k: v for k, v in detector.state_dict().items() if not k.startswith(detection_heads)}
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key

    # The official reference outputs: stage3 is the detector's feature map, and a whole-image RoI
    # through the box head gives stage4's mean.
    reference = torch.load(path.parent / "megvii_shufflenetv1_0.5x_g3_reference.pt", weights_only=True)
    with torch.no_grad():
        feature = detector.backbone(reference["input_bgr_uint8"].float())["res4"]
        torch.testing.assert_close(feature, reference["stage3"], atol=1e-4, rtol=1e-4)
        whole = [torch.tensor([[0.0, 0.0, 224.0, 224.0]])] * 2
        pooled = detector.roi_heads.box_roi_pool({"res4": feature}, whole, [(224, 224)] * 2)
        vectors = detector.roi_heads.box_head(pooled)
    torch.testing.assert_close(vectors, reference["stage4"].mean(dim=(2, 3)), atol=1e-4, rtol=1e-4)


def test_detector_checkpoint_restores_weights_and_backbone_structure(tmp_path):
    """A detector saved by the engine rebuilds from MODEL.WEIGHTS with its weights and its backbone's
    structure (here the official release's inverse shuffle, which converted g8 weights need)."""
    from shufflenet_det.engine import Checkpointer

    model = build(tiny_cfg()).eval()
    shuffles = [m for m in model.modules() if isinstance(m, ChannelShuffle)]
    for shuffle in shuffles:
        shuffle.inverse = True
    model.structure_meta = {**model.structure_meta, "shuffle_layout": "inverse"}
    Checkpointer(model, tmp_path, extra_data={"meta": model.structure_meta}).save("model_final")
    images = [random_image(96, 128, seed=1)]
    with torch.no_grad():
        expected = model(images)[0]

    rebuilt = build(tiny_cfg("quickstart", "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")), seed=5).eval()
    assert rebuilt.structure_meta["shuffle_layout"] == "inverse"
    with torch.no_grad():
        got = rebuilt(images)[0]
    torch.testing.assert_close(got["boxes"], expected["boxes"])
    torch.testing.assert_close(got["scores"], expected["scores"])
