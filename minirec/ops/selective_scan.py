"""Mamba-1's selective scan (Gu & Dao 2023, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces", Algorithm 2).

Dimension key: B batch, T time, D channels (Mamba's ``d_inner``), N state size.

Names. Mamba reuses letters: the arrays ``A, B, C, D`` below are the paper's
(state matrix, input and output projections, skip), and the dimensions B and
D are batch and channels; in the code the sizes are ``Bsz`` and ``Dch``.
``Δ`` is ``dt`` (the paper's ``delta`` after bias and softplus), ``ā`` is
``a`` and ``b̄`` is ``b``.

Inputs: ``u (B, T, D)`` the sequence, ``delta (B, T, D)`` the step sizes before
the optional bias and softplus, ``A (D, N)`` the (negative, real) diagonal state
matrix, ``B, C (B, T, N)`` the input-dependent input and output projections
(one per time step, shared by the channels), ``D (D,)`` the skip connection,
``z (B, T, D)`` the gate, ``delta_bias (D,)``; the state ``h`` is ``(B, D, N)``.

    pre_t = delta_t + delta_bias                                  (B, D)
    Δ_t   = softplus(pre_t)   if delta_softplus, else pre_t        (B, D)
    ā_t   = exp(Δ_t ⊗ A)                                          (B, D, N)
    b̄_t   = Δ_t ⊗ B_t ⊙ u_t,   i.e. b̄_t[d, n] = Δ_t[d] B_t[n] u_t[d]
    h_t   = ā_t ⊙ h_{t−1} + b̄_t                                   (B, D, N)
    y0_t  = Σ_n h_t[:, :, n] C_t[n] + D ⊙ u_t                     (B, D)
    y_t   = y0_t ⊙ silu(z_t)      (y_t = y0_t when z is None)

with ``h_{−1}`` = ``initial_state`` (zeros when ``None``). ``forward`` returns
``y (B, T, D)``, the final state ``h_T = h_{T−1} (B, D, N)`` and the cache.

Backward (``dy`` = ∂L/∂y, ``dstate`` = ∂L/∂h_T through the returned state;
``g_t`` = ∂L/∂h_t, the total gradient reaching the state at step t;
``σ`` the logistic sigmoid):

    dy0_t   = dy_t ⊙ silu(z_t)
    dz_t    = dy_t ⊙ y0_t ⊙ σ(z_t) (1 + z_t (1 − σ(z_t)))
    g_{T−1} = dstate + dy0_{T−1} ⊗ C_{T−1}
    g_t     = dy0_t ⊗ C_t + ā_{t+1} ⊙ g_{t+1}          (the reverse scan)
    dh0     = ā_0 ⊙ g_0                                  → "initial_state"
    dā_t    = g_t ⊙ h_{t−1}                              (h_{−1} = h0)
    dlog ā_t = dā_t ⊙ ā_t                                (log ā = Δ ⊗ A)
    dA      = Σ_{b,t} dlog ā_t ⊙ Δ_t                     (Δ_t broadcast over n)
    dΔ_t    = Σ_n (dlog ā_t ⊙ A + g_t ⊙ B_t u_t)
    dB_t    = Σ_d g_t ⊙ Δ_t u_t
    dC_t    = Σ_d dy0_t h_t
    du_t    = Σ_n g_t ⊙ Δ_t B_t + D ⊙ dy0_t
    dD      = Σ_{b,t} dy0_t ⊙ u_t
    dpre_t  = dΔ_t ⊙ σ(pre_t)    if delta_softplus, else dΔ_t
    ddelta  = dpre,              ddelta_bias = Σ_{b,t} dpre

``backward`` returns these for every argument that was an array: ``u``,
``delta``, ``A``, ``B``, ``C``, ``initial_state`` always, and ``D``, ``z``,
``delta_bias`` when they were given. Unlike the CUDA original, an initial
state and the final state's gradient are supported, so a long sequence can be
run in pieces (split-resume) and trained through.

Methods, all equal to the loop (tested to 1e-10 relative RMS in float64):

``recurrent``      the loop above, with its own reverse loop for the backward
                   (the definition).
``hillis_steele``, ``blelloch``, ``chunked``, ``log``
                   :func:`minirec.scan.linear.forward` with this method on
                   the log-coefficients ``log_a = log ā = Δ ⊗ A`` (known
                   exactly: never ``log(exp(Δ A))``) and ``b = b̄`` (both
                   ``(B, T, D, N)``); the backward is
                   :func:`minirec.scan.linear.backward` (the reverse scan of the
                   same method) on ``dh_t = dy0_t ⊗ C_t`` and ``dstate``, which
                   gives ``g_t = d b̄_t``, ``dlog ā_t`` and ``dh0``; the rest of
                   the equations above are shared. ``log`` (Heinsen's
                   log-space scan) never forms ``ā``, so it runs where ``ā``
                   underflows to 0 (large ``Δ``: saturated pre-activations).

Backends (:data:`BACKEND_METHODS`): ``backend="numba"`` runs ``recurrent``
through :mod:`minirec.kernels.numba.selective_scan` (fused forward and reverse
kernels: the state of a block of channels in a small local array, no
``(B, T, D, N)`` array made, the backward recomputing each chunk of steps from
a checkpointed state), and ``chunked`` as the parallel method above with
:func:`minirec.scan.linear.forward`'s numba kernel for the scan.
``backend="cupy"`` (CuPy arrays, on a GPU) and ``"cuda-emulated"`` (the same
CUDA C on the CPU) run ``recurrent`` only, through
:mod:`minirec.kernels.cuda.selective_scan`: one thread per (channel, state)
pair, time in chunks staged in shared memory, the backward recomputing each
chunk from a checkpointed state; no ``(B, T, D, N)`` array is made. (The
parallel methods would be the NumPy code above around scan.linear's CUDA
scan, with the ``(B, T, D, N)`` arrays the kernel exists to avoid.)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec._math import sigmoid, silu, silu_grad, softplus
from minirec.scan import linear

METHODS = ("recurrent",) + tuple(m for m in linear.METHODS if m != "recurrent")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# the methods each non-NumPy backend runs (NumPy runs them all); "recurrent" is
# the backend's fused kernel, numba's "chunked" the scan.linear kernel
BACKEND_METHODS = {"numba": ("recurrent", "chunked"), "cupy": ("recurrent",),
                   "cuda-emulated": ("recurrent",)}
# the methods a backend's own kernel module runs (the others pass the backend on
# to scan.linear)
_KERNEL_METHODS = ("recurrent",)
_OPTIONAL = ("D", "z", "delta_bias")


class SelectiveScanCache(NamedTuple):
    """What :func:`backward` needs.

    Always: the forward's arrays ``u, A, B, C, D, z`` (``D``/``z`` may be
    ``None``), ``delta_softplus``, ``has_delta_bias``, ``method``,
    ``chunk_size``, ``backend``. From the NumPy code of this module (``None``
    otherwise): ``pre (B, T, D)`` = delta + delta_bias, ``dt (B, T, D)`` = Δ,
    ``a (B, T, D, N)`` = ā (``recurrent`` only; the parallel methods keep
    ``log ā`` in their scan cache), ``h (B, T, D, N)`` every state,
    ``h0 (B, D, N)``, ``y0 (B, T, D)`` the output before the gate, and
    ``scan_cache`` (the :mod:`minirec.scan.linear` cache of the parallel
    methods, ``None`` for ``recurrent``). From a backend's kernel module:
    ``kernel``, its own cache (the NumPy fields are then ``None``).
    """

    u: np.ndarray
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray | None
    z: np.ndarray | None
    delta_softplus: bool
    has_delta_bias: bool
    method: str
    chunk_size: int | None
    backend: str
    pre: np.ndarray | None = None
    dt: np.ndarray | None = None
    a: np.ndarray | None = None
    h: np.ndarray | None = None
    h0: np.ndarray | None = None
    y0: np.ndarray | None = None
    scan_cache: linear.LinearScanCache | None = None
    kernel: Any = None


# ---------------------------------------------------------------------------
# the definition: forward loop and its reverse loop
# ---------------------------------------------------------------------------

def _recurrent_forward(a, b, h0):
    """``h_t = a_t ⊙ h_{t−1} + b_t``, written out; returns every ``h_t``."""
    h = np.empty(b.shape, b.dtype)
    state = h0
    for t in range(b.shape[1]):
        state = a[:, t] * state + b[:, t]
        h[:, t] = state
    return h


def _recurrent_backward(a, h, h0, dh, dstate):
    """The reverse loop: ``g_t = dh_t + a_{t+1} ⊙ g_{t+1}``; returns ``g`` (= d b̄),
    ``dā`` and ``dh0``."""
    T = h.shape[1]
    g = np.empty(h.shape, h.dtype)
    g_next = dstate.copy()  # ∂L/∂h_{T−1} from the returned state, before step T−1's output
    for t in reversed(range(T)):
        g_t = g_next + dh[:, t]
        g[:, t] = g_t
        g_next = a[:, t] * g_t  # gradient reaching h_{t−1}
    h_prev = np.concatenate([h0[:, None], h[:, :-1]], axis=1)
    return g, g * h_prev, g_next


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def _check(u, delta, A, B, C, D, z, delta_bias, initial_state):
    """Every array against its named shape (the optional ones when given); the
    computation dtype."""
    arrays = {"u": (u, ("B", "T", "D")), "delta": (delta, ("B", "T", "D")),
              "A": (A, ("D", "N")), "B": (B, ("B", "T", "N")), "C": (C, ("B", "T", "N")),
              "D": (D, ("D",)), "z": (z, ("B", "T", "D")), "delta_bias": (delta_bias, ("D",)),
              "initial_state": (initial_state, ("B", "D", "N"))}
    s = V.Shapes()
    for name, (x, spec) in arrays.items():
        if x is None and name in _OPTIONAL + ("initial_state",):
            continue
        V.array(name, x, ndim=len(spec), allow_complex=False)
        s.check(name, x, spec)
    V.time_steps("u", u)
    return V.common_dtype(**{name: x for name, (x, _) in arrays.items()})


def forward(u: np.ndarray, delta: np.ndarray, A: np.ndarray, B: np.ndarray, C: np.ndarray,
            D: np.ndarray | None = None, z: np.ndarray | None = None,
            delta_bias: np.ndarray | None = None, delta_softplus: bool = False, *,
            initial_state: np.ndarray | None = None, method: str = "recurrent",
            chunk_size: int | None = None, backend: str = "numpy",
            ) -> tuple[np.ndarray, np.ndarray, SelectiveScanCache]:
    """The selective scan ``h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t``,
    ``y_t = (h_t · C_t + D ⊙ u_t) ⊙ silu(z_t)``.

    Args:
        u: ``(B, T, D)`` input sequence.
        delta: ``(B, T, D)`` step sizes (before ``delta_bias`` and softplus).
        A: ``(D, N)`` diagonal state matrix (Mamba uses ``A < 0``).
        B: ``(B, T, N)`` input projection, one per step.
        C: ``(B, T, N)`` output projection, one per step.
        D: ``(D,)`` skip connection, or ``None`` (no skip).
        z: ``(B, T, D)`` gate, or ``None`` (no gate).
        delta_bias: ``(D,)`` added to ``delta``, or ``None``.
        delta_softplus: apply ``softplus`` to ``delta + delta_bias``.
        initial_state: ``(B, D, N)`` ``h_{−1}``; ``None`` means zeros.
        method: one of :data:`METHODS`.
        chunk_size: chunk length for ``"chunked"`` (default ⌈√T⌉).
        backend: one of :data:`BACKENDS`.

    Returns:
        ``y (B, T, D)``, the final state ``(B, D, N)`` and the cache for
        :func:`backward`.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="ops.selective_scan", method=method,
                     backend_methods=BACKEND_METHODS)
    dtype = _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    chunk_size = V.positive_int("chunk_size", chunk_size, allow_none=True)
    common = dict(u=u, A=A, B=B, C=C, D=D, z=z, delta_softplus=bool(delta_softplus),
                  has_delta_bias=delta_bias is not None, method=method,
                  chunk_size=chunk_size, backend=backend)
    if backend != "numpy" and method in _KERNEL_METHODS:
        y, h_T, kernel = _backend.kernels("selective_scan", backend).forward(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
        return y, h_T, SelectiveScanCache(**common, kernel=kernel)
    Bsz, _, Dch = u.shape
    h0 = np.zeros((Bsz, Dch, A.shape[1]), dtype) if initial_state is None else initial_state
    pre = delta if delta_bias is None else delta + delta_bias
    dt = softplus(pre) if delta_softplus else pre
    log_a = dt[..., None] * A                                    # log ā = Δ A  (B, T, D, N)
    b = (dt * u)[..., None] * B[:, :, None, :]                   # b̄ = Δ B u    (B, T, D, N)
    if method == "recurrent":
        a = np.exp(log_a)
        h = _recurrent_forward(a, b, h0)
        scan_cache = None
    else:  # scan.linear on log ā itself ("log" then never forms ā, which may underflow)
        a = None
        h, _, scan_cache = linear.forward(None, b, h0, log_a=log_a, method=method,
                                          chunk_size=chunk_size, backend=backend)
    y0 = np.einsum("btdn,btn->btd", h, C)
    if D is not None:
        y0 = y0 + D * u
    y = y0 if z is None else y0 * silu(z)
    cache = SelectiveScanCache(**common, pre=pre, dt=dt, a=a, h=h, h0=h0, y0=y0,
                               scan_cache=scan_cache)
    return y, h[:, -1].copy(), cache




def backward(cache: SelectiveScanCache, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` (equations in the module docstring).

    Args:
        cache: from :func:`forward`.
        dy: ``(B, T, D)`` ∂L/∂y (``None`` means zeros).
        dstate: ``(B, D, N)`` ∂L/∂h_T through the returned final state
            (``None`` means zeros).

    Returns:
        ``{"u", "delta", "A", "B", "C", "initial_state"}`` plus ``"D"``, ``"z"``,
        ``"delta_bias"`` for those given to the forward, each shaped like it.
    """
    c = V.cache("ops.selective_scan", cache, SelectiveScanCache)
    dtype = c.u.dtype
    dy = V.grad_like("dy", dy, V.zeros_view(c.u, c.u.shape, dtype), "y", fill=True)
    dstate = V.grad_state("dstate", dstate,
                          V.zeros_view(c.u, (c.u.shape[0],) + c.A.shape, dtype), fill=True)
    if c.kernel is not None:  # made by a backend's kernel (numba's "chunked" ran the code below)
        return _backend.kernels("selective_scan", c.backend).backward(c.kernel, dy, dstate)
    grads = {}
    # through the gate y = y0 ⊙ silu(z)
    if c.z is not None:
        dy0 = dy * silu(c.z)
        grads["z"] = dy * c.y0 * silu_grad(c.z)
    else:
        dy0 = dy
    # through y0 = Σ_n h C + D ⊙ u
    dh = dy0[..., None] * c.C[:, :, None, :]                      # (B, T, D, N)
    grads["C"] = np.einsum("btd,btdn->btn", dy0, c.h)
    du = np.zeros(c.u.shape, dtype)
    if c.D is not None:
        grads["D"] = np.sum(dy0 * c.u, axis=(0, 1))
        du += c.D * dy0
    # through the scan h_t = ā_t ⊙ h_{t−1} + b̄_t: g = d b̄, dlog ā = dā ⊙ ā, dh0
    if c.method == "recurrent":
        g, da, dh0 = _recurrent_backward(c.a, c.h, c.h0, dh, dstate)
        dlog_a = da * c.a
    else:
        sg = linear.backward(c.scan_cache, dh, dstate)
        g, dlog_a, dh0 = sg["b"], sg["log_a"], sg["initial_state"]
    grads["initial_state"] = dh0
    # through log ā = Δ ⊗ A
    grads["A"] = np.einsum("btdn,btd->dn", dlog_a, c.dt)
    # through b̄ = Δ ⊗ B ⊙ u
    gB = np.einsum("btdn,btn->btd", g, c.B)                       # Σ_n g ⊙ B
    ddt = np.einsum("btdn,dn->btd", dlog_a, c.A) + gB * c.u
    grads["B"] = np.einsum("btdn,btd->btn", g, c.dt * c.u)
    du += gB * c.dt
    grads["u"] = du
    # through Δ = softplus(delta + delta_bias)
    dpre = ddt * sigmoid(c.pre) if c.delta_softplus else ddt
    grads["delta"] = dpre
    if c.has_delta_bias:
        grads["delta_bias"] = np.sum(dpre, axis=(0, 1))
    order = ("u", "delta", "A", "B", "C") + _OPTIONAL + ("initial_state",)
    return {k: grads[k] for k in order if k in grads}
