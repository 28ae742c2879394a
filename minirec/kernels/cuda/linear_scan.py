"""CUDA kernels for the diagonal affine scan ``h_t = a_t ⊙ h_{t-1} + b_t`` (linear_scan.cu).

Tested against :func:`minirec.scan.linear.forward` / ``backward`` with
``backend="numpy"`` (tests/kernels/test_cuda_linear_scan.py): on the CPU
through the emulator, on a GPU through CuPy (``pytest -m gpu``).

One module serves both CUDA backends; the arrays choose: CuPy arrays run on
the GPU (``backend="cupy"``), NumPy arrays run the same kernels in the CPU
emulator (``backend="cuda-emulated"``). The launch plans (:func:`plan_forward`,
:func:`plan_backward`) are computed here, once, for both.

Arrays are flattened to ``(B, T, R)`` with ``R`` the product of the trailing
axes, C-contiguous, in the common dtype of the inputs (float32, float64,
complex64, complex128). Methods:

``recurrent``  one thread per lane ``(i, r)`` walks over T; adjacent threads
               read adjacent ``r`` (coalesced). The fast path when ``B·R`` fills
               the GPU.
``chunked``    a block scan: chunks of ``chunk_size`` steps (default
               :data:`DEFAULT_CHUNK`), one block per (lane, chunk), three
               kernels (chunk totals, carries, scan from the carry). Worth it
               when ``B·R`` is small and ``T`` long.

The backward is the reverse scan ``g_t = dh_t + conj(a_{t+1}) g_{t+1}``
(``g_{T-1} = dh_{T-1} + dstate``), then ``db = g``, ``da = g ⊙ conj(h_{t-1})``,
``dh0 = conj(a_0) ⊙ g_0``, by the method's own kernels. This module imports
nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda._launch import Launch, ceil_div, round_up

METHODS = ("recurrent", "chunked")
SOURCE = "linear_scan.cu"
# the block scan's tile: 8 warps, 4 steps composed serially by each thread, as in
# CUB's block scans; 1024 steps per block by default
ITEMS_PER_THREAD = 4
MAX_BLOCK = 256
DEFAULT_CHUNK = MAX_BLOCK * ITEMS_PER_THREAD
BACKENDS = _launch.BACKENDS
# the dtypes the kernels are instantiated for (name_expressions; the compile checks)
DTYPES = (np.float64, np.float32, np.complex128, np.complex64)


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """The name expressions of every kernel of linear_scan.cu for ``dtype``."""
    S = _build.ctype(dtype)
    return (f"linear_scan_forward_recurrent<{S}>", f"linear_scan_backward_recurrent<{S}>",
            f"linear_scan_chunk_totals<{S}, false>", f"linear_scan_chunk_totals<{S}, true>",
            f"linear_scan_chunk_carries<{S}>", f"linear_scan_forward_chunked<{S}>",
            f"linear_scan_backward_chunked<{S}>")


def chunk_geometry(T: int, chunk_size: int | None) -> tuple[int, int, int, int]:
    """``(L, chunks, threads, items)`` of the block scan over ``T`` steps: chunk
    length ``L`` (``chunk_size``, default :data:`DEFAULT_CHUNK`, at most ``T``,
    and long enough that ``chunks ≤ 65535``, the grid's y limit), whole warps
    of ``threads`` (at most :data:`MAX_BLOCK`) and ``items`` steps per thread
    with ``threads · items ≥ L`` (the tail threads of a chunk idle)."""
    L = min(T, int(chunk_size) if chunk_size else DEFAULT_CHUNK)
    L = max(L, ceil_div(T, _launch.MAX_GRID_YZ))
    threads = min(MAX_BLOCK, round_up(ceil_div(L, ITEMS_PER_THREAD), _launch.WARP))
    return L, ceil_div(T, L), threads, ceil_div(L, threads)


def plan_forward(method: str, a: Any, b: Any, h0: Any, h: Any, chunk_size: int | None,
                 xp: Any) -> list[Launch]:
    """The launches that write ``h (B, T, R)`` from ``a, b (B, T, R)`` and
    ``h0 (B, R)`` (all of one dtype, C-contiguous); ``xp`` allocates the
    chunk buffers."""
    B, T, R = h.shape
    S = _build.ctype(h.dtype)
    i64 = np.int64
    if method == "recurrent":
        grid, block = _launch.one_thread_per_item(B * R)
        return [Launch(f"linear_scan_forward_recurrent<{S}>", grid, block, 0,
                       (a, b, h0, h, i64(B), i64(T), i64(R)))]
    launches, carry, geometry = _plan_carries(S, a, b, h0, chunk_size, False, xp)
    L, n, threads, items = geometry
    launches.append(Launch(f"linear_scan_forward_chunked<{S}>", (B * R, n), (threads,), 0,
                           (a, b, carry, h, i64(T), i64(R), i64(L), i64(items))))
    return launches


def plan_backward(method: str, a: Any, h: Any, h0: Any, dh: Any, dstate: Any, da: Any,
                  db: Any, dh0: Any, chunk_size: int | None, xp: Any) -> list[Launch]:
    """The launches that write ``da, db (B, T, R)`` and ``dh0 (B, R)``."""
    B, T, R = h.shape
    S = _build.ctype(h.dtype)
    i64 = np.int64
    if method == "recurrent":
        grid, block = _launch.one_thread_per_item(B * R)
        return [Launch(f"linear_scan_backward_recurrent<{S}>", grid, block, 0,
                       (a, h, h0, dh, dstate, da, db, dh0, i64(B), i64(T), i64(R)))]
    launches, carry, geometry = _plan_carries(S, a, dh, dstate, chunk_size, True, xp)
    L, n, threads, items = geometry
    launches.append(Launch(f"linear_scan_backward_chunked<{S}>", (B * R, n), (threads,), 0,
                           (a, h, h0, dh, carry, da, db, dh0, i64(T), i64(R), i64(L),
                            i64(items))))
    return launches


def _plan_carries(S, a, v, init, chunk_size, reverse, xp):
    # kernels 1 and 2 of the block scan: the state entering every chunk, (B, chunks, R)
    B, T, R = a.shape
    i64 = np.int64
    L, n, threads, items = geometry = chunk_geometry(T, chunk_size)
    if B * R > _launch.MAX_GRID_X:
        raise ValueError(f"a: expected at most {_launch.MAX_GRID_X} lanes B·R for "
                         f"method='chunked', got {B * R} (use method='recurrent')")
    if n == 1:  # one chunk: its carry is the initial state, (B, 1, R) == (B, R)
        return [], init, geometry
    totals_a = xp.empty((B, n, R), a.dtype)
    totals_b = xp.empty((B, n, R), a.dtype)
    carry = xp.empty((B, n, R), a.dtype)
    grid, block = _launch.one_thread_per_item(B * R)
    flag = "true" if reverse else "false"
    return [
        Launch(f"linear_scan_chunk_totals<{S}, {flag}>", (B * R, n), (threads,), 0,
               (a, v, totals_a, totals_b, i64(T), i64(R), i64(L), i64(items))),
        Launch(f"linear_scan_chunk_carries<{S}>", grid, block, 0,
               (totals_a, totals_b, init, carry, i64(B), i64(R), i64(n))),
    ], carry, geometry


# ---------------------------------------------------------------------------
# the wrappers: the definition's arguments, plumbing, launches
# ---------------------------------------------------------------------------







def _flat(xp: Any, x: Any, dtype: Any, shape: tuple[int, ...]) -> Any:
    return xp.ascontiguousarray(x.astype(dtype, copy=False)).reshape(shape)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method: the CUDA linear scan has kernels for {METHODS}, "
                         f"got {method!r}")


def forward(a: Any, b: Any, initial_state: Any, *, method: str, chunk_size: int | None,
            backend: str | None = None) -> tuple[Any, Any, None]:
    """``(h, h_T, None)`` as :func:`minirec.scan.linear.forward` returns them
    (``None``: the backward needs nothing beyond the definition's cache).

    ``h_t = a_t ⊙ h_{t-1} + b_t`` from ``h_{-1} = initial_state (B, ...)``;
    ``a``, ``b``: ``(B, T, ...)``; ``h`` has the common dtype of the three.
    ``method``: ``"recurrent"`` or ``"chunked"`` (``chunk_size`` steps per
    block; None: :data:`DEFAULT_CHUNK`). ``backend``: ``"cupy"`` (CuPy
    arrays), ``"cuda-emulated"`` (NumPy arrays), or None to follow the arrays.
    """
    _check_method(method)
    backend, xp = _launch.backend_and_xp(backend, a=a, b=b, initial_state=initial_state)
    B, T = b.shape[:2]
    R = int(np.prod(b.shape[2:], dtype=np.int64))
    dtype = np.result_type(a.dtype, b.dtype, initial_state.dtype)
    h = xp.empty((B, T, R), dtype)
    if h.size:
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        plan = plan_forward(method, _flat(xp, a, dtype, (B, T, R)),
                            _flat(xp, b, dtype, (B, T, R)),
                            _flat(xp, initial_state, dtype, (B, R)), h, chunk_size, xp)
        for launch in plan:
            _launch.run(module, launch)
    h = h.reshape(b.shape)
    return h, h[:, -1].copy(), None


def backward(a: Any, h: Any, initial_state: Any, kernel: None, dh: Any, dstate: Any, *,
             method: str, chunk_size: int | None, backend: str | None = None
             ) -> dict[str, Any]:
    """``{"a", "b", "initial_state"}`` in ``h``'s dtype (complex when ``h`` is;
    the caller takes the real part for real inputs).

    ``a``, ``h (B, T, ...)``, ``initial_state (B, ...)`` from the forward;
    ``kernel``: what :func:`forward` returned third (unused); ``dh (B, T, ...)``
    and ``dstate (B, ...)`` the upstream gradients (None: zeros). The reverse
    scan ``g_t = dh_t + conj(a_{t+1}) g_{t+1}`` runs on ``method``'s kernels
    (one fused reverse pass for ``"recurrent"``, the reversed block scan for
    ``"chunked"``), which also write ``db = g``, ``da = g ⊙ conj(h_{t-1})``,
    ``dh0 = conj(a_0) ⊙ g_0``.
    """
    _check_method(method)
    backend, xp = _launch.backend_and_xp(backend, a=a, h=h, initial_state=initial_state,
                                         dh=dh, dstate=dstate)
    B, T = h.shape[:2]
    R = int(np.prod(h.shape[2:], dtype=np.int64))
    dtype = h.dtype
    da = xp.empty((B, T, R), dtype)
    db = xp.empty((B, T, R), dtype)
    dh0 = xp.empty((B, R), dtype)
    if da.size:
        dh = xp.zeros(h.shape, dtype) if dh is None else dh
        dstate = xp.zeros(initial_state.shape, dtype) if dstate is None else dstate
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        plan = plan_backward(method, _flat(xp, a, dtype, (B, T, R)),
                             _flat(xp, h, dtype, (B, T, R)),
                             _flat(xp, initial_state, dtype, (B, R)),
                             _flat(xp, dh, dtype, (B, T, R)), _flat(xp, dstate, dtype, (B, R)),
                             da, db, dh0, chunk_size, xp)
        for launch in plan:
            _launch.run(module, launch)
    return {"a": da.reshape(h.shape), "b": db.reshape(h.shape),
            "initial_state": dh0.reshape(initial_state.shape)}
