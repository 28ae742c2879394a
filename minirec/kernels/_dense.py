"""The dense pieces of the classic cells' fast paths, shared by every backend.

A cell whose kernel runs only the time loop does the rest as a few large
GEMMs over all T, here (NumPy arrays for ``numba``, CuPy or NumPy arrays for
the CUDA backends: ``xp`` is the array module)::

    gi     = x W_ih^T + b                           (B, T, G·H)   before the loop
    dW_ih  = Σ_{B,T} dgi^T x      db_ih = Σ_{B,T} dgi              after it
    dW_hh  = Σ_{B,T} dgh^T h_prev db_hh = Σ_{B,T} dgh
    dx     = dgi W_ih

This module imports nothing from minirec.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def project(x: Any, W: Any, b: Any | None, xp: Any = np) -> Any:
    """``x (B, T, D) @ W^T (D, G) + b (G,)`` as one GEMM → ``(B, T, G)`` contiguous."""
    B, T, D = x.shape
    out = x.reshape(B * T, D) @ W.T
    if b is not None:
        out += b
    return xp.ascontiguousarray(out.reshape(B, T, W.shape[0]))


def previous_states(h0: Any, hs: Any, xp: Any = np) -> Any:
    """``h_{t-1}`` for every t: ``concat(h0, hs[:, :-1])`` → ``(B, T, H)``."""
    return xp.concatenate([h0[:, None].astype(hs.dtype), hs[:, :-1]], axis=1)


def dense_grads(x: Any, h_prev: Any, dgi: Any, dgh: Any, W_ih: Any) -> dict[str, Any]:
    """The weight, bias and input gradients from the pre-activation gradients
    ``dgi = ∂L/∂(x W_ih^T + b_ih)`` and ``dgh = ∂L/∂(h_{t-1} W_hh^T + b_hh)``
    (both ``(B, T, G)``; the same array for the RNN and the LSTM)::

        dW_ih = Σ_{B,T} dgi^T x       db_ih = Σ_{B,T} dgi
        dW_hh = Σ_{B,T} dgh^T h_prev  db_hh = Σ_{B,T} dgh       dx = dgi W_ih
    """
    B, T, D = x.shape
    G = dgi.shape[2]
    H = h_prev.shape[2]
    dgi2 = dgi.reshape(B * T, G)
    dgh2 = dgh.reshape(B * T, G)
    return {
        "W_ih": dgi2.T @ x.reshape(B * T, D),
        "W_hh": dgh2.T @ h_prev.reshape(B * T, H),
        "b_ih": dgi2.sum(axis=0),
        "b_hh": dgh2.sum(axis=0),
        "x": (dgi2 @ W_ih).reshape(B, T, D),
    }
