"""The model registry: every named variant, its builder and what it is (family, width, groups)."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Dict, List, Optional

from torch import nn

from ..utils.registry import Registry

MODEL_REGISTRY = Registry("model")
_MODEL_ARGS: Dict[str, Dict[str, Any]] = {}


def register_model(**architecture: Any) -> Callable[[Callable], Callable]:
    """Register a builder under its function name, with the architecture arguments it fixes."""

    def decorator(builder: Callable) -> Callable:
        MODEL_REGISTRY.register()(builder)
        _MODEL_ARGS[builder.__name__] = dict(architecture)
        return builder

    return decorator


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Registered model names, optionally filtered with a shell-style pattern ("shufflenet_v1_x1_0_*")."""
    names = MODEL_REGISTRY.names()
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def model_architecture(name: str) -> Dict[str, Any]:
    """What a name stands for, e.g. {"family": "shufflenet_v1", "width_mult": 1.0, "groups": 3}."""
    MODEL_REGISTRY.get(name)
    return dict(_MODEL_ARGS[name])


def create_model(name: str, num_classes: int = 1000, norm: str = "BN", freeze_at: int = 0, **kwargs: Any) -> nn.Module:
    """A registered network, randomly initialized (``shufflenet_det.build_model`` also loads weights).

    ``norm`` is "BN", "FrozenBN" or "SyncBN"; ``freeze_at`` freezes the stem and first stages
    (detectron2's FREEZE_AT). Other keyword arguments go to the builder (ShuffleNet: ``channel_shuffle``).
    """
    model = MODEL_REGISTRY.get(name)(num_classes=num_classes, norm=norm, **kwargs)
    model.arch = name
    return model.freeze(freeze_at) if freeze_at else model
