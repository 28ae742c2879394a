"""Launch plans for the diagonal cells' fused CUDA kernels (diagonal.cu).

minGRU, minLSTM and HGRN (real gates computed from the pre-activations inside
the scan), LRU (complex state) and S4D (complex state, real read-out summed
over the modes inside the kernel). The per-cell wrappers with the
definitions' argument names are :mod:`.mingru`, :mod:`.minlstm`, :mod:`.hgrn`,
:mod:`.lru` and :mod:`.ssm` next to this module (``_backend.kernels("mingru",
backend)`` …); they run the plans computed here, the same plans for
``backend="cupy"`` (CuPy arrays, on a GPU) and ``backend="cuda-emulated"``
(NumPy arrays, the CPU emulator).

A lane is one scan of length T, ``(i, r)`` in arrays flattened to
``(B, T, R)``; a thread runs one (lane, chunk). Methods:

``recurrent``  one chunk of T steps: one launch per direction, one thread per
               lane walking over T (forward) or back over T (backward).
``chunked``    reduce-then-scan over chunks of ``chunk_size`` steps (default
               ⌈√T⌉, as the NumPy method): the chunk totals, a scan of the
               chunk carries per lane, then every chunk from its carry —
               three launches per direction, ``B·R·chunks`` threads. Worth it
               when ``B·R`` is too small to fill the GPU.

This module imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda._launch import Launch, ceil_div, round_up

SOURCE = "diagonal.cu"
METHODS = ("recurrent", "chunked")
BACKENDS = _launch.BACKENDS
# float and double kernels; LRU/S4D run their complex state as cplx<float>/cplx<double>
DTYPES = (np.float64, np.float32)
GATES = ("mingru", "minlstm", "hgrn")
THREADS = 256          # threads per block of the per-lane kernels: 8 warps (as linear_scan)
GROUP_THREADS = 128    # threads per block of S4D's kernels when a channel fits in a warp:
                       # 4 warps, up to 128 channels of one mode
MAX_MODES = _launch.MAX_THREADS  # S4D: one block per channel at most


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """The name expressions of every kernel of diagonal.cu for the real ``dtype``."""
    F = _build.ctype(dtype)
    names = [f"diagonal_chunk_carries<{S}, {rev}>" for S in (F, f"cplx<{F}>")
             for rev in ("false", "true")]
    for gate in GATES:
        G = f"Gate::{gate}"
        names += [f"gated_chunk_totals<{F}, {G}, false>", f"gated_chunk_totals<{F}, {G}, true>",
                  f"gated_forward<{F}, {G}>", f"gated_backward<{F}, {G}>"]
    for cell in ("lru", "ssm"):
        names += [f"{cell}_chunk_totals<{F}, false>", f"{cell}_chunk_totals<{F}, true>",
                  f"{cell}_forward<{F}>", f"{cell}_backward<{F}>"]
    return tuple(names)


def check_method(method: str, what: str) -> None:
    """``method`` must be one of :data:`METHODS` (the CUDA kernels of ``what``)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS} (the CUDA kernels of {what}), "
                         f"got {method!r}")


def chunks(method: str, T: int, chunk_size: int | None) -> tuple[int, int]:
    """``(L, n)``: chunk length and number of chunks. ``recurrent``: ``(T, 1)``;
    ``chunked``: ``L = chunk_size`` (default ⌈√T⌉), at most T, and long enough
    that ``n = ⌈T / L⌉ ≤ 65535`` (the grid's y limit)."""
    if method == "recurrent":
        return T, 1
    L = min(T, int(chunk_size) if chunk_size else int(np.ceil(np.sqrt(T))))
    L = max(L, ceil_div(T, _launch.MAX_GRID_YZ), 1)
    return L, ceil_div(T, L)




def module(dtype: Any, backend: str) -> Any:
    """The compiled kernels of diagonal.cu for the real ``dtype`` (built once)."""
    return _build.load(SOURCE, kernel_names(dtype), backend)


def run(plan: list[Launch], dtype: Any, backend: str) -> None:
    """Launch every kernel of ``plan`` in order."""
    mod = module(dtype, backend)
    for launch in plan:
        _launch.run(mod, launch)


