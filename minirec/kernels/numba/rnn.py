"""``backend="numba"`` for :mod:`minirec.cells.rnn`: the definition's signature
and return structure, reached through ``_backend.kernels("rnn", "numba")``.

    gi  = x W_ih^T + b_ih + b_hh                      classic.project (one GEMM)  (B, T, H)
    h_t = φ(gi_t + h_{t-1} W_hh^T)                    the time loop, classic.rnn_forward
    da_t = ∂L/∂a_t                                    the reverse loop, classic.rnn_backward
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

    x: np.ndarray    # (B, T, D) the input, as given
    hs: np.ndarray   # (B, T, H) every h_t (the returned y)
    h0: np.ndarray   # (B, H) the initial state, contiguous, in the computation dtype
    relu: bool       # φ = relu (else tanh)


def forward(params: dict, x: np.ndarray, state0: np.ndarray, *,
            nonlinearity: str = "tanh") -> tuple[np.ndarray, np.ndarray, Cache]:
    """``y (B, T, H)``, the final ``h (B, H)`` and the kernel :class:`Cache`, from
    validated ``params``, ``x (B, T, D)`` and ``state0 (B, H)`` (not ``None``)."""
    dtype = np.result_type(x, *params.values())
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    B, T, D = x.shape
    gi = classic.project(x.astype(dtype, copy=False), p["W_ih"], p["b_ih"] + p["b_hh"])
    hs = np.empty(gi.shape, dtype)
    h0 = np.ascontiguousarray(state0, dtype=dtype)
    relu = nonlinearity == "relu"
    with blas_single_thread():
        classic.rnn_forward(gi, classic.panels(p["W_hh"].T, B), h0, relu,
                            classic.use_gemm(p["W_hh"].T, B), classic.n_chunks(B), hs)
    return hs, hs[:, -1].copy(), Cache(x, hs, h0, relu)


def backward(params: dict, cache: Cache, dy: np.ndarray,
             dstate: np.ndarray) -> dict[str, np.ndarray]:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0" (B, H)``;
    ``dy (B, T, H)`` and ``dstate (B, H)`` are arrays (zeros, not ``None``)."""
    hs, h0 = cache.hs, cache.h0
    dt = hs.dtype
    B, T, H = hs.shape
    W_hh = np.ascontiguousarray(params["W_hh"], dtype=dt)
    da = np.empty_like(hs)
    dh0 = np.empty_like(h0)
    with blas_single_thread():
        classic.rnn_backward(hs, classic.panels(W_hh, B),
                             np.ascontiguousarray(dy, dtype=dt),
                             np.ascontiguousarray(dstate, dtype=dt), cache.relu,
                             classic.use_gemm(W_hh, B), classic.n_chunks(B), da, dh0)
    grads = classic.dense_grads(cache.x.astype(dt, copy=False),
                                _dense.previous_states(h0, hs), da, da,
                                params["W_ih"].astype(dt, copy=False))
    grads["state0"] = dh0
    return grads
