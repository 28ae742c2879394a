"""CUDA kernels (gla.cu) for the GLA engine's recurrent form: linear attention, RetNet,
(simple) GLA and RWKV-6's read order, on ``backend="cupy"`` or ``"cuda-emulated"``.

Tested against :func:`minirec.ops.gla.run` / ``run_backward`` with
``backend="numpy"`` (tests/kernels/test_cuda_matrix.py): on the CPU through the
emulator, on a GPU through CuPy (``pytest -m gpu``).

Per batch row and head, ``q, k (B, T, H, K)``, ``v (B, T, H, V)``, state
``S (B, H, K, V)`` K-first, ``a_t = e^{g_t}`` with ``g`` ``None``, ``(B, T, H)``
or ``(B, T, H, K)``:

    GLA mode (u None):    S_t = Diag(a_t) S_{t−1} + k_t v_t^T,   o_t = scale · S_t^T q_t
    RWKV mode (u (H, K)): o_t = scale · S_{t−1}^T q_t + scale · (q_t · (u ⊙ k_t)) v_t,
                          then S_t as above

Backward (``dS`` = ∂L/∂S_t from ``dstate``): GLA ``dS += scale·q_t do_t^T``,
``dq_t = scale·S_t do_t``; both ``dk_t = dS v_t``, ``dv_t = dS^T k_t``,
``dg_t = Σ_V dS ⊙ (a_t S_{t−1})``, ``dS ← Diag(a_t) dS``; RWKV ``dq_t = scale ·
S_{t−1} do_t``, then ``dS += scale·q_t do_t^T``. The RWKV bonus needs no state
and is computed here with the array module: ``c_t = scale·(v_t·do_t)``,
``dq_t += c_t u⊙k_t``, ``dk_t += c_t u⊙q_t``, ``dv_t += scale·(q_t·(u⊙k_t)) do_t``,
``du = Σ_{B,T} c_t q_t⊙k_t``.

``method="recurrent"`` (the only one; :data:`METHODS`), the decoding path: one
block per (b, h, slice of ≤ 32 columns of S); thread ``j`` owns column ``j`` of
``S`` in shared memory and walks its ``K`` rows (gla.cu's header has the
details). The forward stores the state every ``chunk_size`` steps; the
backward replays one chunk of states at a time from those checkpoints (memory
``B·H·chunk_size·K·V``, never ``B·T·H·K·V``) and walks it in reverse with
``dS`` in shared memory. ``K`` and ``V`` are at most :data:`MAX_SIZE`.

The helpers :func:`columns`, :func:`check_sizes`, :func:`contiguous`,
:func:`check_method` and :func:`to_bthx` serve delta_rule.py and mlstm.py too.
This module imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda._launch import Launch, ceil_div

METHODS = ("recurrent",)
SOURCE = "gla.cu"
BACKENDS = _launch.BACKENDS
DTYPES = (np.float64, np.float32)
MAX_SIZE = 256               # K and V: the kernels walk a column of K rows per thread
MAX_COLUMNS = 32             # threads (columns of S) per block
SHARED_LIMIT = 48 * 1024     # the default dynamic shared memory of a block


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """The name expressions of every kernel of gla.cu for ``dtype``."""
    F = _build.ctype(dtype)
    return tuple(f"gla_{d}<{F}, {r}>" for d in ("forward", "backward")
                 for r in ("false", "true"))


# ---------------------------------------------------------------------------
# helpers shared by the matrix-state families (gla, delta_rule, mlstm)
# ---------------------------------------------------------------------------

def check_method(family: str, method: str) -> None:
    """``ValueError`` unless ``method`` is one the CUDA kernels implement."""
    if method not in METHODS:
        raise ValueError(f"method: the CUDA {family} kernels implement {METHODS}, "
                         f"got {method!r}")


def check_sizes(K: int, V: int) -> None:
    """``ValueError`` when a head size is beyond :data:`MAX_SIZE`."""
    for name, what, n in (("q", "key size K", K), ("v", "value size V", V)):
        if n > MAX_SIZE:
            raise ValueError(f"{name}: expected a {what} of at most {MAX_SIZE} for the CUDA "
                             f"kernels (a thread walks a column of the state), got {n}")


def check_chunk(chunk_size: Any, T: int) -> int:
    """The checkpoint stride: ``chunk_size`` steps, at most ``T`` (at least 1)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) \
            or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
    return max(1, min(int(chunk_size), T))


def columns(V: int, shared_bytes: Callable[[int], int]) -> tuple[int, int, int]:
    """``(VB, nblk, shared)``: ``VB`` columns (threads) per block, a power of two
    ≤ :data:`MAX_COLUMNS` and ≤ V rounded up, halved until ``shared_bytes(VB)``
    fits :data:`SHARED_LIMIT`; ``nblk = ⌈V / VB⌉`` slices."""
    VB = min(MAX_COLUMNS, 1 << max(0, int(V) - 1).bit_length())
    while VB > 1 and shared_bytes(VB) > SHARED_LIMIT:
        VB //= 2
    if shared_bytes(VB) > SHARED_LIMIT:  # unreachable for K ≤ MAX_SIZE in double
        raise ValueError(f"q: expected head sizes whose step vectors fit {SHARED_LIMIT} bytes "
                         f"of shared memory, got {shared_bytes(VB)} bytes")
    return VB, ceil_div(max(V, 1), VB), shared_bytes(VB)


