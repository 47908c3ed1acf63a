"""Exact conversion of other implementations' state dicts to ours, plus the structure settings the weights need
(``structure.py``): converted weights reproduce the source model's outputs.

Megvii shuffles after the depthwise conv + BN, with the inverse of the paper's permutation. Both act per channel,
so the shuffle moves in front of them with their channels permuted along. Reaching the paper's permutation too
needs the compress conv's outputs and the expand conv's inputs reordered within their groups: ``_paper_order``
finds such orders when they exist (the g=3 models); otherwise the model keeps ``shuffle_layout="inverse"`` (g=8).
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..modeling.layers import ChannelShuffle
from ..modeling.shufflenet import UNITS_PER_STAGE
from ..utils.io import CheckpointError
from ..utils.text_table import first_items
from .formats import StateDict

Structure = Dict[str, Any]
_BN_PER_CHANNEL = ("weight", "bias", "running_mean", "running_var")
_SHUFFLENET_STAGES = ["stage2", "stage3", "stage4"]


def _rename(state_dict: StateDict, rules: Sequence[Tuple[str, Callable[[re.Match], str]]], source: str) -> StateDict:
    """Map every key through the first rule whose regex matches it in full; unknown keys are an error."""
    compiled = [(re.compile(pattern), target) for pattern, target in rules]
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        for pattern, target in compiled:
            match = pattern.fullmatch(key)
            if match:
                renamed[target(match)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"unexpected keys for a {source} checkpoint: {first_items(unknown)}")
    return renamed


def _shufflenet_unit(index: int) -> str:
    """The official flat unit index (0..15) as our "stageK.i"."""
    for stage, units in zip(_SHUFFLENET_STAGES, UNITS_PER_STAGE):
        if index < units:
            return f"{stage}.{index}"
        index -= units
    raise CheckpointError(f"unit index out of range: a ShuffleNet v1 has {sum(UNITS_PER_STAGE)} units")


# ----------------------------------------------------------------------------------- megvii
_MEGVII_LAYERS = {"branch_main_1.0": "compress.conv", "branch_main_1.1": "compress.norm",
                  "branch_main_1.3": "depthwise.conv", "branch_main_1.4": "depthwise.norm",
                  "branch_main_2.0": "expand.conv", "branch_main_2.1": "expand.norm"}
_MEGVII_RULES = [
    (r"first_conv\.0\.weight", lambda m: "stem.0.conv.weight"),
    (r"first_conv\.1\.(\w+)", lambda m: f"stem.0.norm.{m[1]}"),
    (
        r"features\.(\d+)\.(" + "|".join(re.escape(k) for k in _MEGVII_LAYERS) + r")\.(\w+)",
        lambda m: f"{_shufflenet_unit(int(m[1]))}.{_MEGVII_LAYERS[m[2]]}.{m[3]}",
    ),
    (r"classifier\.0\.weight", lambda m: "fc.weight"),
]


def convert_megvii(state_dict: StateDict) -> Tuple[StateDict, Structure]:
    """Official ShuffleNetV1 -> ours; the paper's shuffle permutation where an exact reordering exists."""
    ours = _rename(state_dict, _MEGVII_RULES, "megvii")
    weight = _require(ours, "fc.weight", "megvii")
    # The official classifier has no bias; ours does, and a zero bias keeps the logits identical.
    ours["fc.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)

    units = _unit_shapes(ours)
    orders = [_paper_order(mid, groups, compress_groups) for _, mid, groups, compress_groups in units]
    layout = "paper" if all(order is not None for order in orders) else "inverse"
    for (prefix, mid, groups, _), order in zip(units, orders):
        if groups == 1:
            continue
        official = ChannelShuffle(groups, inverse=True).permutation(mid)
        if layout == "paper":
            compress_order, shuffle = order, ChannelShuffle(groups, inverse=False).permutation(mid)
        else:
            compress_order, shuffle = torch.arange(mid), official
        _reorder_unit(ours, prefix, groups, compress_order, shuffle, torch.argsort(official))
    return ours, {"shuffle_layout": layout, "concat_order": "shortcut_first", "activation": "relu"}


def _unit_shapes(ours: StateDict) -> List[Tuple[str, int, int, int]]:
    """(prefix, bottleneck channels, groups, compress groups) of every unit, read from weight shapes."""
    in_channels = _require(ours, "stem.0.conv.weight", "megvii").shape[0]
    units = []
    for stage, count in zip(_SHUFFLENET_STAGES, UNITS_PER_STAGE):
        for index in range(count):
            prefix = f"{stage}.{index}."
            compress = _require(ours, prefix + "compress.conv.weight", "megvii")
            expand = _require(ours, prefix + "expand.conv.weight", "megvii")
            mid = compress.shape[0]
            groups, compress_groups = mid // expand.shape[1], in_channels // compress.shape[1]
            units.append((prefix, mid, groups, compress_groups))
            in_channels = expand.shape[0] + (in_channels if index == 0 else 0)
    return units


def _paper_order(mid: int, groups: int, compress_groups: int) -> Optional[torch.Tensor]:
    """An order ``q`` of the compress conv's outputs (within its groups) that lets the paper's shuffle reproduce
    the official one with the expand conv's inputs reordered within its groups; None if none exists.

    Ours feeds expand input ``j`` with compress output ``q[paper[j]]``, the official expand input ``k`` with
    ``official[k]``: ``q[paper[j]]`` must lie in compress group ``group(paper[j])`` and be some ``official[k]``
    with ``k`` in ``j``'s expand group, a matching between equal (compress group, expand group) types."""
    if groups == 1:
        return torch.arange(mid)
    paper = ChannelShuffle(groups, inverse=False).permutation(mid).tolist()
    official_inverse = torch.argsort(ChannelShuffle(groups, inverse=True).permutation(mid)).tolist()
    per_group, per_compress_group = mid // groups, mid // compress_groups
    candidates: Dict[Tuple[int, int], List[int]] = defaultdict(list)
    for k in range(mid):
        candidates[(k // per_compress_group, official_inverse[k] // per_group)].append(k)
    order = torch.empty(mid, dtype=torch.long)
    for j, i in enumerate(paper):
        bucket = candidates[(i // per_compress_group, j // per_group)]
        if not bucket:
            return None
        order[i] = bucket.pop(0)
    return order


def _reorder_unit(ours: StateDict, prefix: str, groups: int, compress_order: torch.Tensor, shuffle: torch.Tensor,
                  official_inverse: torch.Tensor) -> None:
    """Permute one unit's tensors so that ``compress -> shuffle -> depthwise -> expand`` in our layout
    computes what the official ``compress -> depthwise -> official shuffle -> expand`` does."""
    depthwise_order = compress_order[shuffle]
    expand_order = official_inverse[depthwise_order]  # official expand input that our input j carries
    for layer, order in (("compress", compress_order), ("depthwise", depthwise_order)):
        for key in [f"{prefix}{layer}.conv.weight"] + [f"{prefix}{layer}.norm.{name}" for name in _BN_PER_CHANNEL]:
            ours[key] = ours[key].index_select(0, order)
    expand = ours[f"{prefix}expand.conv.weight"]
    per_group, out_per_group = expand.shape[1], expand.shape[0] // groups
    blocks = []
    for group in range(groups):
        # _paper_order keeps expand_order inside each group, so these are local input indices.
        local = expand_order[group * per_group : (group + 1) * per_group] - group * per_group
        blocks.append(expand[group * out_per_group : (group + 1) * out_per_group].index_select(1, local))
    ours[f"{prefix}expand.conv.weight"] = torch.cat(blocks)


# -------------------------------------------------------------------------------- pytorchcv
_PYTORCHCV_LAYERS = {"compress_conv1": "compress.conv", "compress_bn1": "compress.norm", "dw_conv2": "depthwise.conv",
                     "dw_bn2": "depthwise.norm", "expand_conv3": "expand.conv", "expand_bn3": "expand.norm"}
_PYTORCHCV_RULES = [
    (r"features\.init_block\.conv\.weight", lambda m: "stem.0.conv.weight"),
    (r"features\.init_block\.bn\.(\w+)", lambda m: f"stem.0.norm.{m[1]}"),
    (
        r"features\.stage(\d)\.unit(\d+)\.(" + "|".join(_PYTORCHCV_LAYERS) + r")\.(\w+)",
        lambda m: f"stage{int(m[1]) + 1}.{int(m[2]) - 1}.{_PYTORCHCV_LAYERS[m[3]]}.{m[4]}",
    ),
    (r"output\.(weight|bias)", lambda m: f"fc.{m[1]}"),
]


def convert_pytorchcv(state_dict: StateDict) -> Tuple[StateDict, Structure]:
    """pytorchcv ShuffleNet -> ours. Its units shuffle like the paper but concatenate the branch first."""
    ours = _rename(state_dict, _PYTORCHCV_RULES, "pytorchcv")
    return ours, {"shuffle_layout": "paper", "concat_order": "branch_first", "activation": "relu"}


# ------------------------------------------------------------------------------------- timm
_TIMM_LAYERS = {"conv_dw": "depthwise.conv", "bn1": "depthwise.norm", "conv_pw": "pointwise.conv",
                "bn2": "pointwise.norm"}
_TIMM_RULES = [
    (r"conv_stem\.weight", lambda m: "stem.0.conv.weight"),
    (r"bn1\.(\w+)", lambda m: f"stem.0.norm.{m[1]}"),
    (r"blocks\.0\.0\.(conv_dw|bn1|conv_pw|bn2)\.(\w+)", lambda m: f"stem.1.{_TIMM_LAYERS[m[1]]}.{m[2]}"),
    (
        r"blocks\.([1-4])\.(\d+)\.(conv_dw|bn1|conv_pw|bn2)\.(\w+)",
        lambda m: f"stage{int(m[1]) + 1}.{m[2]}.{_TIMM_LAYERS[m[3]]}.{m[4]}",
    ),
    (r"classifier\.(weight|bias)", lambda m: f"fc.{m[1]}"),
]


def convert_timm(state_dict: StateDict) -> Tuple[StateDict, Structure]:
    """timm ``mobilenetv1_*`` -> our MobileNet v1; timm's blocks use ReLU6."""
    ours = _rename(state_dict, _TIMM_RULES, "timm")
    return ours, {"shuffle_layout": "none", "concat_order": None, "activation": "relu6"}


CONVERTERS: Dict[str, Callable[[StateDict], Tuple[StateDict, Structure]]] = {
    "megvii": convert_megvii, "pytorchcv": convert_pytorchcv, "timm": convert_timm,
}


def _require(state_dict: StateDict, key: str, source: str) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointError(f"incomplete {source} checkpoint: no weights for '{key}'")
    return state_dict[key]
