"""``backend="numba"`` for :mod:`minirec.cells.ln_lstm`: the definition's signature
and return structure, reached through ``_backend.kernels("ln_lstm", "numba")``.

    zx = x W_ih^T                                      one GEMM over all T          (B, T, 4H)
    xhat_ih, rstd_ih = LN(zx) for every (b, t)         layer_norm_rows, before the loop
    ax = alpha_ih ⊙ xhat_ih + beta_ih + b              the input part of a_t, all T
    a_t = LN(h_{t-1} W_hh^T) + ax_t, gates, c_t,       the fused time loop, ln_lstm_forward
          LN(c_t), h_t
    da_t, dnc_t, dzh_t = ∂L/∂(a_t, LN(c_t), zh_t)     the reverse loop, ln_lstm_backward
    dzx = LN-backward(da) for every (b, t)             layer_norm_backward_rows, after it
    dW_ih, dW_hh, dx                                   GEMMs over all T (_dense.dense_grads)
    db, dalpha_*, dbeta_*                              sums over (B, T)

The layer norm is written once: :func:`_ln_stats` (μ and rstd of a row, two
passes: the mean, then the squared deviations) and :func:`_ln_grad_means` +
:func:`_ln_grad` (the backward ``rstd (α g − mean(α g) − xhat mean(α g xhat))``),
used by the row kernels and inside the time loops. Every constant is built in
the arrays' dtype, ``eps`` arrives in it: float32 runs compute in float32.

Tested against ``minirec.cells.ln_lstm`` with ``backend="numpy"``
(tests/test_contract.py, tests/cells/test_ln_lstm.py). Arguments arrive
validated by the cell; the plumbing (BLAS thread limit, casts, buffers) is here.
The ``@njit`` kernels import nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from minirec.kernels import _dense
from minirec.kernels.numba._blas import blas_single_thread
from minirec.kernels.numba._math import sigmoid, tanh
from minirec.kernels.numba.classic import _add_row_combination

# ---------------------------------------------------------------------------
# the layer norm, once: statistics, backward means, backward entry
# ---------------------------------------------------------------------------


@njit(cache=True, error_model="numpy", inline="always")
def _ln_stats(z, eps):
    """``(μ, rstd)`` of the row ``z (n,)``: ``μ = mean(z)``,
    ``rstd = (mean((z − μ)²) + eps)^{−1/2}``."""
    n = z.shape[0]
    zero, one, nf = z.dtype.type(0), z.dtype.type(1), z.dtype.type(n)
    s = zero
    for k in range(n):
        s += z[k]
    mu = s / nf
    v = zero
    for k in range(n):
        d = z[k] - mu
        v += d * d
    return mu, one / np.sqrt(v / nf + eps)


@njit(cache=True, error_model="numpy", inline="always")
def _ln_grad_means(g, xhat, alpha):
    """``(mean(α ⊙ g), mean(α ⊙ g ⊙ xhat))`` over the row (``g = ∂L/∂LN(z)``)."""
    n = g.shape[0]
    s1 = s2 = g.dtype.type(0)
    for k in range(n):
        ghat = alpha[k] * g[k]
        s1 += ghat
        s2 += ghat * xhat[k]
    nf = g.dtype.type(n)
    return s1 / nf, s2 / nf


@njit(cache=True, error_model="numpy", inline="always")
def _ln_grad(g, xhat, rstd, alpha, m1, m2):
    """One entry of ``∂L/∂z = rstd (α g − mean(α g) − xhat mean(α g xhat))``."""
    return rstd * (alpha * g - m1 - xhat * m2)


@njit(cache=True, error_model="numpy", parallel=True)
def layer_norm_rows(z, eps, xhat, rstd):
    """``z (R, n)`` → ``xhat (R, n)`` and ``rstd (R,)`` (written), row by row."""
    for r in prange(z.shape[0]):
        mu, rs = _ln_stats(z[r], eps)
        rstd[r] = rs
        for k in range(z.shape[1]):
            xhat[r, k] = (z[r, k] - mu) * rs


@njit(cache=True, error_model="numpy", parallel=True)
def layer_norm_backward_rows(g, xhat, rstd, alpha, dz):
    """``dz (R, n)`` = ∂L/∂z (written) from ``g (R, n)`` = ∂L/∂LN(z), row by row."""
    for r in prange(g.shape[0]):
        m1, m2 = _ln_grad_means(g[r], xhat[r], alpha)
        for k in range(g.shape[1]):
            dz[r, k] = _ln_grad(g[r, k], xhat[r, k], rstd[r], alpha[k], m1, m2)


# ---------------------------------------------------------------------------
# the time loops (prange over the batch: rows are independent recurrences)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def ln_lstm_forward(ax, W_hhT, alpha_hh, beta_hh, alpha_c, beta_c, h0, c0, eps,
                    hs, cs, gates, xhat_hh, rstd_hh, xhat_c, rstd_c):
    """``ax (B, T, 4H)`` = LN(x W_ih^T) + b, ``W_hhT (H, 4H)``. Writes ``hs, cs (B, T, H)``,
    ``gates (B, T, 4H)`` = [i | f | g | o], ``xhat_hh (B, T, 4H)``, ``xhat_c (B, T, H)``
    and ``rstd_hh, rstd_c (B, T)``."""
    B, T, G = ax.shape
    H = G // 4
    for b in prange(B):
        zh = np.empty(G, ax.dtype)
        a = np.empty(G, ax.dtype)
        for t in range(T):
            for q in range(G):
                zh[q] = 0
            _add_row_combination(zh, h0[b] if t == 0 else hs[b, t - 1], W_hhT)
            mu, rs = _ln_stats(zh, eps)
            rstd_hh[b, t] = rs
            for q in range(G):
                xh = (zh[q] - mu) * rs
                xhat_hh[b, t, q] = xh
                a[q] = (alpha_hh[q] * xh + beta_hh[q]) + ax[b, t, q]
            for j in range(H):
                c_prev = c0[b, j] if t == 0 else cs[b, t - 1, j]
                i = sigmoid(a[j])
                f = sigmoid(a[H + j])
                g = tanh(a[2 * H + j])
                gates[b, t, j] = i
                gates[b, t, H + j] = f
                gates[b, t, 2 * H + j] = g
                gates[b, t, 3 * H + j] = sigmoid(a[3 * H + j])
                cs[b, t, j] = f * c_prev + i * g
            mu_c, rs_c = _ln_stats(cs[b, t], eps)
            rstd_c[b, t] = rs_c
            for j in range(H):
                xc = (cs[b, t, j] - mu_c) * rs_c
                xhat_c[b, t, j] = xc
                hs[b, t, j] = gates[b, t, 3 * H + j] * tanh(alpha_c[j] * xc + beta_c[j])


@njit(cache=True, error_model="numpy", parallel=True)
def ln_lstm_backward(cs, c0, gates, xhat_hh, rstd_hh, xhat_c, rstd_c, alpha_hh, alpha_c,
                     beta_c, W_hh, dy, dstate_h, dstate_c, dnc, da, dzh, dh0, dc0):
    """Writes ``dnc (B, T, H)`` = ∂L/∂LN(c_t), ``da (B, T, 4H)`` = ∂L/∂a_t,
    ``dzh (B, T, 4H)`` = ∂L/∂(h_{t-1} W_hh^T) and ``dh0, dc0 (B, H)``."""
    B, T, H = cs.shape
    one = cs.dtype.type(1)
    for b in prange(B):
        dh = np.empty(H, cs.dtype)
        dc = np.empty(H, cs.dtype)
        for j in range(H):
            dh[j] = dstate_h[b, j]
            dc[j] = dstate_c[b, j]
        for t in range(T - 1, -1, -1):
            for j in range(H):  # through h_t = o ⊙ tanh(LN(c_t))
                dh_t = dh[j] + dy[b, t, j]
                o = gates[b, t, 3 * H + j]
                tanh_nc = tanh(alpha_c[j] * xhat_c[b, t, j] + beta_c[j])
                dnc[b, t, j] = dh_t * o * (one - tanh_nc * tanh_nc)
                da[b, t, 3 * H + j] = dh_t * tanh_nc * o * (one - o)
            m1, m2 = _ln_grad_means(dnc[b, t], xhat_c[b, t], alpha_c)
            for j in range(H):  # through LN(c_t), then c_t = f c_{t-1} + i g
                dc_t = dc[j] + _ln_grad(dnc[b, t, j], xhat_c[b, t, j], rstd_c[b, t],
                                        alpha_c[j], m1, m2)
                i = gates[b, t, j]
                f = gates[b, t, H + j]
                g = gates[b, t, 2 * H + j]
                c_prev = c0[b, j] if t == 0 else cs[b, t - 1, j]
                da[b, t, j] = dc_t * g * i * (one - i)
                da[b, t, H + j] = dc_t * c_prev * f * (one - f)
                da[b, t, 2 * H + j] = dc_t * i * (one - g * g)
                dc[j] = dc_t * f
            m1, m2 = _ln_grad_means(da[b, t], xhat_hh[b, t], alpha_hh)
            for q in range(4 * H):  # through LN(zh)
                dzh[b, t, q] = _ln_grad(da[b, t, q], xhat_hh[b, t, q], rstd_hh[b, t],
                                        alpha_hh[q], m1, m2)
            for j in range(H):
                dh[j] = 0
            _add_row_combination(dh, dzh[b, t], W_hh)  # through zh = h_{t-1} W_hh^T
        for j in range(H):
            dh0[b, j] = dh[j]
            dc0[b, j] = dc[j]


# ---------------------------------------------------------------------------
# the wrapper: the definition's signature
# ---------------------------------------------------------------------------

class Cache(NamedTuple):
    """The cell's ``cache.kernel``: what :func:`backward` needs."""

    x: np.ndarray        # (B, T, D) the input, as given
    hs: np.ndarray       # (B, T, H) every h_t (the returned y)
    cs: np.ndarray       # (B, T, H) every c_t
    h0: np.ndarray       # (B, H) the initial state (h0, c0), contiguous, computation dtype
    c0: np.ndarray       # (B, H)
    gates: np.ndarray    # (B, T, 4H) [i | f | g | o] of every step, post-activation
    xhat_ih: np.ndarray  # (B, T, 4H) normalised x_t W_ih^T
    rstd_ih: np.ndarray  # (B, T)
    xhat_hh: np.ndarray  # (B, T, 4H) normalised h_{t-1} W_hh^T
    rstd_hh: np.ndarray  # (B, T)
    xhat_c: np.ndarray   # (B, T, H) normalised c_t
    rstd_c: np.ndarray   # (B, T)


