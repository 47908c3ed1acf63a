"""Deploying the C4 Faster R-CNN: whole-detector ONNX / TorchScript export and a fast CPU inference copy.

Two deployment forms of a detector built by ``build_detector(cfg)`` or a ``fasterrcnn_*_c4`` builder:

- ``export_detector``: one file holding preprocessing (resize + normalize), the trunk, the RPN (anchors,
  decoding, NMS), RoIAlign, the per-RoI head and postprocessing (per-class NMS, boxes scaled back to the
  input image). Input: one float image [3, H, W] as the detector takes it (``build_detector``'s: 0-255,
  INPUT.FORMAT channel order; the builders': RGB in 0-1), any H and W;
  outputs ``boxes`` [N, 4] (XYXY, input image coordinates), ``labels`` [N] (1..NUM_CLASSES), ``scores``
  [N]. ONNX goes through the TorchScript-based exporter, which follows torchvision's tracing code paths
  (sizes computed as tensors), so height and width stay dynamic. TorchScript is a trace of the same
  graph (also size-independent); ``torch.jit.script`` does not work on this detector because
  ``DetectionTransform`` and ``C4BoxHead`` call ``super()`` methods, which TorchScript cannot compile.
- ``deploy_detector``: a drop-in copy of the detector (same call, same outputs) whose convolutional
  parts (trunk, RPN head, per-RoI head) run in ONNX Runtime with BatchNorm folded and ShuffleNet's
  ONNX Runtime form (``deploy_rewrite``); RoIAlign runs as matrix products (``SeparableRoIAlign``)
  with the head on a few RoIs at a time, the RPN's NMS stops at the proposals it keeps
  (``EarlyStopRPN``), the rest stays torchvision's. This is the fast CPU path (docs/speed.md, detector
  section): ONNX Runtime's RoiAlign is several times slower, and its NMS cannot stop early.
"""

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
from ..detection.proposals import BatchedProposalRPN
from ..detection.speed import PLAIN, apply_speed_forms
from ..utils.io import PathLike, check_output_file
from ..utils.text_table import first_line
from .export import MIN_OPSET, create_ort_session, export_onnx, export_torchscript, onnx_bytes
from .nms import nms_first_k
from .roi_align import SeparableRoIAlign
from .runtime import deploy_rewrite

EXPORT_FORMATS = ("onnx", "torchscript")
OUTPUT_NAMES = ("boxes", "labels", "scores")


class DetectorOutputs(nn.Module):
    """One image in, three tensors out: the export interface of a torchvision-style detector.

    ``forward(image [3, H, W]) -> (boxes [N, 4], labels [N], scores [N])``; runtimes other than
    PyTorch take neither lists of images nor dictionaries.
    """

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


def build_export_detector(
    config: str, overrides: Sequence[Any] = (), weights: Optional[str] = None
) -> GeneralizedRCNN:
    """The detector of a config (name or path) plus ``KEY VALUE`` overrides, on the CPU in eval mode.

    ``weights`` (a file) sets MODEL.WEIGHTS. Bad configs, missing or unreadable weights raise a
    one-line ``ValueError`` (``ConfigError``).
    """
    overrides = list(overrides) + (["MODEL.WEIGHTS", weights] if weights else []) + ["MODEL.DEVICE", "cpu"]
    cfg = load_config(config, overrides)
    try:
        detector = build_detector(cfg).eval()
    except (RuntimeError, OSError, KeyError, pickle.UnpicklingError) as error:  # a checkpoint torch cannot read
        raise ConfigError(f"cannot load MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}: {first_line(error)}") from None
    warn_if_untrained(cfg.MODEL.WEIGHTS)
    return detector


