"""Linear Recurrent Unit (LRU), Orvieto et al. 2023, "Resurrecting Recurrent
Neural Networks for Long Sequences".

Dimension key: B batch, T time, D input (= output) size, N state size.

Parameters (all real): ``nu_log, theta_log, gamma_log (N,)``,
``B_re, B_im (N, D)``, ``C_re, C_im (D, N)``, ``D (D,)``.

    λ   = exp(−exp(nu_log) + i·exp(theta_log))          (N,)  complex, |λ| < 1
    γ   = exp(gamma_log)                                 (N,)  input normalisation
    B   = B_re + i·B_im  (N, D),   C = C_re + i·C_im  (D, N)
    u_t = γ ⊙ (x_t B^T)                                  (B, N) complex
    h_t = λ ⊙ h_{t−1} + u_t                              (B, N) complex state
    y_t = Re(h_t C^T) + D ⊙ x_t                          (B, D) real output

The state is complex: complex64 for float32 parameters, complex128 for
float64. The recurrence ``h_t = λ ⊙ h_{t−1} + u_t`` is the diagonal affine scan
:func:`minirec.scan.linear.forward` with ``a_t = λ`` for every t, so every
method of that module is a method here. ``log`` is given ``log λ = z =
−exp(nu_log) + i·exp(theta_log)`` itself (as ``log_a``), so it runs even where
``|λ|`` underflows to 0 in float32.

Backward. Complex gradients follow PyTorch's convention
``g_z = ∂L/∂Re z + i·∂L/∂Im z``; for ``w = f(z)`` holomorphic,
``g_z = conj(f'(z)) ⊙ g_w``, and for a real leaf ``r`` entering a complex
expression, ``∂L/∂r = Re(conj(∂w/∂r) ⊙ g_w)``. With ``dy = ∂L/∂y_t``:

    dh_t      = dy_t conj(C)                              (B, T, N) into the scan
    dC        = Σ_{b,t} dy_t^T conj(h_t)                  dC_re = Re dC, dC_im = Im dC
    dD        = Σ_{b,t} dy_t ⊙ x_t
    g_t, dλ_t, dh0 = scan.linear.backward(dh, dstate)     g_t = ∂L/∂u_t,
                                                          dλ_t = g_t ⊙ conj(h_{t−1})
    dλ        = Σ_{b,t} dλ_t
    dz        = dλ ⊙ conj(λ)              (λ = exp(z), z = −exp(nu_log) + i·exp(theta_log);
                                           the log method's scan returns Σ dz_t itself)
    dnu_log   = −Re(dz) ⊙ exp(nu_log)     dtheta_log = Im(dz) ⊙ exp(theta_log)
    dγ        = Σ_{b,t} Re(g_t ⊙ conj(x_t B^T))           dgamma_log = dγ ⊙ γ
    dB        = Σ_{b,t} (γ ⊙ g_t)^T x_t                   dB_re = Re dB, dB_im = Im dB
    dx_t      = Re((γ ⊙ g_t) conj(B)) + D ⊙ dy_t
    dstate0   = dh0                                       (complex)

Initialisation (the paper's §3.2 "ring" initialisation): ``|λ|`` uniform on
the ring ``r_min ≤ |λ| ≤ r_max`` in area and the phase uniform in
``[0, max_phase]``:

    u1, u2 ~ U(0, 1)
    nu    = −½ log(u1 (r_max² − r_min²) + r_min²)        |λ| = exp(−nu)
    theta = max_phase · u2
    γ     = sqrt(1 − |λ|²)                               (keeps E|h|² ≈ E|x B^T|²)
    B ~ CN(0, 1/D)  i.e. B_re, B_im ~ N(0, 1/(2D));   C ~ CN(0, 1/N);   D ~ N(0, 1)

The projections ``x B^T``, ``h C^T`` and the backward's weight gradients
cast their real operand to complex first, so that each is one complex BLAS
call (NumPy's matmul of a real array with a complex one does not reach BLAS;
~6x slower), with every backend.

Backends. Other backends run the same equations: the projections are GEMMs
here (cuBLAS through CuPy for ``"cupy"``), the scan one fused kernel per
direction that forms ``γ ⊙ Bx_t`` inside the scan and, backward, ``γ ⊙ g``,
``Σ_t g_t conj(h_{t−1})`` and ``Σ_t Re(g_t conj(Bx_t))`` in the same reverse
pass (``_backend.kernels("lru", backend)``: :mod:`minirec.kernels.numba.lru`,
:mod:`minirec.kernels.cuda.lru`; methods ``recurrent`` and ``chunked``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.scan import linear

METHODS = linear.METHODS
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# fused scan kernels (kernels/numba/diagonal.py, kernels/cuda/diagonal.cu), GEMMs around them
BACKEND_METHODS = {"numba": ("recurrent", "chunked"), "cupy": ("recurrent", "chunked"),
                   "cuda-emulated": ("recurrent", "chunked")}
PARAM_SHAPES = {"nu_log": ("N",), "theta_log": ("N",), "gamma_log": ("N",),
                "B_re": ("N", "D"), "B_im": ("N", "D"), "C_re": ("D", "N"),
                "C_im": ("D", "N"), "D": ("D",)}


class LRUCache(NamedTuple):
    """What :func:`backward` needs: ``x (B, T, D)``; ``Bx = x B^T (B, T, N)``;
    ``h (B, T, N)`` every state; ``scan``, the scan's
    :class:`~minirec.scan.linear.LinearScanCache` (``None`` on the other
    backends); ``param_shapes`` (``{name: shape}`` of the forward's params);
    ``h0 (B, N)`` the initial state (as given, or zeros); ``backend``;
    ``kernel``, the kernel module's cache (``None`` for NumPy)."""

    x: np.ndarray
    Bx: np.ndarray
    h: np.ndarray
    scan: linear.LinearScanCache | None
    param_shapes: dict
    h0: np.ndarray
    backend: str
    kernel: Any


class LRUStepCache(NamedTuple):
    """One step's cache: ``params``, ``x_t (B, D)``, ``h_prev``, ``h`` and
    ``Bx = x_t B^T`` (each ``(B, N)`` complex)."""

    params: dict
    x_t: np.ndarray
    h_prev: np.ndarray
    h: np.ndarray
    Bx: np.ndarray


def init_params(rng: np.random.Generator, input_size: int, state_size: int,
                dtype=np.float64, r_min: float = 0.0, r_max: float = 1.0,
                max_phase: float = 2 * np.pi) -> dict[str, np.ndarray]:
    """The paper's ring initialisation (see the module docstring).

    Args:
        rng: random generator.
        input_size: ``D`` (the output has the same size).
        state_size: ``N``, the number of complex eigenvalues.
        dtype: float32 or float64 (the state is then complex64/complex128).
        r_min: inner radius of the ring holding ``|λ|`` (``0 ≤ r_min < r_max``).
        r_max: outer radius of that ring (``r_max ≤ 1``).
        max_phase: the phases ``arg λ`` are uniform in ``[0, max_phase]``.

    Returns:
        ``{"nu_log", "theta_log", "gamma_log" (N,), "B_re", "B_im" (N, D),
        "C_re", "C_im" (D, N), "D" (D,)}`` in ``dtype``.
    """
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(f"r_min, r_max: expected 0 <= r_min < r_max <= 1, "
                         f"got r_min={r_min!r}, r_max={r_max!r}")
    if not max_phase > 0:
        raise ValueError(f"max_phase: expected a positive angle, got {max_phase!r}")
    D, N = V.positive_int("input_size", input_size), V.positive_int("state_size", state_size)
    u1 = rng.uniform(size=N)
    u2 = rng.uniform(size=N)
    nu = -0.5 * np.log(u1 * (r_max**2 - r_min**2) + r_min**2)
    theta = max_phase * u2
    modulus = np.exp(-nu)
    gamma = np.sqrt(1.0 - modulus**2)
    params = {
        "nu_log": np.log(nu),
        "theta_log": np.log(theta),
        "gamma_log": np.log(gamma),
        "B_re": rng.standard_normal((N, D)) / np.sqrt(2 * D),
        "B_im": rng.standard_normal((N, D)) / np.sqrt(2 * D),
        "C_re": rng.standard_normal((D, N)) / np.sqrt(2 * N),
        "C_im": rng.standard_normal((D, N)) / np.sqrt(2 * N),
        "D": rng.standard_normal(D),
    }
    return {k: v.astype(dtype) for k, v in params.items()}


def eigenvalues(params: dict) -> np.ndarray:
    """``λ = exp(−exp(nu_log) + i·exp(theta_log))`` ``(N,)``, complex."""
    return np.exp(_log_eigenvalues(params))


def _log_eigenvalues(params):
    """``log λ = −exp(nu_log) + i·exp(theta_log)`` ``(N,)``, complex."""
    nu_log, theta_log = params["nu_log"], params["theta_log"]
    return (-np.exp(nu_log) + 1j * np.exp(theta_log)).astype(V.complex_dtype(nu_log.dtype))


def zero_state(params: dict, batch_size: int, dtype=None) -> np.ndarray:
    """``h_{-1} = 0`` of shape ``(B, N)``, complex."""
    dtype = V.complex_dtype(dtype or params["nu_log"].dtype)
    nu_log = params["nu_log"]
    return _backend.xp_of(nu_log).zeros((batch_size, nu_log.shape[0]), dtype)


def _complex_params(params, cdtype):
    lam = eigenvalues(params).astype(cdtype)
    gamma = np.exp(params["gamma_log"])
    B = (params["B_re"] + 1j * params["B_im"]).astype(cdtype)
    C = (params["C_re"] + 1j * params["C_im"]).astype(cdtype)
    return lam, gamma, B, C


def _param_grads(params, gamma, dz, dgamma, dB, dC, dD):
    """Back from (z = log λ, γ, B, C, D) to the real parameters."""
    dtype = params["nu_log"].dtype
    grads = {
        "nu_log": -dz.real * np.exp(params["nu_log"]),
        "theta_log": dz.imag * np.exp(params["theta_log"]),
        "gamma_log": dgamma * gamma,
        "B_re": dB.real, "B_im": dB.imag,
        "C_re": dC.real, "C_im": dC.imag,
        "D": dD,
    }
    xp = _backend.xp_of(params["nu_log"])
    return {k: xp.ascontiguousarray(v, dtype=dtype) for k, v in grads.items()}


# ---------------------------------------------------------------------------
# one step
# ---------------------------------------------------------------------------

def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray, LRUStepCache]:
    """One step, for streaming: ``h_t = λ ⊙ h_{t−1} + γ ⊙ (x_t B^T)``,
    ``y_t = Re(h_t C^T) + D ⊙ x_t``.

    Unlike the classic cells the output ``y_t`` is not the state, so the step
    returns both: ``x_t (B, D)``, ``h_prev (B, N)`` complex →
    ``y_t (B, D)``, ``h_t (B, N)`` and an :class:`LRUStepCache`.
    """
    cdtype = V.complex_dtype(np.result_type(x_t, params["nu_log"]))
    lam, gamma, B, C = _complex_params(params, cdtype)
    Bx = x_t.astype(cdtype) @ B.T
    h = lam * h_prev + gamma * Bx
    y = (h @ C.T).real + params["D"] * x_t
    return y, h, LRUStepCache(params, x_t, h_prev, h, Bx)


