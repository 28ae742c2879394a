"""CUDA kernels for Mamba-1's selective scan (selective_scan.cu), forward and backward.

    Δ_t = softplus(delta_t + delta_bias),   h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t u_t B_t,
    y_t = (C_t · h_t + D u_t) ⊙ silu(z_t)

— :func:`minirec.ops.selective_scan.forward` / ``backward`` with
``method="recurrent"`` (the module docstring there has the backward
equations), against which these kernels are tested
(tests/kernels/test_cuda_selective_scan.py and the contract tests): on the CPU
through the emulator, on a GPU through CuPy (``pytest -m gpu``).
:func:`forward` and :func:`backward` take the arguments of the Numba wrapper
(:mod:`minirec.kernels.numba.selective_scan`) and return its structure, plus
``backend``: CuPy arrays run on the GPU (``backend="cupy"``), NumPy arrays the
same kernels in the CPU emulator (``backend="cuda-emulated"``). The launch
plans (:func:`plan_forward`, :func:`plan_backward`) are computed here, once,
for both.

Design (details in selective_scan.cu):

* one thread per (channel, state) lane: a block holds one batch row and ``G``
  channels, each channel on ``P`` lanes of one warp (``P`` = N rounded up to
  a power of 2 for N ≤ 32; ``P = 32`` with ``R`` = 2, 4 or 8 states per lane
  for N ≤ 256), so ``y_t = C_t · h_t`` and the backward's sums over N are
  warp shuffles (:func:`geometry`);
* time in chunks of ``L`` steps whose inputs are staged in shared memory by
  coalesced tile loads (Δ, silu(z) computed once per (t, d));
* the forward stores the state entering each chunk (``checkpoints``, 1/L of
  all states); the backward goes over the chunks last to first, recomputes a
  chunk's states from its checkpoint, then runs the reverse recurrence;
* ``dB``, ``dC`` (sums over the channels), ``dA``, ``dD``, ``ddelta_bias``
  (sums over the batch rows) are reduced by shuffles and shared memory inside
  a block and by one partial per block summed in a fixed order afterwards
  (``selective_scan_sum_parts``): no atomics, so a backward gives the same
  bits every time, and the emulator runs the same operations in the same
  order (only CUDA's ``exp``/``log1p`` and the C library's may differ in the
  last bit).

Memory beyond the inputs and outputs: the checkpoints ``(B, ⌈T/L⌉, D, N)``
(kept in the cache until the backward) and, during the backward, the partial
``dB``, ``dC`` of every channel group, ``(⌈D/G⌉, B, T, N)`` each (at D = 1536,
N = 16: 96 groups, as large as ``u`` each; atomics would avoid them at the
price of run-to-run differences).

This module imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda._launch import Launch, ceil_div, round_up

SOURCE = "selective_scan.cu"
BACKENDS = _launch.BACKENDS
# the dtypes the kernels are instantiated for (name_expressions; the compile checks)
DTYPES = (np.float64, np.float32)
STATES_PER_LANE = (1, 2, 4, 8)          # R: the kernels' template argument
MAX_N = _launch.WARP * STATES_PER_LANE[-1]   # 256 states: a warp of lanes, 8 states each
BLOCK_STATES = 256   # (channel, state) pairs per block: 8 warps at N = 16 (Mamba's d_state)
MAX_CHUNK = 64       # steps per chunk at most: checkpoints then cost 1/64 of all states
SHARED_BUDGET = 48 * 1024  # bytes of dynamic shared memory a launch gets without opting in
SUM_THREADS = 256


def kernel_names(dtype: Any) -> tuple[str, ...]:
    """The name expressions of every kernel of selective_scan.cu for ``dtype``."""
    S = _build.ctype(dtype)
    return (*(f"selective_scan_forward<{S}, {R}>" for R in STATES_PER_LANE),
            *(f"selective_scan_backward<{S}, {R}>" for R in STATES_PER_LANE),
            f"selective_scan_sum_parts<{S}>")


class Geometry(NamedTuple):
    """How the kernels cut a problem: ``R`` states per lane, ``P`` lanes per
    channel, ``G`` channels per block (``threads = G·P``), ``groups =
    ⌈Dch/G⌉`` blocks per batch row, chunks of ``L`` steps (``chunks = ⌈T/L⌉``)."""

    R: int
    P: int
    G: int
    threads: int
    groups: int
    L: int
    chunks: int


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def shared_forward(geo: Geometry, N: int, itemsize: int) -> int:
    """Bytes of dynamic shared memory of the forward kernel: the (t, d) tiles
    Δ, Δu, u, silu(z), y and the (t, n) tiles B, C of one chunk."""
    return itemsize * (5 * geo.L * geo.G + 2 * geo.L * N)


def _shared_backward(L: int, R: int, P: int, G: int, N: int, itemsize: int) -> int:
    threads = G * P
    warps = threads // _launch.WARP
    return itemsize * ((L + 1) * R * threads      # the chunk's states, per thread
                       + 8 * L * G                # (t, d) tiles: 5 staged, 3 results
                       + 2 * L * N                # B, C
                       + 4 * warps * P * R)       # two banks of the warps' dB, dC sums


def shared_backward(geo: Geometry, N: int, itemsize: int) -> int:
    """Bytes of dynamic shared memory of the backward kernel."""
    return _shared_backward(geo.L, geo.R, geo.P, geo.G, N, itemsize)


def geometry(T: int, Dch: int, N: int, dtype: Any, chunk: int | None = None) -> Geometry:
    """The :class:`Geometry` for ``T`` steps, ``Dch`` channels, ``N`` states.

    ``chunk``: steps per chunk (checkpoint interval); None takes the longest
    chunk, at most :data:`MAX_CHUNK`, whose backward fits
    :data:`SHARED_BUDGET`. Raises ``ValueError`` for ``N >`` :data:`MAX_N` or
    a ``chunk`` too long for the shared memory.
    """
    if N > MAX_N:
        raise ValueError(f"A: the CUDA selective scan expected at most {MAX_N} states "
                         f"(A of shape (D, N <= {MAX_N})), got N = {N}")
    if N <= _launch.WARP:
        R, P = 1, _pow2(max(N, 1))
    else:
        R, P = _pow2(ceil_div(N, _launch.WARP)), _launch.WARP
    per_warp = _launch.WARP // P            # channels sharing one warp
    G = max(per_warp, BLOCK_STATES // (P * R))
    G = min(G, max(per_warp, round_up(Dch, per_warp)))  # no wider than the channels
    itemsize = np.dtype(dtype).itemsize
    fits = lambda L: _shared_backward(L, R, P, G, N, itemsize) <= SHARED_BUDGET  # noqa: E731
    if chunk is None:
        L = max(L for L in range(1, MAX_CHUNK + 1) if L == 1 or fits(L))
    else:
        L = int(chunk)
        if L < 1 or not fits(min(L, T)):
            longest = max(L for L in range(1, MAX_CHUNK + 1) if L == 1 or fits(L))
            raise ValueError(f"chunk: expected 1 to {longest} steps (the backward's shared "
                             f"memory for N = {N}, {np.dtype(dtype)}), got {chunk}")
    L = min(L, T)
    return Geometry(R, P, G, G * P, ceil_div(Dch, G), L, ceil_div(T, L))


# ---------------------------------------------------------------------------
# launch plans (the same for CuPy and the emulator)
# ---------------------------------------------------------------------------

class KernelCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward` (the definition keeps
    it in its cache's ``kernel`` field).

    Fields: the arrays the forward ran on, C-contiguous in the computation
    dtype (``u, delta (B, T, D)``, ``A (D, N)``, ``B, C (B, T, N)``; ``D``,
    ``z``, ``delta_bias`` as given or a 1-element placeholder when absent);
    ``checkpoints (B, chunks, D, N)`` the state entering each chunk;
    ``has_D``, ``has_z``, ``has_delta_bias``, ``delta_softplus``;
    ``geometry`` (:class:`Geometry`); ``backend``.
    """

    u: Any
    delta: Any
    A: Any
    B: Any
    C: Any
    D: Any
    z: Any
    delta_bias: Any
    checkpoints: Any
    has_D: bool
    has_z: bool
    has_delta_bias: bool
    delta_softplus: bool
    geometry: Geometry
    backend: str


