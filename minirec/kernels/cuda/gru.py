"""``backend="cupy"`` and ``"cuda-emulated"`` for :mod:`minirec.cells.gru`: the
definition's signature and return structure, reached through
``_backend.kernels("gru", backend)`` (which binds ``backend``).

    gi  = x W_ih^T + b_ih                        one GEMM over all T          (B, T, 3H)
    for t = 0 … T-1:
        h_{t-1} W_hh^T                           GEMM (b_hh added in the kernel) (B, 3H)
        r, z, n, h_t                             gru_forward_step (classic.cu)
    for t = T-1 … 0:
        dgi_t, dgh_t, z ⊙ ∂L/∂h_t                gru_backward_step
        dgh_t W_hh                               GEMM
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
    gates: Any   # (B, T, 4H) [r | z | n | gh_n] of every step


def plan_forward_step(gi: Any, gh: Any, b_hh: Any, h_prev: Any, hs: Any, gates: Any,
                      h_next: Any, t: int) -> _launch.Launch:
    """Step ``t``: ``r, z, n`` from ``gi[:, t]`` and ``gh + b_hh``, ``hs[:, t] =
    h_next = (1 − z) n + z h_prev``, ``gates[:, t] = [r | z | n | gh_n]``
    (``h_next`` must not be ``h_prev``)."""
    B, T, H = hs.shape
    kernel = f"gru_forward_step<{_build.ctype(hs.dtype)}>"
    return classic.step_launch(kernel, (gi, gh, b_hh, h_prev, hs, gates, h_next), B, T, H, t)


def plan_backward_step(hs: Any, h0: Any, gates: Any, dy: Any, dh: Any, dh_direct: Any,
                       dgi: Any, dgh: Any, dgh_t: Any, t: int) -> _launch.Launch:
    """Step ``t``: ``dgi[:, t]``, ``dgh[:, t] = dgh_t`` from ``∂L/∂h_t = dh_direct
    + dh + dy[:, t]``; ``dh_direct`` is replaced by ``z_t ⊙ ∂L/∂h_t``."""
    B, T, H = hs.shape
    kernel = f"gru_backward_step<{_build.ctype(hs.dtype)}>"
    return classic.step_launch(kernel, (hs, h0, gates, dy, dh, dh_direct, dgi, dgh, dgh_t),
                               B, T, H, t)


def forward(params: dict, x: Any, state0: Any, *,
            backend: str | None = None) -> tuple[Any, Any, Cache]:
    """``y (B, T, H)``, the final ``h (B, H)`` and the kernel :class:`Cache`, from
    validated ``params``, ``x (B, T, D)`` and ``state0 (B, H)`` (not ``None``).
    ``backend``: ``"cupy"``, ``"cuda-emulated"`` or None (follow the arrays)."""
    backend, xp = _launch.backend_and_xp(backend, x=x, state0=state0, **params)
    dtype = classic.compute_dtype(x, *params.values())
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    gi = _dense.project(x.astype(dtype, copy=False), p["W_ih"], p["b_ih"], xp)
    B, T, G = gi.shape
    H = G // 3
    hs = xp.empty((B, T, H), dtype)
    gates = xp.empty((B, T, 4 * H), dtype)
    h0 = classic.contiguous(xp, state0, dtype)
    if B:
        module = classic.load(dtype, backend)
        W_hhT = xp.ascontiguousarray(p["W_hh"].T)  # once, not a transposed copy per step
        b_hh = classic.contiguous(xp, p["b_hh"], dtype)
        gh = xp.empty((B, G), dtype)
        h_buffers = (xp.empty((B, H), dtype), xp.empty((B, H), dtype))  # ping-pong
        h_prev = h0
        for t in range(T):
            xp.matmul(h_prev, W_hhT, out=gh)
            h_next = h_buffers[t % 2]
            _launch.run(module, plan_forward_step(gi, gh, b_hh, h_prev, hs, gates, h_next, t))
            h_prev = h_next
    return hs, hs[:, -1].copy(), Cache(x, hs, h0, gates)


def backward(params: dict, cache: Cache, dy: Any, dstate: Any, *,
             backend: str | None = None) -> dict[str, Any]:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0" (B, H)``;
    ``dy (B, T, H)`` and ``dstate (B, H)`` are arrays (zeros, not ``None``)."""
    hs, h0 = cache.hs, cache.h0
    backend, xp = _launch.backend_and_xp(backend, hs=hs, dy=dy, dstate=dstate, **params)
    dt = hs.dtype
    B, T, H = hs.shape
    dgi = xp.empty((B, T, 3 * H), dt)
    dgh = xp.empty((B, T, 3 * H), dt)
    dh = classic.contiguous(xp, dstate, dt)  # ∂L/∂h_{T-1} from beyond the sequence
    dh_direct = xp.zeros((B, H), dt)         # z ⊙ ∂L/∂h of the step after, none at T-1
    if B:
        module = classic.load(dt, backend)
        W_hh = classic.contiguous(xp, params["W_hh"], dt)
        dy = classic.contiguous(xp, dy, dt)
        dgh_t, dh_rec = xp.empty((B, 3 * H), dt), xp.empty((B, H), dt)
        for t in range(T - 1, -1, -1):
            _launch.run(module, plan_backward_step(hs, h0, cache.gates, dy, dh, dh_direct,
                                                   dgi, dgh, dgh_t, t))
            dh = xp.matmul(dgh_t, W_hh, out=dh_rec)  # through h_{t-1} W_hh^T
    grads = _dense.dense_grads(cache.x.astype(dt, copy=False),
                                _dense.previous_states(h0, hs, xp), dgi, dgh,
                                params["W_ih"].astype(dt, copy=False))
    grads["state0"] = dh_direct + dh  # dh_{-1} = z_0 ⊙ ∂L/∂h_0 + dgh_0 W_hh
    return grads
