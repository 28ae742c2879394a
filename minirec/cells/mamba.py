"""The Mamba-1 block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces", §3.4 and Figure 3).

Dimension key: B batch, T time, M model width (``d_model``), I inner width
(``d_inner = expand · M``), N state size (``d_state``), K conv kernel
(``d_conv``), R the rank of the Δ projection (``dt_rank``).

Parameters (the names of the reference implementation's ``Mamba`` module with
``.`` written ``_``; the conv weight is stored ``(I, K)`` instead of
``(I, 1, K)``):

    in_proj_weight   (2I, M)        conv1d_weight (I, K)     conv1d_bias (I,)
    x_proj_weight    (R + 2N, I)    dt_proj_weight (I, R)    dt_proj_bias (I,)
    A_log            (I, N)         D (I,)                   out_proj_weight (M, I)

The block, for ``x (B, T, M)``:

    [xs, z]  = x W_in^T                        xs, z (B, T, I)    (in-projection)
    xp       = [conv_state0 ; xs]              (B, K−1+T, I)      (the last K−1 inputs first)
    xc_t     = Σ_k w[:, k] ⊙ xp_{t+k} + b_conv (B, T, I)          (causal depthwise conv1d)
    xa       = silu(xc)                                            (B, T, I)
    [δ, B, C] = xa W_x^T                       δ (B, T, R), B, C (B, T, N)
    delta    = δ W_dt^T                        (B, T, I)
    A        = −exp(A_log)                     (I, N)
    y_ssm    = selective_scan(u=xa, delta, A, B, C, D, z,
                              delta_bias=dt_proj_bias, delta_softplus=True)
             = (h_t · C_t + D ⊙ xa_t) ⊙ silu(z_t),  h_t = e^{Δ_t A} ⊙ h_{t−1} + Δ_t B_t xa_t,
               Δ_t = softplus(delta_t + dt_proj_bias)
    y        = y_ssm W_out^T                   (B, T, M)          (out-projection)

The state is the pair ``(conv_state (B, I, K−1), ssm_state (B, I, N))``: the
last K−1 conv inputs ``xs`` (channel-first, oldest first, as Mamba's own
``conv_state``) and the scan's ``h``. Zeros when ``state0=None``, so a
sequence run in two calls with the returned state equals one call.

Backward (``dy`` = ∂L/∂y, ``dstate = (dconv_T, dssm_T)`` = ∂L/∂ the returned
state; the scan's own backward is in :mod:`minirec.ops.selective_scan`):

    dW_out   = Σ_{b,t} dy_t^T y_ssm_t            dy_ssm = dy W_out
    du, ddelta, dA, dB, dC, dD, dz, ddt_bias, dssm_0 = selective_scan.backward(dy_ssm, dssm_T)
    dA_log   = dA ⊙ A                            (A = −exp(A_log))
    dW_dt    = Σ_{b,t} ddelta_t^T δ_t            dδ = ddelta W_dt
    dW_x     = Σ_{b,t} [dδ, dB, dC]_t^T xa_t     dxa = du + [dδ, dB, dC] W_x
    dxc      = dxa ⊙ σ(xc) (1 + xc (1 − σ(xc)))  (silu')
    db_conv  = Σ_{b,t} dxc_t                     dw[:, k] = Σ_{b,t} dxc_t ⊙ xp_{t+k}
    dxp_{t+k} += w[:, k] ⊙ dxc_t,  and dxp_{T..T+K−2} += dconv_T   (the returned state is xp's tail)
    dconv_0  = dxp_{0..K−2},       dxs = dxp_{K−1..}
    dW_in    = Σ_{b,t} [dxs, dz]_t^T x_t         dx = [dxs, dz] W_in

``forward(method=...)`` runs the selective scan with any of :data:`METHODS`
(the scan's), and ``backward`` goes back through the same algorithm.

``backend="numba"``, ``"cupy"`` and ``"cuda-emulated"`` (methods in
:data:`BACKEND_METHODS`) pass the backend to
:func:`minirec.ops.selective_scan.forward`, whose fused kernels run the scan,
its gate, ``D`` and softplus forward and backward; the projections stay array
GEMMs (the weight gradients one ``(P, B·T) @ (B·T, Q)`` GEMM each; cuBLAS for
CuPy arrays) and the causal conv a loop over the K taps, vectorised over time.
With ``backend="cupy"`` every array (params, ``x``, ``state0``) is a CuPy
array and stays on the GPU.

Streaming inference: :func:`step_forward` takes one token ``x_t (B, M)`` and the
state and returns ``(y_t (B, M), state_next, cache_t)``. Unlike an Elman cell,
Mamba's output is not its state, so the step pair is
``step_forward(params, x_t, state) -> (y_t, state, cache_t)`` and
``step_backward(dy_t, dstate_next, cache_t) -> (dx_t, dstate_prev, dparams)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec._math import sigmoid, silu, silu_grad, softplus
from minirec.ops import selective_scan

METHODS = selective_scan.METHODS
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# the methods each non-NumPy backend has kernels for (NumPy runs them all)
BACKEND_METHODS = selective_scan.BACKEND_METHODS
PARAM_SHAPES = {
    "in_proj_weight": ("I2", "M"),
    "conv1d_weight": ("I", "K"),
    "conv1d_bias": ("I",),
    "x_proj_weight": ("P", "I"),
    "dt_proj_weight": ("I", "R"),
    "dt_proj_bias": ("I",),
    "A_log": ("I", "N"),
    "D": ("I",),
    "out_proj_weight": ("M", "I"),
}


def init_params(rng: np.random.Generator, d_model: int, d_state: int = 16, dtype=np.float64,
                expand: int = 2, d_conv: int = 4, dt_rank: int | None = None,
                dt_min: float = 1e-3, dt_max: float = 1e-1,
                dt_init_floor: float = 1e-4) -> dict[str, np.ndarray]:
    """Mamba's initialisation.

    * ``A_log[i, n] = log(n + 1)``: S4D-real, ``A = −(1, 2, …, N)`` in every channel.
    * ``dt_proj_bias = softplus⁻¹(dt)`` with ``dt`` log-uniform in ``[dt_min, dt_max]``
      (floored at ``dt_init_floor``), so that ``Δ = softplus(bias)`` starts there;
      ``softplus⁻¹(y) = y + log(1 − e^{−y})``.
    * ``dt_proj_weight ~ U(−R^{−1/2}, R^{−1/2})``; ``D = 1``.
    * the other weights and the conv bias: PyTorch's default ``U(−1/√fan_in, 1/√fan_in)``
      (fan_in = M, I, K for in_proj, x_proj/out_proj, conv1d).

    ``dt_rank=None`` means ⌈M / 16⌉, ``d_inner = expand · d_model``.
    """
    M, N, K = int(d_model), int(d_state), int(d_conv)
    I = int(expand) * M
    R = math.ceil(M / 16) if dt_rank is None else int(dt_rank)
    for name, v in (("d_model", M), ("d_state", N), ("d_conv", K), ("expand", expand),
                    ("dt_rank", R)):
        V.positive_int(name, v)
    u = lambda k, shape: rng.uniform(-k, k, shape)
    dt = np.exp(rng.uniform(np.log(dt_min), np.log(dt_max), I))
    dt = np.maximum(dt, dt_init_floor)
    params = {
        "in_proj_weight": u(M ** -0.5, (2 * I, M)),
        "conv1d_weight": u(K ** -0.5, (I, K)),
        "conv1d_bias": u(K ** -0.5, (I,)),
        "x_proj_weight": u(I ** -0.5, (R + 2 * N, I)),
        "dt_proj_weight": u(R ** -0.5, (I, R)),
        "dt_proj_bias": dt + np.log(-np.expm1(-dt)),
        "A_log": np.log(np.tile(np.arange(1, N + 1, dtype=np.float64), (I, 1))),
        "D": np.ones(I),
        "out_proj_weight": u(I ** -0.5, (M, I)),
    }
    return {k: v.astype(dtype) for k, v in params.items()}


def sizes(params: dict) -> dict[str, int]:
    """``{"M", "I", "N", "K", "R"}`` read off the parameter shapes."""
    I, R = params["dt_proj_weight"].shape
    return {"M": params["out_proj_weight"].shape[0], "I": I, "N": params["A_log"].shape[1],
            "K": params["conv1d_weight"].shape[1], "R": R}


def zero_state(params: dict, batch_size: int, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """``(conv_state (B, I, K−1), ssm_state (B, I, N))`` of zeros."""
    s = sizes(params)
    dtype = dtype or params["A_log"].dtype
    return (np.zeros((batch_size, s["I"], s["K"] - 1), dtype),
            np.zeros((batch_size, s["I"], s["N"]), dtype))


class MambaStepCache(NamedTuple):
    """What :func:`step_backward` needs from one :func:`step_forward`.

    Fields (``(B, ·)`` arrays of one token): ``params``; ``x_t (B, M)``;
    ``z (B, I)`` the gate's pre-activation; ``window (B, I, K)`` the conv
    inputs ``[conv_state, xs_t]``; ``xc, xa (B, I)`` the conv output before and
    after silu; ``dt_low (B, R)``; ``Bt, Ct (B, N)``; ``pre, dt (B, I)`` Δ
    before and after softplus; ``A (I, N)``; ``a (B, I, N)`` = e^{Δ A};
    ``h_prev, h (B, I, N)`` the scan state before and after; ``y0 (B, I)``
    the scan output before the gate and ``y_ssm (B, I)`` after it.
    """

    params: dict
    x_t: np.ndarray
    z: np.ndarray
    window: np.ndarray
    xc: np.ndarray
    xa: np.ndarray
    dt_low: np.ndarray
    Bt: np.ndarray
    Ct: np.ndarray
    pre: np.ndarray
    dt: np.ndarray
    A: np.ndarray
    a: np.ndarray
    h_prev: np.ndarray
    h: np.ndarray
    y0: np.ndarray
    y_ssm: np.ndarray


class MambaCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`.

    Fields: ``x (B, T, M)``; ``xp (B, K−1+T, I)`` the conv inputs with the
    previous K−1 in front; ``xc, xa (B, T, I)`` the conv output before and
    after silu; ``dt_low (B, T, R)``; ``A (I, N)`` = −exp(A_log); ``y_ssm
    (B, T, I)`` the selective scan's output; ``scan`` its cache;
    ``state0 = (conv_state0, ssm_state0)`` (zeros where ``None`` was given);
    ``param_shapes`` (checked against the params given to the backward);
    ``method``, ``backend``.
    """

    x: np.ndarray
    xp: np.ndarray
    xc: np.ndarray
    xa: np.ndarray
    dt_low: np.ndarray
    A: np.ndarray
    y_ssm: np.ndarray
    scan: selective_scan.SelectiveScanCache
    state0: tuple[np.ndarray, np.ndarray]
    param_shapes: dict
    method: str
    backend: str


