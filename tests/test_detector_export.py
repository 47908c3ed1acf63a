"""Whole-detector export (ONNX, TorchScript) and the ONNX Runtime deployment copy give the eager
detector's boxes, labels and scores, at two input sizes; the export tool's errors are one line.

A tiny random detector (ShuffleNet 0.5x, 160 px, about 125 proposals) with non-trivial BatchNorm statistics
(folding must matter) and a box predictor wide enough that scores and boxes differ between RoIs.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

from tool_loading import load_tool
from shufflenet_det.deploy.detector import (
    DetectorOutputs,
    build_export_detector,
    deploy_detector,
    detector_onnx_bytes,
    example_image,
)

TINY = [
    "MODEL.SHUFFLENET.WIDTH_MULT", "0.5",
    "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "256",
    # Every proposal that survives NMS goes on (about 120-130 of 200, a different count per image: the
    # exported graphs must not keep the trace's count).
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "1000",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05",
]
# (height, width): a landscape and a portrait image, both different from the trace size (480 x 640).
SIZES = ((120, 150), (200, 130))


def load_tool_main():
    return load_tool("export_model").main


@pytest.fixture(scope="module")
def detector_checkpoint(tmp_path_factory):
    """(tiny detector in eval mode, its engine checkpoint path)."""
    from shufflenet_det.engine import Checkpointer

    torch.manual_seed(0)
    model = build_export_detector("quickstart", TINY)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(channels, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
                module.weight.copy_(0.5 + torch.rand(channels, generator=generator))
                module.bias.copy_(0.1 * torch.randn(channels, generator=generator))
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.normal_(0, 0.3, generator=generator)
        predictor.bbox_pred.weight.normal_(0, 0.05, generator=generator)
    folder = tmp_path_factory.mktemp("detector")
    Checkpointer(model, folder, extra_data={"meta": model.structure_meta}).save("model_final")
    return model, folder / "model_final.pth"


def eager_detections(model, image):
    with torch.no_grad():
        return DetectorOutputs(model)(image)


def assert_same_detections(got, expected):
    boxes, labels, scores = (torch.as_tensor(value) for value in got)
    expected_boxes, expected_labels, expected_scores = expected
    assert len(expected_boxes) > 5, "the tiny detector should detect something"
    assert boxes.shape == expected_boxes.shape
    torch.testing.assert_close(boxes, expected_boxes, atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=1e-4)
    assert torch.equal(labels, expected_labels)


def test_onnx_export_matches_eager_at_two_input_sizes(detector_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from shufflenet_det.deploy import create_ort_session

    model, checkpoint = detector_checkpoint
    output = tmp_path / "detector.onnx"
    args = ["--config", "quickstart", "--weights", str(checkpoint), "--format", "onnx", "--output", str(output)]
    assert load_tool_main()(args + TINY) == 0
    assert "wrote" in capsys.readouterr().out
    session = create_ort_session(output)
    assert [node.name for node in session.get_outputs()] == ["boxes", "labels", "scores"]
    assert session.get_inputs()[0].shape == [3, "height", "width"]
    for seed, (height, width) in enumerate(SIZES):
        image = example_image(height, width, seed=seed)
        assert_same_detections(session.run(None, {"image": image.numpy()}), eager_detections(model, image))


def test_torchscript_export_matches_eager_at_two_input_sizes(detector_checkpoint, tmp_path):
    model, checkpoint = detector_checkpoint
    output = tmp_path / "detector.pt"
    args = ["--config", "quickstart", "--weights", str(checkpoint), "--format", "torchscript",
            "--output", str(output), "--input-size", "96", "128"]
    assert load_tool_main()(args + TINY) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still what C++ loads
        traced = torch.jit.load(str(output))
    for seed, (height, width) in enumerate(SIZES):
        image = example_image(height, width, seed=seed)
        with torch.no_grad():
            assert_same_detections(traced(image), eager_detections(model, image))


def test_unoptimized_onnx_export_matches_too(detector_checkpoint):
    ort = pytest.importorskip("onnxruntime")
    model, _ = detector_checkpoint
    session = ort.InferenceSession(detector_onnx_bytes(model, example_image(96, 128), optimize=False))
    image = example_image(*SIZES[0], seed=3)
    assert_same_detections(session.run(None, {"image": image.numpy()}), eager_detections(model, image))


@pytest.mark.parametrize("proposals", [1000, 30])  # all NMS survivors; the RPN's NMS stopping at 30
def test_onnx_runtime_deployment_copy_matches_eager(detector_checkpoint, proposals):
    pytest.importorskip("onnxruntime")
    model, _ = detector_checkpoint
    model = copy.deepcopy(model)
    model.rpn._post_nms_top_n["testing"] = proposals
    deployed = deploy_detector(model, threads=2)
    assert not any(isinstance(module, nn.BatchNorm2d) for module in deployed.modules())
    options = deployed.backbone.module.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for seed, (height, width) in enumerate(SIZES):
        image = example_image(height, width, seed=seed)
        assert_same_detections(eager_detections(deployed, image), eager_detections(model, image))
    # The model it was made from is untouched.
    assert any(isinstance(module, nn.BatchNorm2d) for module in model.modules())


def test_export_tool_errors_are_one_line_and_keep_files(detector_checkpoint, tmp_path, capsys):
    _, checkpoint = detector_checkpoint
    main = load_tool_main()
    output = tmp_path / "detector.onnx"
    common = ["--format", "onnx", "--output", str(output)]

    def error_of(args):
        assert main(args) == 2
        message = capsys.readouterr().err.strip()
        assert message.startswith("error: ") and "\n" not in message
        return message

    assert "config 'no_such_config' not found" in error_of(["--config", "no_such_config"] + common)
    assert "MODEL.WEIGHTS file 'weights/" in error_of(["--config", "shufflenet_1x_frcnn"] + common)
    assert "is not a file" in error_of(["--config", "quickstart", "--weights", str(tmp_path / "none.pth")] + common)
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    assert "junk.pth" in error_of(["--config", "quickstart", "--weights", str(junk)] + common)
    bad_key = ["--config", "quickstart"] + common + ["MODEL.NO_SUCH_KEY", "1"]
    assert "unknown config key 'MODEL.NO_SUCH_KEY'" in error_of(bad_key)
    assert "need --config" in error_of(["--arch", "mobilenet_v1_x0_25"] + common + ["INPUT.MIN_SIZE_TEST", "160"])
    assert "another configuration" in error_of(
        ["--config", "quickstart", "--weights", str(checkpoint)] + common + ["MODEL.ROI_HEADS.NUM_CLASSES", "7"]
    )
    output.write_text("keep me")
    message = error_of(["--config", "quickstart", "--weights", str(checkpoint)] + common + TINY)
    assert "already exists" in message and "--overwrite" in message and output.read_text() == "keep me"


# ---------------------------------------------------------------------------- RoIAlign as matrix products


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_chunked_roi_align_equals_torchvision(aligned, sampling_ratio):
    from torchvision.ops import roi_align

    from shufflenet_det.deploy.detector import PooledBoxHead
    from shufflenet_det.detection.pooler import RoIPooler

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 13, 17, generator=generator)  # stride 8: images of 104 x 136 px
    corner = torch.rand(40, 2, generator=generator) * torch.tensor([180.0, 140.0]) - 20
    boxes = torch.cat([corner, corner + torch.rand(40, 2, generator=generator) * 150], dim=1)
    boxes[0] = torch.tensor([10.0, 10.0, 10.0, 10.0])  # empty
    boxes[7] = torch.tensor([-60.0, -50.0, -20.0, -20.0])  # entirely outside: zeros (not the last chunk's rows)
    boxes[2] = torch.tensor([0.0, 0.0, 136.0, 104.0])  # the whole map
    boxes[3] = torch.tensor([130.0, 100.0, 300.0, 200.0])  # over the bottom-right border
    proposals = [boxes[:15], boxes[15:]]
    expected = roi_align(features, proposals, 7, 1 / 8, sampling_ratio, aligned)
    # An identity head returns the pooled RoIs; 40 RoIs in chunks of 6 end with a partial chunk.
    pooled_rois = PooledBoxHead(RoIPooler("res4", 7, 1 / 8, sampling_ratio, aligned), torch.clone, chunk=6)
    got = pooled_rois((features, proposals))
    assert got.shape == (40, 7, 7, 5)
    torch.testing.assert_close(got.permute(0, 3, 1, 2), expected, atol=1e-5, rtol=1e-5)
    assert got[7].abs().max() == 0 and got[2].abs().max() > 0


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_training_separable_roi_align_equals_torchvision_forward_and_backward(aligned, sampling_ratio):
    from torchvision.ops import roi_align

    from shufflenet_det.detection.pooler import rois_with_image_index
    from shufflenet_det.detection.roi_align import separable_roi_align

    generator = torch.Generator().manual_seed(1)
    corner = torch.rand(30, 2, generator=generator) * torch.tensor([180.0, 140.0]) - 20
    boxes = torch.cat([corner, corner + torch.rand(30, 2, generator=generator) * 150], dim=1)
    boxes[0] = torch.tensor([-60.0, -50.0, -20.0, -20.0])  # entirely outside: zeros, no gradient
    boxes[1] = torch.tensor([130.0, 100.0, 300.0, 200.0])  # over the bottom-right border
    rois = rois_with_image_index([boxes[:12], boxes[12:]])
    grad = torch.randn(30, 5, 7, 7, generator=generator)
    results = []
    for align in (roi_align, separable_roi_align):
        features = torch.randn(2, 5, 13, 17, generator=torch.Generator().manual_seed(2), requires_grad=True)
        pooled = align(features, rois, 7, 1 / 8, sampling_ratio, aligned)
        pooled.backward(grad)
        results.append((pooled.detach(), features.grad))
    (expected, expected_grad), (pooled, features_grad) = results
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features_grad, expected_grad, atol=1e-5, rtol=1e-5)
    assert expected_grad.abs().max() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):  # like torchvision's: float32 inside, input dtype out
        half = separable_roi_align(torch.randn(1, 5, 13, 17).bfloat16(), rois[:12], 7, 1 / 8, 0, True)
    assert half.dtype == torch.bfloat16 and half.shape == (12, 5, 7, 7)
    empty = separable_roi_align(torch.randn(1, 5, 13, 17), rois[:0], 7, 1 / 8, 0, True)
    assert empty.shape == (0, 5, 7, 7)


def test_training_separable_roi_align_backward_is_its_forwards_transpose():
    from shufflenet_det.detection.roi_align import separable_roi_align

    generator = torch.Generator().manual_seed(3)
    features = torch.randn(2, 3, 6, 7, dtype=torch.float64, generator=generator, requires_grad=True)
    rois = torch.tensor([[0, 2.0, 3.0, 40.0, 30.0], [1, -5.0, 10.0, 20.0, 60.0], [0, 50.0, 40.0, 70.0, 55.0]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: separable_roi_align(f, rois, 4, 1 / 8, 0, True), (features,))


@pytest.mark.parametrize("count", [0, 5, 16, 21])
def test_pooled_box_head_runs_chunks_like_the_whole_batch(count):
    from torchvision.ops import roi_align

    from shufflenet_det.deploy.detector import PooledBoxHead
    from shufflenet_det.detection.pooler import RoIPooler

    generator = torch.Generator().manual_seed(count)
    feature_map = torch.randn(1, 6, 10, 12, generator=generator)
    corner = torch.rand(count, 2, generator=generator) * 150
    boxes = torch.cat([corner, corner + 10 + torch.rand(count, 2, generator=generator) * 60], dim=1)
    head = nn.Sequential(nn.Conv2d(6, 4, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    channels_last_head = lambda rois: head(rois.permute(0, 3, 1, 2))  # noqa: E731
    pooled_head = PooledBoxHead(RoIPooler("res4", 14, 1 / 16, 0, True), channels_last_head, chunk=8)
    with torch.no_grad():
        got = pooled_head((feature_map, [boxes]))
        expected = head(roi_align(feature_map, [boxes], 14, 1 / 16, 0, True))
    assert got.shape == (count, 4)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
