"""Classification networks (ShuffleNet v1, MobileNet v1) with a stage interface for detection."""

from . import mobilenet, shufflenet  # noqa: F401  (registers the builders)
from .layers import ChannelShuffle, ConvNormAct, channel_shuffle, convert_frozen_batchnorm, get_norm
from .mobilenet import MobileNetV1
from .registry import (MODEL_REGISTRY, create_model, list_models, model_architecture, model_args_from_config,
                       register_model)
from .shufflenet import ShuffleNetV1, ShuffleUnit, shufflenet_v1_channels
from .speed import CONV_IMPLS, apply_conv_form
from .staged import FeatureInfo, StagedNetwork

__all__ = [
    "CONV_IMPLS", "MODEL_REGISTRY", "ChannelShuffle", "ConvNormAct", "FeatureInfo", "MobileNetV1", "ShuffleNetV1",
    "ShuffleUnit", "StagedNetwork", "apply_conv_form", "channel_shuffle", "convert_frozen_batchnorm", "create_model",
    "get_norm", "list_models", "model_architecture", "model_args_from_config", "register_model",
    "shufflenet_v1_channels",
]
