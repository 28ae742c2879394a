"""``backend="cupy"`` and ``"cuda-emulated"`` for :mod:`minirec.cells.ln_lstm`: the
definition's signature and return structure, reached through
``_backend.kernels("ln_lstm", backend)`` (which binds ``backend``).

    zx = x W_ih^T                              one GEMM over all T                 (B, T, 4H)
    xhat_ih, rstd_ih = LN(zx)                  ln_lstm_layer_norm_rows (ln_lstm.cu)
    ax = alpha_ih ⊙ xhat_ih + beta_ih + b      elementwise, all T
    for t = 0 … T-1:
        zh = h_{t-1} W_hh^T                    GEMM                                (B, 4H)
        LN(zh) + ax_t, gates, c_t, LN(c_t), h_t      ln_lstm_forward_step
    for t = T-1 … 0:
        dnc_t, da_t, dzh_t, ∂L/∂c_{t-1}        ln_lstm_backward_step
        ∂L/∂h_{t-1} = dzh_t W_hh               GEMM
    dzx = LN-backward(da)                      ln_lstm_layer_norm_backward_rows
    dW_ih, dW_hh, dx                           GEMMs over all T; db, dalpha_*, dbeta_*: sums

Each kernel runs one block per row (``(b, t)`` for the row kernels, ``b`` for
the step kernels) of :func:`block_threads` threads, its layer-norm statistics
block reductions (see ln_lstm.cu). Arguments arrive validated by the cell;
CuPy arrays run on the GPU, NumPy arrays on the emulator. This module imports
nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec.kernels import _dense
from minirec.kernels.cuda import _build, _launch, classic
from minirec.kernels.cuda._launch import Launch, round_up

SOURCE = "ln_lstm.cu"
BACKENDS = _launch.BACKENDS
# the dtypes the kernels are instantiated for (name_expressions; the compile checks)
DTYPES = (np.float64, np.float32)
# threads per block at most: 8 warps; a row longer than that is strided over the threads
MAX_BLOCK = 256


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """The name expressions of ln_lstm.cu's kernels for ``dtype``."""
    F = _build.ctype(dtype)
    return (f"ln_lstm_layer_norm_rows<{F}>", f"ln_lstm_layer_norm_backward_rows<{F}>",
            f"ln_lstm_forward_step<{F}>", f"ln_lstm_backward_step<{F}>")


def load(dtype: Any, backend: str) -> Any:
    """ln_lstm.cu's kernels for ``dtype``, compiled once per process and backend."""
    return _build.load(SOURCE, kernel_names(dtype), backend)


def block_threads(n: int) -> int:
    """Threads of a block that works on rows of ``n`` entries (or ``n`` units):
    whole warps (the block reductions shuffle over full warps), at most
    :data:`MAX_BLOCK`, no more warps than ``n`` needs."""
    return min(MAX_BLOCK, round_up(max(int(n), 1), _launch.WARP))


def _i64(*values: int) -> tuple:
    return tuple(np.int64(v) for v in values)


# ---------------------------------------------------------------------------
# launch plans, one per kernel, for both backends
# ---------------------------------------------------------------------------

def plan_layer_norm_rows(z: Any, xhat: Any, rstd: Any, eps: float) -> Launch:
    """``xhat``, ``rstd`` of every row of ``z (…, n)`` (``rstd`` shaped like ``z[..., 0]``):
    one block per row."""
    n = z.shape[-1]
    rows = z.size // n
    return Launch(f"ln_lstm_layer_norm_rows<{_build.ctype(z.dtype)}>", (rows,),
                  (block_threads(n),), 0, (z, xhat, rstd, *_i64(n), z.dtype.type(eps)))


def plan_layer_norm_backward_rows(g: Any, xhat: Any, rstd: Any, alpha: Any, dz: Any) -> Launch:
    """``dz = ∂L/∂z`` of every row from ``g = ∂L/∂LN(z) (…, n)``: one block per row."""
    n = g.shape[-1]
    rows = g.size // n
    return Launch(f"ln_lstm_layer_norm_backward_rows<{_build.ctype(g.dtype)}>", (rows,),
                  (block_threads(n),), 0, (g, xhat, rstd, alpha, dz, *_i64(n)))


