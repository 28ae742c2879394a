"""Diagonal state-space layer: LSSL / S4D (Gu et al. 2021, 2022), one
single-input single-output SSM per channel.

Dimension key: B batch, T time, D channels (input = output size), N state
size per channel (complex; the conjugate half is implied by the ``2·Re``).

Parameters (all real): ``log_dt (D,)``, ``A_re_log, A_im (D, N)``,
``B_re, B_im, C_re, C_im (D, N)``, ``D (D,)``.

The continuous system ``h'(s) = A h(s) + B x(s)``, ``y = 2·Re(C h) + D x``
with

    Δ = exp(log_dt)                   (D,)   step size per channel
    A = −exp(A_re_log) + i·A_im       (D, N) stable: Re A < 0
    B = B_re + i·B_im,  C = C_re + i·C_im

is discretised with step Δ (``z = Δ A``):

    "zoh"       Ā = exp(z)                          B̄ = (Ā − 1)/A · B = expm1(z)/A · B
    "bilinear"  Ā = (1 + z/2)/(1 − z/2)             B̄ = Δ/(1 − z/2) · B

and run as the recurrence (state ``(B, D, N)`` complex)

    h_t = Ā ⊙ h_{t−1} + B̄ ⊙ x_t                     (x_t broadcast over N)
    y_t = 2·Re(Σ_n C ⊙ h_t) + D ⊙ x_t               (B, D) real

which is :func:`minirec.scan.linear.forward` with ``a = Ā`` broadcast over
``(B, T, D, N)`` and ``b_t = B̄ x_t``: every method of that module is a method
here (with ZOH, ``log`` is given ``log Ā = z`` itself, as ``log_a``, so it runs
where ``Ā`` underflows). Unrolling it gives the third view, a causal convolution (``"conv"``):

    y_t = Σ_{j≤t} K_j ⊙ x_{t−j} + D ⊙ x_t + 2·Re(Σ_n C Ā^{t+1} h0)
    K_j = 2·Re(Σ_n C ⊙ Ā^j ⊙ B̄)                       (D, T) the SSM kernel
    h_T = Ā^T h0 + B̄ ⊙ Σ_j Ā^{T−1−j} x_j            (the returned final state)

with the convolution done by FFT: ``rfft`` of ``x`` and ``K`` zero-padded to
``n ≥ 2T`` (a power of two), multiplied, ``irfft``, first T entries kept (the
padding makes the circular convolution a linear one).

NaN and inf. An FFT mixes every time step into every frequency, so one NaN in
``x`` would reach the outputs *before* it. The conv method therefore sets the
non-finite entries of ``x`` (and, in the backward, of ``dy``) to 0 before each
FFT and marks afterwards, as NaN, exactly the entries that the sums above take
them into: ``y_t`` for every ``t`` at or after a non-finite ``x`` (causal, as
in the recurrence), ``dx_j`` for every ``j`` at or before a non-finite ``dy``
(the backward runs back in time) and ``dK_m`` wherever ``Σ_t dy_t x_{t−m}``
meets one. The other terms (the skip ``D x``, the initial state, ``h_T``) are
not FFTs and propagate them as they are. So the conv method has the
non-finite entries of the recurrence, forward and backward (their values are
NaN where the recurrence may give ±inf).

Backward. Complex gradients follow PyTorch, ``g_z = ∂L/∂Re z + i·∂L/∂Im z``;
for ``w = f(z)`` holomorphic ``g_z = conj(f'(z)) g_w``, and a real leaf ``r``
gets ``Re(conj(∂w/∂r) g_w)``. ``dy = ∂L/∂y``, ``dstate = ∂L/∂h_T``.

Scan methods (through the recurrence):

    dh_t   = 2 dy_t ⊙ conj(C)                          (B, T, D, N) into the scan
    g_t, dĀ_t, dh0 = scan.linear.backward(dh, dstate)  g_t = ∂L/∂(B̄ x_t)
    dĀ     = Σ_{b,t} dĀ_t                dB̄ = Σ_{b,t} g_t x_t
    dC     = 2 Σ_{b,t} dy_t conj(h_t)    dD = Σ_{b,t} dy_t x_t
    dx_t   = Re(Σ_n g_t ⊙ conj(B̄)) + D ⊙ dy_t

Conv method (its own backward; ``P_j = Ā^j``, j = 0 … T, the Vandermonde
powers; ``W = C ⊙ B̄``; sums over b implied for parameters):

    dx_j   = Σ_{t≥j} K_{t−j} dy_t + D dy_j + Re(Σ_n dstate conj(B̄ P_{T−1−j}))
             (the first sum a correlation: irfft(conj(rfft K) · rfft dy))
    dK_m   = Σ_t dy_t x_{t−m}             (a correlation: irfft(conj(rfft x) · rfft dy))
    through K_j = 2·Re(Σ_n W P_j):
        dW  = 2 Σ_j dK_j conj(P_j)        dĀ += 2 conj(W) Σ_j j dK_j conj(P_{j−1})
        dC += dW conj(B̄)                  dB̄ += dW conj(C)
    through the initial-state term 2·Re(Σ_n C P_{t+1} h0), with
    Q = Σ_t dy_t conj(P_{t+1}):
        dC += 2 Q conj(h0)                dh0 = 2 conj(C) Q
        dĀ += 2 conj(C h0) Σ_t (t+1) dy_t conj(P_t)
    through h_T = P_T h0 + B̄ S,  S = Σ_j P_{T−1−j} x_j:
        dh0 += conj(P_T) dstate           dB̄ += dstate conj(S)
        dĀ  += dstate conj(T P_{T−1} h0 + B̄ Σ_j (T−1−j) P_{T−2−j} x_j)

Both then go back through the discretisation to the parameters:

    "zoh"       g_z = conj(Ā) ⊙ (dĀ + dB̄ conj(B/A))
                dA  = Δ g_z − dB̄ conj(B̄/A)           dΔ = Σ_n Re(g_z conj(A))
                dB  = dB̄ conj(expm1(z)/A)
    "bilinear"  s = 1 − z/2,  g_z = dĀ conj(1/s²) + dB̄ conj(B̄/(2s))
                dA  = Δ g_z                           dΔ = Σ_n Re(g_z conj(A) + dB̄ conj(B/s))
                dB  = dB̄ conj(Δ/s)
    dA_re_log = −Re(dA) ⊙ exp(A_re_log)   dA_im = Im(dA)   dlog_dt = dΔ ⊙ Δ
    dB_re, dB_im = Re dB, Im dB           dC_re, dC_im = Re dC, Im dC

(ZOH's log method: the scan, given ``log Ā = z``, returns ``Σ dlog_a = conj(Ā) dĀ``,
the first term of ``g_z``, itself.)

Initialisations (``init_params``), all with ``B = 1``, ``C ~ CN(0, 1)``,
``D ~ N(0, 1)``, ``log Δ ~ U(log dt_min, log dt_max)``, the same A in every
channel. The S4D paper counts the state size with the conjugates,
``N_paper = 2N``; written with it (n = 0 … N−1 indexes the stored modes):

    "s4d-lin"  A_n = −1/2 + iπn
    "s4d-inv"  A_n = −1/2 + i (N_paper/π)(N_paper/(2n+1) − 1)     (all Im A_n > 0)
    "legs"     the eigenvalues of the normal part of HiPPO-LegS: with
               A_LegS[n, k] = −sqrt(2n+1) sqrt(2k+1) (n > k), −(n+1) (n = k), 0 (n < k)
               and P_n = sqrt(n + 1/2), S = A_LegS + P P^T is −1/2 on the diagonal
               plus a skew-symmetric part, so its eigenvalues are −1/2 + iω;
               of the 2N eigenvalues of the size-2N matrix keep the N with ω > 0.

Backends. The discretisation stays array code on ``(D, N)``; on the other
backends one fused kernel per direction forms ``B̄ x_t`` inside the scan and
sums the read-out ``2 Re(Σ_n C h_t) + D x_t`` over the modes, and backward
forms ``dh = 2 dy conj(C)``, ``dx`` and the sums of ``dĀ``, ``dB̄``, ``dC`` over
time in the same reverse pass (``_backend.kernels("ssm", backend)``:
:mod:`minirec.kernels.numba.ssm`, the complex arithmetic in real and imaginary
parts; :mod:`minirec.kernels.cuda.ssm`, ``N ≤ 1024``; methods ``recurrent`` and
``chunked``). ``conv`` is FFT work and stays NumPy-only.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.scan import linear

METHODS = linear.METHODS + ("conv",)
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# fused scan + read-out kernels (kernels/numba/diagonal.py, kernels/cuda/diagonal.cu)
BACKEND_METHODS = {"numba": ("recurrent", "chunked"), "cupy": ("recurrent", "chunked"),
                   "cuda-emulated": ("recurrent", "chunked")}
DISCRETIZATIONS = ("zoh", "bilinear")
INITS = ("s4d-lin", "s4d-inv", "legs")
PARAM_SHAPES = {"log_dt": ("D",), "A_re_log": ("D", "N"), "A_im": ("D", "N"),
                "B_re": ("D", "N"), "B_im": ("D", "N"), "C_re": ("D", "N"),
                "C_im": ("D", "N"), "D": ("D",)}


class ConvCache(NamedTuple):
    """What the conv method's backward needs (module docstring's names):
    ``P (D, N, T+1)`` the powers ``Ā^j``; ``W = C ⊙ B̄ (D, N)``; ``K (D, T)``;
    ``Xf (B, F, D)`` and ``Kf (D, F)`` the FFTs of ``x`` (non-finite entries
    zeroed) and ``K``; ``S (B, D, N)`` = ``Σ_j Ā^{T−1−j} x_j``; ``n`` the FFT
    size; ``x_bad (B, T, D)`` where ``x`` is not finite (``None`` if nowhere)."""

    P: np.ndarray
    W: np.ndarray
    K: np.ndarray
    Xf: np.ndarray
    Kf: np.ndarray
    S: np.ndarray
    n: int
    x_bad: np.ndarray | None


class SSMCache(NamedTuple):
    """What :func:`backward` needs: ``x (B, T, D)``; ``h0 (B, D, N)``;
    ``discretization``; ``method``; ``param_shapes`` (``{name: shape}`` of the
    forward's params); for the scan methods ``h (B, T, D, N)`` and ``scan``
    (the :class:`~minirec.scan.linear.LinearScanCache`), for ``conv`` the
    :class:`ConvCache` ``conv``; ``backend``; on the other backends ``kernel``,
    the fused kernel's cache, in place of ``h`` and ``scan`` (the fields a
    path does not use are ``None``)."""

    x: np.ndarray
    h0: np.ndarray
    discretization: str
    method: str
    param_shapes: dict
    h: np.ndarray | None
    scan: linear.LinearScanCache | None
    conv: ConvCache | None
    backend: str
    kernel: Any


class SSMStepCache(NamedTuple):
    """One step's cache: ``params``, ``discretization``, ``x_t (B, D)``,
    ``h_prev`` and ``h`` (``(B, D, N)`` complex)."""

    params: dict
    discretization: str
    x_t: np.ndarray
    h_prev: np.ndarray
    h: np.ndarray


# ---------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------

def legs_normal_eigenvalues(state_size: int) -> np.ndarray:
    """The ``N`` eigenvalues with positive imaginary part of the normal part of
    the size-``2N`` HiPPO-LegS matrix, sorted by imaginary part.

    ``A_LegS[n, k] = −sqrt((2n+1)(2k+1))`` below the diagonal, ``−(n+1)`` on it,
    0 above; ``P_n = sqrt(n + 1/2)``; ``S = A_LegS + P P^T`` (−1/2 on the
    diagonal, skew-symmetric off it), so every eigenvalue has real part −1/2.
    """
    M = 2 * V.positive_int("state_size", state_size)
    n = np.arange(M)
    q = np.sqrt(2 * n + 1.0)
    A = np.tril(-np.outer(q, q), -1) - np.diag(n + 1.0)
    P = np.sqrt(n + 0.5)
    S = A + np.outer(P, P)
    w = np.linalg.eigvals(S)
    w = w[w.imag > 0]
    return w[np.argsort(w.imag)]


def init_params(rng: np.random.Generator, input_size: int, state_size: int,
                dtype=np.float64, init: str = "s4d-lin", dt_min: float = 1e-3,
                dt_max: float = 1e-1) -> dict[str, np.ndarray]:
    """S4D initialisations (module docstring).

    Args:
        rng: random generator (``log_dt``, ``C``, ``D``).
        input_size: ``D`` channels.
        state_size: ``N`` complex states per channel.
        dtype: float32 or float64.
        init: ``"s4d-lin"``, ``"s4d-inv"`` or ``"legs"``.
        dt_min: smallest ``Δ``; ``Δ`` is log-uniform in ``[dt_min, dt_max]``.
        dt_max: largest ``Δ``.

    Returns:
        ``{"log_dt" (D,), "A_re_log", "A_im", "B_re", "B_im", "C_re", "C_im"
        (D, N), "D" (D,)}`` in ``dtype``.
    """
    V.choice("init", init, INITS)
    D, N = V.positive_int("input_size", input_size), V.positive_int("state_size", state_size)
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"dt_min, dt_max: expected 0 < dt_min <= dt_max, "
                         f"got dt_min={dt_min!r}, dt_max={dt_max!r}")
    n = np.arange(N)
    if init == "s4d-lin":
        A = -0.5 + 1j * np.pi * n
    elif init == "s4d-inv":
        M = 2 * N  # the paper's state size, conjugate modes included
        A = -0.5 + 1j * (M / np.pi) * (M / (2 * n + 1) - 1)
    else:
        A = legs_normal_eigenvalues(N)
    A = np.broadcast_to(A, (D, N))
    params = {
        "log_dt": rng.uniform(np.log(dt_min), np.log(dt_max), D),
        "A_re_log": np.log(-A.real),
        "A_im": A.imag,
        "B_re": np.ones((D, N)),
        "B_im": np.zeros((D, N)),
        "C_re": rng.standard_normal((D, N)) * np.sqrt(0.5),
        "C_im": rng.standard_normal((D, N)) * np.sqrt(0.5),
        "D": rng.standard_normal(D),
    }
    return {k: np.array(v, dtype=dtype, order="C") for k, v in params.items()}


def zero_state(params: dict, batch_size: int, dtype=None) -> np.ndarray:
    """``h_{-1} = 0`` of shape ``(B, D, N)``, complex (a CuPy array when the params are)."""
    A_im = params["A_im"]
    return _backend.xp_of(A_im).zeros((batch_size,) + A_im.shape,
                                      V.complex_dtype(dtype or A_im.dtype))


# ---------------------------------------------------------------------------
# discretisation and its backward
# ---------------------------------------------------------------------------

def discretize(params: dict, discretization: str = "zoh") -> tuple[np.ndarray, np.ndarray]:
    """``(Ā, B̄)``, each ``(D, N)`` complex, by ``"zoh"`` or ``"bilinear"``."""
    V.choice("discretization", discretization, DISCRETIZATIONS)
    Abar, Bbar, _ = _discretize(params, discretization)
    return Abar, Bbar


def _readout(params):
    """``C = C_re + i·C_im (D, N)``."""
    return params["C_re"] + 1j * params["C_im"]


def _expm1(z):
    """``exp(z) − 1`` for complex ``z``: ``np.expm1``, and for a CuPy array NumPy's
    own formula ``expm1(x) cos y − 2 sin²(y/2) + i e^x sin y`` in real ufuncs
    (which CuPy has for every dtype)."""
    if isinstance(z, np.ndarray):
        return np.expm1(z)
    xp = _backend.xp_of(z)
    s = xp.sin(z.imag / 2)
    return (xp.expm1(z.real) * xp.cos(z.imag) - 2 * s * s) + 1j * (xp.exp(z.real) * xp.sin(z.imag))


def _discretize(params, discretization):
    dt = np.exp(params["log_dt"])[:, None]                       # (D, 1)
    A = -np.exp(params["A_re_log"]) + 1j * params["A_im"]         # (D, N)
    B = params["B_re"] + 1j * params["B_im"]
    z = dt * A
    if discretization == "zoh":
        Abar = np.exp(z)
        Bbar = _expm1(z) / A * B
    else:
        s = 1 - z / 2
        Abar = (1 + z / 2) / s
        Bbar = dt / s * B
    return Abar, Bbar, (dt, A, B, z)


def _param_grads(params, discretization, aux, Abar, Bbar, dAbar, dBbar, dC, dD, dz=None):
    """Back through the discretisation to the real parameters (module docstring).
    ``dz``: ∂L/∂z through ``Ā = exp(z)`` in place of ``dAbar``, when the scan was
    given ``log Ā = z`` (zoh, the log method)."""
    dt, A, B, z = aux
    if discretization == "zoh":
        if dz is None:
            gz = np.conj(Abar) * (dAbar + dBbar * np.conj(B / A))
        else:
            gz = dz + np.conj(Abar) * dBbar * np.conj(B / A)
        dA = dt * gz - dBbar * np.conj(Bbar / A)
        ddt = (gz * np.conj(A)).real.sum(axis=1)
        dB = dBbar * np.conj(_expm1(z) / A)
    else:
        s = 1 - z / 2
        gz = dAbar * np.conj(1 / s**2) + dBbar * np.conj(Bbar / (2 * s))
        dA = dt * gz
        ddt = (gz * np.conj(A) + dBbar * np.conj(B / s)).real.sum(axis=1)
        dB = dBbar * np.conj(dt / s)
    dtype = params["log_dt"].dtype
    grads = {
        "log_dt": ddt * dt[:, 0],
        "A_re_log": -dA.real * np.exp(params["A_re_log"]),
        "A_im": dA.imag,
        "B_re": dB.real, "B_im": dB.imag,
        "C_re": dC.real, "C_im": dC.imag,
        "D": dD,
    }
    xp = _backend.xp_of(params["log_dt"])
    return {k: xp.ascontiguousarray(v, dtype=dtype) for k, v in grads.items()}


# ---------------------------------------------------------------------------
# one step
# ---------------------------------------------------------------------------

def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray,
                 discretization: str = "zoh") -> tuple[np.ndarray, np.ndarray, SSMStepCache]:
    """One step, for streaming: ``h_t = Ā ⊙ h_{t−1} + B̄ x_t``,
    ``y_t = 2·Re(Σ_n C h_t) + D x_t``.

    The output is not the state, so the step returns both: ``x_t (B, D)``,
    ``h_prev (B, D, N)`` complex → ``y_t (B, D)``, ``h_t (B, D, N)`` and an
    :class:`SSMStepCache`.
    """
    V.choice("discretization", discretization, DISCRETIZATIONS)
    Abar, Bbar, aux = _discretize(params, discretization)
    h = Abar * h_prev + Bbar * x_t[..., None]
    y = 2 * np.sum(_readout(params) * h, axis=-1).real + params["D"] * x_t
    return y, h, SSMStepCache(params, discretization, x_t, h_prev, h)


def step_backward(dy_t: np.ndarray | None, dh_t: np.ndarray | None, cache_t: SSMStepCache,
                  ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Back through one step: ``dy_t (B, D)``, ``dh_t (B, D, N)`` (either may be
    ``None``) → ``dx_t (B, D)``, ``dh_prev (B, D, N)``, the step's parameter
    gradients."""
    c = cache_t
    Abar, Bbar, aux = _discretize(c.params, c.discretization)
    C = _readout(c.params)
    dy_t = np.zeros(c.x_t.shape, c.x_t.dtype) if dy_t is None else dy_t
    g = 2 * dy_t[..., None] * np.conj(C)                    # y = 2 Re(Σ_n C h)
    if dh_t is not None:
        g = g + dh_t
    dparams = _param_grads(
        c.params, c.discretization, aux, Abar, Bbar,
        dAbar=np.sum(g * np.conj(c.h_prev), axis=0),
        dBbar=np.sum(g * c.x_t[..., None], axis=0),
        dC=2 * np.sum(dy_t[..., None] * np.conj(c.h), axis=0),
        dD=np.sum(dy_t * c.x_t, axis=0),
    )
    dx = np.sum(g * np.conj(Bbar), axis=-1).real + c.params["D"] * dy_t
    return dx.astype(c.x_t.dtype), g * np.conj(Abar), dparams


