"""``backend="numba"`` for the multi-head RNN, GRU and LSTM (FlashRNN's heads):
the definitions' signatures and return structures, reached through
``_backend.kernels("multihead", "numba")`` with ``cell="rnn" | "gru" | "lstm"``.

The cells (:mod:`minirec.cells.rnn`, ``gru``, ``lstm`` with ``W_hh (NH, G·dh, dh)``,
G = 1, 3, 4 gates) are the full cells with the block-diagonal recurrent matrix
``W[g·H + h·dh + j, h·dh + k] = W_hh[h, g·dh + j, k]``. The work:

    gi = x W_ih^T + b                                one GEMM over all T       (B, T, G·H)
    per step, per head h: acc = gi_t[head] + W_hh[h] h_{t-1}[head];
        gates, state update                          the time loop, *_forward
    ∂L/∂(pre-activations), per step, then per head
        ∂L/∂h_{t-1}[head] += W_hh[h]^T da_t[head]   the reverse loop, *_backward
    dW_ih, db_ih, db_hh, dx                          GEMMs over all T
    dW_hh[h] = Σ_{B,T} da[head]^T h_{t-1}[head]      a GEMM per head over all T

Tested against the cells with ``backend="numpy"`` (tests/test_contract.py,
tests/cells/test_multihead.py, tests/kernels/test_numba_multihead.py, which forces
each form below). Every ``@njit`` loop runs ``prange`` over the batch (rows are
independent recurrences; on 2 cores, B ≥ 2 keeps both busy). Per step a row
touches ``G·H·dh`` weights instead of the full cell's ``G·H·H`` (NH times fewer
multiply-adds and bytes). The forward has two forms, chosen by head width
(:func:`blocked`, measured; the table is at :data:`HEAD_BLOCK_MIN_DH`):

* blocked (``*_forward``, heads of ≥ 8 units): the batch cut into blocks of
  rows as in :mod:`minirec.kernels.numba.classic`; per step and head, the block's
  product ``h_{t-1}[head] W_hh[h]^T`` ``(rows, dh) @ (dh, G·dh)`` is
  ``classic._product`` (BLAS gemms per column panel, or the row loop) on the
  block's state kept head-major ``(NH, rows, dh)``, then that head's gates.
  The gate loops index views that start at the head's units (``_seg``): indexed
  as ``gi[b, t, h·dh + j]`` instead, the possible negative index kept them from
  vectorising (13 → 2 ms for the LSTM's gates at B = 8, T = 256, H = 256).
* row form (``*_forward_rows``, narrower heads: a ParaRNN diagonal cell is H
  heads of one unit): per row and step every head's product is added into the
  row's gate-major pre-activations as a sum of rows, then one pass over all H
  units computes the gates, so the transcendental work stays one vectorised loop.

The backward (``*_backward``) is the row form: one pass over all H units for
∂L/∂(pre-activations), then per head ``dh[head] += da_t[head] W_hh[h]`` as a sum
of rows. Then the GEMMs over all T: ``dW_ih, db_ih, db_hh, dx``
(:func:`minirec.kernels.numba.classic.dense_grads`) and ``dW_hh[h] = Σ_{B,T}
da[head]^T h_{t-1}[head]``, a gemm per head (:func:`head_weight_grad`).

Gate layout of ``gi``, ``da`` and the cached ``gates``: the full cell's,
gate-major (unit ``u = h·dh + j`` of gate ``g`` at ``g·H + u``), as
:mod:`minirec.kernels.numba.classic` (RNN: a; GRU r, z, n and the cached
``[r | z | n | gh_n]``; LSTM i, f, g, o). NaN and ±inf propagate as in the
definitions (relu keeps a NaN; its backward is a selection, as theirs).
Every constant is of the arrays' dtype: float32 computes in float32.

This module imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from minirec.kernels import _dense
from minirec.kernels.numba import classic
from minirec.kernels.numba._blas import blas_single_thread
from minirec.kernels.numba._math import sigmoid, tanh
from minirec.kernels.numba.classic import _panel_buffer, _product, _rows

CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


@njit(cache=True, error_model="numpy", inline="always")
def _load_heads(dst, src, b0):
    """``dst[h, b, j] = src[b0 + b, h·dh + j]``: a block of rows of ``src (B, H)``
    as per-head contiguous ``(NH, rows, dh)``."""
    NH, R, dh = dst.shape
    for hd in range(NH):
        for b in range(R):
            for j in range(dh):
                dst[hd, b, j] = src[b0 + b, hd * dh + j]


@njit(cache=True, error_model="numpy", inline="always")
def _seg(v, g, H, o, dh):
    """Unit ``o … o + dh`` of gate ``g`` in a gate-major row ``v``: ``v[g·H + o :][:dh]``
    (the loops index these views from 0, which lets them vectorise)."""
    return v[g * H + o:g * H + o + dh]


# ---------------------------------------------------------------------------
# Elman RNN: a_t = gi_t + blockdiag(W_hh) h_{t-1},  h_t = φ(a_t)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def rnn_forward(gi, WTp, h0, relu, gemm, n_chunks, hs):
    """``gi (B, T, H)`` = x W_ih^T + b_ih + b_hh, ``WTp (NH, P, dh, cb)`` = each head's
    ``W_hh[h]^T (dh, dh)`` as column panels, ``h0 (B, H)`` → ``hs (B, T, H)`` (written)."""
    B, T, H = gi.shape
    NH, dh = WTp.shape[0], WTp.shape[2]
    zero = gi.dtype.type(0)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        R = b1 - b0
        tmp = _panel_buffer(WTp[0], R)
        h = np.empty((NH, R, dh), gi.dtype)   # h_{t-1} of the block, per head
        a = np.empty((R, dh), gi.dtype)       # the head's h_{t-1} W_hh[h]^T
        _load_heads(h, h0, b0)
        for t in range(T):
            for hd in range(NH):
                o = hd * dh
                _product(h[hd], WTp[hd], a, gemm, tmp)
                for bb in range(R):
                    x, a_b = _seg(gi[b0 + bb, t], 0, H, o, dh), a[bb]
                    h_b, out = h[hd, bb], _seg(hs[b0 + bb, t], 0, H, o, dh)
                    for j in range(dh):
                        a_j = a_b[j] + x[j]
                        if relu:
                            h_j = a_j
                            if a_j <= 0:  # NaN <= 0 is False: NaN stays, as np.maximum(a, 0)
                                h_j = zero
                        else:
                            h_j = tanh(a_j)
                        h_b[j] = h_j
                        out[j] = h_j


# ---------------------------------------------------------------------------
# GRU: gh = blockdiag(W_hh) h_{t-1} + b_hh; r, z = σ(gi + gh), n = tanh(gi_n + r gh_n)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def gru_forward(gi, WTp, b_hh, h0, gemm, n_chunks, hs, gates):
    """``gi (B, T, 3H)`` = x W_ih^T + b_ih; ``WTp (NH, P, dh, cb)`` = each head's
    ``W_hh[h]^T (dh, 3dh)`` as column panels; ``b_hh (3H,)``.
    Writes ``hs (B, T, H)`` and ``gates (B, T, 4H)`` = [r | z | n | gh_n]."""
    B, T, G = gi.shape
    H = G // 3
    NH, dh = WTp.shape[0], WTp.shape[2]
    one = gi.dtype.type(1)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        R = b1 - b0
        tmp = _panel_buffer(WTp[0], R)
        h = np.empty((NH, R, dh), gi.dtype)
        gh = np.empty((R, 3 * dh), gi.dtype)   # the head's h_{t-1} W_hh[h]^T (b_hh added below)
        _load_heads(h, h0, b0)
        for t in range(T):
            for hd in range(NH):
                o = hd * dh
                _product(h[hd], WTp[hd], gh, gemm, tmp)
                br, bz, bn = (_seg(b_hh, 0, H, o, dh), _seg(b_hh, 1, H, o, dh),
                              _seg(b_hh, 2, H, o, dh))
                for bb in range(R):
                    b = b0 + bb
                    x, s = gi[b, t], gates[b, t]
                    xr, xz, xn = _seg(x, 0, H, o, dh), _seg(x, 1, H, o, dh), _seg(x, 2, H, o, dh)
                    sr, sz, sn, sg = (_seg(s, 0, H, o, dh), _seg(s, 1, H, o, dh),
                                      _seg(s, 2, H, o, dh), _seg(s, 3, H, o, dh))
                    g_b, h_b, out = gh[bb], h[hd, bb], _seg(hs[b, t], 0, H, o, dh)
                    for j in range(dh):
                        gh_n = g_b[2 * dh + j] + bn[j]
                        r = sigmoid(xr[j] + (g_b[j] + br[j]))
                        z = sigmoid(xz[j] + (g_b[dh + j] + bz[j]))
                        n = tanh(xn[j] + r * gh_n)
                        h_t = (one - z) * n + z * h_b[j]
                        h_b[j] = h_t
                        out[j] = h_t
                        sr[j] = r
                        sz[j] = z
                        sn[j] = n
                        sg[j] = gh_n


# ---------------------------------------------------------------------------
# LSTM: a_t = gi_t + blockdiag(W_hh) h_{t-1}; i, f, g, o; c = f c + i g; h = o tanh(c)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def lstm_forward(gi, WTp, h0, c0, gemm, n_chunks, hs, cs, gates):
    """``gi (B, T, 4H)`` = x W_ih^T + b_ih + b_hh; ``WTp (NH, P, dh, cb)`` = each head's
    ``W_hh[h]^T (dh, 4dh)`` as column panels.
    Writes ``hs, cs (B, T, H)`` and ``gates (B, T, 4H)`` = [i | f | g | o]."""
    B, T, G = gi.shape
    H = G // 4
    NH, dh = WTp.shape[0], WTp.shape[2]
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        R = b1 - b0
        tmp = _panel_buffer(WTp[0], R)
        h = np.empty((NH, R, dh), gi.dtype)        # h_{t-1} of the block, per head
        c_prev = np.empty((NH, R, dh), gi.dtype)   # c_{t-1}
        a = np.empty((R, 4 * dh), gi.dtype)        # the head's h_{t-1} W_hh[h]^T
        _load_heads(h, h0, b0)
        _load_heads(c_prev, c0, b0)
        for t in range(T):
            for hd in range(NH):
                o = hd * dh
                _product(h[hd], WTp[hd], a, gemm, tmp)
                for bb in range(R):
                    b = b0 + bb
                    x, s, a_b = gi[b, t], gates[b, t], a[bb]
                    xi, xf, xg, xo = (_seg(x, 0, H, o, dh), _seg(x, 1, H, o, dh),
                                      _seg(x, 2, H, o, dh), _seg(x, 3, H, o, dh))
                    si, sf, sg, so = (_seg(s, 0, H, o, dh), _seg(s, 1, H, o, dh),
                                      _seg(s, 2, H, o, dh), _seg(s, 3, H, o, dh))
                    h_b, c_b = h[hd, bb], c_prev[hd, bb]
                    hs_b, cs_b = _seg(hs[b, t], 0, H, o, dh), _seg(cs[b, t], 0, H, o, dh)
                    for j in range(dh):
                        i = sigmoid(a_b[j] + xi[j])
                        f = sigmoid(a_b[dh + j] + xf[j])
                        g = tanh(a_b[2 * dh + j] + xg[j])
                        og = sigmoid(a_b[3 * dh + j] + xo[j])
                        c_t = f * c_b[j] + i * g
                        h_t = og * tanh(c_t)
                        c_b[j] = c_t
                        h_b[j] = h_t
                        cs_b[j] = c_t
                        hs_b[j] = h_t
                        si[j] = i
                        sf[j] = f
                        sg[j] = g
                        so[j] = og


# ---------------------------------------------------------------------------
# the row form: a row per prange iteration, the whole row's gates in one pass
# ---------------------------------------------------------------------------
# Each row runs its own time loop; per step the heads' products are added into the
# row's gate-major pre-activations as sums of rows (_head_acc forward, _head_back
# backward), then one pass over all H units computes the gates. For narrow heads
# (a ParaRNN diagonal cell is H heads of one unit) this keeps the transcendental
# work in one vectorised loop over H, where the blocked form above runs a loop of
# dh units per head and row.

@njit(cache=True, error_model="numpy", inline="always")
def _head_acc(a, acc, WT_h, h_prev, o, H):
    """``a[g·H + o + j] += Σ_k h_prev[o + k] WT_h[k, g·dh + j]`` (``WT_h = W_hh[h]^T``,
    ``o = h·dh``): one head's product, a sum of rows into ``acc (G·dh,)``, added into
    a gate-major row."""
    dh, Gd = WT_h.shape
    for q in range(Gd):
        acc[q] = 0
    for k in range(dh):
        c = h_prev[o + k]
        row = WT_h[k]
        for q in range(Gd):
            acc[q] += c * row[q]
    for g in range(Gd // dh):
        seg, src = a[g * H + o:g * H + o + dh], acc[g * dh:(g + 1) * dh]
        for j in range(dh):
            seg[j] += src[j]


@njit(cache=True, error_model="numpy", inline="always")
def _head_back(dh, da_t, W_h, o, H):
    """``dh[o + k] += Σ_{g,j} da_t[g·H + o + j] W_h[g·dh + j, k]`` (``W_h = W_hh[h]``)."""
    Gd, dhead = W_h.shape
    seg = dh[o:o + dhead]
    for g in range(Gd // dhead):
        for j in range(dhead):
            c = da_t[g * H + o + j]
            row = W_h[g * dhead + j]
            for k in range(dhead):
                seg[k] += c * row[k]


@njit(cache=True, error_model="numpy", parallel=True)
def rnn_forward_rows(gi, WT, h0, relu, hs):
    """The row form of :func:`rnn_forward`: ``WT (NH, dh, dh)`` = ``W_hh[h]^T``."""
    B, T, H = gi.shape
    NH, dh = WT.shape[0], WT.shape[1]
    zero = gi.dtype.type(0)
    for b in prange(B):
        a = np.empty(H, gi.dtype)
        acc = np.empty(dh, gi.dtype)
        for t in range(T):
            h_prev = h0[b] if t == 0 else hs[b, t - 1]
            for u in range(H):
                a[u] = gi[b, t, u]
            for hd in range(NH):
                _head_acc(a, acc, WT[hd], h_prev, hd * dh, H)
            for u in range(H):
                h_u = a[u]
                if not relu:
                    h_u = tanh(h_u)
                elif h_u <= 0:  # NaN <= 0 is False: NaN stays, as np.maximum(a, 0)
                    h_u = zero
                hs[b, t, u] = h_u


@njit(cache=True, error_model="numpy", parallel=True)
def rnn_backward(hs, W_hh, dy, dstate, relu, da, dh0):
    """Reverse loop, a row per ``prange`` iteration: writes ``da (B, T, H)`` =
    ∂L/∂a_t and ``dh0 (B, H)``; ``W_hh (NH, dh, dh)``."""
    B, T, H = hs.shape
    NH, dh = W_hh.shape[0], W_hh.shape[2]
    one = hs.dtype.type(1)
    for b in prange(B):
        dh_rec = np.empty(H, hs.dtype)
        for u in range(H):
            dh_rec[u] = dstate[b, u]
        for t in range(T - 1, -1, -1):
            for u in range(H):
                dh_t = dh_rec[u] + dy[b, t, u]
                h = hs[b, t, u]
                if not relu:
                    da[b, t, u] = dh_t * (one - h * h)
                elif h > 0:
                    da[b, t, u] = dh_t
                else:  # dh_t · 0: zero, or NaN for a NaN/±inf dh_t (as dh ⊙ [h > 0])
                    da[b, t, u] = dh_t - dh_t
                dh_rec[u] = 0
            for hd in range(NH):
                _head_back(dh_rec, da[b, t], W_hh[hd], hd * dh, H)
        for u in range(H):
            dh0[b, u] = dh_rec[u]


@njit(cache=True, error_model="numpy", parallel=True)
def gru_forward_rows(gi, WT, b_hh, h0, hs, gates):
    """The row form of :func:`gru_forward`: ``WT (NH, dh, 3dh)`` = ``W_hh[h]^T``."""
    B, T, G = gi.shape
    H = G // 3
    NH, dh = WT.shape[0], WT.shape[1]
    one = gi.dtype.type(1)
    for b in prange(B):
        gh = np.empty(G, gi.dtype)
        acc = np.empty(3 * dh, gi.dtype)
        for t in range(T):
            h_prev = h0[b] if t == 0 else hs[b, t - 1]
            for q in range(G):
                gh[q] = b_hh[q]
            for hd in range(NH):
                _head_acc(gh, acc, WT[hd], h_prev, hd * dh, H)   # gh = blockdiag(W_hh) h + b_hh
            for u in range(H):
                r = sigmoid(gi[b, t, u] + gh[u])
                z = sigmoid(gi[b, t, H + u] + gh[H + u])
                gh_n = gh[2 * H + u]
                n = tanh(gi[b, t, 2 * H + u] + r * gh_n)
                hs[b, t, u] = (one - z) * n + z * h_prev[u]
                gates[b, t, u] = r
                gates[b, t, H + u] = z
                gates[b, t, 2 * H + u] = n
                gates[b, t, 3 * H + u] = gh_n


@njit(cache=True, error_model="numpy", parallel=True)
def gru_backward(hs, h0, gates, W_hh, dy, dstate, dgi, dgh, dh0):
    """``W_hh (NH, 3dh, dh)``; a row per ``prange`` iteration. Writes ``dgi (B, T,
    3H)`` = ∂L/∂(x W_ih^T + b_ih), ``dgh (B, T, 3H)`` = ∂L/∂(blockdiag(W_hh) h + b_hh),
    and ``dh0 (B, H)``."""
    B, T, H = hs.shape
    NH, dh = W_hh.shape[0], W_hh.shape[2]
    one = hs.dtype.type(1)
    for b in prange(B):
        dh_rec = np.empty(H, hs.dtype)
        for u in range(H):
            dh_rec[u] = dstate[b, u]
        for t in range(T - 1, -1, -1):
            for u in range(H):
                dh_t = dh_rec[u] + dy[b, t, u]
                h_prev = h0[b, u] if t == 0 else hs[b, t - 1, u]
                r = gates[b, t, u]
                z = gates[b, t, H + u]
                n = gates[b, t, 2 * H + u]
                gh_n = gates[b, t, 3 * H + u]
                da_n = dh_t * (one - z) * (one - n * n)       # through n = tanh(·)
                da_z = dh_t * (h_prev - n) * z * (one - z)    # through z = σ(·)
                da_r = da_n * gh_n * r * (one - r)            # through r = σ(·)
                dgi[b, t, u] = da_r
                dgi[b, t, H + u] = da_z
                dgi[b, t, 2 * H + u] = da_n
                dgh[b, t, u] = da_r
                dgh[b, t, H + u] = da_z
                dgh[b, t, 2 * H + u] = da_n * r
                dh_rec[u] = dh_t * z                          # the direct path z ⊙ h_{t-1}
            for hd in range(NH):
                _head_back(dh_rec, dgh[b, t], W_hh[hd], hd * dh, H)
        for u in range(H):
            dh0[b, u] = dh_rec[u]


@njit(cache=True, error_model="numpy", parallel=True)
def lstm_forward_rows(gi, WT, h0, c0, hs, cs, gates):
    """The row form of :func:`lstm_forward`: ``WT (NH, dh, 4dh)`` = ``W_hh[h]^T``."""
    B, T, G = gi.shape
    H = G // 4
    NH, dh = WT.shape[0], WT.shape[1]
    for b in prange(B):
        a = np.empty(G, gi.dtype)
        acc = np.empty(4 * dh, gi.dtype)
        for t in range(T):
            h_prev = h0[b] if t == 0 else hs[b, t - 1]
            c_prev = c0[b] if t == 0 else cs[b, t - 1]
            for q in range(G):
                a[q] = gi[b, t, q]
            for hd in range(NH):
                _head_acc(a, acc, WT[hd], h_prev, hd * dh, H)
            for u in range(H):
                i = sigmoid(a[u])
                f = sigmoid(a[H + u])
                g = tanh(a[2 * H + u])
                og = sigmoid(a[3 * H + u])
                c = f * c_prev[u] + i * g
                cs[b, t, u] = c
                hs[b, t, u] = og * tanh(c)
                gates[b, t, u] = i
                gates[b, t, H + u] = f
                gates[b, t, 2 * H + u] = g
                gates[b, t, 3 * H + u] = og


@njit(cache=True, error_model="numpy", parallel=True)
def lstm_backward(cs, c0, gates, W_hh, dy, dstate_h, dstate_c, da, dh0, dc0):
    """``W_hh (NH, 4dh, dh)``; a row per ``prange`` iteration. Writes ``da (B, T, 4H)``
    = ∂L/∂a_t and ``dh0, dc0 (B, H)``; ``dstate_h``, ``dstate_c`` are the two parts of
    ``dstate``."""
    B, T, H = cs.shape
    NH, dh = W_hh.shape[0], W_hh.shape[2]
    one = cs.dtype.type(1)
    for b in prange(B):
        dh_rec = np.empty(H, cs.dtype)
        dc = np.empty(H, cs.dtype)
        tanh_c = np.empty(H, cs.dtype)
        for u in range(H):
            dh_rec[u] = dstate_h[b, u]
            dc[u] = dstate_c[b, u]
        for t in range(T - 1, -1, -1):
            for u in range(H):   # its own loop: inside the next one it kept it scalar
                tanh_c[u] = tanh(cs[b, t, u])
            for u in range(H):
                dh_t = dh_rec[u] + dy[b, t, u]
                i = gates[b, t, u]
                f = gates[b, t, H + u]
                g = gates[b, t, 2 * H + u]
                o = gates[b, t, 3 * H + u]
                th = tanh_c[u]
                c_prev = c0[b, u] if t == 0 else cs[b, t - 1, u]
                dc_t = dc[u] + dh_t * o * (one - th * th)
                da[b, t, u] = dc_t * g * i * (one - i)
                da[b, t, H + u] = dc_t * c_prev * f * (one - f)
                da[b, t, 2 * H + u] = dc_t * i * (one - g * g)
                da[b, t, 3 * H + u] = dh_t * th * o * (one - o)
                dc[u] = dc_t * f
                dh_rec[u] = 0
            for hd in range(NH):
                _head_back(dh_rec, da[b, t], W_hh[hd], hd * dh, H)
        for u in range(H):
            dh0[b, u] = dh_rec[u]
            dc0[b, u] = dc[u]



# ---------------------------------------------------------------------------
# the wrapper: the definitions' signatures, plumbing here
# ---------------------------------------------------------------------------

class Cache(NamedTuple):
    """The cell's ``cache.kernel``: what :func:`backward` needs."""

    cell: str          # "rnn", "gru" or "lstm"
    x: np.ndarray      # (B, T, D) the input, as given
    hs: np.ndarray     # (B, T, H) every h_t (the returned y)
    cs: np.ndarray | None  # (B, T, H) every c_t (LSTM; None otherwise)
    h0: np.ndarray     # (B, H) the initial h, contiguous, in the computation dtype
    c0: np.ndarray | None  # (B, H) the LSTM's initial c
    gates: np.ndarray | None  # GRU [r | z | n | gh_n] (B, T, 4H), LSTM [i | f | g | o]
    relu: bool         # the RNN's φ = relu (else tanh)


@njit(cache=True, error_model="numpy", parallel=True)
def head_weight_grad_heads(d, hp, out):
    """``out[h] = d[h]^T hp[h]`` for ``d (NH, N, G·dh)``, ``hp (NH, N, dh)``, ``out (NH,
    G·dh, dh)``: one single-threaded gemm per head, the heads over Numba's threads."""
    for h in prange(d.shape[0]):
        np.dot(d[h].T, hp[h], out[h])


# head_weight_grad's two forms, ms (float32, 2 cores), batched matmul / gemm per head:
# LSTM (B, T, H, NH) = (8, 256, 256, 4) 13.0 / 4.3 (G·dh = 256), GRU there 4.3 / 3.1
# (192), LSTM (8, 512, 64, 4) 2.6 / 2.4 (64), (2, 4096, 32, 4) 1.5 / 2.3 (32), RNN
# (8, 256, 256, 4) 0.5 / 1.1 (64): the per-head gemms from G·dh = 128 on.
HEAD_GEMM_MIN_ROWS = 128


def head_weight_grad(dgh: np.ndarray, h_prev: np.ndarray, NH: int) -> np.ndarray:
    """``dW_hh[h, g·dh + j, k] = Σ_{B,T} dgh[·, g·H + h·dh + j] h_prev[·, h·dh + k]``
    → ``(NH, G·dh, dh)``. For heads with ``G·dh ≥`` :data:`HEAD_GEMM_MIN_ROWS`:
    ``dgh`` and ``h_prev`` regrouped head-major (copies whose inner runs are the
    ``dh`` units of a gate), then a gemm per head (:func:`head_weight_grad_heads`);
    otherwise one batched ``np.matmul`` over views with ``B·T`` last."""
    B, T, G = dgh.shape
    H = h_prev.shape[2]
    dh, N, ng = H // NH, B * T, G // H
    if ng * dh < HEAD_GEMM_MIN_ROWS:
        d = dgh.reshape(N, ng, NH, dh).transpose(2, 1, 3, 0).reshape(NH, ng * dh, N)
        return np.matmul(d, h_prev.reshape(N, NH, dh).transpose(1, 0, 2))
    d = np.ascontiguousarray(dgh.reshape(N, ng, NH, dh).transpose(2, 0, 1, 3))
    hp = np.ascontiguousarray(h_prev.reshape(N, NH, dh).transpose(1, 0, 2))
    out = np.empty((NH, ng * dh, dh), dgh.dtype)
    with blas_single_thread():
        head_weight_grad_heads(d.reshape(NH, N, ng * dh), hp, out)
    return out


