#!/usr/bin/env python
"""Print the paper's Table 7 (COCO mAP, Faster R-CNN) beside the mAP of our six runs.

python tools/compare.py --output-root output/
python tools/compare.py --run shufflenet_1x_frcnn=output/shufflenet_1x_frcnn --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shufflenet_det.evaluation.table7 import RUN_NAMES, collect_results, format_table7, table7_rows


def parse_runs(pairs: List[str]) -> Dict[str, str]:
    runs: Dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--run expects NAME=PATH, got '{pair}'")
        runs[name] = path
    return runs


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-root", help=f"folder holding the runs {', '.join(RUN_NAMES)}")
    parser.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a run's results.json or output folder (repeatable; overrides --output-root)",
    )
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    args = parser.parse_args(argv)
    if args.output_root is None and not args.run:
        parser.error("give --output-root and/or --run NAME=PATH")
    if args.output_root is not None and not os.path.isdir(args.output_root):
        print(f"error: --output-root {args.output_root} is not a directory", file=sys.stderr)
        return 2
    try:
        box_ap, files, problems = collect_results(parse_runs(args.run), args.output_root)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)

    records = table7_rows(box_ap)
    if args.json:
        print(json.dumps({"rows": records, "results_files": files}, indent=2))
    else:
        print(format_table7(records))
    if not box_ap:
        print("error: no results file could be read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
