"""Deployment: exact inference rewrites (BatchNorm folding, ShuffleNet forms), export, backend runners (timed in
``benchmarks/``, e.g. ``python -m benchmarks.table8``). The names imported here are the API."""

from .export import create_ort_session, export_onnx, export_torchscript, onnx_bytes, torchscript_module
from .fuse import align_stem, fold_batchnorm, optimize_shufflenet
from .runtime import BACKENDS, BEST_REWRITE, Runner, create_runner, deploy_rewrite, ort_runner