# ---------------------------------------------------------------------------
# the sequence: scan methods and the convolution
# ---------------------------------------------------------------------------

def _fft_size(T: int) -> int:
    return 1 << (2 * T - 1).bit_length()  # a power of two >= 2T


def _powers(Abar, T):
    """Vandermonde powers ``P[d, n, j] = Ā^j``, j = 0 … T (cumulative products)."""
    P = np.empty(Abar.shape + (T + 1,), Abar.dtype)
    P[..., 0] = 1
    P[..., 1:] = np.cumprod(np.broadcast_to(Abar[..., None], Abar.shape + (T,)), axis=-1)
    return P


def kernel(params: dict, T: int, discretization: str = "zoh") -> np.ndarray:
    """The SSM convolution kernel ``K_j = 2·Re(Σ_n C Ā^j B̄)``, ``(D, T)``."""
    V.choice("discretization", discretization, DISCRETIZATIONS)
    Abar, Bbar, _ = _discretize(params, discretization)
    P = _powers(Abar, V.positive_int("T", T))
    return 2 * _state_sum(_readout(params) * Bbar, P[..., :T]).real


# per-channel contractions with the powers M (D, N, T'), as batched matmuls over d
def _state_sum(W, M):
    """``Σ_n W[d, n] M[d, n, t]`` → ``(D, T')``."""
    return (W[:, None, :] @ M)[:, 0]