def _check(params, x, state0, x_ndim=3):
    shapes = V.Shapes()
    V.params("mamba", params, PARAM_SHAPES, shapes)
    for k, v in params.items():
        V.array(f"mamba: {k}", v, allow_complex=False)
    I, N, R = shapes["I"], shapes["N"], shapes["R"]
    if shapes["I2"] != 2 * I:
        raise ValueError(f"mamba: in_proj_weight: expected shape ({2 * I}, M) (2·d_inner rows "
                         f"for xs and z), got {params['in_proj_weight'].shape}")
    if shapes["P"] != R + 2 * N:
        raise ValueError(f"mamba: x_proj_weight: expected shape ({R + 2 * N}, {I}) "
                         f"(dt_rank + 2·d_state rows), got {params['x_proj_weight'].shape}")
    V.array("x", x, ndim=x_ndim, allow_complex=False)
    shapes.check("x", x, ("B", "T", "M") if x_ndim == 3 else ("B", "M"))
    if x_ndim == 3:
        V.time_steps("x", x)
    dtype = V.common_dtype(x=x, **params)
    if state0 is not None:
        if not isinstance(state0, (tuple, list)) or len(state0) != 2:
            raise TypeError("state0: expected the tuple (conv_state (B, I, K-1), "
                            f"ssm_state (B, I, N)), got {type(state0).__name__}"
                            + (f" of length {len(state0)}"
                               if isinstance(state0, (tuple, list)) else ""))
        Bsz = x.shape[0]
        V.state("state0[0] (conv_state)", state0[0], (Bsz, I, shapes["K"] - 1), dtype)
        V.state("state0[1] (ssm_state)", state0[1], (Bsz, I, N), dtype)
    return dtype


