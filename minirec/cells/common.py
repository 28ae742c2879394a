"""Dense pieces shared by the classic cells' fast paths (``backend="numba"``).

A cell whose recurrent kernel runs only the time loop does the rest as a few
large GEMMs over all T, here:

    xp     = x W_ih^T + b                           (B, T, G·H)   before the loop
    dW_ih  = Σ_{B,T} dxp^T x      db_ih = Σ_{B,T} dxp              after it
    dW_hh  = Σ_{B,T} dhp^T h_prev db_hh = Σ_{B,T} dhp
    dx     = dxp W_ih

``dxp`` and ``dhp`` are the gradients of the input and recurrent pre-activations
(equal for RNN/LSTM; for the GRU ``dhp`` carries the ``r ⊙`` on its n-part).
"""

from __future__ import annotations

import numpy as np


def project(x: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """``x (B, T, D) @ W^T (D, G) + b (G,)`` as one GEMM → ``(B, T, G)`` contiguous."""
    B, T, D = x.shape
    out = x.reshape(B * T, D) @ W.T
    if b is not None:
        out += b
    return np.ascontiguousarray(out.reshape(B, T, W.shape[0]))


def previous_states(h0: np.ndarray, hs: np.ndarray) -> np.ndarray:
    """``h_{t-1}`` for every t: ``concat(h0, hs[:, :-1])`` → ``(B, T, H)``."""
    return np.concatenate([h0[:, None].astype(hs.dtype), hs[:, :-1]], axis=1)


def dense_grads(x: np.ndarray, h_prev: np.ndarray, dxp: np.ndarray, dhp: np.ndarray,
                W_ih: np.ndarray) -> dict[str, np.ndarray]:
    """The weight, bias and input gradients from the pre-activation gradients."""
    B, T, D = x.shape
    G = dxp.shape[2]
    H = h_prev.shape[2]
    dxp2 = dxp.reshape(B * T, G)
    dhp2 = dhp.reshape(B * T, G)
    return {
        "W_ih": dxp2.T @ x.reshape(B * T, D),
        "W_hh": dhp2.T @ h_prev.reshape(B * T, H),
        "b_ih": dxp2.sum(axis=0),
        "b_hh": dhp2.sum(axis=0),
        "x": (dxp2 @ W_ih).reshape(B, T, D),
    }
