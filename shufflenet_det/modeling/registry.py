"""The model registry: every named variant, its builder and what it is (family, width, groups)."""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from ..config.loading import ConfigError
from ..utils.registry import Registry
from .layers import NORMS

MODEL_REGISTRY = Registry("model")


def register_model(name: str, network: Callable[..., nn.Module], doc: str, family: str, **fixed: Any) -> Callable:
    """Register ``network(**fixed, **kwargs)`` as ``name`` (architecture: ``family`` and ``fixed``)."""

    def builder(**kwargs: Any) -> nn.Module:
        return network(**fixed, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = doc
    builder.architecture = dict(family=family, **fixed)
    MODEL_REGISTRY.register(builder)
    return builder


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Registered model names, optionally filtered with a shell-style pattern ("shufflenet_v1_x1_0_*")."""
    names = MODEL_REGISTRY.names()
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def model_architecture(name: str) -> Dict[str, Any]:
    """What a name stands for, e.g. {"family": "shufflenet_v1", "width_mult": 1.0, "groups": 3}."""
    return dict(MODEL_REGISTRY.get(name).architecture)


def create_model(name: str, num_classes: int = 1000, norm: str = "BN", freeze_at: int = 0, **kwargs: Any) -> nn.Module:
    """A registered network, randomly initialized (``shufflenet_det.build_model`` also loads weights);
    ``freeze_at`` is detectron2's FREEZE_AT, other keyword arguments go to the builder."""
    model = MODEL_REGISTRY.get(name)(num_classes=num_classes, norm=norm, **kwargs)
    model.arch = name
    return model.freeze(freeze_at) if freeze_at else model


def model_args_from_config(cfg: Any) -> Tuple[str, Dict[str, Any], str]:
    """(registered name, ``create_model`` keyword arguments, config node) of the network MODEL.BACKBONE and
    MODEL.SHUFFLENET / MODEL.MOBILENET describe: the one reading of these keys that every engine shares."""
    name = cfg.MODEL.BACKBONE.NAME
    if name == "build_shufflenet_v1_backbone":
        options, node = cfg.MODEL.SHUFFLENET, "MODEL.SHUFFLENET"
        arch = f"shufflenet_v1_{width_tag(options.WIDTH_MULT)}_g{options.GROUPS}"
        kwargs: Dict[str, Any] = {"channel_shuffle": options.CHANNEL_SHUFFLE}
    elif name == "build_mobilenet_v1_backbone":
        options, node = cfg.MODEL.MOBILENET, "MODEL.MOBILENET"
        arch, kwargs = f"mobilenet_v1_{width_tag(options.WIDTH_MULT)}", {}
    else:
        expected = "'build_shufflenet_v1_backbone' or 'build_mobilenet_v1_backbone'"
        raise ConfigError(f"MODEL.BACKBONE.NAME is '{name}'; expected {expected}")
    if options.NORM not in NORMS:
        raise ConfigError(f"{node}.NORM must be one of {', '.join(NORMS)}, got '{options.NORM}'")
    if arch not in MODEL_REGISTRY:
        raise ConfigError(f"{node} asks for {MODEL_REGISTRY.unknown_message(arch)}")
    return arch, dict(kwargs, norm=options.NORM, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT), node


def width_tag(width_mult: float) -> str:
    """torchvision's naming: 0.5 -> "x0_5", 2.0 -> "x2_0"."""
    text = f"{width_mult:g}"
    return "x" + (text.replace(".", "_") if "." in text else text + "_0")
