#!/usr/bin/env python
"""Export a classifier to ONNX (dynamic height / width) or TorchScript for deployment.

python tools/export_model.py --arch shufflenet_v1_x1_0_g3 --format onnx --output shufflenet_1x.onnx
python tools/export_model.py --arch mobilenet_v1_x1_0 --weights mobilenet.pth --format torchscript \
    --output mobilenet.pt --input-size 320 320 --overwrite

The exported model is a deploy copy: BatchNorm folded into the convolutions and, for ONNX, the
channel shuffle as one Gather and bottlenecks padded with zero channels to --align (16: ONNX
Runtime's x86 blocks; 0 for other runtimes); see docs/speed.md. --no-optimize exports the model as is.
Inputs are float tensors [N, 3, H, W] preprocessed as for the weights (see the weights' metadata).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from shufflenet_det.deploy.export import export_onnx, export_torchscript
from shufflenet_det.deploy.runtime import deploy_rewrite
from shufflenet_det.modeling import build_model, list_models


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help="registered model name (see shufflenet-det-models)")
    parser.add_argument("--weights", help="checkpoint to load (any format shufflenet_det.weights reads)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    parser.add_argument("--output", required=True, help="file to write")
    parser.add_argument("--input-size", nargs=2, type=int, default=(224, 224), metavar=("H", "W"),
                        help="example input size for tracing (ONNX height / width stay dynamic)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--align", type=int, default=16, help="ONNX: zero-channel padding multiple (0: none)")
    parser.add_argument("--no-optimize", action="store_true", help="export without BatchNorm folding / rewrites")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)

    if args.arch not in list_models():
        print(f"error: unknown --arch '{args.arch}'; run shufflenet-det-models to list the models", file=sys.stderr)
        return 2
    if os.path.exists(args.output) and not args.overwrite:
        print(f"error: {args.output} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if args.weights and not os.path.isfile(args.weights):
        print(f"error: --weights {args.weights} is not a file", file=sys.stderr)
        return 2
    height, width = args.input_size
    if height < 32 or width < 32:
        print(f"error: --input-size must be at least 32 32, got {height} {width}", file=sys.stderr)
        return 2
    if args.opset < 17:
        print(f"error: --opset must be at least 17, got {args.opset}", file=sys.stderr)
        return 2
    if args.align < 0:
        print(f"error: --align must be >= 0, got {args.align}", file=sys.stderr)
        return 2

    try:
        model = build_model(args.arch, weights=args.weights).eval()
    except Exception as error:  # unreadable or mismatched checkpoint: report, never a traceback
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: cannot load --weights {args.weights}: {message}", file=sys.stderr)
        return 2
    if not args.no_optimize:
        if args.format == "onnx":
            model = deploy_rewrite(model, "onnxruntime", {"pointwise": "grouped", "shuffle": "gather", "align": args.align})
        else:
            model = deploy_rewrite(model, "torchscript")
    example = torch.rand(1, 3, height, width)
    if args.format == "onnx":
        path = export_onnx(model, example, args.output, overwrite=args.overwrite, opset=args.opset,
                           output_names=["logits"])
    else:
        path = export_torchscript(model, example, args.output, overwrite=args.overwrite)
    print(f"wrote {path} ({args.format}, {args.arch}, example input 1x3x{height}x{width})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
