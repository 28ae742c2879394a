"""``backend="cupy"`` and ``"cuda-emulated"`` for :mod:`minirec.cells.lstm`: the
definition's signature and return structure, reached through
``_backend.kernels("lstm", backend)`` (which binds ``backend``).

    gi  = x W_ih^T + b_ih + b_hh                 one GEMM over all T          (B, T, 4H)
    for t = 0 … T-1:
        gh = h_{t-1} W_hh^T                      GEMM                         (B, 4H)
        gates i, f, g, o of gi_t + gh; c_t, h_t  lstm_forward_step (classic.cu)
    for t = T-1 … 0:
        da_t, ∂L/∂c_{t-1}                        lstm_backward_step
        ∂L/∂h_{t-1} = da_t W_hh                  GEMM
    dW_ih, dW_hh, db_ih, db_hh, dx               GEMMs over all T

Arguments arrive validated by the cell; CuPy arrays run on the GPU, NumPy
arrays on the emulator (see :mod:`minirec.kernels.cuda.classic`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from minirec.kernels import _dense
from minirec.kernels.cuda import _build, _launch, classic


class Cache(NamedTuple):
    """The cell's ``cache.kernel``: what :func:`backward` needs."""

    x: Any       # (B, T, D) the input, as given
    hs: Any      # (B, T, H) every h_t (the returned y)
    cs: Any      # (B, T, H) every c_t
    h0: Any      # (B, H) the initial state (h0, c0), contiguous, computation dtype
    c0: Any      # (B, H)
    gates: Any   # (B, T, 4H) [i | f | g | o] of every step, post-activation


def plan_forward_step(gi: Any, gh: Any, c0: Any, hs: Any, cs: Any, gates: Any, h_next: Any,
                      t: int) -> _launch.Launch:
    """Step ``t``: gates of ``gi[:, t] + gh``, ``cs[:, t]``, ``hs[:, t] = h_next``
    and ``gates[:, t]`` (``c_{t-1}`` from ``cs[:, t-1]``, or ``c0``)."""
    B, T, H = hs.shape
    kernel = f"lstm_forward_step<{_build.ctype(hs.dtype)}>"
    return classic.step_launch(kernel, (gi, gh, c0, hs, cs, gates, h_next), B, T, H, t)


def plan_backward_step(cs: Any, c0: Any, gates: Any, dy: Any, dh: Any, dc: Any, da: Any,
                       da_t: Any, t: int) -> _launch.Launch:
    """Step ``t``: ``da[:, t] = da_t`` from ``dh + dy[:, t]`` and ``dc`` (``∂L/∂c_t``,
    replaced by ``∂L/∂c_{t-1}``)."""
    B, T, H = cs.shape
    kernel = f"lstm_backward_step<{_build.ctype(cs.dtype)}>"
    return classic.step_launch(kernel, (cs, c0, gates, dy, dh, dc, da, da_t), B, T, H, t)


def forward(params: dict, x: Any, state0: tuple[Any, Any], *,
            backend: str | None = None) -> tuple[Any, tuple, Cache]:
    """``y (B, T, H)``, the final ``(h, c)`` and the kernel :class:`Cache`, from
    validated ``params``, ``x (B, T, D)`` and ``state0 = (h0, c0)`` (not ``None``).
    ``backend``: ``"cupy"``, ``"cuda-emulated"`` or None (follow the arrays)."""
    backend, xp = _launch.backend_and_xp(backend, x=x, h0=state0[0], c0=state0[1], **params)
    dtype = classic.compute_dtype(x, *params.values())
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    gi = _dense.project(x.astype(dtype, copy=False), p["W_ih"], p["b_ih"] + p["b_hh"], xp)
    B, T, G = gi.shape
    H = G // 4
    hs = xp.empty((B, T, H), dtype)
    cs = xp.empty_like(hs)
    gates = xp.empty_like(gi)
    h0, c0 = (classic.contiguous(xp, s, dtype) for s in state0)
    if B:
        module = classic.load(dtype, backend)
        W_hhT = xp.ascontiguousarray(p["W_hh"].T)  # once, not a transposed copy per step
        gh, h = xp.empty((B, G), dtype), xp.empty((B, H), dtype)
        h_prev = h0
        for t in range(T):
            xp.matmul(h_prev, W_hhT, out=gh)
            _launch.run(module, plan_forward_step(gi, gh, c0, hs, cs, gates, h, t))
            h_prev = h  # the kernel has written h_t there (h0 itself is never written)
    return hs, (hs[:, -1].copy(), cs[:, -1].copy()), Cache(x, hs, cs, h0, c0, gates)


def backward(params: dict, cache: Cache, dy: Any, dstate: tuple[Any, Any], *,
             backend: str | None = None) -> dict[str, Any]:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0" = (dh0, dc0)``;
    ``dy (B, T, H)`` and both parts of ``dstate`` are arrays (zeros, not ``None``)."""
    hs, cs, h0, c0 = cache.hs, cache.cs, cache.h0, cache.c0
    backend, xp = _launch.backend_and_xp(backend, hs=hs, dy=dy, dstate_h=dstate[0],
                                         dstate_c=dstate[1], **params)
    dt = hs.dtype
    B, T, H = hs.shape
    da = xp.empty_like(cache.gates)
    dh = classic.contiguous(xp, dstate[0], dt)  # ∂L/∂h_{T-1} from beyond the sequence
    dc = classic.fresh(xp, dstate[1], dt)       # ∂L/∂c_t, overwritten step by step
    if B:
        module = classic.load(dt, backend)
        W_hh = classic.contiguous(xp, params["W_hh"], dt)
        dy = classic.contiguous(xp, dy, dt)
        da_t, dh_rec = xp.empty((B, 4 * H), dt), xp.empty((B, H), dt)
        for t in range(T - 1, -1, -1):
            _launch.run(module, plan_backward_step(cs, c0, cache.gates, dy, dh, dc, da, da_t, t))
            dh = xp.matmul(da_t, W_hh, out=dh_rec)  # ∂L/∂h_{t-1} through h_{t-1} W_hh^T
    grads = _dense.dense_grads(cache.x.astype(dt, copy=False),
                                _dense.previous_states(h0, hs, xp), da, da,
                                params["W_ih"].astype(dt, copy=False))
    grads["state0"] = (dh.copy() if dh is dstate[0] else dh, dc)
    return grads