# ---------------------------------------------------------------------------
# one token (streaming inference)
# ---------------------------------------------------------------------------

def step_forward(params: dict, x_t: np.ndarray, state: tuple | None = None,
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], MambaStepCache]:
    """One token through the block, as in Mamba's ``step`` for generation.

    ``x_t (B, M)``, ``state = (conv_state (B, I, K−1), ssm_state (B, I, N))``
    (zeros if ``None``) → ``y_t (B, M)``, the next state and the step cache.

        window = [conv_state, xs_t]   (B, I, K);   conv_state' = window[:, :, 1:]
        xc_t   = Σ_k window[:, :, k] w[:, k] + b_conv
        h_t    = e^{Δ_t A} ⊙ h_{t−1} + Δ_t B_t xa_t  (the rest as in :func:`forward`)
    """
    dtype = _check(params, x_t, state, x_ndim=2)
    s = sizes(params)
    I = s["I"]
    if state is None:
        state = zero_state(params, x_t.shape[0], dtype)
    conv_state, h_prev = state
    p = params
    xz = x_t @ p["in_proj_weight"].T
    xs, z = xz[:, :I], xz[:, I:]
    window = np.concatenate([conv_state, xs[:, :, None]], axis=2)            # (B, I, K)
    xc = np.einsum("bik,ik->bi", window, p["conv1d_weight"]) + p["conv1d_bias"]
    xa = silu(xc)
    x_dbl = xa @ p["x_proj_weight"].T
    dt_low, Bt, Ct = np.split(x_dbl, [s["R"], s["R"] + s["N"]], axis=1)
    pre = dt_low @ p["dt_proj_weight"].T + p["dt_proj_bias"]
    dt = softplus(pre)
    A = -np.exp(p["A_log"])
    a = np.exp(dt[:, :, None] * A)                                           # (B, I, N)
    h = a * h_prev + (dt * xa)[:, :, None] * Bt[:, None, :]
    y0 = np.einsum("bin,bn->bi", h, Ct) + p["D"] * xa
    y_ssm = y0 * silu(z)
    y_t = y_ssm @ p["out_proj_weight"].T
    cache_t = MambaStepCache(p, x_t, z, window, xc, xa, dt_low, Bt, Ct, pre, dt, A, a, h_prev,
                             h, y0, y_ssm)
    return y_t, (window[:, :, 1:].copy(), h), cache_t


