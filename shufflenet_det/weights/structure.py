"""Structure settings that weights depend on but a state dict cannot show, recorded in checkpoint metadata and
applied on loading: ShuffleNet's ``shuffle_layout`` ("paper", "inverse", "none") and ``concat_order``
("shortcut_first", "branch_first"), MobileNet's ``activation`` ("relu", "relu6")."""

from __future__ import annotations

from typing import Any, Dict, Mapping

from torch import nn

from ..modeling.mobilenet import MobileNetV1
from ..modeling.shufflenet import ShuffleNetV1
from ..utils.io import CheckpointError

STRUCTURE_KEYS = ("shuffle_layout", "concat_order", "activation")


def model_structure(model: nn.Module) -> Dict[str, Any]:
    """The structure settings of a model of this package, as plain metadata (save it with its weights)."""
    if isinstance(model, ShuffleNetV1):
        return {"shuffle_layout": model.shuffle_layout, "concat_order": model.concat_order, "activation": "relu"}
    if isinstance(model, MobileNetV1):
        return {"shuffle_layout": "none", "concat_order": None, "activation": model.activation}
    return {}


def apply_structure(model: nn.Module, meta: Mapping[str, Any]) -> None:
    """Set the structure recorded in ``meta`` on ``model`` (absent keys leave it as it is); ``CheckpointError``
    where the model cannot take it (e.g. weights trained without channel shuffle into a model with it)."""
    wanted = {key: meta[key] for key in STRUCTURE_KEYS if meta.get(key) is not None}
    if isinstance(model, ShuffleNetV1):
        layout = wanted.get("shuffle_layout")
        has_shuffle = model.shuffle_layout != "none"
        if layout == "none" and has_shuffle:
            raise CheckpointError("these weights were trained without channel shuffle: build the model with "
                                  "channel_shuffle=False")
        if layout in ("paper", "inverse") and not has_shuffle and model.groups > 1:
            raise CheckpointError("these weights need channel shuffle, but the model was built with "
                                  "channel_shuffle=False")
        if wanted.get("activation", "relu") != "relu":
            raise CheckpointError(f"ShuffleNet v1 uses ReLU; these weights need {wanted['activation']}")
        if layout in ("paper", "inverse") and has_shuffle:
            model.set_shuffle_layout(layout)
        if "concat_order" in wanted:
            model.set_concat_order(wanted["concat_order"])
    elif isinstance(model, MobileNetV1):
        if wanted.get("shuffle_layout", "none") != "none" or "concat_order" in wanted:
            raise CheckpointError("these weights are for a ShuffleNet (they carry shuffle settings), not a MobileNet")
        if "activation" in wanted:
            model.set_activation(wanted["activation"])
