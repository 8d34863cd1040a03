"""The least a Numba run must do before its first pixel: import NumPy and Numba, call one cached function.

``python -m tools.benchmark --engines c,numba,numba-floor`` times a process
that does only this (``FLOOR_CODE`` there) beside the real runs.  The first
call of any compiled function, even one loaded from Numba's on-disk cache,
makes Numba load its typing and lowering registries; that and the imports
are a floor under every ``-engine numba`` run's time.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True)
def first_call() -> int:
    """Nothing to compute: the cost is in loading and dispatching."""
    return 1
