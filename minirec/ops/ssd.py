"""Mamba-2's state-space duality (SSD) layer core (Dao & Gu 2024, "Transformers
are SSMs: Generalized Models and Efficient Algorithms Through Structured State
Space Duality", §6 and Listing 1 "ssd_minimal_discrete").

Names. The paper reuses letters: the arrays ``A, B, C, D`` below are the
paper's (the scalar-per-head state decay, the input and output projections and
the skip), so the batch size is written ``batch`` (``Bsz`` in the code), never
``B``. Dimension key: ``batch`` batch, T time, H heads, P head dimension (the
paper's ``headdim``, the size of ``x`` per head), N state size (``d_state``).
``Δ`` is ``dt``; ``h`` is the state the paper calls ``h`` (FLA's ``S``).

Inputs: ``x (batch, T, H, P)``, ``dt (batch, T, H)`` the step sizes, ``A (H,)``
(Mamba-2 uses ``A < 0``), ``B, C (batch, T, H, N)`` (the paper's ``ngroups``
groups already broadcast to the heads), ``D (H,)`` or ``None``; the state
``h`` is ``(batch, H, N, P)``. ``dt`` is the step itself, already positive:
this op applies **no softplus and no bias** to it (Mamba-2's layer computes
``dt = softplus(dt_raw + dt_bias)`` before calling the scan).

    a_t = exp(dt_t A)                                    (batch, H)
    h_t = a_t h_{t−1} + dt_t B_t x_t^T                   (batch, H, N, P)
    y_t = h_t^T C_t + D x_t                              (batch, H, P)

with ``h_{−1}`` = ``initial_state`` (zeros when ``None``). ``forward`` returns
``y (batch, T, H, P)``, the final state ``h_{T−1} (batch, H, N, P)`` and the
cache.

SSD is simple GLA. With ``q = C``, ``k = dt·B``, ``v = x``, ``g = dt·A`` and
``scale = 1`` the recurrence is ``S_t = e^{g_t} S_{t−1} + k_t v_t^T``,
``o_t = S_t^T q_t`` and ``y = o + D x``; the paper's segment-sum form

    y = (L ⊙ C B^T) X,     L_ij = exp(segsum(dt A)_ij) = e^{G_i − G_j} (j ≤ i), 0 (j > i)

(``G`` the cumulative sum of ``dt A``) is the scalar-decay GLA parallel form,
and its chunked version (intra-chunk quadratic blocks, inter-chunk states) is
the GLA chunk form. So ``parallel`` and ``chunk`` run the GLA engine
(:func:`minirec.ops.gla.run`) on those arrays; ``recurrent`` is the loop
above in SSD's own notation, with its own reverse loop, so that "SSD ≡ simple
GLA" is a test of two independent derivations.

Backward (``dy`` = ∂L/∂y, ``dstate`` = ∂L/∂h through the returned state;
``g_t`` = ∂L/∂h_t, the total gradient reaching the state at step t):

    g_{T−1} = dstate + C_{T−1} dy_{T−1}^T
    g_t     = C_t dy_t^T + a_{t+1} g_{t+1}              (the reverse loop)
    d initial_state = a_0 g_0
    dC_t    = h_t dy_t                                   (Σ_p h_t[n, p] dy_t[p])
    dx_t    = dt_t g_t^T B_t + D dy_t
    dB_t    = dt_t g_t x_t
    dlog a_t = a_t ⟨g_t, h_{t−1}⟩                        (log a_t = dt_t A)
    ddt_t   = A dlog a_t + B_t^T g_t x_t
    dA      = Σ_{batch, t} dt_t dlog a_t
    dD      = Σ_{batch, t, p} dy_t ⊙ x_t

Through the GLA engine the same gradients are the chain rule of the map above
from the engine's ``dq, dk, dv, dg`` (``dS0`` is ``d initial_state``):

    dC = dq,   dB = dt dk,   ddt = Σ_n dk ⊙ B + A dg,   dA = Σ_{batch, t} dt dg,
    dx = dv + D dy,   dD = Σ_{batch, t, p} dy ⊙ x.

Methods (:data:`METHODS`), all equal to ``recurrent`` (float64, relative RMS
≤ 1e-10, forward and every gradient): ``recurrent`` the definition;
``parallel`` the masked quadratic (segment-sum) form over the whole sequence;
``chunk`` the chunkwise algorithm of the paper (Listing 1) with ``chunk_size``
steps per chunk. Both of the latter only exponentiate differences
``G_i − G_j`` (``j ≤ i``) of cumulative log decays, which are ``≤ 0`` for
``dt ≥ 0`` and ``A ≤ 0``, so ``dt A = −20`` per step over long sequences stays
finite and accurate in float32.

Backends: those of the GLA engine (:data:`BACKENDS`). A kernel backend runs
every method it lists, ``recurrent`` included, through the GLA engine's
kernels (``gla.run(..., backend=...)``) with the map above; only the NumPy
``recurrent`` method runs SSD's own loop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.ops import _heads, gla

METHODS = _heads.METHODS  # ("recurrent", "parallel", "chunk")
# the GLA engine's backends: its kernels run every op on it
BACKENDS = gla.BACKENDS
BACKEND_METHODS = gla.BACKEND_METHODS

X = ("batch", "T", "H", "P")
DT = ("batch", "T", "H")
BC = ("batch", "T", "H", "N")
STATE = ("batch", "H", "N", "P")


class SSDCache(NamedTuple):
    """What :func:`backward` needs.

    Always: the forward's ``x, dt, A, B, C, D`` (``D`` may be ``None``),
    ``method``, ``backend`` and read-only zero views ``y_like (batch, T, H, P)``
    and ``state_like (batch, H, N, P)`` to check ``dy``/``dstate`` against.
    ``recurrent`` (NumPy): ``a (batch, T, H)`` = exp(dt A), ``h (batch, T, H,
    N, P)`` every state and ``h0`` the initial one; ``engine`` is ``None``. The
    other methods: ``engine``, the GLA engine's cache (the three others ``None``).
    """

    x: np.ndarray
    dt: np.ndarray
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray | None
    method: str
    backend: str
    y_like: np.ndarray
    state_like: np.ndarray
    a: np.ndarray | None = None
    h: np.ndarray | None = None
    h0: np.ndarray | None = None
    engine: Any = None


# ---------------------------------------------------------------------------
# the definition: forward loop and its reverse loop
# ---------------------------------------------------------------------------

def _recurrent_forward(x, dt, A, B, C, h0):
    """``h_t = a_t h_{t−1} + dt_t B_t x_t^T``, ``y_t = h_t^T C_t`` (without D);
    returns ``y``, ``a`` and every ``h_t``."""
    Bsz, T, H, P = x.shape
    N = B.shape[-1]
    a = np.exp(dt * A)                                               # (batch, T, H)
    h = np.empty((Bsz, T, H, N, P), x.dtype)
    y = np.empty(x.shape, x.dtype)
    state = h0
    for t in range(T):
        bx = (dt[:, t, :, None] * B[:, t])[..., None] * x[:, t, :, None, :]   # dt B x^T
        state = a[:, t, :, None, None] * state + bx
        h[:, t] = state
        y[:, t] = np.einsum("bhnp,bhn->bhp", state, C[:, t])         # h_t^T C_t
    return y, a, h


def _recurrent_backward(c: SSDCache, dy, dstate):
    """The reverse loop of the module docstring; returns the gradients of
    ``x, dt, A, B, C`` and of the initial state (``D``'s is the caller's)."""
    x, dt, A, B, C, a, h = c.x, c.dt, c.A, c.B, c.C, c.a, c.h
    T = x.shape[1]
    dx = np.empty(x.shape, x.dtype)
    ddt = np.empty(dt.shape, dt.dtype)
    dB = np.empty(B.shape, B.dtype)
    dC = np.empty(C.shape, C.dtype)
    dA = np.zeros(A.shape, A.dtype)
    g = dstate  # ∂L/∂h_{T−1} through the returned state (never written to)
    for t in reversed(range(T)):
        g = g + C[:, t, :, :, None] * dy[:, t, :, None, :]           # + C_t dy_t^T
        dC[:, t] = np.einsum("bhnp,bhp->bhn", h[:, t], dy[:, t])     # h_t dy_t
        gB = np.einsum("bhnp,bhn->bhp", g, B[:, t])                  # g_t^T B_t
        dx[:, t] = dt[:, t, :, None] * gB
        dB[:, t] = dt[:, t, :, None] * np.einsum("bhnp,bhp->bhn", g, x[:, t])
        h_prev = h[:, t - 1] if t > 0 else c.h0
        dlog_a = a[:, t] * np.einsum("bhnp,bhnp->bh", g, h_prev)     # a_t ⟨g_t, h_{t−1}⟩
        ddt[:, t] = A * dlog_a + np.einsum("bhp,bhp->bh", gB, x[:, t])
        dA += np.sum(dt[:, t] * dlog_a, axis=0)
        g = a[:, t, :, None, None] * g                               # reaches h_{t−1}
    return {"x": dx, "dt": ddt, "A": dA, "B": dB, "C": dC, "initial_state": g}


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def _check(x, dt, A, B, C, D, initial_state):
    """Every array against its named shape; the computation dtype and the shapes."""
    s = V.Shapes()
    _heads.time_array(s, "x", x, X)
    V.time_steps("x", x)
    _heads.time_array(s, "dt", dt, DT)
    _heads.time_array(s, "A", A, ("H",))
    _heads.time_array(s, "B", B, BC)
    _heads.time_array(s, "C", C, BC)
    if D is not None:
        _heads.time_array(s, "D", D, ("H",))
    if initial_state is not None:
        _heads.time_array(s, "initial_state", initial_state, STATE)
    dtype = V.common_dtype(x=x, dt=dt, A=A, B=B, C=C, D=D, initial_state=initial_state)
    return dtype, s


def forward(x: np.ndarray, dt: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray,
            D: np.ndarray | None = None, *, initial_state: np.ndarray | None = None,
            method: str = "recurrent", chunk_size: int = 64,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, SSDCache]:
    """Mamba-2's SSD: ``h_t = exp(dt_t A) h_{t−1} + dt_t B_t x_t^T``,
    ``y_t = h_t^T C_t + D x_t``.

    Args:
        x: ``(batch, T, H, P)`` input sequence.
        dt: ``(batch, T, H)`` step sizes, used as given (no softplus, no bias).
        A: ``(H,)`` the scalar state decay of each head (Mamba-2: ``A < 0``).
        B: ``(batch, T, H, N)`` input projection, one per step and head.
        C: ``(batch, T, H, N)`` output projection, one per step and head.
        D: ``(H,)`` skip connection, or ``None`` (no skip).
        initial_state: ``(batch, H, N, P)`` ``h_{−1}``; ``None`` means zeros.
        method: one of :data:`METHODS`.
        chunk_size: chunk length of ``method="chunk"`` (checked, otherwise unused).
        backend: one of :data:`BACKENDS`.

    Returns:
        ``y (batch, T, H, P)``, the final state ``(batch, H, N, P)`` and the
        cache for :func:`backward`.
    """
    chunk_size = _heads.check_call("ops.ssd", method, backend, chunk_size, BACKENDS,
                                   BACKEND_METHODS)
    dtype, s = _check(x, dt, A, B, C, D, initial_state)
    Bsz, T, H, P = x.shape
    N = s["N"]
    h0 = (_backend.xp_of(x).zeros((Bsz, H, N, P), dtype) if initial_state is None
          else initial_state)
    common = dict(x=x, dt=dt, A=A, B=B, C=C, D=D, method=method, backend=backend,
                  y_like=V.zeros_view(x, x.shape, dtype),
                  state_like=V.zeros_view(x, (Bsz, H, N, P), dtype))
    if method == "recurrent" and backend == "numpy":
        y, a, h = _recurrent_forward(x, dt, A, B, C, h0)
        h_T = h[:, -1].copy()
        cache = SSDCache(**common, a=a, h=h, h0=h0)
    else:  # the segment-sum forms are the scalar-decay GLA engine's
        y, h_T, engine = gla.run(C, dt[..., None] * B, x, dt * A, None, h0, scale=1.0,
                                 method=method, chunk_size=chunk_size, backend=backend)
        cache = SSDCache(**common, engine=engine)
    if D is not None:
        y = y + D[:, None] * x
    return y, h_T, cache


def backward(cache: SSDCache, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
    """Gradients of :func:`forward` (equations in the module docstring), by the
    algorithm of the forward's method.

    Args:
        cache: from :func:`forward`.
        dy: ``(batch, T, H, P)`` ∂L/∂y (``None`` means zeros).
        dstate: ``(batch, H, N, P)`` ∂L/∂h through the returned final state
            (``None`` means zeros).

    Returns:
        ``{"x", "dt", "A", "B", "C", "D", "initial_state"}``, each shaped like
        the forward's argument (``"D"`` is ``None`` when ``D`` was; the
        ``initial_state`` gradient is returned also when it was ``None``).
    """
    c, dy, dstate = _heads.grads_in("ops.ssd", cache, SSDCache, dy, dstate, out="y")
    if c.engine is None:
        grads = _recurrent_backward(c, dy, dstate)
    else:
        e = gla.run_backward(c.engine, dy, dstate)
        grads = {"x": e["v"],
                 "dt": np.einsum("bthn,bthn->bth", e["k"], c.B) + c.A * e["g"],
                 "A": np.einsum("bth,bth->h", e["g"], c.dt),
                 "B": c.dt[..., None] * e["k"],
                 "C": e["q"],
                 "initial_state": e["initial_state"]}
    if c.D is not None:
        grads["x"] = grads["x"] + c.D[:, None] * dy
        grads["D"] = np.einsum("bthp,bthp->h", dy, c.x)
    else:
        grads["D"] = None
    order = ("x", "dt", "A", "B", "C", "D", "initial_state")
    return {k: grads[k] for k in order}