def flat(xp: Any, x: Any, dtype: Any, shape: tuple[int, ...]) -> Any:
    """``x`` as a C-contiguous ``dtype`` array of ``shape`` (a copy only if needed)."""
    return xp.ascontiguousarray(x.astype(dtype, copy=False)).reshape(shape)


def _lanes(B: int, R: int, n: int) -> tuple[tuple[int, int], tuple[int]]:
    (gx,), block = _launch.one_thread_per_item(B * R, THREADS)
    return (gx, n), block


def _carries(totals: str, inputs: tuple, scalars: tuple, init: Any, B: int, R: int, n: int,
             reverse: bool, xp: Any) -> tuple[list[Launch], Any]:
    """Kernels 1 and 2 of ``chunked``: the chunk totals (kernel ``totals`` with
    arguments ``(*inputs, totals_a, totals_b, *scalars)``) and the scan of the
    carries from ``init (B, R)``. Returns the launches and the carries
    ``(B, n, R)``: ``[]`` and ``init`` itself for one chunk."""
    if n == 1:
        return [], init
    S = _build.ctype(init.dtype)
    S = {"cfloat": "cplx<float>", "cdouble": "cplx<double>"}.get(S, S)
    totals_a, totals_b, carry = (xp.empty((B, n, R), init.dtype) for _ in range(3))
    rev = "true" if reverse else "false"
    return [
        Launch(totals, *_lanes(B, R, n), 0, (*inputs, totals_a, totals_b, *scalars)),
        Launch(f"diagonal_chunk_carries<{S}, {rev}>", *_launch.one_thread_per_item(B * R), 0,
               (totals_a, totals_b, init, carry, np.int64(B), np.int64(R), np.int64(n))),
    ], carry


# ---------------------------------------------------------------------------
# minGRU, minLSTM, HGRN: arrays (B, T, R) of one real dtype, states (B, R)
# ---------------------------------------------------------------------------

def plan_gated_forward(gate: str, p: Any, q: Any, v: Any, h0: Any, h: Any, negative: bool,
                       method: str, chunk_size: int | None, xp: Any) -> list[Launch]:
    """The launches that write ``h`` from the pre-activations ``p`` (minGRU's
    ``k``, minLSTM's ``k_f``, HGRN's ``g``) and ``q`` (minLSTM's ``k_i``; for
    the others ``p`` again, unused), the values ``v`` (``h̃``; HGRN's ``x``)
    and ``h0``; ``gate`` is one of :data:`GATES`."""
    B, T, R = h.shape
    F, G = _build.ctype(h.dtype), f"Gate::{gate}"
    L, n = chunks(method, T, chunk_size)
    i64, neg = np.int64, np.int32(bool(negative))
    launches, carry = _carries(f"gated_chunk_totals<{F}, {G}, false>", (p, q, v, v),
                               (neg, i64(B), i64(T), i64(R), i64(L)), h0, B, R, n, False, xp)
    return launches + [Launch(f"gated_forward<{F}, {G}>", *_lanes(B, R, n), 0,
                              (p, q, v, carry, h, neg, i64(B), i64(T), i64(R), i64(L)))]


def plan_gated_backward(gate: str, p: Any, q: Any, v: Any, h: Any, h0: Any, dh: Any,
                        dstate: Any, dp: Any, dq: Any, dv: Any, dh0: Any, negative: bool,
                        method: str, chunk_size: int | None, xp: Any) -> list[Launch]:
    """The launches that write ``dp``, ``dq`` (minLSTM; else ``dp`` again,
    unwritten), ``dv`` ``(B, T, R)`` and ``dh0 (B, R)`` from the forward's
    arrays, ``dh (B, T, R)`` and ``dstate (B, R)``."""
    B, T, R = h.shape
    F, G = _build.ctype(h.dtype), f"Gate::{gate}"
    L, n = chunks(method, T, chunk_size)
    i64, neg = np.int64, np.int32(bool(negative))
    launches, carry = _carries(f"gated_chunk_totals<{F}, {G}, true>", (p, q, v, dh),
                               (neg, i64(B), i64(T), i64(R), i64(L)), dstate, B, R, n, True, xp)
    return launches + [Launch(f"gated_backward<{F}, {G}>", *_lanes(B, R, n), 0,
                              (p, q, v, h, h0, dh, carry, dp, dq, dv, dh0, neg, i64(B),
                               i64(T), i64(R), i64(L)))]


