"""Gated DeltaNet's gated delta rule (Yang, Kautz & Hatamizadeh 2024, "Gated
Delta Networks: Improving Mamba2 with Delta Rule"): a scalar decay per head,
then the delta rule against the decayed state.

Dimension key: B batch, T time, H heads, K key size, V value size.
``q, k (B, T, H, K)``, ``v (B, T, H, V)``, ``g, beta (B, T, H)``, state
``S (B, H, K, V)`` K-first. Per batch row and head (DESIGN §3: decay first,
then compute the error against the decayed state):

    S'  = e^{g_t} S_{t−1}                           g ≤ 0 by convention (log space)
    u_t = v_t − S'^T k_t
    S_t = S' + β_t k_t u_t^T               = e^{g_t} (I − β_t k_t k_t^T) S_{t−1} + β_t k_t v_t^T
    o_t = scale · S_t^T q_t                         scale = K ** −0.5 by default

``g = 0`` everywhere is the delta rule (:mod:`minirec.ops.delta_rule`); ``β = 0``
is simple GLA's decay without writing. The forms, their backward passes and
the dispatch are the delta engine's (:func:`minirec.ops.delta_rule.run`,
methods ``recurrent``, ``parallel`` and ``chunk``; equations in
:mod:`minirec.ops.delta_rule.recurrent` and :mod:`minirec.ops.delta_rule.chunk`).
The gate's gradient, going back through ``S' = e^{g_t} S_{t−1}``, is
``dg_t = Σ dS' ⊙ S'``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec import _validate as V
from minirec.ops import _heads
from minirec.ops import delta_rule as _engine

METHODS = _engine.METHODS  # ("recurrent", "parallel", "chunk")
# the delta engine's backends: its kernels run every op on it
BACKENDS = _engine.BACKENDS
BACKEND_METHODS = _engine.BACKEND_METHODS


class GatedDeltaRuleCache(NamedTuple):
    """What :func:`backward` needs: the engine's cache
    (:class:`minirec.ops.delta_rule.EngineCache`), ``method``, ``backend`` and zero
    views ``o_like (B, T, H, V)``, ``state_like (B, H, K, V)`` to check ``do`` and
    ``dstate`` against."""

    engine: _engine.EngineCache
    method: str
    backend: str
    o_like: np.ndarray
    state_like: np.ndarray


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, beta: np.ndarray,
            *, scale: float | None = None, initial_state: np.ndarray | None = None,
            method: str = "recurrent", chunk_size: int = 64,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, GatedDeltaRuleCache]:
    """Run ``S_t = e^{g_t} S_{t−1} + β_t k_t (v_t − e^{g_t} S_{t−1}^T k_t)^T``,
    ``o_t = scale · S_t^T q_t`` over axis 1.

    Args:
        q: ``(B, T, H, K)`` queries.
        k: ``(B, T, H, K)`` keys.
        v: ``(B, T, H, V)`` values.
        g: ``(B, T, H)`` log decays (``≤ 0`` by convention; not enforced).
        beta: ``(B, T, H)`` writing strengths, in ``[0, 2]`` by convention (not enforced).
        scale: the output scale; ``None`` means ``K ** −0.5``.
        initial_state: ``(B, H, K, V)`` ``S_{−1}``; ``None`` means zeros.
        method: one of :data:`METHODS`.
        chunk_size: chunk length of ``method="chunk"`` (checked for every method).
        backend: one of :data:`BACKENDS`.

    Returns:
        ``o (B, T, H, V)``, the final state ``(B, H, K, V)`` and the cache for
        :func:`backward`.
    """
    chunk_size = _heads.check_call("ops.gated_delta_rule", method, backend, chunk_size,
                                   BACKENDS, BACKEND_METHODS)
    s, dtype, scale = _heads.inputs(q, k, v, scale, (("g", g, _heads.GATE),
                                                     ("beta", beta, _heads.GATE)))
    S0 = _heads.state(s, "initial_state", initial_state, _heads.STATE, dtype, q)
    o, S_T, engine = _engine.run(q, k, v, g, beta, S0, scale=scale, method=method,
                                 chunk_size=chunk_size, backend=backend)
    return o, S_T, GatedDeltaRuleCache(engine, method, backend, V.zeros_view(o),
                                       V.zeros_view(S_T))


def backward(cache: GatedDeltaRuleCache, do: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` by the backward of the method that made ``cache``.

    Args:
        cache: from :func:`forward`.
        do: ``(B, T, H, V)`` ∂L/∂o (``None`` means zeros).
        dstate: ``(B, H, K, V)`` ∂L/∂ final state (``None`` means zeros).

    Returns:
        ``{"q", "k", "v", "g", "beta", "initial_state"}`` with the forward's shapes
        and dtype.
    """
    c, do, dstate = _heads.grads_in("ops.gated_delta_rule", cache, GatedDeltaRuleCache, do, dstate)
    grads = _engine.run_backward(c.engine, do, dstate)
    return {name: grads[name] for name in ("q", "k", "v", "g", "beta", "initial_state")}