def contiguous(xp: Any, x: Any, dtype: Any) -> Any:
    """``x`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return xp.ascontiguousarray(x.astype(dtype, copy=False))


def to_bthx(part: Any, B: int, H: int) -> Any:
    """``(B·H, nblk, T, X)`` slice partials → their sum ``(B, T, H, X)``, C-contiguous."""
    BH, _, T, X = part.shape
    total = part[:, 0] if part.shape[1] == 1 else part.sum(axis=1)
    return total.reshape(B, H, T, X).transpose(0, 2, 1, 3).copy()


def grid_of(B: int, H: int, nblk: int) -> tuple[int]:
    """The grid ``(B·H·nblk,)``, checked against CUDA's limit."""
    n = B * H * nblk
    if n > _launch.MAX_GRID_X:
        raise ValueError(f"q: expected at most {_launch.MAX_GRID_X} blocks B·H·⌈V/VB⌉, got {n}")
    return (n,)


# ---------------------------------------------------------------------------
# launch plans
# ---------------------------------------------------------------------------

def shared_forward(K: int, itemsize: int) -> Callable[[int], int]:
    """Bytes of shared memory of gla_forward: the columns, 2 × (q_t, k_t, a_t)."""
    return lambda VB: itemsize * (K * VB + 6 * K)


def shared_backward(K: int, gated: bool, itemsize: int) -> Callable[[int], int]:
    """Bytes of gla_backward: dS columns, 2–3 reduction rows of K·(VB+1), 7 vectors."""
    R = 3 if gated else 2
    return lambda VB: itemsize * (K * VB + R * K * (VB + 1) + 7 * K)


class KernelCache(NamedTuple):
    """What :func:`backward` needs: ``backend``; the inputs as the kernels read
    them (``q, k, v``, ``g`` or a 1-element dummy, C-contiguous, ``dtype``);
    ``g_shape`` (None when ``g`` was None), ``u`` as given, the input dtypes
    ``dtypes`` (for the gradients), ``scale``, the checkpoint stride ``L`` and
    ``ckpt (B·H, ⌈T/L⌉, K, V)``: the state entering steps 0, L, 2L, …"""

    backend: str
    q: Any
    k: Any
    v: Any
    g: Any
    g_shape: tuple | None
    u: Any
    dtypes: dict
    scale: float
    L: int
    ckpt: Any


def _gate_kind(g_shape: tuple | None) -> int:
    return 0 if g_shape is None else 1 if len(g_shape) == 3 else 2


def plan_forward(kc: KernelCache, S0: Any, o: Any, ST: Any) -> list[Launch]:
    """The launch that writes ``o (B, T, H, V)``, ``ST (B, H, K, V)`` and the checkpoints."""
    B, T, H, K = kc.q.shape
    V = kc.v.shape[-1]
    F = _build.ctype(o.dtype)
    VB, nblk, shared = columns(V, shared_forward(K, o.dtype.itemsize))
    i64 = np.int64
    return [Launch(f"gla_forward<{F}, {'true' if kc.u is not None else 'false'}>",
                   grid_of(B, H, nblk), (VB,), shared,
                   (kc.q, kc.k, kc.v, kc.g, S0, o, ST, kc.ckpt, o.dtype.type(kc.scale),
                    np.int32(_gate_kind(kc.g_shape)), i64(T), i64(H), i64(K), i64(V),
                    i64(kc.L), i64(nblk)))]


def plan_backward(kc: KernelCache, do: Any, dstate: Any, xp: Any
                  ) -> tuple[list[Launch], dict[str, Any]]:
    """The launch of gla_backward and the arrays it writes: ``states`` (the
    replay buffer), ``dq``/``dk``/``dg`` slice partials ``(B·H, nblk, T, K)``,
    ``dv (B, T, H, V)``, ``dS0 (B, H, K, V)``."""
    B, T, H, K = kc.q.shape
    V = kc.v.shape[-1]
    dtype = kc.q.dtype
    F = _build.ctype(dtype)
    G = _gate_kind(kc.g_shape)
    VB, nblk, shared = columns(V, shared_backward(K, G != 0, dtype.itemsize))
    out = {"states": xp.empty((B * H, kc.L, K, V), dtype),
           "dq": xp.empty((B * H, nblk, T, K), dtype),
           "dk": xp.empty((B * H, nblk, T, K), dtype),
           "dg": xp.empty((B * H, nblk, T, K) if G else (1,), dtype),
           "dv": xp.empty((B, T, H, V), dtype),
           "dS0": xp.empty((B, H, K, V), dtype)}
    i64 = np.int64
    launch = Launch(f"gla_backward<{F}, {'true' if kc.u is not None else 'false'}>",
                    grid_of(B, H, nblk), (VB,), shared,
                    (kc.q, kc.k, kc.v, kc.g, kc.ckpt, do, dstate, out["states"], out["dq"],
                     out["dk"], out["dg"], out["dv"], out["dS0"], dtype.type(kc.scale),
                     np.int32(G), i64(T), i64(H), i64(K), i64(V), i64(kc.L), i64(nblk)))
    return [launch], out


