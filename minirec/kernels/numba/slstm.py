"""``backend="numba"`` for :mod:`minirec.cells.slstm`: the definition's signature
and return structure, reached through ``_backend.kernels("slstm", "numba")``.

    a = x W_ih^T + b                                  one GEMM over all T      (B, T, 4H)
    a_t += blockdiag(R) h_{t-1}; gates; c, n, m, h    the time loop, slstm_forward
    da_t = ∂L/∂a_t                                    the reverse loop, slstm_backward
    dW_ih, db, dx, dR                                 GEMMs over all T

Tested against ``minirec.cells.slstm`` with ``backend="numpy"`` (tests/test_contract.py,
tests/cells/test_slstm.py). The ``@njit`` loops run ``prange`` over the batch
(rows are independent recurrences) and, inside a row, the time loop with the
heads one after the other: head ``h``'s four ``(dh, dh)`` blocks of ``R`` are
read once per step, contiguously (``RT[h]`` below, ``4·dh²`` numbers: 2 KiB in
float64 at dh = 8, 128 KiB at dh = 64 — a head's blocks stay in L1/L2 while
the head is worked on). The recurrent product is a sum of rows
(``acc[g·dh + j] += h_{t-1}[k] RT[h, k, g·dh + j]``): the inner loop runs over
contiguous memory and vectorises without ``fastmath``. Every constant is of the
arrays' dtype (float32 computes in float32); ``log σ(x) = −softplus(−x)`` and
σ, tanh come from :mod:`minirec.kernels.numba._math`.

NaN propagates as in the definition: ``max`` is NaN if either side is (as
``np.maximum``), the branch and clamp tests are the definition's comparisons,
and the ``[·]`` selections of the backward are selections.

This module imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from minirec.kernels import _dense
from minirec.kernels.numba._blas import blas_single_thread
from minirec.kernels.numba._math import sigmoid, softplus, tanh


class Cache(NamedTuple):
    """The cell's ``cache.kernel``: what :func:`backward` needs."""

    x: np.ndarray    # (B, T, D) the input, as given
    hs: np.ndarray   # (B, T, H) every h_t (the returned y)
    cs: np.ndarray   # (B, T, H) every c_t
    ns: np.ndarray   # (B, T, H) every n_t
    ms: np.ndarray   # (B, T, H) every m_t
    a: np.ndarray    # (B, T, 4H) the pre-activations [a_i | a_f | a_z | a_o] of every step
    state0: tuple    # (h0, c0, n0, m0), each (B, H), contiguous, computation dtype


@njit(cache=True, error_model="numpy", inline="always")
def _nan_max(p, q):
    """``max(p, q)``, NaN if either is NaN (as ``np.maximum``)."""
    if p != p or p >= q:
        return p
    return q  # q > p, or q is NaN


@njit(cache=True, error_model="numpy", parallel=True)
def slstm_forward(a, RT, h0, c0, n0, m0, hs, cs, ns, ms):
    """``a (B, T, 4H)``: on entry ``x W_ih^T + b``, on exit the pre-activations
    ``a_t`` (the recurrent part added). ``RT (NH, dh, 4·dh)``: ``RT[h, k, g·dh + j] =
    R[g, h, j, k]``. Writes ``hs, cs, ns, ms (B, T, H)``."""
    B, T, G = a.shape
    NH, dh = RT.shape[0], RT.shape[1]
    H = NH * dh
    zero = a.dtype.type(0)
    for b in prange(B):
        acc = np.empty(4 * dh, a.dtype)
        for t in range(T):
            for hd in range(NH):
                for g in range(4):
                    for j in range(dh):
                        acc[g * dh + j] = a[b, t, g * H + hd * dh + j]
                for k in range(dh):  # acc += h_{t-1}[head] RT[head], a sum of rows
                    coef = h0[b, hd * dh + k] if t == 0 else hs[b, t - 1, hd * dh + k]
                    for q in range(4 * dh):
                        acc[q] += coef * RT[hd, k, q]
                for j in range(dh):
                    u = hd * dh + j
                    if t == 0:
                        c_prev, n_prev, m_prev = c0[b, u], n0[b, u], m0[b, u]
                    else:
                        c_prev, n_prev, m_prev = cs[b, t - 1, u], ns[b, t - 1, u], ms[b, t - 1, u]
                    a_i, a_f = acc[j], acc[dh + j]
                    a_z, a_o = acc[2 * dh + j], acc[3 * dh + j]
                    for g in range(4):
                        a[b, t, g * H + u] = acc[g * dh + j]
                    lfm = m_prev - softplus(-a_f)  # m_{t-1} + log σ(a_f)
                    m = a_i if n_prev == 0 else _nan_max(a_i, lfm)
                    u_i, u_f = a_i - m, lfm - m
                    i = np.exp(zero if u_i > zero else u_i)  # min(exp(u_i), 1); NaN stays
                    f = np.exp(zero if u_f > zero else u_f)
                    z = tanh(a_z)
                    o = sigmoid(a_o)
                    c = f * c_prev + i * z
                    n = f * n_prev + i
                    cs[b, t, u] = c
                    ns[b, t, u] = n
                    ms[b, t, u] = m
                    hs[b, t, u] = o * c / n


