"""Parameter and multiply-add counts, and the published figures they are checked against. Multiply-adds are
fvcore's traced count of convolutions and linear layers only (biases free): the papers' "FLOPs"."""

from __future__ import annotations

import functools
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ..modeling import create_model
from ..utils import text_table

with warnings.catch_warnings():  # importing fvcore.nn scripts a function with torch.jit.script, which torch flags
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import addmm_flop_jit, conv_flop_jit, linear_flop_jit

# The counted ops; nn.Linear traces to aten::linear (aten::addmm in older torch).
MULT_ADD_HANDLES = {"aten::_convolution": conv_flop_jit, "aten::linear": linear_flop_jit, "aten::addmm": addmm_flop_jit}
REFERENCE_INPUT_SIZE = (224, 224)  # the input size of the published figures

PAPER = "Zhang et al., ShuffleNet, CVPR 2018 (arXiv 1707.01083v2)"
MOBILENET_PAPER = "Howard et al., MobileNets, arXiv 1704.04861"
OFFICIAL = "megvii-model/ShuffleNet-Series, ShuffleNetV1"


@dataclass(frozen=True)
class ReferenceFigures:
    """One source's figures for one model (``None``: not given); ``classifier_bias``: whether ``params`` counts it."""

    source: str
    citation: str
    mult_adds: Optional[int] = None
    params: Optional[int] = None
    top1_error: Optional[float] = None
    classifier_bias: bool = True


# The paper's MFLOPs (millions of multiply-adds at 224x224) and top-1 error (%), as the paper states them, with
# where. Table 2's 0.5x and 0.25x rows state one nominal figure for all group counts; 1x g8: Table 1's 137
# (Table 5: 140).
_PAPER_FIGURES = (
    # name, MFLOPs, top-1 error, where
    ("shufflenet_v1_x1_0_g1", 143, 33.6, "Table 1; Table 2"),
    ("shufflenet_v1_x1_0_g2", 140, 32.7, "Table 1; Table 2"),
    ("shufflenet_v1_x1_0_g3", 137, 32.6, "Table 1; Table 2"),
    ("shufflenet_v1_x1_0_g4", 133, 32.8, "Table 1; Table 2"),
    ("shufflenet_v1_x1_0_g8", 137, 32.4, "Table 1; Tables 2, 5"),
    ("shufflenet_v1_x0_5_g1", 38, 45.1, "Table 2"),
    ("shufflenet_v1_x0_5_g2", 38, 44.4, "Table 2"),
    ("shufflenet_v1_x0_5_g3", 38, 43.2, "Table 2"),
    ("shufflenet_v1_x0_5_g4", 38, 41.6, "Tables 2, 5"),
    ("shufflenet_v1_x0_5_g8", 38, 42.3, "Table 2"),
    ("shufflenet_v1_x0_25_g1", 13, 57.1, "Table 2"),
    ("shufflenet_v1_x0_25_g2", 13, 56.8, "Table 2"),
    ("shufflenet_v1_x0_25_g3", 13, 55.0, "Table 2"),
    ("shufflenet_v1_x0_25_g4", 13, 54.2, "Table 2"),
    ("shufflenet_v1_x0_25_g8", 13, 52.7, "Table 2"),
    ("shufflenet_v1_x1_5_g3", 292, 28.5, "Table 5"),
    ("shufflenet_v1_x2_0_g3", 524, 26.3, "Table 5"),
)
# MobileNet v1: MFLOPs and top-1 error from the ShuffleNet paper's Table 5; parameters (rounded to 0.1M)
# from the MobileNet paper's Table 6.
_MOBILENET_FIGURES = (
    # name, MFLOPs, millions of parameters, top-1 error
    ("mobilenet_v1_x1_0", 569, 4.2, 29.4),
    ("mobilenet_v1_x0_75", 325, 2.6, 31.6),
    ("mobilenet_v1_x0_5", 149, 1.3, 36.3),
    ("mobilenet_v1_x0_25", 41, 0.5, 49.4),
)
# The official release (docs/reference.md section 2): exact parameter counts (its classifier has no bias),
# conv + linear multiply-adds of its model code at 224x224, top-1 errors of its README.
_OFFICIAL_FIGURES = (
    # name, parameters, multiply-adds, top-1 error
    ("shufflenet_v1_x0_5_g3", 717_324, 37.6e6, 42.7),
    ("shufflenet_v1_x1_0_g3", 1_864_728, 137.5e6, 32.2),
    ("shufflenet_v1_x1_5_g3", 3_441_168, 292.4e6, 28.4),
    ("shufflenet_v1_x2_0_g3", 5_449_776, 524.0e6, 25.9),
    ("shufflenet_v1_x0_5_g8", 1_010_448, 40.5e6, 41.2),
    ("shufflenet_v1_x1_0_g8", 2_433_768, 138.4e6, 32.0),
    ("shufflenet_v1_x1_5_g8", 4_268_952, 290.2e6, 29.0),
    ("shufflenet_v1_x2_0_g8", 6_521_232, 521.9e6, 27.1),
)


