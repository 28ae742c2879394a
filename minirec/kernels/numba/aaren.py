"""``backend="numba"`` for :mod:`minirec.cells.aaren`, reached through
``_backend.kernels("aaren", "numba")``: the definition's signature and return
structure.

    w_s[h] = q_h W_k[h]/√K                   (NH, D): s = (k · q)/√K = x w_s^T
    [s | v] = x [w_s; W_v]^T                 one GEMM over all B·T rows
    o, state = softmax scan of (s, v)        the fused loop of kernels.numba.softmax_scan
    y = o W_o^T + b_o                        one GEMM
    backward: do = dy W_o, dW_o = dy^T o, the scan's fused reverse loop, then
    dx = [ds | dv] [w_s; W_v],  [G; dW_v] = [ds | dv]^T x     (GEMMs; G (NH, D))
    dW_k[h] = q_h ⊗ G_h / √K,   dq_h = W_k[h] G_h / √K        (dk = ds q/√K, never formed)

Tested against :func:`minirec.cells.aaren.forward` / ``backward`` with
``backend="numpy"`` (tests/test_contract.py, tests/kernels/test_numba_diagonal.py).
Arguments arrive validated by the cell; the plumbing is here: 2-D GEMMs on one
BLAS thread (:func:`minirec.kernels.numba._blas.blas_single_thread`; the
cell's 3-D matmuls took 0.5–1 ms each at (8, 512, 32)), the scan's threads by
:func:`minirec.kernels.numba.diagonal.threads`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec.kernels.numba import diagonal, softmax_scan
from minirec.kernels.numba._blas import blas_single_thread


class Cache(NamedTuple):
    """What :func:`backward` needs: ``x2 (B·T, D)``, the scan's inputs
    ``s (B, T, NH)``, ``v (B, T, NH, V)``, ``initial_state`` and its states after
    every step ``states = (M, U, W)``, the heads' outputs ``o2 (B·T, NH·V)``, and
    ``W_sv = [w_s; W_v] (NH + NH·V, D)``."""

    x2: np.ndarray
    s: np.ndarray
    v: np.ndarray
    initial_state: tuple
    states: tuple
    o2: np.ndarray
    W_sv: np.ndarray


def _score_weights(params: dict, dtype) -> np.ndarray:
    """``w_s (NH, D)``, ``w_s[h] = Σ_k q[h, k] W_k[h·K + k] / √K``."""
    NH, K = params["q"].shape
    W_k = params["W_k"].reshape(NH, K, params["W_k"].shape[1])
    return (params["q"][:, None, :] @ W_k)[:, 0] / np.sqrt(K).astype(dtype)


def forward(params: dict, x: np.ndarray, state0: tuple) -> tuple[np.ndarray, tuple, Cache]:
    """``y (B, T, O)``, the final ``(m, u, w)`` and the :class:`Cache`, from
    validated ``params``, ``x (B, T, D)`` and ``state0 = (m0, u0, w0)`` (not
    ``None``: the cell passes the empty prefix)."""
    B, T, D = x.shape
    NH, K = params["q"].shape
    Vd = params["W_v"].shape[0] // NH
    dtype = x.dtype
    x2 = np.ascontiguousarray(x).reshape(B * T, D)
    with blas_single_thread():
        W_sv = np.concatenate([_score_weights(params, dtype), params["W_v"]])
        sv = x2 @ W_sv.T                                            # (B·T, NH + NH·V)
        s = np.ascontiguousarray(sv[:, :NH]).reshape(B, T, NH)
        v = np.ascontiguousarray(sv[:, NH:]).reshape(B, T, NH, Vd)
        with diagonal.threads(B * T * NH * Vd):
            o, state, states = softmax_scan.forward(s, v, state0)
        o2 = o.reshape(B * T, NH * Vd)
        y = o2 @ params["W_o"].T + params["b_o"]
    O = params["b_o"].shape[0]
    return (y.reshape(B, T, O), state,
            Cache(x2, s, v, tuple(state0), states, o2, W_sv))


def backward(params: dict, cache: Cache, dy: np.ndarray | None, dstate: tuple) -> dict:
    """Gradients of ``q, W_k, W_v, W_o, b_o``, ``"x" (B, T, D)`` and ``"state0"``
    ``(dm0, du0, dw0)``; ``dy (B, T, O)`` (``None``: zeros) and ``dstate`` (three
    arrays) are checked by the cell."""
    c = cache
    B, T, NH = c.s.shape
    K = params["q"].shape[1]
    Vd = c.v.shape[-1]
    BT, D = c.x2.shape
    dtype = c.x2.dtype
    scale = 1 / np.sqrt(K).astype(dtype)
    grads = {}
    with blas_single_thread():
        if dy is None:
            do = None
            grads["W_o"] = np.zeros_like(params["W_o"])
            grads["b_o"] = np.zeros_like(params["b_o"])
        else:
            dy2 = np.ascontiguousarray(dy).reshape(BT, params["b_o"].shape[0])
            do = (dy2 @ params["W_o"]).reshape(B, T, NH, Vd)            # through y = o W_o^T + b_o
            grads["W_o"] = dy2.T @ c.o2
            grads["b_o"] = dy2.sum(axis=0)
        with diagonal.threads(B * T * NH * Vd):
            g = softmax_scan.backward(c.s, c.v, c.initial_state, c.states, do, dstate)
        dsv = np.concatenate([g["s"].reshape(BT, NH), g["v"].reshape(BT, NH * Vd)], axis=1)
        dx = dsv @ c.W_sv                                               # through [s | v] = x W^T
        dW = dsv.T @ c.x2
        G = dW[:NH]                                                     # Σ_{B,T} ds_h x
        W_k = params["W_k"].reshape(NH, K, D)
        grads["W_k"] = (params["q"][:, :, None] * G[:, None, :] * scale).reshape(NH * K, D)
        grads["q"] = (W_k @ G[:, :, None])[..., 0] * scale              # through s = q·(x W_k^T)/√K
    grads["W_v"] = dW[NH:]
    grads = {name: np.ascontiguousarray(grads[name], dtype=params[name].dtype) for name in params}
    grads["x"] = dx.reshape(B, T, D)
    grads["state0"] = g["initial_state"]
    return grads
