"""Export any module to ONNX or TorchScript (written atomically, never replacing a file unless ``overwrite=True``),
and open ONNX models in ONNX Runtime tuned for latency."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..utils.io import PathLike, atomic_write, check_output_file

MIN_OPSET = 17
ORT_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}  # ONNX Runtime's graph optimization levels by name
# One tensor or a tuple of positional arguments (tensors, or e.g. a list of images for a detector).
Inputs = Union[torch.Tensor, Tuple[object, ...]]


def _channel_shuffle_symbolic(g, x, groups):
    """ONNX has no channel shuffle: (N, C, H, W) -> (N, groups, C / groups, H, W), swap axes 1 and 2, flatten back,
    with H and W read at run time (``groups`` is a value too: the inverse shuffle's is computed from C)."""
    def constant(values):
        return g.op("Constant", value_t=torch.tensor(values))

    height_width = g.op("Slice", g.op("Shape", x), constant([2]), constant([4]))
    groups = g.op("Reshape", g.op("Cast", groups, to_i=7), constant([1]))  # int64, one element
    split = g.op("Concat", constant([0]), groups, constant([-1]), height_width, axis_i=0)
    merged = g.op("Concat", constant([0, -1]), height_width, axis_i=0)
    return g.op("Reshape", g.op("Transpose", g.op("Reshape", x, split), perm_i=[0, 2, 1, 3, 4]), merged)


def _as_tuple(example_inputs: Inputs) -> Tuple[object, ...]:
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def onnx_bytes(
    model: nn.Module,
    example_inputs: Inputs,
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
    dynamic: bool = True,
    dynamic_axes: Optional[Mapping[str, Mapping[int, str]]] = None,
    opset: int = MIN_OPSET,
) -> bytes:
    """The ONNX serialization of ``model`` (in eval mode) traced with ``example_inputs``. ``dynamic`` frees batch,
    height and width of every 4-D input (static graphs let ONNX Runtime plan memory and fuse more);
    ``dynamic_axes`` ({name: {axis: symbol}}) adds or overrides axes."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET}, got {opset}")
    inputs = _as_tuple(example_inputs)
    if input_names is not None and len(input_names) != len(inputs):
        raise ValueError(f"{len(input_names)} input names for {len(inputs)} example inputs")
    names = list(input_names or (["input"] if len(inputs) == 1 else [f"input{i}" for i in range(len(inputs))]))
    axes: Dict[str, Dict[int, str]] = {}
    if dynamic:
        for name, tensor in zip(names, inputs):
            if isinstance(tensor, torch.Tensor) and tensor.dim() == 4:
                axes[name] = {0: "batch", 2: "height", 3: "width"}
    for name, mapping in (dynamic_axes or {}).items():
        axes.setdefault(name, {}).update(mapping)
    buffer = io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript-based exporter on purpose: the dynamo exporter needs onnxscript.
            warnings.simplefilter("ignore")
            torch.onnx.register_custom_op_symbolic("aten::channel_shuffle", _channel_shuffle_symbolic, MIN_OPSET)
            torch.onnx.export(model, inputs, buffer, dynamo=False, opset_version=opset, input_names=names,
                              output_names=list(output_names) if output_names else None,
                              dynamic_axes=axes or None, do_constant_folding=True)
    finally:
        model.train(was_training)
    return buffer.getvalue()


def export_onnx(
    model: nn.Module, example_inputs: Inputs, path: PathLike, overwrite: bool = False, check: bool = True, **kwargs
) -> Path:
    """Write ``model`` as a checked ONNX file (keyword arguments: ``onnx_bytes``); returns the path."""
    path = check_output_file(path, overwrite)
    data = onnx_bytes(model, example_inputs, **kwargs)
    if check:
        import onnx

        onnx.checker.check_model(onnx.load_from_string(data))
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), overwrite=overwrite)


def torchscript_module(model: nn.Module, example_inputs: Inputs) -> torch.jit.ScriptModule:
    """``model`` traced to TorchScript (deprecated in torch, still what C++ / mobile runtimes load; its
    warnings are silenced) and frozen for inference."""
    model = model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.jit.freeze(torch.jit.trace(model, _as_tuple(example_inputs), check_trace=False))


def export_torchscript(model: nn.Module, example_inputs: Inputs, path: PathLike, overwrite: bool = False) -> Path:
    """Write ``model`` as a TorchScript archive (``torchscript_module``; load with ``torch.jit.load``)."""
    path = check_output_file(path, overwrite)
    scripted = torchscript_module(model, example_inputs)

    def save(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            torch.jit.save(scripted, tmp)

    return atomic_write(path, save, overwrite=overwrite)


def create_ort_session(
    model: Union[PathLike, bytes],
    threads: int = 1,
    optimization: str = "all",
    profile_prefix: Optional[str] = None,
    spinning: bool = True,
):
    """An ONNX Runtime CPU session for an ONNX file or serialized model, one request at a time. ``optimization``:
    graph level ("all" adds the x86 NCHWc layouts and conv+add+activation fusions); ``profile_prefix`` turns on the
    per-node profiler; ``spinning=False`` lets idle workers sleep (steadier for many calls on a busy machine)."""
    import onnxruntime as ort

    if optimization not in ORT_LEVELS:
        raise ValueError(f"optimization must be one of {sorted(ORT_LEVELS)}, got '{optimization}'")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_LEVELS[optimization])
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