def _collect_references() -> Dict[str, Dict[str, ReferenceFigures]]:
    references: Dict[str, Dict[str, ReferenceFigures]] = {}
    for name, mflops, error, where in _PAPER_FIGURES:
        references.setdefault(name, {})["paper"] = ReferenceFigures(
            "paper", f"{PAPER}, {where}", mult_adds=int(mflops * 1e6), top1_error=error
        )
    for name, mflops, mparams, error in _MOBILENET_FIGURES:
        references.setdefault(name, {})["paper"] = ReferenceFigures(
            "paper", f"{PAPER}, Table 5 (multiply-adds, error); {MOBILENET_PAPER}, Table 6 (parameters)",
            mult_adds=int(mflops * 1e6), params=int(mparams * 1e6), top1_error=error,
        )  # fmt: skip
    for name, params, mult_adds, error in _OFFICIAL_FIGURES:
        references.setdefault(name, {})["official"] = ReferenceFigures(
            "official", f"{OFFICIAL}: parameters and multiply-adds of its model code, top-1 error of its README",
            mult_adds=int(mult_adds), params=params, top1_error=error, classifier_bias=False,
        )  # fmt: skip
    return references


REFERENCES = _collect_references()  # model name -> source ("paper", "official") -> figures


@dataclass
class Complexity:
    """Size and cost of a model at one input size. ``params_without_classifier_bias`` compares with the
    official release (its classifier has no bias); the ``*_by_stage`` dicts follow the model's children."""

    input_size: Tuple[int, int]
    params: int
    params_without_classifier_bias: int
    mult_adds: int
    mult_adds_by_stage: Dict[str, int] = field(default_factory=dict)
    params_by_stage: Dict[str, int] = field(default_factory=dict)
    uncounted_ops: Dict[str, int] = field(default_factory=dict)  # traced ops seen but not counted


def count_parameters(model: nn.Module, exclude_classifier_bias: bool = False) -> int:
    """Number of parameters; optionally without the classifier bias (``model.fc.bias``)."""
    total = sum(p.numel() for p in model.parameters())
    bias = getattr(getattr(model, "fc", None), "bias", None)
    return total - bias.numel() if exclude_classifier_bias and bias is not None else total


