"""MODEL.WEIGHTS names ImageNet weights (for the backbone) or a whole trained detector, as in detectron2;
the two are told apart by their keys, not by file names."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Mapping, Optional

from torch import nn

from ..config.loading import ConfigError
from ..utils.io import safe_torch_load

logger = logging.getLogger(__name__)

# Every detector built here has parameters under these prefixes; classifiers have none.
_DETECTOR_PREFIXES = ("backbone.body.", "roi_heads.box_head.")


def read_detector_checkpoint(path: str) -> Optional[Dict[str, Any]]:
    """The checkpoint in ``path`` if it holds a whole detector (``{"model": ..., "meta": ...}``), else None."""
    if not os.path.isfile(path):
        return None
    checkpoint = safe_torch_load(path)
    state_dict = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict):
        return None
    has_all = all(any(key.startswith(prefix) for key in state_dict) for prefix in _DETECTOR_PREFIXES)
    return checkpoint if has_all else None


def warn_if_untrained(weights: str) -> None:
    """Warn when a detector built with MODEL.WEIGHTS ``weights`` would draw or score meaningless boxes."""
    if not weights:
        logger.warning("MODEL.WEIGHTS is empty: the detector has random weights, so its boxes mean nothing")
    elif read_detector_checkpoint(weights) is None:
        logger.warning(
            "MODEL.WEIGHTS %s holds no detector, only backbone weights: the RPN and box predictor are "
            "untrained, so expect meaningless boxes (an AP near 0)",
            weights,
        )


def load_detector_weights(model: nn.Module, checkpoint: Mapping[str, Any], source: str) -> None:
    """Load a whole detector strictly (a mismatch is a ConfigError naming ``source`` and the first keys), but for
    BatchNorm's step counters: one trained with BN loads into one with FrozenBN and back (same in eval mode)."""
    own = model.state_dict()
    counter = "num_batches_tracked"
    state_dict = {key: value for key, value in checkpoint["model"].items() if key in own or not key.endswith(counter)}
    differences = {
        "missing": [key for key in own if key not in state_dict and not key.endswith(counter)],
        "unexpected": [key for key in state_dict if key not in own],
        "shape (checkpoint vs model)": [
            f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
            for key in own
            if key in state_dict and state_dict[key].shape != own[key].shape
        ],
    }
    problems = [f"{kind} {', '.join(keys[:3])}" for kind, keys in differences.items() if keys]
    if problems:
        raise ConfigError(
            f"{source} is a detector checkpoint for another configuration "
            f"(backbone, width or number of classes differ): {'; '.join(problems)}"
        )
    model.load_state_dict(state_dict, strict=False)
