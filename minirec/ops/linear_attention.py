"""Causal linear attention (Katharopoulos et al., "Transformers are RNNs", 2020)
as a recurrence with a matrix state.

Dimension key: B batch, T time, H heads, K key/query size, V value size.
``q, k (B, T, H, K)`` (already through a feature map, see
:mod:`minirec.ops.feature_maps`), ``v (B, T, H, V)``, state ``S (B, H, K, V)``
(K-first):

    S_t = S_{t−1} + k_t v_t^T
    o_t = scale · S_t^T q_t                     scale defaults to K^{−1/2}

With ``normalize=True`` the output is divided by the attention's normaliser,
kept as a second state ``z (B, H, K)``:

    z_t = z_{t−1} + k_t
    o_t = (scale · S_t^T q_t) / (scale · q_t · z_t)       state (S, z)

(nothing guards the division: with a positive feature map ``q_t · z_t > 0``.)

Backward (BPTT), ``dS`` = ∂L/∂S_t from ``dstate`` and the later steps:

    dS  += scale · q_t do_t^T;   dq_t = scale · S_t do_t
    dk_t = dS v_t;   dv_t = dS^T k_t       → d initial_state = dS after step 0

Normalised, computed through the same engine with ``v`` augmented by a column
of ones, ``v' = [v | 1]``, so that ``S' = [S | z]`` and the engine's output is
``o' = [num | den]`` with ``num = scale · S_t^T q_t`` and ``den = scale · q_t·z_t``;
then ``o = num / den``. Its backward by hand:

    dnum = do / den
    dden = −Σ_V do ⊙ num / den² = −Σ_V do ⊙ o / den
    do'  = [dnum | dden],   dS' = [dS | dz]   → the engine's backward
    dv   = dv'[..., :V]  (the column of ones gets no gradient);
    d initial_state = (dS'[..., :V], dS'[..., V])

The GLA engine (:mod:`minirec.ops.gla`) with no decay computes it; its
parallel form is ``(Q K^T ⊙ M) V`` (``M`` the causal mask) plus the
initial-state term, its chunk form the chunkwise linear attention.
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


class LinearAttentionCache(NamedTuple):
    """What :func:`backward` needs: the GLA engine's cache ``engine``,
    ``normalize``, with it ``o (B, T, H, V)`` and ``den (B, T, H, 1)`` (``None``
    otherwise), ``method``, ``backend``, and zero views ``o_like (B, T, H, V)``,
    ``state_like`` (``(B, H, K, V)``, or the pair ``(S, z)`` when normalised)."""

    engine: _engine.EngineCache
    normalize: bool
    o: np.ndarray | None
    den: np.ndarray | None
    method: str
    backend: str
    o_like: np.ndarray
    state_like: np.ndarray | tuple


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: float | None = None,
            normalize: bool = False, initial_state: np.ndarray | tuple | None = None,
            method: str = "recurrent", chunk_size: int = 64, backend: str = "numpy"
            ) -> tuple[np.ndarray, np.ndarray | tuple, LinearAttentionCache]:
    """``S_t = S_{t−1} + k_t v_t^T``, ``o_t = scale · S_t^T q_t`` (divided by
    ``scale · q_t · z_t`` with ``normalize``).

    Args:
        q: ``(B, T, H, K)`` queries (after the feature map).
        k: ``(B, T, H, K)`` keys (after the feature map).
        v: ``(B, T, H, V)`` values.
        scale: read-out factor, ``None`` for ``K ** -0.5``.
        normalize: divide by the normaliser; the state is then ``(S, z)``.
        initial_state: ``S (B, H, K, V)``, or ``(S, z (B, H, K))`` with
            ``normalize``; ``None`` means zeros.
        method: one of :data:`METHODS`.
        chunk_size: chunk length for ``method="chunk"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``o (B, T, H, V)``, the final state (``S``, or ``(S, z)``) and the cache.
    """
    chunk_size = _heads.check_call("ops.linear_attention", method, backend, chunk_size,
                                   BACKENDS, BACKEND_METHODS)
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"normalize: expected True or False, got {type(normalize).__name__} "
                        f"{normalize!r}")
    s, dtype, scale = _heads.inputs(q, k, v, scale)
    if not normalize:
        S0 = _heads.state(s, "initial_state", initial_state, _heads.STATE, dtype, q)
        o, S, engine = _engine.run(q, k, v, None, None, S0, scale=scale, method=method,
                                   chunk_size=chunk_size, backend=backend)
        return o, S, LinearAttentionCache(engine, False, None, None, method, backend,
                                          V.zeros_view(o), V.zeros_view(S))
    S_init, z_init = _heads.state_tuple("initial_state", initial_state, 2)
    S0 = _heads.state(s, "initial_state[0]", S_init, _heads.STATE, dtype, q)
    z0 = _heads.state(s, "initial_state[1]", z_init, ("B", "H", "K"), dtype, q)
    Vd = v.shape[-1]
    v_aug = np.concatenate([v, np.ones(v.shape[:3] + (1,), dtype)], axis=-1)   # [v | 1]
    S0_aug = np.concatenate([S0, z0[..., None]], axis=-1)                      # [S | z]
    o_aug, S_aug, engine = _engine.run(q, k, v_aug, None, None, S0_aug, scale=scale,
                                       method=method, chunk_size=chunk_size, backend=backend)
    num, den = o_aug[..., :Vd], o_aug[..., Vd:]
    o = num / den
    state = (np.ascontiguousarray(S_aug[..., :Vd]), np.ascontiguousarray(S_aug[..., Vd]))
    return o, state, LinearAttentionCache(engine, True, o, den, method, backend,
                                          V.zeros_view(o),
                                          tuple(V.zeros_view(x) for x in state))


def backward(cache: LinearAttentionCache, do: np.ndarray | None,
             dstate: np.ndarray | tuple | None = None) -> dict:
    """Gradients of :func:`forward` by the algorithm of its method.

    Args:
        cache: from :func:`forward`.
        do: ``(B, T, H, V)`` ∂L/∂o (``None``: zeros).
        dstate: ∂L/∂ final state, shaped like it (``(dS, dz)`` with
            ``normalize``); ``None`` (or ``None`` parts) for zeros.

    Returns:
        ``{"q", "k", "v", "initial_state"}`` with the forward's shapes
        (``initial_state`` the pair ``(dS0, dz0)`` with ``normalize``).
    """
    c, do, dstate = _heads.grads_in("ops.linear_attention.backward", cache,
                                    LinearAttentionCache, do, dstate)
    if not c.normalize:
        grads = _engine.run_backward(c.engine, do, dstate)
        return {name: grads[name] for name in ("q", "k", "v", "initial_state")}
    # through o = num / den
    dnum = do / c.den
    dden = -np.sum(do * c.o, axis=-1, keepdims=True) / c.den
    dS, dz = dstate
    grads = _engine.run_backward(c.engine, np.concatenate([dnum, dden], axis=-1),
                                 np.concatenate([dS, dz[..., None]], axis=-1))
    Vd = do.shape[-1]
    dS0 = grads["initial_state"]
    return {"q": grads["q"], "k": grads["k"], "v": np.ascontiguousarray(grads["v"][..., :Vd]),
            "initial_state": (np.ascontiguousarray(dS0[..., :Vd]),
                              np.ascontiguousarray(dS0[..., Vd]))}
