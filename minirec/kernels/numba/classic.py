"""Numba kernels for the classic cells: Elman RNN, GRU, LSTM (PyTorch conventions).

Tested against ``minirec.cells.rnn``/``gru``/``lstm`` with ``backend="numpy"``
(tests/kernels/test_numba_classic.py). The split of work follows the cells'
structure:

* The input projection for all T, ``xp = x W_ih^T + b`` ``(B, T, G·H)``, is one
  BLAS GEMM done by the caller (NumPy), and so are the weight gradients
  ``dW_ih = Σ_t da_t^T x_t``, ``dW_hh = Σ_t da_t^T h_{t-1}`` and ``dx = da W_ih``
  after the backward loop.
* These kernels run only the time loop: per step the recurrent product
  ``h_{t-1} W_hh^T``, the gates and the state update, fused, with ``prange``
  over the batch (rows of a batch are independent recurrences; the loop over
  time stays inside each row, so the ``prange`` start-up cost is paid once).

The recurrent product is written as a sum of rows (``out[j] += h[k] W^T[k, j]``)
so the inner loop is contiguous and vectorises without ``fastmath``; a BLAS
call per step inside a Numba loop is slower on 2 cores (measured trap). ``tanh``
is computed from one ``exp`` (``np.tanh`` and ``np.expm1`` inside ``@njit`` are
several times slower here). Gate order: GRU r, z, n; LSTM i, f, g, o.

This module imports nothing from the rest of minirec.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _tanh(x):
    # tanh|x| = (1 − e)/(1 + e), e = exp(−2|x|) ≤ 1: no overflow; near 0 the
    # absolute error is ~1 ulp of 1 (relative RMS over an array stays ~1e-16)
    e = np.exp(-2.0 * abs(x))
    y = (1.0 - e) / (1.0 + e)
    return y if x >= 0 else -y


@njit(cache=True, inline="always")
def _sigmoid(x):
    if x >= 0:
        return 1.0 / (1.0 + np.exp(-x))
    e = np.exp(x)
    return e / (1.0 + e)


@njit(cache=True, inline="always")
def _add_row_combination(out, coef, M):
    """``out += coef @ M`` written as a sum of rows, ``out[j] += coef[k] M[k, j]``:
    the inner loop runs over the contiguous ``j`` and vectorises without fastmath.
    Used for both ``h_{t-1} W_hh^T`` (M = W_hh^T) and ``da W_hh`` (M = W_hh)."""
    for k in range(coef.shape[0]):
        c = coef[k]
        for j in range(out.shape[0]):
            out[j] += c * M[k, j]


# ---------------------------------------------------------------------------
# Elman RNN: h_t = φ(xp_t + h_{t-1} W_hh^T)
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def rnn_forward(xp, W_hhT, h0, relu, hs):
    """``xp (B, T, H)`` (input projection plus both biases), ``W_hhT (H, H)``
    = ``W_hh^T`` contiguous, ``h0 (B, H)`` → ``hs (B, T, H)`` (written)."""
    B, T, H = xp.shape
    for b in prange(B):
        a = np.empty(H, xp.dtype)
        for t in range(T):
            for j in range(H):
                a[j] = xp[b, t, j]
            _add_row_combination(a, h0[b] if t == 0 else hs[b, t - 1], W_hhT)
            for j in range(H):
                if relu:
                    hs[b, t, j] = a[j] if a[j] > 0 else 0.0
                else:
                    hs[b, t, j] = _tanh(a[j])


@njit(cache=True, parallel=True)
def rnn_backward(hs, W_hh, dy, dh_T, relu, da, dh0):
    """Reverse loop: ``da (B, T, H)`` = ∂L/∂a_t and ``dh0 (B, H)`` (written)."""
    B, T, H = hs.shape
    for b in prange(B):
        dh = np.empty(H, hs.dtype)
        for j in range(H):
            dh[j] = dh_T[b, j]
        for t in range(T - 1, -1, -1):
            for j in range(H):
                g = dh[j] + dy[b, t, j]
                h = hs[b, t, j]
                if relu:
                    da[b, t, j] = g if h > 0 else 0.0
                else:
                    da[b, t, j] = g * (1.0 - h * h)
            for j in range(H):
                dh[j] = 0.0
            _add_row_combination(dh, da[b, t], W_hh)
        for j in range(H):
            dh0[b, j] = dh[j]


# ---------------------------------------------------------------------------
# GRU: r, z = σ(xp_r,z + hp_r,z), n = tanh(xp_n + r ⊙ hp_n), h = (1 − z) n + z h
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def gru_forward(xp, W_hhT, b_hh, h0, hs, gates):
    """``xp (B, T, 3H)`` = x W_ih^T + b_ih; ``W_hhT (H, 3H)``; ``b_hh (3H,)``.
    Writes ``hs (B, T, H)`` and ``gates (B, T, 4H)`` = [r | z | n | hp_n]."""
    B, T, G = xp.shape
    H = G // 3
    for b in prange(B):
        hp = np.empty(G, xp.dtype)
        for t in range(T):
            for j in range(G):
                hp[j] = b_hh[j]
            _add_row_combination(hp, h0[b] if t == 0 else hs[b, t - 1], W_hhT)
            for j in range(H):
                hprev = h0[b, j] if t == 0 else hs[b, t - 1, j]
                r = _sigmoid(xp[b, t, j] + hp[j])
                z = _sigmoid(xp[b, t, H + j] + hp[H + j])
                n = _tanh(xp[b, t, 2 * H + j] + r * hp[2 * H + j])
                hs[b, t, j] = (1.0 - z) * n + z * hprev
                gates[b, t, j] = r
                gates[b, t, H + j] = z
                gates[b, t, 2 * H + j] = n
                gates[b, t, 3 * H + j] = hp[2 * H + j]


@njit(cache=True, parallel=True)
def gru_backward(hs, h0, gates, W_hh, dy, dh_T, dxp, dhp, dh0):
    """Writes ``dxp (B, T, 3H)`` = ∂L/∂(x W_ih^T + b_ih), ``dhp (B, T, 3H)`` =
    ∂L/∂(h W_hh^T + b_hh), and ``dh0 (B, H)``."""
    B, T, H = hs.shape
    for b in prange(B):
        dh = np.empty(H, hs.dtype)
        for j in range(H):
            dh[j] = dh_T[b, j]
        for t in range(T - 1, -1, -1):
            for j in range(H):
                g = dh[j] + dy[b, t, j]
                hprev = h0[b, j] if t == 0 else hs[b, t - 1, j]
                r = gates[b, t, j]
                z = gates[b, t, H + j]
                n = gates[b, t, 2 * H + j]
                hpn = gates[b, t, 3 * H + j]
                dan = g * (1.0 - z) * (1.0 - n * n)       # through n = tanh(·)
                daz = g * (hprev - n) * z * (1.0 - z)     # through z = σ(·)
                dar = dan * hpn * r * (1.0 - r)           # through r = σ(·)
                dxp[b, t, j] = dar
                dxp[b, t, H + j] = daz
                dxp[b, t, 2 * H + j] = dan
                dhp[b, t, j] = dar
                dhp[b, t, H + j] = daz
                dhp[b, t, 2 * H + j] = dan * r
                dh[j] = g * z                              # the direct path z ⊙ h_{t-1}
            _add_row_combination(dh, dhp[b, t], W_hh)
        for j in range(H):
            dh0[b, j] = dh[j]


# ---------------------------------------------------------------------------
# LSTM: gates i, f, g, o; c = f c + i g; h = o tanh(c)
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def lstm_forward(xp, W_hhT, h0, c0, hs, cs, gates):
    """``xp (B, T, 4H)`` = x W_ih^T + b_ih + b_hh; ``W_hhT (H, 4H)``.
    Writes ``hs, cs (B, T, H)`` and ``gates (B, T, 4H)`` post-activation."""
    B, T, G = xp.shape
    H = G // 4
    for b in prange(B):
        a = np.empty(G, xp.dtype)
        for t in range(T):
            for j in range(G):
                a[j] = xp[b, t, j]
            _add_row_combination(a, h0[b] if t == 0 else hs[b, t - 1], W_hhT)
            for j in range(H):
                cprev = c0[b, j] if t == 0 else cs[b, t - 1, j]
                i = _sigmoid(a[j])
                f = _sigmoid(a[H + j])
                g = _tanh(a[2 * H + j])
                o = _sigmoid(a[3 * H + j])
                c = f * cprev + i * g
                cs[b, t, j] = c
                hs[b, t, j] = o * _tanh(c)
                gates[b, t, j] = i
                gates[b, t, H + j] = f
                gates[b, t, 2 * H + j] = g
                gates[b, t, 3 * H + j] = o


@njit(cache=True, parallel=True)
def lstm_backward(cs, c0, gates, W_hh, dy, dh_T, dc_T, da, dh0, dc0):
    """Writes ``da (B, T, 4H)`` = ∂L/∂(pre-activations) and ``dh0, dc0 (B, H)``."""
    B, T, H = cs.shape
    for b in prange(B):
        dh = np.empty(H, cs.dtype)
        dc = np.empty(H, cs.dtype)
        for j in range(H):
            dh[j] = dh_T[b, j]
            dc[j] = dc_T[b, j]
        for t in range(T - 1, -1, -1):
            for j in range(H):
                gh = dh[j] + dy[b, t, j]
                i = gates[b, t, j]
                f = gates[b, t, H + j]
                g = gates[b, t, 2 * H + j]
                o = gates[b, t, 3 * H + j]
                tc = _tanh(cs[b, t, j])
                cprev = c0[b, j] if t == 0 else cs[b, t - 1, j]
                dct = dc[j] + gh * o * (1.0 - tc * tc)
                da[b, t, j] = dct * g * i * (1.0 - i)
                da[b, t, H + j] = dct * cprev * f * (1.0 - f)
                da[b, t, 2 * H + j] = dct * i * (1.0 - g * g)
                da[b, t, 3 * H + j] = gh * tc * o * (1.0 - o)
                dc[j] = dct * f
                dh[j] = 0.0
            _add_row_combination(dh, da[b, t], W_hh)
        for j in range(H):
            dh0[b, j] = dh[j]
            dc0[b, j] = dc[j]
