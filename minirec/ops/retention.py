"""Retention (RetNet; Sun et al., "Retentive Network: A Successor to Transformer
for Large Language Models", 2023): linear attention with a fixed decay per head.

Dimension key: B batch, T time, H heads, K key/query size, V value size.
``q, k (B, T, H, K)``, ``v (B, T, H, V)``, state ``S (B, H, K, V)`` (K-first):

    S_t = γ_h S_{t−1} + k_t v_t^T,        γ_h = 1 − 2^{−5−h}   (h = 0 … H−1)
    o_t = scale · S_t^T q_t                scale defaults to K^{−1/2}

(:func:`decays`). ``gamma`` overrides the γ's with any ``(H,)`` decays in
``(0, 1]``: lightning attention (Qin et al. 2024) passes its per-head decays
that way. The decays are constants: they are **not differentiated**, and the
backward returns no gradient for them.

Backward (BPTT), ``dS`` = ∂L/∂S_t from ``dstate`` and the later steps:

    dS  += scale · q_t do_t^T;   dq_t = scale · S_t do_t
    dk_t = dS v_t;   dv_t = dS^T k_t
    dS  ← γ_h dS                 → d initial_state after step 0

The GLA engine (:mod:`minirec.ops.gla`) computes it with the scalar log decay
``g_t = log γ_h`` at every step (a broadcast view, no copy); its parallel form
is RetNet's ``(Q K^T ⊙ D) V`` with ``D_ij = γ^{i−j}`` for ``j ≤ i``, its chunk
form RetNet's chunkwise retention.
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


def decays(H: int) -> np.ndarray:
    """RetNet's decays ``γ_h = 1 − 2^{−5−h}`` for ``h = 0 … H−1`` (float64 ``(H,)``)."""
    H = V.positive_int("H", H)
    return 1.0 - 2.0 ** (-5.0 - np.arange(H))


class RetentionCache(NamedTuple):
    """What :func:`backward` needs: the GLA engine's cache ``engine``, ``method``,
    ``backend``, and zero views ``o_like (B, T, H, V)``, ``state_like (B, H, K, V)``."""

    engine: _engine.EngineCache
    method: str
    backend: str
    o_like: np.ndarray
    state_like: np.ndarray


def _check_gamma(gamma, H):
    V.array("gamma", gamma, ndim=1, allow_complex=False)
    if gamma.shape != (H,):
        raise ValueError(f"gamma: expected shape (H={H},) (one decay per head), got "
                         f"{tuple(gamma.shape)}")
    if not np.all((gamma > 0) & (gamma <= 1)):
        raise ValueError(f"gamma: expected decays in (0, 1], got min {float(np.min(gamma))!r}, "
                         f"max {float(np.max(gamma))!r}")
    return gamma


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: float | None = None,
            gamma: np.ndarray | None = None, initial_state: np.ndarray | None = None,
            method: str = "recurrent", chunk_size: int = 64, backend: str = "numpy"
            ) -> tuple[np.ndarray, np.ndarray, RetentionCache]:
    """``S_t = γ_h S_{t−1} + k_t v_t^T``, ``o_t = scale · S_t^T q_t``.

    Args:
        q: ``(B, T, H, K)`` queries.
        k: ``(B, T, H, K)`` keys.
        v: ``(B, T, H, V)`` values.
        scale: read-out factor, ``None`` for ``K ** -0.5``.
        gamma: ``(H,)`` decays in ``(0, 1]`` (either precision; not
            differentiated); ``None`` for RetNet's :func:`decays`.
        initial_state: ``(B, H, K, V)``; ``None`` means zeros.
        method: one of :data:`METHODS`.
        chunk_size: chunk length for ``method="chunk"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``o (B, T, H, V)``, the final state ``(B, H, K, V)`` and the cache.
    """
    chunk_size = _heads.check_call("ops.retention", method, backend, chunk_size, BACKENDS,
                                   BACKEND_METHODS)
    s, dtype, scale = _heads.inputs(q, k, v, scale)
    S0 = _heads.state(s, "initial_state", initial_state, _heads.STATE, dtype, q)
    B, T, H, _ = q.shape
    gamma = decays(H) if gamma is None else _check_gamma(gamma, H)
    log_gamma = np.log(np.asarray(gamma, np.float64)).astype(dtype)
    g = np.broadcast_to(log_gamma, (B, T, H))                      # g_t = log γ_h, a view
    o, S, engine = _engine.run(q, k, v, g, None, S0, scale=scale, method=method,
                               chunk_size=chunk_size, backend=backend)
    return o, S, RetentionCache(engine, method, backend, V.zeros_view(o), V.zeros_view(S))


def backward(cache: RetentionCache, do: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` by the algorithm of its method.

    Args:
        cache: from :func:`forward`.
        do: ``(B, T, H, V)`` ∂L/∂o (``None``: zeros).
        dstate: ``(B, H, K, V)`` ∂L/∂ final state (``None``: zeros).

    Returns:
        ``{"q", "k", "v", "initial_state"}`` with the forward's shapes (no
        gradient for the decays).
    """
    c, do, dstate = _heads.grads_in("ops.retention.backward", cache, RetentionCache, do, dstate)
    grads = _engine.run_backward(c.engine, do, dstate)
    return {name: grads[name] for name in ("q", "k", "v", "initial_state")}
