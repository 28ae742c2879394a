"""``backend="cupy"`` and ``"cuda-emulated"`` for :mod:`minirec.cells.slstm`
(slstm.cu): the definition's signature and return structure, reached through
``_backend.kernels("slstm", backend)`` (which binds ``backend``).

    a = x W_ih^T + b                      one GEMM over all T                     (B, T, 4H)
    slstm_forward                         ONE kernel: the whole time loop, a block per
                                          (batch row, head), the head's R in shared memory
    slstm_backward                        ONE kernel: the reverse loop → da (B, T, 4H) and
                                          the initial state's gradient
    dW_ih, db, dx, dR                     GEMMs over all T

Tested against ``minirec.cells.slstm`` with ``backend="numpy"``
(tests/kernels/test_cuda_slstm.py, tests/test_contract.py): on the CPU through
the emulator, on a GPU through CuPy (``pytest -m gpu``). The arrays choose the
backend (CuPy arrays: ``cupy``; NumPy arrays: ``cuda-emulated``); the launch
plans (:func:`plan_forward`, :func:`plan_backward`) serve both. This module
imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec.kernels import _dense
from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda._launch import Launch, round_up

SOURCE = "slstm.cu"
BACKENDS = _launch.BACKENDS
# the dtypes the kernels are instantiated for (name_expressions; the compile checks)
DTYPES = (np.float64, np.float32)
MAX_BLOCK = 256            # threads per block: one per unit of a head (thread j owns j, j + 256, …)
SHARED_LIMIT = 48 * 1024   # the default dynamic shared memory of a block


class Cache(NamedTuple):
    """The cell's ``cache.kernel``: what :func:`backward` needs."""

    x: Any       # (B, T, D) the input, as given
    hs: Any      # (B, T, H) every h_t (the returned y)
    cs: Any      # (B, T, H) every c_t
    ns: Any      # (B, T, H) every n_t
    ms: Any      # (B, T, H) every m_t
    a: Any       # (B, T, 4H) the pre-activations [a_i | a_f | a_z | a_o] of every step
    state0: tuple  # (h0, c0, n0, m0), each (B, H), contiguous, computation dtype


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """The name expressions of slstm.cu's kernels for ``dtype``."""
    F = _build.ctype(dtype)
    return (f"slstm_forward<{F}>", f"slstm_backward<{F}>")


def block_geometry(B: int, NH: int, dh: int, itemsize: int
                   ) -> tuple[tuple[int], tuple[int], int, int]:
    """``(grid, block, shared_mem, R_shared)`` of both kernels: one block per
    (batch row, head), whole warps over the head's ``dh`` units (at most
    :data:`MAX_BLOCK`); shared memory for the step buffers (``8·dh`` values: the
    backward's two ``da_t``, more than the forward's two ``h``) and, when the
    total fits in :data:`SHARED_LIMIT`, the head's ``4·dh²`` values of ``R``
    (``R_shared = 1``; otherwise the kernels read ``R`` from global memory)."""
    buffers = 8 * dh * itemsize
    if buffers > SHARED_LIMIT:
        raise ValueError(f"R: expected a head size dh of at most {SHARED_LIMIT // (8 * itemsize)}"
                         f" for the CUDA sLSTM (a step's 4·dh gate gradients live in shared "
                         f"memory, twice), got {dh}")
    if B * NH > _launch.MAX_GRID_X:
        raise ValueError(f"x: expected at most {_launch.MAX_GRID_X} (batch row, head) pairs, "
                         f"got {B}·{NH}")
    with_R = buffers + 4 * dh * dh * itemsize
    R_shared = int(with_R <= SHARED_LIMIT)
    block = (min(MAX_BLOCK, round_up(max(dh, 1), _launch.WARP)),)
    return (B * NH,), block, with_R if R_shared else buffers, R_shared


def plan_forward(a: Any, RT: Any, state0: tuple, hs: Any, cs: Any, ns: Any, ms: Any) -> Launch:
    """The launch that runs the time loop: ``a (B, T, 4H)`` (``x W_ih^T + b`` on entry,
    the pre-activations on exit), ``RT (NH, 4, dh, dh)`` = ``R.transpose(1, 0, 3, 2)``,
    ``state0`` four ``(B, H)``; writes ``hs, cs, ns, ms (B, T, H)``."""
    B, T, H = hs.shape
    NH, dh = RT.shape[0], RT.shape[2]
    grid, block, shared, R_shared = block_geometry(B, NH, dh, hs.dtype.itemsize)
    i64 = np.int64
    return Launch(f"slstm_forward<{_build.ctype(hs.dtype)}>", grid, block, shared,
                  (a, RT, *state0, hs, cs, ns, ms, i64(T), i64(NH), i64(dh), i64(R_shared)))


