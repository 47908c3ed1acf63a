"""Logging set-up for the tools: console on every process, ``log.txt`` on the main one."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

from .io import PathLike

_DATE_FORMAT = "%m/%d %H:%M:%S"


def setup_logger(output_dir: Optional[PathLike] = None, distributed_rank: int = 0, name: str = "shufflenet_det",
                 level: int = logging.INFO) -> logging.Logger:
    """Configure the ``name`` logger (replacing an earlier call's handlers): rank 0 logs ``level`` and up to stdout
    and everything to ``output_dir/log.txt`` (appended); other ranks print warnings and errors with their rank."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in [h for h in logger.handlers if getattr(h, "_added_by_setup_logger", False)]:
        logger.removeHandler(handler)
        handler.close()
    prefix = f"[rank{distributed_rank}] " if distributed_rank > 0 else ""
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(level if distributed_rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter(f"{prefix}[%(asctime)s %(name)s]: %(message)s", _DATE_FORMAT))
    handlers = [console]
    if distributed_rank == 0 and output_dir is not None:
        path = Path(output_dir) / "log.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", _DATE_FORMAT))
        handlers.append(file_handler)
    for handler in handlers:
        handler._added_by_setup_logger = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger
