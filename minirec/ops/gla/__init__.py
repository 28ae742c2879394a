"""Gated linear attention (GLA; Yang et al., "Gated Linear Attention Transformers
with Hardware-Efficient Training", ICML 2024), and the engine behind the whole
GLA family.

Dimension key: B batch, T time, H heads, K key/query size, V value size.

The op :func:`forward` (``q, k (B, T, H, K)``, ``v (B, T, H, V)``, per-key log
decay ``g (B, T, H, K)``, state ``S (B, H, K, V)``, K-first):

    S_t = Diag(e^{g_t}) S_{t−1} + k_t v_t^T
    o_t = scale · S_t^T q_t                     scale defaults to K^{−1/2}

Backward (BPTT; the other forms derive theirs in their modules), with ``dS`` =
∂L/∂S_t from ``dstate`` and the later steps:

    dS  += scale · q_t do_t^T;   dq_t = scale · S_t do_t
    dk_t = dS v_t;   dv_t = dS^T k_t;   dg_t = Σ_V dS ⊙ (e^{g_t} S_{t−1})
    dS  ← Diag(e^{g_t}) dS       → d initial_state after step 0

HGRN2 (Qin et al. 2024) is this op with ``k = 1 − e^{g}`` (the forget gate's
complement as the key).

The engine
----------
:func:`run` / :func:`run_backward` compute, per batch row and head,

    GLA mode (u None):   S_t = Diag(e^{g_t}) S_{t−1} + k_t v_t^T,  o_t = scale · S_t^T q_t
    RWKV mode (u (H, K)): o_t = scale · (S_{t−1} + Diag(u) k_t v_t^T)^T q_t, then S_t as above

with ``g`` ``None`` (no decay), ``(B, T, H)`` (a scalar per head) or
``(B, T, H, K)`` (per key). ``linear_attention``, ``retention``,
``simple_gla``, this op, ``rwkv6`` and ``ssd``'s parallel and chunk forms call
it. Three forms, each with its own hand-derived backward:

``recurrent``  :mod:`.recurrent`, the loop above (the definition).
``parallel``   :mod:`.parallel`, the masked quadratic form over the whole
               sequence plus the initial-state term (O(T²)).
``chunk``      :mod:`.chunk`, the quadratic form inside chunks of
               ``chunk_size`` steps and the state passed between chunks
               (O(T·C)); its backward passes ``dS`` back chunk by chunk.

Both only ever exponentiate differences of cumulative log decays that are
``≤ 0`` (for ``g ≤ 0``), so log decays of −20 or −100 per step stay finite.

Backends (:data:`BACKEND_METHODS`): ``numba`` runs ``recurrent`` as one fused
time loop per (batch, head) with the state in a local array and a backward
that recomputes from checkpoints every ``chunk_size`` steps, and ``chunk``
with its matmuls on BLAS (:mod:`minirec.kernels.numba.gla`); ``cupy`` and
``cuda-emulated`` run ``recurrent`` with one block per (batch, head, 32
columns of S), the state in shared memory (:mod:`minirec.kernels.cuda.gla`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.ops import _heads
from minirec.ops.gla import chunk, parallel, recurrent

METHODS = ("recurrent", "parallel", "chunk")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# NumPy runs every form; numba the fused loop and the chunk form (BLAS matmuls); CUDA the loop
BACKEND_METHODS: dict[str, tuple[str, ...]] = {"numba": ("recurrent", "chunk"),
                                               "cupy": ("recurrent",),
                                               "cuda-emulated": ("recurrent",)}

_FORMS = {"recurrent": recurrent, "parallel": parallel, "chunk": chunk}


class EngineCache(NamedTuple):
    """What :func:`run_backward` needs: ``method``, ``backend`` and ``form``, the
    cache of the NumPy form (:class:`.recurrent.RecurrentCache`, …) or of the
    backend's kernel module."""

    method: str
    backend: str
    form: Any