def plan_forward_step(ax: Any, zh: Any, p: dict, c0: Any, hs: Any, cs: Any, gates: Any,
                      xhat_hh: Any, rstd_hh: Any, xhat_c: Any, rstd_c: Any, h_next: Any,
                      t: int, eps: float) -> Launch:
    """Step ``t``: ``LN(zh) + ax[:, t]``, the gates, ``cs[:, t]``, ``LN(c_t)``,
    ``hs[:, t] = h_next`` and what the backward needs; one block per batch row."""
    B, T, H = hs.shape
    args = (ax, zh, p["alpha_hh"], p["beta_hh"], p["alpha_c"], p["beta_c"], c0, hs, cs, gates,
            xhat_hh, rstd_hh, xhat_c, rstd_c, h_next, *_i64(T, H, t), hs.dtype.type(eps))
    return Launch(f"ln_lstm_forward_step<{_build.ctype(hs.dtype)}>", (B,), (block_threads(H),),
                  0, args)


def plan_backward_step(cache: Any, p: dict, dy: Any, dh: Any, dc: Any, dnc: Any, da: Any,
                       dzh: Any, dzh_t: Any, t: int) -> Launch:
    """Step ``t``: ``dnc, da, dzh [:, t]`` and ``dzh_t`` from ``dh + dy[:, t]`` and ``dc``
    (``∂L/∂c_t``, replaced by ``∂L/∂c_{t-1}``); one block per batch row."""
    B, T, H = cache.cs.shape
    args = (cache.cs, cache.c0, cache.gates, cache.xhat_hh, cache.rstd_hh, cache.xhat_c,
            cache.rstd_c, p["alpha_hh"], p["alpha_c"], p["beta_c"], dy, dh, dc, dnc, da, dzh,
            dzh_t, *_i64(T, H, t))
    return Launch(f"ln_lstm_backward_step<{_build.ctype(cache.cs.dtype)}>", (B,),
                  (block_threads(H),), 0, args)


# ---------------------------------------------------------------------------
# the definition's signature
# ---------------------------------------------------------------------------

class Cache(NamedTuple):
    """The cell's ``cache.kernel``: what :func:`backward` needs."""

    x: Any        # (B, T, D) the input, as given
    hs: Any       # (B, T, H) every h_t (the returned y)
    cs: Any       # (B, T, H) every c_t
    h0: Any       # (B, H) the initial state (h0, c0), contiguous, computation dtype
    c0: Any       # (B, H)
    gates: Any    # (B, T, 4H) [i | f | g | o] of every step, post-activation
    xhat_ih: Any  # (B, T, 4H) normalised x_t W_ih^T
    rstd_ih: Any  # (B, T)
    xhat_hh: Any  # (B, T, 4H) normalised h_{t-1} W_hh^T
    rstd_hh: Any  # (B, T)
    xhat_c: Any   # (B, T, H) normalised c_t
    rstd_c: Any   # (B, T)