def plan_backward(a: Any, Rb: Any, state0: tuple, hs: Any, cs: Any, ns: Any, ms: Any, dy: Any,
                  da: Any, dstate0: tuple) -> Launch:
    """The launch of the reverse loop: ``Rb (NH, 4, dh, dh)`` = ``R.transpose(1, 0, 2, 3)``;
    ``dstate0`` four ``(B, H)`` buffers holding ``dstate`` on entry, the initial
    state's gradient on exit; writes ``da (B, T, 4H)``."""
    B, T, H = hs.shape
    NH, dh = Rb.shape[0], Rb.shape[2]
    grid, block, shared, R_shared = block_geometry(B, NH, dh, hs.dtype.itemsize)
    i64 = np.int64
    return Launch(f"slstm_backward<{_build.ctype(hs.dtype)}>", grid, block, shared,
                  (a, Rb, *state0[1:], hs, cs, ns, ms, dy, da, *dstate0, i64(T), i64(NH),
                   i64(dh), i64(R_shared)))


def recurrent_weight_grad(da: Any, h_prev: Any, NH: int, xp: Any) -> Any:
    """``dR[g, h, j, k] = Σ_{B,T} da[·, g·H + h·dh + j] h_prev[·, h·dh + k]`` as one
    batched GEMM over the heads and gates → ``(4, NH, dh, dh)``."""
    B, T, G = da.shape
    dh = G // 4 // NH
    N = B * T
    da4 = da.reshape(N, 4, NH, dh).transpose(1, 2, 3, 0)   # (4, NH, dh, N)
    hp = h_prev.reshape(N, NH, dh).transpose(1, 0, 2)       # (NH, N, dh)
    return xp.matmul(da4, hp[None])


def _c(xp: Any, x: Any, dtype: Any) -> Any:
    return xp.ascontiguousarray(x.astype(dtype, copy=False))


def forward(params: dict, x: Any, state0: tuple, *,
            backend: str | None = None) -> tuple[Any, tuple, Cache]:
    """``y (B, T, H)``, the final ``(h, c, n, m)`` and the kernel :class:`Cache`, from
    validated ``params``, ``x (B, T, D)`` and ``state0`` (four ``(B, H)`` arrays).
    ``backend``: ``"cupy"``, ``"cuda-emulated"`` or None (follow the arrays)."""
    backend, xp = _launch.backend_and_xp(backend, x=x, h0=state0[0], c0=state0[1],
                                         n0=state0[2], m0=state0[3], **params)
    dtype = np.result_type(x.dtype, *(v.dtype for v in params.values()))
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    _, NH, dh, _ = p["R"].shape
    B, T, _ = x.shape
    H = NH * dh
    a = _dense.project(x.astype(dtype, copy=False), p["W_ih"], p["b"], xp)
    hs, cs, ns, ms = (xp.empty((B, T, H), dtype) for _ in range(4))
    s0 = tuple(_c(xp, s, dtype) for s in state0)
    if B:
        RT = xp.ascontiguousarray(p["R"].transpose(1, 0, 3, 2))
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        _launch.run(module, plan_forward(a, RT, s0, hs, cs, ns, ms))
    state = tuple(s[:, -1].copy() for s in (hs, cs, ns, ms))
    return hs, state, Cache(x, hs, cs, ns, ms, a, s0)


def backward(params: dict, cache: Cache, dy: Any, dstate: tuple, *,
             backend: str | None = None) -> dict[str, Any]:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0" = (dh0, dc0, dn0,
    dm0)``; ``dy (B, T, H)`` and every part of ``dstate`` are arrays (zeros, not ``None``)."""
    hs, a, s0 = cache.hs, cache.a, cache.state0
    backend, xp = _launch.backend_and_xp(backend, hs=hs, dy=dy, dstate_h=dstate[0],
                                         dstate_c=dstate[1], dstate_n=dstate[2],
                                         dstate_m=dstate[3], **params)
    dt = hs.dtype
    B, T, H = hs.shape
    R = params["R"].astype(dt, copy=False)
    NH = R.shape[1]
    da = xp.empty_like(a)
    # fresh buffers: the kernel overwrites them (dstate in, the state0 gradient out)
    d0 = tuple(xp.array(d, dtype=dt, order="C", copy=True) for d in dstate)
    if B:
        Rb = xp.ascontiguousarray(R.transpose(1, 0, 2, 3))
        module = _build.load(SOURCE, kernel_names(dt), backend)
        _launch.run(module, plan_backward(a, Rb, s0, hs, cache.cs, cache.ns, cache.ms,
                                          _c(xp, dy, dt), da, d0))
    x = cache.x.astype(dt, copy=False)
    da2 = da.reshape(B * T, 4 * H)
    h_prev = _dense.previous_states(s0[0], hs, xp)
    grads = {"W_ih": da2.T @ x.reshape(B * T, x.shape[2]),
             "R": recurrent_weight_grad(da, h_prev, NH, xp),
             "b": da2.sum(axis=0),
             "x": (da2 @ params["W_ih"].astype(dt, copy=False)).reshape(x.shape)}
    grads["state0"] = d0
    return grads
