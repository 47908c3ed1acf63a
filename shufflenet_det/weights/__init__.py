"""ImageNet weights from every public source (megvii, pytorchcv, timm, ours), converted exactly and loaded safely:
``load_weights(model, "megvii_0.5x.pth.tar" or "pytorchcv:shufflenet_g3_w1")``, ``convert_checkpoint`` +
``save_weights`` for our own format, ``list_pretrained()`` for the known weights. The names imported here are
the API."""

from ..utils.io import CheckpointError
from .catalog import (Preprocessing, PretrainedWeights, download_weights, find_pretrained, get_pretrained,
                      list_pretrained)
from .converters import convert_megvii, convert_pytorchcv, convert_timm
from .formats import FORMAT_NAME, FORMAT_VERSION, SOURCES, read_checkpoint, save_weights, unpack_checkpoint
from .loading import build_model, convert_checkpoint, load_weights, matching_archs, resolve_weights
from .structure import STRUCTURE_KEYS, apply_structure, model_structure