def forward(params: dict, x: np.ndarray, state0: tuple[np.ndarray, np.ndarray],
            eps: float) -> tuple[np.ndarray, tuple, Cache]:
    """``y (B, T, H)``, the final ``(h, c)`` and the kernel :class:`Cache`, from
    validated ``params``, ``x (B, T, D)``, ``state0 = (h0, c0)`` (not ``None``) and
    the layer norms' ``eps``."""
    dtype = np.result_type(x, *params.values())
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    eps = dtype.type(eps)
    with blas_single_thread():
        zx = _dense.project(x.astype(dtype, copy=False), p["W_ih"], None)
        B, T, G = zx.shape
        H = G // 4
        xhat_ih, rstd_ih = np.empty_like(zx), np.empty((B, T), dtype)
        layer_norm_rows(zx.reshape(B * T, G), eps, xhat_ih.reshape(B * T, G),
                        rstd_ih.reshape(B * T))
        ax = (xhat_ih * p["alpha_ih"] + p["beta_ih"]) + p["b"]
        hs, cs, xhat_c = (np.empty((B, T, H), dtype) for _ in range(3))
        gates, xhat_hh = np.empty_like(zx), np.empty_like(zx)
        rstd_hh, rstd_c = np.empty((B, T), dtype), np.empty((B, T), dtype)
        h0, c0 = (np.ascontiguousarray(s, dtype=dtype) for s in state0)
        ln_lstm_forward(ax, np.ascontiguousarray(p["W_hh"].T), p["alpha_hh"], p["beta_hh"],
                        p["alpha_c"], p["beta_c"], h0, c0, eps, hs, cs, gates, xhat_hh,
                        rstd_hh, xhat_c, rstd_c)
    return hs, (hs[:, -1].copy(), cs[:, -1].copy()), Cache(
        x, hs, cs, h0, c0, gates, xhat_ih, rstd_ih, xhat_hh, rstd_hh, xhat_c, rstd_c)


