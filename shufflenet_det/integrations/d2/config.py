"""Config keys of ours in a detectron2 config, and a detectron2 config that starts from our defaults."""

from __future__ import annotations

import os
from typing import Callable, Sequence, Union

import yaml
from detectron2.config import CfgNode
from detectron2.config import get_cfg as get_d2_cfg
from fvcore.common.config import CfgNode as AnyCfgNode  # ours and detectron2's both derive from it

from ...config.defaults import add_shufflenet_config
from ...config.defaults import get_cfg as get_our_cfg
from ...utils.text_table import first_line

def get_shufflenet_d2_cfg() -> CfgNode:
    """detectron2's defaults overlaid with ours, so one YAML file gives the same model in both engines.

    Our defaults differ from detectron2's where the paper's setup does (PIXEL_MEAN/STD of the
    official weights, 600px images, the ShuffleNet backbone and RoI heads, COCO 2017 datasets).
    """
    cfg = get_d2_cfg()
    add_shufflenet_config(cfg)
    cfg.merge_from_other_cfg(get_our_cfg())
    return cfg


def setup_d2_cfg(config: Union[str, os.PathLike, AnyCfgNode], opts: Sequence[str] = ()) -> CfgNode:
    """A frozen detectron2 config: our defaults, then a YAML file (with ``_BASE_``) or a given config
    (ours or detectron2's), then ``opts`` (``["SOLVER.BASE_LR", "0.01", ...]``). Bad files and keys raise a one-line ValueError.
    """
    cfg = get_shufflenet_d2_cfg()
    if isinstance(config, AnyCfgNode):
        where = "the given config"
        _merge(lambda: cfg.merge_from_other_cfg(config), where)
    else:
        where = os.fspath(config)
        if not os.path.isfile(where):
            raise ValueError(f"config file not found: {where}")
        _merge(lambda: cfg.merge_from_file(where, allow_unsafe=False), where)
    if len(opts) % 2:
        raise ValueError(f"options must be KEY VALUE pairs; '{opts[-1]}' has no value")
    _merge(lambda: cfg.merge_from_list(list(opts)), "the options")
    cfg.freeze()
    return cfg


def _merge(merge: Callable[[], None], where: str) -> None:
    """Run a yacs merge; its errors (unknown key, type mismatch, bad YAML) become one-line ValueErrors."""
    try:
        merge()
    except (KeyError, ValueError, AssertionError, yaml.YAMLError) as error:
        raise ValueError(f"{first_line(error)} (in {where})") from None
