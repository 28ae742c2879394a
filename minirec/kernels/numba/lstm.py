"""``backend="numba"`` for :mod:`minirec.cells.lstm`: the definition's signature
and return structure, reached through ``_backend.kernels("lstm", "numba")``.

    gi = x W_ih^T + b_ih + b_hh                       classic.project (one GEMM)  (B, T, 4H)
    a_t = gi_t + h_{t-1} W_hh^T, gates, c_t, h_t      the time loop, classic.lstm_forward
    da_t = ∂L/∂a_t                                    the reverse loop, classic.lstm_backward
    dW_ih, dW_hh, db_ih, db_hh, dx                    GEMMs over all T, classic.dense_grads

Arguments arrive validated by the cell; the plumbing is here (see
:mod:`minirec.kernels.numba.classic`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec.kernels import _dense
from minirec.kernels.numba import classic
from minirec.kernels.numba._blas import blas_single_thread


class Cache(NamedTuple):
    """The cell's ``cache.kernel``: what :func:`backward` needs."""

    x: np.ndarray      # (B, T, D) the input, as given
    hs: np.ndarray     # (B, T, H) every h_t (the returned y)
    cs: np.ndarray     # (B, T, H) every c_t
    h0: np.ndarray     # (B, H) the initial state (h0, c0), contiguous, computation dtype
    c0: np.ndarray     # (B, H)
    gates: np.ndarray  # (B, T, 4H) [i | f | g | o] of every step, post-activation


def forward(params: dict, x: np.ndarray,
            state0: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, tuple, Cache]:
    """``y (B, T, H)``, the final ``(h, c)`` and the kernel :class:`Cache`, from
    validated ``params``, ``x (B, T, D)`` and ``state0 = (h0, c0)`` (not ``None``)."""
    dtype = np.result_type(x, *params.values())
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    B, T, D = x.shape
    G = p["W_hh"].shape[0]
    gi = classic.project(x.astype(dtype, copy=False), p["W_ih"], p["b_ih"] + p["b_hh"])
    hs = np.empty((B, T, G // 4), dtype)
    cs = np.empty_like(hs)
    gates = np.empty_like(gi)
    h0, c0 = (np.ascontiguousarray(s, dtype=dtype) for s in state0)
    with blas_single_thread():
        classic.lstm_forward(gi, classic.panels(p["W_hh"].T, B), h0, c0,
                             classic.use_gemm(p["W_hh"].T, B), classic.n_chunks(B), hs, cs, gates)
    return hs, (hs[:, -1].copy(), cs[:, -1].copy()), Cache(x, hs, cs, h0, c0, gates)


def backward(params: dict, cache: Cache, dy: np.ndarray,
             dstate: tuple[np.ndarray, np.ndarray]) -> dict:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0" = (dh0, dc0)``;
    ``dy (B, T, H)`` and both parts of ``dstate`` are arrays (zeros, not ``None``)."""
    hs, h0, c0 = cache.hs, cache.h0, cache.c0
    dt = hs.dtype
    B, T, D = cache.x.shape
    W_hh = np.ascontiguousarray(params["W_hh"], dtype=dt)
    dstate_h, dstate_c = (np.ascontiguousarray(d, dtype=dt) for d in dstate)
    da = np.empty_like(cache.gates)
    dh0, dc0 = np.empty_like(h0), np.empty_like(c0)
    with blas_single_thread():
        classic.lstm_backward(cache.cs, c0, cache.gates, classic.panels(W_hh, B),
                              np.ascontiguousarray(dy, dtype=dt), dstate_h, dstate_c,
                              classic.use_gemm(W_hh, B), classic.n_chunks(B), da, dh0, dc0)
    grads = classic.dense_grads(cache.x.astype(dt, copy=False),
                                _dense.previous_states(h0, hs), da, da,
                                params["W_ih"].astype(dt, copy=False))
    grads["state0"] = (dh0, dc0)
    return grads
