"""CUDA kernels (mlstm.cu) for the mLSTM recurrence (xLSTM's matrix memory), on
``backend="cupy"`` or ``"cuda-emulated"``.

Tested against :func:`minirec.ops.mlstm.run` / ``run_backward`` with
``backend="numpy"`` (tests/kernels/test_cuda_matrix.py): on the CPU through the
emulator, on a GPU through CuPy (``pytest -m gpu``).

Per batch row and head, ``q, k (B, T, H, K)``, ``v (B, T, H, V)``, gate
pre-activations ``i, f (B, T, H)``, state ``C (B, H, K, V)``, ``n (B, H, K)``,
``m (B, H)``:

    lf_t = log σ(f_t);  m_t = max(lf_t + m_{t−1}, i_t)
    a_t = e^{lf_t + m_{t−1} − m_t};  b_t = e^{i_t − m_t}
    C_t = a_t C_{t−1} + b_t k_t v_t^T;     n_t = a_t n_{t−1} + b_t k_t
    h_t = C_t^T q̃_t / max(|n_t · q̃_t|, e^{−m_t}),   q̃_t = scale · q_t

Backward: the equations of :mod:`minirec.ops.mlstm.recurrent` (mlstm.cu's
header repeats them): ``hd_t = Σ_V dh_t ⊙ h_t`` is formed here, the matrix part
runs in ``mlstm_backward``, the scalar chain of ``m`` (``di``, ``df``, ``dm0``)
in ``mlstm_gates_backward``.

``method="recurrent"`` only: the scalar chain ``m_t, a_t, b_t`` first (one
thread per (b, h)), then one block per (b, h, slice of ≤ 32 columns of C),
thread ``j`` owning column ``j`` in shared memory and ``n`` kept by every block;
the backward replays chunks of ``chunk_size`` states of ``C`` from the
forward's checkpoints (``n_t`` for every t is kept: ``B·T·H·K`` numbers, as
``q``). ``K, V ≤`` :data:`MAX_SIZE`. This module imports nothing from minirec
outside ``minirec.kernels``.
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
SOURCE = "mlstm.cu"
BACKENDS = _launch.BACKENDS
DTYPES = (np.float64, np.float32)
__all__ = ["MAX_SIZE", "forward", "backward", "kernel_names"]


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """The name expressions of every kernel of mlstm.cu for ``dtype``."""
    F = _build.ctype(dtype)
    return tuple(f"mlstm_{d}<{F}>" for d in ("gates", "forward", "backward", "gates_backward"))


def shared_forward(K: int, itemsize: int) -> Callable[[int], int]:
    """Bytes of mlstm_forward: the columns and 2 × (q̃_t, k_t, n_t)."""
    return lambda VB: itemsize * (K * VB + 6 * K)


def shared_backward(K: int, itemsize: int) -> Callable[[int], int]:
    """Bytes of mlstm_backward: dC columns, 2 reduction rows of K·(VB+1), dn and 4 vectors."""
    return lambda VB: itemsize * (K * VB + 2 * K * (VB + 1) + 5 * K)


class KernelCache(NamedTuple):
    """What :func:`backward` needs: ``backend``; ``q, k, v, i, f`` as the kernels
    read them (C-contiguous, one dtype); ``m0 (B·H)``, ``n0 (B, H, K)``; the
    input dtypes ``dtypes``; ``scale``; the output ``h``; the gate chain
    ``m, a, b (B·H, T)``; ``n (B·H, T, K)`` (n_t for every t), ``d, den (B·H, T)``;
    the checkpoint stride ``L`` and ``ckpt (B·H, ⌈T/L⌉, K, V)`` (C entering
    steps 0, L, …)."""

    backend: str
    q: Any
    k: Any
    v: Any
    i: Any
    f: Any
    m0: Any
    n0: Any
    dtypes: dict
    scale: float
    h: Any
    m: Any
    a: Any
    b: Any
    n: Any
    d: Any
    den: Any
    L: int
    ckpt: Any


def plan_forward(kc: KernelCache, C0: Any, CT: Any, nT: Any) -> list[Launch]:
    """The launches that write the gate chain, ``h``, ``CT``, ``nT`` and what
    the backward keeps (``kc``'s arrays)."""
    B, T, H, K = kc.q.shape
    V = kc.v.shape[-1]
    dtype = kc.q.dtype
    F = _build.ctype(dtype)
    VB, nblk, shared = columns(V, shared_forward(K, dtype.itemsize))
    grid, block = _launch.one_thread_per_item(B * H, 64)
    i64 = np.int64
    return [
        Launch(f"mlstm_gates<{F}>", grid, block, 0,
               (kc.i, kc.f, kc.m0, kc.m, kc.a, kc.b, i64(B * H), i64(T), i64(H))),
        Launch(f"mlstm_forward<{F}>", grid_of(B, H, nblk), (VB,), shared,
               (kc.q, kc.k, kc.v, kc.m, kc.a, kc.b, C0, kc.n0, kc.h, CT, nT, kc.ckpt, kc.n,
                kc.d, kc.den, dtype.type(kc.scale), i64(T), i64(H), i64(K), i64(V),
                i64(kc.L), i64(nblk))),
    ]


def plan_backward(kc: KernelCache, dh: Any, hd: Any, dC: Any, dn: Any, dm: Any, xp: Any
                  ) -> tuple[list[Launch], list[Launch], dict[str, Any]]:
    """The launch of mlstm_backward, the one of mlstm_gates_backward (after
    mlstm.py has summed ``da``/``db`` over the columns into ``out["da"]``,
    ``out["db"]``), and the arrays they write."""
    B, T, H, K = kc.q.shape
    V = kc.v.shape[-1]
    dtype = kc.q.dtype
    F = _build.ctype(dtype)
    VB, nblk, shared = columns(V, shared_backward(K, dtype.itemsize))
    e = xp.empty
    out = {"states": e((B * H, kc.L, K, V), dtype),
           "dq": e((B * H, nblk, T, K), dtype), "dk": e((B * H, nblk, T, K), dtype),
           "dv": e((B, T, H, V), dtype),
           "da_col": e((B * H, T, nblk * VB), dtype), "db_col": e((B * H, T, nblk * VB), dtype),
           "dm_den": e((B * H, T), dtype), "da": e((B * H, T), dtype),
           "db": e((B * H, T), dtype), "dC0": e((B, H, K, V), dtype),
           "dn0": e((B, H, K), dtype), "di": e((B, T, H), dtype), "df": e((B, T, H), dtype),
           "dm0": e((B * H,), dtype)}
    i64 = np.int64
    main = Launch(f"mlstm_backward<{F}>", grid_of(B, H, nblk), (VB,), shared,
                  (kc.q, kc.k, kc.v, kc.m, kc.a, kc.b, kc.n, kc.n0, kc.d, kc.den, hd, kc.ckpt,
                   dh, dC, dn, out["states"], out["dq"], out["dk"], out["dv"], out["da_col"],
                   out["db_col"], out["dm_den"], out["dC0"], out["dn0"],
                   dtype.type(kc.scale), i64(T), i64(H), i64(K), i64(V), i64(kc.L),
                   i64(nblk)))
    grid, block = _launch.one_thread_per_item(B * H, 64)
    gates = Launch(f"mlstm_gates_backward<{F}>", grid, block, 0,
                   (kc.i, kc.f, kc.m0, kc.m, kc.a, kc.b, out["da"], out["db"], out["dm_den"],
                    dm, out["di"], out["df"], out["dm0"], i64(B * H), i64(T), i64(H)))
    return [main], [gates], out


def forward(q: Any, k: Any, v: Any, i: Any, f: Any, initial_state: tuple, *, scale: float,
            method: str = "recurrent", chunk_size: int = 64, backend: str | None = None
            ) -> tuple[Any, tuple, KernelCache]:
    """The mLSTM forward (module docstring) on the CUDA kernels.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)`` (views allowed).
        i, f: ``(B, T, H)`` input and forget gate pre-activations.
        initial_state: ``(C0 (B, H, K, V), n0 (B, H, K), m0 (B, H))``.
        scale: the query factor (``q̃ = scale · q``).
        method: ``"recurrent"``.
        chunk_size: steps between two stored states of ``C``.
        backend: ``"cupy"``, ``"cuda-emulated"`` or None to follow the arrays.

    Returns:
        ``h (B, T, H, V)``, the final state ``(C, n, m)`` and the :class:`KernelCache`.
    """
    check_method("mLSTM", method)
    C0, n0, m0 = initial_state
    arrays = {"q": q, "k": k, "v": v, "i": i, "f": f, "C0": C0, "n0": n0, "m0": m0}
    backend, xp = _launch.backend_and_xp(backend, **arrays)
    B, T, H, K = q.shape
    V = v.shape[-1]
    check_sizes(K, V)
    L = check_chunk(chunk_size, T)
    dtype = np.result_type(*(x.dtype for x in arrays.values()))
    c = lambda x: contiguous(xp, x, dtype)  # noqa: E731
    e = lambda *shape: xp.empty(shape, dtype)  # noqa: E731
    kc = KernelCache(backend, c(q), c(k), c(v), c(i), c(f), c(m0).reshape(B * H), c(n0),
                     {n: x.dtype for n, x in arrays.items()}, float(scale), e(B, T, H, V),
                     e(B * H, T), e(B * H, T), e(B * H, T), e(B * H, T, K), e(B * H, T),
                     e(B * H, T), L, e(B * H, ceil_div(T, L), K, V))
    CT, nT = e(B, H, K, V), e(B, H, K)
    if B * H * T * K * V == 0:
        kc.h[...] = 0
        CT[...], nT[...], mT = c(C0), kc.n0, c(m0).copy()
    else:
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        for launch in plan_forward(kc, c(C0), CT, nT):
            _launch.run(module, launch)
        mT = kc.m[:, -1].reshape(B, H).copy()
    return kc.h, (CT, nT, mT), kc


def backward(cache: KernelCache, do: Any, dstate: tuple, backend: str | None = None
             ) -> dict[str, Any]:
    """Gradients of :func:`forward` from ``do (B, T, H, V)`` and ``dstate = (dC
    (B, H, K, V), dn (B, H, K), dm (B, H))``: ``{"q", "k", "v", "i", "f",
    "initial_state": (dC0, dn0, dm0)}``, each in its input's dtype."""
    kc = cache
    dC, dn, dm = dstate
    backend, xp = _launch.backend_and_xp(backend or kc.backend, do=do, dC=dC, dn=dn, dm=dm)
    B, T, H, K = kc.q.shape
    V = kc.v.shape[-1]
    dtype = kc.q.dtype
    c = lambda x: contiguous(xp, x, dtype)  # noqa: E731
    do = c(do)
    if B * H * T * K * V == 0:
        z = lambda x: xp.zeros(x.shape, dtype)  # noqa: E731
        grads = {"q": z(kc.q), "k": z(kc.k), "v": z(kc.v), "i": z(kc.i), "f": z(kc.f)}
        dC0, dn0, dm0 = c(dC).copy(), c(dn).copy(), c(dm).copy()
    else:
        # hd_t = Σ_V dh_t ⊙ h_t, per (b, h) row: (B·H, T)
        hd = xp.ascontiguousarray((do * kc.h).sum(axis=-1).transpose(0, 2, 1)).reshape(B * H, T)
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        main, gates, out = plan_backward(kc, do, hd, c(dC), c(dn), c(dm).reshape(B * H), xp)
        for launch in main:
            _launch.run(module, launch)
        out["da"][...] = out["da_col"].sum(axis=-1)
        out["db"][...] = out["db_col"].sum(axis=-1)
        for launch in gates:
            _launch.run(module, launch)
        grads = {"q": to_bthx(out["dq"], B, H), "k": to_bthx(out["dk"], B, H),
                 "v": out["dv"], "i": out["di"], "f": out["df"]}
        dC0, dn0, dm0 = out["dC0"], out["dn0"], out["dm0"].reshape(B, H)
    t = kc.dtypes
    grads = {n: x.astype(t[n], copy=False) for n, x in grads.items()}
    grads["initial_state"] = (dC0.astype(t["C0"], copy=False), dn0.astype(t["n0"], copy=False),
                              dm0.astype(t["m0"], copy=False))
    return grads
