#!/usr/bin/env python
"""Draw a detector's boxes on images or a video.

    python tools/demo.py --config quickstart.yaml --weights output/quickstart/model_final.pth \\
        --input datasets/synthetic/val --output output/demo --confidence-threshold 0.2

The exit status is 0 when every input was processed, 1 when some could not be read, 2 on a usage error.
"""

import argparse
import os
import sys
from pathlib import Path

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shufflenet_det.config import load_config, split_trailing_overrides  # noqa: E402
from shufflenet_det.config.loading import ConfigError, check_no_options  # noqa: E402
from shufflenet_det.detection import build_detector  # noqa: E402
from shufflenet_det.detection.checkpoint import warn_if_untrained  # noqa: E402
from shufflenet_det.detection.demo import (  # noqa: E402
    DemoInputError,
    Predictor,
    check_outputs,
    class_names_for,
    drawing_threshold,
    expand_inputs,
    run_on_images,
    run_on_video,
)
from shufflenet_det.utils.io import CheckpointError  # noqa: E402
from shufflenet_det.utils.logger import setup_logger  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, metavar="NAME_OR_PATH")
    parser.add_argument("--input", nargs="+", default=[], metavar="FILE|DIR|GLOB", help="images to annotate")
    parser.add_argument("--video-input", metavar="FILE", help="a video to annotate frame by frame")
    parser.add_argument("--output", default="output/demo", help="folder for the annotated files (NAME.jpg, NAME.mp4)")
    parser.add_argument("--overwrite", action="store_true", help="replace annotated files already in --output")
    parser.add_argument(
        "--confidence-threshold", type=float, metavar="SCORE",
        help="draw boxes scoring at least this (0-1; default: the config's SHUFFLENET_DET.VIS_SCORE_THRESH)",
    )
    parser.add_argument("--weights", help="a trained detector (same as MODEL.WEIGHTS)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    args = parser.parse_args()
    try:
        check_no_options(args.opts)
    except ConfigError as error:
        parser.error(str(error))
    if not args.input and not args.video_input:
        parser.error("give --input and/or --video-input")
    if args.weights and not os.path.isfile(args.weights):
        parser.error(f"--weights {args.weights}: no such file (a trained detector, e.g. output/quickstart/model_final.pth)")
    setup_logger(None)
    args.input, swallowed = split_trailing_overrides(args.input)
    opts = swallowed + list(args.opts) + (["MODEL.WEIGHTS", args.weights] if args.weights else [])
    try:
        images = expand_inputs(args.input)
        check_outputs(images, args.output, overwrite=args.overwrite)
        if args.video_input:
            check_outputs([args.video_input], args.output, ".mp4", args.overwrite)
        cfg = load_config(args.config, opts)
        threshold = drawing_threshold(cfg, args.confidence_threshold)
        model = build_detector(cfg)
    except (ConfigError, CheckpointError, DemoInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    warn_if_untrained(cfg.MODEL.WEIGHTS)
    predictor = Predictor(model, cfg.INPUT.FORMAT, class_names_for(cfg), threshold)
    failed = []
    if args.input:
        failed += run_on_images(predictor, images, args.output).failed
    if args.video_input:
        failed += run_on_video(predictor, args.video_input, args.output).failed
    if failed:
        print(f"error: {len(failed)} input(s) could not be read: {', '.join(failed[:5])}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
