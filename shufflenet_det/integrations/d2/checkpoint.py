"""``ShuffleNetCheckpointer``: a ``DetectionCheckpointer`` that reads our ImageNet weights (stages to
``backbone.<stage>`` / ``roi_heads.box_head.<stage>``, ``fc`` dropped), detectron2 training checkpoints, and our
torchvision engine's checkpoints (converted to detectron2's names and layouts), always with
``torch.load(weights_only=True)``; pickle files (``.pkl``, ``.pyth``), which detectron2 unpickles, are refused."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from torch import nn

from ...utils.io import CheckpointError, safe_torch_load
from ...utils.text_table import first_items
from ...weights.formats import FORMAT_NAME, unpack_checkpoint
# Where a classification network's stages live in the detectron2 model, in the order tried.
_STAGE_PREFIXES = ("backbone.", "roi_heads.box_head.")
_CLASSIFIER_PREFIX = "fc."

# Our torchvision engine's module names -> detectron2's (roi_heads.* are the same; layouts converted separately).
_TORCHVISION_RENAMES = {
    "backbone.body.": "backbone.",
    "rpn.head.conv.0.0.": "proposal_generator.rpn_head.conv.",
    "rpn.head.cls_logits.": "proposal_generator.rpn_head.objectness_logits.",
    "rpn.head.bbox_pred.": "proposal_generator.rpn_head.anchor_deltas.",
}

StateDict = Dict[str, torch.Tensor]


def classifier_to_d2_state_dict(state_dict: Mapping, model_keys: Iterable[str]) -> StateDict:
    """A classification state dict (``stem.*``, ``stage3.*``, ``fc.*``) renamed to a detectron2 model's keys: each
    stage under the prefix where ``model_keys`` has it, ``fc.*`` dropped, stages the model lacks unchanged."""
    # "backbone.stage3", "roi_heads.box_head.stage4", ...: where each stage is in the model.
    placed = {prefix + key[len(prefix) :].split(".", 1)[0]
              for key in model_keys for prefix in _STAGE_PREFIXES if key.startswith(prefix)}
    renamed: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith(_CLASSIFIER_PREFIX):
            continue
        stage = key.split(".", 1)[0]
        prefix = next((p for p in _STAGE_PREFIXES if p + stage in placed), "")
        renamed[prefix + key] = value
    return renamed


def torchvision_to_d2_state_dict(state_dict: Mapping, num_sizes: int, num_ratios: int) -> StateDict:
    """Our torchvision engine's detector state dict in detectron2's names and layouts, for ``num_sizes`` x
    ``num_ratios`` anchors: the RPN's per-anchor outputs go from ratio-major to size-major, and the predictor's
    background row from first to last (with no background box regression)."""
    num_anchors = num_sizes * num_ratios
    # detectron2's anchor (size s, ratio r) is torchvision's anchor r * num_sizes + s.
    anchor_order = torch.tensor([r * num_sizes + s for s in range(num_sizes) for r in range(num_ratios)])
    converted: StateDict = {}
    for key, value in state_dict.items():
        old = next((old for old in _TORCHVISION_RENAMES if key.startswith(old)), None)
        new_key = key if old is None else _TORCHVISION_RENAMES[old] + key[len(old) :]
        if new_key.startswith("proposal_generator.rpn_head.objectness_logits."):
            _check_rows(key, value, num_anchors)
            value = value[anchor_order]
        elif new_key.startswith("proposal_generator.rpn_head.anchor_deltas."):
            _check_rows(key, value, num_anchors * 4)
            value = value.reshape(num_anchors, 4, *value.shape[1:])[anchor_order].reshape(value.shape)
        elif new_key.startswith("roi_heads.box_predictor.cls_score."):
            value = torch.cat([value[1:], value[:1]])
        elif new_key.startswith("roi_heads.box_predictor.bbox_pred."):
            value = value[4:]
        converted[new_key] = value
    return converted


def anchor_layout(cfg: CfgNode) -> Tuple[int, int]:
    """(number of anchor sizes, number of aspect ratios) of the C4 feature map."""
    return len(cfg.MODEL.ANCHOR_GENERATOR.SIZES[0]), len(cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS[0])


class ShuffleNetCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` reading our weight files too, never unpickling code. ``anchor_layout`` (see
    :func:`anchor_layout`) is needed only for our torchvision engine's checkpoints; after a load,
    ``last_incompatible_keys`` holds the missing / unexpected keys and shape mismatches."""

    def __init__(self, model: nn.Module, save_dir: str = "", *, anchor_layout: Optional[Tuple[int, int]] = None,
                 **checkpointables: Any) -> None:
        super().__init__(model, save_dir, **checkpointables)
        self.anchor_layout = anchor_layout
        self.last_incompatible_keys = None

    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            return super().load(path, *args, **kwargs)
        finally:
            # DetectionCheckpointer resets this only on success and asserts it is unset on entry:
            # without the reset, one refused file would break every later load.
            self._parsed_url_during_load = None

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if filename.endswith((".pkl", ".pyth")):
            raise CheckpointError(
                f"refusing to read {filename}: pickle files can run code when loaded. Load it once with "
                "detectron2's DetectionCheckpointer where you trust the file and save the model as .pth"
            )
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> Dict[str, Any]:
        checkpoint = safe_torch_load(f)
        if not isinstance(checkpoint, Mapping):
            raise CheckpointError(f"{f} holds a {type(checkpoint).__name__}, not a checkpoint dict")
        if checkpoint.get("format") == FORMAT_NAME:
            _, _, state_dict, meta = unpack_checkpoint(checkpoint, f)  # checks the version
            state_dict = classifier_to_d2_state_dict(state_dict, self.model.state_dict().keys())
            return {"model": state_dict, "__author__": "shufflenet_det", "meta": meta}
        state_dict = checkpoint.get("model", checkpoint)
        if isinstance(state_dict, Mapping) and any(k.startswith(("backbone.body.", "rpn.head.")) for k in state_dict):
            if self.anchor_layout is None:
                raise CheckpointError(f"{f} is a checkpoint of the torchvision engine; converting it needs the anchor "
                                      "layout: ShuffleNetCheckpointer(..., anchor_layout=anchor_layout(cfg))")
            converted = torchvision_to_d2_state_dict(state_dict, *self.anchor_layout)
            # Optimizer and scheduler states of the other engine do not apply here.
            return {"model": converted, "__author__": "shufflenet_det torchvision engine"}
        return dict(checkpoint)

    def _load_model(self, checkpoint: Dict[str, Any]):
        state_dict, model_keys = checkpoint["model"], set(self.model.state_dict())
        # A checkpoint that shares no key with the model would leave it untouched with only warnings.
        if not checkpoint.get("matching_heuristics", False) and state_dict and not model_keys.intersection(state_dict):
            raise CheckpointError(
                f"none of the checkpoint's {len(state_dict)} keys (first: {first_items(state_dict, 3)}) fits the model "
                f"(first: {first_items(sorted(model_keys), 3)}); convert other weights with tools/convert_weights.py"
            )
        self.last_incompatible_keys = super()._load_model(checkpoint)
        return self.last_incompatible_keys


def _check_rows(key: str, value: torch.Tensor, rows: int) -> None:
    if value.shape[0] != rows:
        raise CheckpointError(f"{key} has {value.shape[0]} outputs, the anchor layout gives {rows}: "
                              "MODEL.ANCHOR_GENERATOR SIZES / ASPECT_RATIOS differ from the checkpoint's")

