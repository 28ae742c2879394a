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

The recurrent product has two forms, chosen by the wrapper (``gemm``):

* ``gemm=True``: ``np.dot`` on the contiguous 2-D buffers, which Numba
  lowers to a BLAS ``gemm`` call (SciPy's BLAS, run on one thread inside a
  ``prange`` block). Each step reads ``W_hh`` once per block.
* ``gemm=False``: the row loop ``out[b, j] += h[b, k] W^T[k, j]`` (contiguous
  inner ``j``, vectorises without ``fastmath``): no call and no packing of
  ``W_hh``. It wins only where ``W_hh`` no longer fits in a core's L2 and a
  block has few rows (gemm then streams and packs all of ``W_hh`` every step
  for a handful of rows); at small H the gemm wins too (measured, see
  :data:`GEMM_MAX_W_BYTES`).

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

from minirec.kernels.numba._math import sigmoid, tanh


@njit(cache=True, inline="always")
def _rows(B, n_chunks, c):
    """Rows ``[b0, b1)`` of block ``c`` of ``n_chunks`` (sizes differ by ≤ 1)."""
    return c * B // n_chunks, (c + 1) * B // n_chunks


@njit(cache=True, inline="always")
def _add_row_combination(out, coef, M):
    """``out += coef @ M`` for one row ``coef (K,)``, written as a sum of rows,
    ``out[j] += coef[k] M[k, j]`` (the row loop of :func:`_product`; also used by
    :mod:`minirec.kernels.numba.ln_lstm`)."""
    for k in range(coef.shape[0]):
        c = coef[k]
        for j in range(out.shape[0]):
            out[j] += c * M[k, j]


@njit(cache=True, inline="always")
def _product(coef, M, out, gemm):
    """``out = coef @ M`` for C-contiguous ``coef (B_c, K)``, ``M (K, N)``,
    ``out (B_c, N)``: a BLAS gemm, or the row loop ``out[b, j] += coef[b, k] M[k, j]``
    (inner loop over the contiguous ``j``)."""
    if gemm:
        np.dot(coef, M, out)
    else:
        zero = out.dtype.type(0)
        for b in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[b, j] = zero
            _add_row_combination(out[b], coef[b], M)


@njit(cache=True, inline="always")
def _load(dst, src, b0):
    """``dst[:] = src[b0 : b0 + len(dst)]`` (a block of rows)."""
    for b in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            dst[b, j] = src[b0 + b, j]


# ---------------------------------------------------------------------------
# Elman RNN: a_t = gi_t + h_{t-1} W_hh^T,  h_t = φ(a_t)
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def rnn_forward(gi, W_hhT, h0, relu, gemm, n_chunks, hs):
    """``gi (B, T, H)`` = x W_ih^T + b_ih + b_hh, ``W_hhT (H, H)``, ``h0 (B, H)``
    → ``hs (B, T, H)`` (written), ``φ = relu`` if ``relu`` else ``tanh``."""
    B, T, H = gi.shape
    zero = gi.dtype.type(0)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        h = np.empty((b1 - b0, H), gi.dtype)   # h_{t-1} of the block
        a = np.empty((b1 - b0, H), gi.dtype)   # h_{t-1} W_hh^T
        _load(h, h0, b0)
        for t in range(T):
            _product(h, W_hhT, a, gemm)
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


@njit(cache=True, parallel=True)
def rnn_backward(hs, W_hh, dy, dstate, relu, gemm, n_chunks, da, dh0):
    """Reverse loop: writes ``da (B, T, H)`` = ∂L/∂a_t and ``dh0 (B, H)``."""
    B, T, H = hs.shape
    one = hs.dtype.type(1)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
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
            _product(da_t, W_hh, dh, gemm)            # dh_{t-1} = da_t W_hh
        for bb in range(b1 - b0):
            for j in range(H):
                dh0[b0 + bb, j] = dh[bb, j]


