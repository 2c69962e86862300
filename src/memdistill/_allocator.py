"""Keep freed memory in the process: the CPU allocator setting of ``memdistill distill``.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults a large
block (a feature map of an inner step, several MB to 50 MB) is served by ``mmap`` and
handed back to the system when freed, and the top of the heap is trimmed past a small
threshold; every new block then costs page faults on first touch. An unroll allocates and
frees such blocks thousands of times per outer step, so that cost is a measurable part of
its time on a CPU (docs/BENCHMARKS.md, "Keeping freed memory").

:func:`keep_freed_memory` asks glibc (``mallopt``) to serve every block from the heap and
never trim it, so freed blocks are reused without faults. It changes the whole process and
cannot be undone for blocks already kept, so the library never calls it on its own: the
command line does, for its own process, when the run's ``keep_freed_memory`` is true
(the default; ``--set keep_freed_memory=false`` turns it off). The price is a higher resident set:
memory the process freed stays mapped to it, and fragments (up to 1.4x the peak).
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1  # mallopt takes an int

_applied = False


def keep_freed_memory() -> bool:
    """Serve every allocation from the heap and never trim it (glibc only); returns
    whether the setting is in force. Idempotent; a no-op returning False where the C
    library is not glibc or refuses the setting."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    return _applied
