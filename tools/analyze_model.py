#!/usr/bin/env python
"""Parameters and multiply-adds of the registered models beside the paper's and the official release's figures.

python tools/analyze_model.py                                  # every model at 224x224
python tools/analyze_model.py --arch shufflenet_v1_x1_0_g3 --input-size 600 800
python tools/analyze_model.py --json --output complexity.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shufflenet_det import list_models
from shufflenet_det.analysis import REFERENCE_INPUT_SIZE, analyze_models, format_breakdown, format_table
from shufflenet_det.utils.io import OutputPathError, atomic_write, check_output_file
from shufflenet_det.utils.text_table import first_line

TABLE_NOTE = "\n".join(
    [
        "params: ours, in millions; params-nb: without the classifier bias (1000 for ImageNet), as the official",
        "  release counts (its classifier has no bias). MAdds: conv + linear multiply-adds in millions at {h}x{w},",
        "  batch 1 (the papers' 'FLOPs'; published ones are for 224x224 and compared there only).",
        "diff: ours relative to the figure left of it; blank: no published figure. err: ImageNet top-1 error (%).",
        "paper: Zhang et al. CVPR 2018, Tables 1, 2, 5 (MobileNet params: Howard et al. 2017, Table 6);",
        "  off.: the official release, megvii-model/ShuffleNet-Series (ShuffleNetV1).",
    ]
)


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of the usage text
        raise UsageError(message)


def parse_args(argv=None) -> argparse.Namespace:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", metavar="NAME", help="one registered model (with a per-stage breakdown); default: all"
    )
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        default=list(REFERENCE_INPUT_SIZE),
        help="default 224 224",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--output", metavar="FILE", help="write the output to FILE instead of stdout")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = parser.parse_args(argv)

    if args.arch is not None and args.arch not in list_models():
        raise UsageError(f"unknown model '{args.arch}'. Valid names: {', '.join(list_models())}")
    if min(args.input_size) < 1:
        raise UsageError(
            f"--input-size needs two positive integers (height width), got {args.input_size[0]} {args.input_size[1]}"
        )
    if args.overwrite and not args.output:
        raise UsageError("--overwrite only applies with --output FILE")
    if args.output:
        try:
            check_output_file(args.output, args.overwrite)
        except OutputPathError as error:
            raise UsageError(str(error)) from None
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    names = [args.arch] if args.arch else list_models()
    try:
        rows = analyze_models(names, args.input_size)
    except RuntimeError as error:  # e.g. an input too small for the network's pooling
        print(f"error: cannot run at {args.input_size[0]}x{args.input_size[1]}: {first_line(error)}", file=sys.stderr)
        return 2

    if args.json:
        text = json.dumps({"input_size": args.input_size, "models": rows}, indent=2)
    elif args.arch:
        text = format_breakdown(rows[0])
    else:
        height, width = args.input_size
        text = TABLE_NOTE.format(h=height, w=width) + "\n\n" + format_table(rows)

    if not args.output:
        try:
            print(text, flush=True)
        except BrokenPipeError:  # the reader (e.g. `| head`) stopped early: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    try:
        atomic_write(args.output, lambda tmp: Path(tmp).write_text(text + "\n"), overwrite=args.overwrite)
    except (OSError, FileExistsError) as error:
        print(f"error: cannot write {args.output}: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
