"""Classification networks (ShuffleNet v1, MobileNet v1) with a stage interface for detection. The names imported
here are the API."""

from .layers import ChannelShuffle, ConvNormAct, channel_shuffle, convert_frozen_batchnorm, get_norm
from .mobilenet import MobileNetV1  # importing the model modules registers their builders
from .registry import (MODEL_REGISTRY, create_model, list_models, model_architecture, model_args_from_config,
                       register_model)
from .shufflenet import ShuffleNetV1, ShuffleUnit, shufflenet_v1_channels
from .speed import CONV_IMPLS, apply_conv_form
from .staged import FeatureInfo, StagedNetwork