# ---------------------------------------------------------------------------
# LRU: lam (N,), gamma (N,), Bx/h/dh/gg (B, T, N), states (B, N); complex but gamma
# ---------------------------------------------------------------------------

def plan_lru_forward(lam: Any, gamma: Any, Bx: Any, h0: Any, h: Any, method: str,
                     chunk_size: int | None, xp: Any) -> list[Launch]:
    """The launches that write ``h`` (``h_t = λ h_{t−1} + γ Bx_t``)."""
    B, T, R = h.shape
    F = _build.ctype(gamma.dtype)
    L, n = chunks(method, T, chunk_size)
    i64 = np.int64
    scalars = (i64(B), i64(T), i64(R), i64(L))
    launches, carry = _carries(f"lru_chunk_totals<{F}, false>", (lam, gamma, Bx, Bx), scalars,
                               h0, B, R, n, False, xp)
    return launches + [Launch(f"lru_forward<{F}>", *_lanes(B, R, n), 0,
                              (lam, gamma, Bx, carry, h, *scalars))]


def plan_lru_backward(lam: Any, gamma: Any, Bx: Any, h: Any, h0: Any, dh: Any, dstate: Any,
                      gg: Any, dlam: Any, dgamma: Any, dh0: Any, method: str,
                      chunk_size: int | None, xp: Any) -> list[Launch]:
    """The launches that write ``gg = γ g (B, T, N)``, ``dh0 (B, N)`` and the
    per-(lane, chunk) sums ``dlam``, ``dgamma`` ``(B, n, N)`` (``n`` from
    :func:`chunks`)."""
    B, T, R = h.shape
    F = _build.ctype(gamma.dtype)
    L, n = chunks(method, T, chunk_size)
    i64 = np.int64
    scalars = (i64(B), i64(T), i64(R), i64(L))
    launches, carry = _carries(f"lru_chunk_totals<{F}, true>", (lam, gamma, Bx, dh), scalars,
                               dstate, B, R, n, True, xp)
    return launches + [Launch(f"lru_backward<{F}>", *_lanes(B, R, n), 0,
                              (lam, gamma, Bx, h, h0, dh, carry, gg, dlam, dgamma, dh0,
                               *scalars))]


# ---------------------------------------------------------------------------
# S4D: Abar, Bbar, C (D, N) complex, D (D,), x/y/dy/dx (B, T, D) real, h (B, T, D, N)
# ---------------------------------------------------------------------------

def group_width(N: int) -> int:
    """Threads per channel of S4D's kernels: ``N`` rounded up to a power of two
    (N ≤ 32: a channel inside one warp) or to whole warps (one block)."""
    if N > MAX_MODES:
        raise ValueError(f"N: expected at most {MAX_MODES} modes per channel for the CUDA S4D "
                         f"kernels (a channel's modes share one thread block), got N={N}")
    return 1 << (N - 1).bit_length() if N <= _launch.WARP else round_up(N, _launch.WARP)


def _groups(B: int, D: int, P: int, n: int) -> tuple[tuple[int, int], tuple[int]]:
    threads = B * D * P
    block = P if P > _launch.WARP else min(GROUP_THREADS, round_up(threads, _launch.WARP))
    return (ceil_div(threads, block), n), (block,)


def plan_ssm_forward(Abar: Any, Bbar: Any, C: Any, D: Any, x: Any, h0: Any, h: Any, y: Any,
                     method: str, chunk_size: int | None, xp: Any) -> list[Launch]:
    """The launches that write ``h (B, T, D, N)`` and ``y (B, T, D)``."""
    B, T, Dn, N = h.shape
    F = _build.ctype(x.dtype)
    L, n = chunks(method, T, chunk_size)
    P = group_width(N)
    i64 = np.int64
    launches, carry = _carries(f"ssm_chunk_totals<{F}, false>", (Abar, Bbar, C, x, x),
                               (i64(B), i64(T), i64(Dn), i64(N), i64(L)), h0.reshape(B, Dn * N),
                               B, Dn * N, n, False, xp)
    return launches + [Launch(f"ssm_forward<{F}>", *_groups(B, Dn, P, n), 0,
                              (Abar, Bbar, C, D, x, carry, h, y, i64(B), i64(T), i64(Dn), i64(N),
                               i64(P), i64(L)))]