def _time_sum(u, M):
    """``Σ_t u[d, t] M[d, n, t]`` → ``(D, N)``."""
    return (M @ u[..., None])[..., 0]


def _state_to_time(v, M):
    """``Σ_n v[b, d, n] M[d, n, t]`` → ``(B, T', D)``."""
    return (v.transpose(1, 0, 2) @ M).transpose(1, 2, 0)


def _time_to_state(u, M):
    """``Σ_t u[b, t, d] M[d, n, t]`` → ``(B, D, N)``."""
    return (M @ u.transpose(2, 1, 0)).transpose(2, 0, 1)


# non-finite entries around the FFTs (module docstring, "NaN and inf")
def _finite_part(u):
    """``(u with its non-finite entries set to 0, where they were)``; ``u`` itself
    and ``None`` when every entry is finite."""
    bad = ~np.isfinite(u)
    if not bad.any():
        return u, None
    return np.where(bad, 0, u), bad


def _reach(bad, reverse=False):
    """Along time (axis 1): at or after (``reverse``: at or before) a ``bad`` entry."""
    if reverse:
        return np.flip(np.logical_or.accumulate(np.flip(bad, axis=1), axis=1), axis=1)
    return np.logical_or.accumulate(bad, axis=1)


def _conv_forward(params, x, h0, Abar, Bbar, C):
    _, T, _ = x.shape
    n = _fft_size(T)
    P = _powers(Abar, T)                                            # (D, N, T+1)
    W = C * Bbar
    K = 2 * _state_sum(W, P[..., :T]).real                           # (D, T)
    x_fin, x_bad = _finite_part(x)
    Xf = np.fft.rfft(x_fin, n, axis=1)                              # (B, F, D)
    Kf = np.fft.rfft(K, n, axis=1)                                  # (D, F)
    y = np.fft.irfft(Xf * Kf.T, n, axis=1)[:, :T]
    if x_bad is not None:
        y[_reach(x_bad)] = np.nan                                   # y_t sees every x_{j≤t}
    y = y + params["D"] * x + 2 * _state_to_time(h0, C[..., None] * P[..., 1:]).real
    rev = T - 1 - np.arange(T)                                      # P_{T−1−j}
    S = _time_to_state(x, P[..., rev])
    h_T = P[..., T] * h0 + Bbar * S
    return y, h_T, ConvCache(P, W, K, Xf, Kf, S, n, x_bad)


