"""BLAS threads around the Numba fast paths.

The ``numba`` wrappers interleave BLAS GEMMs (projections, weight gradients)
with Numba ``prange`` kernels, and some kernels call BLAS themselves
(``np.dot`` inside ``@njit`` calls SciPy's BLAS, ``scipy.linalg.cython_blas``,
a library apart from NumPy's). A kernel that calls BLAS from every ``prange``
thread needs that BLAS on one thread, or each call would start its own
workers on the cores the other ``prange`` threads are using. This module
imports nothing from the rest of minirec.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_BLAS = None


def _controller():
    """One ``threadpoolctl`` controller for the process, made after SciPy's BLAS
    is loaded (a controller sees only the libraries loaded when it is made, and
    Numba's ``np.dot`` uses SciPy's)."""
    global _BLAS
    if _BLAS is None:
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS)
        except ImportError:  # no SciPy: Numba's np.dot is unavailable anyway
            pass
        from threadpoolctl import ThreadpoolController
        _BLAS = ThreadpoolController()
    return _BLAS


@contextlib.contextmanager
def blas_threads(threads: int | None) -> Iterator[None]:
    """Run the enclosed BLAS calls on at most ``threads`` threads (``None``: as
    configured, every core)."""
    if threads is None:
        yield
        return
    try:
        ctx = _controller().limit(limits=threads, user_api="blas")
    except Exception:  # threadpoolctl missing or unable to see the BLAS: run as is
        ctx = contextlib.nullcontext()
    with ctx:
        yield


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Run the enclosed BLAS calls (NumPy's and SciPy's, hence Numba's ``np.dot``)
    on one thread.

    OpenBLAS' worker threads keep
    spinning after a call and Numba's OpenMP threads do the same, so on a
    2-core machine each starves the other: measured here, an RNN step pair at
    (B, T, D, H) = (8, 512, 32, 32) took 8.0 ms with both threaded and 3.3 ms with
    BLAS on one thread. The limit costs ~25 µs per use (threadpoolctl).
    """
    with blas_threads(1):
        yield
