"""Fused Numba kernels for the diagonal cells: the gates, the scan and the
read-out in one time loop, forward and backward.

    h_t = a_t ⊙ h_{t−1} + b_t,   (a_t, b_t) = gate(inputs_t)      per lane (b, r)

with the gates of

* minGRU  (``MINGRU``):  ``w = σ(s)``, ``keep = σ(−s)``, ``a = keep`` (``keep − w``
  with negative eigenvalues), ``b = w ⊙ h̃``;
* minLSTM (``MINLSTM``): minGRU's on ``s = softplus(−k_f) − softplus(−k_i)``;
* HGRN    (``HGRN``):    ``a = e^g`` (``2e^g − 1``), ``b = x``;
* LRU:  ``a = λ`` (complex), ``b = γ ⊙ Bx_t``;
* S4D:  ``a = Ā``, ``b = B̄ x_t`` (complex, per mode), read-out
  ``y_t = 2 Re(Σ_n C h_t) + D x_t`` summed in the same loop.

Tested against :mod:`minirec.cells.mingru`, :mod:`minirec.cells.minlstm`,
:mod:`minirec.ops.hgrn`, :mod:`minirec.cells.lru` and :mod:`minirec.cells.ssm`
with ``backend="numpy"`` (tests/test_contract.py and
tests/kernels/test_numba_diagonal.py). The per-family wrappers with the
definitions' argument names are :mod:`.mingru`, :mod:`.minlstm`, :mod:`.hgrn`,
:mod:`.lru` and :mod:`.ssm` next to this module; the projections (GEMMs over
all ``B·T`` rows) stay in the cells, as for the CUDA kernels of the same
families.

Backward, one reverse pass per lane (``G`` carries ``a_{t+1} g_{t+1}``, the
multiplier conjugated for complex ``a``; ``G = dstate`` at ``t = T − 1``):

    g_t = dy_t + G,   da_t = g_t h_{t−1},   db_t = g_t,   G ← conj(a_t) g_t
    dh0 = G after t = 0

then each family's gate backward on ``(da_t, db_t)`` in the same step, exactly
the definition's formulas (so NaN/inf take the same paths).

Methods. ``recurrent``: one chunk of T steps, a job per batch row (``prange``
over the rows). ``chunked``: reduce-then-scan over chunks of ``L`` steps
(default ⌈√T⌉): a first call of the same kernel from a zero state returns
every chunk's ``(Π a, local h)`` (``totals``), the short carry scan over the
chunks runs in the wrapper (:func:`carries`), and a second call runs every
chunk from its carry, a job per (row, chunk). The backward does the same on
the reversed recurrence.

Storage. The forward keeps ``h`` and the gate values the backward needs
(minGRU ``w, keep``; minLSTM also ``σ(−k_f), σ(−k_i)``; HGRN ``e^g``), so the
backward computes no ``exp``: measured at (8, 512, 32) float32 a libm ``exp``
costs ~5 ns per element, more than writing and reading one more array.

Gates. Per step the gates run in a loop of their own, apart from the scan's
update (which depends on the previous state), with σ, softplus and exp from
:mod:`minirec.kernels.numba._math`: in float32 branch-free over a polynomial
exp and log1p, so that loop vectorises (measured at (8, 512, 32) float32, the
forward kernel against the earlier fused loop with libm's exp and log: minGRU
0.68 → 0.17 ms, minLSTM 3.3 → 0.57 ms, HGRN 0.34 → 0.13 ms); float64 uses
libm's exp. The loop's ``a`` for negative eigenvalues is ``keep − c w`` with
``c`` ∈ {0, 1} set once (``2e^g − 1`` likewise), no conditional per element.

Threads. On the 2-core machines this library is measured on, waking the
worker threads of a ``parallel=True`` kernel costs from ~20 µs (idle) to a
scheduler time slice (~8 ms, when another process holds the other core:
measured median 8 ms against 0.1 ms on one thread for a (8, 512, 32) scan);
:func:`threads` runs kernels with less than :data:`PARALLEL_WORK` lane-steps
on the calling thread only.

``fastmath`` is off; every constant is passed in the arrays' dtype, so
float32 runs compute in float32. This module imports nothing from minirec
outside ``minirec.kernels``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba
import numpy as np
from numba import njit, prange

from minirec.kernels.numba._math import exp, sigmoid, softplus

MINGRU, MINLSTM, HGRN = 0, 1, 2
GATES = {"mingru": MINGRU, "minlstm": MINLSTM, "hgrn": HGRN}
AUX = {MINGRU: 2, MINLSTM: 4, HGRN: 1}  # gate values kept for the backward, per lane-step
METHODS = ("recurrent", "chunked")
# below this many lane-steps (B·T·R) a kernel runs on the calling thread (see "Threads")
PARALLEL_WORK = 1 << 23


# ---------------------------------------------------------------------------
# plumbing shared by the wrappers
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def threads(work: int) -> Iterator[None]:
    """Run the enclosed kernels on one thread when ``work`` (lane-steps) is below
    :data:`PARALLEL_WORK`, else on Numba's threads (the setting is per calling thread)."""
    if work >= PARALLEL_WORK:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def check_method(method: str, what: str) -> None:
    """``method`` must be one of :data:`METHODS`."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS} (the numba kernels of {what}), "
                         f"got {method!r}")


def chunk_length(method: str, T: int, chunk_size: int | None) -> int:
    """``L``: ``T`` for ``recurrent``; ``chunk_size`` (default ⌈√T⌉, at most T) for
    ``chunked``."""
    if method == "recurrent":
        return T
    return max(1, min(T, int(chunk_size) if chunk_size else int(np.ceil(np.sqrt(T)))))


def flat(x: np.ndarray, dtype, shape: tuple) -> np.ndarray:
    """``x`` cast to ``dtype``, C-contiguous, reshaped, and writeable (a read-only
    array would compile a second specialisation of every kernel; it is copied)."""
    y = np.ascontiguousarray(x, dtype=dtype).reshape(shape)
    return y if y.flags.writeable else y.copy()


def carries(first: np.ndarray, tot_a: np.ndarray, tot_b: np.ndarray, *,
            reverse: bool = False) -> np.ndarray:
    """The carry scan over chunks: ``carry_0 = first``, ``carry_{c+1} = A_c carry_c + B_c``
    (``reverse``: ``carry_{n−1} = first``, ``carry_{c−1} = A_c carry_c + B_c``),
    ``tot_a, tot_b (B, n, ...)`` → ``(B, n, ...)``."""
    n = tot_a.shape[1]
    out = np.empty(tot_b.shape, tot_b.dtype)
    state = first
    for c in (range(n - 1, -1, -1) if reverse else range(n)):
        out[:, c] = state
        state = tot_a[:, c] * state + tot_b[:, c]
    return out


@njit(cache=True, error_model="numpy", inline="always")
def _row(carry, b, c):
    """A fresh copy of ``carry[b, c]`` (1-D). Written as ``empty`` + assignment:
    ``carry[b, c].copy()`` made the loops over the copy run ~10× slower (measured
    in the S4D kernels: 7.9 ms against 0.7 ms), as if its layout were unknown."""
    out = np.empty(carry.shape[2], carry.dtype)
    out[:] = carry[b, c]
    return out


# ---------------------------------------------------------------------------
# minGRU, minLSTM, HGRN: real lanes (B, T, R)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def gated_forward(kind, neg, p, q, v, carry, L, totals, h, aux, tot_a, tot_b, one, two):
    """Chunks of ``L`` steps from ``carry (B, n, R)``. ``totals``: write only
    ``tot_a = Π a`` and ``tot_b`` = the chunk's last state; else ``h`` and ``aux``."""
    zero = one - one
    nw = one if neg else zero          # no ternaries in the gate loops
    B, T, R = v.shape
    n = carry.shape[1]
    for job in prange(B * n):
        b = job // n
        c = job % n
        state = _row(carry, b, c)
        prod = np.ones(R, v.dtype)
        a_t = np.empty(R, v.dtype)     # the step's a and b: the gates in loops of their
        b_t = np.empty(R, v.dtype)     # own, which vectorise in float32 (module docstring)
        s_t = np.empty(R, v.dtype)
        for t in range(c * L, min(T, (c + 1) * L)):
            if kind == HGRN:
                for r in range(R):
                    e = exp(p[b, t, r])
                    a_t[r] = e * (one + nw) - nw   # 2e − 1 with negative eigenvalues
                    b_t[r] = v[b, t, r]
                    if not totals:
                        aux[0, b, t, r] = e
            else:
                if kind == MINLSTM:     # s = softplus(−k_f) − softplus(−k_i)
                    for r in range(R):
                        kf, ki = -p[b, t, r], -q[b, t, r]
                        s_t[r] = softplus(kf) - softplus(ki)
                        if not totals:
                            aux[2, b, t, r] = sigmoid(kf)
                            aux[3, b, t, r] = sigmoid(ki)
                else:
                    for r in range(R):
                        s_t[r] = p[b, t, r]
                for r in range(R):
                    w = sigmoid(s_t[r])
                    keep = sigmoid(-s_t[r])
                    a_t[r] = keep - nw * w         # keep − w with negative eigenvalues
                    b_t[r] = w * v[b, t, r]
                    if not totals:
                        aux[0, b, t, r] = w
                        aux[1, b, t, r] = keep
            for r in range(R):
                state[r] = a_t[r] * state[r] + b_t[r]
            if totals:
                for r in range(R):
                    prod[r] = prod[r] * a_t[r]
            else:
                for r in range(R):
                    h[b, t, r] = state[r]
        if totals:
            tot_a[b, c] = prod
            tot_b[b, c] = state


