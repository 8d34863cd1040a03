"""Keep freed memory in the process for reuse, so that rendering chunk after chunk does not fault pages in.

A forward pass on the CPU allocates and frees the same few tensors of a few
megabytes once per chunk.  With glibc's default, adaptive settings much of
that memory goes back to the system whenever the top of the heap is free
(``M_TRIM_THRESHOLD``) and comes back as fresh zero-filled pages at the next
allocation: on workload (a) of ``tools.benchmark``, float32, one thread,
1.2e5 page faults per image and 1.5 times the time of a pass without them
(``python -m tools.api_benchmark --workload a --engines torch
[--glibc-default-heap]``; specs/engines.md, "Memory").  :func:`keep_freed_memory` fixes the two
thresholds (``mallopt``): blocks up to 32 MB come from the heap and up to
``trim_bytes`` of free heap stay in the process.  Elsewhere than glibc it
does nothing.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1      # glibc's <malloc.h> parameter numbers
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024      # the largest value glibc accepts (64-bit)

_done = False


def keep_freed_memory(trim_bytes: int = 1 << 30) -> bool:
    """Set glibc's heap thresholds once per process; True when they were set (now or before)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt          # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, int(trim_bytes)))
    return _done