def _sizes(kc: KernelCache) -> tuple:
    # T, Dch as long long; the per-block sizes N, P, G, L and the flags as int
    T, Dch = kc.u.shape[1:]
    geo, i32 = kc.geometry, np.int32
    return (np.int64(T), np.int64(Dch), i32(kc.A.shape[1]), i32(geo.P), i32(geo.G), i32(geo.L),
            i32(kc.has_D), i32(kc.has_z), i32(kc.has_delta_bias), i32(kc.delta_softplus))


def plan_forward(kc: KernelCache, h0: Any, y: Any, h_T: Any) -> list[Launch]:
    """The launch that writes ``y (B, T, D)``, ``h_T (B, D, N)`` and
    ``kc.checkpoints`` from the inputs in ``kc`` and ``h0 (B, D, N)``."""
    Bsz = kc.u.shape[0]
    geo = kc.geometry
    if Bsz * geo.groups > _launch.MAX_GRID_X:
        raise ValueError(f"u: expected at most {_launch.MAX_GRID_X} blocks (batch rows × "
                         f"groups of {geo.G} channels), got {Bsz} × {geo.groups}")
    return [Launch(f"selective_scan_forward<{_build.ctype(y.dtype)}, {geo.R}>",
                   (Bsz * geo.groups,), (geo.threads,),
                   shared_forward(geo, kc.A.shape[1], y.itemsize),
                   (kc.u, kc.delta, kc.A, kc.B, kc.C, kc.D, kc.z, kc.delta_bias, h0, y, h_T,
                    kc.checkpoints, *_sizes(kc)))]