@njit(cache=True, error_model="numpy", parallel=True)
def slstm_backward(a, R, h0, c0, n0, m0, hs, cs, ns, ms, dy, dstate_h, dstate_c, dstate_n,
                   dstate_m, da, dh0, dc0, dn0, dm0):
    """Reverse loop. ``R (NH, 4·dh, dh)``: ``R[h, g·dh + j, k] = R_param[g, h, j, k]``.
    Writes ``da (B, T, 4H)`` = ∂L/∂a_t and ``dh0, dc0, dn0, dm0 (B, H)``; the
    ``dstate_*`` are the four parts of ``dstate``."""
    B, T, G = a.shape
    NH, dh = R.shape[0], R.shape[2]
    H = NH * dh
    zero, one = a.dtype.type(0), a.dtype.type(1)
    for b in prange(B):
        dh_rec = np.empty(H, a.dtype)   # ∂L/∂h_t through the recurrence (dstate at T-1)
        dc = np.empty(H, a.dtype)
        dn = np.empty(H, a.dtype)
        dm = np.empty(H, a.dtype)
        da_head = np.empty(4 * dh, a.dtype)
        for u in range(H):
            dh_rec[u] = dstate_h[b, u]
            dc[u] = dstate_c[b, u]
            dn[u] = dstate_n[b, u]
            dm[u] = dstate_m[b, u]
        for t in range(T - 1, -1, -1):
            for hd in range(NH):
                for j in range(dh):
                    u = hd * dh + j
                    if t == 0:
                        c_prev, n_prev, m_prev = c0[b, u], n0[b, u], m0[b, u]
                    else:
                        c_prev, n_prev, m_prev = cs[b, t - 1, u], ns[b, t - 1, u], ms[b, t - 1, u]
                    a_i, a_f = a[b, t, u], a[b, t, H + u]
                    a_z, a_o = a[b, t, 2 * H + u], a[b, t, 3 * H + u]
                    c, n, m, h = cs[b, t, u], ns[b, t, u], ms[b, t, u], hs[b, t, u]
                    # the forward's gates again, from the cached a and states
                    lfm = m_prev - softplus(-a_f)
                    take_i = n_prev == 0 or a_i >= lfm
                    u_i, u_f = a_i - m, lfm - m
                    i = np.exp(zero if u_i > zero else u_i)
                    f = np.exp(zero if u_f > zero else u_f)
                    z = tanh(a_z)
                    o = sigmoid(a_o)
                    dh_t = dh_rec[u] + dy[b, t, u]
                    # through h = o c / n
                    dc_t = dc[u] + dh_t * o / n
                    dn_t = dn[u] - dh_t * h / n
                    da_o = dh_t * c / n * (o * (one - o))
                    # through c = f c_{t-1} + i z and n = f n_{t-1} + i
                    di = dc_t * z + dn_t
                    df = dc_t * c_prev + dn_t * n_prev
                    da_z = dc_t * i * (one - z * z)
                    dc[u] = dc_t * f
                    dn[u] = dn_t * f
                    # through the clamped exponentials, then m = a_i (take_i) or lfm
                    du_i = zero if u_i > zero else di * i
                    du_f = zero if u_f > zero else df * f
                    dm_t = dm[u] - du_i - du_f
                    da_i = du_i + dm_t if take_i else du_i
                    dlfm = du_f if take_i else du_f + dm_t
                    dm[u] = dlfm                       # through lfm = m_{t-1} + log σ(a_f)
                    da_f = dlfm * sigmoid(-a_f)
                    da[b, t, u] = da_i
                    da[b, t, H + u] = da_f
                    da[b, t, 2 * H + u] = da_z
                    da[b, t, 3 * H + u] = da_o
            for hd in range(NH):  # ∂L/∂h_{t-1}[head] = Σ_{g,j} da[g, head, j] R[head, g·dh + j]
                for g in range(4):
                    for j in range(dh):
                        da_head[g * dh + j] = da[b, t, g * H + hd * dh + j]
                for k in range(dh):
                    dh_rec[hd * dh + k] = zero
                for q in range(4 * dh):
                    coef = da_head[q]
                    for k in range(dh):
                        dh_rec[hd * dh + k] += coef * R[hd, q, k]
        for u in range(H):
            dh0[b, u] = dh_rec[u]
            dc0[b, u] = dc[u]
            dn0[b, u] = dn[u]
            dm0[b, u] = dm[u]


