"""Opt-in: build this package's models through ``torchvision.models.get_model(name)``.

torchvision's public API can list and build registered models (``list_models``, ``get_model``) but
offers no public way to register new ones: its ``register_model`` lives in the private module
``torchvision.models._api``. So registration is a function you call, never an import side effect, and
it fails with a clear message if a torchvision release moves that private registry.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from torch import nn

from ..modeling.registry import build_model, list_models

_OWNER_ATTRIBUTE = "_shufflenet_det_model"


def register_torchvision_models() -> List[str]:
    """Register every model of ``shufflenet_det.list_models()`` with torchvision; returns the names.

    Afterwards ``torchvision.models.get_model("shufflenet_v1_x1_0_g3", weights=..., num_classes=...)``
    builds our model; ``weights`` takes what ``shufflenet_det.weights.load_weights`` takes (a file or
    a name from ``list_pretrained()``), not a torchvision ``WeightsEnum``. Calling it again is harmless.
    """
    try:
        from torchvision.models._api import BUILTIN_MODELS, register_model
    except ImportError as error:
        raise RuntimeError(
            f"this torchvision ({error}) has no model registry at torchvision.models._api; "
            "use shufflenet_det.build_model instead"
        ) from None
    names = list_models()
    taken = [n for n in names if n in BUILTIN_MODELS and getattr(BUILTIN_MODELS[n], _OWNER_ATTRIBUTE, None) != n]
    if taken:  # checked before registering anything, so a refusal changes nothing
        raise RuntimeError(f"torchvision already has a different model registered as '{taken[0]}'")
    for name in names:
        if name not in BUILTIN_MODELS:
            register_model(name)(_torchvision_builder(name))
    return names


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    def builder(*, weights: Optional[str] = None, progress: bool = True, **kwargs: Any) -> nn.Module:
        # ``progress`` is torchvision's download-bar flag; our downloads go through pytorchcv/timm helpers.
        return build_model(name, weights=weights, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"shufflenet_det's {name} (see shufflenet_det.build_model)."
    setattr(builder, _OWNER_ATTRIBUTE, name)
    return builder