def run(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None,
        u: np.ndarray | None, initial_state: np.ndarray, *, scale: float, method: str,
        chunk_size: int, backend: str) -> tuple[np.ndarray, np.ndarray, EngineCache]:
    """The engine's forward (module docstring), inputs already checked.

    Args:
        q, k: ``(B, T, H, K)``.
        v: ``(B, T, H, V)``.
        g: ``None``, ``(B, T, H)`` or ``(B, T, H, K)`` log decays (may be a
            broadcast view).
        u: ``None`` (GLA mode) or ``(H, K)`` (RWKV mode).
        initial_state: ``(B, H, K, V)`` (never ``None`` here).
        scale: the factor of the read-out.
        method: ``"recurrent"``, ``"parallel"`` or ``"chunk"``.
        chunk_size: the chunk length of ``"chunk"``.
        backend: ``"numpy"`` or a kernel backend.

    Returns:
        ``o (B, T, H, V)``, ``S_T (B, H, K, V)`` and the :class:`EngineCache`.
    """
    if backend != "numpy":
        o, S, kernel = _backend.kernels("gla", backend).forward(q, k, v, g, u, initial_state, scale=scale, method=method, chunk_size=chunk_size)  # noqa: E501
        return o, S, EngineCache(method, backend, kernel)
    if method == "chunk":
        o, S, form = chunk.forward(q, k, v, g, u, initial_state, scale, chunk_size)
    else:
        o, S, form = _FORMS[method].forward(q, k, v, g, u, initial_state, scale)
    return o, S, EngineCache(method, backend, form)


def run_backward(cache: EngineCache, do: np.ndarray, dstate: np.ndarray) -> dict:
    """The engine's backward by the algorithm of the forward that made ``cache``.

    ``do (B, T, H, V)`` and ``dstate (B, H, K, V)`` are arrays of the forward's
    dtype. Returns ``{"q", "k", "v", "g", "u", "initial_state"}`` with the
    shapes given to :func:`run` (``g``/``u`` ``None`` when they were ``None``;
    ``u``'s gradient summed over B and T)."""
    if cache.backend != "numpy":
        return _backend.kernels("gla", cache.backend).backward(cache.form, do, dstate)
    return _FORMS[cache.method].backward(cache.form, do, dstate)


# ---------------------------------------------------------------------------
# the gla op
# ---------------------------------------------------------------------------

class GLACache(NamedTuple):
    """What :func:`backward` needs: the :class:`EngineCache` ``engine``,
    ``method``, ``backend``, and zero views ``o_like (B, T, H, V)``,
    ``state_like (B, H, K, V)`` to check ``do`` and ``dstate`` against."""

    engine: EngineCache
    method: str
    backend: str
    o_like: np.ndarray
    state_like: np.ndarray


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, *,
            scale: float | None = None, initial_state: np.ndarray | None = None,
            method: str = "recurrent", chunk_size: int = 64, backend: str = "numpy"
            ) -> tuple[np.ndarray, np.ndarray, GLACache]:
    """Gated linear attention: ``S_t = Diag(e^{g_t}) S_{t−1} + k_t v_t^T``,
    ``o_t = scale · S_t^T q_t``.

    Args:
        q, k: ``(B, T, H, K)`` queries and keys.
        v: ``(B, T, H, V)`` values.
        g: ``(B, T, H, K)`` log decays (``g ≤ 0`` by convention; not enforced).
        scale: read-out factor, ``None`` for ``K ** -0.5``.
        initial_state: ``(B, H, K, V)``; ``None`` means zeros.
        method: one of :data:`METHODS`.
        chunk_size: chunk length for ``method="chunk"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``o (B, T, H, V)``, the final state ``(B, H, K, V)`` and the cache.
    """
    chunk_size = _heads.check_call("ops.gla", method, backend, chunk_size, BACKENDS,
                                   BACKEND_METHODS)
    s, dtype, scale = _heads.inputs(q, k, v, scale, (("g", g, _heads.QK),))
    S0 = _heads.state(s, "initial_state", initial_state, _heads.STATE, dtype, q)
    o, S, engine = run(q, k, v, g, None, S0, scale=scale, method=method,
                       chunk_size=chunk_size, backend=backend)
    return o, S, GLACache(engine, method, backend, V.zeros_view(o), V.zeros_view(S))


def backward(cache: GLACache, do: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` by the algorithm of its method.

    Args:
        cache: from :func:`forward`.
        do: ``(B, T, H, V)`` ∂L/∂o (``None``: zeros).
        dstate: ``(B, H, K, V)`` ∂L/∂ final state (``None``: zeros).

    Returns:
        ``{"q", "k", "v", "g", "initial_state"}`` with the forward's shapes.
    """
    c, do, dstate = _heads.grads_in("ops.gla.backward", cache, GLACache, do, dstate)
    grads = run_backward(c.engine, do, dstate)
    return {name: grads[name] for name in ("q", "k", "v", "g", "initial_state")}
