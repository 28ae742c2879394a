"""Numba kernels for the causal softmax scan (Aaren's core), ``method="recurrent"``.

Definition, per (batch, head), from the state ``(m, u, w)`` after ``t − 1`` tokens:

    m_t = max(m_{t−1}, s_t),  α = e^{m_{t−1} − m_t},  β = e^{s_t − m_t}
    u_t = α u_{t−1} + β,      w_t = α w_{t−1} + β v_t,      o_t = w_t / u_t

with ``α = 1`` where ``m_{t−1} = m_t`` (so the empty prefix ``m = −inf`` never
forms ``−inf − (−inf)``), exactly as ``minirec.ops.softmax_scan._rescale``.
Tested against :func:`minirec.ops.softmax_scan.forward` / ``backward`` with
``backend="numpy"`` (tests/kernels/test_numba_softmax_scan.py).

* ``forward``: one fused pass over time per (batch, head) — state update and
  output in the same step — with ``prange`` over the ``B·H`` independent
  rows; the inner loop runs over the value axis ``V``, contiguous in
  ``(B, T, H, V)``.
* ``backward``: one fused reverse pass per (batch, head), the loop of
  ``softmax_scan.step_backward`` (its equations in that module's docstring),
  carrying ``(dm, du, dw)`` back in registers and one ``V``-vector allocated
  per row, not per step.

:func:`forward` and :func:`backward` at the end take the definition's
arguments and return its structure (the backend seam, DESIGN §4).

NaN: the running max propagates a NaN as ``np.maximum`` does (:func:`_max`):
once ``m`` is NaN it stays NaN, as in the definition (a plain ``a if a >= b
else b`` would forget it at the next finite score).

``fastmath`` is off so that results match the NumPy reference to rounding;
the constant 1 arrives as an argument in the arrays' dtype, so float32 runs
stay in float32 (a float64 literal would promote every product).
This module imports nothing from the rest of minirec.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy", inline="always")
def _rescale(m_old, m_new, one):
    """``e^{m_old − m_new}`` for ``m_old ≤ m_new``; 1 where equal (−inf included)."""
    if m_old == m_new:
        return one
    return np.exp(m_old - m_new)


@njit(cache=True, error_model="numpy", inline="always")
def _max(m_prev, s_t):
    """``max(m_prev, s_t)``, NaN if either is NaN (``np.maximum``); ties keep
    ``m_prev``."""
    if m_prev >= s_t or m_prev != m_prev:
        return m_prev
    return s_t          # s_t > m_prev, or s_t is NaN


@njit(cache=True, error_model="numpy", parallel=True)
def _forward(s, v, m0, u0, w0, M, U, W, o, one):
    B, T, H, Vd = v.shape
    for job in prange(B * H):
        b = job // H
        h = job % H
        m_prev = m0[b, h]
        u_prev = u0[b, h]
        for t in range(T):
            s_t = s[b, t, h]
            m = _max(m_prev, s_t)
            alpha = _rescale(m_prev, m, one)
            beta = _rescale(s_t, m, one)
            u = alpha * u_prev + beta
            M[b, t, h] = m
            U[b, t, h] = u
            for j in range(Vd):
                w_prev = w0[b, h, j] if t == 0 else W[b, t - 1, h, j]
                w = alpha * w_prev + beta * v[b, t, h, j]
                W[b, t, h, j] = w
                o[b, t, h, j] = w / u
            m_prev = m
            u_prev = u


@njit(cache=True, error_model="numpy", parallel=True)
def _backward(s, v, m0, u0, w0, M, U, W, do, has_do, dm_T, du_T, dw_T,
              ds, dv, dm0, du0, dw0, one):
    """The reverse loop from the final state's gradient ``(dm_T, du_T, dw_T)``
    (``dm, du, dw`` carry ∂L/∂ state_t back); writes ``ds, dv`` and the
    initial state's gradient ``dm0, du0, dw0``."""
    zero = one - one
    B, T, H, Vd = v.shape
    for job in prange(B * H):
        b = job // H
        h = job % H
        dw = np.empty(Vd, W.dtype)
        for j in range(Vd):
            dw[j] = dw_T[b, h, j]
        dm = dm_T[b, h]
        du = du_T[b, h]
        for t in range(T - 1, -1, -1):
            m = M[b, t, h]
            u = U[b, t, h]
            if t > 0:
                m_prev = M[b, t - 1, h]
                u_prev = U[b, t - 1, h]
            else:
                m_prev = m0[b, h]
                u_prev = u0[b, h]
            s_t = s[b, t, h]
            # one pass over V with three independent sums (their latencies overlap):
            # through o_t = w_t / u_t:  dw += do / u,  do_o = Σ_V do ⊙ o_t
            # then dα's and dβ's sums over V with the updated dw
            do_o = zero
            dalpha_w = zero
            dbeta_v = zero
            for j in range(Vd):
                if has_do:
                    g = do[b, t, h, j]
                    do_o += g * (W[b, t, h, j] / u)
                    dw[j] = dw[j] + g / u
                w_prev = w0[b, h, j] if t == 0 else W[b, t - 1, h, j]
                dalpha_w += dw[j] * w_prev
                dbeta_v += dw[j] * v[b, t, h, j]
            if has_do:
                du = du - do_o / u
            # through u_t = α u_{t-1} + β and w_t = α w_{t-1} + β v_t
            alpha = _rescale(m_prev, m, one)
            beta = _rescale(s_t, m, one)
            dalpha = du * u_prev + dalpha_w
            dbeta = du + dbeta_v
            for j in range(Vd):
                dv[b, t, h, j] = beta * dw[j]
                dw[j] = alpha * dw[j]
            du = alpha * du
            # through α = e^{m_{t-1} − m_t}, β = e^{s_t − m_t} and m_t = max(m_{t-1}, s_t)
            ds_t = beta * dbeta
            dm_prev = alpha * dalpha
            dm_bar = dm - alpha * dalpha - beta * dbeta
            if m_prev >= s_t:  # ties go to the earlier argument
                dm_prev = dm_prev + dm_bar
            else:
                ds_t = ds_t + dm_bar
            ds[b, t, h] = ds_t
            dm = dm_prev
        dm0[b, h] = dm
        du0[b, h] = du
        for j in range(Vd):
            dw0[b, h, j] = dw[j]


