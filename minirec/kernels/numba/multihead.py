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
    dW_hh[h] = Σ_{B,T} da[head]^T h_{t-1}[head]      one batched GEMM over the heads

Tested against the cells with ``backend="numpy"`` (tests/test_contract.py,
tests/cells/test_multihead.py). The ``@njit`` loops run ``prange`` over the
batch (rows are independent recurrences; on 2 cores, B ≥ 2 keeps both busy)
and, inside a row, the time loop with the heads one after the other. A head's
block ``W_hh[h]`` (``G·dh²`` numbers: 64 KiB in float32 for an LSTM head of
dh = 64) is read once per step while the head is worked on, so it stays in
L1/L2: per step the row touches ``G·H·dh`` weights instead of the full cell's
``G·H·H`` (NH times fewer multiply-adds and bytes). The products are sums of
rows, ``acc[q] += h_{t-1}[k] WT[h, k, q]`` forward (``WT[h] = W_hh[h]^T``) and
``dh[k] += da[q] W_hh[h, q, k]`` backward: the inner loop runs over
contiguous memory and vectorises without ``fastmath``; the rows are taken as
1-D views (``row = WT[h][k]``) — indexing the 2-D block inside the inner loop
measured 5× slower in the backward (245 vs 44 ms at B = 8, T = 256, H = 256,
NH = 4, float32, 2 cores).

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

CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