def step_backward(dy_t: np.ndarray | None, dstate_next: tuple | None, cache_t: MambaStepCache,
                  ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], dict]:
    """Back through one :func:`step_forward`: ``dy_t (B, M)`` and the gradient of
    the next state → ``dx_t (B, M)``, ``dstate_prev`` and the step's parameter
    gradients (the equations of :func:`backward` for T = 1)."""
    c = V.cache("mamba.step", cache_t, MambaStepCache)
    p = c.params
    dconv_next, dh = V.grad_state("dstate_next", dstate_next, (c.window[:, :, 1:], c.h),
                                  fill=True)
    dy_t = V.grad_like("dy_t", dy_t, c.x_t, "y_t", fill=True)
    g = {}
    # out-projection
    g["out_proj_weight"] = dy_t.T @ c.y_ssm
    dy_ssm = dy_t @ p["out_proj_weight"]
    # gate
    dy0 = dy_ssm * silu(c.z)
    dz = dy_ssm * c.y0 * silu_grad(c.z)
    # y0 = h · C + D ⊙ xa
    dh = dh + dy0[:, :, None] * c.Ct[:, None, :]
    dC = np.einsum("bi,bin->bn", dy0, c.h)
    g["D"] = np.sum(dy0 * c.xa, axis=0)
    dxa = p["D"] * dy0
    # h = a ⊙ h_prev + Δ xa B
    dh_prev = c.a * dh
    dlog_a = dh * c.h_prev * c.a
    g["A_log"] = np.einsum("bin,bi->in", dlog_a, c.dt) * c.A
    gB = np.einsum("bin,bn->bi", dh, c.Bt)
    ddt = np.einsum("bin,in->bi", dlog_a, c.A) + gB * c.xa
    dB = np.einsum("bin,bi->bn", dh, c.dt * c.xa)
    dxa = dxa + gB * c.dt
    # Δ = softplus(δ W_dt^T + b_dt)
    dpre = ddt * sigmoid(c.pre)
    g["dt_proj_bias"] = dpre.sum(axis=0)
    g["dt_proj_weight"] = dpre.T @ c.dt_low
    # x-projection
    dx_dbl = np.concatenate([dpre @ p["dt_proj_weight"], dB, dC], axis=1)
    g["x_proj_weight"] = dx_dbl.T @ c.xa
    dxa = dxa + dx_dbl @ p["x_proj_weight"]
    # silu, conv
    dxc = dxa * silu_grad(c.xc)
    g["conv1d_bias"] = dxc.sum(axis=0)
    g["conv1d_weight"] = np.einsum("bi,bik->ik", dxc, c.window)
    dwindow = dxc[:, :, None] * p["conv1d_weight"]
    dwindow[:, :, 1:] += dconv_next
    dxs = dwindow[:, :, -1]
    # in-projection
    dxz = np.concatenate([dxs, dz], axis=1)
    g["in_proj_weight"] = dxz.T @ c.x_t
    dx_t = dxz @ p["in_proj_weight"]
    grads = {k: g[k] for k in PARAM_SHAPES}
    return dx_t, (np.ascontiguousarray(dwindow[:, :, :-1]), dh_prev), grads


