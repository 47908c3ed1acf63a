"""``shufflenet-det-models [PATTERN]`` / ``python -m shufflenet_det.modeling``: list the model names."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .registry import list_models, model_architecture


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="List the registered model names.")
    parser.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'shufflenet_v1_x1_0_*'")
    parser.add_argument("-v", "--verbose", action="store_true", help="also print what each name stands for")
    args = parser.parse_args(argv)
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches '{args.pattern}'", file=sys.stderr)
        return 1
    for name in names:
        print(f"{name}\t{model_architecture(name)}" if args.verbose else name)
    return 0