@njit(cache=True, error_model="numpy", parallel=True)
def gated_backward(kind, neg, v, h, h0, aux, dy, carry, L, totals, dp, dq, dv, tot_a, tot_g,
                   one, two):
    """The reverse pass over chunks of ``L`` steps, ``carry (B, n, R)`` the ``G``
    entering each chunk from above; ``tot_g`` gets the ``G`` leaving it. ``totals``:
    also ``tot_a = Π a``, and no gradients; else the gradients of the gate inputs
    ``dp`` (``s``, ``k_f`` or ``g``), ``dq`` (``k_i``), ``dv`` (``h̃`` or ``x``)."""
    B, T, R = v.shape
    n = carry.shape[1]
    zero = one - one
    nw = one if neg else zero    # a = keep − nw w (minGRU, minLSTM), e (1 + nw) − nw (HGRN)
    c_neg = one + nw             # a = 1 − c w
    for job in prange(B * n):
        b = job // n
        c = job % n
        G = _row(carry, b, c)
        prod = np.ones(R, v.dtype)
        g_t = np.empty(R, v.dtype)
        a_t = np.empty(R, v.dtype)
        for t in range(min(T, (c + 1) * L) - 1, c * L - 1, -1):
            # the reverse recurrence G ← a_t (dy_t + G) in a loop of its own (vectorises)
            if kind == HGRN:
                for r in range(R):
                    g = dy[b, t, r] + G[r]
                    g_t[r] = g
                    a_t[r] = aux[0, b, t, r] * (one + nw) - nw
                    G[r] = a_t[r] * g
            else:
                for r in range(R):
                    g = dy[b, t, r] + G[r]
                    g_t[r] = g
                    a_t[r] = aux[1, b, t, r] - nw * aux[0, b, t, r]
                    G[r] = a_t[r] * g
            if totals:
                for r in range(R):
                    prod[r] = prod[r] * a_t[r]
                continue
            hp = h0[b] if t == 0 else h[b, t - 1]
            if kind == HGRN:    # dx = db; dg = da e^g (da 2e^g with negative eigenvalues)
                for r in range(R):
                    dv[b, t, r] = g_t[r]
                    dp[b, t, r] = g_t[r] * hp[r] * (aux[0, b, t, r] * c_neg)
            else:
                for r in range(R):
                    g = g_t[r]
                    w = aux[0, b, t, r]
                    keep = aux[1, b, t, r]
                    dw = g * v[b, t, r] - c_neg * (g * hp[r])   # through a = 1 − c w, b = w h̃
                    ds = dw * w * keep                          # σ'(s) = w (1 − w)
                    dv[b, t, r] = g * w
                    if kind == MINLSTM:     # ∂s/∂k_f = −σ(−k_f), ∂s/∂k_i = σ(−k_i)
                        dp[b, t, r] = -ds * aux[2, b, t, r]
                        dq[b, t, r] = ds * aux[3, b, t, r]
                    else:
                        dp[b, t, r] = ds
        tot_g[b, c] = G     # leaving chunk 0 of the last pass: dh0
        if totals:
            tot_a[b, c] = prod


