"""``backend="cupy"`` and ``"cuda-emulated"`` for :mod:`minirec.cells.rnn`: the
definition's signature and return structure, reached through
``_backend.kernels("rnn", backend)`` (which binds ``backend``).

    gi  = x W_ih^T + b_ih + b_hh                 one GEMM over all T          (B, T, H)
    for t = 0 … T-1:
        gh = h_{t-1} W_hh^T                      GEMM                         (B, H)
        h_t = φ(gi_t + gh)                       rnn_forward_step (classic.cu)
    for t = T-1 … 0:
        da_t = ∂L/∂h_t ⊙ φ'                      rnn_backward_step
        ∂L/∂h_{t-1} (recurrent part) = da_t W_hh  GEMM
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
    h0: Any      # (B, H) the initial state, contiguous, in the computation dtype
    relu: bool   # φ = relu (else tanh)


def plan_forward_step(gi: Any, gh: Any, hs: Any, h_next: Any, t: int, relu: bool
                      ) -> _launch.Launch:
    """Step ``t``: ``hs[:, t] = h_next = φ(gi[:, t] + gh)``."""
    B, T, H = hs.shape
    kernel = f"rnn_forward_step<{_build.ctype(hs.dtype)}, {str(relu).lower()}>"
    return classic.step_launch(kernel, (gi, gh, hs, h_next), B, T, H, t)


def plan_backward_step(hs: Any, dy: Any, dh: Any, da: Any, da_t: Any, t: int, relu: bool
                       ) -> _launch.Launch:
    """Step ``t``: ``da[:, t] = da_t = (dh + dy[:, t]) ⊙ φ'`` (φ' from ``hs[:, t]``)."""
    B, T, H = hs.shape
    kernel = f"rnn_backward_step<{_build.ctype(hs.dtype)}, {str(relu).lower()}>"
    return classic.step_launch(kernel, (hs, dy, dh, da, da_t), B, T, H, t)


def forward(params: dict, x: Any, state0: Any, *, nonlinearity: str = "tanh",
            backend: str | None = None) -> tuple[Any, Any, Cache]:
    """``y (B, T, H)``, the final ``h (B, H)`` and the kernel :class:`Cache`, from
    validated ``params``, ``x (B, T, D)`` and ``state0 (B, H)`` (not ``None``).
    ``backend``: ``"cupy"``, ``"cuda-emulated"`` or None (follow the arrays)."""
    backend, xp = _launch.backend_and_xp(backend, x=x, state0=state0, **params)
    dtype = classic.compute_dtype(x, *params.values())
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    relu = nonlinearity == "relu"
    gi = _dense.project(x.astype(dtype, copy=False), p["W_ih"], p["b_ih"] + p["b_hh"], xp)
    B, T, H = gi.shape
    hs = xp.empty((B, T, H), dtype)
    h0 = classic.contiguous(xp, state0, dtype)
    if B:
        module = classic.load(dtype, backend)
        W_hhT = xp.ascontiguousarray(p["W_hh"].T)  # once, not a transposed copy per step
        gh, h = xp.empty((B, H), dtype), xp.empty((B, H), dtype)
        h_prev = h0
        for t in range(T):
            xp.matmul(h_prev, W_hhT, out=gh)
            _launch.run(module, plan_forward_step(gi, gh, hs, h, t, relu))
            h_prev = h  # the kernel has written h_t there (h0 itself is never written)
    return hs, hs[:, -1].copy(), Cache(x, hs, h0, relu)


def backward(params: dict, cache: Cache, dy: Any, dstate: Any, *,
             backend: str | None = None) -> dict[str, Any]:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0" (B, H)``;
    ``dy (B, T, H)`` and ``dstate (B, H)`` are arrays (zeros, not ``None``)."""
    hs, h0 = cache.hs, cache.h0
    backend, xp = _launch.backend_and_xp(backend, hs=hs, dy=dy, dstate=dstate, **params)
    dt = hs.dtype
    B, T, H = hs.shape
    da = xp.empty_like(hs)
    dh = classic.contiguous(xp, dstate, dt)  # ∂L/∂h_{T-1} from beyond the sequence
    if B:
        module = classic.load(dt, backend)
        W_hh = classic.contiguous(xp, params["W_hh"], dt)
        dy = classic.contiguous(xp, dy, dt)
        da_t, dh_rec = xp.empty((B, H), dt), xp.empty((B, H), dt)
        for t in range(T - 1, -1, -1):
            _launch.run(module, plan_backward_step(hs, dy, dh, da, da_t, t, cache.relu))
            dh = xp.matmul(da_t, W_hh, out=dh_rec)  # ∂L/∂h_{t-1} through h_{t-1} W_hh^T
    grads = _dense.dense_grads(cache.x.astype(dt, copy=False),
                                _dense.previous_states(h0, hs, xp), da, da,
                                params["W_ih"].astype(dt, copy=False))
    grads["state0"] = dh.copy() if dh is dstate else dh
    return grads
