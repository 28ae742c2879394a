"""``backend="cupy"`` and ``"cuda-emulated"`` for the multi-head RNN, GRU and LSTM
(multihead.cu): the definitions' signatures and return structures, reached
through ``_backend.kernels("multihead", backend)`` (which binds ``backend``)
with ``cell="rnn" | "gru" | "lstm"``.

    gi = x W_ih^T + b                         one GEMM over all T                  (B, T, G·H)
    multihead_<cell>_forward                  ONE kernel: the whole time loop, a block per
                                              (batch row, head), the head's W_hh block in
                                              shared memory
    multihead_<cell>_backward                 ONE kernel: the reverse loop → the
                                              pre-activation gradients and the initial
                                              state's gradient
    dW_ih, db_ih, db_hh, dx                   GEMMs over all T
    dW_hh[h] = Σ da[head]^T h_{t-1}[head]     one batched GEMM over the heads

Tested against the cells with ``backend="numpy"`` (tests/kernels/test_cuda_multihead.py,
tests/test_contract.py): on the CPU through the emulator, on a GPU through
CuPy (``pytest -m gpu``). The arrays choose the backend (CuPy arrays: ``cupy``;
NumPy arrays: ``cuda-emulated``); the launch plans (:func:`plan`) serve both.
This module imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec.kernels import _dense
from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda._launch import Launch, round_up

SOURCE = "multihead.cu"
BACKENDS = _launch.BACKENDS
# the dtypes the kernels are instantiated for (name_expressions; the compile checks)
DTYPES = (np.float64, np.float32)
CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
MAX_BLOCK = 256            # threads per block: one per unit of a head (thread j owns j, j + 256, …)
SHARED_LIMIT = 48 * 1024   # the default dynamic shared memory of a block (the emulator's limit)


class Cache(NamedTuple):
    """The cell's ``cache.kernel``: what :func:`backward` needs."""

    cell: str      # "rnn", "gru" or "lstm"
    x: Any         # (B, T, D) the input, as given
    hs: Any        # (B, T, H) every h_t (the returned y)
    cs: Any        # (B, T, H) every c_t (LSTM; None otherwise)
    h0: Any        # (B, H) the initial h, contiguous, computation dtype
    c0: Any        # (B, H) the LSTM's initial c (None otherwise)
    gates: Any     # GRU [r | z | n | gh_n] (B, T, 4H), LSTM [i | f | g | o] (B, T, 4H)
    relu: bool     # the RNN's φ = relu (else tanh)


def kernel_names(dtype: Any, cell: str | None = None) -> tuple[str, ...]:
    """The name expressions of multihead.cu's kernels for ``dtype`` (those of
    ``cell`` only, when given)."""
    F = _build.ctype(dtype)
    names = {
        "rnn": tuple(f"multihead_rnn_{d}<{F}, {relu}>" for d in ("forward", "backward")
                     for relu in ("false", "true")),
        "gru": (f"multihead_gru_forward<{F}>", f"multihead_gru_backward<{F}>"),
        "lstm": (f"multihead_lstm_forward<{F}>", f"multihead_lstm_backward<{F}>"),
    }
    if cell is None:
        return sum(names.values(), ())
    if cell not in names:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    return names[cell]


