"""Python-side helpers shared by the numba kernels of the multi-head
matrix-state families (:mod:`.gla`, :mod:`.delta_rule`, :mod:`.mlstm`): the
arguments' layout, the method/chunk check, and the BLAS thread limit of the
chunk kernels. Imports nothing from the rest of minirec except :mod:`._blas`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from minirec.kernels.numba._blas import blas_single_thread


def contiguous(x: np.ndarray, dtype: Any) -> np.ndarray:
    """``x`` as a C-contiguous, writeable array of ``dtype`` (a copy only if
    needed: read-only views such as ``np.broadcast_to`` are copied, so that each
    kernel compiles once per dtype)."""
    return np.require(x, dtype=dtype, requirements=("C", "W"))


def blas_limit(method: str) -> contextlib.AbstractContextManager:
    """One BLAS thread while the ``chunk`` kernels run: their GEMMs are called
    from inside Numba's ``prange`` threads (see :mod:`._blas`)."""
    return blas_single_thread() if method == "chunk" else contextlib.nullcontext()


def check_method(family: str, methods: tuple[str, ...], method: str, chunk_size: Any) -> int:
    """``ValueError`` unless ``method`` is one of ``methods`` (those the numba
    ``family`` kernels implement) and ``chunk_size ≥ 1``; return ``int(chunk_size)``
    (the chunk length of ``chunk``, the checkpoint stride of ``recurrent``)."""
    if method not in methods:
        raise ValueError(f"method: expected one of {methods} for the numba {family} kernels, "
                         f"got {method!r}")
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    return int(chunk_size)
