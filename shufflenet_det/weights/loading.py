"""The user-facing entry points: convert a checkpoint to our layout, load weights into a model."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..modeling.registry import MODEL_REGISTRY, create_model, list_models
from ..utils.io import CheckpointError
from ..utils.text_table import first_items
from .catalog import SOURCE_PREPROCESSING, Preprocessing, download_weights, find_pretrained, list_pretrained
from .converters import CONVERTERS
from .formats import SOURCES, StateDict, read_checkpoint, unpack_checkpoint
from .structure import STRUCTURE_KEYS, apply_structure, model_structure

logger = logging.getLogger(__name__)

CheckpointLike = Union[str, os.PathLike, Mapping[str, Any]]
Shapes = Dict[str, Tuple[int, ...]]


def resolve_weights(source: Union[str, os.PathLike]) -> Path:
    """A checkpoint path, downloading first when ``source`` names known weights (``list_pretrained()``)."""
    text = os.fspath(source)
    if Path(text).exists():
        return Path(text)
    if text in list_pretrained():
        return download_weights(text)
    if ":" in text and text.split(":", 1)[0] in SOURCES:
        raise CheckpointError(f"unknown pretrained weights '{text}'; known names: {', '.join(list_pretrained())}")
    raise CheckpointError(f"checkpoint not found: {text} (neither a file nor a name from list_pretrained())")


def convert_checkpoint(path_or_obj: CheckpointLike, arch: Optional[str] = None,
                       source: Optional[str] = None) -> Tuple[StateDict, Dict[str, Any]]:
    """A checkpoint (file, known weight name, or loaded object) in our layout, and its metadata. ``source``
    asserts what it is (default: detected); ``arch`` defaults to the one registered model its shapes fit."""
    state_dict, meta = _convert(path_or_obj, source)
    num_classes = _num_classes(state_dict)
    if arch is not None:
        MODEL_REGISTRY.get(arch)  # unknown names raise with the valid ones
        problems = _shape_problems(_reference_shapes(arch, num_classes), _shapes(state_dict))
        if problems:
            raise CheckpointError(f"{meta['label']} does not fit {arch}: {problems}")
    else:
        candidates = matching_archs(state_dict)
        if len(candidates) != 1:
            found = f"several fit ({', '.join(candidates)})" if candidates else "no registered model fits its shapes"
            label = meta["label"]
            raise CheckpointError(f"cannot tell the architecture of {label}: {found}; name it with arch= (--arch)")
        arch = candidates[0]
    return state_dict, _finish_meta(meta, arch, num_classes)


def build_model(name: str, num_classes: int = 1000, norm: str = "BN", freeze_at: int = 0,
                weights: Optional[CheckpointLike] = None, **kwargs: Any) -> nn.Module:
    """``modeling.create_model`` with ``weights`` (anything ``load_weights`` takes) loaded before freezing;
    their metadata in ``model.weights_meta``."""
    model = create_model(name, num_classes=num_classes, norm=norm, **kwargs)
    if weights:
        model.weights_meta = load_weights(model, weights)
    return model.freeze(freeze_at) if freeze_at else model


def load_weights(model: nn.Module, source: CheckpointLike, strict: bool = True) -> Dict[str, Any]:
    """Load a checkpoint of any source (path, known weight name, or object) and its structure settings into a
    model of ours; return its metadata. Shapes must match, except a classifier for another number of classes
    (skipped with a warning, in ``meta["skipped"]``); ``strict=False`` also skips whatever does not fit."""
    state_dict, meta = _convert(source, None)
    label, num_classes = meta["label"], _num_classes(state_dict)
    expected = model.state_dict()
    skipped: List[str] = []
    fc_weight, model_fc = state_dict.get("fc.weight"), expected.get("fc.weight")
    if (fc_weight is not None and model_fc is not None and fc_weight.shape[1:] == model_fc.shape[1:]
            and fc_weight.shape[0] != model_fc.shape[0]):
        skipped = sorted(key for key in state_dict if key.startswith("fc."))
        logger.warning("%s has %d classes, the model %d: not loading %s", label, fc_weight.shape[0],
                       model_fc.shape[0], ", ".join(skipped))
        state_dict = {key: value for key, value in state_dict.items() if key not in skipped}
    model_name = getattr(model, "arch", None) or type(model).__name__
    problems = _shape_problems(_shapes(expected), _shapes(state_dict), skipped)
    if problems:
        candidates = matching_archs(state_dict)
        about = f" (it fits {', '.join(candidates)})" if candidates else ""
        if strict:
            raise CheckpointError(f"{label} does not fit {model_name}{about}: {problems}")
        logger.warning("%s: loading only what fits %s; %s", label, model_name, problems)
    misfits = [k for k, shape in _shapes(state_dict).items() if k not in expected or tuple(expected[k].shape) != shape]
    skipped += sorted(misfits)
    apply_structure(model, meta)
    model.load_state_dict({k: v for k, v in state_dict.items() if k in expected and k not in misfits}, strict=False)
    arch = getattr(model, "arch", None)
    if arch is None:
        candidates = matching_archs(state_dict)
        arch = candidates[0] if len(candidates) == 1 else None
    meta = _finish_meta(meta, arch, num_classes)
    meta.update(model_structure(model))
    meta["skipped"] = skipped
    return meta


def matching_archs(state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """Registered model names whose parameters and buffers have exactly these keys and shapes."""
    shapes, num_classes = _shapes(state_dict), _num_classes(state_dict)
    return [arch for arch in list_models() if _reference_shapes(arch, num_classes) == shapes]


def _convert(path_or_obj: CheckpointLike, source: Optional[str]) -> Tuple[StateDict, Dict[str, Any]]:
    if isinstance(path_or_obj, Mapping):
        obj, label = path_or_obj, "checkpoint"
    else:
        path = resolve_weights(path_or_obj)
        obj, label = read_checkpoint(path), str(path_or_obj)
    found, container, state_dict, stored_meta = unpack_checkpoint(obj, label)
    if source is not None and source != found:
        if source not in SOURCES:
            raise CheckpointError(f"unknown source '{source}': expected one of {', '.join(SOURCES)}")
        raise CheckpointError(f"{label} looks like a {found} checkpoint, not {source}")
    if found in CONVERTERS:
        state_dict, structure = CONVERTERS[found](state_dict)
        meta: Dict[str, Any] = {"source": found, **SOURCE_PREPROCESSING[found].meta(), **structure, "format": found}
    else:  # already our layout: its own metadata says where it came from
        meta = {"source": "shufflenet_det", **dict.fromkeys(Preprocessing.__dataclass_fields__), **stored_meta,
                "format": container}
    return state_dict, dict(meta, label=label)


def _finish_meta(meta: Dict[str, Any], arch: Optional[str], num_classes: int) -> Dict[str, Any]:
    """Add the architecture and, for released weights, what their publisher reports."""
    meta = dict(meta, arch=arch, num_classes=num_classes)
    meta.pop("label", None)
    entry = find_pretrained(meta["source"], arch)
    if entry is not None and meta["source"] != "shufflenet_det":
        for key, value in entry.meta().items():
            meta.setdefault(key, value)
    for key in STRUCTURE_KEYS:
        meta.setdefault(key, None)
    return meta


@functools.lru_cache(maxsize=None)
def _reference_shapes(arch: str, num_classes: int) -> Shapes:
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        model = create_model(arch, num_classes=num_classes)
    return _shapes(model.state_dict())


def _shapes(state_dict: Mapping[str, torch.Tensor]) -> Shapes:
    # BatchNorm's step counter is absent from FrozenBatchNorm2d and from some sources: not a parameter.
    return {k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


def _num_classes(state_dict: Mapping[str, torch.Tensor]) -> int:
    weight = state_dict.get("fc.weight")
    return int(weight.shape[0]) if weight is not None else 1000


def _shape_problems(expected: Shapes, found: Shapes, skipped: Sequence[str] = (), limit: int = 3) -> str:
    """Empty when ``found`` fits ``expected``; else one line naming the first misshapen/missing/unexpected keys."""
    missing = [k for k in expected if k not in found and k not in skipped]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and expected[k] != found[k]]
    problems = (
        ("shape mismatch", wrong, lambda k: f"{k} {list(found[k])} vs model {list(expected[k])}"),
        ("missing", missing, lambda k: f"{k} {list(expected[k])}"),
        ("unexpected", unexpected, lambda k: f"{k} {list(found[k])}"),
    )
    return "; ".join(f"{title}: {first_items(keys, limit, describe)}" for title, keys, describe in problems if keys)
