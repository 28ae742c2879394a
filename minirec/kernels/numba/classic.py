"""Numba time loops of the classic cells: Elman RNN, GRU, LSTM (PyTorch conventions).

Tested against ``minirec.cells.rnn``/``gru``/``lstm`` with ``backend="numpy"``
(tests/test_contract.py, tests/kernels/test_numba_classic.py). The cells reach
these through the wrappers :mod:`minirec.kernels.numba.rnn`, ``gru`` and
``lstm`` (the backend seam: the definitions' signatures and return
structures). A wrapper receives arguments the cell has validated and does the
plumbing: BLAS threads (:mod:`minirec.kernels.numba._blas`), casts,
contiguity, output buffers. The work is split as the cells' structure
suggests:

* The input part of the pre-activations for all T (``gi = x W_ih^T + b``,
  ``(B, T, G·H)``) is one BLAS GEMM before the loop, and so are the weight
  gradients ``dW_ih = Σ_t dgi_t^T x_t``, ``dW_hh = Σ_t dgh_t^T h_{t-1}`` and
  ``dx = dgi W_ih`` after the backward loop (:mod:`minirec.kernels._dense`).
* The ``@njit`` kernels run only the time loop. The batch is cut into
  ``n_chunks`` blocks of rows (one per thread, ``prange``; rows are independent
  recurrences, so each block runs its own loop over time and the ``prange``
  start-up cost is paid once). Per step and block, the recurrent product of
  the whole block, ``h_{t-1} W_hh^T`` ``(B_c, H) @ (H, G·H)`` (forward) or
  ``da_t W_hh`` (backward), then one fused pass over the block for the gates
  and the state update. Nothing is allocated per step: the block's state and
  pre-activations live in ``(B_c, ·)`` buffers made once.

The recurrent product has two forms, chosen by the wrapper (``gemm``, :func:`use_gemm`):

* ``gemm=True``: ``np.dot`` on contiguous 2-D buffers, which Numba lowers to a
  BLAS ``gemm`` call (SciPy's BLAS, run on one thread inside a ``prange``
  block), one call per column panel of the operand: the wrapper passes
  ``W_hh^T`` (forward) or ``W_hh`` (backward) as panels ``(P, K, cb)``
  (:func:`panels`), the width chosen so that each call stays in OpenBLAS's
  small-matrix kernel, which does not pack the operand (:data:`SMALL_GEMM_MACS`;
  one call when the whole product fits). Packing all of ``W_hh`` on every step
  for a handful of rows cost 3–5× the panelled time at H = 256–512.
* ``gemm=False``: the row loop ``out[b, j] += h[b, k] W^T[k, j]`` (contiguous
  inner ``j``, vectorises without ``fastmath``): no call and no packing. Used
  only for a large operand with few rows per block when no panel width fits
  (measured slower than the panels wherever both apply).

``tanh`` and ``σ`` come from :mod:`minirec.kernels.numba._math` (one ``exp``
each, in the argument's precision), and every constant is built in the
arrays' dtype (``one = hs.dtype.type(1)``): float32 runs compute in float32
throughout. Gate order: GRU r, z, n; LSTM i, f, g, o. The arguments carry the
cells' names (``gi``, ``da``, ``dgh``, ``dstate``, …); ``W_hhT`` is
``W_hh^T`` made contiguous.

NaN and ±inf propagate as in the NumPy definitions (BLAS and the row loop
both give NaN for NaN · 0): ``relu`` keeps a NaN (``np.maximum(a, 0)``
does) and its backward multiplies by ``[h > 0]`` (so a NaN upstream gradient
stays NaN even where ``h ≤ 0``).

This module imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from minirec.kernels.numba._blas import blas_single_thread
from minirec.kernels.numba._math import sigmoid, tanh


@njit(cache=True, error_model="numpy", inline="always")
def _rows(B, n_chunks, c):
    """Rows ``[b0, b1)`` of block ``c`` of ``n_chunks`` (sizes differ by ≤ 1)."""
    return c * B // n_chunks, (c + 1) * B // n_chunks


@njit(cache=True, error_model="numpy", inline="always")
def _add_row_combination(out, coef, M):
    """``out += coef @ M`` for one row ``coef (K,)``, written as a sum of rows,
    ``out[j] += coef[k] M[k, j]`` (the row loop of :func:`_product`; also used by
    :mod:`minirec.kernels.numba.ln_lstm`)."""
    for k in range(coef.shape[0]):
        c = coef[k]
        for j in range(out.shape[0]):
            out[j] += c * M[k, j]


@njit(cache=True, error_model="numpy", inline="always")
def _product(coef, Mp, out, gemm, tmp):
    """``out = coef @ M`` for C-contiguous ``coef (B_c, K)`` and ``out (B_c, N)``,
    ``M (K, N)`` given as its column panels ``Mp (P, K, cb)`` (``M[:, p·cb + j] =
    Mp[p, :, j]``, :func:`panels`): a BLAS gemm per panel (into ``tmp (P, B_c, cb)``,
    then copied into ``out``; one gemm straight into ``out`` when ``P = 1``), or the
    row loop ``out[b, p·cb + j] += coef[b, k] Mp[p, k, j]`` (inner loop over the
    contiguous ``j``)."""
    P, _, cb = Mp.shape
    if gemm and P == 1:
        np.dot(coef, Mp[0], out)
    elif gemm:
        for p in range(P):
            np.dot(coef, Mp[p], tmp[p])
        for b in range(out.shape[0]):
            for p in range(P):
                for j in range(cb):
                    out[b, p * cb + j] = tmp[p, b, j]
    else:
        zero = out.dtype.type(0)
        for b in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[b, j] = zero
            for p in range(P):
                _add_row_combination(out[b, p * cb:(p + 1) * cb], coef[b], Mp[p])


@njit(cache=True, error_model="numpy", inline="always")
def _panel_buffer(Mp, rows):
    """The ``(P, rows, cb)`` buffer of :func:`_product`'s panel gemms."""
    return np.empty((Mp.shape[0], rows, Mp.shape[2]), Mp.dtype)


