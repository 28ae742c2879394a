"""DeltaNet's delta rule (Schlag et al. 2021; Yang et al. 2024, "Parallelizing
Linear Transformers with the Delta Rule over Sequence Length"), and the delta
engine shared with :mod:`minirec.ops.gated_delta_rule`.

Dimension key: B batch, T time, H heads, K key size, V value size.
``q, k (B, T, H, K)``, ``v (B, T, H, V)``, ``beta (B, T, H)``, state
``S (B, H, K, V)`` K-first (DESIGN §3). Per batch row and head:

    u_t = v_t − S_{t−1}^T k_t                        the error of the memory's recall
    S_t = S_{t−1} + β_t k_t u_t^T                   = (I − β_t k_t k_t^T) S_{t−1} + β_t k_t v_t^T
    o_t = scale · S_t^T q_t                         scale = K ** −0.5 by default

``β ∈ [0, 2]`` by convention (not enforced). With ``‖k_t‖ = 1`` the transition
``I − β_t k_t k_t^T`` has eigenvalues ``1`` (K − 1 times) and ``1 − β_t``: a
projection at β = 1, a reflection (eigenvalue −1) at β = 2, which is what lets
DeltaNet track parity (Grazzi et al. 2024). The gated rule decays first,
``S' = e^{g_t} S_{t−1}``, then applies the same update to ``S'``.

Methods (each its own module with its own hand-derived backward):

``recurrent``  :mod:`.recurrent`, the loop above and BPTT — the definition.
``chunk``      :mod:`.chunk`, the WY/UT form: per chunk the unit lower
               triangular solve ``T = (I + tril(Diag(β) K K^T ⊙ decay, −1))^{−1} Diag(β)``,
               intra-chunk matmuls and state passing between chunks; the
               backward runs chunkwise in reverse.
``parallel``   :mod:`.parallel`, the same WY/UT algebra over the whole
               sequence as one block (no state passing).

Backward (BPTT of the definition, :mod:`.recurrent`; ``dS`` = ∂L/∂S_t from
``dstate`` backwards, ``Sp`` the (decayed) state before the write):

    dS += scale · q_t do_t^T,   dq_t = scale · S_t do_t
    dβ_t = k_t^T dS u_t,   du = β_t dS^T k_t,   dv_t = du,   dk_t = β_t dS u_t − Sp du
    dS_{t−1} = e^{g_t} (dS − k_t du^T),   dg_t = Σ (dS − k_t du^T) ⊙ Sp

The chunk form's own backward (a reverse pass over chunks carrying ``dS``,
then the UT transform's triangular solves transposed) is derived in :mod:`.chunk`.

The delta engine (used by every op of the family; inputs already checked):

    o, S_T, cache = run(q, k, v, g, beta, initial_state, *, scale, method,
                        chunk_size, backend)
    grads = run_backward(cache, do, dstate)   # {"q","k","v","g","beta","initial_state"}

``g`` is ``None`` (the delta rule) or ``(B, T, H)`` (the gated rule).

Backends (:data:`BACKEND_METHODS`): ``numba`` runs ``recurrent`` (a fused
loop, checkpointed backward) and ``chunk`` (the UT transform with BLAS
matmuls) (:mod:`minirec.kernels.numba.delta_rule`); ``cupy`` and
``cuda-emulated`` run ``recurrent`` with the state in shared memory
(:mod:`minirec.kernels.cuda.delta_rule`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.ops import _heads
from minirec.ops.delta_rule import chunk, parallel, recurrent

METHODS = ("recurrent", "parallel", "chunk")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# NumPy runs every form; numba the fused loop and the chunk form (BLAS matmuls); CUDA the loop
BACKEND_METHODS: dict[str, tuple[str, ...]] = {"numba": ("recurrent", "chunk"),
                                               "cupy": ("recurrent",),
                                               "cuda-emulated": ("recurrent",)}

_FORMS = {"recurrent": recurrent, "parallel": parallel, "chunk": chunk}


# ---------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------

class EngineCache(NamedTuple):
    """The delta engine's cache: ``method``, ``backend`` and ``form``, the cache
    of the form that ran (a :mod:`.recurrent`/:mod:`.parallel`/:mod:`.chunk`
    NamedTuple for NumPy, the kernel module's own otherwise)."""

    method: str
    backend: str
    form: Any


def run(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None,
        beta: np.ndarray, initial_state: np.ndarray, *, scale: float, method: str,
        chunk_size: int, backend: str) -> tuple[np.ndarray, np.ndarray, EngineCache]:
    """The delta engine's forward on checked inputs.

    ``S' = e^{g_t} S_{t−1}`` (``S' = S_{t−1}`` for ``g`` None),
    ``S_t = S' + β_t k_t (v_t − S'^T k_t)^T``, ``o_t = scale · S_t^T q_t``.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``; g: ``None`` or ``(B, T, H)``;
        beta: ``(B, T, H)``; initial_state: ``(B, H, K, V)`` (an array, never ``None``).
        scale, method, chunk_size, backend: already checked.

    Returns:
        ``o (B, T, H, V)``, ``S_T (B, H, K, V)`` and an :class:`EngineCache`.
    """
    if backend != "numpy":
        o, S_T, kernel = _backend.kernels("delta_rule", backend).forward(q, k, v, g, beta, initial_state, scale=scale, method=method, chunk_size=chunk_size)  # noqa: E501
        return o, S_T, EngineCache(method, backend, kernel)
    if method == "chunk":
        o, S_T, cache = chunk.forward(q, k, v, g, beta, initial_state, scale, chunk_size)
    else:
        o, S_T, cache = _FORMS[method].forward(q, k, v, g, beta, initial_state, scale)
    return o, S_T, EngineCache(method, backend, cache)


def run_backward(cache: EngineCache, do: np.ndarray, dstate: np.ndarray) -> dict:
    """The backward of the form (or kernel) that made ``cache``; ``do`` and
    ``dstate`` are arrays of the forward's dtype. Returns
    ``{"q", "k", "v", "g", "beta", "initial_state"}`` (``g`` ``None`` when it was)."""
    if cache.backend != "numpy":
        return _backend.kernels("delta_rule", cache.backend).backward(cache.form, do, dstate)
    return _FORMS[cache.method].backward(cache.form, do, dstate)


# ---------------------------------------------------------------------------
# the public op
# ---------------------------------------------------------------------------

class DeltaRuleCache(NamedTuple):
    """What :func:`backward` needs: the engine's cache, ``method``, ``backend`` and
    zero views of the output ``o_like (B, T, H, V)`` and of the final state
    ``state_like (B, H, K, V)`` to check ``do`` and ``dstate`` against."""

    engine: EngineCache
    method: str
    backend: str
    o_like: np.ndarray
    state_like: np.ndarray


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, beta: np.ndarray, *,
            scale: float | None = None, initial_state: np.ndarray | None = None,
            method: str = "recurrent", chunk_size: int = 64,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, DeltaRuleCache]:
    """Run the delta rule ``S_t = S_{t−1} + β_t k_t (v_t − S_{t−1}^T k_t)^T``,
    ``o_t = scale · S_t^T q_t`` over axis 1.

    Args:
        q, k: ``(B, T, H, K)`` queries and keys (DeltaNet L2-normalises ``k``;
            that is the caller's choice here).
        v: ``(B, T, H, V)`` values.
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
    chunk_size = _heads.check_call("ops.delta_rule", method, backend, chunk_size, BACKENDS,
                                   BACKEND_METHODS)
    s, dtype, scale = _heads.inputs(q, k, v, scale, (("beta", beta, _heads.GATE),))
    S0 = _heads.state(s, "initial_state", initial_state, _heads.STATE, dtype, q)
    o, S_T, engine = run(q, k, v, None, beta, S0, scale=scale, method=method,
                         chunk_size=chunk_size, backend=backend)
    return o, S_T, DeltaRuleCache(engine, method, backend, V.zeros_view(o), V.zeros_view(S_T))


def backward(cache: DeltaRuleCache, do: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` by the backward of the method that made ``cache``.

    Args:
        cache: from :func:`forward`.
        do: ``(B, T, H, V)`` ∂L/∂o (``None`` means zeros).
        dstate: ``(B, H, K, V)`` ∂L/∂ final state (``None`` means zeros).

    Returns:
        ``{"q", "k", "v", "beta", "initial_state"}`` with the forward's shapes and dtype.
    """
    c, do, dstate = _heads.grads_in("ops.delta_rule", cache, DeltaRuleCache, do, dstate)
    grads = run_backward(c.engine, do, dstate)
    return {name: grads[name] for name in ("q", "k", "v", "beta", "initial_state")}
