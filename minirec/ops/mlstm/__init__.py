"""mLSTM, the matrix-memory LSTM of xLSTM (Beck et al. 2024), in three forms.

Dimension key: B batch, T time, H heads, K key/query size, V value size.
``q, k (B, T, H, K)``, ``v (B, T, H, V)``, input and forget gate
pre-activations ``i, f (B, T, H)``; state ``(C (B, H, K, V), n (B, H, K),
m (B, H))``, K-first (DESIGN §3). Per batch row and head:

    q̃_t = scale · q_t                                   scale = K^{−1/2} by default
    m_t = max(log σ(f_t) + m_{t−1}, i_t)                 stabiliser
    C_t = e^{log σ(f_t) + m_{t−1} − m_t} C_{t−1} + e^{i_t − m_t} k_t v_t^T
    n_t = e^{log σ(f_t) + m_{t−1} − m_t} n_{t−1} + e^{i_t − m_t} k_t
    h_t = C_t^T q̃_t / max(|n_t · q̃_t|, e^{−m_t})

``initial_state=None`` is ``(C, n, m) = (0, 0, 0)`` (``m_0 = 0``). The output
does not depend on the stabiliser: shifting a state to ``(C e^{−δ}, n e^{−δ},
m + δ)`` changes no ``h_t`` (``m`` only keeps every exponent ≤ 0).

Methods (:data:`METHODS`), each a module of this package with its own forward
and its own hand-derived backward (equations in each module's docstring), all
equal to ``recurrent`` (tested to 1e-10 relative RMS in float64):

``recurrent``  :mod:`.recurrent`, the definition: the loop above and BPTT.
``parallel``   :mod:`.parallel`, the quadratic form ``h = (Q̃ K^T ⊙ e^{D − m}) V / den``
               with the log-decay matrix ``D_tj = F_t − F_j + i_j`` (``F`` the
               cumulative ``log σ(f)``) and the row-wise stabiliser ``m_t = max_j D_tj``
               (the same ``m_t`` as the recurrence, in closed form); the initial
               state is one more column.
``chunk``      :mod:`.chunk`: the parallel form inside chunks of ``chunk_size``
               steps, the recurrence on ``(C, n, m)`` between them; backward chunkwise.

Gradients through the two maxes are subgradients, the same in every form:
a tie in ``max(|n_t · q̃_t|, e^{−m_t})`` takes the ``|n_t · q̃_t|`` branch, a tie
in the stabiliser's max takes the forget branch (the earlier argument; the
initial state's ``m_0`` before any step). Since ``h`` does not depend on the
stabiliser, only the returned final ``m`` has a gradient that goes through it.

Public op: :func:`forward` / :func:`backward`. The engine's dispatcher
:func:`run` / :func:`run_backward` (arrays already checked) is what a backend
replaces: for ``backend != "numpy"`` it calls the kernel module
``minirec.kernels.<backend>.mlstm`` (family ``"mlstm"``) in one line.

Backends (:data:`BACKEND_METHODS`): ``numba`` (:mod:`minirec.kernels.numba.mlstm`),
``cupy`` and ``cuda-emulated`` (:mod:`minirec.kernels.cuda.mlstm`) run
``recurrent``: a fused loop over time per (batch, head) with a checkpointed
backward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.ops import _heads
from minirec.ops.mlstm import chunk, parallel, recurrent

METHODS = ("recurrent", "parallel", "chunk")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# NumPy runs every form; numba the fused loop; CUDA the loop
BACKEND_METHODS: dict[str, tuple[str, ...]] = {"numba": ("recurrent",),
                                               "cupy": ("recurrent",),
                                               "cuda-emulated": ("recurrent",)}

State = tuple  # (C (B, H, K, V), n (B, H, K), m (B, H))

_FORMS = {"recurrent": recurrent, "parallel": parallel, "chunk": chunk}


# ---------------------------------------------------------------------------
# the engine's dispatcher (inputs already checked)
# ---------------------------------------------------------------------------

class EngineCache(NamedTuple):
    """What :func:`run_backward` needs: the ``method`` and ``backend`` that ran,
    and ``form``, the cache of that form's module (``recurrent.RecurrentCache``,
    ``parallel.ParallelCache``, ``chunk.ChunkCache``) or of the kernel module."""

    method: str
    backend: str
    form: Any


def run(q: np.ndarray, k: np.ndarray, v: np.ndarray, i: np.ndarray, f: np.ndarray,
        initial_state: State, *, scale: float, method: str, chunk_size: int,
        backend: str) -> tuple[np.ndarray, State, EngineCache]:
    """Run the mLSTM engine by ``method`` on ``backend`` (arguments already checked:
    ``initial_state`` a tuple of three arrays, never ``None``).

    Returns ``h (B, T, H, V)``, the final state ``(C, n, m)`` and an
    :class:`EngineCache` for :func:`run_backward`.
    """
    if backend != "numpy":
        h, state, form = _backend.kernels("mlstm", backend).forward(
            q, k, v, i, f, initial_state, scale=scale, method=method, chunk_size=chunk_size)
    elif method == "chunk":
        h, state, form = chunk.forward(q, k, v, i, f, initial_state, scale, chunk_size)
    else:
        h, state, form = _FORMS[method].forward(q, k, v, i, f, initial_state, scale)
    return h, state, EngineCache(method, backend, form)


def run_backward(engine_cache: EngineCache, do: np.ndarray, dstate: State) -> dict:
    """Gradients by the algorithm that made ``engine_cache`` (``do`` and
    ``dstate`` arrays of the forward's dtype, zeros filled in).

    Returns ``{"q", "k", "v", "i", "f", "initial_state": (dC0, dn0, dm0)}``.
    """
    if engine_cache.backend != "numpy":
        return _backend.kernels("mlstm", engine_cache.backend).backward(
            engine_cache.form, do, dstate)
    return _FORMS[engine_cache.method].backward(engine_cache.form, do, dstate)


# ---------------------------------------------------------------------------
# the public op
# ---------------------------------------------------------------------------

class MLSTMCache(NamedTuple):
    """What :func:`backward` needs: ``engine`` (:class:`EngineCache`), ``method``,
    ``backend``, and zero views of the output ``h_like (B, T, H, V)`` and of the
    state ``state_like`` (three parts) to check ``dh`` and ``dstate`` against."""

    engine: EngineCache
    method: str
    backend: str
    h_like: np.ndarray
    state_like: tuple


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, i: np.ndarray, f: np.ndarray, *,
            scale: float | None = None, initial_state: State | None = None,
            method: str = "recurrent", chunk_size: int = 64,
            backend: str = "numpy") -> tuple[np.ndarray, State, MLSTMCache]:
    """Run the mLSTM recurrence over axis 1 (equations in the module docstring).

    Args:
        q: ``(B, T, H, K)`` queries (multiplied by ``scale``).
        k: ``(B, T, H, K)`` keys.
        v: ``(B, T, H, V)`` values.
        i: ``(B, T, H)`` input gate pre-activations (the gate is ``e^{i}``).
        f: ``(B, T, H)`` forget gate pre-activations (the gate is ``σ(f)``).
        scale: positive number; ``None`` means ``K ** -0.5``.
        initial_state: ``(C0 (B, H, K, V), n0 (B, H, K), m0 (B, H))``; ``None``
            (or a ``None`` part) means zeros.
        method: one of :data:`METHODS`.
        chunk_size: chunk length of ``method="chunk"`` (a positive int, checked
            for every method).
        backend: one of :data:`BACKENDS`.

    Returns:
        ``h (B, T, H, V)``, the final state ``(C, n, m)`` and the cache for
        :func:`backward`. Computed in the inputs' dtype (float32 or float64).
    """
    chunk_size = _heads.check_call("ops.mlstm", method, backend, chunk_size, BACKENDS,
                                   BACKEND_METHODS, METHODS)
    s, dtype, scale = _heads.inputs(q, k, v, scale, (("i", i, _heads.GATE),
                                                     ("f", f, _heads.GATE)))
    parts = _heads.state_tuple("initial_state", initial_state, 3)
    initial_state = tuple(
        _heads.state(s, f"initial_state[{name}]", x, spec, dtype, q)
        for name, x, spec in zip(("C", "n", "m"), parts,
                                 (_heads.STATE, ("B", "H", "K"), ("B", "H"))))
    h, state, engine = run(q, k, v, i, f, initial_state, scale=scale, method=method,
                           chunk_size=chunk_size, backend=backend)
    state_like = tuple(V.zeros_view(x) for x in state)
    return h, state, MLSTMCache(engine, method, backend, V.zeros_view(h), state_like)


def backward(cache: MLSTMCache, dh: np.ndarray | None,
             dstate: State | None = None) -> dict:
    """Gradients of :func:`forward` by the algorithm of the method that made ``cache``.

    Args:
        cache: from :func:`forward`.
        dh: ``(B, T, H, V)`` ∂L/∂h, or ``None`` for zeros.
        dstate: ``(dC (B, H, K, V), dn (B, H, K), dm (B, H))`` ∂L/∂ final state;
            ``None`` (or ``None`` parts) for zeros.

    Returns:
        ``{"q", "k", "v", "i", "f", "initial_state": (dC0, dn0, dm0)}`` with the
        forward's shapes and dtype (``initial_state`` also when it was ``None``).
    """
    c, dh, dstate = _heads.grads_in("ops.mlstm", cache, MLSTMCache, dh, dstate, out="h")
    return run_backward(c.engine, dh, dstate)