@njit(cache=True, error_model="numpy", inline="always")
def _load(dst, src, b0):
    """``dst[:] = src[b0 : b0 + len(dst)]`` (a block of rows)."""
    for b in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[b, j] = src[b0 + b, j]


# ---------------------------------------------------------------------------
# Elman RNN: a_t = gi_t + h_{t-1} W_hh^T,  h_t = φ(a_t)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def rnn_forward(gi, W_hhT, h0, relu, gemm, n_chunks, hs):
    """``gi (B, T, H)`` = x W_ih^T + b_ih + b_hh, ``W_hhT`` = W_hh^T ``(H, H)`` as panels
    ``(P, H, cb)`` (:func:`panels`), ``h0 (B, H)``
    → ``hs (B, T, H)`` (written), ``φ = relu`` if ``relu`` else ``tanh``."""
    B, T, H = gi.shape
    zero = gi.dtype.type(0)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        tmp = _panel_buffer(W_hhT, b1 - b0)
        h = np.empty((b1 - b0, H), gi.dtype)   # h_{t-1} of the block
        a = np.empty((b1 - b0, H), gi.dtype)   # h_{t-1} W_hh^T
        _load(h, h0, b0)
        for t in range(T):
            _product(h, W_hhT, a, gemm, tmp)
            for bb in range(b1 - b0):
                for j in range(H):
                    a_j = a[bb, j] + gi[b0 + bb, t, j]
                    if relu:
                        h_j = a_j
                        if a_j <= 0:  # NaN <= 0 is False: NaN stays, as in np.maximum(a, 0)
                            h_j = zero
                    else:
                        h_j = tanh(a_j)
                    h[bb, j] = h_j
                    hs[b0 + bb, t, j] = h_j


