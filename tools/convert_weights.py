#!/usr/bin/env python
"""Convert ImageNet weights (official megvii ShuffleNetV1, pytorchcv, timm, ours) to shufflenet_det's format.

    python tools/convert_weights.py DOWNLOADED_0.5x_g3.pth.tar shufflenet_v1_x0_5_g3.pth --from megvii
    python tools/convert_weights.py pytorchcv:shufflenet_g3_w1 shufflenet_v1_x1_0_g3.pth

SRC is a checkpoint file or a known weight name (downloaded first). Prints what it detected.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shufflenet_det.utils.io import check_output_file
from shufflenet_det.weights import SOURCES, CheckpointError, convert_checkpoint, list_pretrained, save_weights


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help=f"checkpoint file, or one of: {', '.join(list_pretrained())}")
    parser.add_argument("dst", help="output file (shufflenet_det weight format)")
    parser.add_argument("--from", dest="source", choices=SOURCES, help="expected source (default: detect)")
    parser.add_argument("--arch", help="our model name (default: inferred from the shapes)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    try:
        check_output_file(args.dst, args.overwrite)
        state_dict, meta = convert_checkpoint(args.src, arch=args.arch, source=args.source)
        save_weights(args.dst, state_dict, meta, overwrite=args.overwrite)
    except (CheckpointError, FileExistsError, KeyError, ValueError, OSError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"error: {message}", file=sys.stderr)
        return 1
    for key, value in meta.items():
        print(f"{key}: {value}")
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
