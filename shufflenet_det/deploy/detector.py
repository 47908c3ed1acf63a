"""Deploying the C4 Faster R-CNN (docs/speed.md): ``export_detector`` writes it whole, preprocessing to
postprocessing, as one ONNX file or TorchScript trace (``torch.jit.script`` cannot compile its ``super()``
calls); ``deploy_detector`` is a faster drop-in CPU copy with its conv parts in ONNX Runtime."""

from __future__ import annotations

import copy
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from ..config.loading import ConfigError, load_config
from ..detection.checkpoint import warn_if_untrained
from ..detection.detector import build_detector
from ..detection.pooler import RoIPooler, rois_with_image_index
from ..detection.proposals import BatchedProposalRPN, greedy_nms_first_k
from ..detection.roi_align import pool_window, roi_windows
from ..detection.speed import PLAIN, apply_speed_forms
from ..utils.io import PathLike, check_output_file
from ..utils.text_table import first_line
from .export import MIN_OPSET, create_ort_session, export_onnx, export_torchscript, onnx_bytes
from .runtime import deploy_rewrite

EXPORT_FORMATS = ("onnx", "torchscript")
OUTPUT_NAMES = ("boxes", "labels", "scores")


class DetectorOutputs(nn.Module):
    """The export interface of a torchvision-style detector: ``image [3, H, W] -> (boxes, labels, scores)``."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        detections = self.detector([image])[0]
        return detections["boxes"], detections["labels"], detections["scores"]


def example_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A fixed random float image [3, height, width] in 0-255, for tracing and checks."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8).float()


def build_export_detector(config: str, overrides: Sequence[Any] = (), weights: Optional[str] = None) -> GeneralizedRCNN:
    """The detector of a config (name or path) plus ``KEY VALUE`` overrides and ``weights`` (MODEL.WEIGHTS),
    on the CPU in eval mode. Bad configs and missing or unreadable weights raise a one-line ``ConfigError``."""
    overrides = list(overrides) + (["MODEL.WEIGHTS", weights] if weights else []) + ["MODEL.DEVICE", "cpu"]
    cfg = load_config(config, overrides)
    try:
        detector = build_detector(cfg).eval()
    except (RuntimeError, OSError, KeyError, pickle.UnpicklingError) as error:  # a checkpoint torch cannot read
        raise ConfigError(f"cannot load MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}: {first_line(error)}") from None
    warn_if_untrained(cfg.MODEL.WEIGHTS)
    return detector


class PerClassNMSRoIHeads(RoIHeads):
    """torchvision's RoI heads with the same postprocessing as one NMS per class, for export (traced,
    torchvision's is one NMS over all classes' boxes: 215 ms of 596 in ONNX Runtime for ShuffleNet 1x)."""

    def postprocess_detections(
        self, class_logits: torch.Tensor, box_regression: torch.Tensor, proposals: List[torch.Tensor],
        image_shapes: List[Tuple[int, int]],
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        rois_per_image = [boxes.shape[0] for boxes in proposals]  # traced as sizes, not constants
        decoded = self.box_coder.decode(box_regression, proposals).split(rois_per_image)
        probabilities = torch.softmax(class_logits, -1).split(rois_per_image)
        num_classes = int(class_logits.shape[-1])  # fixed by the predictor, a constant in the graph
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(decoded, probabilities, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            kept = []
            for label in range(1, num_classes):
                class_boxes, class_scores = boxes[:, label], scores[:, label]
                keep = torch.where(class_scores > self.score_thresh)[0]
                keep = keep[box_ops.remove_small_boxes(class_boxes[keep], min_size=1e-2)]
                keep = keep[box_ops.nms(class_boxes[keep], class_scores[keep], self.nms_thresh)]
                keep = keep[: self.detections_per_img]
                kept.append((class_boxes[keep], class_scores[keep], torch.full_like(keep, label)))
            image_boxes, image_scores, image_labels = (torch.cat(parts) for parts in zip(*kept))
            best = image_scores.sort(descending=True).indices[: self.detections_per_img]
            all_boxes.append(image_boxes[best])
            all_scores.append(image_scores[best])
            all_labels.append(image_labels[best])
        return all_boxes, all_scores, all_labels


def _export_copy(
    detector: GeneralizedRCNN, format: str, optimize: bool, rewrite: Optional[Dict[str, Any]] = None
) -> DetectorOutputs:
    if optimize:
        detector = deploy_rewrite(detector, "onnxruntime" if format == "onnx" else "torchscript", rewrite)
    else:
        detector = copy.deepcopy(detector)
    # Traced, torchvision's proposal selection and RoIAlign map onto ONNX's NMS and RoiAlign; the speed
    # forms loop in Python or pad.
    apply_speed_forms(detector, **PLAIN)
    detector.roi_heads.__class__ = PerClassNMSRoIHeads  # same state, one method replaced
    return DetectorOutputs(detector).eval()


def _onnx_interface(opset: int) -> dict:
    detections = {name: {0: "detections"} for name in OUTPUT_NAMES}
    return dict(input_names=["image"], output_names=list(OUTPUT_NAMES), dynamic=False,
                dynamic_axes={"image": {1: "height", 2: "width"}, **detections}, opset=opset)


def detector_onnx_bytes(
    detector: GeneralizedRCNN, example: torch.Tensor, opset: int = MIN_OPSET, optimize: bool = True,
    rewrite: Optional[Dict[str, Any]] = None,
) -> bytes:
    """The whole detector as ONNX, traced on ``example`` [3, H, W] (``optimize``, ``rewrite``: ``export_detector``)."""
    return onnx_bytes(_export_copy(detector, "onnx", optimize, rewrite), (example,), **_onnx_interface(opset))


def export_detector(
    detector: GeneralizedRCNN, path: PathLike, format: str = "onnx", input_size: Tuple[int, int] = (480, 640),
    opset: int = MIN_OPSET, optimize: bool = True, rewrite: Optional[Dict[str, Any]] = None, overwrite: bool = False,
) -> Path:
    """Write the whole detector as ONNX or TorchScript; returns the path. Input ``image`` [3, H, W] (any H, W;
    ``input_size`` is the trace's), outputs ``boxes``, ``labels``, ``scores``. ``optimize`` exports the deploy
    copy (BatchNorm folded, ShuffleNet in the runtime's fastest form or ``rewrite``: ``deploy_rewrite``)."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got '{format}'")
    path = check_output_file(path, overwrite)
    example = example_image(*input_size)
    model = _export_copy(detector, format, optimize, rewrite)
    if format == "onnx":
        return export_onnx(model, (example,), path, overwrite=overwrite, **_onnx_interface(opset))
    with warnings.catch_warnings():  # torchvision's tracing paths build tensors from traced sizes on purpose
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return export_torchscript(model, (example,), path, overwrite=overwrite)


class OrtModule(nn.Module):
    """An ONNX model run in ONNX Runtime: tensors in, tensor or tuple out. Idle workers sleep, not spin: the box
    head runs 75 times per image; spinning workers beside other processes made 2-thread runs 2.6-4.5 s, not 0.8-1.4."""

    def __init__(self, onnx_model: Union[PathLike, bytes], threads: int = 1) -> None:
        super().__init__()
        self.session = create_ort_session(onnx_model, threads=threads, spinning=False)
        self.input_names = [node.name for node in self.session.get_inputs()]

    def forward(self, *inputs: torch.Tensor):
        feed = {name: np.ascontiguousarray(x.detach().numpy()) for name, x in zip(self.input_names, inputs)}
        outputs = [torch.from_numpy(array) for array in self.session.run(None, feed)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class OnnxDetector(OrtModule):
    """An exported detector (``export_detector`` ONNX file or bytes) in ONNX Runtime, called like the
    torchvision detector in eval mode: a list of [3, H, W] images in, ``[{"boxes", "labels", "scores"}]`` out."""

    def forward(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        return [dict(zip(OUTPUT_NAMES, OrtModule.forward(self, image.float()))) for image in images]


class _Adapter(nn.Module):
    """``function(module, *inputs)``: fits ``module`` to the interface its caller expects."""

    def __init__(self, function: Callable, module: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.function = function
        self.module = module

    def forward(self, *inputs):
        return self.function(self.module, *inputs)


class PooledBoxHead(nn.Module):
    """``forward((feature_map, proposals))``: the per-RoI ``head``'s [R, D] features, ``chunk`` RoIs at a time pooled
    into one channels-last buffer [chunk, S, S, C] (``detection.roi_align`` with ``pooler``'s settings). Small chunks
    keep the head's activations in cache: 2-8 RoIs ran the ShuffleNet 1x head about 1.6x faster than all 300."""

    def __init__(self, pooler: RoIPooler, head: Callable[[torch.Tensor], torch.Tensor], chunk: int = 4) -> None:
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self.pooler = pooler
        self.head = head
        self.chunk = chunk

    def forward(self, rois: Tuple[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        feature_map, proposals = rois
        pooler, size = self.pooler, self.pooler.output_size
        hwc = feature_map.permute(0, 2, 3, 1).contiguous()
        windows = roi_windows(rois_with_image_index(proposals, feature_map.device), hwc.shape[1], hwc.shape[2], size,
                              pooler.spatial_scale, pooler.sampling_ratio, pooler.aligned)
        buffer = feature_map.new_zeros(self.chunk, size, size, feature_map.shape[1])
        outputs = []
        for start in range(0, len(windows), self.chunk):
            chunk = windows[start : start + self.chunk]
            for window, pooled in zip(chunk, buffer):
                if window is None:
                    pooled.zero_()  # the RoI lies entirely outside the map: RoIAlign gives zeros
                else:
                    pool_window(hwc, window, pooled)
            outputs.append(self.head(buffer)[: len(chunk)])
        return torch.cat(outputs) if outputs else self.head(buffer)[:0]


class EarlyStopRPN(BatchedProposalRPN):
    """torchvision's RPN whose NMS stops at POST_NMS_TOPK_TEST kept boxes: the same proposals in the same order,
    ties in score included (6000 boxes: about 65 ms less per image on one core)."""

    nms_block = 128

    def select(self, boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor) -> List[torch.Tensor]:
        limit = self.post_nms_top_n()
        keep, counts = greedy_nms_first_k(boxes, scores, valid, self.nms_thresh, limit + 1, self.nms_block)
        selected = []
        for image, kept in enumerate(counts.tolist()):
            index = keep[image, :kept]
            if bool((scores[image, index][1:] == scores[image, index][:-1]).any()):
                # torchvision orders over 1000 boxes with an unstable sort: where equal scores decide the order
                # or the cut, it decides.
                members = valid[image].nonzero().flatten()
                b, s = boxes[image, members], scores[image, members]
                index = members[box_ops.batched_nms(b, s, torch.zeros_like(members), self.nms_thresh)]
            selected.append(index[:limit])
        return selected


def _per_level(head: nn.Module, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    outputs = [head(feature) for feature in features]
    return [logits for logits, _ in outputs], [deltas for _, deltas in outputs]


def deploy_detector(
    detector: GeneralizedRCNN, threads: int = 1, roi_chunk: int = 4, example_size: Tuple[int, int] = (320, 320),
    opset: int = MIN_OPSET,
) -> GeneralizedRCNN:
    """A copy of ``detector`` (eval mode, same call and outputs) for fast CPU inference: trunk (dynamic H / W, traced
    at ``example_size``), RPN head and per-RoI head in ONNX Runtime sessions (``threads`` each) of ``deploy_rewrite(...,
    "onnxruntime")``, RoIAlign with the head ``roi_chunk`` RoIs at a time (``PooledBoxHead``), ``EarlyStopRPN``; the
    rest torchvision's. It holds ONNX Runtime sessions: build it again from ``detector``, do not copy or pickle it."""
    deployed = apply_speed_forms(deploy_rewrite(detector, "onnxruntime"), **PLAIN)
    backbone, roi_heads, name = deployed.backbone, deployed.roi_heads, deployed.backbone.feature_name
    image = torch.zeros(1, 3, *example_size)
    with torch.no_grad():
        feature = backbone(image)[name]
    trunk = OrtModule(onnx_bytes(backbone.body, image, opset=opset), threads)
    deployed.backbone = _Adapter(lambda body, images: {name: body(images)}, trunk)
    rpn_head = _Adapter(lambda head, x: tuple(per_level[0] for per_level in head([x])), deployed.rpn.head)
    deployed.rpn.head = _Adapter(_per_level, OrtModule(onnx_bytes(rpn_head, feature, opset=opset), threads))
    deployed.rpn.__class__ = EarlyStopRPN  # same state, one method replaced

    pool = roi_heads.box_roi_pool
    rois = torch.zeros(roi_chunk, pool.output_size, pool.output_size, feature.shape[1])
    head = _Adapter(lambda box_head, x: box_head(x.permute(0, 3, 1, 2)), roi_heads.box_head)  # channels last in
    head = OrtModule(onnx_bytes(head, rois, dynamic=False, opset=opset), threads)
    # The box head pools the RoIs chunk by chunk ([300, 480, 14, 14] pooled RoIs are 113 MB, far beyond
    # cache): box_roi_pool only hands it the feature map and the proposals.
    roi_heads.box_roi_pool = _Adapter(lambda _, features, proposals, image_shapes=None: (features[name], proposals))
    roi_heads.box_head = PooledBoxHead(pool, head, roi_chunk)
    return deployed.eval()