def _grads(params, x, h_prev, dgi, dgh, NH):
    """The GEMMs after the reverse loop: every parameter's gradient and ``"x"``
    (:func:`minirec.kernels.numba.classic.dense_grads`, rows over Numba's threads;
    ``W_hh`` per head, :func:`head_weight_grad`)."""
    grads = classic.dense_grads(x, None, dgi, dgh, params["W_ih"].astype(dgi.dtype, copy=False))
    grads["W_hh"] = head_weight_grad(dgh, h_prev, NH)
    return grads


# The forward's form by head width (measured, LSTM float32, T = 256, 2 cores, forward
# ms rows / blocked: B = 8, H = 256: dh = 1 15.6 / 20.1, dh = 4 16.5 / 12.0, dh = 8
# 16.4 / 9.3, dh = 64 18.6 / 3.1; B = 32, H = 64: dh = 4 17.5 / 11.3, dh = 16 20.4 / 7.0).
# The backward's row form measured faster than a blocked one at every width (B = 8,
# H = 256, dh = 64: 5.7 vs 6.3 ms; B = 32: 24 vs 26 ms), so only the forward has both.
HEAD_BLOCK_MIN_DH = 8


def head_panels(W: np.ndarray, B: int) -> np.ndarray:
    """Each head's operand ``W[h] (K, N)`` as column panels (:func:`classic.panels`)
    → ``(NH, P, K, cb)``, contiguous."""
    return np.ascontiguousarray(np.stack([classic.panels(w, B) for w in W]))


