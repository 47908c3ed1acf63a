"""Opt-in: our models through ``torchvision.models.get_model(name)`` (registered by an explicit call, since
torchvision's registry is private); ``python -m shufflenet_det.integrations.torchvision_models SCRIPT [ARGS...]``
registers, then runs a script such as torchvision's ``references/detection/train.py``."""

from __future__ import annotations

import functools
import runpy
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from torch import nn

from ..detection.faster_rcnn_c4 import DETECTION_MODELS
from ..modeling.registry import list_models
from ..weights import build_model


def register_torchvision_models() -> List[str]:
    """Register ``list_models()`` and the C4 detectors with torchvision (again: no change); returns the names.
    Classifiers' ``weights`` take what ``load_weights`` takes, not a ``WeightsEnum``."""
    try:
        from torchvision.models._api import BUILTIN_MODELS, register_model
    except ImportError as error:
        raise RuntimeError(f"this torchvision ({error}) has no model registry at torchvision.models._api; "
                           "use shufflenet_det.build_model instead") from None
    builders: Dict[str, Callable[..., nn.Module]] = {name: _classifier_builder(name) for name in list_models()}
    builders.update(DETECTION_MODELS)
    taken = [name for name, builder in builders.items() if BUILTIN_MODELS.get(name, builder) is not builder]
    if taken:  # checked before registering anything, so a refusal changes nothing
        raise RuntimeError(f"torchvision already has a different model registered as '{taken[0]}'")
    for name, builder in builders.items():
        if name not in BUILTIN_MODELS:
            register_model(name)(builder)
    return list(builders)


@functools.lru_cache(maxsize=None)  # one builder per name: registering again finds the same object
def _classifier_builder(name: str) -> Callable[..., nn.Module]:
    def builder(*, weights: Optional[str] = None, progress: bool = True, **kwargs: Any) -> nn.Module:
        # ``progress`` is torchvision's download-bar flag; our downloads go through pytorchcv/timm helpers.
        return build_model(name, weights=weights, **kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"shufflenet_det's {name} (see shufflenet_det.build_model)."
    return builder


def run_script(script: str, args: Sequence[str]) -> None:
    """Register our models, then run ``script`` with ``args`` as ``python script args`` would."""
    path = Path(script)
    if not path.is_file():
        raise SystemExit(f"error: script not found: {script}")
    register_torchvision_models()
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.resolve().parent))  # as for `python script`: it imports the modules beside it
    runpy.run_path(str(path), run_name="__main__")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m shufflenet_det.integrations.torchvision_models SCRIPT [ARGS...]")
    from shufflenet_det.integrations import torchvision_models  # not __main__'s copy: the script may register too
    torchvision_models.run_script(sys.argv[1], sys.argv[2:])
