#!/usr/bin/env python
"""Export a classifier or a whole C4 Faster R-CNN detector to ONNX or TorchScript for deployment.

Classifiers (--arch): the network, input float [N, 3, H, W] preprocessed as for the weights.
python tools/export_model.py --arch shufflenet_v1_x1_0_g3 --format onnx --output shufflenet_1x.onnx
python tools/export_model.py --arch mobilenet_v1_x1_0 --weights mobilenet.pth --format torchscript \
    --output mobilenet.pt --input-size 320 320 --overwrite

Detectors (--config, plus KEY VALUE overrides): preprocessing (resize + normalize), RPN, RoI head and
postprocessing in one file. Input "image": float [3, H, W], 0-255, the config's INPUT.FORMAT channel
order, any H and W; outputs "boxes" [N, 4] (XYXY, input image pixels), "labels" [N] (1..NUM_CLASSES),
"scores" [N]. TorchScript is a trace (torch.jit.script cannot compile the detector).
python tools/export_model.py --config shufflenet_1x_frcnn --weights model_final.pth --format onnx \
    --output detector.onnx
python tools/export_model.py --config quickstart --format torchscript --output quickstart.pt \
    MODEL.WEIGHTS output/quickstart/model_final.pth

The exported model is a deploy copy: BatchNorm folded into the convolutions and, for ONNX, the
channel shuffle as one Gather and bottlenecks padded with zero channels to --align (16: ONNX
Runtime's x86 blocks; 0 for other runtimes); see docs/speed.md. --no-optimize exports the model as is.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from shufflenet_det.deploy.export import export_onnx, export_torchscript
from shufflenet_det.deploy.runtime import BEST_REWRITE, deploy_rewrite
from shufflenet_det import build_model, list_models
from shufflenet_det.utils.io import OutputPathError, check_output_file
from shufflenet_det.utils.text_table import first_line

logger = logging.getLogger("shufflenet_det.export")


def export_classifier(args: argparse.Namespace, rewrite: dict) -> str:
    if args.arch not in list_models():
        raise ValueError(f"unknown --arch '{args.arch}'; run shufflenet-det-models to list the models")
    if not args.weights:
        logger.warning("no --weights: the exported classifier has random weights")
    try:
        model = build_model(args.arch, weights=args.weights).eval()
    except Exception as error:  # unreadable or mismatched checkpoint: report, never a traceback
        raise ValueError(f"cannot load --weights {args.weights}: {first_line(error)}") from None
    if not args.no_optimize:
        model = deploy_rewrite(model, "onnxruntime" if args.format == "onnx" else "torchscript", rewrite)
    height, width = args.input_size
    example = torch.rand(1, 3, height, width)
    if args.format == "onnx":
        path = export_onnx(model, example, args.output, overwrite=args.overwrite, opset=args.opset,
                           output_names=["logits"])
    else:
        path = export_torchscript(model, example, args.output, overwrite=args.overwrite)
    return f"wrote {path} ({args.format}, {args.arch}, example input 1x3x{height}x{width})"


def export_detector_from_config(args: argparse.Namespace, rewrite: dict) -> str:
    from shufflenet_det.deploy.detector import build_export_detector, export_detector

    detector = build_export_detector(args.config, args.opts, weights=args.weights)
    path = export_detector(detector, args.output, format=args.format, input_size=tuple(args.input_size),
                           opset=args.opset, rewrite=None if args.no_optimize else rewrite,
                           optimize=not args.no_optimize, overwrite=args.overwrite)
    height, width = args.input_size
    return (f"wrote {path} ({args.format}, detector {args.config}, traced on a {height}x{width} image; "
            "input 'image' [3, H, W] float 0-255, outputs boxes / labels / scores)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--arch", help="classifier: registered model name (see shufflenet-det-models)")
    model.add_argument("--config", help="detector: config name (configs/) or YAML path")
    parser.add_argument("--weights", help="checkpoint to load (classifier: any format shufflenet_det.weights "
                                          "reads; detector: sets MODEL.WEIGHTS)")
    parser.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    parser.add_argument("--output", required=True, help="file to write")
    parser.add_argument("--input-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                        help="example input size for tracing; the exported height / width stay dynamic "
                             "(default: 224 224 classifiers, 480 640 detectors)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--align", type=int, default=16, help="ONNX: zero-channel padding multiple (0: none)")
    parser.add_argument("--no-optimize", action="store_true", help="export without BatchNorm folding / rewrites")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="detector config overrides, e.g. INPUT.MIN_SIZE_TEST 800")
    args = parser.parse_args(argv)

    if args.input_size is None:
        args.input_size = (224, 224) if args.arch else (480, 640)
    height, width = args.input_size
    checks = (
        (args.arch is not None and bool(args.opts), f"KEY VALUE overrides ({' '.join(args.opts)}) need --config"),
        (bool(args.weights) and not os.path.isfile(args.weights or ""), f"--weights {args.weights} is not a file"),
        (height < 32 or width < 32, f"--input-size must be at least 32 32, got {height} {width}"),
        (args.opset < 17, f"--opset must be at least 17, got {args.opset}"),
        (args.align < 0, f"--align must be >= 0, got {args.align}"),
    )
    for failed, message in checks:
        if failed:
            print(f"error: {message}", file=sys.stderr)
            return 2
    try:
        check_output_file(args.output, args.overwrite)
    except OutputPathError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    rewrite = dict(BEST_REWRITE["onnxruntime"], align=args.align) if args.format == "onnx" else None
    try:
        message = (export_classifier if args.arch else export_detector_from_config)(args, rewrite)
    except (ValueError, FileExistsError) as error:  # ConfigError is a ValueError
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
