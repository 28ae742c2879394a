"""Numba kernels for Mamba-1's selective scan (fused forward and backward).

Implements, per batch row b and channel d, with ``h (N)`` the state:

    Δ_t = softplus(pre_t) or pre_t,   h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t u_t B_t,
    y0_t = C_t · h_t + D u_t,          y_t = y0_t ⊙ silu(z_t)

— :func:`minirec.ops.selective_scan.forward` with ``method="recurrent"``, which
these kernels are tested against (tests/kernels/test_numba_selective_scan.py
and the contract tests). :func:`forward` and :func:`backward` at the end take
the definition's arguments and return its structure (the backend seam,
DESIGN §4): ``pre = delta + delta_bias`` is one ``(B, T, D)`` add there;
everything else is fused and no ``(B, T, D, N)`` array is ever made.

Layout. A job is one batch row and one block of ``LANES = 32`` consecutive
channels (``prange`` over the ``B · D/32`` independent jobs). Inside a job the
state is a local ``(N, 32)`` array (flat, index ``n·32 + d``) and every
innermost loop runs over the 32 channel lanes of the block, lane-wise (no loop
reduces across lanes, so LLVM vectorises them without reassociating sums; the lane
count is a compile-time constant, since loops of a run-time length 32 ran
mostly in their scalar remainder). The wrappers pad ``D`` to a multiple of 32
with zeros (``u = A = h0 = dy = 0`` keep those lanes at 0) and cut the results
back; with ``D`` a multiple of 32 nothing is copied.

``exp`` (one per (b, t, d, n) forward and one backward: most of the work) is
:func:`minirec.kernels.numba._math.exp_poly` (``_exp`` here), written out so
that it vectorises inside those loops, in both dtypes (``np.exp`` in ``@njit``
is a libm call per element and stops the loop around it from vectorising):
within 1 ulp, ``±inf`` and NaN as ``np.exp``, results below ``2^{kmin+1}``
(``2.4e-38`` in float32) 0 instead of subnormal. For the same reason σ
(:func:`_sigmoid_lanes`) and softplus (a series for ``log1p``, in
:func:`_forward`) are written here on top of ``_exp`` (the float64 σ of
:mod:`minirec.kernels.numba._math` keeps libm's ``exp``); they follow the same
formulas as :mod:`minirec._math` and every constant is in the argument's dtype
(``coef``, ``con``), so float32 runs compute in float32.

Backward: checkpoints. The forward stores the state entering every chunk of
``chunk`` steps, ``checkpoints (B, ⌈T/chunk⌉, D, N)`` (``1/chunk`` of all the
states: 4 MiB instead of 128 MiB at B=4, T=2048, D=256, N=16 in float32,
chunk=32). The reverse pass goes over the chunks last to first; for each it
recomputes the chunk's ``ā`` and ``h`` from its checkpoint into
``(chunk, N·32)`` job-local buffers (``ā`` would be
recomputed even if every state were stored, so the extra cost is one
multiply-add per element), then runs the reverse loop of
:mod:`minirec.ops.selective_scan` over the chunk:

    g_t    = ā_{t+1} ⊙ g_{t+1} + dy0_t C_t     (ā_T ⊙ g_T read as dstate)
    dlog   = g_t ⊙ h_{t−1} ⊙ ā_t               dA += dlog Δ_t
    dΔ_t   = Σ_n dlog A + (Σ_n g_t B_t) u_t    du_t = (Σ_n g_t B_t) Δ_t + D dy0_t
    dB_t   = Σ_d g_t Δ_t u_t                   dC_t = Σ_d dy0_t h_t

``B, C`` are shared by the channels, so ``dB, dC (B, T, N)`` are sums over d.
The backward's jobs are (batch row, channel group), ``G`` = min(blocks,
threads) groups of blocks; each job writes its lanes' terms into a local
``(N, 32)`` array, sums the 32 lanes with a fixed tree (:func:`_lane_sum`) and
adds the sums into its own slice ``dB_part[group, b]`` (no races, no atomics);
the caller sums the ``G`` slices. ``dA``, ``dD`` are written per batch row and
summed by the caller. (Adding lane-wise into a ``(G, B, T, N, 32)`` buffer
instead was memory-bound: as much traffic as the scan itself.)

``ā`` is recomputed, not stored, by measurement: storing it means writing
and reading a ``(B, T, D, N)`` array (128 MiB at the size above, whose fresh
pages alone cost more to fault in than the recompute's ``exp``), while the
recompute is one vectorised ``exp`` per element inside the chunk pass that
rebuilds ``h`` anyway.

``fastmath`` is limited to ``contract`` (:data:`CONTRACT`: ``a·b + c`` as one
fused multiply-add, one rounding instead of two; no reassociation, NaN and
inf as without it). This module imports nothing from the rest of minirec.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from minirec.kernels.numba._math import CONTRACT, exp_constants
from minirec.kernels.numba._math import exp_poly as _exp

LANES = 32  # channels per job, a compile-time constant: every lane loop has this known
            # length (4 AVX2 vectors of float32) and vectorises fully; _lane_sum is written for it
CHUNK = 32  # steps between checkpoints: the (chunk, N·LANES) buffers stay in L2
            # (~130 KiB in float32)


# ---------------------------------------------------------------------------
# the exp that vectorises is _math.exp_poly (here as _exp); log1p's series
# ---------------------------------------------------------------------------

def log1p_constants(dtype) -> tuple:
    """``1/(2k+1)`` for k = 0..K−1, ``K`` the smallest with series tail
    ``(1/9)^K / (2K+1) · 9/8`` below ``eps/4`` (``s ≤ 1/3``, see
    the softplus in :func:`_forward`)."""
    dtype = np.dtype(dtype)
    eps = float(np.finfo(dtype).eps)
    K = 1
    while (1 / 9) ** K / (2 * K + 1) * 9 / 8 >= eps / 4:
        K += 1
    return tuple(dtype.type(1 / (2 * k + 1)) for k in range(K))


# ---------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", inline="always", fastmath=CONTRACT)
def _sigmoid_lanes(x, b, t, d0, out, coef, con):
    """``out[d] = σ(x[b, t, d0 + d])`` over the lanes, as the reference:
    ``e = e^{−|x|}``, ``1/(1 + e)`` for ``x ≥ 0``, ``e/(1 + e)`` below."""
    one = coef[0]
    for d in range(LANES):
        xv = x[b, t, d0 + d]
        e = _exp(-abs(xv), coef, con)
        r = one / (one + e)
        out[d] = r if xv >= 0 else e * r


@njit(cache=True, error_model="numpy", parallel=True, fastmath=CONTRACT)
def _forward(u, pre, A, B, C, D, z, has_z, delta_softplus, h0, chunk, coef, lcoef, con,
             y, y0, dt, h_T, checkpoints):
    """Writes ``y, y0, dt = Δ (B, T, D)``, ``h_T (B, D, N)`` and the
    ``checkpoints (B, ⌈T/chunk⌉, D, N)`` (``checkpoints[:, c]`` = the state
    entering step ``c·chunk``). The channel count is a multiple of ``LANES``
    (the wrapper pads). Each chunk of steps runs in three loops: Δ and Δ u of
    all its steps (independent loads and exps), the scan over the chunk (the
    only loop carried in time), then the read-out y0, y of all its steps."""
    Bsz, T, Dch = u.shape
    N = A.shape[1]
    nblk = Dch // LANES
    M = N * LANES
    one = coef[0]
    for job in prange(Bsz * nblk):
        b = job // nblk
        d0 = (job % nblk) * LANES
        h = np.empty(M, u.dtype)                  # the state, h[n·LANES + d]
        At = np.empty(M, u.dtype)
        dtb = np.empty((chunk, LANES), u.dtype)   # Δ at step t0 + s
        dtu = np.empty((chunk, LANES), u.dtype)   # Δ u
        acc = np.empty((chunk, LANES), u.dtype)   # Σ_n h C
        sz = np.empty(LANES, u.dtype)             # σ(z)
        for n in range(N):
            for d in range(LANES):
                h[n * LANES + d] = h0[b, d0 + d, n]
                At[n * LANES + d] = A[d0 + d, n]
        for c in range((T + chunk - 1) // chunk):
            t0 = c * chunk
            L = min(chunk, T - t0)
            for d in range(LANES):
                for n in range(N):
                    checkpoints[b, c, d0 + d, n] = h[n * LANES + d]
            # Δ = softplus(pre) = max(p, 0) + log1p(e), e = e^{−|p|}, with
            # log1p(e) = 2 atanh(s) = 2 Σ_k s^{2k+1}/(2k+1), s = e/(2 + e) ≤ 1/3
            # (lcoef[k] = 1/(2k+1)): no libm call, so the loop vectorises
            for s in range(L):
                t = t0 + s
                if delta_softplus:
                    for d in range(LANES):
                        p = pre[b, t, d0 + d]
                        e = _exp(-abs(p), coef, con)
                        sv = e / (one + one + e)
                        w = sv * sv
                        q = lcoef[len(lcoef) - 1]
                        for k in range(len(lcoef) - 2, -1, -1):
                            q = q * w + lcoef[k]
                        dtb[s, d] = (p if p > 0 else one - one) + (sv + sv) * q
                else:
                    for d in range(LANES):
                        dtb[s, d] = pre[b, t, d0 + d]
                for d in range(LANES):
                    dtu[s, d] = dtb[s, d] * u[b, t, d0 + d]
                    dt[b, t, d0 + d] = dtb[s, d]
            # h = exp(Δ A) ⊙ h + Δ u B,  acc = Σ_n h C
            for s in range(L):
                t = t0 + s
                a_s = acc[s]
                dl = dtb[s]
                dus = dtu[s]
                for d in range(LANES):
                    a_s[d] = 0
                for n in range(N):
                    Bn = B[b, t, n]
                    Cn = C[b, t, n]
                    for d in range(LANES):
                        j = n * LANES + d
                        hn = _exp(dl[d] * At[j], coef, con) * h[j] + dus[d] * Bn
                        h[j] = hn
                        a_s[d] += hn * Cn
            # y0 = acc + D u,  y = y0 ⊙ z σ(z)
            for s in range(L):
                t = t0 + s
                for d in range(LANES):
                    y0[b, t, d0 + d] = acc[s, d] + D[d0 + d] * u[b, t, d0 + d]
                if has_z:
                    _sigmoid_lanes(z, b, t, d0, sz, coef, con)
                    for d in range(LANES):
                        y[b, t, d0 + d] = y0[b, t, d0 + d] * (z[b, t, d0 + d] * sz[d])
                else:
                    for d in range(LANES):
                        y[b, t, d0 + d] = y0[b, t, d0 + d]
        for d in range(LANES):
            for n in range(N):
                h_T[b, d0 + d, n] = h[n * LANES + d]


# ---------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", inline="always")
def _lane_sum(v, o):
    """``Σ_d v[o + d]`` over ``LANES = 32`` lanes as a fixed tree (4 vectors of
    8 added lane-wise, then halved), which LLVM vectorises."""
    s8_0 = (v[o + 0] + v[o + 8]) + (v[o + 16] + v[o + 24])
    s8_1 = (v[o + 1] + v[o + 9]) + (v[o + 17] + v[o + 25])
    s8_2 = (v[o + 2] + v[o + 10]) + (v[o + 18] + v[o + 26])
    s8_3 = (v[o + 3] + v[o + 11]) + (v[o + 19] + v[o + 27])
    s8_4 = (v[o + 4] + v[o + 12]) + (v[o + 20] + v[o + 28])
    s8_5 = (v[o + 5] + v[o + 13]) + (v[o + 21] + v[o + 29])
    s8_6 = (v[o + 6] + v[o + 14]) + (v[o + 22] + v[o + 30])
    s8_7 = (v[o + 7] + v[o + 15]) + (v[o + 23] + v[o + 31])
    return ((s8_0 + s8_4) + (s8_2 + s8_6)) + ((s8_1 + s8_5) + (s8_3 + s8_7))


@njit(cache=True, error_model="numpy", parallel=True, fastmath=CONTRACT)
def _backward(u, pre, dt, A, B, C, D, z, has_z, delta_softplus, checkpoints, y0, dy, dstate,
              chunk, G, coef, con, du, dpre, dz, dA_part, dB_part, dC_part, dD_part, dh0):
    """The fused reverse pass. Writes ``du, dpre, dz (B, T, D)``, ``dh0 (B, D, N)``
    and the partial sums ``dA_part (B, D, N)``, ``dD_part (B, D)``,
    ``dB_part, dC_part (G, B, T, N)`` (zeroed by the caller). The channel
    count is a multiple of ``LANES``."""
    Bsz, T, Dch = u.shape
    N = A.shape[1]
    nblk = Dch // LANES
    M = N * LANES
    one = coef[0]
    for job in prange(Bsz * G):
        b = job // G
        grp = job % G
        g = np.empty(M, u.dtype)                # ∂L/∂h, carried backwards
        At = np.empty(M, u.dtype)
        dA = np.empty(M, u.dtype)
        hbuf = np.empty((chunk + 1, M), u.dtype)  # hbuf[s + 1] = h at step t0 + s
        abuf = np.empty((chunk, M), u.dtype)      # ā at step t0 + s
        dtb = np.empty((chunk, LANES), u.dtype)   # Δ
        dtu = np.empty((chunk, LANES), u.dtype)   # Δ u
        dy0 = np.empty(LANES, u.dtype)
        pB = np.empty(M, u.dtype)               # g_t Δ u, lane-wise, for Σ_d
        pC = np.empty(M, u.dtype)               # dy0 h_t, lane-wise, for Σ_d
        gB = np.empty(LANES, u.dtype)           # Σ_n g B
        ddt = np.empty(LANES, u.dtype)          # ∂L/∂Δ
        dDl = np.empty(LANES, u.dtype)
        sg = np.empty(LANES, u.dtype)           # σ(z), then σ(pre)
        for blk in range(grp, nblk, G):
            d0 = blk * LANES
            for n in range(N):
                for d in range(LANES):
                    g[n * LANES + d] = dstate[b, d0 + d, n]
                    At[n * LANES + d] = A[d0 + d, n]
                    dA[n * LANES + d] = 0
            for d in range(LANES):
                dDl[d] = 0
            for c in range((T + chunk - 1) // chunk - 1, -1, -1):
                t0 = c * chunk
                L = min(chunk, T - t0)
                # recompute ā and h inside the chunk from its checkpoint
                for n in range(N):
                    for d in range(LANES):
                        hbuf[0, n * LANES + d] = checkpoints[b, c, d0 + d, n]
                for s in range(L):
                    t = t0 + s
                    for d in range(LANES):
                        dtb[s, d] = dt[b, t, d0 + d]
                        dtu[s, d] = dtb[s, d] * u[b, t, d0 + d]
                    for n in range(N):
                        Bn = B[b, t, n]
                        for d in range(LANES):
                            j = n * LANES + d
                            a = _exp(dtb[s, d] * At[j], coef, con)
                            abuf[s, j] = a
                            hbuf[s + 1, j] = a * hbuf[s, j] + dtu[s, d] * Bn
                # the reverse loop over the chunk
                for s in range(L - 1, -1, -1):
                    t = t0 + s
                    # through the gate y = y0 ⊙ z σ(z): dy0 = dy z σ(z), dz = dy y0 silu'(z)
                    if has_z:
                        _sigmoid_lanes(z, b, t, d0, sg, coef, con)
                        for d in range(LANES):
                            dyv = dy[b, t, d0 + d]
                            zv = z[b, t, d0 + d]
                            dy0[d] = dyv * (zv * sg[d])
                            dsilu = sg[d] * (one + zv * (one - sg[d]))
                            dz[b, t, d0 + d] = dyv * y0[b, t, d0 + d] * dsilu
                    else:
                        for d in range(LANES):
                            dy0[d] = dy[b, t, d0 + d]
                    for d in range(LANES):
                        gB[d] = 0
                        ddt[d] = 0
                    for n in range(N):
                        Bn = B[b, t, n]
                        Cn = C[b, t, n]
                        for d in range(LANES):
                            j = n * LANES + d
                            gv = g[j] + dy0[d] * Cn                 # ∂L/∂h_t
                            pB[j] = gv * dtu[s, d]
                            a = abuf[s, j]
                            dlog = gv * hbuf[s, j] * a              # ∂L/∂(Δ A)
                            dA[j] += dlog * dtb[s, d]
                            ddt[d] += dlog * At[j]
                            gB[d] += gv * Bn
                            g[j] = a * gv                           # ∂L/∂h_{t−1}
                        for d in range(LANES):  # a loop of its own: one more array
                            pC[n * LANES + d] = dy0[d] * hbuf[s + 1, n * LANES + d]
                    for n in range(N):          # dB_t = Σ_d g_t Δ u, dC_t = Σ_d dy0 h_t
                        dB_part[grp, b, t, n] += _lane_sum(pB, n * LANES)
                        dC_part[grp, b, t, n] += _lane_sum(pC, n * LANES)
                    # du = gB Δ + D dy0,  dΔ = ddt + gB u,  dpre = dΔ σ(pre) or dΔ
                    for d in range(LANES):
                        uv = u[b, t, d0 + d]
                        du[b, t, d0 + d] = gB[d] * dtb[s, d] + D[d0 + d] * dy0[d]
                        ddt[d] = ddt[d] + gB[d] * uv
                        dDl[d] += dy0[d] * uv
                    if delta_softplus:
                        _sigmoid_lanes(pre, b, t, d0, sg, coef, con)
                        for d in range(LANES):
                            dpre[b, t, d0 + d] = ddt[d] * sg[d]
                    else:
                        for d in range(LANES):
                            dpre[b, t, d0 + d] = ddt[d]
            for n in range(N):
                for d in range(LANES):
                    dh0[b, d0 + d, n] = g[n * LANES + d]
                    dA_part[b, d0 + d, n] = dA[n * LANES + d]
            for d in range(LANES):
                dD_part[b, d0 + d] = dDl[d]


# ---------------------------------------------------------------------------
# wrappers: the definition's signature and return structure
# ---------------------------------------------------------------------------

class KernelCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward` (the definition keeps it
    in its cache's ``kernel`` field).

    Fields: the arrays the forward kernel ran on, contiguous, in the
    computation dtype and padded to ``D' = ⌈D/32⌉·32`` channels (``u, pre =
    delta + delta_bias, dt = Δ, y0 (B, T, D')``, ``A (D', N)``,
    ``B, C (B, T, N)``, ``D (D',)`` (zeros when not given), ``z (B, T, D')``
    (a ``(1, 1, 1)`` placeholder when not given)); ``checkpoints (B, ⌈T/chunk⌉,
    D', N)`` the state entering every chunk; ``channels`` = D; ``has_D``,
    ``has_z``, ``has_delta_bias``, ``delta_softplus``; ``chunk``.
    """

    u: np.ndarray
    pre: np.ndarray
    dt: np.ndarray
    y0: np.ndarray
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray
    D: np.ndarray
    z: np.ndarray
    checkpoints: np.ndarray
    channels: int
    has_D: bool
    has_z: bool
    has_delta_bias: bool
    delta_softplus: bool
    chunk: int


