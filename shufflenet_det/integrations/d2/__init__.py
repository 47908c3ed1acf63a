"""detectron2 plugin: ``import shufflenet_det.integrations.d2`` registers the ShuffleNet v1 / MobileNet v1 C4
backbones and ``ShuffleNetC4ROIHeads``; ``add_shufflenet_config(cfg)`` adds our keys to a detectron2 config.
Training and evaluation helpers are in ``.train``; nothing else in shufflenet_det imports this package. The names
imported here are the API."""

try:
    import detectron2  # noqa: F401
except ImportError as error:
    raise ImportError(
        "shufflenet_det.integrations.d2 needs detectron2, an optional dependency that is not installed "
        "(it is not on PyPI). Build it from source, e.g. "
        "`pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'`; "
        "see docs/detectron2.md and https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
    ) from error

from .backbone import ShuffleNetC4Backbone, build_mobilenet_v1_backbone, build_shufflenet_v1_backbone, network_from_cfg
from .checkpoint import ShuffleNetCheckpointer, anchor_layout, classifier_to_d2_state_dict, torchvision_to_d2_state_dict
from .config import add_shufflenet_config, get_shufflenet_d2_cfg, setup_d2_cfg
from .roi_heads import ShuffleNetC4ROIHeads