@njit(cache=True, error_model="numpy", parallel=True)
def rnn_backward(hs, W_hh, dy, dstate, relu, gemm, n_chunks, da, dh0):
    """Reverse loop: writes ``da (B, T, H)`` = ∂L/∂a_t and ``dh0 (B, H)``; ``W_hh
    (H, H)`` as panels ``(P, H, cb)`` (:func:`panels`)."""
    B, T, H = hs.shape
    one = hs.dtype.type(1)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        tmp = _panel_buffer(W_hh, b1 - b0)
        dh = np.empty((b1 - b0, H), hs.dtype)    # ∂L/∂h_t from t+1
        da_t = np.empty((b1 - b0, H), hs.dtype)
        _load(dh, dstate, b0)
        for t in range(T - 1, -1, -1):
            for bb in range(b1 - b0):
                b = b0 + bb
                for j in range(H):
                    dh_t = dh[bb, j] + dy[b, t, j]
                    h = hs[b, t, j]
                    if not relu:
                        d = dh_t * (one - h * h)
                    elif h > 0:
                        d = dh_t
                    else:  # dh_t · 0: zero, or NaN for a NaN/±inf dh_t (as dh ⊙ [h > 0])
                        d = dh_t - dh_t
                    da_t[bb, j] = d
                    da[b, t, j] = d
            _product(da_t, W_hh, dh, gemm, tmp)            # dh_{t-1} = da_t W_hh
        for bb in range(b1 - b0):
            for j in range(H):
                dh0[b0 + bb, j] = dh[bb, j]


# ---------------------------------------------------------------------------
# GRU: r, z = σ(gi_r,z + gh_r,z), n = tanh(gi_n + r ⊙ gh_n), h = (1 − z) n + z h
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def gru_forward(gi, W_hhT, b_hh, h0, gemm, n_chunks, hs, gates):
    """``gi (B, T, 3H)`` = x W_ih^T + b_ih; ``W_hhT`` = W_hh^T ``(H, 3H)`` as panels
    ``(P, H, cb)``; ``b_hh (3H,)``.
    Writes ``hs (B, T, H)`` and ``gates (B, T, 4H)`` = [r | z | n | gh_n]."""
    B, T, G = gi.shape
    H = G // 3
    one = gi.dtype.type(1)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        tmp = _panel_buffer(W_hhT, b1 - b0)
        h = np.empty((b1 - b0, H), gi.dtype)    # h_{t-1} of the block
        gh = np.empty((b1 - b0, G), gi.dtype)   # h_{t-1} W_hh^T (b_hh added below)
        _load(h, h0, b0)
        for t in range(T):
            _product(h, W_hhT, gh, gemm, tmp)
            for bb in range(b1 - b0):
                b = b0 + bb
                for j in range(H):
                    gh_n = gh[bb, 2 * H + j] + b_hh[2 * H + j]
                    r = sigmoid(gi[b, t, j] + (gh[bb, j] + b_hh[j]))
                    z = sigmoid(gi[b, t, H + j] + (gh[bb, H + j] + b_hh[H + j]))
                    n = tanh(gi[b, t, 2 * H + j] + r * gh_n)
                    h_t = (one - z) * n + z * h[bb, j]
                    h[bb, j] = h_t
                    hs[b, t, j] = h_t
                    gates[b, t, j] = r
                    gates[b, t, H + j] = z
                    gates[b, t, 2 * H + j] = n
                    gates[b, t, 3 * H + j] = gh_n


