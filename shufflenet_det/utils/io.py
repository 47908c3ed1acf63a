"""Safe file handling: atomic writes, refusing to overwrite, loading checkpoints without running code."""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import torch

from .text_table import first_line

PathLike = Union[str, os.PathLike]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: missing, truncated, not a checkpoint, or unsafe."""


class OutputPathError(FileExistsError):
    """A file cannot be written where asked: it exists (overwrite off), is a folder, or its folder is not writable."""


def check_output_file(path: PathLike, overwrite: bool = False) -> Path:
    """Raise ``OutputPathError`` unless a file can be written at ``path``; tools check before their work."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise OutputPathError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {path}: no permission to write in {folder}")
    return path


def atomic_write(path: PathLike, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)``, then rename the temporary file onto ``path``: a crash mid-write leaves any
    previous file intact. An existing ``path`` is only replaced when ``overwrite`` is true."""
    path = check_output_file(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: PathLike, overwrite: bool = False) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), overwrite=overwrite)


def safe_torch_load(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with one-line errors; a pickle that needs code is refused. Besides
    tensors and containers it allows ``argparse.Namespace``, which torchvision's reference scripts store."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    with open(path, "rb") as handle:
        head = handle.read(2)
    # torch.save writes a zip archive (or, in its legacy format, a pickle): anything else is another kind of file.
    if head != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (a file written by torch.save)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            marker = "Unsupported global: GLOBAL "
            name = f" ({str(error).split(marker, 1)[1].split()[0].rstrip('.,')})" if marker in str(error) else ""
            raise CheckpointError(
                f"refusing to load {path}: unpickling it would run code{name}. Only tensors and plain containers "
                "are loaded; convert it with tools/convert_weights.py on a machine where you trust the file."
            ) from None
        raise CheckpointError(f"{path} is not a readable checkpoint: {first_line(error)}") from None
    except Exception as error:  # torch raises many types for damaged files
        raise CheckpointError(f"{path} is truncated or not a checkpoint: {first_line(error)}") from None