@njit(cache=True, error_model="numpy", inline="always")
def _head_preact(acc, base, WT_h, h_prev, o, H):
    """``acc[g·dh + j] = base[g·H + o + j] + Σ_k WT_h[k, g·dh + j] h_prev[o + k]``:
    the head's pre-activations (``o = h·dh``), the product a sum of rows."""
    dh, Gd = WT_h.shape
    for g in range(Gd // dh):
        for j in range(dh):
            acc[g * dh + j] = base[g * H + o + j]
    for k in range(dh):
        c = h_prev[o + k]
        row = WT_h[k]
        for q in range(Gd):
            acc[q] += c * row[q]


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


# ---------------------------------------------------------------------------
# Elman RNN: a_t = gi_t + blockdiag(W_hh) h_{t-1},  h_t = φ(a_t)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def rnn_forward(gi, WT, h0, relu, hs):
    """``gi (B, T, H)`` = x W_ih^T + b_ih + b_hh, ``WT (NH, dh, dh)`` = ``W_hh^T``
    per head, ``h0 (B, H)`` → ``hs (B, T, H)`` (written)."""
    B, T, H = gi.shape
    NH, dh = WT.shape[0], WT.shape[1]
    for b in prange(B):
        a = np.empty(dh, gi.dtype)
        for t in range(T):
            h_prev = h0[b] if t == 0 else hs[b, t - 1]
            for hd in range(NH):
                o = hd * dh
                _head_preact(a, gi[b, t], WT[hd], h_prev, o, H)
                for j in range(dh):
                    if relu:
                        hs[b, t, o + j] = a[j]
                        if a[j] <= 0:  # NaN <= 0 is False: NaN stays, as np.maximum(a, 0)
                            hs[b, t, o + j] = 0
                    else:
                        hs[b, t, o + j] = tanh(a[j])


@njit(cache=True, error_model="numpy", parallel=True)
def rnn_backward(hs, W_hh, dy, dstate, relu, da, dh0):
    """Reverse loop: writes ``da (B, T, H)`` = ∂L/∂a_t and ``dh0 (B, H)``."""
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


# ---------------------------------------------------------------------------
# GRU: gh = blockdiag(W_hh) h_{t-1} + b_hh; r, z = σ(gi + gh), n = tanh(gi_n + r gh_n)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def gru_forward(gi, WT, b_hh, h0, hs, gates):
    """``gi (B, T, 3H)`` = x W_ih^T + b_ih; ``WT (NH, dh, 3dh)``; ``b_hh (3H,)``.
    Writes ``hs (B, T, H)`` and ``gates (B, T, 4H)`` = [r | z | n | gh_n]."""
    B, T, G = gi.shape
    H = G // 3
    NH, dh = WT.shape[0], WT.shape[1]
    one = gi.dtype.type(1)
    for b in prange(B):
        gh = np.empty(3 * dh, gi.dtype)
        for t in range(T):
            h_prev = h0[b] if t == 0 else hs[b, t - 1]
            for hd in range(NH):
                o = hd * dh
                _head_preact(gh, b_hh, WT[hd], h_prev, o, H)  # gh = W_hh[h] h + b_hh
                for j in range(dh):
                    u = o + j
                    r = sigmoid(gi[b, t, u] + gh[j])
                    z = sigmoid(gi[b, t, H + u] + gh[dh + j])
                    gh_n = gh[2 * dh + j]
                    n = tanh(gi[b, t, 2 * H + u] + r * gh_n)
                    hs[b, t, u] = (one - z) * n + z * h_prev[u]
                    gates[b, t, u] = r
                    gates[b, t, H + u] = z
                    gates[b, t, 2 * H + u] = n
                    gates[b, t, 3 * H + u] = gh_n


@njit(cache=True, error_model="numpy", parallel=True)
def gru_backward(hs, h0, gates, W_hh, dy, dstate, dgi, dgh, dh0):
    """Writes ``dgi (B, T, 3H)`` = ∂L/∂(x W_ih^T + b_ih), ``dgh (B, T, 3H)`` =
    ∂L/∂(blockdiag(W_hh) h + b_hh), and ``dh0 (B, H)``."""
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


# ---------------------------------------------------------------------------
# LSTM: a_t = gi_t + blockdiag(W_hh) h_{t-1}; i, f, g, o; c = f c + i g; h = o tanh(c)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def lstm_forward(gi, WT, h0, c0, hs, cs, gates):
    """``gi (B, T, 4H)`` = x W_ih^T + b_ih + b_hh; ``WT (NH, dh, 4dh)``.
    Writes ``hs, cs (B, T, H)`` and ``gates (B, T, 4H)`` = [i | f | g | o]."""
    B, T, G = gi.shape
    H = G // 4
    NH, dh = WT.shape[0], WT.shape[1]
    for b in prange(B):
        a = np.empty(4 * dh, gi.dtype)
        for t in range(T):
            h_prev = h0[b] if t == 0 else hs[b, t - 1]
            c_prev = c0[b] if t == 0 else cs[b, t - 1]
            for hd in range(NH):
                o = hd * dh
                _head_preact(a, gi[b, t], WT[hd], h_prev, o, H)
                for j in range(dh):
                    u = o + j
                    i = sigmoid(a[j])
                    f = sigmoid(a[dh + j])
                    g = tanh(a[2 * dh + j])
                    og = sigmoid(a[3 * dh + j])
                    c = f * c_prev[u] + i * g
                    cs[b, t, u] = c
                    hs[b, t, u] = og * tanh(c)
                    gates[b, t, u] = i
                    gates[b, t, H + u] = f
                    gates[b, t, 2 * H + u] = g
                    gates[b, t, 3 * H + u] = og


@njit(cache=True, error_model="numpy", parallel=True)
def lstm_backward(cs, c0, gates, W_hh, dy, dstate_h, dstate_c, da, dh0, dc0):
    """Writes ``da (B, T, 4H)`` = ∂L/∂a_t and ``dh0, dc0 (B, H)``; ``dstate_h``,
    ``dstate_c`` are the two parts of ``dstate``."""
    B, T, H = cs.shape
    NH, dh = W_hh.shape[0], W_hh.shape[2]
    one = cs.dtype.type(1)
    for b in prange(B):
        dh_rec = np.empty(H, cs.dtype)
        dc = np.empty(H, cs.dtype)
        for u in range(H):
            dh_rec[u] = dstate_h[b, u]
            dc[u] = dstate_c[b, u]
        for t in range(T - 1, -1, -1):
            for u in range(H):
                dh_t = dh_rec[u] + dy[b, t, u]
                i = gates[b, t, u]
                f = gates[b, t, H + u]
                g = gates[b, t, 2 * H + u]
                o = gates[b, t, 3 * H + u]
                tanh_c = tanh(cs[b, t, u])
                c_prev = c0[b, u] if t == 0 else cs[b, t - 1, u]
                dc_t = dc[u] + dh_t * o * (one - tanh_c * tanh_c)
                da[b, t, u] = dc_t * g * i * (one - i)
                da[b, t, H + u] = dc_t * c_prev * f * (one - f)
                da[b, t, 2 * H + u] = dc_t * i * (one - g * g)
                da[b, t, 3 * H + u] = dh_t * tanh_c * o * (one - o)
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


def head_weight_grad(dgh: np.ndarray, h_prev: np.ndarray, NH: int) -> np.ndarray:
    """``dW_hh[h, g·dh + j, k] = Σ_{B,T} dgh[·, g·H + h·dh + j] h_prev[·, h·dh + k]``
    as one batched GEMM over the heads → ``(NH, G·dh, dh)``."""
    B, T, G = dgh.shape
    H = h_prev.shape[2]
    dh, N = H // NH, B * T
    d = dgh.reshape(N, G // H, NH, dh).transpose(2, 1, 3, 0).reshape(NH, G // NH, N)
    return np.matmul(d, h_prev.reshape(N, NH, dh).transpose(1, 0, 2))


def _grads(params, x, h_prev, dgi, dgh, NH):
    """The GEMMs after the reverse loop: every parameter's gradient and ``"x"``
    (:func:`minirec.kernels.numba.classic.dense_grads`, rows over Numba's threads;
    ``W_hh`` per head, :func:`head_weight_grad`)."""
    grads = classic.dense_grads(x, None, dgi, dgh, params["W_ih"].astype(dgi.dtype, copy=False))
    grads["W_hh"] = head_weight_grad(dgh, h_prev, NH)
    return grads


def forward(params: dict, x: np.ndarray, state0, *, cell: str,
            nonlinearity: str = "tanh") -> tuple[np.ndarray, object, Cache]:
    """``y (B, T, H)``, the final state (``h``, or ``(h, c)`` for the LSTM) and the
    kernel :class:`Cache`, from validated ``params`` (``W_hh (NH, G·dh, dh)``),
    ``x (B, T, D)`` and ``state0`` (not ``None``)."""
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    dtype = np.result_type(x, *params.values())
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    WT = np.ascontiguousarray(p["W_hh"].transpose(0, 2, 1))  # (NH, dh, G·dh)
    x_c = x.astype(dtype, copy=False)
    cs = c0 = gates = None
    relu = nonlinearity == "relu"
    # the projection, rows over Numba's threads (classic.project); the GRU's b_hh
    # stays inside the recurrence (r ⊙ (W_hn h + b_hn))
    gi = classic.project(x_c, p["W_ih"], p["b_ih"] if cell == "gru" else p["b_ih"] + p["b_hh"])
    with blas_single_thread():
        B, T, G = gi.shape
        H = G // GATES[cell]
        hs = np.empty((B, T, H), dtype)
        h0 = np.ascontiguousarray(state0[0] if cell == "lstm" else state0, dtype=dtype)
        if cell == "rnn":
            rnn_forward(gi, WT, h0, relu, hs)
        elif cell == "gru":
            gates = np.empty((B, T, 4 * H), dtype)
            gru_forward(gi, WT, np.ascontiguousarray(p["b_hh"]), h0, hs, gates)
        else:
            cs, gates = np.empty_like(hs), np.empty_like(gi)
            c0 = np.ascontiguousarray(state0[1], dtype=dtype)
            lstm_forward(gi, WT, h0, c0, hs, cs, gates)
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