def backward(params: dict, cache: Cache, dy: np.ndarray,
             dstate: tuple[np.ndarray, np.ndarray]) -> dict:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0" = (dh0, dc0)``;
    ``dy (B, T, H)`` and both parts of ``dstate`` are arrays (zeros, not ``None``)."""
    hs, h0, c0 = cache.hs, cache.h0, cache.c0
    dt = hs.dtype
    p = {k: np.ascontiguousarray(v, dtype=dt) for k, v in params.items()}
    dstate_h, dstate_c = (np.ascontiguousarray(d, dtype=dt) for d in dstate)
    B, T, H = hs.shape
    G = 4 * H
    with blas_single_thread():
        dnc = np.empty_like(hs)
        da, dzh, dzx = (np.empty_like(cache.gates) for _ in range(3))
        dh0, dc0 = np.empty_like(h0), np.empty_like(c0)
        ln_lstm_backward(cache.cs, c0, cache.gates, cache.xhat_hh, cache.rstd_hh, cache.xhat_c,
                         cache.rstd_c, p["alpha_hh"], p["alpha_c"], p["beta_c"], p["W_hh"],
                         np.ascontiguousarray(dy, dtype=dt), dstate_h, dstate_c, dnc, da, dzh,
                         dh0, dc0)
        layer_norm_backward_rows(da.reshape(B * T, G), cache.xhat_ih.reshape(B * T, G),
                                 cache.rstd_ih.reshape(B * T), p["alpha_ih"],
                                 dzx.reshape(B * T, G))
        dense = _dense.dense_grads(cache.x.astype(dt, copy=False),
                                   _dense.previous_states(h0, hs), dzx, dzh, p["W_ih"])
    db = da.sum(axis=(0, 1))
    return {"W_ih": dense["W_ih"], "W_hh": dense["W_hh"], "b": db,
            "alpha_ih": (da * cache.xhat_ih).sum(axis=(0, 1)), "beta_ih": db.copy(),
            "alpha_hh": (da * cache.xhat_hh).sum(axis=(0, 1)), "beta_hh": db.copy(),
            "alpha_c": (dnc * cache.xhat_c).sum(axis=(0, 1)), "beta_c": dnc.sum(axis=(0, 1)),
            "x": dense["x"], "state0": (dh0, dc0)}
