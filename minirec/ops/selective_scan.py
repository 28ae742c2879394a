"""Mamba-1's selective scan (Gu & Dao 2023, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces", Algorithm 2).

Dimension key: B batch, T time, D channels (Mamba's ``d_inner``), N state size.

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

Backward (``dy`` = ∂L/∂y, ``dh_T`` = ∂L/∂h_T through the returned state;
``g_t`` = ∂L/∂h_t, the total gradient reaching the state at step t;
``σ`` the logistic sigmoid):

    dy0_t   = dy_t ⊙ silu(z_t)
    dz_t    = dy_t ⊙ y0_t ⊙ σ(z_t) (1 + z_t (1 − σ(z_t)))
    g_{T−1} = dh_T + dy0_{T−1} ⊗ C_{T−1}
    g_t     = dy0_t ⊗ C_t + ā_{t+1} ⊙ g_{t+1}          (the reverse scan)
    dh0     = ā_0 ⊙ g_0                                  → "initial_state"
    dā_t    = g_t ⊙ h_{t−1}                              (h_{−1} = h0)
    dA      = Σ_{b,t} dā_t ⊙ ā_t ⊙ Δ_t                   (Δ_t broadcast over n)
    dΔ_t    = Σ_n (dā_t ⊙ ā_t ⊙ A + g_t ⊙ B_t u_t)
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
                   ``a = ā (B, T, D, N)``, ``b = b̄ (B, T, D, N)``; the backward
                   is :func:`minirec.scan.linear.backward` (the reverse scan of
                   the same method) on ``dh_t = dy0_t ⊗ C_t`` and ``dh_T``,
                   which gives ``g_t = d b̄_t``, ``dā_t`` and ``dh0``; the rest
                   of the equations above are shared. ``log`` works because
                   ``ā = exp(Δ A) > 0`` (it fails with a clear error only if
                   ``ā`` underflows to 0).

``backend="numba"`` (:data:`BACKEND_METHODS`): ``recurrent`` runs the fused
kernels of :mod:`minirec.kernels.numba.selective_scan` — per (batch row,
block of channels) the state ``h`` lives in a small local array, ``Δ``,
``exp(Δ A)``, the update, ``y0`` and the gate are computed in one pass over
time, and no ``(B, T, D, N)`` array is made. The forward keeps the state
entering every chunk of 32 steps (the cache's ``checkpoints``) and the fused
reverse loop recomputes each chunk's states from its checkpoint (memory
``T/32`` states instead of ``T``, for one extra multiply-add per element,
since ``ā`` is recomputed either way). ``chunked`` builds ``ā, b̄`` in NumPy
as above and runs :func:`minirec.scan.linear.forward`'s numba chunked kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.scan import linear

METHODS = ("recurrent",) + tuple(m for m in linear.METHODS if m != "recurrent")
BACKENDS = ("numpy", "numba")
# the methods each non-NumPy backend has kernels for (NumPy runs them all)
BACKEND_METHODS = {"numba": ("recurrent", "chunked")}


# ---------------------------------------------------------------------------
# numerically stable pointwise functions (also used by cells.mamba)
# ---------------------------------------------------------------------------

def sigmoid(x: np.ndarray) -> np.ndarray:
    """``σ(x) = 1 / (1 + e^{−x})`` without overflow: ``e^{−|x|}`` is always ≤ 1."""
    e = np.exp(-np.abs(x))
    r = 1 / (1 + e)
    return np.where(x >= 0, r, e * r)


def softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + e^x) = max(x, 0) + log1p(e^{−|x|})`` without overflow; ``d/dx = σ(x)``."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def silu(x: np.ndarray) -> np.ndarray:
    """``silu(x) = x σ(x)``."""
    return x * sigmoid(x)


def silu_grad(x: np.ndarray) -> np.ndarray:
    """``d silu/dx = σ(x) (1 + x (1 − σ(x)))``."""
    s = sigmoid(x)
    return s * (1 + x * (1 - s))


class SelectiveScanCache(NamedTuple):
    """What :func:`backward` needs.

    Fields: the forward's arrays ``u, A, B, C, D, z`` (``D``/``z`` may be
    ``None``); ``pre (B, T, D)`` = delta + delta_bias; ``Δ (B, T, D)`` (named
    ``dt``); ``a (B, T, D, N)`` = exp(Δ A); ``h (B, T, D, N)`` every state;
    ``h0 (B, D, N)``; ``y0 (B, T, D)`` the output before the gate;
    ``delta_softplus``; ``has_delta_bias``; ``method``; ``chunk_size``;
    ``backend``; ``scan_cache`` (the :mod:`minirec.scan.linear` cache for the
    parallel methods, ``None`` for ``recurrent``); ``checkpoints`` (numba
    ``recurrent`` only: ``(B, ⌈T/32⌉, D', N)`` the state entering every chunk
    of 32 steps, ``D'`` = D rounded up to the kernel's 32-channel blocks;
    there ``a`` and ``h`` are ``None``, the kernel recomputes them).
    """

    u: np.ndarray
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray | None
    z: np.ndarray | None
    pre: np.ndarray
    dt: np.ndarray
    a: np.ndarray
    h: np.ndarray
    h0: np.ndarray
    y0: np.ndarray
    delta_softplus: bool
    has_delta_bias: bool
    method: str
    chunk_size: int | None
    backend: str
    scan_cache: linear.LinearScanCache | None
    checkpoints: np.ndarray | None = None


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


def _recurrent_backward(a, h, h0, dh, dh_T):
    """The reverse loop: ``g_t = dh_t + a_{t+1} ⊙ g_{t+1}``; returns ``g`` (= d b̄),
    ``dā`` and ``dh0``."""
    T = h.shape[1]
    g = np.empty(h.shape, h.dtype)
    g_next = dh_T.copy()  # ∂L/∂h_{T−1} from the returned state, before step T−1's output
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
    s = V.Shapes()
    V.array("u", u, ndim=3, allow_complex=False)
    s.check("u", u, ("B", "T", "D"))
    if u.shape[1] < 1:
        raise ValueError(f"u: expected T >= 1 along axis 1, got shape {tuple(u.shape)}")
    V.array("delta", delta, ndim=3, allow_complex=False)
    s.check("delta", delta, ("B", "T", "D"))
    V.array("A", A, ndim=2, allow_complex=False)
    s.check("A", A, ("D", "N"))
    V.array("B", B, ndim=3, allow_complex=False)
    s.check("B", B, ("B", "T", "N"))
    V.array("C", C, ndim=3, allow_complex=False)
    s.check("C", C, ("B", "T", "N"))
    if D is not None:
        V.array("D", D, ndim=1, allow_complex=False)
        s.check("D", D, ("D",))
    if z is not None:
        V.array("z", z, ndim=3, allow_complex=False)
        s.check("z", z, ("B", "T", "D"))
    if delta_bias is not None:
        V.array("delta_bias", delta_bias, ndim=1, allow_complex=False)
        s.check("delta_bias", delta_bias, ("D",))
    if initial_state is not None:
        V.array("initial_state", initial_state, ndim=3, allow_complex=False)
        s.check("initial_state", initial_state, ("B", "D", "N"))
    return V.common_dtype(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias,
                          initial_state=initial_state)


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
    _backend.resolve(backend, BACKENDS, what="ops.selective_scan")
    _backend.check_method(method, backend, BACKEND_METHODS, what="ops.selective_scan")
    dtype = _check(u, delta, A, B, C, D, z, delta_bias, initial_state)
    chunk_size = V.positive_int("chunk_size", chunk_size, allow_none=True)
    Bsz, _, Dch = u.shape
    N = A.shape[1]
    h0 = np.zeros((Bsz, Dch, N), dtype) if initial_state is None else initial_state
    pre = delta if delta_bias is None else delta + delta_bias
    if backend == "numba" and method == "recurrent":
        kern = _backend.kernels("selective_scan", backend)
        pre = pre.astype(dtype, copy=False)
        y, y0, dt, h_T, ck = kern.forward(u.astype(dtype, copy=False), pre, A, B, C, D, z,
                                          delta_softplus, h0)
        cache = SelectiveScanCache(u, A, B, C, D, z, pre, dt, None, None, h0, y0,
                                   bool(delta_softplus), delta_bias is not None, method,
                                   chunk_size, backend, None, ck)
        return y, h_T, cache
    dt = softplus(pre) if delta_softplus else pre
    a = np.exp(dt[..., None] * A)                                # (B, T, D, N)
    b = (dt * u)[..., None] * B[:, :, None, :]                   # (B, T, D, N)
    if method == "recurrent":
        h = _recurrent_forward(a, b, h0)
        scan_cache = None
    else:
        h, _, scan_cache = linear.forward(a, b, h0, method=method, chunk_size=chunk_size,
                                          backend=backend)
    y0 = np.einsum("btdn,btn->btd", h, C)
    if D is not None:
        y0 = y0 + D * u
    y = y0 if z is None else y0 * silu(z)
    cache = SelectiveScanCache(u, A, B, C, D, z, pre, dt, a, h, h0, y0, bool(delta_softplus),
                               delta_bias is not None, method, chunk_size, backend, scan_cache)
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
    c = cache
    V.grad_like("dy", dy, c.y0, "y")
    V.grad_like("dstate", dstate, c.h0, "h_T")
    dtype = c.y0.dtype
    if dy is None:
        dy = np.zeros(c.y0.shape, dtype)
    if dstate is None:
        dstate = np.zeros(c.h0.shape, dtype)
    order = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
    if c.backend == "numba" and c.method == "recurrent":  # one fused reverse pass
        kern = _backend.kernels("selective_scan", "numba")
        grads = kern.backward(c.u, c.pre, c.dt, c.A, c.B, c.C, c.D, c.z, c.delta_softplus,
                              c.checkpoints, c.y0, dy, dstate)
        grads["delta"] = grads.pop("pre")
        if c.has_delta_bias:
            grads["delta_bias"] = np.sum(grads["delta"], axis=(0, 1))
        return {k: grads[k] for k in order if k in grads}
    grads = {}
    # through the gate y = y0 ⊙ silu(z)
    if c.z is not None:
        s = sigmoid(c.z)
        dy0 = dy * (c.z * s)                                     # silu(z) = z σ(z)
        grads["z"] = dy * c.y0 * (s * (1 + c.z * (1 - s)))       # silu'(z)
    else:
        dy0 = dy
    # through y0 = Σ_n h C + D ⊙ u
    dh = dy0[..., None] * c.C[:, :, None, :]                      # (B, T, D, N)
    grads["C"] = np.einsum("btd,btdn->btn", dy0, c.h)
    du = np.zeros(c.u.shape, dtype)
    if c.D is not None:
        grads["D"] = np.sum(dy0 * c.u, axis=(0, 1))
        du += c.D * dy0
    # through the scan h_t = ā_t ⊙ h_{t−1} + b̄_t: g = d b̄, dā, dh0
    if c.method == "recurrent":
        g, da, dh0 = _recurrent_backward(c.a, c.h, c.h0, dh, dstate)
    else:
        sg = linear.backward(c.scan_cache, dh, dstate)
        g, da, dh0 = sg["b"], sg["a"], sg["initial_state"]
    grads["initial_state"] = dh0
    # through ā = exp(Δ ⊗ A): d(ΔA) = dā ⊙ ā
    dlog_a = da * c.a
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
    return {k: grads[k] for k in order if k in grads}