def blocked(dh: int) -> bool:
    """Whether the forward runs in the blocked form (per-head products over a block of
    rows, :func:`lstm_forward`) rather than the row form (:func:`lstm_forward_rows`):
    heads of at least :data:`HEAD_BLOCK_MIN_DH` units."""
    return dh >= HEAD_BLOCK_MIN_DH


def forward(params: dict, x: np.ndarray, state0, *, cell: str,
            nonlinearity: str = "tanh") -> tuple[np.ndarray, object, Cache]:
    """``y (B, T, H)``, the final state (``h``, or ``(h, c)`` for the LSTM) and the
    kernel :class:`Cache`, from validated ``params`` (``W_hh (NH, G·dh, dh)``),
    ``x (B, T, D)`` and ``state0`` (not ``None``)."""
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    dtype = np.result_type(x, *params.values())
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    WT = p["W_hh"].transpose(0, 2, 1)  # (NH, dh, G·dh)
    x_c = x.astype(dtype, copy=False)
    cs = c0 = gates = None
    relu = nonlinearity == "relu"
    # the projection, rows over Numba's threads (classic.project); the GRU's b_hh
    # stays inside the recurrence (r ⊙ (W_hn h + b_hn))
    gi = classic.project(x_c, p["W_ih"], p["b_ih"] if cell == "gru" else p["b_ih"] + p["b_hh"])
    B, T, G = gi.shape
    H = G // GATES[cell]
    hs = np.empty((B, T, H), dtype)
    h0 = np.ascontiguousarray(state0[0] if cell == "lstm" else state0, dtype=dtype)
    if cell == "gru":
        gates = np.empty((B, T, 4 * H), dtype)
    elif cell == "lstm":
        cs, gates = np.empty_like(hs), np.empty_like(gi)
        c0 = np.ascontiguousarray(state0[1], dtype=dtype)
    if blocked(WT.shape[1]):
        # per-head products over blocks of rows: gemms when the panels fit (classic)
        WTp, gemm, n = head_panels(WT, B), classic.use_gemm(WT[0], B), classic.n_chunks(B)
        with blas_single_thread():
            if cell == "rnn":
                rnn_forward(gi, WTp, h0, relu, gemm, n, hs)
            elif cell == "gru":
                gru_forward(gi, WTp, np.ascontiguousarray(p["b_hh"]), h0, gemm, n, hs, gates)
            else:
                lstm_forward(gi, WTp, h0, c0, gemm, n, hs, cs, gates)
    else:
        WT = np.ascontiguousarray(WT)
        if cell == "rnn":
            rnn_forward_rows(gi, WT, h0, relu, hs)
        elif cell == "gru":
            gru_forward_rows(gi, WT, np.ascontiguousarray(p["b_hh"]), h0, hs, gates)
        else:
            lstm_forward_rows(gi, WT, h0, c0, hs, cs, gates)
    state = (hs[:, -1].copy(), cs[:, -1].copy()) if cell == "lstm" else hs[:, -1].copy()
    return hs, state, Cache(cell, x, hs, cs, h0, c0, gates, relu)