def _c(x, dtype, D=None, axis=-1):
    """C-contiguous in ``dtype``, zero-padded to ``D`` along ``axis`` when
    given. A read-only array is copied, so that numba compiles one
    (mutable-array) specialisation per dtype, not two."""
    x = np.ascontiguousarray(x, dtype=dtype)
    if D is not None and x.shape[axis] != D:
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, D - x.shape[axis])
        return np.pad(x, pad)
    return x if x.flags.writeable else x.copy()


def _padded(D):
    """Channels rounded up to whole lane blocks (the pad lanes stay 0)."""
    return -(-D // LANES) * LANES


def _cut(x, D):
    """The first ``D`` channels (last axis) of a padded result."""
    return x if x.shape[-1] == D else np.ascontiguousarray(x[..., :D])


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
            chunk=CHUNK):
    """:func:`minirec.ops.selective_scan.forward` (``method="recurrent"``) by the
    fused kernel, in ``u``'s dtype, on validated arguments (``D``, ``z``,
    ``delta_bias``, ``initial_state`` may be ``None``).

    Returns ``y (B, T, D)``, the final state ``h_T (B, D, N)`` and a
    :class:`KernelCache` (checkpoints every ``chunk`` steps).
    """
    dtype = u.dtype
    Bsz, T, Dch = u.shape
    N = A.shape[1]
    Dp = _padded(Dch)
    coef, con = exp_constants(dtype)
    pre = delta if delta_bias is None else delta + delta_bias
    h0 = (np.zeros((Bsz, Dp, N), dtype) if initial_state is None
          else _c(initial_state, dtype, Dp, 1))
    kc = KernelCache(
        u=_c(u, dtype, Dp), pre=_c(pre, dtype, Dp), dt=np.empty((Bsz, T, Dp), dtype),
        y0=np.empty((Bsz, T, Dp), dtype), A=_c(A, dtype, Dp, 0), B=_c(B, dtype), C=_c(C, dtype),
        D=np.zeros(Dp, dtype) if D is None else _c(D, dtype, Dp),
        z=np.zeros((1, 1, 1), dtype) if z is None else _c(z, dtype, Dp),
        checkpoints=np.empty((Bsz, (T + chunk - 1) // chunk, Dp, N), dtype), channels=Dch,
        has_D=D is not None, has_z=z is not None, has_delta_bias=delta_bias is not None,
        delta_softplus=bool(delta_softplus), chunk=int(chunk))
    y = np.empty((Bsz, T, Dp), dtype)
    h_T = np.empty((Bsz, Dp, N), dtype)
    _forward(kc.u, kc.pre, kc.A, kc.B, kc.C, kc.D, kc.z, kc.has_z, kc.delta_softplus, h0,
             kc.chunk, coef, log1p_constants(dtype), con, y, kc.y0, kc.dt, h_T, kc.checkpoints)
    return _cut(y, Dch), np.ascontiguousarray(h_T[:, :Dch]), kc


def backward(kernel_cache, dy, dstate):
    """:func:`minirec.ops.selective_scan.backward` by the fused reverse pass,
    from :func:`forward`'s :class:`KernelCache`; ``dy (B, T, D)`` and
    ``dstate (B, D, N)`` are arrays (the definition fills ``None`` with zeros).

    Returns ``{"u", "delta", "A", "B", "C", "D", "z", "delta_bias",
    "initial_state"}`` (``D``, ``z``, ``delta_bias`` only when given).
    """
    kc = kernel_cache
    dtype = kc.u.dtype
    Bsz, T, Dp = kc.u.shape
    N = kc.A.shape[1]
    Dch = kc.channels
    coef, con = exp_constants(dtype)
    G = max(1, min(Dp // LANES, numba.get_num_threads()))   # one dB/dC slice per group
    du = np.empty((Bsz, T, Dp), dtype)
    dpre = np.empty((Bsz, T, Dp), dtype)
    dz = np.empty((Bsz, T, Dp) if kc.has_z else (1, 1, 1), dtype)
    dA_part = np.empty((Bsz, Dp, N), dtype)
    dB_part = np.zeros((G, Bsz, T, N), dtype)
    dC_part = np.zeros((G, Bsz, T, N), dtype)
    dD_part = np.empty((Bsz, Dp), dtype)
    dh0 = np.empty((Bsz, Dp, N), dtype)
    _backward(kc.u, kc.pre, kc.dt, kc.A, kc.B, kc.C, kc.D, kc.z, kc.has_z, kc.delta_softplus,
              kc.checkpoints, kc.y0, _c(dy, dtype, Dp), _c(dstate, dtype, Dp, 1), kc.chunk, G,
              coef, con, du, dpre, dz, dA_part, dB_part, dC_part, dD_part, dh0)
    grads = {"u": _cut(du, Dch), "delta": _cut(dpre, Dch), "A": dA_part[:, :Dch].sum(axis=0),
             "B": dB_part.sum(axis=0), "C": dC_part.sum(axis=0)}
    if kc.has_D:
        grads["D"] = dD_part[:, :Dch].sum(axis=0)
    if kc.has_z:
        grads["z"] = _cut(dz, Dch)
    if kc.has_delta_bias:   # ∂(delta + delta_bias)/∂delta_bias = 1, summed over (b, t)
        grads["delta_bias"] = np.sum(grads["delta"], axis=(0, 1))
    grads["initial_state"] = np.ascontiguousarray(dh0[:, :Dch])
    return grads