# ---------------------------------------------------------------------------
# the wrapper: the definition's signature, plumbing here
# ---------------------------------------------------------------------------

def recurrent_weight_grad(da: np.ndarray, h_prev: np.ndarray, NH: int, xp=np) -> np.ndarray:
    """``dR[g, h, j, k] = Σ_{B,T} da[·, g·H + h·dh + j] h_prev[·, h·dh + k]`` as one
    batched GEMM over the heads and gates → ``(4, NH, dh, dh)``."""
    B, T, G = da.shape
    H = G // 4
    dh = H // NH
    N = B * T
    da4 = da.reshape(N, 4, NH, dh).transpose(1, 2, 3, 0)   # (4, NH, dh, N)
    hp = h_prev.reshape(N, NH, dh).transpose(1, 0, 2)       # (NH, N, dh)
    return xp.matmul(da4, hp[None])


def forward(params: dict, x: np.ndarray, state0: tuple) -> tuple[np.ndarray, tuple, Cache]:
    """``y (B, T, H)``, the final ``(h, c, n, m)`` and the kernel :class:`Cache`, from
    validated ``params``, ``x (B, T, D)`` and ``state0`` (four ``(B, H)`` arrays)."""
    dtype = np.result_type(x, *params.values())
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    R = p["R"]
    _, NH, dh, _ = R.shape
    B, T, _ = x.shape
    H = NH * dh
    with blas_single_thread():
        a = _dense.project(x.astype(dtype, copy=False), p["W_ih"], p["b"])  # (B, T, 4H)
        RT = np.ascontiguousarray(R.transpose(1, 3, 0, 2).reshape(NH, dh, 4 * dh))
        s0 = tuple(np.ascontiguousarray(s, dtype=dtype) for s in state0)
        hs, cs, ns, ms = (np.empty((B, T, H), dtype) for _ in range(4))
        slstm_forward(a, RT, *s0, hs, cs, ns, ms)
    state = tuple(s[:, -1].copy() for s in (hs, cs, ns, ms))
    return hs, state, Cache(x, hs, cs, ns, ms, a, s0)


def backward(params: dict, cache: Cache, dy: np.ndarray, dstate: tuple) -> dict:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0" = (dh0, dc0, dn0,
    dm0)``; ``dy (B, T, H)`` and every part of ``dstate`` are arrays (zeros, not ``None``)."""
    hs, a, s0 = cache.hs, cache.a, cache.state0
    dt = hs.dtype
    B, T, H = hs.shape
    R = params["R"].astype(dt, copy=False)
    _, NH, dh, _ = R.shape
    with blas_single_thread():
        Rh = np.ascontiguousarray(R.transpose(1, 0, 2, 3).reshape(NH, 4 * dh, dh))
        da = np.empty_like(a)
        d0 = tuple(np.empty((B, H), dt) for _ in range(4))
        slstm_backward(a, Rh, *s0, hs, cache.cs, cache.ns, cache.ms,
                       np.ascontiguousarray(dy, dtype=dt),
                       *(np.ascontiguousarray(d, dtype=dt) for d in dstate), da, *d0)
        x = cache.x.astype(dt, copy=False)
        da2 = da.reshape(B * T, 4 * H)
        h_prev = _dense.previous_states(s0[0], hs)
        grads = {"W_ih": da2.T @ x.reshape(B * T, x.shape[2]),
                 "R": recurrent_weight_grad(da, h_prev, NH),
                 "b": da2.sum(axis=0),
                 "x": (da2 @ params["W_ih"].astype(dt, copy=False)).reshape(x.shape)}
    grads["state0"] = d0
    return grads