def block_geometry(B: int, NH: int, dh: int, gates: int, itemsize: int
                   ) -> tuple[tuple[int], tuple[int], int, int]:
    """``(grid, block, shared_mem, W_shared)`` of both kernels of a cell with
    ``gates`` gates: one block per (batch row, head), whole warps over the head's
    ``dh`` units (at most :data:`MAX_BLOCK`); shared memory for the step buffers
    (``2·G·dh`` values: the backward's two pre-activation gradients, at least the
    forward's two ``h``) and, when the total fits in :data:`SHARED_LIMIT`, the
    head's ``G·dh²`` values of ``W_hh`` (``W_shared = 1``; otherwise the kernels
    read the block from global memory every step)."""
    buffers = 2 * gates * dh * itemsize
    if buffers > SHARED_LIMIT:
        raise ValueError(f"W_hh: expected a head size dh of at most "
                         f"{SHARED_LIMIT // (2 * gates * itemsize)} for the CUDA multi-head "
                         f"kernels ({gates} gate(s): a step's {gates}·dh pre-activation "
                         f"gradients live in shared memory, twice), got {dh}")
    if B * NH > _launch.MAX_GRID_X:
        raise ValueError(f"x: expected at most {_launch.MAX_GRID_X} (batch row, head) pairs, "
                         f"got {B}·{NH}")
    with_W = buffers + gates * dh * dh * itemsize
    W_shared = int(with_W <= SHARED_LIMIT)
    block = (min(MAX_BLOCK, round_up(max(dh, 1), _launch.WARP)),)
    return (B * NH,), block, with_W if W_shared else buffers, W_shared


def plan(kernel: str, arrays: tuple, B: int, T: int, NH: int, dh: int, gates: int) -> Launch:
    """The launch of one of multihead.cu's kernels: ``arrays`` then ``(T, NH, dh,
    W_shared)`` (every kernel there ends so), the geometry of :func:`block_geometry`."""
    dtype = next(a.dtype for a in arrays)
    grid, block, shared, W_shared = block_geometry(B, NH, dh, gates, dtype.itemsize)
    i64 = np.int64
    return Launch(kernel, grid, block, shared, (*arrays, i64(T), i64(NH), i64(dh), i64(W_shared)))