@njit(cache=True, error_model="numpy", parallel=True)
def gru_backward(hs, h0, gates, W_hh, dy, dstate, gemm, n_chunks, dgi, dgh, dh0):
    """``W_hh (3H, H)`` as panels ``(P, 3H, cb)`` (:func:`panels`).
    Writes ``dgi (B, T, 3H)`` = ∂L/∂(x W_ih^T + b_ih), ``dgh (B, T, 3H)`` =
    ∂L/∂(h W_hh^T + b_hh), and ``dh0 (B, H)``."""
    B, T, H = hs.shape
    one = hs.dtype.type(1)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        tmp = _panel_buffer(W_hh, b1 - b0)
        dh = np.empty((b1 - b0, H), hs.dtype)         # ∂L/∂h_t from t+1
        dh_W = np.empty((b1 - b0, H), hs.dtype)       # dgh_t W_hh
        dgh_t = np.empty((b1 - b0, 3 * H), hs.dtype)
        _load(dh, dstate, b0)
        for t in range(T - 1, -1, -1):
            for bb in range(b1 - b0):
                b = b0 + bb
                for j in range(H):
                    dh_t = dh[bb, j] + dy[b, t, j]
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
                    dgh_t[bb, j] = da_r
                    dgh_t[bb, H + j] = da_z
                    dgh_t[bb, 2 * H + j] = da_n * r
                    dh[bb, j] = dh_t * z                          # the direct path z ⊙ h_{t-1}
            _product(dgh_t, W_hh, dh_W, gemm, tmp)
            for bb in range(b1 - b0):
                for j in range(H):
                    dh[bb, j] += dh_W[bb, j]
        for bb in range(b1 - b0):
            for j in range(H):
                dh0[b0 + bb, j] = dh[bb, j]


# ---------------------------------------------------------------------------
# LSTM: a_t = gi_t + h_{t-1} W_hh^T, gates i, f, g, o; c = f c + i g; h = o tanh(c)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def lstm_forward(gi, W_hhT, h0, c0, gemm, n_chunks, hs, cs, gates):
    """``gi (B, T, 4H)`` = x W_ih^T + b_ih + b_hh; ``W_hhT`` = W_hh^T ``(H, 4H)`` as
    panels ``(P, H, cb)``.
    Writes ``hs, cs (B, T, H)`` and ``gates (B, T, 4H)`` = [i | f | g | o]."""
    B, T, G = gi.shape
    H = G // 4
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        tmp = _panel_buffer(W_hhT, b1 - b0)
        h = np.empty((b1 - b0, H), gi.dtype)        # h_{t-1} of the block
        c_prev = np.empty((b1 - b0, H), gi.dtype)   # c_{t-1} of the block
        a = np.empty((b1 - b0, G), gi.dtype)        # h_{t-1} W_hh^T
        _load(h, h0, b0)
        _load(c_prev, c0, b0)
        for t in range(T):
            _product(h, W_hhT, a, gemm, tmp)
            for bb in range(b1 - b0):
                b = b0 + bb
                for j in range(H):
                    i = sigmoid(a[bb, j] + gi[b, t, j])
                    f = sigmoid(a[bb, H + j] + gi[b, t, H + j])
                    g = tanh(a[bb, 2 * H + j] + gi[b, t, 2 * H + j])
                    o = sigmoid(a[bb, 3 * H + j] + gi[b, t, 3 * H + j])
                    c_t = f * c_prev[bb, j] + i * g
                    h_t = o * tanh(c_t)
                    c_prev[bb, j] = c_t
                    h[bb, j] = h_t
                    cs[b, t, j] = c_t
                    hs[b, t, j] = h_t
                    gates[b, t, j] = i
                    gates[b, t, H + j] = f
                    gates[b, t, 2 * H + j] = g
                    gates[b, t, 3 * H + j] = o