# ---------------------------------------------------------------------------
# GRU: r, z = σ(gi_r,z + gh_r,z), n = tanh(gi_n + r ⊙ gh_n), h = (1 − z) n + z h
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def gru_forward(gi, W_hhT, b_hh, h0, gemm, n_chunks, hs, gates):
    """``gi (B, T, 3H)`` = x W_ih^T + b_ih; ``W_hhT (H, 3H)``; ``b_hh (3H,)``.
    Writes ``hs (B, T, H)`` and ``gates (B, T, 4H)`` = [r | z | n | gh_n]."""
    B, T, G = gi.shape
    H = G // 3
    one = gi.dtype.type(1)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        h = np.empty((b1 - b0, H), gi.dtype)    # h_{t-1} of the block
        gh = np.empty((b1 - b0, G), gi.dtype)   # h_{t-1} W_hh^T (b_hh added below)
        _load(h, h0, b0)
        for t in range(T):
            _product(h, W_hhT, gh, gemm)
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


@njit(cache=True, parallel=True)
def gru_backward(hs, h0, gates, W_hh, dy, dstate, gemm, n_chunks, dgi, dgh, dh0):
    """Writes ``dgi (B, T, 3H)`` = ∂L/∂(x W_ih^T + b_ih), ``dgh (B, T, 3H)`` =
    ∂L/∂(h W_hh^T + b_hh), and ``dh0 (B, H)``."""
    B, T, H = hs.shape
    one = hs.dtype.type(1)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
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
            _product(dgh_t, W_hh, dh_W, gemm)
            for bb in range(b1 - b0):
                for j in range(H):
                    dh[bb, j] += dh_W[bb, j]
        for bb in range(b1 - b0):
            for j in range(H):
                dh0[b0 + bb, j] = dh[bb, j]


# ---------------------------------------------------------------------------
# LSTM: a_t = gi_t + h_{t-1} W_hh^T, gates i, f, g, o; c = f c + i g; h = o tanh(c)
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def lstm_forward(gi, W_hhT, h0, c0, gemm, n_chunks, hs, cs, gates):
    """``gi (B, T, 4H)`` = x W_ih^T + b_ih + b_hh; ``W_hhT (H, 4H)``.
    Writes ``hs, cs (B, T, H)`` and ``gates (B, T, 4H)`` = [i | f | g | o]."""
    B, T, G = gi.shape
    H = G // 4
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        h = np.empty((b1 - b0, H), gi.dtype)        # h_{t-1} of the block
        c_prev = np.empty((b1 - b0, H), gi.dtype)   # c_{t-1} of the block
        a = np.empty((b1 - b0, G), gi.dtype)        # h_{t-1} W_hh^T
        _load(h, h0, b0)
        _load(c_prev, c0, b0)
        for t in range(T):
            _product(h, W_hhT, a, gemm)
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


