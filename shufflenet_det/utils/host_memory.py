"""Peak host memory of a stretch of code on Linux, close to the peak of its live tensors.

CPU tensors come from glibc's malloc, which keeps freed blocks for reuse, so the process's resident
memory says little about what is alive. ``track_freed_memory()`` makes glibc hand every large block
(64 KiB and up) back to the kernel when it is freed; after that, resident memory follows the live
tensors, and the kernel's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) gives
their peak. Elsewhere (not Linux, not glibc) the functions report ``None``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LARGE_BLOCK = 64 * 1024


def track_freed_memory() -> bool:
    """Ask glibc to return large freed blocks to the kernel at once; False where that is not possible."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # no C library to load, or not glibc
        return False
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, _LARGE_BLOCK)) and bool(mallopt(_M_TRIM_THRESHOLD, 0))


def _status_bytes(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def resident_bytes() -> Optional[int]:
    """The process's resident memory now (bytes), or None."""
    return _status_bytes("VmRSS")


def reset_peak_resident() -> bool:
    """Start a new high-water mark of resident memory; False where the kernel offers no reset."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def peak_resident_bytes() -> Optional[int]:
    """The highest resident memory (bytes) since the last ``reset_peak_resident()`` (or process start)."""
    return _status_bytes("VmHWM")