@njit(cache=True, error_model="numpy", parallel=True)
def lstm_backward(cs, c0, gates, W_hh, dy, dstate_h, dstate_c, gemm, n_chunks, da, dh0, dc0):
    """``W_hh (4H, H)`` as panels ``(P, 4H, cb)`` (:func:`panels`).
    Writes ``da (B, T, 4H)`` = ∂L/∂a_t and ``dh0, dc0 (B, H)``; ``dstate_h``,
    ``dstate_c`` are the two parts of ``dstate``."""
    B, T, H = cs.shape
    one = cs.dtype.type(1)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        tmp = _panel_buffer(W_hh, b1 - b0)
        dh = np.empty((b1 - b0, H), cs.dtype)        # ∂L/∂h_t from t+1
        dc = np.empty((b1 - b0, H), cs.dtype)        # ∂L/∂c_t from t+1
        da_t = np.empty((b1 - b0, 4 * H), cs.dtype)
        tanh_c = np.empty(H, cs.dtype)               # tanh(c_t) of a row
        _load(dh, dstate_h, b0)
        _load(dc, dstate_c, b0)
        for t in range(T - 1, -1, -1):
            for bb in range(b1 - b0):
                b = b0 + bb
                for j in range(H):   # its own loop: inside the next one it kept it scalar
                    tanh_c[j] = tanh(cs[b, t, j])
                for j in range(H):
                    dh_t = dh[bb, j] + dy[b, t, j]
                    i = gates[b, t, j]
                    f = gates[b, t, H + j]
                    g = gates[b, t, 2 * H + j]
                    o = gates[b, t, 3 * H + j]
                    th = tanh_c[j]
                    c_prev = c0[b, j] if t == 0 else cs[b, t - 1, j]
                    dc_t = dc[bb, j] + dh_t * o * (one - th * th)
                    da_i = dc_t * g * i * (one - i)
                    da_f = dc_t * c_prev * f * (one - f)
                    da_g = dc_t * i * (one - g * g)
                    da_o = dh_t * th * o * (one - o)
                    da_t[bb, j] = da_i
                    da_t[bb, H + j] = da_f
                    da_t[bb, 2 * H + j] = da_g
                    da_t[bb, 3 * H + j] = da_o
                    da[b, t, j] = da_i
                    da[b, t, H + j] = da_f
                    da[b, t, 2 * H + j] = da_g
                    da[b, t, 3 * H + j] = da_o
                    dc[bb, j] = dc_t * f
            _product(da_t, W_hh, dh, gemm, tmp)                # dh_{t-1} = da_t W_hh
        for bb in range(b1 - b0):
            for j in range(H):
                dh0[b0 + bb, j] = dh[bb, j]
                dc0[b0 + bb, j] = dc[bb, j]


# ---------------------------------------------------------------------------
# the GEMMs over all T, the rows split over Numba's threads
# ---------------------------------------------------------------------------
# One single-threaded gemm per block of rows, each in its own prange thread,
# instead of OpenBLAS's own threads: OpenBLAS's workers keep spinning after a
# threaded call and then slow the time loop that follows on the same cores
# (measured, LSTM (8, 1024, 128) float32: forward 91 ms after a threaded
# projection, 46 ms after a single-threaded one; the per-thread split keeps both
# cores for the GEMMs as well).

@njit(cache=True, error_model="numpy", parallel=True)
def project_rows(x2, WT, b, n_blocks, out):
    """``out = x2 @ WT + b``: ``x2 (N, D)``, ``WT (D, G)``, ``b (G,)``, ``out (N, G)``
    (C-contiguous), ``n_blocks`` blocks of rows, one gemm each."""
    N = x2.shape[0]
    for c in prange(n_blocks):
        r0, r1 = _rows(N, n_blocks, c)
        if r1 > r0:
            np.dot(x2[r0:r1], WT, out[r0:r1])
            for r in range(r0, r1):
                for g in range(out.shape[1]):
                    out[r, g] += b[g]