# ---------------------------------------------------------------------------
# a whole sequence
# ---------------------------------------------------------------------------

def forward(params: dict, x: np.ndarray, state0: tuple | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None, backend: str = "numpy",
            ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], MambaCache]:
    """Run the Mamba block over ``x (B, T, M)``.

    Args:
        params: from :func:`init_params`.
        x: ``(B, T, M)``.
        state0: ``(conv_state (B, I, K−1), ssm_state (B, I, N))``; ``None`` means zeros.
        method: the selective scan's algorithm, one of :data:`METHODS`.
        chunk_size: for ``method="chunked"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``y (B, T, M)``, the final state ``(conv_state, ssm_state)`` and the
        cache for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="cells.mamba", method=method,
                     backend_methods=BACKEND_METHODS)
    dtype = _check(params, x, state0)
    chunk_size = V.positive_int("chunk_size", chunk_size, allow_none=True)
    s = sizes(params)
    I, K, R, N = s["I"], s["K"], s["R"], s["N"]
    Bsz, T, _ = x.shape
    with _backend.blas_policy(backend):  # numba: BLAS off the cores its kernels use
        lib = _backend.xp_of(x)  # numpy, or cupy for CuPy arrays (backend="cupy")
        if state0 is None:  # zero_state's, allocated where x lives
            state0 = (lib.zeros((Bsz, I, K - 1), dtype), lib.zeros((Bsz, I, N), dtype))
        conv_state0, ssm_state0 = state0
        p = params
        # in-projection
        xz = x @ p["in_proj_weight"].T
        xs, z = xz[..., :I], xz[..., I:]
        # causal depthwise conv1d, the previous K−1 inputs prepended
        xp = np.concatenate([np.transpose(conv_state0, (0, 2, 1)), xs], axis=1)  # (B, K−1+T, I)
        w = p["conv1d_weight"]
        xc = p["conv1d_bias"] + sum(w[:, k] * xp[:, k:k + T] for k in range(K))
        xa = silu(xc)
        # x-projection to (δ, B, C), Δ projection
        x_dbl = xa @ p["x_proj_weight"].T
        dt_low, Bm, Cm = np.split(x_dbl, [R, R + N], axis=-1)
        delta = dt_low @ p["dt_proj_weight"].T
        A = -np.exp(p["A_log"])
        # selective scan with gate; softplus(delta + dt_proj_bias) inside the op
        y_ssm, ssm_T, scan_cache = selective_scan.forward(
            xa, delta, A, Bm, Cm, p["D"], z, delta_bias=p["dt_proj_bias"], delta_softplus=True,
            initial_state=ssm_state0, method=method, chunk_size=chunk_size, backend=backend)
        y = y_ssm @ p["out_proj_weight"].T
        conv_T = lib.ascontiguousarray(np.transpose(xp[:, T:], (0, 2, 1)))  # last K−1 inputs
        cache = MambaCache(x, xp, xc, xa, dt_low, A, y_ssm, scan_cache, (conv_state0, ssm_state0),
                           V.param_shapes(params), method, backend)
        return y, (conv_T, ssm_T), cache


def _weight_grad(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Σ_{b,t} a_t^T b_t`` for ``a (B, T, P)``, ``b (B, T, Q)`` → ``(P, Q)``, as
    one ``(P, B·T) @ (B·T, Q)`` GEMM."""
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def backward(params: dict, cache: MambaCache, dy: np.ndarray | None,
             dstate: tuple | None = None) -> dict[str, np.ndarray]:
    """Hand backward through the whole block (equations in the module docstring).

    Args:
        params: the parameters given to :func:`forward`.
        cache: from :func:`forward`.
        dy: ``(B, T, M)`` ∂L/∂y, or ``None``.
        dstate: ``(dconv_state, dssm_state)`` for the returned state (either may
            be ``None``), or ``None``.

    Returns:
        Every key of ``params`` plus ``"x" (B, T, M)`` and ``"state0"`` (a pair).
    """
    c = V.cache("mamba", cache, MambaCache)
    V.params_match("mamba", params, c.param_shapes)
    with _backend.blas_policy(c.backend):
        p = params
        x, xp, xa = c.x, c.xp, c.xa
        T = x.shape[1]
        K = p["conv1d_weight"].shape[1]
        dy = V.grad_like("dy", dy, x, "y", fill=True)          # y has x's shape (B, T, M)
        dconv_T, dssm_T = V.grad_state("dstate", dstate, c.state0, fill=True)
        g = {}
        # out-projection
        g["out_proj_weight"] = _weight_grad(dy, c.y_ssm)
        dy_ssm = dy @ p["out_proj_weight"]
        # the selective scan (and its gate, D, softplus)
        sg = selective_scan.backward(c.scan, dy_ssm, dssm_T)
        g["A_log"] = sg["A"] * c.A
        g["D"] = sg["D"]
        g["dt_proj_bias"] = sg["delta_bias"]
        dz = sg["z"]
        # Δ projection and x-projection
        g["dt_proj_weight"] = _weight_grad(sg["delta"], c.dt_low)
        dx_dbl = np.concatenate([sg["delta"] @ p["dt_proj_weight"], sg["B"], sg["C"]], axis=-1)
        g["x_proj_weight"] = _weight_grad(dx_dbl, xa)
        dxa = sg["u"] + dx_dbl @ p["x_proj_weight"]
        # SiLU and the causal conv
        dxc = dxa * silu_grad(c.xc)
        g["conv1d_bias"] = dxc.sum(axis=(0, 1))
        w = p["conv1d_weight"]
        lib = _backend.xp_of(x)  # numpy, or cupy for CuPy arrays (backend="cupy")
        dw = lib.empty_like(w)
        dxp = lib.zeros(xp.shape, xp.dtype)
        for k in range(K):
            dw[:, k] = np.einsum("bti,bti->i", dxc, xp[:, k:k + T])
            dxp[:, k:k + T] += w[:, k] * dxc
        g["conv1d_weight"] = dw
        dxp[:, T:] += np.transpose(dconv_T, (0, 2, 1))      # the returned conv_state is xp's tail
        dconv_0 = lib.ascontiguousarray(np.transpose(dxp[:, :K - 1], (0, 2, 1)))
        dxs = dxp[:, K - 1:]
        # in-projection
        dxz = np.concatenate([dxs, dz], axis=-1)
        g["in_proj_weight"] = _weight_grad(dxz, x)
        grads = {k: g[k] for k in PARAM_SHAPES}
        grads["x"] = dxz @ p["in_proj_weight"]
        grads["state0"] = (dconv_0, sg["initial_state"])
        return grads
