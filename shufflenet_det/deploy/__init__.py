"""Deployment: exact inference rewrites (BatchNorm folding, ShuffleNet forms), export, backend runners.

Their timing lives outside the package, in ``benchmarks/`` (``python -m benchmarks.table8``).
"""

from .export import create_ort_session, export_onnx, export_torchscript, onnx_bytes, torchscript_module
from .fuse import align_stem, fold_batchnorm, optimize_shufflenet
from .runtime import BACKENDS, BEST_REWRITE, Runner, create_runner, deploy_rewrite, ort_runner

__all__ = [
    "BACKENDS",
    "BEST_REWRITE",
    "Runner",
    "align_stem",
    "create_ort_session",
    "create_runner",
    "deploy_rewrite",
    "export_onnx",
    "export_torchscript",
    "fold_batchnorm",
    "onnx_bytes",
    "optimize_shufflenet",
    "ort_runner",
    "torchscript_module",
]