@njit(cache=True, parallel=True)
def lstm_backward(cs, c0, gates, W_hh, dy, dstate_h, dstate_c, gemm, n_chunks, da, dh0, dc0):
    """Writes ``da (B, T, 4H)`` = ∂L/∂a_t and ``dh0, dc0 (B, H)``; ``dstate_h``,
    ``dstate_c`` are the two parts of ``dstate``."""
    B, T, H = cs.shape
    one = cs.dtype.type(1)
    for c in prange(n_chunks):
        b0, b1 = _rows(B, n_chunks, c)
        dh = np.empty((b1 - b0, H), cs.dtype)        # ∂L/∂h_t from t+1
        dc = np.empty((b1 - b0, H), cs.dtype)        # ∂L/∂c_t from t+1
        da_t = np.empty((b1 - b0, 4 * H), cs.dtype)
        _load(dh, dstate_h, b0)
        _load(dc, dstate_c, b0)
        for t in range(T - 1, -1, -1):
            for bb in range(b1 - b0):
                b = b0 + bb
                for j in range(H):
                    dh_t = dh[bb, j] + dy[b, t, j]
                    i = gates[b, t, j]
                    f = gates[b, t, H + j]
                    g = gates[b, t, 2 * H + j]
                    o = gates[b, t, 3 * H + j]
                    tanh_c = tanh(cs[b, t, j])
                    c_prev = c0[b, j] if t == 0 else cs[b, t - 1, j]
                    dc_t = dc[bb, j] + dh_t * o * (one - tanh_c * tanh_c)
                    da_i = dc_t * g * i * (one - i)
                    da_f = dc_t * c_prev * f * (one - f)
                    da_g = dc_t * i * (one - g * g)
                    da_o = dh_t * tanh_c * o * (one - o)
                    da_t[bb, j] = da_i
                    da_t[bb, H + j] = da_f
                    da_t[bb, 2 * H + j] = da_g
                    da_t[bb, 3 * H + j] = da_o
                    da[b, t, j] = da_i
                    da[b, t, H + j] = da_f
                    da[b, t, 2 * H + j] = da_g
                    da[b, t, 3 * H + j] = da_o
                    dc[bb, j] = dc_t * f
            _product(da_t, W_hh, dh, gemm)                # dh_{t-1} = da_t W_hh
        for bb in range(b1 - b0):
            for j in range(H):
                dh0[b0 + bb, j] = dh[bb, j]
                dc0[b0 + bb, j] = dc[bb, j]


# ---------------------------------------------------------------------------
# the choices the wrappers make for the kernels above
# ---------------------------------------------------------------------------

# The recurrent product runs as a per-step BLAS gemm when W_hh fits in half of a
# core's L2 (1 MiB on the benchmark machine, an AMD EPYC with 2 cores), or when a
# block has at least GEMM_MIN_ROWS rows to reuse each W_hh element it streams; the
# row loop otherwise. Measured there (one thread, float32, µs per step-product,
# gemm / row loop): (4, 32)@(32, 128) 0.3 / 1.5, (4, 128)@(128, 512) 4.6 / 14.9,
# (4, 256)@(256, 1024) 97 / 62 (W_hh 1 MiB: gemm streams it from L3 and packs
# it every call), (16, 512)@(512, 2048) 665 / 934; whole LSTM kernels at
# (B, T, H) = (8, 256, 256): forward 110 / 104 ms, backward 87 / 59 ms; at
# (8, 1024, 128): 81 / 126, 59 / 102 ms.
GEMM_MAX_W_BYTES = 512 * 1024
GEMM_MIN_ROWS = 16
# The GEMMs over all T (input projection, weight and input gradients) use every
# BLAS thread from this many flops on (~4 ms on one core), one thread below:
# OpenBLAS' idle workers spin after a threaded call and slow the Numba threads
# that follow (see _blas). Measured on the loaded benchmark machine (LSTM,
# float32, two threads / one): projection at (32, 128, 512) 97 / 91 ms, weight
# gradients 268 / 264 ms; at (8, 1024, 128) 7 / 13 ms and 21 / 38 ms: not
# worse at the large shapes, better at the middle ones; re-measure when quiet.
DENSE_THREADS_MIN_FLOPS = 2 ** 28


def n_chunks(B: int) -> int:
    """Blocks of batch rows: one per Numba thread, at most one per row."""
    import numba
    return max(1, min(B, numba.get_num_threads()))


def use_gemm(W_hh: np.ndarray, B: int) -> bool:
    """Whether the recurrent product with ``W_hh`` for a batch of ``B`` rows runs
    as a BLAS gemm per step (else the row loop)."""
    rows = -(-B // n_chunks(B))
    return W_hh.nbytes <= GEMM_MAX_W_BYTES or rows >= GEMM_MIN_ROWS


def dense_threads(B: int, T: int, D: int, G: int) -> int | None:
    """BLAS threads for the GEMMs over all T of an ``(B·T, D) @ (D, G)`` shape:
    ``None`` (all) when large, else 1."""
    return None if 2 * B * T * D * G >= DENSE_THREADS_MIN_FLOPS else 1
