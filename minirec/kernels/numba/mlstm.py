"""Numba kernels for the mLSTM (xLSTM's matrix-memory cell), ``method="recurrent"``.

Definition, per batch row b and head h, state ``(C (K, V), n (K), m)``:

    lf_t = log σ(f_t),   x_t = lf_t + m_{t−1},   m_t = max(x_t, i_t)
    a_t  = e^{x_t − m_t},   b_t = e^{i_t − m_t}
    C_t  = a_t C_{t−1} + b_t k_t v_t^T,   n_t = a_t n_{t−1} + b_t k_t
    q̃_t  = scale · q_t,   d_t = n_t · q̃_t,   den_t = max(|d_t|, e^{−m_t})
    h_t  = C_t^T q̃_t / den_t

Tested against :func:`minirec.ops.mlstm.run` / ``run_backward`` with
``backend="numpy", method="recurrent"`` (tests/kernels/test_numba_matrix.py);
the backward follows :func:`minirec.ops.mlstm.recurrent.step_backward` exactly
(ties of the normaliser's max take the ``|d|`` branch, ties of the stabiliser's
max the forget branch; ``e^{−m}`` may overflow to ``inf``: then ``h = 0`` and
zero gradients, the limit). With ``(dC, dn, dm)`` = ∂L/∂(C_t, n_t, m_t):

    dnum = dh / den;  hd = Σ_V dh ⊙ h;  |d| ≥ e^{−m}: dd = −hd / d,  else dm += hd
    dC += q̃ dnum^T;  dn += dd q̃;  dq = scale · (C_t dnum + dd n_t)
    da = Σ dC ⊙ C_{t−1} + dn · n_{t−1};  db = k^T dC v + dn · k
    dk = b (dC v + dn);  dv = b dC^T k;  dC ← a dC;  dn ← a dn
    dlf = a da;  dm_{t−1} = a da;  di = b db;  dm̄ = dm − a da − b db
    x ≥ i: dlf += dm̄, dm_{t−1} += dm̄;  else di += dm̄;   df = dlf · σ(−f)

One fused pass over time per (b, h) forward and one fused reverse pass
backward (one sweep over ``C`` per step), ``prange`` over the ``B·H`` rows. The
forward keeps ``(C, n, m)`` every ``chunk_size`` steps (not all T states) and
the outputs ``h`` with ``d, den (B, T, H)``; the backward recomputes one
segment of states at a time from its checkpoint with the forward's operations.
``fastmath`` is off; ``scale`` and 1 arrive in the arrays' dtype. This module
imports nothing from the rest of minirec except :mod:`minirec.kernels.numba._math`
and :mod:`minirec.kernels.numba._heads`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from minirec.kernels.numba._heads import check_method
from minirec.kernels.numba._heads import contiguous as _c
from minirec.kernels.numba._math import sigmoid, softplus

METHODS = ("recurrent",)


@njit(cache=True, error_model="numpy", inline="always")
def _max(x, y):
    """``np.maximum(x, y)``: NaN if either is NaN, ties keep ``x``."""
    if x >= y or x != x:
        return x
    return y


@njit(cache=True, error_model="numpy", inline="always")
def _gates(i_t, f_t, m_prev):
    """``(x_t, m_t, a_t, b_t)`` of one step (module docstring)."""
    x = m_prev - softplus(-f_t)          # log σ(f) = −softplus(−f)
    m = _max(x, i_t)
    return x, m, np.exp(x - m), np.exp(i_t - m)


@njit(cache=True, error_model="numpy")
def _rec_forward_row(q, k, v, i, f, C0, n0, m0, scale, one, seg, h_out, d_out, den_out, C_T, n_T,
                     m_T, C_ck, n_ck, m_ck, b, hh):
    """One (batch row, head) of :func:`_rec_forward`."""
    B, T, H, K = q.shape
    Vd = v.shape[3]
    zero = one - one
    C = C0[b, hh].copy()
    n = n0[b, hh].copy()
    m = m0[b, hh]
    vt = np.empty(Vd, q.dtype)
    acc = np.empty(Vd, q.dtype)
    for t in range(T):
        if t % seg == 0:
            C_ck[b, hh, t // seg] = C
            n_ck[b, hh, t // seg] = n
            m_ck[b, hh, t // seg] = m
        _, m, a, bb = _gates(i[b, t, hh], f[b, t, hh], m)
        for j in range(Vd):
            vt[j] = v[b, t, hh, j]
            acc[j] = zero
        d = zero
        for r in range(K):
            kr = k[b, t, hh, r]
            qs = scale * q[b, t, hh, r]
            for j in range(Vd):
                c = a * C[r, j] + bb * (kr * vt[j])
                C[r, j] = c
                acc[j] += qs * c
            nr = a * n[r] + bb * kr
            n[r] = nr
            d += nr * qs
        den = _max(abs(d), np.exp(-m))
        d_out[b, t, hh] = d
        den_out[b, t, hh] = den
        for j in range(Vd):
            h_out[b, t, hh, j] = acc[j] / den
    C_T[b, hh] = C
    n_T[b, hh] = n
    m_T[b, hh] = m


@njit(cache=True, error_model="numpy", parallel=True)
def _rec_forward(q, k, v, i, f, C0, n0, m0, scale, one, seg,
                 h_out, d_out, den_out, C_T, n_T, m_T, C_ck, n_ck, m_ck):
    B, H = q.shape[0], q.shape[2]
    for job in prange(B * H):
        _rec_forward_row(q, k, v, i, f, C0, n0, m0, scale, one, seg, h_out, d_out, den_out, C_T,
                         n_T, m_T, C_ck, n_ck, m_ck, job // H, job % H)


@njit(cache=True, error_model="numpy")
def _rec_backward_row(q, k, v, i, f, C_ck, n_ck, m_ck, h_out, d_out, den_out, dh, dC_T, dn_T, dm_T,
                      scale, one, seg, dq, dk, dv, di, df, dC0, dn0, dm0, b, hh):
    """One (batch row, head) of :func:`_rec_backward`."""
    B, T, H, K = q.shape
    Vd = v.shape[3]
    n_seg = C_ck.shape[2]
    zero = one - one
    dC = dC_T[b, hh].copy()
    dn = dn_T[b, hh].copy()
    dm = dm_T[b, hh]
    Cbuf = np.empty((seg + 1, K, Vd), q.dtype)
    nbuf = np.empty((seg + 1, K), q.dtype)
    mbuf = np.empty(seg + 1, q.dtype)
    vt = np.empty(Vd, q.dtype)
    dnum = np.empty(Vd, q.dtype)
    dvt = np.empty(Vd, q.dtype)
    for s in range(n_seg - 1, -1, -1):
        t0 = s * seg
        t1 = min(T, t0 + seg)
        # recompute the states of the segment exactly as the forward did
        Cbuf[0] = C_ck[b, hh, s]
        nbuf[0] = n_ck[b, hh, s]
        mbuf[0] = m_ck[b, hh, s]
        for t in range(t0, t1):
            l = t - t0
            _, m, a, bb = _gates(i[b, t, hh], f[b, t, hh], mbuf[l])
            mbuf[l + 1] = m
            for r in range(K):
                kr = k[b, t, hh, r]
                for j in range(Vd):
                    Cbuf[l + 1, r, j] = a * Cbuf[l, r, j] + bb * (kr * v[b, t, hh, j])
                nbuf[l + 1, r] = a * nbuf[l, r] + bb * kr
        for t in range(t1 - 1, t0 - 1, -1):
            l = t - t0
            i_t = i[b, t, hh]
            f_t = f[b, t, hh]
            x, m, a, bb = _gates(i_t, f_t, mbuf[l])
            # through h = num / den, den = max(|d|, e^{−m}), d = n · q̃
            den = den_out[b, t, hh]
            d = d_out[b, t, hh]
            hd = zero
            for j in range(Vd):
                g = dh[b, t, hh, j]
                dnum[j] = g / den
                hd += g * h_out[b, t, hh, j]
                vt[j] = v[b, t, hh, j]
                dvt[j] = zero
            if abs(d) >= np.exp(-m):
                dd = -hd / d
            else:
                dd = zero
                dm = dm + hd
            da = zero
            db = zero
            for r in range(K):
                qs = scale * q[b, t, hh, r]
                kr = k[b, t, hh, r]
                dqs = zero
                dCv = zero
                for j in range(Vd):
                    dc = dC[r, j] + qs * dnum[j]
                    dqs += Cbuf[l + 1, r, j] * dnum[j]
                    da += dc * Cbuf[l, r, j]
                    dCv += dc * vt[j]
                    dvt[j] += dc * kr
                    dC[r, j] = a * dc
                dnr = dn[r] + dd * qs
                dq[b, t, hh, r] = scale * (dqs + dd * nbuf[l + 1, r])
                da += dnr * nbuf[l, r]
                db += kr * dCv + dnr * kr
                dk[b, t, hh, r] = bb * (dCv + dnr)
                dn[r] = a * dnr
            for j in range(Vd):
                dv[b, t, hh, j] = bb * dvt[j]
            # through a = e^{x − m}, b = e^{i − m} and m = max(x, i)
            dlf = a * da
            dm_prev = a * da
            di_t = bb * db
            dm_bar = dm - a * da - bb * db
            if x >= i_t:
                dlf += dm_bar
                dm_prev += dm_bar
            else:
                di_t += dm_bar
            di[b, t, hh] = di_t
            df[b, t, hh] = dlf * sigmoid(-f_t)
            dm = dm_prev
    dC0[b, hh] = dC
    dn0[b, hh] = dn
    dm0[b, hh] = dm


@njit(cache=True, error_model="numpy", parallel=True)
def _rec_backward(q, k, v, i, f, C_ck, n_ck, m_ck, h_out, d_out, den_out, dh,
                  dC_T, dn_T, dm_T, scale, one, seg, dq, dk, dv, di, df, dC0, dn0, dm0):
    """BPTT (module docstring) segment by segment from the checkpoints."""
    B, H = q.shape[0], q.shape[2]
    for job in prange(B * H):
        _rec_backward_row(q, k, v, i, f, C_ck, n_ck, m_ck, h_out, d_out, den_out, dh, dC_T, dn_T,
                          dm_T, scale, one, seg, dq, dk, dv, di, df, dC0, dn0, dm0, job // H,
                          job % H)


class MLSTMKernelCache(NamedTuple):
    """What :func:`backward` needs: ``method``, the contiguous inputs ``q, k, v,
    i, f``, ``scale``, ``chunk_size``, the checkpoints ``C_ck (B, H, S, K, V)``,
    ``n_ck (B, H, S, K)``, ``m_ck (B, H, S)`` (the state before steps 0,
    chunk_size, …; ``S = ⌈T/chunk_size⌉``), the outputs ``h (B, T, H, V)`` and
    ``d, den (B, T, H)``."""

    method: str
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    i: np.ndarray
    f: np.ndarray
    scale: float
    chunk_size: int
    C_ck: np.ndarray
    n_ck: np.ndarray
    m_ck: np.ndarray
    h: np.ndarray
    d: np.ndarray
    den: np.ndarray


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, i: np.ndarray, f: np.ndarray,
            initial_state: tuple, *, scale: float, method: str = "recurrent",
            chunk_size: int = 64) -> tuple[np.ndarray, tuple, MLSTMKernelCache]:
    """The mLSTM forward (module docstring), in ``q``'s dtype.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``.
        i, f: ``(B, T, H)`` input and forget gate pre-activations.
        initial_state: ``(C0 (B, H, K, V), n0 (B, H, K), m0 (B, H))``.
        scale: the factor of ``q̃ = scale · q``.
        method: ``"recurrent"``.
        chunk_size: the distance between two stored states.

    Returns:
        ``h (B, T, H, V)``, the final state ``(C, n, m)`` and the cache.
    """
    seg = check_method("mLSTM", METHODS, method, chunk_size)
    dtype = q.dtype
    B, T, H, K = q.shape
    Vd = v.shape[3]
    q, k, v, i, f = (_c(x, dtype) for x in (q, k, v, i, f))
    C0, n0, m0 = (_c(x, dtype) for x in initial_state)
    S = max(1, -(-T // seg))
    h = np.empty((B, T, H, Vd), dtype)
    d = np.empty((B, T, H), dtype)
    den = np.empty((B, T, H), dtype)
    C_T, n_T, m_T = np.empty_like(C0), np.empty_like(n0), np.empty_like(m0)
    C_ck = np.empty((B, H, S, K, Vd), dtype)
    n_ck = np.empty((B, H, S, K), dtype)
    m_ck = np.empty((B, H, S), dtype)
    if T == 0:
        C_T[...], n_T[...], m_T[...] = C0, n0, m0
        C_ck[:, :, 0], n_ck[:, :, 0], m_ck[:, :, 0] = C0, n0, m0
    else:
        with np.errstate(over="ignore"):
            _rec_forward(q, k, v, i, f, C0, n0, m0, dtype.type(scale), dtype.type(1), seg,
                         h, d, den, C_T, n_T, m_T, C_ck, n_ck, m_ck)
    cache = MLSTMKernelCache(method, q, k, v, i, f, scale, seg, C_ck, n_ck, m_ck, h, d, den)
    return h, (C_T, n_T, m_T), cache


def backward(cache: MLSTMKernelCache, do: np.ndarray | None, dstate: tuple | None) -> dict:
    """The mLSTM backward (module docstring); ``do``/``dstate`` ``None`` (or a
    ``None`` part of ``dstate``) mean zeros.

    Returns ``{"q", "k", "v", "i", "f", "initial_state": (dC0, dn0, dm0)}`` in
    the forward's shapes and dtype."""
    c = cache
    dtype = c.q.dtype
    B, T, H, K = c.q.shape
    Vd = c.v.shape[3]
    do = np.zeros((B, T, H, Vd), dtype) if do is None else _c(do, dtype)
    shapes = ((B, H, K, Vd), (B, H, K), (B, H))
    parts = (None, None, None) if dstate is None else tuple(dstate)
    dC_T, dn_T, dm_T = (np.zeros(s, dtype) if x is None else _c(x, dtype)
                        for x, s in zip(parts, shapes))
    dq, dk, dv = np.empty_like(c.q), np.empty_like(c.k), np.empty_like(c.v)
    di, df = np.empty_like(c.i), np.empty_like(c.f)
    dC0, dn0, dm0 = (np.empty(s, dtype) for s in shapes)
    if T == 0:
        dC0[...], dn0[...], dm0[...] = dC_T, dn_T, dm_T
    else:
        _rec_backward(c.q, c.k, c.v, c.i, c.f, c.C_ck, c.n_ck, c.m_ck, c.h, c.d, c.den, do,
                      dC_T, dn_T, dm_T, dtype.type(c.scale), dtype.type(1), c.chunk_size,
                      dq, dk, dv, di, df, dC0, dn0, dm0)
    return {"q": dq, "k": dk, "v": dv, "i": di, "f": df, "initial_state": (dC0, dn0, dm0)}
