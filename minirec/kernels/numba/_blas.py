"""BLAS threads around the Numba fast paths.

The ``numba`` wrappers interleave BLAS GEMMs (projections, weight gradients)
with Numba ``prange`` kernels. This module imports nothing from the rest of
minirec.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_BLAS = None


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Run the enclosed NumPy GEMMs on one BLAS thread.

    OpenBLAS' worker threads keep
    spinning after a call and Numba's OpenMP threads do the same, so on a
    2-core machine each starves the other: measured here, an RNN step pair at
    (B, T, D, H) = (8, 512, 32, 32) took 8.0 ms with both threaded and 3.3 ms with
    BLAS on one thread. The limit costs ~25 µs per use (threadpoolctl).
    """
    global _BLAS
    try:
        if _BLAS is None:
            from threadpoolctl import ThreadpoolController
            _BLAS = ThreadpoolController()
        ctx = _BLAS.limit(limits=1, user_api="blas")
    except Exception:  # threadpoolctl missing or unable to see the BLAS: run as is
        ctx = contextlib.nullcontext()
    with ctx:
        yield