def step_backward(dy_t: np.ndarray | None, dh_t: np.ndarray | None, cache_t: LRUStepCache,
                  ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Back through one step: ``dy_t (B, D)`` and ``dh_t (B, N)`` (either may be
    ``None``) → ``dx_t (B, D)``, ``dh_prev (B, N)`` and the step's parameter
    gradients (the module docstring's equations with T = 1)."""
    c = cache_t
    cdtype = c.h.dtype
    lam, gamma, B, C = _complex_params(c.params, cdtype)
    dy_t = np.zeros(c.x_t.shape, c.x_t.dtype) if dy_t is None else dy_t
    g = dy_t.astype(cdtype) @ np.conj(C)                       # y = Re(h C^T)
    if dh_t is not None:
        g = g + dh_t
    gg = gamma * g                                             # u = γ ⊙ Bx
    dparams = _param_grads(
        c.params, gamma,
        dz=np.sum(g * np.conj(c.h_prev), axis=0) * np.conj(lam),   # through λ = exp(z)
        dgamma=np.sum((g * np.conj(c.Bx)).real, axis=0),
        dB=gg.T @ c.x_t.astype(cdtype),
        dC=dy_t.astype(cdtype).T @ np.conj(c.h),
        dD=np.sum(dy_t * c.x_t, axis=0),
    )
    dx = (gg @ np.conj(B)).real + c.params["D"] * dy_t
    return dx.astype(c.x_t.dtype), g * np.conj(lam), dparams


# ---------------------------------------------------------------------------
# the sequence
# ---------------------------------------------------------------------------

def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, LRUCache]:
    """Run the LRU over ``x (B, T, D)`` from ``state0 (B, N)`` (complex; zeros if ``None``).

    The recurrence is :func:`minirec.scan.linear.forward` with ``a = λ``
    broadcast over ``(B, T, N)`` (``log_a = log λ`` for ``method="log"``) and
    ``b = γ ⊙ (x B^T)``; ``method``, ``chunk_size`` and ``backend`` are passed
    through.

    Returns:
        ``y (B, T, D)`` real, the final state ``h_T (B, N)`` complex, and an
        :class:`LRUCache` for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="cells.lru", method=method,
                     backend_methods=BACKEND_METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    dtype = V.cell_inputs("lru", params, PARAM_SHAPES, x, state0, ("B", "N"),
                          complex_state=True)[0]
    cdtype = V.complex_dtype(dtype)
    lam, gamma, B, C = _complex_params(params, cdtype)
    Bx = x.astype(cdtype) @ B.T                     # (B, T, N)
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    scan_cache = kernel = None
    if backend != "numpy":  # γ ⊙ Bx and the scan fused (kernels/{numba,cuda}/lru)
        h, h_T, kernel = _backend.kernels("lru", backend).forward(
            lam, gamma, Bx, h0, method=method, chunk_size=chunk_size)
    else:
        u = gamma * Bx
        if method == "log":  # the scan takes log λ itself: λ may underflow, log λ does not
            a, log_a = None, np.broadcast_to(_log_eigenvalues(params).astype(cdtype), u.shape)
        else:
            a, log_a = np.broadcast_to(lam, u.shape), None
        h, h_T, scan_cache = linear.forward(a, u, h0, log_a=log_a, method=method,
                                            chunk_size=chunk_size, backend=backend)
    y = (h @ C.T).real + params["D"] * x
    return (y.astype(dtype, copy=False), h_T,
            LRUCache(x, Bx, h, scan_cache, V.param_shapes(params), h0, backend, kernel))


def backward(params: dict, cache: LRUCache, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Hand backward (module docstring) with the reverse scan of the forward's method.

    Args:
        params: as given to :func:`forward`.
        cache: from :func:`forward`.
        dy: ``(B, T, D)`` real ∂L/∂y, or ``None``.
        dstate: ``(B, N)`` ∂L/∂h_T (complex convention), or ``None``.

    Returns:
        Every parameter's gradient (real, the parameters' shapes and dtype),
        ``"x" (B, T, D)`` and ``"state0" (B, N)`` (complex, or real if the
        given ``state0`` was real).
    """
    V.cache("cells.lru.backward", cache, LRUCache)
    V.params_match("cells.lru.backward", params, cache.param_shapes)
    x, Bx, h = cache.x, cache.Bx, cache.h
    dy = V.grad_like("dy", dy, x, "y", fill=True)
    dstate = V.grad_state("dstate", dstate, h[:, -1], fill=True)
    cdtype = h.dtype
    lam, gamma, B, C = _complex_params(params, cdtype)
    dyc, xc = dy.astype(cdtype), x.astype(cdtype)   # complex: one BLAS call per product
    dh = dyc @ C.conj()                             # through y = Re(h C^T) + D ⊙ x
    if cache.backend != "numpy":                    # the reverse scan and its sums fused
        gg, dlam, dgamma, dh0 = _backend.kernels("lru", cache.backend).backward(
            cache.kernel, dh, dstate)
        dz = dlam * lam.conj()                      # through λ = exp(z)
        if cache.h0.dtype.kind != "c":              # a real state0 gets a real gradient
            dh0 = dh0.real.copy()
    else:
        sg = linear.backward(cache.scan, dh, dstate)  # through h_t = λ ⊙ h_{t−1} + u_t
        g = sg["b"]
        gg = gamma * g
        dz = (np.sum(sg["a"], axis=(0, 1)) * np.conj(lam) if "a" in sg  # through λ = exp(z)
              else np.sum(sg["log_a"], axis=(0, 1)))                    # the scan took z
        dgamma = np.sum((g * np.conj(Bx)).real, axis=(0, 1))
        dh0 = sg["initial_state"]
    grads = _param_grads(
        params, gamma, dz=dz, dgamma=dgamma,
        dB=gg.reshape(-1, gg.shape[-1]).T @ xc.reshape(-1, x.shape[-1]),
        dC=dyc.reshape(-1, dy.shape[-1]).T @ h.conj().reshape(-1, h.shape[-1]),
        dD=(dy * x).sum(axis=(0, 1)),
    )
    grads["x"] = ((gg @ B.conj()).real + params["D"] * dy).astype(x.dtype, copy=False)
    grads["state0"] = dh0
    return grads