@njit(cache=True, error_model="numpy", parallel=True)
def dense_grads_rows(dgi2, dgh2, x2, hp2, W_ih, n_blocks, with_hh, dx2, dW_ih, dW_hh):
    """Per block ``c`` of rows: ``dx2[rows] = dgi2[rows] W_ih``, ``dW_ih[c] =
    dgi2[rows]^T x2[rows]``, and when ``with_hh`` ``dW_hh[c] = dgh2[rows]^T hp2[rows]``
    (the caller sums the ``n_blocks`` partial weight gradients)."""
    N = dgi2.shape[0]
    for c in prange(n_blocks):
        r0, r1 = _rows(N, n_blocks, c)
        if r1 > r0:
            np.dot(dgi2[r0:r1], W_ih, dx2[r0:r1])
            np.dot(dgi2[r0:r1].T, x2[r0:r1], dW_ih[c])
            if with_hh:
                np.dot(dgh2[r0:r1].T, hp2[r0:r1], dW_hh[c])
        else:
            dW_ih[c] = 0
            dW_hh[c] = 0


# ---------------------------------------------------------------------------
# the choices the wrappers make for the kernels above
# ---------------------------------------------------------------------------

# The recurrent product runs as per-step BLAS gemms (np.dot), one per column panel
# of the operand, whenever each panel's product is small enough for OpenBLAS's
# small-matrix kernel: rows·K·cb ≤ SMALL_GEMM_MACS multiply-adds (no packing of the
# operand). Above that OpenBLAS packs the whole operand on every call, which for a
# handful of rows costs more than the arithmetic. Measured on the benchmark machine
# (AMD EPYC, 2 cores, OpenBLAS 0.3.30 SkylakeX kernel, one thread, µs per step,
# whole product / panels of the width chosen): float32 (4, 256)@(256, 1024) 97 / 19
# (cb = 256), (8, 256)@(256, 1024) 122 / 38 (256), (4, 1024)@(1024, 256) 96 / 19
# (128), (16, 512)@(512, 2048) 644 / 292 (64), (16, 2048)@(2048, 512) 621 / 363
# (16), (32, 128)@(128, 512) 59 / 37 (128); float64 (8, 256)@(256, 1024) 128 / 74,
# (16, 512)@(512, 2048) 881 / 601; at rows·K·N ≤ 2^19 the whole product is as fast.
# The row loop (out[b, j] += h[b, k] W^T[k, j], no call, no packing) is the form
# left for a large W_hh with few rows per block when no panel width fits: it
# measured 62 µs at (4, 256)@(256, 1024) and 934 µs at (16, 512)@(512, 2048), both
# slower than the panels (the earlier whole-operand gemm: 97 and 665 µs).
SMALL_GEMM_MACS = 2 ** 19
PANEL_WIDTHS = (256, 128, 64, 32, 16)
GEMM_MAX_W_BYTES = 512 * 1024
GEMM_MIN_ROWS = 16


def n_chunks(B: int) -> int:
    """Blocks of batch rows: one per Numba thread, at most one per row."""
    import numba
    return max(1, min(B, numba.get_num_threads()))