def _c(x, dtype):
    return np.ascontiguousarray(x, dtype=dtype)


def forward(s, v, initial_state):
    """:func:`minirec.ops.softmax_scan.forward` (``method="recurrent"``) by the
    fused loop, in ``s``'s dtype, from ``initial_state = (m0, u0, w0)`` (the
    definition turns ``None`` into the empty prefix).

    Returns ``o (B, T, H, V)``, the final state ``(m, u, w)`` and the states
    after every step ``(M, U (B, T, H), W (B, T, H, V))`` for :func:`backward`.
    """
    dtype = s.dtype
    m0, u0, w0 = initial_state
    B, T, H, Vd = v.shape
    M = np.empty((B, T, H), dtype)
    U = np.empty((B, T, H), dtype)
    W = np.empty((B, T, H, Vd), dtype)
    o = np.empty((B, T, H, Vd), dtype)
    _forward(_c(s, dtype), _c(v, dtype), _c(m0, dtype), _c(u0, dtype), _c(w0, dtype),
             M, U, W, o, dtype.type(1))
    state = (M[:, -1].copy(), U[:, -1].copy(), W[:, -1].copy())
    return o, state, (M, U, W)


def backward(s, v, initial_state, states, do, dstate):
    """:func:`minirec.ops.softmax_scan.backward` by the fused reverse loop, from
    the forward's inputs, its ``states = (M, U, W)``, ``do`` (``None`` for
    zeros) and ``dstate = (dm_T, du_T, dw_T)`` (arrays).

    Returns ``{"s", "v", "initial_state": (dm0, du0, dw0)}``.
    """
    m0, u0, w0 = initial_state
    M, U, W = states
    dm_T, du_T, dw_T = dstate
    dtype = W.dtype
    B, T, H, Vd = v.shape
    has_do = do is not None
    do_c = _c(do, dtype) if has_do else np.zeros((1, 1, 1, 1), dtype)
    ds = np.empty((B, T, H), dtype)
    dv = np.empty((B, T, H, Vd), dtype)
    dm0 = np.empty((B, H), dtype)
    du0 = np.empty((B, H), dtype)
    dw0 = np.empty((B, H, Vd), dtype)
    _backward(_c(s, dtype), _c(v, dtype), _c(m0, dtype), _c(u0, dtype), _c(w0, dtype),
              _c(M, dtype), _c(U, dtype), _c(W, dtype), do_c, has_do,
              _c(dm_T, dtype), _c(du_T, dtype), _c(dw_T, dtype), ds, dv, dm0, du0, dw0,
              dtype.type(1))
    return {"s": ds, "v": dv, "initial_state": (dm0, du0, dw0)}