def _sum(S: str, parts: Any, out: Any) -> Launch:
    # out = Σ_j parts[j] over the leading axis, one thread per element of out
    grid, block = _launch.one_thread_per_item(out.size, SUM_THREADS)
    return Launch(f"selective_scan_sum_parts<{S}>", grid, block, 0,
                  (parts, out, np.int64(parts.shape[0]), np.int64(out.size)))


def plan_backward(kc: KernelCache, dy: Any, dstate: Any, grads: dict[str, Any],
                  parts: dict[str, Any]) -> list[Launch]:
    """The launches that write ``grads`` (``u, delta, z (B, T, D)``,
    ``initial_state (B, D, N)``, ``A (D, N)``, ``B, C (B, T, N)``, ``D``,
    ``delta_bias (D,)``; ``z``, ``D``, ``delta_bias`` only when given) from
    ``dy (B, T, D)`` and ``dstate (B, D, N)``, through the partial sums
    ``parts`` (``A (B, D, N)``, ``B, C (groups, B, T, N)``, ``D, delta_bias
    (B, D)``)."""
    Bsz = kc.u.shape[0]
    geo = kc.geometry
    S = _build.ctype(kc.u.dtype)
    dz = grads.get("z", kc.z)  # the placeholder when there is no gate (never written)
    launches = [Launch(
        f"selective_scan_backward<{S}, {geo.R}>", (Bsz * geo.groups,), (geo.threads,),
        shared_backward(geo, kc.A.shape[1], kc.u.itemsize),
        (kc.u, kc.delta, kc.A, kc.B, kc.C, kc.D, kc.z, kc.delta_bias, kc.checkpoints, dy,
         dstate, grads["u"], grads["delta"], dz, grads["initial_state"], parts["A"],
         parts["B"], parts["C"], parts["D"], parts["delta_bias"], np.int64(Bsz),
         *_sizes(kc)))]
    for name in ("A", "B", "C", "D", "delta_bias"):
        if name in grads and grads[name].size:
            launches.append(_sum(S, parts[name], grads[name]))
    return launches


# ---------------------------------------------------------------------------
# the wrappers: the definition's arguments, plumbing, launches
# ---------------------------------------------------------------------------