def backward(params: dict, cache: Cache, dy: np.ndarray, dstate) -> dict:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0"`` (the state's
    structure); ``dy (B, T, H)`` and ``dstate`` are arrays (zeros, not ``None``)."""
    hs, h0 = cache.hs, cache.h0
    dt = hs.dtype
    B, T, H = hs.shape
    W_hh = np.ascontiguousarray(params["W_hh"], dtype=dt)
    NH = W_hh.shape[0]
    dy = np.ascontiguousarray(dy, dtype=dt)
    with blas_single_thread():
        dh0 = np.empty_like(h0)
        if cache.cell == "rnn":
            da = np.empty_like(hs)
            rnn_backward(hs, W_hh, dy, np.ascontiguousarray(dstate, dtype=dt), cache.relu,
                         da, dh0)
            dgi = dgh = da
        elif cache.cell == "gru":
            dgi, dgh = np.empty((B, T, 3 * H), dt), np.empty((B, T, 3 * H), dt)
            gru_backward(hs, h0, cache.gates, W_hh, dy, np.ascontiguousarray(dstate, dtype=dt),
                         dgi, dgh, dh0)
        else:
            da = np.empty_like(cache.gates)
            dc0 = np.empty_like(cache.c0)
            lstm_backward(cache.cs, cache.c0, cache.gates, W_hh, dy,
                          *(np.ascontiguousarray(d, dtype=dt) for d in dstate), da, dh0, dc0)
            dgi = dgh = da
        grads = _grads(params, cache.x.astype(dt, copy=False),
                       _dense.previous_states(h0, hs), dgi, dgh, NH)
    grads["state0"] = (dh0, dc0) if cache.cell == "lstm" else dh0
    return grads