# ---------------------------------------------------------------------------
# the engine's kernel API
# ---------------------------------------------------------------------------

def forward(q: Any, k: Any, v: Any, g: Any, u: Any, initial_state: Any, *, scale: float,
            method: str = "recurrent", chunk_size: int = 64, backend: str | None = None
            ) -> tuple[Any, Any, KernelCache]:
    """The GLA engine's forward (module docstring) on the CUDA kernels.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)`` (views allowed).
        g: ``None``, ``(B, T, H)`` or ``(B, T, H, K)`` log decays.
        u: ``None`` (GLA mode) or ``(H, K)`` (RWKV mode).
        initial_state: ``(B, H, K, V)``.
        scale: the read-out factor.
        method: ``"recurrent"``.
        chunk_size: steps between two stored states (the backward's memory).
        backend: ``"cupy"`` (CuPy arrays), ``"cuda-emulated"`` (NumPy arrays)
            or None to follow the arrays.

    Returns:
        ``o (B, T, H, V)``, ``S_T (B, H, K, V)`` (the common dtype) and the
        :class:`KernelCache`.
    """
    check_method("GLA", method)
    arrays = {"q": q, "k": k, "v": v, "g": g, "u": u, "initial_state": initial_state}
    backend, xp = _launch.backend_and_xp(backend, **arrays)
    B, T, H, K = q.shape
    V = v.shape[-1]
    check_sizes(K, V)
    L = check_chunk(chunk_size, T)
    dtype = np.result_type(*(x.dtype for x in arrays.values() if x is not None))
    kc = KernelCache(backend, contiguous(xp, q, dtype), contiguous(xp, k, dtype),
                     contiguous(xp, v, dtype),
                     xp.zeros((1,), dtype) if g is None else contiguous(xp, g, dtype),
                     None if g is None else tuple(g.shape), u,
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
    if u is not None:  # the bonus of the current token: scale · (q_t · (u ⊙ k_t)) v_t
        bonus = (kc.q * contiguous(xp, u, dtype) * kc.k).sum(axis=-1)
        o += kc.scale * bonus[..., None] * kc.v
    return o, ST, kc


def backward(cache: KernelCache, do: Any, dstate: Any, backend: str | None = None
             ) -> dict[str, Any]:
    """Gradients of :func:`forward` (module docstring) from ``do (B, T, H, V)``
    and ``dstate (B, H, K, V)``: ``{"q", "k", "v", "g", "u", "initial_state"}``,
    each in its input's dtype (``g``/``u`` None when they were None; ``du``
    summed over B and T)."""
    kc = cache
    backend, xp = _launch.backend_and_xp(backend or kc.backend, do=do, dstate=dstate)
    B, T, H, K = kc.q.shape
    V = kc.v.shape[-1]
    dtype = kc.q.dtype
    do = contiguous(xp, do, dtype)
    dstate = contiguous(xp, dstate, dtype)
    G = _gate_kind(kc.g_shape)
    if B * H * T * K * V == 0:
        dq, dk = xp.zeros(kc.q.shape, dtype), xp.zeros(kc.k.shape, dtype)
        dv, dgk, dS0 = xp.zeros(kc.v.shape, dtype), xp.zeros(kc.q.shape, dtype), dstate.copy()
    else:
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        plan, out = plan_backward(kc, do, dstate, xp)
        for launch in plan:
            _launch.run(module, launch)
        dq, dk, dv, dS0 = to_bthx(out["dq"], B, H), to_bthx(out["dk"], B, H), out["dv"], \
            out["dS0"]
        dgk = to_bthx(out["dg"], B, H) if G else None
    du = None
    if kc.u is not None:
        u = contiguous(xp, kc.u, dtype)
        c = kc.scale * (kc.v * do).sum(axis=-1)[..., None]            # (B, T, H, 1)
        dq += c * u * kc.k
        dk += c * u * kc.q
        dv += (kc.scale * (kc.q * u * kc.k).sum(axis=-1))[..., None] * do
        du = (c * kc.q * kc.k).sum(axis=(0, 1))
    dg = None if G == 0 else dgk.sum(axis=-1) if G == 1 else dgk
    t = kc.dtypes
    grads = {"q": dq.astype(t["q"], copy=False), "k": dk.astype(t["k"], copy=False),
             "v": dv.astype(t["v"], copy=False),
             "g": None if dg is None else dg.astype(t["g"], copy=False),
             "u": None if du is None else du.astype(t["u"], copy=False),
             "initial_state": dS0.astype(t["initial_state"], copy=False)}
    return grads