def gated_scan_forward(gate: str, p, q, v, h0, negative: bool, method: str,
                       chunk_size: int | None):
    """The gated scan of ``gate`` (``"mingru"``: ``p = s``; ``"minlstm"``: ``p = k_f``,
    ``q = k_i``; ``"hgrn"``: ``p = g``) with ``v`` (``h̃`` or ``x``), all ``(B, T, R)``,
    from ``h0 (B, R)``. Returns ``(inputs, h, aux)``: the inputs as the kernels took
    them ``(p, q, v, h0)``, every state ``h (B, T, R)`` and the kept gate values."""
    kind = GATES[gate]
    check_method(method, f"the {gate} gated scan")
    dtype = np.result_type(p, q, v, h0)
    B, T, R = v.shape
    p, q, v = (flat(u, dtype, (B, T, R)) for u in (p, q, v))
    h0 = flat(h0, dtype, (B, R))
    one, two = dtype.type(1), dtype.type(2)
    L = chunk_length(method, T, chunk_size)
    n = -(-T // L)
    h = np.empty((B, T, R), dtype)
    aux = np.empty((AUX[kind], B, T, R), dtype)
    with threads(B * T * R):
        if n == 1:
            carry = np.ascontiguousarray(h0[:, None])
        else:
            tot_a, tot_b = np.empty((B, n, R), dtype), np.empty((B, n, R), dtype)
            gated_forward(kind, negative, p, q, v, np.zeros((B, n, R), dtype), L, True, h, aux,
                          tot_a, tot_b, one, two)
            carry = carries(h0, tot_a, tot_b)
        gated_forward(kind, negative, p, q, v, carry, L, False, h, aux, carry, carry, one, two)
    return (p, q, v, h0), h, aux


def gated_scan_backward(gate: str, inputs: tuple, h, aux, dy, dstate, negative: bool,
                        method: str, chunk_size: int | None):
    """Back through :func:`gated_scan_forward`: ``(dp, dq, dv, dh0)`` from
    ``dy (B, T, R)`` and ``dstate (B, R)`` (``None``: zeros); ``dq`` is ``None`` but for minLSTM."""
    kind = GATES[gate]
    p, q, v, h0 = inputs
    dtype = h.dtype
    B, T, R = h.shape
    dy = np.zeros((B, T, R), dtype) if dy is None else flat(dy, dtype, (B, T, R))
    dstate = np.zeros((B, R), dtype) if dstate is None else flat(dstate, dtype, (B, R))
    one, two = dtype.type(1), dtype.type(2)
    L = chunk_length(method, T, chunk_size)
    n = -(-T // L)
    dp, dv = np.empty((B, T, R), dtype), np.empty((B, T, R), dtype)
    dq = np.empty((B, T, R), dtype) if kind == MINLSTM else dp
    with threads(B * T * R):
        tot_a, tot_g = np.empty((B, n, R), dtype), np.empty((B, n, R), dtype)
        if n == 1:
            carry = np.ascontiguousarray(dstate[:, None])
        else:
            gated_backward(kind, negative, v, h, h0, aux, dy, np.zeros((B, n, R), dtype), L,
                           True, dp, dq, dv, tot_a, tot_g, one, two)
            carry = carries(dstate, tot_a, tot_g, reverse=True)
        gated_backward(kind, negative, v, h, h0, aux, dy, carry, L, False, dp, dq, dv,
                       tot_a, tot_g, one, two)
    return dp, (dq if kind == MINLSTM else None), dv, np.ascontiguousarray(tot_g[:, 0])


def chunk_powers(a: np.ndarray, L: int, T: int) -> np.ndarray:
    """``a^{len_c}`` for every chunk ``c`` of ``L`` steps of ``T`` (the last may be
    shorter), by repeated multiplication: ``(n,) + a.shape``. The multiplier of a
    chunk of LRU and S4D, whose ``a`` is constant in time."""
    n = -(-T // L)
    last = T - (n - 1) * L
    out = np.empty((n,) + a.shape, a.dtype)
    p = np.ones(a.shape, a.dtype)
    for k in range(1, L + 1):
        p = p * a
        if k == last:
            out[n - 1] = p
    out[: n - 1] = p
    return out


# ---------------------------------------------------------------------------
# LRU: complex lanes (B, T, N), a = λ constant in time
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", parallel=True)
def lru_forward(lam, gamma, Bx, carry, L, totals, h, tot_b):
    """``h_t = λ h_{t−1} + γ Bx_t`` over chunks of ``L`` steps from ``carry (B, n, N)``.
    ``totals``: write only the chunks' last states ``tot_b``; else ``h``."""
    B, T, N = Bx.shape
    n = carry.shape[1]
    for job in prange(B * n):
        b = job // n
        c = job % n
        state = _row(carry, b, c)
        for t in range(c * L, min(T, (c + 1) * L)):
            for r in range(N):
                state[r] = lam[r] * state[r] + gamma[r] * Bx[b, t, r]
                if not totals:
                    h[b, t, r] = state[r]
        if totals:
            tot_b[b, c] = state


@njit(cache=True, error_model="numpy", parallel=True)
def lru_backward(lam, gamma, Bx, h, h0, dh, carry, L, totals, gg, dlam, dgamma, tot_g):
    """The reverse pass: ``g_t = dh_t + G``, ``G ← conj(λ) g_t``; writes ``gg = γ g``
    and per (row, chunk) ``dlam = Σ_t g_t conj(h_{t−1})``, ``dgamma = Σ_t Re(g_t
    conj(Bx_t))``; ``tot_g`` the ``G`` leaving each chunk. ``totals``: ``tot_g`` only."""
    B, T, N = Bx.shape
    n = carry.shape[1]
    for job in prange(B * n):
        b = job // n
        c = job % n
        G = _row(carry, b, c)
        acc_l = np.zeros(N, lam.dtype)
        acc_g = np.zeros(N, gamma.dtype)
        for t in range(min(T, (c + 1) * L) - 1, c * L - 1, -1):
            for r in range(N):
                g = dh[b, t, r] + G[r]
                G[r] = np.conj(lam[r]) * g
                if totals:
                    continue
                h_prev = h[b, t - 1, r] if t > 0 else h0[b, r]
                gg[b, t, r] = gamma[r] * g
                acc_l[r] += g * np.conj(h_prev)
                acc_g[r] += (g * np.conj(Bx[b, t, r])).real
        tot_g[b, c] = G
        if not totals:
            dlam[b, c] = acc_l
            dgamma[b, c] = acc_g


# ---------------------------------------------------------------------------
# S4D: complex modes in real and imaginary parts. A job is one batch row, one
# chunk and one block of LANES channels; inside it every array is mode-major
# (N, ·, LANES) and every inner loop runs over the LANES channels, lane-wise
# (no loop reduces across lanes), so it vectorises with fastmath off. LANES is
# a compile-time constant: with a run-time channel loop of length D = 32 the
# backward's loop stayed scalar (measured 16 ns per mode-step, against 1.8 ns
# with LANES). The wrappers pad D to a multiple of LANES with zero channels
# (Ā = B̄ = C = 0 keep them at 0) and cut the results back.
#
# The states are not kept: the forward stores the state entering every block
# of CHECKPOINT steps, and the backward recomputes a block's states from it
# into a job-local buffer (the same operations in the same order, so the same
# values) before its reverse loop. Writing every state instead (33 MB of fresh
# pages at (B, T, D, N) = (8, 512, 32, 32) float32) made the forward 12 ms,
# against 1.1 ms for its arithmetic.
# ---------------------------------------------------------------------------

LANES = 16       # channels per job: one AVX-512 vector of float32
CHECKPOINT = 16  # steps per recomputed block: a (17, N, 2, LANES) buffer, 68 KiB at
                 # N = 32 in float32, stays in L2


@njit(cache=True, error_model="numpy", inline="always")
def _ssm_step(cf, st, xt):
    """``st ← Ā st + B̄ x_t`` in place for one block of channels (``cf (N, 6, LANES)``
    the parts of Ā, B̄, C; ``st (N, 2, LANES)``; ``xt (LANES,)``), NumPy's complex
    product written out. (In place: every element is read and written by its own
    iteration, so the loop vectorises without overlap checks, where a double
    buffer's two views of one array did not.)"""
    for k in range(cf.shape[0]):
        for d in range(LANES):
            r = cf[k, 0, d] * st[k, 0, d] - cf[k, 1, d] * st[k, 1, d] + cf[k, 2, d] * xt[d]
            i = cf[k, 0, d] * st[k, 1, d] + cf[k, 1, d] * st[k, 0, d] + cf[k, 3, d] * xt[d]
            st[k, 0, d] = r
            st[k, 1, d] = i


@njit(cache=True, error_model="numpy", parallel=True)
def ssm_forward(cf, D, x, carry, L, totals, ck, y, tot, two):
    """``h_t = Ā h_{t−1} + B̄ x_t`` and ``y_t = 2 Re(Σ_n C h_t) + D x_t`` over chunks
    of ``L`` steps from ``carry (B, n, NB, N, 2, LANES)``; ``cf (NB, N, 6, LANES)``,
    ``x``, ``y (B, T, NB·LANES)``. Writes ``tot`` the chunks' last states and,
    unless ``totals``, ``y`` and the checkpoints ``ck (B, n·nb, NB, N, 2, LANES)``
    (the state entering block ``k`` of :data:`CHECKPOINT` steps of chunk ``c`` at
    ``c·nb + k``)."""
    B = x.shape[0]
    n, NB = carry.shape[1], carry.shape[2]
    for job in prange(B * n * NB):
        _ssm_forward_job(cf, D, x, carry, L, totals, ck, y, tot, two,
                         job // (n * NB), (job // NB) % n, job % NB)


@njit(cache=True, error_model="numpy")
def _ssm_forward_job(cf, D, x, carry, L, totals, ck, y, tot, two, b, c, jb):
    """One job of :func:`ssm_forward`: batch row ``b``, chunk ``c``, channel block
    ``jb`` (its own function: inside a ``prange`` body the lane loops did not
    vectorise, measured 17 ms against 2 ms)."""
    T = x.shape[1]
    n, N = carry.shape[1], carry.shape[3]
    nb = ck.shape[1] // n
    zero = two - two
    if True:
        d0 = jb * LANES
        s0 = c * L
        cfj = cf[jb]
        h = np.empty((N, 2, LANES), x.dtype)       # the state
        h[:] = carry[b, c, jb]                      # (not .copy(): see _row)
        xt = np.empty(LANES, x.dtype)
        acc = np.empty(LANES, x.dtype)
        for t in range(s0, min(T, s0 + L)):
            for d in range(LANES):
                xt[d] = x[b, t, d0 + d]
            if not totals and (t - s0) % CHECKPOINT == 0:
                ck[b, c * nb + (t - s0) // CHECKPOINT, jb] = h
            _ssm_step(cfj, h, xt)
            if totals:
                continue
            for d in range(LANES):
                acc[d] = zero
            for k in range(N):
                for d in range(LANES):
                    acc[d] += h[k, 0, d] * cfj[k, 4, d] - h[k, 1, d] * cfj[k, 5, d]  # Re(C h)
            for d in range(LANES):
                y[b, t, d0 + d] = two * acc[d] + D[d0 + d] * xt[d]
        tot[b, c, jb] = h


@njit(cache=True, error_model="numpy", parallel=True)
def ssm_backward(cf, D, x, ck, dy, carry, L, totals, dx, sums, tot, two):
    """The reverse pass per channel: ``g_t = 2 dy_t conj(C) + G``, ``G ← conj(Ā) g_t``;
    writes ``dx_t = Re(Σ_n g_t conj(B̄)) + D dy_t`` and per (row, chunk, block) into
    ``sums (B, n, NB, N, 6, LANES)`` the sums over t of ``g conj(h_{t−1})`` (dĀ),
    ``g x_t`` (dB̄) and ``dy_t conj(h_t)`` (dC/2), real and imaginary parts; ``tot``
    the ``G`` leaving each chunk. ``totals``: ``tot`` only. Each block's states are
    recomputed from the forward's checkpoints ``ck``. Layouts as :func:`ssm_forward`'s."""
    B = x.shape[0]
    n, NB = carry.shape[1], carry.shape[2]
    for job in prange(B * n * NB):
        _ssm_backward_job(cf, D, x, ck, dy, carry, L, totals, dx, sums, tot, two,
                          job // (n * NB), (job // NB) % n, job % NB)


@njit(cache=True, error_model="numpy")
def _ssm_backward_job(cf, D, x, ck, dy, carry, L, totals, dx, sums, tot, two, b, c, jb):
    """One job of :func:`ssm_backward` (see :func:`_ssm_forward_job`)."""
    T = x.shape[1]
    n, N = carry.shape[1], carry.shape[3]
    nb = ck.shape[1] // n
    zero = two - two
    if True:
        d0 = jb * LANES
        s0 = c * L
        s1 = min(T, s0 + L)
        cfj = cf[jb]
        G = np.empty((N, 2, LANES), x.dtype)
        G[:] = carry[b, c, jb]
        S = np.zeros((N, 6, LANES), x.dtype)
        buf = np.empty((CHECKPOINT + 1, N, 2, LANES), x.dtype)  # h_{u−1}, …, h_{v−1}
        st = np.empty((N, 2, LANES), x.dtype)
        xt = np.empty(LANES, x.dtype)
        dyt = np.empty(LANES, x.dtype)
        t2 = np.empty(LANES, x.dtype)
        sx = np.empty(LANES, x.dtype)
        for kb in range((s1 - s0 + CHECKPOINT - 1) // CHECKPOINT - 1, -1, -1):
            u = s0 + kb * CHECKPOINT
            v = min(s1, u + CHECKPOINT)
            if not totals:
                st[:] = ck[b, c * nb + kb, jb]
                buf[0] = st
                for t in range(u, v):
                    for d in range(LANES):
                        xt[d] = x[b, t, d0 + d]
                    _ssm_step(cfj, st, xt)
                    buf[t - u + 1] = st
            for t in range(v - 1, u - 1, -1):
                for d in range(LANES):
                    dyt[d] = dy[b, t, d0 + d]
                    t2[d] = two * dyt[d]
                if totals:
                    for k in range(N):
                        for d in range(LANES):
                            gr = t2[d] * cfj[k, 4, d] + G[k, 0, d]      # dh = 2 dy conj(C), + G
                            gi = t2[d] * (-cfj[k, 5, d]) + G[k, 1, d]
                            G[k, 0, d] = cfj[k, 0, d] * gr + cfj[k, 1, d] * gi  # conj(Ā) g
                            G[k, 1, d] = cfj[k, 0, d] * gi - cfj[k, 1, d] * gr
                    continue
                for d in range(LANES):
                    xt[d] = x[b, t, d0 + d]
                    sx[d] = zero
                h = buf[t - u + 1]
                hp = buf[t - u]
                for k in range(N):
                    for d in range(LANES):
                        gr = t2[d] * cfj[k, 4, d] + G[k, 0, d]
                        gi = t2[d] * (-cfj[k, 5, d]) + G[k, 1, d]
                        G[k, 0, d] = cfj[k, 0, d] * gr + cfj[k, 1, d] * gi
                        G[k, 1, d] = cfj[k, 0, d] * gi - cfj[k, 1, d] * gr
                        S[k, 0, d] += gr * hp[k, 0, d] + gi * hp[k, 1, d]    # g conj(h_{t−1})
                        S[k, 1, d] += gi * hp[k, 0, d] - gr * hp[k, 1, d]
                        S[k, 2, d] += gr * xt[d]                             # g x_t
                        S[k, 3, d] += gi * xt[d]
                        S[k, 4, d] += dyt[d] * h[k, 0, d]                    # dy conj(h_t)
                        S[k, 5, d] += dyt[d] * (-h[k, 1, d])
                        sx[d] += gr * cfj[k, 2, d] + gi * cfj[k, 3, d]       # Re(g conj(B̄))
                for d in range(LANES):
                    dx[b, t, d0 + d] = sx[d] + D[d0 + d] * dyt[d]
        tot[b, c, jb] = G
        if not totals:
            sums[b, c, jb] = S
