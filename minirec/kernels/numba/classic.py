"""Numba time loops of the classic cells: Elman RNN, GRU, LSTM (PyTorch conventions),
and the GEMMs around them.

Tested against ``minirec.cells.rnn``/``gru``/``lstm`` with ``backend="numpy"``
(tests/test_contract.py, tests/kernels/test_numba_classic.py). The cells reach
these through the wrappers :mod:`minirec.kernels.numba.rnn`, ``gru`` and
``lstm`` (the backend seam: the definitions' signatures and return
structures). A wrapper receives arguments the cell has validated and does the
plumbing: one BLAS thread around the GEMMs (:mod:`minirec.kernels.numba._blas`),
casts, contiguity, output buffers. The work is split as the cells' structure
suggests:

* The input part of the pre-activations for all T (``gi = x W_ih^T + b``,
  ``(B, T, G·H)``) is one BLAS GEMM (:func:`project`), and so are the weight
  gradients ``dW_ih = Σ_t dgi_t^T x_t``, ``dW_hh = Σ_t dgh_t^T h_{t-1}`` and
  ``dx = dgi W_ih`` after the backward loop (:func:`dense_grads`).
* The ``@njit`` kernels run only the time loop: per step the recurrent product
  ``h_{t-1} W_hh^T``, the gates and the state update, fused, with ``prange``
  over the batch (rows of a batch are independent recurrences; the loop over
  time stays inside each row, so the ``prange`` start-up cost is paid once).

The recurrent product is written as a sum of rows (``out[j] += h[k] W^T[k, j]``)
so the inner loop is contiguous and vectorises without ``fastmath``; a BLAS
call per step inside a Numba loop is slower on 2 cores (measured trap). ``tanh``
and ``σ`` come from :mod:`minirec.kernels.numba._math` (one ``exp`` each, in
the argument's precision), and every constant is built in the arrays' dtype
(``one = hs.dtype.type(1)``): float32 runs compute in float32 throughout.
Gate order: GRU r, z, n; LSTM i, f, g, o. The arguments carry the cells' names
(``gi``, ``gh_n``, ``da``, ``dstate``, …); ``W_hhT`` is ``W_hh^T`` made
contiguous.

NaN and ±inf propagate as in the NumPy definitions: ``relu`` keeps a NaN
(``np.maximum(a, 0)`` does) and its backward multiplies by ``[h > 0]`` (so a
NaN upstream gradient stays NaN even where ``h ≤ 0``).

This module imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from minirec.kernels.numba._math import sigmoid, tanh


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
# Elman RNN: a_t = gi_t + h_{t-1} W_hh^T,  h_t = φ(a_t)
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def rnn_forward(gi, W_hhT, h0, relu, hs):
    """``gi (B, T, H)`` = x W_ih^T + b_ih + b_hh, ``W_hhT (H, H)``, ``h0 (B, H)``
    → ``hs (B, T, H)`` (written), ``φ = relu`` if ``relu`` else ``tanh``."""
    B, T, H = gi.shape
    for b in prange(B):
        a = np.empty(H, gi.dtype)
        for t in range(T):
            for j in range(H):
                a[j] = gi[b, t, j]
            _add_row_combination(a, h0[b] if t == 0 else hs[b, t - 1], W_hhT)
            for j in range(H):
                if relu:
                    hs[b, t, j] = a[j]
                    if a[j] <= 0:  # NaN <= 0 is False: NaN stays, as in np.maximum(a, 0)
                        hs[b, t, j] = 0
                else:
                    hs[b, t, j] = tanh(a[j])


@njit(cache=True, parallel=True)
def rnn_backward(hs, W_hh, dy, dstate, relu, da, dh0):
    """Reverse loop: writes ``da (B, T, H)`` = ∂L/∂a_t and ``dh0 (B, H)``."""
    B, T, H = hs.shape
    one = hs.dtype.type(1)
    for b in prange(B):
        dh = np.empty(H, hs.dtype)
        for j in range(H):
            dh[j] = dstate[b, j]
        for t in range(T - 1, -1, -1):
            for j in range(H):
                dh_t = dh[j] + dy[b, t, j]
                h = hs[b, t, j]
                if not relu:
                    da[b, t, j] = dh_t * (one - h * h)
                elif h > 0:
                    da[b, t, j] = dh_t
                else:  # dh_t · 0: zero, or NaN for a NaN/±inf dh_t (as dh ⊙ [h > 0])
                    da[b, t, j] = dh_t - dh_t
            for j in range(H):
                dh[j] = 0
            _add_row_combination(dh, da[b, t], W_hh)
        for j in range(H):
            dh0[b, j] = dh[j]


# ---------------------------------------------------------------------------
# GRU: r, z = σ(gi_r,z + gh_r,z), n = tanh(gi_n + r ⊙ gh_n), h = (1 − z) n + z h
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def gru_forward(gi, W_hhT, b_hh, h0, hs, gates):
    """``gi (B, T, 3H)`` = x W_ih^T + b_ih; ``W_hhT (H, 3H)``; ``b_hh (3H,)``.
    Writes ``hs (B, T, H)`` and ``gates (B, T, 4H)`` = [r | z | n | gh_n]."""
    B, T, G = gi.shape
    H = G // 3
    one = gi.dtype.type(1)
    for b in prange(B):
        gh = np.empty(G, gi.dtype)
        for t in range(T):
            for j in range(G):
                gh[j] = b_hh[j]
            _add_row_combination(gh, h0[b] if t == 0 else hs[b, t - 1], W_hhT)
            for j in range(H):
                h_prev = h0[b, j] if t == 0 else hs[b, t - 1, j]
                r = sigmoid(gi[b, t, j] + gh[j])
                z = sigmoid(gi[b, t, H + j] + gh[H + j])
                n = tanh(gi[b, t, 2 * H + j] + r * gh[2 * H + j])
                hs[b, t, j] = (one - z) * n + z * h_prev
                gates[b, t, j] = r
                gates[b, t, H + j] = z
                gates[b, t, 2 * H + j] = n
                gates[b, t, 3 * H + j] = gh[2 * H + j]


@njit(cache=True, parallel=True)
def gru_backward(hs, h0, gates, W_hh, dy, dstate, dgi, dgh, dh0):
    """Writes ``dgi (B, T, 3H)`` = ∂L/∂(x W_ih^T + b_ih), ``dgh (B, T, 3H)`` =
    ∂L/∂(h W_hh^T + b_hh), and ``dh0 (B, H)``."""
    B, T, H = hs.shape
    one = hs.dtype.type(1)
    for b in prange(B):
        dh = np.empty(H, hs.dtype)
        for j in range(H):
            dh[j] = dstate[b, j]
        for t in range(T - 1, -1, -1):
            for j in range(H):
                dh_t = dh[j] + dy[b, t, j]
                h_prev = h0[b, j] if t == 0 else hs[b, t - 1, j]
                r = gates[b, t, j]
                z = gates[b, t, H + j]
                n = gates[b, t, 2 * H + j]
                gh_n = gates[b, t, 3 * H + j]
                da_n = dh_t * (one - z) * (one - n * n)       # through n = tanh(·)
                da_z = dh_t * (h_prev - n) * z * (one - z)    # through z = σ(·)
                da_r = da_n * gh_n * r * (one - r)            # through r = σ(·)
                dgi[b, t, j] = da_r
                dgi[b, t, H + j] = da_z
                dgi[b, t, 2 * H + j] = da_n
                dgh[b, t, j] = da_r
                dgh[b, t, H + j] = da_z
                dgh[b, t, 2 * H + j] = da_n * r
                dh[j] = dh_t * z                              # the direct path z ⊙ h_{t-1}
            _add_row_combination(dh, dgh[b, t], W_hh)
        for j in range(H):
            dh0[b, j] = dh[j]


# ---------------------------------------------------------------------------
# LSTM: a_t = gi_t + h_{t-1} W_hh^T, gates i, f, g, o; c = f c + i g; h = o tanh(c)
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def lstm_forward(gi, W_hhT, h0, c0, hs, cs, gates):
    """``gi (B, T, 4H)`` = x W_ih^T + b_ih + b_hh; ``W_hhT (H, 4H)``.
    Writes ``hs, cs (B, T, H)`` and ``gates (B, T, 4H)`` = [i | f | g | o]."""
    B, T, G = gi.shape
    H = G // 4
    for b in prange(B):
        a = np.empty(G, gi.dtype)
        for t in range(T):
            for j in range(G):
                a[j] = gi[b, t, j]
            _add_row_combination(a, h0[b] if t == 0 else hs[b, t - 1], W_hhT)
            for j in range(H):
                c_prev = c0[b, j] if t == 0 else cs[b, t - 1, j]
                i = sigmoid(a[j])
                f = sigmoid(a[H + j])
                g = tanh(a[2 * H + j])
                o = sigmoid(a[3 * H + j])
                c = f * c_prev + i * g
                cs[b, t, j] = c
                hs[b, t, j] = o * tanh(c)
                gates[b, t, j] = i
                gates[b, t, H + j] = f
                gates[b, t, 2 * H + j] = g
                gates[b, t, 3 * H + j] = o


@njit(cache=True, parallel=True)
def lstm_backward(cs, c0, gates, W_hh, dy, dstate_h, dstate_c, da, dh0, dc0):
    """Writes ``da (B, T, 4H)`` = ∂L/∂a_t and ``dh0, dc0 (B, H)``; ``dstate_h``,
    ``dstate_c`` are the two parts of ``dstate``."""
    B, T, H = cs.shape
    one = cs.dtype.type(1)
    for b in prange(B):
        dh = np.empty(H, cs.dtype)
        dc = np.empty(H, cs.dtype)
        for j in range(H):
            dh[j] = dstate_h[b, j]
            dc[j] = dstate_c[b, j]
        for t in range(T - 1, -1, -1):
            for j in range(H):
                dh_t = dh[j] + dy[b, t, j]
                i = gates[b, t, j]
                f = gates[b, t, H + j]
                g = gates[b, t, 2 * H + j]
                o = gates[b, t, 3 * H + j]
                tanh_c = tanh(cs[b, t, j])
                c_prev = c0[b, j] if t == 0 else cs[b, t - 1, j]
                dc_t = dc[j] + dh_t * o * (one - tanh_c * tanh_c)
                da[b, t, j] = dc_t * g * i * (one - i)
                da[b, t, H + j] = dc_t * c_prev * f * (one - f)
                da[b, t, 2 * H + j] = dc_t * i * (one - g * g)
                da[b, t, 3 * H + j] = dh_t * tanh_c * o * (one - o)
                dc[j] = dc_t * f
                dh[j] = 0
            _add_row_combination(dh, da[b, t], W_hh)
        for j in range(H):
            dh0[b, j] = dh[j]
            dc0[b, j] = dc[j]


# ---------------------------------------------------------------------------
# the GEMMs around the loops (plain NumPy, BLAS)
# ---------------------------------------------------------------------------
