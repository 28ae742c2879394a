"""CUDA kernels (delta_rule.cu) for the delta engine's recurrent form: DeltaNet and Gated
DeltaNet, on ``backend="cupy"`` or ``"cuda-emulated"``.

Tested against :func:`minirec.ops.delta_rule.run` / ``run_backward`` with
``backend="numpy"`` (tests/kernels/test_cuda_matrix.py): on the CPU through the
emulator, on a GPU through CuPy (``pytest -m gpu``).

Per batch row and head, ``q, k (B, T, H, K)``, ``v (B, T, H, V)``,
``beta (B, T, H)``, ``g`` ``None`` or ``(B, T, H)`` (``a_t = e^{g_t}``), state
``S (B, H, K, V)``:

    Sp = a_t S_{t−1};   e_t = v_t − Sp^T k_t;   S_t = Sp + β_t k_t e_t^T;   o_t = scale · S_t^T q_t

Backward (``dS`` = ∂L/∂S_t from ``dstate``): ``dS += scale·q_t do_t^T``,
``dq_t = scale·S_t do_t``, ``dβ_t = k_t^T dS e_t``, ``de = β_t dS^T k_t = dv_t``,
``dk_t = β_t dS e_t − Sp de``, ``dSp = dS − k_t de^T``, ``dg_t = Σ dSp ⊙ Sp``,
``dS ← a_t dSp``.

``method="recurrent"`` only: one block per (b, h, slice of ≤ 32 columns of S),
thread ``j`` owns column ``j`` in shared memory (``e_t[j]`` and the column's
reductions over K are its own); the backward replays chunks of
``chunk_size`` states from the forward's checkpoints (delta_rule.cu's header).
``K, V ≤`` :data:`MAX_SIZE`. This module imports nothing from minirec outside
``minirec.kernels``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda._launch import Launch, ceil_div
from minirec.kernels.cuda.gla import (
    MAX_SIZE,
    check_chunk,
    check_method,
    check_sizes,
    columns,
    contiguous,
    grid_of,
    to_bthx,
)

METHODS = ("recurrent",)
SOURCE = "delta_rule.cu"
BACKENDS = _launch.BACKENDS
DTYPES = (np.float64, np.float32)
__all__ = ["MAX_SIZE", "forward", "backward", "kernel_names"]


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """The name expressions of every kernel of delta_rule.cu for ``dtype``."""
    F = _build.ctype(dtype)
    return tuple(f"delta_rule_{d}<{F}, {r}>" for d in ("forward", "backward")
                 for r in ("false", "true"))


def shared_forward(K: int, itemsize: int) -> Callable[[int], int]:
    """Bytes of delta_rule_forward: the columns and 2 × (q_t, k_t)."""
    return lambda VB: itemsize * (K * VB + 4 * K)


def shared_backward(K: int, itemsize: int) -> Callable[[int], int]:
    """Bytes of delta_rule_backward: dS columns, 2 reduction rows of K·(VB+1), 4 vectors."""
    return lambda VB: itemsize * (K * VB + 2 * K * (VB + 1) + 4 * K)


class KernelCache(NamedTuple):
    """What :func:`backward` needs: ``backend``; ``q, k, v``, ``g`` (a 1-element
    dummy when None), ``beta`` as the kernels read them (C-contiguous, one
    dtype); ``gated``; the input dtypes ``dtypes``; ``scale``; the checkpoint
    stride ``L`` and ``ckpt (B·H, ⌈T/L⌉, K, V)``, the state entering steps 0, L, …"""

    backend: str
    q: Any
    k: Any
    v: Any
    g: Any
    beta: Any
    gated: bool
    dtypes: dict
    scale: float
    L: int
    ckpt: Any


def _flag(kc: KernelCache) -> str:
    return "true" if kc.gated else "false"


def plan_forward(kc: KernelCache, S0: Any, o: Any, ST: Any) -> list[Launch]:
    """The launch that writes ``o``, ``ST`` and the checkpoints."""
    B, T, H, K = kc.q.shape
    V = kc.v.shape[-1]
    VB, nblk, shared = columns(V, shared_forward(K, o.dtype.itemsize))
    i64 = np.int64
    return [Launch(f"delta_rule_forward<{_build.ctype(o.dtype)}, {_flag(kc)}>",
                   grid_of(B, H, nblk), (VB,), shared,
                   (kc.q, kc.k, kc.v, kc.g, kc.beta, S0, o, ST, kc.ckpt,
                    o.dtype.type(kc.scale), i64(T), i64(H), i64(K), i64(V), i64(kc.L),
                    i64(nblk)))]


def plan_backward(kc: KernelCache, do: Any, dstate: Any, xp: Any
                  ) -> tuple[list[Launch], dict[str, Any]]:
    """The launch of delta_rule_backward and the arrays it writes: ``states``,
    ``dq``/``dk`` slice partials ``(B·H, nblk, T, K)``, ``dv (B, T, H, V)``,
    ``dbeta``/``dg`` per column ``(B·H, T, V)``, ``dS0 (B, H, K, V)``."""
    B, T, H, K = kc.q.shape
    V = kc.v.shape[-1]
    dtype = kc.q.dtype
    VB, nblk, shared = columns(V, shared_backward(K, dtype.itemsize))
    out = {"states": xp.empty((B * H, kc.L, K, V), dtype),
           "dq": xp.empty((B * H, nblk, T, K), dtype),
           "dk": xp.empty((B * H, nblk, T, K), dtype),
           "dv": xp.empty((B, T, H, V), dtype),
           "dbeta": xp.empty((B * H, T, V), dtype),
           "dg": xp.empty((B * H, T, V) if kc.gated else (1,), dtype),
           "dS0": xp.empty((B, H, K, V), dtype)}
    i64 = np.int64
    launch = Launch(f"delta_rule_backward<{_build.ctype(dtype)}, {_flag(kc)}>",
                    grid_of(B, H, nblk), (VB,), shared,
                    (kc.q, kc.k, kc.v, kc.g, kc.beta, kc.ckpt, do, dstate, out["states"],
                     out["dq"], out["dk"], out["dv"], out["dbeta"], out["dg"], out["dS0"],
                     dtype.type(kc.scale), i64(T), i64(H), i64(K), i64(V), i64(kc.L),
                     i64(nblk)))
    return [launch], out


def _per_head(col: Any, B: int, H: int) -> Any:
    # (B·H, T, V) column shares → their sum (B, T, H)
    BH, T, _ = col.shape
    return col.sum(axis=-1).reshape(B, H, T).transpose(0, 2, 1).copy()


def forward(q: Any, k: Any, v: Any, g: Any, beta: Any, initial_state: Any, *, scale: float,
            method: str = "recurrent", chunk_size: int = 64, backend: str | None = None
            ) -> tuple[Any, Any, KernelCache]:
    """The delta engine's forward (module docstring) on the CUDA kernels.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)`` (views allowed).
        g: ``None`` (DeltaNet) or ``(B, T, H)`` log decays (Gated DeltaNet).
        beta: ``(B, T, H)`` write strengths (``[0, 2]``).
        initial_state: ``(B, H, K, V)``.
        scale: the read-out factor.
        method: ``"recurrent"``.
        chunk_size: steps between two stored states (the backward's memory).
        backend: ``"cupy"``, ``"cuda-emulated"`` or None to follow the arrays.

    Returns:
        ``o (B, T, H, V)``, ``S_T (B, H, K, V)`` and the :class:`KernelCache`.
    """
    check_method("delta rule", method)
    arrays = {"q": q, "k": k, "v": v, "g": g, "beta": beta, "initial_state": initial_state}
    backend, xp = _launch.backend_and_xp(backend, **arrays)
    B, T, H, K = q.shape
    V = v.shape[-1]
    check_sizes(K, V)
    L = check_chunk(chunk_size, T)
    dtype = np.result_type(*(x.dtype for x in arrays.values() if x is not None))
    kc = KernelCache(backend, contiguous(xp, q, dtype), contiguous(xp, k, dtype),
                     contiguous(xp, v, dtype),
                     xp.zeros((1,), dtype) if g is None else contiguous(xp, g, dtype),
                     contiguous(xp, beta, dtype), g is not None,
                     {n: x.dtype for n, x in arrays.items() if x is not None}, float(scale), L,
                     xp.empty((B * H, ceil_div(T, L), K, V), dtype))
    o = xp.empty((B, T, H, V), dtype)
    ST = xp.empty((B, H, K, V), dtype)
    S0 = contiguous(xp, initial_state, dtype)
    if B * H * T * K * V == 0:
        o[...] = 0
        ST[...] = S0
    else:
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        for launch in plan_forward(kc, S0, o, ST):
            _launch.run(module, launch)
    return o, ST, kc


def backward(cache: KernelCache, do: Any, dstate: Any, backend: str | None = None
             ) -> dict[str, Any]:
    """Gradients of :func:`forward` from ``do (B, T, H, V)`` and ``dstate
    (B, H, K, V)``: ``{"q", "k", "v", "g", "beta", "initial_state"}``, each in
    its input's dtype (``g`` None when it was None)."""
    kc = cache
    backend, xp = _launch.backend_and_xp(backend or kc.backend, do=do, dstate=dstate)
    B, T, H, K = kc.q.shape
    V = kc.v.shape[-1]
    dtype = kc.q.dtype
    do = contiguous(xp, do, dtype)
    dstate = contiguous(xp, dstate, dtype)
    if B * H * T * K * V == 0:
        dq, dk, dv = (xp.zeros(x.shape, dtype) for x in (kc.q, kc.k, kc.v))
        dbeta, dS0 = xp.zeros(kc.beta.shape, dtype), dstate.copy()
        dg = xp.zeros(kc.beta.shape, dtype) if kc.gated else None
    else:
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        plan, out = plan_backward(kc, do, dstate, xp)
        for launch in plan:
            _launch.run(module, launch)
        dq, dk, dv, dS0 = to_bthx(out["dq"], B, H), to_bthx(out["dk"], B, H), out["dv"], \
            out["dS0"]
        dbeta = _per_head(out["dbeta"], B, H)
        dg = _per_head(out["dg"], B, H) if kc.gated else None
    t = kc.dtypes
    return {"q": dq.astype(t["q"], copy=False), "k": dk.astype(t["k"], copy=False),
            "v": dv.astype(t["v"], copy=False),
            "g": None if dg is None else dg.astype(t["g"], copy=False),
            "beta": dbeta.astype(t["beta"], copy=False),
            "initial_state": dS0.astype(t["initial_state"], copy=False)}
