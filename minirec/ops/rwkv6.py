"""RWKV-6's time mixing ("Finch"; Peng et al., "Eagle and Finch: RWKV with
Matrix-Valued States and Dynamic Recurrence", 2024): linear attention with a
data-dependent per-key decay and a bonus for the current token.

Dimension key: B batch, T time, H heads, K key size, V value size.
``r, k (B, T, H, K)`` (receptance = query, key), ``v (B, T, H, V)``,
``w (B, T, H, K)`` log decays, ``u (H, K)`` the bonus, state ``S (B, H, K, V)``
(K-first):

    o_t = scale · (S_{t−1} + Diag(u) k_t v_t^T)^T r_t       (read before the update)
    S_t = Diag(e^{w_t}) S_{t−1} + k_t v_t^T

``scale`` defaults to ``K^{−1/2}``; RWKV-6 itself uses ``scale = 1`` (pass it).
``w`` is the **log decay itself**: RWKV-6 computes the decay as
``exp(−exp(w_raw))``, i.e. it passes ``w = −exp(w_raw)`` here (and applies the
chain rule ``dw_raw = dw ⊙ w`` outside).

Backward (BPTT), ``dS`` = ∂L/∂S_t (all of it: ``o_t`` reads ``S_{t−1}``),
from ``dstate`` and the later steps, ``c_t = scale · (v_t · do_t)``:

    dr_t = scale · S_{t−1} do_t + c_t (u ⊙ k_t)
    dk_t = dS v_t + c_t (u ⊙ r_t)
    dv_t = dS^T k_t + scale · (r_t · (u ⊙ k_t)) do_t
    du  += c_t (r_t ⊙ k_t)                      (summed over B and T)
    dw_t = Σ_V dS ⊙ (e^{w_t} S_{t−1})
    dS  ← Diag(e^{w_t}) dS + scale · r_t do_t^T  → d initial_state after step 0

The GLA engine (:mod:`minirec.ops.gla`) in its RWKV mode computes it; its
parallel and chunk forms (query decay ``G_{i−1}``, strictly causal mask, the
bonus on the diagonal) derive their own backward in
:mod:`minirec.ops.gla.parallel`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec import _validate as V
from minirec.ops import _heads
from minirec.ops import gla as _engine

METHODS = _engine.METHODS
# the GLA engine's backends: its kernels run every op on it
BACKENDS = _engine.BACKENDS
BACKEND_METHODS = _engine.BACKEND_METHODS


class RWKV6Cache(NamedTuple):
    """What :func:`backward` needs: the GLA engine's cache ``engine``, ``method``,
    ``backend``, and zero views ``o_like (B, T, H, V)``, ``state_like (B, H, K, V)``."""

    engine: _engine.EngineCache
    method: str
    backend: str
    o_like: np.ndarray
    state_like: np.ndarray


def forward(r: np.ndarray, k: np.ndarray, v: np.ndarray, w: np.ndarray, u: np.ndarray, *,
            scale: float | None = None, initial_state: np.ndarray | None = None,
            method: str = "recurrent", chunk_size: int = 64, backend: str = "numpy"
            ) -> tuple[np.ndarray, np.ndarray, RWKV6Cache]:
    """``o_t = scale · (S_{t−1} + Diag(u) k_t v_t^T)^T r_t``,
    ``S_t = Diag(e^{w_t}) S_{t−1} + k_t v_t^T``.

    Args:
        r: ``(B, T, H, K)`` receptance (RWKV's query).
        k: ``(B, T, H, K)`` keys.
        v: ``(B, T, H, V)`` values.
        w: ``(B, T, H, K)`` log decays (RWKV-6's ``−exp(w_raw)``).
        u: ``(H, K)`` the current token's bonus.
        scale: read-out factor, ``None`` for ``K ** -0.5`` (RWKV-6 uses 1).
        initial_state: ``(B, H, K, V)``; ``None`` means zeros.
        method: one of :data:`METHODS`.
        chunk_size: chunk length for ``method="chunk"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``o (B, T, H, V)``, the final state ``(B, H, K, V)`` and the cache.
    """
    chunk_size = _heads.check_call("ops.rwkv6", method, backend, chunk_size, BACKENDS,
                                   BACKEND_METHODS)
    s, dtype, scale = _heads.inputs(r, k, v, scale, (("w", w, _heads.QK), ("u", u, ("H", "K"))),
                                    names=("r", "k", "v"))
    S0 = _heads.state(s, "initial_state", initial_state, _heads.STATE, dtype, r)
    o, S, engine = _engine.run(r, k, v, w, u, S0, scale=scale, method=method,
                               chunk_size=chunk_size, backend=backend)
    return o, S, RWKV6Cache(engine, method, backend, V.zeros_view(o), V.zeros_view(S))


def backward(cache: RWKV6Cache, do: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` by the algorithm of its method.

    Args:
        cache: from :func:`forward`.
        do: ``(B, T, H, V)`` ∂L/∂o (``None``: zeros).
        dstate: ``(B, H, K, V)`` ∂L/∂ final state (``None``: zeros).

    Returns:
        ``{"r", "k", "v", "w", "u", "initial_state"}`` with the forward's shapes.
    """
    c, do, dstate = _heads.grads_in("ops.rwkv6.backward", cache, RWKV6Cache, do, dstate)
    grads = _engine.run_backward(c.engine, do, dstate)
    return {"r": grads["q"], "k": grads["k"], "v": grads["v"], "w": grads["g"],
            "u": grads["u"], "initial_state": grads["initial_state"]}
