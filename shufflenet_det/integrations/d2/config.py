"""Config keys of ours in a detectron2 config, and a detectron2 config that starts from our defaults."""

from __future__ import annotations

import os
from typing import Sequence, Union

from detectron2.config import CfgNode
from detectron2.config import get_cfg as get_d2_cfg
from fvcore.common.config import CfgNode as AnyCfgNode  # ours and detectron2's both derive from it

from ...config.defaults import add_shufflenet_config
from ...config.defaults import get_cfg as get_our_cfg
from ...config.loading import checked_merge


def get_shufflenet_d2_cfg() -> CfgNode:
    """detectron2's defaults overlaid with ours (the paper's setup): one YAML file, the same model in both engines."""
    cfg = get_d2_cfg()
    add_shufflenet_config(cfg)
    cfg.merge_from_other_cfg(get_our_cfg())
    return cfg


def setup_d2_cfg(config: Union[str, os.PathLike, AnyCfgNode], opts: Sequence[str] = ()) -> CfgNode:
    """A frozen detectron2 config: our defaults, then a YAML file (with ``_BASE_``) or a given config (ours or
    detectron2's), then ``opts`` (``["SOLVER.BASE_LR", "0.01", ...]``). Bad files and keys raise a one-line ValueError.
    """
    cfg = get_shufflenet_d2_cfg()
    if isinstance(config, AnyCfgNode):
        checked_merge(lambda: cfg.merge_from_other_cfg(config), "in the given config")
    else:
        path = os.fspath(config)
        if not os.path.isfile(path):
            raise ValueError(f"config file not found: {path}")
        checked_merge(lambda: cfg.merge_from_file(path, allow_unsafe=False), f"in {path}")
    if len(opts) % 2:
        raise ValueError(f"options must be KEY VALUE pairs; '{opts[-1]}' has no value")
    checked_merge(lambda: cfg.merge_from_list(list(opts)), "in the options")
    cfg.freeze()
    return cfg