class PerClassNMSRoIHeads(RoIHeads):
    """torchvision's RoI heads with postprocessing written as one NMS per class, for export.

    Same detections as torchvision's ``postprocess_detections`` (decode, clip, softmax, drop the
    background, score threshold, drop empty boxes, NMS within each class, the best
    DETECTIONS_PER_IMAGE by score). Traced, torchvision's version becomes one NMS over every class's
    boxes shifted apart (24000 boxes for 80 classes x 300 RoIs: 215 ms of 596 in ONNX Runtime for
    ShuffleNet 1x); here each class gets its own small NMS node.
    """

    def postprocess_detections(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: List[torch.Tensor],
        image_shapes: List[Tuple[int, int]],
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        rois_per_image = [boxes.shape[0] for boxes in proposals]  # traced as sizes, not constants
        decoded = self.box_coder.decode(box_regression, proposals).split(rois_per_image)
        probabilities = torch.softmax(class_logits, -1).split(rois_per_image)
        num_classes = int(class_logits.shape[-1])  # fixed by the predictor, a constant in the graph
        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(decoded, probabilities, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            kept_boxes, kept_scores, kept_labels = [], [], []
            for label in range(1, num_classes):
                class_boxes, class_scores = boxes[:, label], scores[:, label]
                keep = torch.where(class_scores > self.score_thresh)[0]
                class_boxes, class_scores = class_boxes[keep], class_scores[keep]
                keep = box_ops.remove_small_boxes(class_boxes, min_size=1e-2)
                class_boxes, class_scores = class_boxes[keep], class_scores[keep]
                keep = box_ops.nms(class_boxes, class_scores, self.nms_thresh)[: self.detections_per_img]
                kept_boxes.append(class_boxes[keep])
                kept_scores.append(class_scores[keep])
                kept_labels.append(torch.full_like(keep, label))
            scores = torch.cat(kept_scores)
            best = scores.sort(descending=True).indices[: self.detections_per_img]
            all_boxes.append(torch.cat(kept_boxes)[best])
            all_scores.append(scores[best])
            all_labels.append(torch.cat(kept_labels)[best])
        return all_boxes, all_scores, all_labels


def _export_copy(
    detector: GeneralizedRCNN, format: str, optimize: bool, rewrite: Optional[Dict[str, Any]] = None
) -> DetectorOutputs:
    if optimize:
        detector = deploy_rewrite(detector, "onnxruntime" if format == "onnx" else "torchscript", rewrite)
    else:
        detector = copy.deepcopy(detector)
    # Traced: torchvision's proposal selection and RoIAlign map onto ONNX's NMS and RoiAlign; the speed
    # forms (batched NMS, separable RoIAlign, RoI buckets) loop in Python or pad.
    apply_speed_forms(detector, **PLAIN)
    # Same state, one method replaced (RoIHeads' constructor cannot take an existing head's parts).
    detector.roi_heads.__class__ = PerClassNMSRoIHeads
    return DetectorOutputs(detector).eval()


def detector_onnx_bytes(
    detector: GeneralizedRCNN,
    example: torch.Tensor,
    opset: int = MIN_OPSET,
    optimize: bool = True,
    rewrite: Optional[Dict[str, Any]] = None,
) -> bytes:
    """The whole detector as ONNX (see the module docstring); ``example`` is one [3, H, W] image.

    ``optimize`` exports the deploy copy (``deploy_rewrite``; ``rewrite`` overrides its ShuffleNet form).
    """
    return onnx_bytes(_export_copy(detector, "onnx", optimize, rewrite), (example,), **_onnx_interface(opset))


def _onnx_interface(opset: int) -> dict:
    detections = {name: {0: "detections"} for name in OUTPUT_NAMES}
    return dict(
        input_names=["image"],
        output_names=list(OUTPUT_NAMES),
        dynamic=False,
        dynamic_axes={"image": {1: "height", 2: "width"}, **detections},
        opset=opset,
    )


def export_detector(
    detector: GeneralizedRCNN,
    path: PathLike,
    format: str = "onnx",
    input_size: Tuple[int, int] = (480, 640),
    opset: int = MIN_OPSET,
    optimize: bool = True,
    rewrite: Optional[Dict[str, Any]] = None,
    overwrite: bool = False,
) -> Path:
    """Write the whole detector (preprocessing .. postprocessing) as ONNX or TorchScript; returns the path.

    ``input_size`` (height, width) is the size of the example image traced; the file accepts any size.
    ``optimize`` exports the deploy copy (BatchNorm folded, ShuffleNet in the runtime's fastest form;
    ``rewrite`` overrides the form, see ``deploy_rewrite``).
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got '{format}'")
    path = check_output_file(path, overwrite)
    example = example_image(*input_size)
    model = _export_copy(detector, format, optimize, rewrite)
    if format == "onnx":
        return export_onnx(model, (example,), path, overwrite=overwrite, **_onnx_interface(opset))
    with warnings.catch_warnings():
        # torchvision's tracing paths build tensors from traced sizes on purpose.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return export_torchscript(model, (example,), path, overwrite=overwrite)


def _detector_session(onnx_model: Union[PathLike, bytes], threads: int):
    """``create_ort_session``'s low-latency session, with idle worker threads sleeping instead of spinning.

    The deployment path calls its box-head session once per few RoIs (75 calls per image): with
    spinning workers and other processes on the cores, 2-thread runs of ShuffleNet 1x took 2.6-4.5 s
    instead of 0.2 s (medians on the shared dev VM); without, 0.8-1.4 s at the same load. One thread
    has no workers, so nothing changes there.
    """
    return create_ort_session(onnx_model, threads=threads, spinning=False)


class OrtModule(nn.Module):
    """A module whose forward runs an ONNX model in ONNX Runtime: tensors in, tensor or tuple out."""

    def __init__(self, onnx_model: bytes, threads: int = 1) -> None:
        super().__init__()
        self.session = _detector_session(onnx_model, threads)
        self.input_names = [node.name for node in self.session.get_inputs()]

    def forward(self, *inputs: torch.Tensor):
        feed = {name: np.ascontiguousarray(x.detach().numpy()) for name, x in zip(self.input_names, inputs)}
        outputs = [torch.from_numpy(array) for array in self.session.run(None, feed)]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


class OnnxDetector(nn.Module):
    """An exported detector (``export_detector`` ONNX file or bytes) in ONNX Runtime, called like the
    torchvision detector in eval mode: a list of [3, H, W] images in, ``[{"boxes", "labels", "scores"}]`` out."""

    def __init__(self, onnx_model: Union[PathLike, bytes], threads: int = 1) -> None:
        super().__init__()
        self.session = _detector_session(onnx_model, threads)

    def forward(self, images: List[torch.Tensor]) -> List[Dict[str, torch.Tensor]]:
        detections = []
        for image in images:
            arrays = self.session.run(None, {"image": np.ascontiguousarray(image.detach().float().numpy())})
            detections.append({name: torch.from_numpy(array) for name, array in zip(OUTPUT_NAMES, arrays)})
        return detections


class _FeatureMap(nn.Module):
    """C4Backbone's interface (``{name: map}``, ``out_channels``) around a trunk that returns a tensor."""

    def __init__(self, trunk: nn.Module, feature_name: str, out_channels: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.feature_name = feature_name
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor):
        return {self.feature_name: self.trunk(images)}


class _RPNHeadPerLevel(nn.Module):
    """torchvision RPNHead's interface (lists per feature level) around a two-output single-map module."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        outputs = [self.head(feature) for feature in features]
        return [logits for logits, _ in outputs], [deltas for _, deltas in outputs]


class _SingleMapRPNHead(nn.Module):
    def __init__(self, rpn_head: nn.Module) -> None:
        super().__init__()
        self.rpn_head = rpn_head

    def forward(self, feature: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, deltas = self.rpn_head([feature])
        return logits[0], deltas[0]


class _RoIsByImage(nn.Module):
    """Stands in for ``box_roi_pool``: hands the feature map and the proposals to the box head, which
    pools them chunk by chunk (a [300, 480, 14, 14] batch of pooled RoIs is 113 MB, far beyond cache)."""

    def __init__(self, feature_name: str) -> None:
        super().__init__()
        self.feature_name = feature_name

    def forward(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[torch.Tensor],
        image_shapes: Optional[List[Tuple[int, int]]] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        return features[self.feature_name], proposals


class PooledBoxHead(nn.Module):
    """RoIAlign and the per-RoI head, run on ``chunk`` RoIs at a time through one reused buffer.

    ``forward((feature_map, proposals))`` returns the head's [R, D] features. ``head`` takes
    channels-last pooled RoIs [chunk, S, S, C]; the last chunk is padded (its extra rows are dropped).
    Small chunks keep the head's activations in the core's cache: chunks of 2-8 RoIs ran the ShuffleNet
    1x head about 1.6x faster than all 300 RoIs at once in ONNX Runtime (docs/speed.md).
    """

    def __init__(
        self, pooler: SeparableRoIAlign, head: Callable[[torch.Tensor], torch.Tensor], chunk: int = 4
    ) -> None:
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self.pooler = pooler
        self.head = head
        self.chunk = chunk

    def forward(self, rois: Tuple[torch.Tensor, List[torch.Tensor]]) -> torch.Tensor:
        feature_map, proposals = rois
        plan = self.pooler.plan(feature_map, proposals)
        size = self.pooler.output_size
        buffer = feature_map.new_zeros(self.chunk, size, size, plan.channels)
        outputs = []
        for start in range(0, len(plan), self.chunk):
            stop = min(start + self.chunk, len(plan))
            self.pooler.pool_into(plan, start, stop, buffer)
            outputs.append(self.head(buffer)[: stop - start])
        return torch.cat(outputs) if outputs else self.head(buffer)[:0]


class _ChannelsLastInput(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.permute(0, 3, 1, 2))


def batched_nms_first_k(
    boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float, k: int
) -> torch.Tensor:
    """``torchvision.ops.batched_nms(boxes, scores, groups, iou_threshold)[:k]`` (NMS within each group),
    computing only the first ``k`` + 1 kept boxes of each group (``nms_first_k``).

    torchvision orders the kept boxes of several groups, or of over 1000 boxes, with an unstable sort:
    where equal scores decide the order or the cut at ``k``, this falls back to torchvision's call.
    """
    kept = [
        members[nms_first_k(boxes[members], scores[members], iou_threshold, k + 1)]
        for members in (torch.nonzero(groups == group).flatten() for group in torch.unique(groups))
    ]
    kept = torch.cat(kept) if kept else groups.new_zeros(0)
    kept = kept.sort().values
    kept = kept[scores[kept].sort(descending=True, stable=True).indices][: k + 1]
    if bool((scores[kept][1:] == scores[kept][:-1]).any()):
        return box_ops.batched_nms(boxes, scores, groups, iou_threshold)[:k]
    return kept[:k]


class EarlyStopRPN(BatchedProposalRPN):
    """torchvision's RPN whose NMS stops at POST_NMS_TOPK_TEST kept boxes, image by image.

    Same steps and the same proposals in the same order as torchvision's ``filter_proposals``, ties in
    score included (``batched_nms_first_k``); only the NMS skips what the cut-off drops (6000 boxes: about
    65 ms less per image on one core).
    """

    def select(
        self, boxes: torch.Tensor, scores: torch.Tensor, levels: torch.Tensor, valid: torch.Tensor
    ) -> List[torch.Tensor]:
        limit = self.post_nms_top_n()
        return self.select_per_image(
            boxes, scores, levels, valid, lambda b, s, groups: batched_nms_first_k(b, s, groups, self.nms_thresh, limit)
        )


def deploy_detector(
    detector: GeneralizedRCNN,
    threads: int = 1,
    roi_chunk: int = 4,
    example_size: Tuple[int, int] = (320, 320),
    opset: int = MIN_OPSET,
) -> GeneralizedRCNN:
    """A copy of ``detector`` (eval mode, same call and outputs) for fast CPU inference.

    The trunk (dynamic height / width), the RPN head and the per-RoI box head run in ONNX Runtime
    sessions (``threads`` intra-op threads) exported from the deploy copy (``deploy_rewrite(...,
    "onnxruntime")``: BatchNorm folded, shuffle as a Gather, channels padded to ONNX Runtime's
    blocks). RoIAlign is ``SeparableRoIAlign``, run with the box head on ``roi_chunk`` RoIs at a time
    (``PooledBoxHead``). Resizing, anchors, proposal selection, NMS, the box predictor and
    postprocessing stay torchvision's (on torch's own threads, ``torch.set_num_threads``).
    ``example_size`` is the trunk's trace size (any works). The copy holds ONNX Runtime sessions: it
    cannot be deep-copied or pickled; build it again from ``detector`` instead.
    """
    deployed = apply_speed_forms(deploy_rewrite(detector, "onnxruntime"), **PLAIN)
    backbone, roi_heads = deployed.backbone, deployed.roi_heads
    height, width = example_size
    image = torch.zeros(1, 3, height, width)
    with torch.no_grad():
        feature = backbone(image)[backbone.feature_name]
    trunk = OrtModule(onnx_bytes(backbone.body, image, opset=opset), threads)
    deployed.backbone = _FeatureMap(trunk, backbone.feature_name, backbone.out_channels)
    rpn_head = onnx_bytes(_SingleMapRPNHead(deployed.rpn.head), feature, opset=opset)
    deployed.rpn.head = _RPNHeadPerLevel(OrtModule(rpn_head, threads))
    # Same state, one method replaced (the RPN's constructor cannot take an existing RPN's parts).
    deployed.rpn.__class__ = EarlyStopRPN

    pool = roi_heads.box_roi_pool
    pooler = SeparableRoIAlign(
        pool.feature_name, pool.output_size, pool.spatial_scale, pool.sampling_ratio, pool.aligned
    )
    rois = torch.zeros(roi_chunk, pool.output_size, pool.output_size, feature.shape[1])
    head = onnx_bytes(_ChannelsLastInput(roi_heads.box_head), rois, dynamic=False, opset=opset)
    roi_heads.box_roi_pool = _RoIsByImage(pool.feature_name)
    roi_heads.box_head = PooledBoxHead(pooler, OrtModule(head, threads), roi_chunk)
    return deployed.eval()
