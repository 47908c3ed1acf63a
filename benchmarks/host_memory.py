"""Peak host memory of a stretch of code on Linux, close to the peak of its live tensors: with glibc told
to return large freed blocks at once (``track_freed_memory``), resident memory follows the live tensors and
the kernel's high-water mark (VmHWM, reset through /proc/self/clear_refs) is their peak. Elsewhere: None."""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)


def track_freed_memory() -> bool:
    """Make glibc hand freed blocks of 64 KiB and up back to the kernel; False where that is not possible."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):  # no C library to load, or not glibc
        return False
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, 64 * 1024)) and bool(mallopt(_M_TRIM_THRESHOLD, 0))


def _status_bytes(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def resident_bytes() -> Optional[int]:
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
