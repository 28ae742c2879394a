"""CUDA kernels (matrix_scan.cu) for the matrix affine scan ``h_t = A_t h_{t-1} + b_t``.

Tested against :func:`minirec.scan.matrix.forward` / ``backward`` with
``backend="numpy"`` (tests/kernels/test_cuda_matrix_scan.py): on the CPU
through the emulator, on a GPU through CuPy (``pytest -m gpu``).

One module serves both CUDA backends; the arrays choose: CuPy arrays run on
the GPU (``backend="cupy"``), NumPy arrays run the same kernels in the CPU
emulator (``backend="cuda-emulated"``). The launch plans (:func:`plan_forward`,
:func:`plan_backward`) are computed here, once, for both.

``A (B, T, d, d)``, ``b (B, T, d)``, ``h0 (B, d)``, real or complex, in their
common dtype (a real ``A`` is copied to complex when ``b`` or ``h0`` is
complex: the kernels take one scalar type). ``method="recurrent"`` (the only
method with kernels): one block per batch row, threads over the ``d`` state
entries, the previous state in shared memory:

* forward: thread ``i`` computes ``h_t[i] = Σ_j A_t[i, j] h_{t−1}[j] + b_t[i]``,
  one ``__syncthreads`` per step;
* backward: the reverse scan (``^H`` the conjugate transpose)

      g_{T−1} = dh_{T−1} + dstate,     g_t = dh_t + A_{t+1}^H g_{t+1}
      db_t = g_t,    dA_t = g_t h_{t−1}^H,    dh0 = A_0^H g_0

  thread ``j`` computes ``g_t[j]`` from column ``j`` of ``A_{t+1}`` and writes
  column ``j`` of ``dA_t``.

:func:`forward` and :func:`backward` take the arguments of the numba wrapper
(:mod:`minirec.kernels.numba.matrix_scan`) plus ``backend``. This module
imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda._launch import Launch, round_up

METHODS = ("recurrent",)
SOURCE = "matrix_scan.cu"
BACKENDS = _launch.BACKENDS
DTYPES = (np.float64, np.float32, np.complex128, np.complex64)
MAX_BLOCK = 1024           # threads per block (thread i owns entries i, i + MAX_BLOCK, ...)
SHARED_LIMIT = 48 * 1024   # the default dynamic shared memory of a block


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """The name expressions of every kernel of matrix_scan.cu for ``dtype``."""
    S = _build.ctype(dtype)
    return (f"matrix_scan_forward<{S}>", f"matrix_scan_backward<{S}>")


def block_geometry(B: int, d: int, itemsize: int) -> tuple[tuple[int], tuple[int], int]:
    """``(grid, block, shared_mem)``: one block per batch row, whole warps of
    threads over ``d`` (at most :data:`MAX_BLOCK`), two state buffers of ``d``
    values in shared memory."""
    shared = 2 * d * itemsize
    if shared > SHARED_LIMIT:
        raise ValueError(f"A: expected a state size d of at most {SHARED_LIMIT // (2 * itemsize)}"
                         f" for the CUDA matrix scan (two states of d values live in shared "
                         f"memory), got {d}")
    if B > _launch.MAX_GRID_X:
        raise ValueError(f"A: expected at most {_launch.MAX_GRID_X} batch rows, got {B}")
    return (B,), (min(MAX_BLOCK, round_up(max(d, 1), _launch.WARP)),), shared


def plan_forward(A: Any, b: Any, h0: Any, h: Any) -> list[Launch]:
    """The launch that writes ``h (B, T, d)`` from ``A (B, T, d, d)``, ``b (B, T, d)``
    and ``h0 (B, d)`` (one dtype, C-contiguous)."""
    B, T, d = h.shape
    S = _build.ctype(h.dtype)
    grid, block, shared = block_geometry(B, d, h.dtype.itemsize)
    return [Launch(f"matrix_scan_forward<{S}>", grid, block, shared,
                   (A, b, h0, h, np.int64(T), np.int64(d)))]


def plan_backward(A: Any, h: Any, h0: Any, dh: Any, dstate: Any, dA: Any, db: Any,
                  dh0: Any) -> list[Launch]:
    """The launch that writes ``dA (B, T, d, d)``, ``db (B, T, d)`` and ``dh0 (B, d)``."""
    B, T, d = h.shape
    S = _build.ctype(h.dtype)
    grid, block, shared = block_geometry(B, d, h.dtype.itemsize)
    return [Launch(f"matrix_scan_backward<{S}>", grid, block, shared,
                   (A, h, h0, dh, dstate, dA, db, dh0, np.int64(T), np.int64(d)))]


def _c(xp: Any, x: Any, dtype: Any) -> Any:
    return xp.ascontiguousarray(x.astype(dtype, copy=False))


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method: the CUDA matrix scan has kernels for {METHODS}, "
                         f"got {method!r}")


def forward(A: Any, b: Any, initial_state: Any, *, method: str,
            backend: str | None = None) -> tuple[Any, Any, None]:
    """``(h, h_T, None)`` as :func:`minirec.scan.matrix.forward` returns them
    (``None``: the backward needs nothing beyond the definition's cache).

    ``A (B, T, d, d)``, ``b (B, T, d)``, ``initial_state (B, d)``; ``h (B, T, d)``
    has their common dtype. ``method`` must be ``"recurrent"``. ``backend``:
    ``"cupy"`` (CuPy arrays), ``"cuda-emulated"`` (NumPy arrays), or None to
    follow the arrays.
    """
    _check_method(method)
    backend, xp = _launch.backend_and_xp(backend, A=A, b=b, initial_state=initial_state)
    dtype = np.result_type(A.dtype, b.dtype, initial_state.dtype)
    h = xp.empty(b.shape, dtype)
    if h.size:
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        for launch in plan_forward(_c(xp, A, dtype), _c(xp, b, dtype),
                                   _c(xp, initial_state, dtype), h):
            _launch.run(module, launch)
    return h, h[:, -1].copy(), None


def backward(A: Any, h: Any, initial_state: Any, kernel: None, dh: Any, dstate: Any, *,
             method: str, backend: str | None = None) -> dict[str, Any]:
    """``{"A", "b", "initial_state"}`` in ``h``'s dtype (complex when ``h`` is;
    the caller takes the real part for real inputs).

    ``A``, ``h``, ``initial_state`` from the forward; ``kernel``: what
    :func:`forward` returned third (unused); ``dh (B, T, d)`` and
    ``dstate (B, d)`` the upstream gradients (None: zeros). ``method`` must be
    ``"recurrent"``.
    """
    _check_method(method)
    backend, xp = _launch.backend_and_xp(backend, A=A, h=h, initial_state=initial_state,
                                         dh=dh, dstate=dstate)
    dtype = h.dtype
    dA = xp.empty(A.shape, dtype)
    db = xp.empty(h.shape, dtype)
    dh0 = xp.empty(initial_state.shape, dtype)
    if db.size:
        dh = xp.zeros(h.shape, dtype) if dh is None else dh
        dstate = xp.zeros(initial_state.shape, dtype) if dstate is None else dstate
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        for launch in plan_backward(_c(xp, A, dtype), _c(xp, h, dtype),
                                    _c(xp, initial_state, dtype), _c(xp, dh, dtype),
                                    _c(xp, dstate, dtype), dA, db, dh0):
            _launch.run(module, launch)
    return {"A": dA, "b": db, "initial_state": dh0}
