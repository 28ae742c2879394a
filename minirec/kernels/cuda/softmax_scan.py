"""CUDA kernels (softmax_scan.cu) for the causal softmax scan (Aaren's core).

Tested against :func:`minirec.ops.softmax_scan.forward` / ``backward`` with
``backend="numpy"`` (tests/kernels/test_cuda_softmax_scan.py): on the CPU
through the emulator, on a GPU through CuPy (``pytest -m gpu``).

One module serves both CUDA backends; the arrays choose: CuPy arrays run on
the GPU (``backend="cupy"``), NumPy arrays run the same kernels in the CPU
emulator (``backend="cuda-emulated"``). The launch plans (:func:`plan_forward`,
:func:`plan_backward`) are computed here, once, for both.

``method="recurrent"`` (the only method with kernels). Per (batch, head) row,
from the state ``(m, u, w)`` after ``t − 1`` tokens:

    m_t = max(m_{t−1}, s_t),  α = e^{m_{t−1} − m_t},  β = e^{s_t − m_t}
    u_t = α u_{t−1} + β,      w_t = α w_{t−1} + β v_t,      o_t = w_t / u_t

with ``α = 1`` where ``m_{t−1} = m_t`` (the empty prefix ``m = −inf`` never
forms ``−inf − (−inf)``) and the running max keeping a NaN, as the definition.

* forward: one warp per row (:data:`ROWS_PER_BLOCK` rows per block), lanes over
  the value axis ``V``; each lane walks over T with ``(m, u, w_j)`` in
  registers and writes ``W``, ``o``; lane 0 writes ``M``, ``U``.
* backward: one warp per row, the fused reverse loop of
  ``softmax_scan.step_backward``; ``dw`` lives in the warp's slice of shared
  memory, the three sums over ``V`` of each step are one pass over the lane's
  values and a warp reduction.

:func:`forward` and :func:`backward` take the arguments of the numba wrapper
(:mod:`minirec.kernels.numba.softmax_scan`) plus ``backend``. This module
imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda._launch import Launch, ceil_div

SOURCE = "softmax_scan.cu"
BACKENDS = _launch.BACKENDS
DTYPES = (np.float64, np.float32)
ROWS_PER_BLOCK = 4         # warps per block, one (batch, head) row each
SHARED_LIMIT = 48 * 1024   # the default dynamic shared memory of a block


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """The name expressions of every kernel of softmax_scan.cu for ``dtype``."""
    F = _build.ctype(dtype)
    if F not in ("float", "double"):
        raise TypeError(f"dtype: the softmax scan is real, expected float32 or float64, "
                        f"got {np.dtype(dtype)}")
    return (f"softmax_scan_forward<{F}>", f"softmax_scan_backward<{F}>")


def _rows_grid(rows: int, per_block: int) -> tuple[tuple[int], tuple[int]]:
    # one warp per row: a ceil-div grid whose last block's spare warps return
    per_block = max(1, min(per_block, rows))
    grid = ceil_div(rows, per_block)
    if grid > _launch.MAX_GRID_X:
        raise ValueError(f"s: expected at most {_launch.MAX_GRID_X * per_block} (batch, head) "
                         f"rows, got {rows}")
    return (grid,), (per_block * _launch.WARP,)


def backward_rows_per_block(V: int, itemsize: int) -> int:
    """Warps per block of the backward: :data:`ROWS_PER_BLOCK`, fewer when their
    ``dw`` slices (``V`` values each) would not fit in :data:`SHARED_LIMIT`."""
    per_row = V * itemsize
    if per_row > SHARED_LIMIT:
        raise ValueError(f"v: expected a value size V of at most {SHARED_LIMIT // itemsize} for "
                         f"the CUDA softmax scan's backward (dw lives in shared memory), got {V}")
    return ROWS_PER_BLOCK if per_row == 0 else max(1, min(ROWS_PER_BLOCK, SHARED_LIMIT // per_row))


def plan_forward(s: Any, v: Any, m0: Any, u0: Any, w0: Any, M: Any, U: Any, W: Any,
                 o: Any) -> list[Launch]:
    """The launch that writes ``M, U (B, T, H)`` and ``W, o (B, T, H, V)`` from
    ``s (B, T, H)``, ``v (B, T, H, V)`` and the initial state (one dtype,
    C-contiguous)."""
    B, T, H, Vd = v.shape
    F = _build.ctype(v.dtype)
    i64 = np.int64
    grid, block = _rows_grid(B * H, ROWS_PER_BLOCK)
    return [Launch(f"softmax_scan_forward<{F}>", grid, block, 0,
                   (s, v, m0, u0, w0, M, U, W, o, i64(B), i64(T), i64(H), i64(Vd)))]


def plan_backward(s: Any, v: Any, m0: Any, u0: Any, w0: Any, M: Any, U: Any, W: Any,
                  do: Any, has_do: bool, dm_T: Any, du_T: Any, dw_T: Any, ds: Any, dv: Any,
                  dm0: Any, du0: Any, dw0: Any) -> list[Launch]:
    """The launch that writes ``ds (B, T, H)``, ``dv (B, T, H, V)`` and the initial
    state's gradient ``dm0, du0 (B, H)``, ``dw0 (B, H, V)``; ``do`` is read only
    when ``has_do``."""
    B, T, H, Vd = v.shape
    F = _build.ctype(v.dtype)
    i64 = np.int64
    per_block = backward_rows_per_block(Vd, v.dtype.itemsize)
    grid, block = _rows_grid(B * H, per_block)
    shared = (block[0] // _launch.WARP) * Vd * v.dtype.itemsize
    return [Launch(f"softmax_scan_backward<{F}>", grid, block, shared,
                   (s, v, m0, u0, w0, M, U, W, do, np.int32(has_do), dm_T, du_T, dw_T,
                    ds, dv, dm0, du0, dw0, i64(B), i64(T), i64(H), i64(Vd)))]


def _c(xp: Any, x: Any, dtype: Any) -> Any:
    return xp.ascontiguousarray(x.astype(dtype, copy=False))


def forward(s: Any, v: Any, initial_state: tuple, *, backend: str | None = None
            ) -> tuple[Any, tuple, tuple]:
    """:func:`minirec.ops.softmax_scan.forward` (``method="recurrent"``) by the
    warp-per-row kernel, in ``s``'s dtype, from ``initial_state = (m0, u0, w0)``
    (the definition turns ``None`` into the empty prefix).

    ``s (B, T, H)``, ``v (B, T, H, V)``, ``m0, u0 (B, H)``, ``w0 (B, H, V)``.
    Returns ``o (B, T, H, V)``, the final state ``(m, u, w)`` and the states
    after every step ``(M, U (B, T, H), W (B, T, H, V))`` for :func:`backward`.
    ``backend``: ``"cupy"`` (CuPy arrays), ``"cuda-emulated"`` (NumPy arrays),
    or None to follow the arrays.
    """
    m0, u0, w0 = initial_state
    backend, xp = _launch.backend_and_xp(backend, s=s, v=v, m0=m0, u0=u0, w0=w0)
    dtype = s.dtype
    B, T, H, Vd = v.shape
    M = xp.empty((B, T, H), dtype)
    U = xp.empty((B, T, H), dtype)
    W = xp.empty((B, T, H, Vd), dtype)
    o = xp.empty((B, T, H, Vd), dtype)
    if M.size:
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        for launch in plan_forward(_c(xp, s, dtype), _c(xp, v, dtype), _c(xp, m0, dtype),
                                   _c(xp, u0, dtype), _c(xp, w0, dtype), M, U, W, o):
            _launch.run(module, launch)
    state = (M[:, -1].copy(), U[:, -1].copy(), W[:, -1].copy())
    return o, state, (M, U, W)


def backward(s: Any, v: Any, initial_state: tuple, states: tuple, do: Any, dstate: tuple, *,
             backend: str | None = None) -> dict[str, Any]:
    """:func:`minirec.ops.softmax_scan.backward` by the warp-per-row reverse loop,
    from the forward's inputs, its ``states = (M, U, W)``, ``do (B, T, H, V)``
    (``None`` for zeros) and ``dstate = (dm_T, du_T, dw_T)`` (arrays).

    Returns ``{"s", "v", "initial_state": (dm0, du0, dw0)}`` in ``W``'s dtype.
    """
    m0, u0, w0 = initial_state
    M, U, W = states
    dm_T, du_T, dw_T = dstate
    backend, xp = _launch.backend_and_xp(backend, s=s, v=v, m0=m0, u0=u0, w0=w0, M=M, U=U,
                                         W=W, do=do, dm_T=dm_T, du_T=du_T, dw_T=dw_T)
    dtype = W.dtype
    B, T, H, Vd = v.shape
    ds = xp.empty((B, T, H), dtype)
    dv = xp.empty((B, T, H, Vd), dtype)
    dm0 = xp.empty((B, H), dtype)
    du0 = xp.empty((B, H), dtype)
    dw0 = xp.empty((B, H, Vd), dtype)
    if ds.size:
        has_do = do is not None
        do_c = _c(xp, do, dtype) if has_do else xp.zeros((1,), dtype)  # never read
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        plan = plan_backward(_c(xp, s, dtype), _c(xp, v, dtype), _c(xp, m0, dtype),
                             _c(xp, u0, dtype), _c(xp, w0, dtype), _c(xp, M, dtype),
                             _c(xp, U, dtype), _c(xp, W, dtype), do_c, has_do,
                             _c(xp, dm_T, dtype), _c(xp, du_T, dtype), _c(xp, dw_T, dtype),
                             ds, dv, dm0, du0, dw0)
        for launch in plan:
            _launch.run(module, launch)
    return {"s": ds, "v": dv, "initial_state": (dm0, du0, dw0)}