def forward(params: dict, x: Any, state0: tuple[Any, Any], eps: float, *,
            backend: str | None = None) -> tuple[Any, tuple, Cache]:
    """``y (B, T, H)``, the final ``(h, c)`` and the kernel :class:`Cache`, from
    validated ``params``, ``x (B, T, D)``, ``state0 = (h0, c0)`` (not ``None``) and
    the layer norms' ``eps``. ``backend``: ``"cupy"``, ``"cuda-emulated"`` or None
    (follow the arrays)."""
    backend, xp = _launch.backend_and_xp(backend, x=x, h0=state0[0], c0=state0[1], **params)
    dtype = classic.compute_dtype(x, *params.values())
    p = {k: classic.contiguous(xp, v, dtype) for k, v in params.items()}
    zx = _dense.project(x.astype(dtype, copy=False), p["W_ih"], None, xp)
    B, T, G = zx.shape
    H = G // 4
    xhat_ih, rstd_ih = xp.empty_like(zx), xp.empty((B, T), dtype)
    gates, xhat_hh = xp.empty_like(zx), xp.empty_like(zx)
    hs, cs, xhat_c = (xp.empty((B, T, H), dtype) for _ in range(3))
    rstd_hh, rstd_c = xp.empty((B, T), dtype), xp.empty((B, T), dtype)
    h0, c0 = (classic.contiguous(xp, s, dtype) for s in state0)
    if B:
        module = load(dtype, backend)
        _launch.run(module, plan_layer_norm_rows(zx, xhat_ih, rstd_ih, eps))
        ax = xp.ascontiguousarray((xhat_ih * p["alpha_ih"] + p["beta_ih"]) + p["b"])
        W_hhT = xp.ascontiguousarray(p["W_hh"].T)  # once, not a transposed copy per step
        zh, h = xp.empty((B, G), dtype), xp.empty((B, H), dtype)
        h_prev = h0
        for t in range(T):
            xp.matmul(h_prev, W_hhT, out=zh)
            _launch.run(module, plan_forward_step(ax, zh, p, c0, hs, cs, gates, xhat_hh,
                                                  rstd_hh, xhat_c, rstd_c, h, t, eps))
            h_prev = h  # the kernel has written h_t there (h0 itself is never written)
    return hs, (hs[:, -1].copy(), cs[:, -1].copy()), Cache(
        x, hs, cs, h0, c0, gates, xhat_ih, rstd_ih, xhat_hh, rstd_hh, xhat_c, rstd_c)


def backward(params: dict, cache: Cache, dy: Any, dstate: tuple[Any, Any], *,
             backend: str | None = None) -> dict[str, Any]:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0" = (dh0, dc0)``;
    ``dy (B, T, H)`` and both parts of ``dstate`` are arrays (zeros, not ``None``)."""
    hs, h0 = cache.hs, cache.h0
    backend, xp = _launch.backend_and_xp(backend, hs=hs, dy=dy, dstate_h=dstate[0],
                                         dstate_c=dstate[1], **params)
    dt = hs.dtype
    B, T, H = hs.shape
    p = {k: classic.contiguous(xp, v, dt) for k, v in params.items()}
    dnc = xp.empty_like(hs)
    da, dzh, dzx = (xp.empty_like(cache.gates) for _ in range(3))
    dh = classic.contiguous(xp, dstate[0], dt)  # ∂L/∂h_{T-1} from beyond the sequence
    dc = classic.fresh(xp, dstate[1], dt)       # ∂L/∂c_t, overwritten step by step
    if B:
        module = load(dt, backend)
        dy = classic.contiguous(xp, dy, dt)
        dzh_t, dh_rec = xp.empty((B, 4 * H), dt), xp.empty((B, H), dt)
        for t in range(T - 1, -1, -1):
            _launch.run(module, plan_backward_step(cache, p, dy, dh, dc, dnc, da, dzh, dzh_t, t))
            dh = xp.matmul(dzh_t, p["W_hh"], out=dh_rec)  # ∂L/∂h_{t-1} through zh = h W_hh^T
        _launch.run(module, plan_layer_norm_backward_rows(da, cache.xhat_ih, cache.rstd_ih,
                                                          p["alpha_ih"], dzx))
    dense = _dense.dense_grads(cache.x.astype(dt, copy=False),
                               _dense.previous_states(h0, hs, xp), dzx, dzh, p["W_ih"])
    db = da.sum(axis=(0, 1))
    return {"W_ih": dense["W_ih"], "W_hh": dense["W_hh"], "b": db,
            "alpha_ih": (da * cache.xhat_ih).sum(axis=(0, 1)), "beta_ih": db.copy(),
            "alpha_hh": (da * cache.xhat_hh).sum(axis=(0, 1)), "beta_hh": db.copy(),
            "alpha_c": (dnc * cache.xhat_c).sum(axis=(0, 1)), "beta_c": dnc.sum(axis=(0, 1)),
            "x": dense["x"], "state0": (dh.copy() if dh is dstate[0] else dh, dc)}