def block_rows(B: int) -> int:
    """The most rows a block of :func:`n_chunks` has."""
    return -(-B // n_chunks(B))


def panel_width(rows: int, K: int, N: int) -> int:
    """The column-panel width ``cb`` of a per-step product ``(rows, K) @ (K, N)``:
    ``N`` (one gemm) when ``rows·K·N ≤`` :data:`SMALL_GEMM_MACS`, else the widest of
    :data:`PANEL_WIDTHS` that divides ``N`` with ``rows·K·cb ≤`` SMALL_GEMM_MACS;
    ``N`` when none does."""
    if rows * K * N <= SMALL_GEMM_MACS:
        return N
    for cb in PANEL_WIDTHS:
        if cb < N and N % cb == 0 and rows * K * cb <= SMALL_GEMM_MACS:
            return cb
    return N


def panels(M: np.ndarray, B: int) -> np.ndarray:
    """The operand ``M (K, N)`` of a per-step product with a batch of ``B`` rows
    (``W_hh^T`` forward, ``W_hh`` backward) as contiguous column panels
    ``(P, K, cb)``, ``cb = panel_width(block_rows(B), K, N)``, ``P = N / cb``."""
    K, N = M.shape
    cb = panel_width(block_rows(B), K, N)
    return np.ascontiguousarray(M.reshape(K, N // cb, cb).transpose(1, 0, 2))


def use_gemm(M: np.ndarray, B: int) -> bool:
    """Whether the per-step product with the operand ``M (K, N)`` (``W_hh^T`` or
    ``W_hh``) for a batch of ``B`` rows runs as BLAS gemms (else the row loop):
    when its panels fit the small-matrix kernel, when ``M`` fits half a core's L2
    (:data:`GEMM_MAX_W_BYTES`), or when a block has :data:`GEMM_MIN_ROWS` rows."""
    rows = block_rows(B)
    K, N = M.shape
    small = rows * K * panel_width(rows, K, N) <= SMALL_GEMM_MACS
    return small or M.nbytes <= GEMM_MAX_W_BYTES or rows >= GEMM_MIN_ROWS


def _row_blocks(N: int) -> int:
    """Blocks of rows for the GEMMs over all T: one per Numba thread, at most one per row."""
    return n_chunks(N)


def project(x: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """``x (B, T, D) @ W^T + b`` → ``(B, T, G)`` contiguous (``W (G, D)``, ``b (G,)``
    or None), as :func:`project_rows`: the rows split over Numba's threads, each
    block one single-threaded gemm."""
    B, T, D = x.shape
    G = W.shape[0]
    out = np.empty((B, T, G), x.dtype)
    bias = np.zeros(G, x.dtype) if b is None else np.ascontiguousarray(b, dtype=x.dtype)
    with blas_single_thread():
        project_rows(np.ascontiguousarray(x).reshape(B * T, D),
                     np.ascontiguousarray(W.T, dtype=x.dtype), bias, _row_blocks(B * T),
                     out.reshape(B * T, G))
    return out


def dense_grads(x: np.ndarray, h_prev: np.ndarray | None, dgi: np.ndarray, dgh: np.ndarray,
                W_ih: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`minirec.kernels._dense.dense_grads` (the same equations) with the rows
    split over Numba's threads (:func:`dense_grads_rows`): ``dW_ih = Σ dgi^T x``,
    ``dW_hh = Σ dgh^T h_prev``, ``db_ih = Σ dgi``, ``db_hh = Σ dgh``, ``dx = dgi W_ih``.
    ``h_prev=None``: no ``"W_hh"`` (a multi-head cell computes its own, per head)."""
    B, T, D = x.shape
    G = dgi.shape[2]
    N = B * T
    n = _row_blocks(N)
    H = 1 if h_prev is None else h_prev.shape[2]
    dgi2 = np.ascontiguousarray(dgi).reshape(N, G)
    dgh2 = dgi2 if dgh is dgi else np.ascontiguousarray(dgh).reshape(N, G)
    hp2 = np.zeros((N, H), dgi.dtype) if h_prev is None else \
        np.ascontiguousarray(h_prev).reshape(N, H)
    dx = np.empty((N, D), dgi.dtype)
    dW_ih = np.empty((n, G, D), dgi.dtype)
    dW_hh = np.empty((n, G, H), dgi.dtype)
    with blas_single_thread():
        dense_grads_rows(dgi2, dgh2, np.ascontiguousarray(x).reshape(N, D), hp2,
                         np.ascontiguousarray(W_ih, dtype=dgi.dtype), n, h_prev is not None,
                         dx, dW_ih, dW_hh)
    grads = {"W_ih": dW_ih.sum(axis=0), "b_ih": dgi2.sum(axis=0), "b_hh": dgh2.sum(axis=0),
             "x": dx.reshape(B, T, D)}
    if h_prev is not None:
        grads["W_hh"] = dW_hh.sum(axis=0)
    return grads
