"""Simple GLA: linear attention with one scalar log decay per head and step
(Qin et al. 2024's simplified GLA; the same recurrence as Mamba-2's SSD).

Dimension key: B batch, T time, H heads, K key/query size, V value size.
``q, k (B, T, H, K)``, ``v (B, T, H, V)``, ``g (B, T, H)``, state
``S (B, H, K, V)`` (K-first):

    S_t = e^{g_t} S_{t−1} + k_t v_t^T
    o_t = scale · S_t^T q_t                     scale defaults to K^{−1/2}

Backward (BPTT), ``dS`` = ∂L/∂S_t from ``dstate`` and the later steps:

    dS  += scale · q_t do_t^T;   dq_t = scale · S_t do_t
    dk_t = dS v_t;   dv_t = dS^T k_t;   dg_t = Σ_K Σ_V dS ⊙ (e^{g_t} S_{t−1})
    dS  ← e^{g_t} dS             → d initial_state after step 0

The GLA engine (:mod:`minirec.ops.gla`) computes it, with a scalar gate; its
parallel and chunk forms use the scores ``(Q K^T) ⊙ e^{G_i − G_j}`` (``G`` the
cumulative log decay, only differences ``≤ 0`` exponentiated) and derive their
own backward in :mod:`minirec.ops.gla.parallel` and :mod:`minirec.ops.gla.chunk`.
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


class SimpleGLACache(NamedTuple):
    """What :func:`backward` needs: the GLA engine's cache ``engine``, ``method``,
    ``backend``, and zero views ``o_like (B, T, H, V)``, ``state_like (B, H, K, V)``."""

    engine: _engine.EngineCache
    method: str
    backend: str
    o_like: np.ndarray
    state_like: np.ndarray


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, *,
            scale: float | None = None, initial_state: np.ndarray | None = None,
            method: str = "recurrent", chunk_size: int = 64, backend: str = "numpy"
            ) -> tuple[np.ndarray, np.ndarray, SimpleGLACache]:
    """``S_t = e^{g_t} S_{t−1} + k_t v_t^T``, ``o_t = scale · S_t^T q_t``.

    Args:
        q: ``(B, T, H, K)`` queries.
        k: ``(B, T, H, K)`` keys.
        v: ``(B, T, H, V)`` values.
        g: ``(B, T, H)`` log decays (``g ≤ 0`` by convention; not enforced).
        scale: read-out factor, ``None`` for ``K ** -0.5``.
        initial_state: ``(B, H, K, V)``; ``None`` means zeros.
        method: one of :data:`METHODS`.
        chunk_size: chunk length for ``method="chunk"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``o (B, T, H, V)``, the final state ``(B, H, K, V)`` and the cache.
    """
    chunk_size = _heads.check_call("ops.simple_gla", method, backend, chunk_size, BACKENDS,
                                   BACKEND_METHODS)
    s, dtype, scale = _heads.inputs(q, k, v, scale, (("g", g, _heads.GATE),))
    S0 = _heads.state(s, "initial_state", initial_state, _heads.STATE, dtype, q)
    o, S, engine = _engine.run(q, k, v, g, None, S0, scale=scale, method=method,
                               chunk_size=chunk_size, backend=backend)
    return o, S, SimpleGLACache(engine, method, backend, V.zeros_view(o), V.zeros_view(S))


def backward(cache: SimpleGLACache, do: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` by the algorithm of its method.

    Args:
        cache: from :func:`forward`.
        do: ``(B, T, H, V)`` ∂L/∂o (``None``: zeros).
        dstate: ``(B, H, K, V)`` ∂L/∂ final state (``None``: zeros).

    Returns:
        ``{"q", "k", "v", "g", "initial_state"}`` with the forward's shapes.
    """
    c, do, dstate = _heads.grads_in("ops.simple_gla.backward", cache, SimpleGLACache, do, dstate)
    grads = _engine.run_backward(c.engine, do, dstate)
    return {name: grads[name] for name in ("q", "k", "v", "g", "initial_state")}
