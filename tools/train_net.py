#!/usr/bin/env python
"""Train or evaluate a C4 Faster R-CNN: ``python tools/train_net.py --config NAME [KEY VALUE ...]``.

Examples::

    python tools/train_net.py --config quickstart.yaml                    # synthetic data, CPU, ~10 min
    python tools/train_net.py --config shufflenet_2x_frcnn.yaml --num-gpus 8
    python tools/train_net.py --config shufflenet_2x_frcnn.yaml --resume
    python tools/train_net.py --config shufflenet_2x_frcnn.yaml --eval-only MODEL.WEIGHTS output/x/model_final.pth
    torchrun --nproc_per_node 8 tools/train_net.py --config shufflenet_2x_frcnn.yaml
"""

import sys
from pathlib import Path

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shufflenet_det.detection.runner import add_arguments, main  # noqa: E402
from shufflenet_det.engine import default_argument_parser, launch  # noqa: E402


def cli() -> int:
    parser = add_arguments(default_argument_parser(__doc__.splitlines()[0]))
    args = parser.parse_args()
    if not args.config:
        parser.error("--config is required (a file, or a name under configs/ such as quickstart.yaml)")
    if args.engine == "detectron2":
        try:  # one process here; detectron2's own launch spreads it over GPUs
            from shufflenet_det.integrations.d2.train import run_from_args
        except ImportError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return run_from_args(args)
    return launch(main, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url, args=(args,))


if __name__ == "__main__":
    sys.exit(cli())