def complexity(model: nn.Module, input_size: Sequence[int] = REFERENCE_INPUT_SIZE, in_channels: int = 3) -> Complexity:
    """Parameters and conv + linear multiply-adds of one batch-1 forward at ``input_size`` (H, W), by stage."""
    size = tuple(input_size)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise ValueError(f"input size must be two positive integers (height, width), got {input_size!r}")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    analysis = FlopCountAnalysis(model, torch.zeros(1, in_channels, *size, device=device, dtype=dtype))
    analysis.clear_op_handles().set_op_handle(**MULT_ADD_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    # Eval mode keeps the BN statistics as they were; one thread, since several on a busy machine can be 10x slower.
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            total, by_module, uncounted = int(analysis.total()), analysis.by_module(), analysis.unsupported_ops()
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    by_stage = {name: int(by_module.get(name, 0)) for name, _ in model.named_children()}
    if total != sum(by_stage.values()):  # ops called from the model's own forward
        by_stage["(other)"] = total - sum(by_stage.values())
    return Complexity(
        input_size=size,
        params=count_parameters(model),
        params_without_classifier_bias=count_parameters(model, exclude_classifier_bias=True),
        mult_adds=total,
        mult_adds_by_stage=by_stage,
        params_by_stage={name: count_parameters(child) for name, child in model.named_children()},
        uncounted_ops=dict(uncounted),
    )


def count_mult_adds(model: nn.Module, input_size: Sequence[int] = REFERENCE_INPUT_SIZE, in_channels: int = 3) -> int:
    """Conv + linear multiply-adds of one forward pass of a batch-1 input of ``input_size`` (H, W)."""
    return complexity(model, input_size, in_channels).mult_adds


def count_mult_adds_while(model: nn.Module, run: Callable[[], object]) -> Dict[str, int]:
    """Conv + linear multiply-adds that ``run()`` makes ``model``'s layers do, by layer name: forward hooks,
    so it also covers models a tracer cannot follow (detectors whose RoI counts depend on the data)."""
    counts: Dict[str, int] = {}

    def record(layer: nn.Module, _inputs: object, output: torch.Tensor, name: str) -> None:
        per_output = layer.in_features if isinstance(layer, nn.Linear) else layer.weight[0].numel()  # in/groups*kh*kw
        counts[name] = counts.get(name, 0) + output.numel() * per_output

    handles = [layer.register_forward_hook(functools.partial(record, name=name))
               for name, layer in model.named_modules() if isinstance(layer, (nn.Conv2d, nn.Linear))]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def _relative(value: float, reference: Optional[float]) -> Optional[float]:
    return None if not reference else (value - reference) / reference


def compare_with_references(result: Complexity, references: Mapping[str, ReferenceFigures]) -> Dict[str, Dict]:
    """Each source's figures beside our relative difference from them. Multiply-adds are compared at
    224x224 only (the published size); parameters with our count with or without the classifier bias,
    as the source counts them."""
    at_reference_size = tuple(result.input_size) == REFERENCE_INPUT_SIZE
    comparison = {}
    for source, figures in references.items():
        params = result.params if figures.classifier_bias else result.params_without_classifier_bias
        mult_adds = figures.mult_adds if at_reference_size else None
        comparison[source] = {
            "citation": figures.citation,
            "params": figures.params,
            "params_diff": _relative(params, figures.params),
            "params_counts_classifier_bias": figures.classifier_bias,
            "mult_adds": mult_adds,
            "mult_adds_diff": _relative(result.mult_adds, mult_adds),
            "top1_error": figures.top1_error,
        }
    return comparison


def analyze_models(names: Iterable[str], input_size: Sequence[int] = REFERENCE_INPUT_SIZE) -> List[Dict]:
    """One JSON-ready dict per registered model: ``arch``, the fields of ``Complexity`` and ``references``
    (``compare_with_references``)."""
    rows = []
    for name in names:
        result = complexity(create_model(name).eval(), input_size)
        references = compare_with_references(result, REFERENCES.get(name, {}))
        rows.append({"arch": name, **asdict(result), "input_size": list(result.input_size), "references": references})
    return rows


def _millions(value: Optional[float], digits: int = 1) -> str:
    return "" if value is None else f"{value / 1e6:.{digits}f}"


def _percent(value: Optional[float]) -> str:
    return "" if value is None else "exact" if value == 0 else f"{100 * value:+.2f}%"


def format_table(rows: Sequence[Mapping]) -> str:
    """The rows of ``analyze_models`` as a table (multiply-adds and params in millions)."""

    def ref(source: str, key: str, show: Callable[[Optional[float]], str]) -> Callable[[Mapping], str]:
        return lambda row: show(row["references"].get(source, {}).get(key))

    columns = [
        ("model", lambda r: str(r["arch"])),
        ("params", lambda r: _millions(r["params"], 3)),
        ("params-nb", lambda r: _millions(r["params_without_classifier_bias"], 3)),
        ("MAdds", lambda r: _millions(r["mult_adds"])),
        ("paper MAdds", ref("paper", "mult_adds", lambda v: _millions(v, 0))),
        ("diff", ref("paper", "mult_adds_diff", _percent)),
        ("paper params", ref("paper", "params", _millions)),
        ("diff", ref("paper", "params_diff", _percent)),
        ("off. params", ref("official", "params", lambda v: _millions(v, 3))),
        ("diff", ref("official", "params_diff", _percent)),
        ("off. MAdds", ref("official", "mult_adds", _millions)),
        ("diff", ref("official", "mult_adds_diff", _percent)),
        ("paper err", ref("paper", "top1_error", lambda v: "" if v is None else f"{v:.1f}")),
        ("off. err", ref("official", "top1_error", lambda v: "" if v is None else f"{v:.1f}")),
    ]
    return text_table.format_table([header for header, _ in columns], [[cell(r) for _, cell in columns] for r in rows])


def format_breakdown(row: Mapping) -> str:
    """One model's per-stage parameters and multiply-adds, then its published figures."""
    height, width = row["input_size"]
    total, stages = row["mult_adds"], row["mult_adds_by_stage"]
    lines = [
        f"{row['arch']} at {height}x{width}: {row['params']:,} parameters "
        f"({row['params_without_classifier_bias']:,} without the classifier bias), "
        f"{total:,} multiply-adds ({_millions(total)}M)"
    ]
    stage_rows = [[name, row["params_by_stage"].get(name), count, 100 * count / total if total else None]
                  for name, count in stages.items()]
    lines.append(text_table.format_table(["stage", "params", "MAdds", "share %"], stage_rows, digits=1))
    if row["references"] and (height, width) != REFERENCE_INPUT_SIZE:
        lines.append(f"  (published multiply-adds are for 224x224, so they are not compared at {height}x{width})")
    for source, figures in row["references"].items():
        parts = []
        if figures["mult_adds"] is not None:
            parts.append(f"{_millions(figures['mult_adds'])}M multiply-adds ({_percent(figures['mult_adds_diff'])})")
        if figures["params"] is not None:
            which = "" if figures["params_counts_classifier_bias"] else ", no classifier bias"
            parts.append(f"{figures['params']:,} parameters{which} ({_percent(figures['params_diff'])})")
        if figures["top1_error"] is not None:
            parts.append(f"top-1 error {figures['top1_error']}%")
        lines.append(f"  {source}: {'; '.join(parts)}  [{figures['citation']}]")
    return "\n".join(lines)
