"""Numba kernels for the GLA engine (linear attention, RetNet, simple GLA, GLA,
RWKV-6): ``method="recurrent"`` and ``method="chunk"``.

Definition, per batch row b and head h (``a_t = e^{g_t}``: one number per head
for a scalar ``g (B, T, H)``, one per key row for ``g (B, T, H, K)``, 1 for
``g = None``):

    GLA mode (u None):    S_t = Diag(a_t) S_{t−1} + k_t v_t^T,   o_t = scale · S_t^T q_t
    RWKV mode (u (H, K)): o_t = scale · (S_{t−1} + Diag(u) k_t v_t^T)^T q_t,  then S_t as above

Tested against :func:`minirec.ops.gla.run` / ``run_backward`` with
``backend="numpy", method="recurrent"`` (tests/kernels/test_numba_matrix.py).

``recurrent``: one fused pass over time per (b, h), ``prange`` over the
``B·H`` independent rows, the state ``S (K, V)`` in a local array; per step one
sweep over ``S`` updates it and reads ``o_t``. The forward keeps the state every
``chunk_size`` steps (a checkpoint, ``(B, H, ⌈T/chunk_size⌉, K, V)``: all T
states would be 2 GB at B=2, T=4096, H=4, K=V=128); the backward recomputes one
segment of states from its checkpoint with the forward's operations (bitwise the
same states) and runs BPTT through it in one fused sweep per step, with ``dS``
= ∂L/∂S_t in a local array:

    GLA mode:   dS += scale·q_t do_t^T;  dq_t = scale·S_t do_t;  dk_t = dS v_t;
                dv_t = dS^T k_t;  dg_t = a_t ⊙ Σ_V dS ⊙ S_{t−1};  dS ← Diag(a_t) dS
    RWKV mode:  c_t = scale·(v_t·do_t);  dq_t = scale·S_{t−1} do_t + c_t u⊙k_t;
                dk_t = dS v_t + c_t u⊙q_t;  dv_t = dS^T k_t + scale·(q_t·(u⊙k_t)) do_t;
                du += c_t q_t⊙k_t;  dg_t as above;  dS ← Diag(a_t) dS + scale·q_t do_t^T

(a scalar gate sums ``dg_t`` over K too).

``chunk``: the chunkwise-parallel form. Per chunk of ``L ≤ chunk_size`` steps
starting from ``S_in``, with ``G_i = Σ_{s≤i} g_s`` cumulative inside the chunk,
``Gq_i = G_i`` (GLA) or ``G_{i−1}`` (RWKV, ``Gq_0 = 0``), ``γ = G_{L−1}``:

    Qg = Q ⊙ e^{Gq}                Kg = K ⊙ e^{γ − G}
    A_ij = Σ_c q_ic k_jc e^{Gq_ic − G_jc}  for j ≤ i (GLA) / j < i (RWKV), else 0
    A_ii = q_i · (u ⊙ k_i)                 (RWKV's bonus on the diagonal)
    O = scale · (Qg S_in + A V)           S_out = Diag(e^{γ}) S_in + Kg^T V

Only exponents ``≤ 0`` (for ``g ≤ 0``) are formed: the masked entries of ``A``
are never exponentiated. A scalar gate makes ``A = (Q K^T) ⊙ D`` with
``D_ij = e^{Gq_i − G_j}``: one GEMM. A per-key gate has no such factorisation
over the whole chunk; :func:`_intra_key` splits the rows into sub-blocks of
:data:`_SUB` and factors ``e^{Gq_i − G_j} = e^{Gq_i − G_r} e^{G_r − G_j}`` at the
step ``r`` just before the sub-block (both factors ``≤ 1``): one GEMM per
sub-block for the earlier columns, a running product of ``e^{g}`` inside it.
The products ``Qg S_in``, ``A V``, ``Kg^T V`` (and the backward's) are
``np.dot`` on contiguous 2-D arrays: Numba calls BLAS GEMM.
The backward runs chunk by chunk, last first, from ``dS = ∂L/∂S_out``
(``dO = scale · do``):

    dQg = dO S_in^T     dKg = V dS^T     dV = A^T dO + Kg dS     dA = dO V^T (masked)
    dS_in = Diag(e^{γ}) dS + Qg^T dO
    dq = dQg ⊙ e^{Gq} + Σ_j dA_ij k_j ⊙ e^{Gq_i − G_j}     dGq += dQg ⊙ Qg + Σ_j P_ij
    dk = dKg ⊙ e^{γ − G} + Σ_i dA_ij q_i ⊙ e^{Gq_i − G_j}  dG −= dKg ⊙ Kg + Σ_i P_ij
    dγ += Σ_j dKg ⊙ Kg + e^{γ} ⊙ Σ_V dS ⊙ S_in           (P_ijc = dA_ij q_ic k_jc e^{Gq_ic − G_jc})
    RWKV diagonal: dA_ii = dO_i · v_i;  dq_i += dA_ii u⊙k_i;  dk_i += dA_ii u⊙q_i;
                   du += dA_ii q_i⊙k_i

then ``dGq`` goes to ``dG`` (shifted by one step in RWKV mode), ``dγ`` to
``dG_{L−1}``, and ``dg_s = Σ_{i≥s} dG_i`` (the cumulative sum's backward). The
states at the chunk starts are the forward's cache (the same array as the
recurrent form's checkpoints).

``fastmath`` is off so results match the NumPy reference to rounding; ``scale``,
0 and 1 arrive in the arrays' dtype (a float64 literal would promote float32
arithmetic). The cumulative log decays of the chunk form (and their gradients)
are float64 also for float32 inputs: with decays of −100 per step a chunk's
``|G|`` reaches thousands, and a float32 difference ``G_i − G_j`` would carry
``eps·|G|`` into the exponent (measured: ``dg`` 1e-4 off at −200 per step;
with float64, float32 chunk results are as close to the float64 definition as
the float32 recurrence is). Only ``du`` is reduced over B outside the kernels,
and the ``chunk`` kernels run with one BLAS thread. This module imports nothing
from the rest of minirec except :mod:`minirec.kernels.numba._heads` (and its
:mod:`~minirec.kernels.numba._blas`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from minirec.kernels.numba._heads import blas_limit as _blas_limit
from minirec.kernels.numba._heads import check_method
from minirec.kernels.numba._heads import contiguous as _c

METHODS = ("recurrent", "chunk")


# ---------------------------------------------------------------------------
# recurrent
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", inline="always")
def _decay(g, b, t, h, has_g, a):
    """``a = e^{g_t}`` over the K rows (a scalar gate repeated; 1 without ``g``)."""
    K = a.shape[0]
    if has_g:
        W = g.shape[3]
        for i in range(K):
            a[i] = np.exp(g[b, t, h, i if W > 1 else 0])


@njit(cache=True, error_model="numpy")
def _rec_forward_row(q, k, v, g, u, S0, scale, one, has_g, has_u, seg, o, S_T, ckpt, b, h):
    """One (batch row, head) of :func:`_rec_forward`."""
    B, T, H, K = q.shape
    Vd = v.shape[3]
    zero = one - one
    S = S0[b, h].copy()
    a = np.ones(K, q.dtype)
    vt = np.empty(Vd, q.dtype)
    acc = np.empty(Vd, q.dtype)
    for t in range(T):
        if t % seg == 0:
            ckpt[b, h, t // seg] = S
        _decay(g, b, t, h, has_g, a)
        for j in range(Vd):
            vt[j] = v[b, t, h, j]
            acc[j] = zero
        if has_u:  # read S_{t−1} (and the bonus), then update
            bonus = zero
            for i in range(K):
                bonus += q[b, t, h, i] * u[h, i] * k[b, t, h, i]
            for i in range(K):
                qi = q[b, t, h, i]
                ki = k[b, t, h, i]
                ai = a[i]
                for j in range(Vd):
                    s = S[i, j]
                    acc[j] += qi * s
                    S[i, j] = ai * s + ki * vt[j]
            for j in range(Vd):
                o[b, t, h, j] = scale * (acc[j] + bonus * vt[j])
        else:      # update, then read S_t
            for i in range(K):
                qi = q[b, t, h, i]
                ki = k[b, t, h, i]
                ai = a[i]
                for j in range(Vd):
                    s = ai * S[i, j] + ki * vt[j]
                    S[i, j] = s
                    acc[j] += qi * s
            for j in range(Vd):
                o[b, t, h, j] = scale * acc[j]
    S_T[b, h] = S


@njit(cache=True, error_model="numpy", parallel=True)
def _rec_forward(q, k, v, g, u, S0, scale, one, has_g, has_u, seg, o, S_T, ckpt):
    B, H = q.shape[0], q.shape[2]
    for job in prange(B * H):
        _rec_forward_row(q, k, v, g, u, S0, scale, one, has_g, has_u, seg, o, S_T, ckpt, job // H,
                         job % H)


@njit(cache=True, error_model="numpy")
def _rec_backward_row(q, k, v, g, u, ckpt, do, dS_T, scale, one, has_g, has_u, seg, dq, dk, dv, dg,
                      du_b, dS0, b, h):
    """One (batch row, head) of :func:`_rec_backward`."""
    B, T, H, K = q.shape
    Vd = v.shape[3]
    W = g.shape[3]
    n_seg = ckpt.shape[2]
    zero = one - one
    dS = dS_T[b, h].copy()
    buf = np.empty((seg + 1, K, Vd), q.dtype)
    a = np.ones(K, q.dtype)
    vt = np.empty(Vd, q.dtype)
    dot = np.empty(Vd, q.dtype)
    dvt = np.empty(Vd, q.dtype)
    du = np.zeros(K, q.dtype)
    for n in range(n_seg - 1, -1, -1):
        t0 = n * seg
        t1 = min(T, t0 + seg)
        # recompute S_{t0−1}, …, S_{t1−1} with the forward's operations
        buf[0] = ckpt[b, h, n]
        for t in range(t0, t1):
            l = t - t0
            _decay(g, b, t, h, has_g, a)
            for i in range(K):
                ki = k[b, t, h, i]
                ai = a[i]
                for j in range(Vd):
                    buf[l + 1, i, j] = ai * buf[l, i, j] + ki * v[b, t, h, j]
        for t in range(t1 - 1, t0 - 1, -1):
            l = t - t0
            _decay(g, b, t, h, has_g, a)
            vdo = zero
            for j in range(Vd):
                vt[j] = v[b, t, h, j]
                dot[j] = do[b, t, h, j]
                dvt[j] = zero
                vdo += vt[j] * dot[j]
            dg_sum = zero
            if has_u:
                c = scale * vdo
                bonus = zero
                for i in range(K):
                    bonus += q[b, t, h, i] * u[h, i] * k[b, t, h, i]
                for i in range(K):
                    qi = q[b, t, h, i]
                    ki = k[b, t, h, i]
                    ai = a[i]
                    sqi = scale * qi
                    dki = zero
                    dqi = zero
                    dgi = zero
                    for j in range(Vd):
                        ds = dS[i, j]
                        sp = buf[l, i, j]
                        dki += ds * vt[j]
                        dvt[j] += ds * ki
                        dgi += ds * sp
                        dqi += sp * dot[j]
                        dS[i, j] = ai * ds + sqi * dot[j]
                    dq[b, t, h, i] = scale * dqi + c * u[h, i] * ki
                    dk[b, t, h, i] = dki + c * u[h, i] * qi
                    du[i] += c * qi * ki
                    if W > 1:
                        dg[b, t, h, i] = ai * dgi
                    else:
                        dg_sum += ai * dgi
                for j in range(Vd):
                    dv[b, t, h, j] = dvt[j] + scale * bonus * dot[j]
            else:
                for i in range(K):
                    ki = k[b, t, h, i]
                    ai = a[i]
                    sqi = scale * q[b, t, h, i]
                    dki = zero
                    dqi = zero
                    dgi = zero
                    for j in range(Vd):
                        ds = dS[i, j] + sqi * dot[j]
                        dki += ds * vt[j]
                        dvt[j] += ds * ki
                        dgi += ds * buf[l, i, j]
                        dqi += buf[l + 1, i, j] * dot[j]
                        dS[i, j] = ai * ds
                    dq[b, t, h, i] = scale * dqi
                    dk[b, t, h, i] = dki
                    if W > 1:
                        dg[b, t, h, i] = ai * dgi
                    else:
                        dg_sum += ai * dgi
                for j in range(Vd):
                    dv[b, t, h, j] = dvt[j]
            if has_g and W == 1:
                dg[b, t, h, 0] = dg_sum
    dS0[b, h] = dS
    for i in range(K):
        du_b[b, h, i] = du[i]


@njit(cache=True, error_model="numpy", parallel=True)
def _rec_backward(q, k, v, g, u, ckpt, do, dS_T, scale, one, has_g, has_u, seg,
                  dq, dk, dv, dg, du_b, dS0):
    """BPTT (module docstring) segment by segment from the checkpoints; writes
    ``dq, dk, dv, dg (B, T, H, K')``, ``du_b (B, H, K)`` (summed over T only)
    and ``dS0``."""
    B, H = q.shape[0], q.shape[2]
    for job in prange(B * H):
        _rec_backward_row(q, k, v, g, u, ckpt, do, dS_T, scale, one, has_g, has_u, seg, dq, dk, dv,
                          dg, du_b, dS0, job // H, job % H)


# ---------------------------------------------------------------------------
# chunk
# ---------------------------------------------------------------------------

# rows per sub-block of a chunk for per-key gates: the off-diagonal blocks are
# one GEMM each; 16 keeps the diagonal blocks' plain loops small (L/16 of them)
_SUB = 16


@njit(cache=True, error_model="numpy")
def _intra_key(Qc, Kc, G, Gq, a, off, one):
    """``A_ij = Σ_c q_ic k_jc e^{Gq_ic − G_jc}`` (j ≤ i − off) for per-key gates.

    Rows in sub-blocks ``[I0, I1)`` of :data:`_SUB`: the columns ``j < I0`` by one
    GEMM ``(Q_I ⊙ e^{Gq_I − G_r}) (K_{<I0} ⊙ e^{G_r − G_{<I0}})^T`` with
    ``r = I0 − 1`` (both exponents ≤ 0: ``j ≤ r ≤ i − off``), the diagonal
    block by the running product ``e^{Gq_i − G_j} = Π_{s=j+1}^{i−off} a_s``
    (``a = e^{g}``, no exponential of a positive number, no GEMM)."""
    L, K = Qc.shape
    zero = one - one
    A = np.zeros((L, L), Qc.dtype)
    w = np.empty(K, Qc.dtype)
    for I0 in range(0, L, _SUB):
        I1 = min(L, I0 + _SUB)
        if I0 > 0:
            Qr, Kr = _factors(Qc, Kc, G, Gq, I0, I1)
            A[I0:I1, :I0] = np.dot(Qr, Kr.T)
        for i in range(I0, I1):
            for c in range(K):
                w[c] = one
            for j in range(i - off, I0 - 1, -1):
                s = zero
                for c in range(K):
                    s += Qc[i, c] * w[c] * Kc[j, c]
                    w[c] = w[c] * a[j, c]
                A[i, j] = s
    return A


@njit(cache=True, error_model="numpy")
def _factors(Qc, Kc, G, Gq, I0, I1):
    """``Q_I ⊙ e^{Gq_I − G_r}`` and ``K_{<I0} ⊙ e^{G_r − G_{<I0}}``, ``r = I0 − 1``."""
    K = Qc.shape[1]
    r = I0 - 1
    Qr = np.empty((I1 - I0, K), Qc.dtype)
    Kr = np.empty((I0, K), Qc.dtype)
    for i in range(I0, I1):
        for c in range(K):
            Qr[i - I0, c] = Qc[i, c] * np.exp(Gq[i, c] - G[r, c])
    for j in range(I0):
        for c in range(K):
            Kr[j, c] = Kc[j, c] * np.exp(G[r, c] - G[j, c])
    return Qr, Kr


@njit(cache=True, error_model="numpy")
def _intra_key_backward(Qc, Kc, G, Gq, a, off, dA, dQc, dKc, dGq, dG, one):
    """Back through :func:`_intra_key`: adds to ``dQc, dKc, dGq, dG`` (per key).

    Off-diagonal blocks: ``dQr = dA_{I,<I0} Kr``, ``dKr = dA_{I,<I0}^T Qr``;
    ``dq += dQr ⊙ e^{Gq − G_r}``, ``dGq += dQr ⊙ Qr``, ``dG_r −= Σ_i dQr ⊙ Qr``;
    ``dk += dKr ⊙ e^{G_r − G}``, ``dG_j −= dKr ⊙ Kr``, ``dG_r += Σ_j dKr ⊙ Kr``.
    Diagonal blocks: with ``w = e^{Gq_i − G_j}`` and ``P = dA_ij q_i ⊙ k_j ⊙ w``:
    ``dq_i += dA_ij w ⊙ k_j``, ``dk_j += dA_ij w ⊙ q_i``, ``dGq_i += P``, ``dG_j −= P``."""
    L, K = Qc.shape
    w = np.empty(K, Qc.dtype)
    for I0 in range(0, L, _SUB):
        I1 = min(L, I0 + _SUB)
        if I0 > 0:
            r = I0 - 1
            Qr, Kr = _factors(Qc, Kc, G, Gq, I0, I1)
            dAo = np.ascontiguousarray(dA[I0:I1, :I0])
            dQr = np.dot(dAo, Kr)
            dKr = np.dot(dAo.T, Qr)
            for i in range(I0, I1):
                for c in range(K):
                    p = dQr[i - I0, c] * Qr[i - I0, c]
                    dQc[i, c] += dQr[i - I0, c] * np.exp(Gq[i, c] - G[r, c])
                    dGq[i, c] += p
                    dG[r, c] -= p
            for j in range(I0):
                for c in range(K):
                    p = dKr[j, c] * Kr[j, c]
                    dKc[j, c] += dKr[j, c] * np.exp(G[r, c] - G[j, c])
                    dG[j, c] -= p
                    dG[r, c] += p
        for i in range(I0, I1):
            for c in range(K):
                w[c] = one
            for j in range(i - off, I0 - 1, -1):
                dAij = dA[i, j]
                for c in range(K):
                    e = dAij * w[c]
                    dQc[i, c] += e * Kc[j, c]
                    dKc[j, c] += e * Qc[i, c]
                    p = e * Qc[i, c] * Kc[j, c]
                    dGq[i, c] += p
                    dG[j, c] -= p
                    w[c] = w[c] * a[j, c]


@njit(cache=True, error_model="numpy")
def _chunk_inputs(q, k, v, g, u, b, h, t0, L, has_g, has_u, one):
    """One chunk's contiguous ``Qc, Kc (L, K)``, ``Vc (L, V)``, cumulative gates
    ``G, Gq (L, K')``, the matrices ``Qg, Kg (L, K)``, ``A (L, L)`` and ``D``:
    for a scalar gate ``D_ij = e^{Gq_i − G_j}`` (L, L), for per-key gates the
    decays ``e^{g_l}`` (L, K) (module docstring)."""
    K = q.shape[3]
    Vd = v.shape[3]
    W = g.shape[3]
    zero = one - one
    Qc = np.empty((L, K), q.dtype)
    Kc = np.empty((L, K), q.dtype)
    Vc = np.empty((L, Vd), q.dtype)
    # cumulative log decays in float64 (also for float32 inputs): with decays of
    # −100 per step |G| reaches thousands in a chunk, and a float32 difference
    # G_i − G_j of two such numbers would carry an error of eps·|G| ≈ 4e-4 into
    # the exponent (measured: dg 1e-4 off at −200 per step, chunk 64)
    G = np.zeros((L, W), np.float64)
    Gq = np.zeros((L, W), np.float64)
    for l in range(L):
        for c in range(K):
            Qc[l, c] = q[b, t0 + l, h, c]
            Kc[l, c] = k[b, t0 + l, h, c]
        for j in range(Vd):
            Vc[l, j] = v[b, t0 + l, h, j]
    if has_g:
        for c in range(W):
            G[0, c] = g[b, t0, h, c]
        for l in range(1, L):
            for c in range(W):
                G[l, c] = G[l - 1, c] + g[b, t0 + l, h, c]
    for l in range(L):
        for c in range(W):
            if not has_u:
                Gq[l, c] = G[l, c]
            elif l > 0:
                Gq[l, c] = G[l - 1, c]
    Qg = np.empty((L, K), q.dtype)
    Kg = np.empty((L, K), q.dtype)
    for l in range(L):
        for c in range(K):
            w = c if W > 1 else 0
            Qg[l, c] = Qc[l, c] * np.exp(Gq[l, w])
            Kg[l, c] = Kc[l, c] * np.exp(G[L - 1, w] - G[l, w])
    # diagonal included in GLA mode; RWKV's diagonal is the bonus
    off = 1 if has_u else 0
    if W == 1:
        A = np.dot(Qc, Kc.T)
        D = np.zeros((L, L), q.dtype)
        for i in range(L):
            for j in range(L):
                if j <= i - off:
                    D[i, j] = np.exp(Gq[i, 0] - G[j, 0])
                    A[i, j] = A[i, j] * D[i, j]
                else:
                    A[i, j] = zero
    else:
        # D holds a_l = e^{g_l} (L, K) for the diagonal blocks' running products
        D = np.empty((L, K), q.dtype)
        for l in range(L):
            for c in range(K):
                D[l, c] = np.exp(g[b, t0 + l, h, c])
        A = _intra_key(Qc, Kc, G, Gq, D, off, one)
    if has_u:
        for i in range(L):
            s = zero
            for c in range(K):
                s += Qc[i, c] * u[h, c] * Kc[i, c]
            A[i, i] = s
    return Qc, Kc, Vc, G, Gq, Qg, Kg, A, D


@njit(cache=True, error_model="numpy")
def _chunk_forward_row(q, k, v, g, u, S0, scale, one, has_g, has_u, C, o, S_T, states, b, h):
    """One (batch row, head) of :func:`_chunk_forward`."""
    B, T, H, K = q.shape
    Vd = v.shape[3]
    W = g.shape[3]
    n_chunks = states.shape[2]
    S = S0[b, h].copy()
    for n in range(n_chunks):
        states[b, h, n] = S
        t0 = n * C
        L = min(T, t0 + C) - t0
        Qc, Kc, Vc, G, Gq, Qg, Kg, A, D = _chunk_inputs(q, k, v, g, u, b, h, t0, L,
                                                         has_g, has_u, one)
        O = np.dot(Qg, S) + np.dot(A, Vc)
        for l in range(L):
            for j in range(Vd):
                o[b, t0 + l, h, j] = scale * O[l, j]
        S_new = np.dot(Kg.T, Vc)
        for i in range(K):
            gamma = np.exp(G[L - 1, i if W > 1 else 0])
            for j in range(Vd):
                S[i, j] = gamma * S[i, j] + S_new[i, j]
    S_T[b, h] = S


@njit(cache=True, error_model="numpy", parallel=True)
def _chunk_forward(q, k, v, g, u, S0, scale, one, has_g, has_u, C, o, S_T, states):
    B, H = q.shape[0], q.shape[2]
    for job in prange(B * H):
        _chunk_forward_row(q, k, v, g, u, S0, scale, one, has_g, has_u, C, o, S_T, states, job // H,
                           job % H)


@njit(cache=True, error_model="numpy")
def _chunk_backward_row(q, k, v, g, u, states, do, dS_T, scale, one, has_g, has_u, C, dq, dk, dv,
                        dg, du_b, dS0, b, h):
    """One (batch row, head) of :func:`_chunk_backward`."""
    B, T, H, K = q.shape
    Vd = v.shape[3]
    W = g.shape[3]
    zero = one - one
    n_chunks = states.shape[2]
    dS = dS_T[b, h].copy()
    du = np.zeros(K, q.dtype)
    for n in range(n_chunks - 1, -1, -1):
        t0 = n * C
        L = min(T, t0 + C) - t0
        Qc, Kc, Vc, G, Gq, Qg, Kg, A, D = _chunk_inputs(q, k, v, g, u, b, h, t0, L,
                                                         has_g, has_u, one)
        S_in = states[b, h, n]
        dO = np.empty((L, Vd), q.dtype)
        for l in range(L):
            for j in range(Vd):
                dO[l, j] = scale * do[b, t0 + l, h, j]
        dQg = np.dot(dO, S_in.T)
        dKg = np.dot(Vc, dS.T)
        dVc = np.dot(A.T, dO) + np.dot(Kg, dS)
        dA = np.dot(dO, Vc.T)
        dS_prev = np.dot(Qg.T, dO)
        # float64 like G: dg is a reverse cumulative sum of dG whose terms
        # cancel where the decay is strong
        dG = np.zeros((L, W), np.float64)
        dGq = np.zeros((L, W), np.float64)
        dgamma = np.zeros(W, np.float64)
        dQc = np.empty((L, K), q.dtype)
        dKc = np.empty((L, K), q.dtype)
        # through Qg = Q ⊙ e^{Gq} and Kg = K ⊙ e^{γ − G}
        for l in range(L):
            for c in range(K):
                w = c if W > 1 else 0
                dQc[l, c] = dQg[l, c] * np.exp(Gq[l, w])
                dGq[l, w] += dQg[l, c] * Qg[l, c]
                dKc[l, c] = dKg[l, c] * np.exp(G[L - 1, w] - G[l, w])
                p = dKg[l, c] * Kg[l, c]
                dG[l, w] -= p
                dgamma[w] += p
        # through S_out = Diag(e^{γ}) S_in + …
        for i in range(K):
            w = i if W > 1 else 0
            gamma = np.exp(G[L - 1, w])
            s = zero
            for j in range(Vd):
                s += dS[i, j] * S_in[i, j]
                dS_prev[i, j] += gamma * dS[i, j]
            dgamma[w] += gamma * s
        # through A (intra-chunk)
        off = 1 if has_u else 0
        if W == 1:
            dAD = np.zeros((L, L), q.dtype)
            for i in range(L):
                for j in range(i + 1 - off):
                    dAD[i, j] = dA[i, j] * D[i, j]
                    p = dA[i, j] * A[i, j]
                    dGq[i, 0] += p
                    dG[j, 0] -= p
            dQc += np.dot(dAD, Kc)
            dKc += np.dot(dAD.T, Qc)
        else:
            _intra_key_backward(Qc, Kc, G, Gq, D, off, dA, dQc, dKc, dGq, dG, one)
        if has_u:
            for i in range(L):
                dAii = dA[i, i]
                for c in range(K):
                    dQc[i, c] += dAii * u[h, c] * Kc[i, c]
                    dKc[i, c] += dAii * u[h, c] * Qc[i, c]
                    du[c] += dAii * Qc[i, c] * Kc[i, c]
        for l in range(L):
            for c in range(K):
                dq[b, t0 + l, h, c] = dQc[l, c]
                dk[b, t0 + l, h, c] = dKc[l, c]
            for j in range(Vd):
                dv[b, t0 + l, h, j] = dVc[l, j]
        if has_g:
            # Gq → G, γ → G_{L−1}, then the cumulative sum's backward
            for l in range(L):
                for w in range(W):
                    if not has_u:
                        dG[l, w] += dGq[l, w]
                    elif l > 0:
                        dG[l - 1, w] += dGq[l, w]
            for w in range(W):
                dG[L - 1, w] += dgamma[w]
                run = 0.0
                for l in range(L - 1, -1, -1):
                    run += dG[l, w]
                    dg[b, t0 + l, h, w] = run
        dS = dS_prev
    dS0[b, h] = dS
    for i in range(K):
        du_b[b, h, i] = du[i]


@njit(cache=True, error_model="numpy", parallel=True)
def _chunk_backward(q, k, v, g, u, states, do, dS_T, scale, one, has_g, has_u, C,
                    dq, dk, dv, dg, du_b, dS0):
    """The chunk form's backward (module docstring), last chunk first."""
    B, H = q.shape[0], q.shape[2]
    for job in prange(B * H):
        _chunk_backward_row(q, k, v, g, u, states, do, dS_T, scale, one, has_g, has_u, C, dq, dk,
                            dv, dg, du_b, dS0, job // H, job % H)


# ---------------------------------------------------------------------------
# wrappers (the backend seam)
# ---------------------------------------------------------------------------

class GLAKernelCache(NamedTuple):
    """What :func:`backward` needs: ``method``, the contiguous inputs ``q, k, v``,
    ``g4 (B, T, H, K')`` (``K' = 1`` for a scalar gate and for ``g = None``,
    then zeros ``(1, 1, 1, 1)``), ``u`` (``(1, K)`` zeros when ``None``),
    ``g_ndim`` (``None``, 3 or 4: the shape of ``g``'s gradient), ``has_u``,
    ``scale``, ``chunk_size`` and ``states (B, H, ⌈T/chunk_size⌉, K, V)``:
    the state before steps 0, chunk_size, …"""

    method: str
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    g4: np.ndarray
    u: np.ndarray
    g_ndim: int | None
    has_u: bool
    scale: float
    chunk_size: int
    states: np.ndarray


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None,
            u: np.ndarray | None, initial_state: np.ndarray, *, scale: float,
            method: str = "recurrent", chunk_size: int = 64
            ) -> tuple[np.ndarray, np.ndarray, GLAKernelCache]:
    """The GLA engine's forward (module docstring), in ``q``'s dtype.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``.
        g: ``None``, ``(B, T, H)`` or ``(B, T, H, K)`` log decays.
        u: ``None`` (GLA mode) or ``(H, K)`` (RWKV mode).
        initial_state: ``(B, H, K, V)``.
        scale: the read-out factor.
        method: ``"recurrent"`` or ``"chunk"``.
        chunk_size: the chunk length (``"chunk"``) or the distance between two
            stored states (``"recurrent"``).

    Returns:
        ``o (B, T, H, V)``, ``S_T (B, H, K, V)`` and the cache for :func:`backward`.
    """
    C = check_method("GLA", METHODS, method, chunk_size)
    dtype = q.dtype
    B, T, H, K = q.shape
    Vd = v.shape[3]
    q, k, v = _c(q, dtype), _c(k, dtype), _c(v, dtype)
    S0 = _c(initial_state, dtype)
    has_g = g is not None
    g_ndim = g.ndim if has_g else None
    if not has_g:
        g4 = np.zeros((1, 1, 1, 1), dtype)
    else:
        g4 = _c(g[..., None] if g.ndim == 3 else g, dtype)
    has_u = u is not None
    u2 = _c(u, dtype) if has_u else np.zeros((1, K), dtype)
    n_chunks = max(1, -(-T // C))
    o = np.empty((B, T, H, Vd), dtype)
    S_T = np.empty((B, H, K, Vd), dtype)
    states = np.empty((B, H, n_chunks, K, Vd), dtype)
    kernel = _rec_forward if method == "recurrent" else _chunk_forward
    if T == 0:
        S_T[...] = S0
        states[:, :, 0] = S0
    else:
        with _blas_limit(method):
            kernel(q, k, v, g4, u2, S0, dtype.type(scale), dtype.type(1), has_g, has_u, C,
                   o, S_T, states)
    cache = GLAKernelCache(method, q, k, v, g4, u2, g_ndim, has_u, scale, C, states)
    return o, S_T, cache


def backward(cache: GLAKernelCache, do: np.ndarray | None, dstate: np.ndarray | None
             ) -> dict:
    """The GLA engine's backward by the algorithm of the forward that made
    ``cache`` (module docstring); ``do``/``dstate`` ``None`` mean zeros.

    Returns ``{"q", "k", "v", "g", "u", "initial_state"}`` in the forward's
    shapes and dtype (``g``/``u`` ``None`` when they were ``None``; ``u``'s
    gradient summed over B and T)."""
    q, k, v, g4 = cache.q, cache.k, cache.v, cache.g4
    dtype = q.dtype
    B, T, H, K = q.shape
    Vd = v.shape[3]
    do = np.zeros((B, T, H, Vd), dtype) if do is None else _c(do, dtype)
    dS_T = np.zeros((B, H, K, Vd), dtype) if dstate is None else _c(dstate, dtype)
    has_g = cache.g_ndim is not None
    dq = np.empty_like(q)
    dk = np.empty_like(k)
    dv = np.empty_like(v)
    dg = np.empty(q.shape[:3] + (g4.shape[3],), dtype) if has_g else np.zeros((1, 1, 1, 1), dtype)
    du_b = np.empty((B, H, K), dtype)
    dS0 = np.empty((B, H, K, Vd), dtype)
    kernel = _rec_backward if cache.method == "recurrent" else _chunk_backward
    if T == 0:
        dS0[...] = dS_T
        du_b[...] = 0
    else:
        with _blas_limit(cache.method):
            kernel(q, k, v, g4, cache.u, cache.states, do, dS_T, dtype.type(cache.scale),
                   dtype.type(1), has_g, cache.has_u, cache.chunk_size, dq, dk, dv, dg, du_b,
                   dS0)
    if not has_g:
        dg_out = None
    else:
        dg_out = dg[..., 0] if cache.g_ndim == 3 else dg
    du = du_b.sum(axis=0) if cache.has_u else None
    return {"q": dq, "k": dk, "v": dv, "g": dg_out, "u": du, "initial_state": dS0}
