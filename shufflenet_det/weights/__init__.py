"""ImageNet weights from every public source, converted exactly and loaded safely.

``load_weights(model, "megvii_0.5x.pth.tar")`` or ``load_weights(model, "pytorchcv:shufflenet_g3_w1")`` detects
the checkpoint's source (megvii, pytorchcv, timm, ours) from its keys, converts it to our layout and loads it;
``convert_checkpoint`` + ``save_weights`` write our own format; ``list_pretrained()`` names the known weights.
"""

from ..utils.io import CheckpointError
from .catalog import (Preprocessing, PretrainedWeights, download_weights, find_pretrained, get_pretrained,
                      list_pretrained)
from .converters import convert_megvii, convert_pytorchcv, convert_timm
from .formats import FORMAT_NAME, FORMAT_VERSION, SOURCES, read_checkpoint, save_weights, unpack_checkpoint
from .loading import build_model, convert_checkpoint, load_weights, matching_archs, resolve_weights
from .structure import STRUCTURE_KEYS, apply_structure, model_structure

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "SOURCES", "STRUCTURE_KEYS", "CheckpointError", "Preprocessing",
    "PretrainedWeights", "apply_structure", "build_model", "convert_checkpoint", "convert_megvii", "convert_pytorchcv",
    "convert_timm", "download_weights", "find_pretrained", "get_pretrained", "list_pretrained", "load_weights",
    "matching_archs", "model_structure", "read_checkpoint", "resolve_weights", "save_weights", "unpack_checkpoint",
]
