"""Checkpoint files: reading them safely (``safe_torch_load``, or safetensors), telling which source wrote them
from one signature key, writing our own format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import torch

from ..utils.io import CheckpointError, atomic_torch_save, safe_torch_load
from ..utils.text_table import first_items, first_line

FORMAT_NAME = "shufflenet_det.weights"
FORMAT_VERSION = 1

# One key that only a given source's state dicts have (after any "module." prefix is removed).
_SIGNATURE_KEYS = {
    "megvii": "first_conv.0.weight",
    "pytorchcv": "features.init_block.conv.weight",
    "timm": "conv_stem.weight",
    "shufflenet_det": "stem.0.conv.weight",
}
SOURCES = tuple(_SIGNATURE_KEYS)

StateDict = Dict[str, torch.Tensor]


def read_checkpoint(path: Union[str, os.PathLike]) -> Any:
    """Load a checkpoint file without running code from it; damaged files raise ``CheckpointError``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return safe_torch_load(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"reading {path} needs the safetensors package: pip install safetensors") from None
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path} is truncated or not a safetensors file: {first_line(error)}") from None


def unpack_checkpoint(obj: Any, label: str = "checkpoint") -> Tuple[str, str, StateDict, Dict[str, Any]]:
    """``(source, container, state_dict, meta)`` of a loaded checkpoint: the source detected from the keys, the
    container FORMAT_NAME (ours), "training" (``{"model": ..., "meta": ...}``), "wrapped" (``{"state_dict": ...}``)
    or "bare", the state dict in the source's key layout (``module.`` prefix removed), the metadata stored beside it."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{label} holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    meta: Dict[str, Any] = {}
    if obj.get("format") == FORMAT_NAME:
        version = obj.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(
                f"{label} is {FORMAT_NAME} version {version}; this shufflenet_det reads up to version "
                f"{FORMAT_VERSION} (upgrade the package)"
            )
        container, state_dict, meta = FORMAT_NAME, obj.get("state_dict"), dict(obj.get("meta") or {})
    elif isinstance(obj.get("model"), Mapping):
        container, state_dict, meta = "training", obj["model"], dict(obj.get("meta") or {})
    elif isinstance(obj.get("state_dict"), Mapping):
        container, state_dict = "wrapped", obj["state_dict"]
    else:
        container, state_dict = "bare", obj
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError(f"{label} has no (or an empty) state dict")
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{label} is not a model checkpoint: entries {first_items(not_tensors)} are not tensors "
            f"(top-level keys: {first_items(list(obj))})"
        )
    state_dict = dict(state_dict)
    if all(key.startswith("module.") for key in state_dict):  # saved from DataParallel
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    for source, key in _SIGNATURE_KEYS.items():
        if key in state_dict:
            return source, container, state_dict, meta
    raise CheckpointError(
        f"{label} is not a checkpoint of a known classifier (megvii ShuffleNetV1, pytorchcv ShuffleNet, "
        f"timm mobilenetv1, shufflenet_det): first keys {first_items(list(state_dict))}"
    )


def save_weights(path: Union[str, os.PathLike], state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                 overwrite: bool = False) -> Path:
    """Write ``{"format", "version", "state_dict", "meta"}`` atomically (replacing a file only if asked); ``meta``
    must hold plain types only, so the file loads with ``torch.load(weights_only=True)``."""
    _check_plain(meta, "meta")
    tensors = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict['{key}'] is a {type(value).__name__}, not a tensor")
        tensors[key] = value.detach().to("cpu").contiguous()
    payload = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "state_dict": tensors, "meta": dict(meta)}
    return atomic_torch_save(payload, path, overwrite=overwrite)


def _check_plain(value: Any, where: str) -> None:
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-string key {key!r}")
            _check_plain(item, f"{where}['{key}']")
    elif not (value is None or isinstance(value, (str, bool, int, float))):
        raise TypeError(f"{where} is a {type(value).__name__}; checkpoint metadata must be plain types")