def forward(u: Any, delta: Any, A: Any, B: Any, C: Any, D: Any, z: Any, delta_bias: Any,
            delta_softplus: bool, initial_state: Any, *, chunk: int | None = None,
            backend: str | None = None) -> tuple[Any, Any, KernelCache]:
    """:func:`minirec.ops.selective_scan.forward` (``method="recurrent"``) by the
    CUDA kernel, in ``u``'s dtype, on validated arguments (``D``, ``z``,
    ``delta_bias``, ``initial_state`` may be ``None``).

    ``u, delta, z (B, T, D)``, ``A (D, N)``, ``B, C (B, T, N)``, ``D,
    delta_bias (D,)``, ``initial_state (B, D, N)``. ``chunk``: steps between
    checkpoints (None: :func:`geometry` picks). ``backend``: ``"cupy"`` (CuPy
    arrays), ``"cuda-emulated"`` (NumPy arrays), or None to follow the arrays.

    Returns ``y (B, T, D)``, the final state ``h_T (B, D, N)`` and a
    :class:`KernelCache`.
    """
    backend, xp = _launch.backend_and_xp(backend, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z,
                          delta_bias=delta_bias, initial_state=initial_state)
    dtype = np.dtype(u.dtype)
    Bsz, T, Dch = u.shape
    N = A.shape[1]
    c = lambda x: xp.ascontiguousarray(x.astype(dtype, copy=False))  # noqa: E731
    placeholder = xp.zeros(1, dtype)
    geo = geometry(T, Dch, N, dtype, chunk)
    kc = KernelCache(
        u=c(u), delta=c(delta), A=c(A), B=c(B), C=c(C),
        D=placeholder if D is None else c(D), z=placeholder if z is None else c(z),
        delta_bias=placeholder if delta_bias is None else c(delta_bias),
        checkpoints=xp.empty((Bsz, geo.chunks, Dch, N), dtype), has_D=D is not None,
        has_z=z is not None, has_delta_bias=delta_bias is not None,
        delta_softplus=bool(delta_softplus), geometry=geo, backend=backend)
    h0 = xp.zeros((Bsz, Dch, N), dtype) if initial_state is None else c(initial_state)
    y = xp.empty((Bsz, T, Dch), dtype)
    h_T = xp.empty((Bsz, Dch, N), dtype)
    if y.size:
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        for launch in plan_forward(kc, h0, y, h_T):
            _launch.run(module, launch)
    return y, h_T, kc


def backward(kernel_cache: KernelCache, dy: Any, dstate: Any, *,
             backend: str | None = None) -> dict[str, Any]:
    """:func:`minirec.ops.selective_scan.backward` by the CUDA kernels, from
    :func:`forward`'s :class:`KernelCache`; ``dy (B, T, D)`` and ``dstate
    (B, D, N)`` (None: zeros).

    Returns ``{"u", "delta", "A", "B", "C", "D", "z", "delta_bias",
    "initial_state"}`` (``D``, ``z``, ``delta_bias`` only when given), in the
    forward's dtype.
    """
    kc = kernel_cache
    backend, xp = _launch.backend_and_xp(backend or kc.backend, u=kc.u, dy=dy, dstate=dstate)
    dtype = kc.u.dtype
    Bsz, T, Dch = kc.u.shape
    N = kc.A.shape[1]
    geo = kc.geometry
    c = lambda x: xp.ascontiguousarray(x.astype(dtype, copy=False))  # noqa: E731
    dy = xp.zeros((Bsz, T, Dch), dtype) if dy is None else c(dy)
    dstate = xp.zeros((Bsz, Dch, N), dtype) if dstate is None else c(dstate)
    run = Bsz * Dch > 0
    new = xp.empty if run else xp.zeros  # nothing to launch: sums over no rows/channels are 0
    shapes = {"u": (Bsz, T, Dch), "delta": (Bsz, T, Dch), "A": (Dch, N), "B": (Bsz, T, N),
              "C": (Bsz, T, N), "D": (Dch,), "z": (Bsz, T, Dch), "delta_bias": (Dch,),
              "initial_state": (Bsz, Dch, N)}
    given = {"D": kc.has_D, "z": kc.has_z, "delta_bias": kc.has_delta_bias}
    grads = {k: new(s, dtype) for k, s in shapes.items() if given.get(k, True)}
    if run:
        parts = {"A": xp.empty((Bsz, Dch, N), dtype),
                 "B": xp.empty((geo.groups, Bsz, T, N), dtype),
                 "C": xp.empty((geo.groups, Bsz, T, N), dtype),
                 "D": xp.empty((Bsz, Dch), dtype), "delta_bias": xp.empty((Bsz, Dch), dtype)}
        module = _build.load(SOURCE, kernel_names(dtype), backend)
        for launch in plan_backward(kc, dy, dstate, grads, parts):
            _launch.run(module, launch)
    return grads