def head_weight_grad(dgh: Any, h_prev: Any, NH: int, xp: Any) -> Any:
    """``dW_hh[h, g·dh + j, k] = Σ_{B,T} dgh[·, g·H + h·dh + j] h_prev[·, h·dh + k]``
    as one batched GEMM over the heads → ``(NH, G·dh, dh)``."""
    B, T, G = dgh.shape
    H = h_prev.shape[2]
    dh, N = H // NH, B * T
    d = dgh.reshape(N, G // H, NH, dh).transpose(2, 1, 3, 0).reshape(NH, G // NH, N)
    return xp.matmul(d, h_prev.reshape(N, NH, dh).transpose(1, 0, 2))


def _c(xp: Any, x: Any, dtype: Any) -> Any:
    return xp.ascontiguousarray(x.astype(dtype, copy=False))


def forward(params: dict, x: Any, state0: Any, *, cell: str, nonlinearity: str = "tanh",
            backend: str | None = None) -> tuple[Any, Any, Cache]:
    """``y (B, T, H)``, the final state (``h``, or ``(h, c)`` for the LSTM) and the
    kernel :class:`Cache`, from validated ``params`` (``W_hh (NH, G·dh, dh)``),
    ``x (B, T, D)`` and ``state0`` (not ``None``). ``backend``: ``"cupy"``,
    ``"cuda-emulated"`` or None (follow the arrays)."""
    if cell not in CELLS:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    parts = tuple(state0) if cell == "lstm" else (state0,)
    backend, xp = _launch.backend_and_xp(backend, x=x, **{f"state0[{i}]": s
                                                          for i, s in enumerate(parts)},
                                         **params)
    dtype = np.result_type(x.dtype, *(v.dtype for v in params.values()))
    p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
    NH, _, dh = p["W_hh"].shape
    G = GATES[cell]
    B, T, _ = x.shape
    H = NH * dh
    relu = nonlinearity == "relu"
    b_in = p["b_ih"] if cell == "gru" else p["b_ih"] + p["b_hh"]  # the GRU's b_hh: inside
    gi = _dense.project(x.astype(dtype, copy=False), p["W_ih"], b_in, xp)
    hs = xp.empty((B, T, H), dtype)
    h0 = _c(xp, parts[0], dtype)
    c0 = _c(xp, parts[1], dtype) if cell == "lstm" else None
    cs = xp.empty_like(hs) if cell == "lstm" else None
    gates = xp.empty((B, T, 4 * H), dtype) if cell != "rnn" else None
    if B:
        module = _build.load(SOURCE, kernel_names(dtype, cell), backend)
        WT = xp.ascontiguousarray(p["W_hh"].reshape(NH, G, dh, dh).transpose(0, 1, 3, 2))
        if cell == "rnn":
            kernel, arrays = (f"multihead_rnn_forward<{_build.ctype(dtype)}, "
                              f"{str(relu).lower()}>", (gi, WT, h0, hs))
        elif cell == "gru":
            kernel = f"multihead_gru_forward<{_build.ctype(dtype)}>"
            arrays = (gi, WT, _c(xp, p["b_hh"], dtype), h0, hs, gates)
        else:
            kernel = f"multihead_lstm_forward<{_build.ctype(dtype)}>"
            arrays = (gi, WT, h0, c0, hs, cs, gates)
        _launch.run(module, plan(kernel, arrays, B, T, NH, dh, G))
    state = (hs[:, -1].copy(), cs[:, -1].copy()) if cell == "lstm" else hs[:, -1].copy()
    return hs, state, Cache(cell, x, hs, cs, h0, c0, gates, relu)


def backward(params: dict, cache: Cache, dy: Any, dstate: Any, *,
             backend: str | None = None) -> dict[str, Any]:
    """Every parameter's gradient, ``"x" (B, T, D)`` and ``"state0"`` (the state's
    structure); ``dy (B, T, H)`` and ``dstate`` are arrays (zeros, not ``None``)."""
    cell, hs, h0 = cache.cell, cache.hs, cache.h0
    parts = tuple(dstate) if cell == "lstm" else (dstate,)
    backend, xp = _launch.backend_and_xp(backend, hs=hs, dy=dy, **{
        f"dstate[{i}]": d for i, d in enumerate(parts)}, **params)
    dt = hs.dtype
    B, T, H = hs.shape
    NH, _, dh = params["W_hh"].shape
    G = GATES[cell]
    # fresh buffers: the kernel overwrites them (dstate in, the state0 gradient out)
    d0 = tuple(xp.array(d, dtype=dt, order="C", copy=True) for d in parts)
    dgi = xp.empty((B, T, G * H), dt)
    dgh = xp.empty((B, T, G * H), dt) if cell == "gru" else dgi
    if B:
        module = _build.load(SOURCE, kernel_names(dt, cell), backend)
        W = _c(xp, params["W_hh"], dt)
        dy = _c(xp, dy, dt)
        F = _build.ctype(dt)
        if cell == "rnn":
            kernel = f"multihead_rnn_backward<{F}, {str(cache.relu).lower()}>"
            arrays = (hs, W, dy, dgi, d0[0])
        elif cell == "gru":
            kernel = f"multihead_gru_backward<{F}>"
            arrays = (hs, h0, cache.gates, W, dy, dgi, dgh, d0[0])
        else:
            kernel = f"multihead_lstm_backward<{F}>"
            arrays = (cache.cs, cache.c0, cache.gates, W, dy, dgi, d0[0], d0[1])
        _launch.run(module, plan(kernel, arrays, B, T, NH, dh, G))
    x = cache.x.astype(dt, copy=False)
    D = x.shape[2]
    dgi2, dgh2 = dgi.reshape(B * T, G * H), dgh.reshape(B * T, G * H)
    grads = {"W_ih": dgi2.T @ x.reshape(B * T, D),
             "W_hh": head_weight_grad(dgh, _dense.previous_states(h0, hs, xp), NH, xp),
             "b_ih": dgi2.sum(axis=0),
             "b_hh": dgh2.sum(axis=0),
             "x": (dgi2 @ params["W_ih"].astype(dt, copy=False)).reshape(B, T, D)}
    grads["state0"] = d0 if cell == "lstm" else d0[0]
    return grads
