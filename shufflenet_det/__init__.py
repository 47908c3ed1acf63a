"""shufflenet-det: ShuffleNet v1 and MobileNet v1 classifiers and C4 Faster R-CNN detectors."""

from .modeling import list_models
from .weights import build_model

__version__ = "0.1.0"

__all__ = ["build_model", "list_models", "__version__"]