def _conv_backward(params, x, h0, Abar, Bbar, C, c, dy, dstate):
    _, T, _ = x.shape
    P, W, S, n = c.P, c.W, c.S, c.n
    rdtype = x.dtype
    t1 = np.arange(1, T + 1, dtype=rdtype)                          # t + 1
    dy_fin, dy_bad = _finite_part(dy)
    dyf = np.fft.rfft(dy_fin, n, axis=1)
    # dx: correlation with K, the skip term, and the final state's x-path
    corr = np.fft.irfft(dyf * np.conj(c.Kf).T, n, axis=1)[:, :T]
    if dy_bad is not None:
        corr[_reach(dy_bad, reverse=True)] = np.nan                 # dx_j sees every dy_{t≥j}
    rev = T - 1 - np.arange(T)
    dx = corr + params["D"] * dy
    dx = dx + _state_to_time(dstate, np.conj(Bbar[..., None] * P[..., rev])).real
    # dK: correlation of x with dy, summed over the batch
    dK = np.fft.irfft(np.conj(c.Xf) * dyf, n, axis=1)[:, :T].sum(axis=0).T   # (D, T)
    if c.x_bad is not None or dy_bad is not None:
        # dK_m = Σ_t dy_t x_{t−m} meets x_j for m ≤ T−1−j and dy_t for m ≤ t
        bad = np.zeros(dy.shape, bool)
        if c.x_bad is not None:
            bad |= np.flip(_reach(c.x_bad), axis=1)
        if dy_bad is not None:
            bad |= _reach(dy_bad, reverse=True)
        dK[bad.any(axis=0).T] = np.nan
    # through K_j = 2 Re(Σ_n W P_j)
    dW = 2 * _time_sum(dK, np.conj(P[..., :T]))
    dAbar = 2 * np.conj(W) * _time_sum(dK[:, 1:] * t1[:T - 1], np.conj(P[..., :T - 1]))
    dC = dW * np.conj(Bbar)
    dBbar = dW * np.conj(C)
    # through the initial-state term 2 Re(Σ_n C P_{t+1} h0)
    Q = _time_to_state(dy, np.conj(P[..., 1:]))
    dC = dC + 2 * np.sum(Q * np.conj(h0), axis=0)
    dh0 = 2 * np.conj(C) * Q
    dAbar = dAbar + 2 * np.conj(C) * np.sum(
        np.conj(h0) * _time_to_state(dy * t1[:, None], np.conj(P[..., :T])), axis=0)
    # through h_T = P_T h0 + B̄ S
    dh0 = dh0 + np.conj(P[..., T]) * dstate
    dBbar = dBbar + np.sum(dstate * np.conj(S), axis=0)
    rev2 = T - 2 - np.arange(T - 1)                                 # P_{T−2−j}
    w = (T - 1 - np.arange(T - 1)).astype(rdtype)                   # T − 1 − j
    dS = _time_to_state(x[:, :T - 1] * w[:, None], P[..., rev2])
    dAbar = dAbar + np.sum(dstate * np.conj(T * P[..., T - 1] * h0 + Bbar * dS), axis=0)
    return dx, dh0, dAbar, dBbar, dC