def plan_ssm_backward(Abar: Any, Bbar: Any, C: Any, D: Any, x: Any, h: Any, h0: Any, dy: Any,
                      dstate: Any, dx: Any, dAbar: Any, dBbar: Any, dC: Any, dh0: Any,
                      method: str, chunk_size: int | None, xp: Any) -> list[Launch]:
    """The launches that write ``dx (B, T, D)``, ``dh0 (B, D, N)`` and the
    per-(lane, chunk) sums ``dAbar``, ``dBbar``, ``dC`` ``(B, n, D, N)``."""
    B, T, Dn, N = h.shape
    F = _build.ctype(x.dtype)
    L, n = chunks(method, T, chunk_size)
    P = group_width(N)
    i64 = np.int64
    launches, carry = _carries(f"ssm_chunk_totals<{F}, true>", (Abar, Bbar, C, x, dy),
                               (i64(B), i64(T), i64(Dn), i64(N), i64(L)),
                               dstate.reshape(B, Dn * N), B, Dn * N, n, True, xp)
    return launches + [Launch(f"ssm_backward<{F}>", *_groups(B, Dn, P, n), 0,
                              (Abar, Bbar, C, D, x, h, h0, dy, carry, dx, dAbar, dBbar, dC, dh0,
                               i64(B), i64(T), i64(Dn), i64(N), i64(P), i64(L)))]


# ---------------------------------------------------------------------------
# the gated cells' plumbing, shared by the wrappers mingru.py, minlstm.py, hgrn.py
# ---------------------------------------------------------------------------

def gated_forward(gate: str, arrays: dict[str, Any], negative: bool, method: str,
                  chunk_size: int | None, backend: str | None) -> tuple[tuple, Any, str]:
    """Run the fused forward of ``gate`` on ``arrays`` (by the definition's names,
    in the order pre-activations (one, or minLSTM's two), values, initial state;
    each ``(B, T, H)`` but the state ``(B, H)``).

    Returns ``((p, q, v, h0), h, backend)``: the inputs as the kernels took
    them (C-contiguous, the common dtype; ``q`` is ``p`` but for minLSTM), the
    states ``h (B, T, H)`` and the resolved backend."""
    check_method(method, gate)
    backend, xp = _launch.backend_and_xp(backend, **arrays)
    *pre, v, h0 = arrays.values()
    B, T, R = v.shape
    dtype = np.result_type(*(a.dtype for a in arrays.values()))
    p, q, v = (flat(xp, a, dtype, (B, T, R)) for a in (pre[0], pre[-1], v))
    h0 = flat(xp, h0, dtype, (B, R))
    h = xp.empty((B, T, R), dtype)
    if h.size:
        run(plan_gated_forward(gate, p, q, v, h0, h, negative, method, chunk_size, xp), dtype,
            backend)
    return (p, q, v, h0), h, backend


def gated_backward(gate: str, inputs: tuple, h: Any, dh: Any, dstate: Any, negative: bool,
                   method: str, chunk_size: int | None, backend: str | None) -> tuple:
    """The reverse pass of ``gate``: ``inputs`` = ``(p, q, v, h0)`` and ``h`` as
    :func:`gated_forward` returned them, ``dh (B, T, H)`` and ``dstate (B, H)``
    the upstream gradients (None: zeros). Returns ``(dp, dq, dv, dh0)`` (``dq``
    is ``None`` but for minLSTM)."""
    check_method(method, gate)
    p, q, v, h0 = inputs
    backend, xp = _launch.backend_and_xp(backend, h=h, dh=dh, dstate=dstate)
    dtype = h.dtype
    dh = xp.zeros(h.shape, dtype) if dh is None else flat(xp, dh, dtype, h.shape)
    dstate = xp.zeros(h0.shape, dtype) if dstate is None else flat(xp, dstate, dtype, h0.shape)
    dp, dv = xp.empty(h.shape, dtype), xp.empty(h.shape, dtype)
    dq = xp.empty(h.shape, dtype) if gate == "minlstm" else dp  # else never written
    dh0 = xp.empty(h0.shape, dtype)
    if h.size:
        run(plan_gated_backward(gate, p, q, v, h, h0, dh, dstate, dp, dq, dv, dh0, negative,
                                method, chunk_size, xp), dtype, backend)
    return dp, (dq if gate == "minlstm" else None), dv, dh0
