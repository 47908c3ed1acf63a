#!/usr/bin/env python
"""Train, evaluate or benchmark an ImageNet classifier (ShuffleNet v1, MobileNet v1).

    python tools/train_cls.py --config shufflenet_1x_g3 [--resume] [--num-gpus N] [KEY VALUE ...]
    python tools/train_cls.py --config shufflenet_1x_g3 --eval-only MODEL.WEIGHTS FILE_OR_NAME
    python tools/train_cls.py --config shufflenet_1x_g3 --benchmark SOLVER.IMS_PER_BATCH 256

Configs are under configs/classification/; see docs/classification.md.
"""

import sys
from pathlib import Path

try:
    import shufflenet_det  # noqa: F401
except ImportError:  # run from a clone without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shufflenet_det.classification.train import argument_parser, main
from shufflenet_det.engine import launch

if __name__ == "__main__":
    args = argument_parser().parse_args()
    sys.exit(
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    )
