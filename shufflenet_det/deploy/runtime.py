"""Run a model in one of several CPU backends behind one interface, for benchmarks and checks: every backend but
"eager" runs a deploy copy (``deploy_rewrite``) in its fastest measured form; the given model is never modified."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

from .export import create_ort_session, onnx_bytes, torchscript_module
from .fuse import optimize_shufflenet

BACKENDS = ("eager", "eager_optimized", "torchscript", "compile", "onnxruntime")

# The fastest exact rewrite per backend (python -m benchmarks.table8 --variants). Dense block-diagonal
# 1x1 convs and folding the shuffle into them lose everywhere (3x the multiply-adds). In PyTorch batched
# matmuls beat grouped conv kernels for the small models and tie for 2x. In ONNX Runtime grouped convs win;
# the shuffle as one Gather avoids ONNX's shape arithmetic, and zero-channel padding to its 16-channel
# blocks (align) lets whole units, or at least their depthwise convs, run in blocked kernels.
BEST_REWRITE: Dict[str, Dict[str, Any]] = {
    "eager_optimized": {"pointwise": "matmul", "shuffle": "reshape"},
    "torchscript": {"pointwise": "matmul", "shuffle": "reshape"},
    "compile": {"pointwise": "grouped", "shuffle": "reshape"},
    "onnxruntime": {"pointwise": "grouped", "shuffle": "gather", "align": 16},
}
CHANNELS_LAST = ("eager_optimized", "torchscript")  # faster oneDNN convolutions


@dataclass
class Runner:
    """``run(prepare(x))`` is the forward pass (``prepare`` converts the input, untimed); ``runner(x)`` does
    both and returns a torch tensor."""

    backend: str
    prepare: Callable[[torch.Tensor], Any]
    run: Callable[[Any], Any]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        output = self.run(self.prepare(x))
        if isinstance(output, (list, tuple)):
            output = output[0]
        return output if isinstance(output, torch.Tensor) else torch.from_numpy(output)


def deploy_rewrite(model: nn.Module, backend: str, rewrite: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A copy of ``model`` with BatchNorm folded and ShuffleNet in ``backend``'s fastest form, or in ``rewrite``
    (``optimize_shufflenet`` keyword arguments)."""
    if backend not in BEST_REWRITE:
        raise ValueError(f"no deploy rewrite for backend '{backend}'; choose from {sorted(BEST_REWRITE)}")
    return optimize_shufflenet(model, **(BEST_REWRITE[backend] if rewrite is None else rewrite))


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def create_runner(
    model: nn.Module,
    backend: str,
    example_input: torch.Tensor,
    threads: int = 1,
    static_shape: bool = True,
    rewrite: Optional[Dict[str, Any]] = None,
) -> Runner:
    """Prepare ``model`` for ``backend`` ("eager": as given, in eval mode). ``example_input`` fixes the size for
    tracing, compiling and ONNX export (kept in the ONNX graph with ``static_shape``: faster); ``threads``: torch's
    (process-wide) or the ONNX Runtime session's; ``rewrite`` overrides the backend's form (``deploy_rewrite``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choose from {', '.join(BACKENDS)}")
    torch.set_num_threads(threads)
    if backend == "eager":
        return Runner(backend, lambda x: x.contiguous(), torch.inference_mode()(model.eval()))
    deployed = deploy_rewrite(model, backend, rewrite)
    if backend in CHANNELS_LAST:
        deployed = deployed.to(memory_format=torch.channels_last)
        example_input = _channels_last(example_input)
    if backend == "eager_optimized":
        return Runner(backend, _channels_last, torch.inference_mode()(deployed))
    if backend == "torchscript":
        return Runner(backend, _channels_last, torch.inference_mode()(torchscript_module(deployed, example_input)))
    if backend == "compile":
        compiled = torch.compile(deployed, mode="max-autotune-no-cudagraphs", dynamic=not static_shape)
        return Runner(backend, lambda x: x.contiguous(), torch.inference_mode()(compiled))
    return ort_runner(onnx_bytes(deployed, example_input, dynamic=not static_shape), threads=threads)


def ort_runner(onnx_model: Union[bytes, str], threads: int = 1, optimization: str = "all") -> Runner:
    """A Runner for a single-input ONNX model (file path or serialized bytes) in ONNX Runtime."""
    session = create_ort_session(onnx_model, threads=threads, optimization=optimization)
    input_name = session.get_inputs()[0].name
    return Runner("onnxruntime", lambda x: {input_name: x.detach().contiguous().numpy()},
                  lambda feed: session.run(None, feed))