def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            discretization: str = "zoh", method: str = "recurrent",
            chunk_size: int | None = None, backend: str = "numpy",
            ) -> tuple[np.ndarray, np.ndarray, SSMCache]:
    """Run the SSM over ``x (B, T, D)`` from ``state0 (B, D, N)`` (complex; zeros if ``None``).

    Args:
        params: from :func:`init_params`.
        x: ``(B, T, D)`` real input.
        state0: ``(B, D, N)`` initial state.
        discretization: ``"zoh"`` or ``"bilinear"``.
        method: a :func:`minirec.scan.linear.forward` method (passed through
            with ``chunk_size`` and ``backend``), or ``"conv"``: the FFT
            convolution with the kernel ``K`` (module docstring).
        chunk_size: for ``"chunked"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``y (B, T, D)`` real, the final state ``h_T (B, D, N)`` complex, and
        an :class:`SSMCache` for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="cells.ssm", method=method,
                     backend_methods=BACKEND_METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    V.choice("discretization", discretization, DISCRETIZATIONS)
    dtype = V.cell_inputs("ssm", params, PARAM_SHAPES, x, state0, ("B", "D", "N"),
                          complex_state=True)[0]
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    Abar, Bbar, aux = _discretize(params, discretization)
    C = _readout(params)
    h = scan_cache = conv_cache = kernel = None
    if method == "conv":
        y, h_T, conv_cache = _conv_forward(params, x, h0, Abar, Bbar, C)
    elif backend != "numpy":  # B̄ x, the scan and the read-out fused
        y, h_T, kernel = _backend.kernels("ssm", backend).forward(
            Abar, Bbar, C, params["D"], x, h0, method=method, chunk_size=chunk_size)
    else:
        b = Bbar * x[..., None]                                    # (B, T, D, N)
        if method == "log" and discretization == "zoh":  # log Ā = z itself: Ā may underflow
            z = aux[3]                                             # z = Δ A
            a, log_a = None, np.broadcast_to(z, b.shape)
        else:
            a, log_a = np.broadcast_to(Abar, b.shape), None
        h, h_T, scan_cache = linear.forward(a, b, h0, log_a=log_a, method=method,
                                            chunk_size=chunk_size, backend=backend)
        y = 2 * np.sum(h * C, axis=-1).real + params["D"] * x
    cache = SSMCache(x, h0, discretization, method, V.param_shapes(params), h, scan_cache,
                     conv_cache, backend, kernel)
    return y.astype(dtype, copy=False), h_T, cache


def backward(params: dict, cache: SSMCache, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Hand backward (module docstring) by the forward's own method.

    Args:
        params: as given to :func:`forward`.
        cache: from :func:`forward`.
        dy: ``(B, T, D)`` real ∂L/∂y, or ``None``.
        dstate: ``(B, D, N)`` ∂L/∂h_T (complex convention), or ``None``.

    Returns:
        Every parameter's gradient (real, the parameters' shapes and dtype),
        ``"x" (B, T, D)`` and ``"state0" (B, D, N)`` (complex, or real if the
        given ``state0`` was real).
    """
    V.cache("cells.ssm.backward", cache, SSMCache)
    V.params_match("cells.ssm.backward", params, cache.param_shapes)
    x, h0, disc = cache.x, cache.h0, cache.discretization
    cdtype = V.complex_dtype(x.dtype)
    dy = V.grad_like("dy", dy, x, "y", fill=True)
    # the returned state is complex, also when state0 was real
    dstate = V.grad_state("dstate", dstate, _backend.xp_of(h0).empty(h0.shape, cdtype),
                          fill=True)
    Abar, Bbar, aux = _discretize(params, disc)
    C = _readout(params)
    dz = None
    if cache.method == "conv":
        dx, dh0, dAbar, dBbar, dC = _conv_backward(params, x, h0, Abar, Bbar, C,
                                                    cache.conv, dy, dstate)
    elif cache.backend != "numpy":  # the reverse scan, dx and the sums fused
        dx, dh0, dAbar, dBbar, dC = _backend.kernels("ssm", cache.backend).backward(
            cache.kernel, dy, dstate)
    else:
        dh = 2 * dy[..., None] * np.conj(C)                 # through y = 2 Re(Σ_n C h) + D x
        sg = linear.backward(cache.scan, dh, dstate)        # through h_t = Ā h_{t−1} + B̄ x_t
        g = sg["b"]
        dAbar = np.sum(sg["a"], axis=(0, 1)) if "a" in sg else None
        dz = np.sum(sg["log_a"], axis=(0, 1)) if "log_a" in sg else None
        dBbar = np.sum(g * x[..., None], axis=(0, 1))
        dC = 2 * np.sum(dy[..., None] * np.conj(cache.h), axis=(0, 1))
        dx = np.sum(g * np.conj(Bbar), axis=-1).real + params["D"] * dy
        dh0 = sg["initial_state"]
    grads = _param_grads(params, disc, aux, Abar, Bbar, dAbar, dBbar, dC,
                         dD=(dy * x).sum(axis=(0, 1)), dz=dz)
    grads["x"] = _backend.xp_of(dx).ascontiguousarray(dx, dtype=x.dtype)
    grads["state0"] = dh0.real.copy() if h0.dtype.kind != "c" else dh0
    return grads
