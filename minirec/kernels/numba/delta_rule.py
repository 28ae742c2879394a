"""Numba kernels for the delta engine (DeltaNet, Gated DeltaNet):
``method="recurrent"`` and ``method="chunk"``.

Definition, per batch row b and head h (``a_t = e^{g_t}``, 1 for ``g = None``;
decay first, then the error against the decayed state, DESIGN §3):

    Sp  = a_t S_{t−1},   e_t = v_t − Sp^T k_t,   S_t = Sp + β_t k_t e_t^T,
    o_t = scale · S_t^T q_t

Tested against :func:`minirec.ops.delta_rule.run` / ``run_backward`` with
``backend="numpy", method="recurrent"`` (tests/kernels/test_numba_matrix.py).

``recurrent``: one fused pass over time per (b, h), ``prange`` over the ``B·H``
independent rows, the state ``S (K, V)`` in a local array: per step one sweep
decays ``S`` and forms ``Sp^T k_t``, a second adds ``β_t k_t e_t^T`` and reads
``o_t``. It keeps the state every ``chunk_size`` steps (checkpoints
``(B, H, ⌈T/chunk_size⌉, K, V)``, not all T states); the backward recomputes one
segment of states from its checkpoint with the forward's operations (bitwise
the forward's states; a step is never inverted) and runs BPTT through it with
``dS`` = ∂L/∂S_t in a local array, at step t (reverse order):

    e_t   = v_t − Sp^T k_t                       (recomputed, Sp = a_t S_{t−1})
    dS   += scale · q_t do_t^T                   dq_t = scale · S_t do_t
    z     = dS e_t                               dβ_t = k_t · z
    de    = β_t dS^T k_t                         dv_t = de
    dk_t  = β_t z − Sp de                        dSp  = dS − k_t de^T
    dg_t  = Σ dSp ⊙ Sp                           dS   ← a_t dSp

(three sweeps over ``S`` per step).

``chunk``: the WY/UT form. Per chunk of ``L ≤ chunk_size`` steps from ``S_in``,
with ``G_i = Σ_{s≤i} g_s`` inside the chunk (float64, as in the GLA kernels),
``γ = G_{L−1}``, ``Gam_ij = e^{G_i − G_j}`` for j ≤ i (0 above: never
exponentiated), unrolling the recurrence gives ``S_t = e^{G_t} S_in +
Σ_{j≤t} Gam_tj k_j w_j^T`` with ``w_j = β_j e_j``, and the ``w`` solve the unit
lower-triangular system (the UT transform ``(I + tril(Diag(β) K K^T ⊙ Gam, −1))^{−1}
Diag(β)`` applied by forward substitution, never inverted):

    M    = tril(Diag(β) (K K^T) ⊙ Gam, −1)          R = V − (e^{G} ⊙ K) S_in
    (I + M) W = Diag(β) R
    O    = scale · ((e^{G} ⊙ Q) S_in + ((Q K^T) ⊙ Gam) W)
    S_out = e^{γ} S_in + (K ⊙ e^{γ − G})^T W

The products are ``np.dot`` on contiguous 2-D arrays (BLAS GEMM). The backward
runs chunk by chunk, last first, from ``dS = ∂L/∂S_out`` (``dO = scale · do``):
back through ``S_out`` and ``O`` (``dW = Kg dS + QKm^T dO``, ``dS_in = e^{γ} dS +
Qg^T dO``, …), then the solve by backward substitution ``(I + M)^T dX = dW``,
``dM = −dX W^T`` (strict lower part), ``dβ_i = dX_i · R_i + Σ_j dM_ij (K K^T)_ij
Gam_ij``, ``dR = Diag(β) dX`` (``dv = dR``, ``dS_in −= (e^{G} ⊙ K)^T dR``),
``d(K K^T) = Diag(β) dM ⊙ Gam`` (``dk += (dKK + dKK^T) K``); every ``Gam`` and
``e^{G}`` entry gives ``dG`` its ``p = ∂ ⊙ value`` (``+p`` at the row's ``G_i``,
``−p`` at the column's ``G_j``), and ``dg_s = Σ_{i≥s} dG_i``.

``fastmath`` is off so results match the NumPy reference to rounding; ``scale``
and 1 arrive in the arrays' dtype; the ``chunk`` kernels run with one BLAS
thread. This module imports nothing from the rest of minirec except
:mod:`minirec.kernels.numba._heads` (and its :mod:`~minirec.kernels.numba._blas`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from minirec.kernels.numba._heads import blas_limit as _blas_limit
from minirec.kernels.numba._heads import check_method
from minirec.kernels.numba._heads import contiguous as _c

METHODS = ("recurrent", "chunk")


@njit(cache=True, error_model="numpy")
def _rec_forward_row(q, k, v, g, beta, S0, scale, one, has_g, seg, o, S_T, ckpt, b, h):
    """One (batch row, head) of :func:`_rec_forward`."""
    B, T, H, K = q.shape
    Vd = v.shape[3]
    zero = one - one
    S = S0[b, h].copy()
    e = np.empty(Vd, q.dtype)
    acc = np.empty(Vd, q.dtype)
    for t in range(T):
        if t % seg == 0:
            ckpt[b, h, t // seg] = S
        a = np.exp(g[b, t, h]) if has_g else one
        for j in range(Vd):
            e[j] = zero
            acc[j] = zero
        # Sp = a S_{t−1} (in place) and Sp^T k_t
        for i in range(K):
            ki = k[b, t, h, i]
            for j in range(Vd):
                s = a * S[i, j] if has_g else S[i, j]
                S[i, j] = s
                e[j] += s * ki
        for j in range(Vd):
            e[j] = v[b, t, h, j] - e[j]
        # S_t = Sp + β k e^T and o_t = scale · S_t^T q_t
        bt = beta[b, t, h]
        for i in range(K):
            bki = bt * k[b, t, h, i]
            qi = q[b, t, h, i]
            for j in range(Vd):
                s = S[i, j] + bki * e[j]
                S[i, j] = s
                acc[j] += qi * s
        for j in range(Vd):
            o[b, t, h, j] = scale * acc[j]
    S_T[b, h] = S


@njit(cache=True, error_model="numpy", parallel=True)
def _rec_forward(q, k, v, g, beta, S0, scale, one, has_g, seg, o, S_T, ckpt):
    B, H = q.shape[0], q.shape[2]
    for job in prange(B * H):
        _rec_forward_row(q, k, v, g, beta, S0, scale, one, has_g, seg, o, S_T, ckpt, job // H,
                         job % H)


@njit(cache=True, error_model="numpy")
def _rec_backward_row(q, k, v, g, beta, ckpt, do, dS_T, scale, one, has_g, seg, dq, dk, dv, dg,
                      dbeta, dS0, b, h):
    """One (batch row, head) of :func:`_rec_backward`."""
    B, T, H, K = q.shape
    Vd = v.shape[3]
    n_seg = ckpt.shape[2]
    zero = one - one
    dS = dS_T[b, h].copy()
    buf = np.empty((seg + 1, K, Vd), q.dtype)
    e = np.empty(Vd, q.dtype)
    de = np.empty(Vd, q.dtype)
    dot = np.empty(Vd, q.dtype)
    z = np.empty(K, q.dtype)
    Sp = np.empty((K, Vd), q.dtype)
    for n in range(n_seg - 1, -1, -1):
        t0 = n * seg
        t1 = min(T, t0 + seg)
        # recompute S_{t0−1}, …, S_{t1−1} exactly as the forward did
        buf[0] = ckpt[b, h, n]
        for t in range(t0, t1):
            l = t - t0
            a = np.exp(g[b, t, h]) if has_g else one
            for j in range(Vd):
                e[j] = zero
            for i in range(K):
                ki = k[b, t, h, i]
                for j in range(Vd):
                    s = a * buf[l, i, j] if has_g else buf[l, i, j]
                    buf[l + 1, i, j] = s
                    e[j] += s * ki
            for j in range(Vd):
                e[j] = v[b, t, h, j] - e[j]
            bt = beta[b, t, h]
            for i in range(K):
                bki = bt * k[b, t, h, i]
                for j in range(Vd):
                    buf[l + 1, i, j] = buf[l + 1, i, j] + bki * e[j]
        for t in range(t1 - 1, t0 - 1, -1):
            l = t - t0
            a = np.exp(g[b, t, h]) if has_g else one
            bt = beta[b, t, h]
            # Sp and e_t = v_t − Sp^T k_t
            for j in range(Vd):
                e[j] = zero
                de[j] = zero
                dot[j] = do[b, t, h, j]
            for i in range(K):
                ki = k[b, t, h, i]
                for j in range(Vd):
                    s = a * buf[l, i, j] if has_g else buf[l, i, j]
                    Sp[i, j] = s
                    e[j] += s * ki
            for j in range(Vd):
                e[j] = v[b, t, h, j] - e[j]
            # o_t: dS += scale q do^T, dq = scale S_t do; then z = dS e, dS^T k
            for i in range(K):
                sqi = scale * q[b, t, h, i]
                ki = k[b, t, h, i]
                dqi = zero
                zi = zero
                for j in range(Vd):
                    ds = dS[i, j] + sqi * dot[j]
                    dS[i, j] = ds
                    dqi += buf[l + 1, i, j] * dot[j]
                    zi += ds * e[j]
                    de[j] += ds * ki
                dq[b, t, h, i] = scale * dqi
                z[i] = zi
            db = zero
            for i in range(K):
                db += k[b, t, h, i] * z[i]
            dbeta[b, t, h] = db
            for j in range(Vd):
                de[j] = bt * de[j]
                dv[b, t, h, j] = de[j]
            # e_t = v_t − Sp^T k_t and Sp = a S_{t−1}
            dgs = zero
            for i in range(K):
                ki = k[b, t, h, i]
                dki = bt * z[i]
                for j in range(Vd):
                    s = Sp[i, j]
                    dki -= s * de[j]
                    dsp = dS[i, j] - ki * de[j]
                    dgs += dsp * s
                    dS[i, j] = a * dsp if has_g else dsp
                dk[b, t, h, i] = dki
            if has_g:
                dg[b, t, h] = dgs
    dS0[b, h] = dS


@njit(cache=True, error_model="numpy", parallel=True)
def _rec_backward(q, k, v, g, beta, ckpt, do, dS_T, scale, one, has_g, seg,
                  dq, dk, dv, dg, dbeta, dS0):
    """BPTT (module docstring) segment by segment from the checkpoints."""
    B, H = q.shape[0], q.shape[2]
    for job in prange(B * H):
        _rec_backward_row(q, k, v, g, beta, ckpt, do, dS_T, scale, one, has_g, seg, dq, dk, dv, dg,
                          dbeta, dS0, job // H, job % H)



# ---------------------------------------------------------------------------
# chunk (the WY/UT form)
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def _chunk_inputs(q, k, v, g, beta, S_in, b, h, t0, L, has_g, one):
    """One chunk's contiguous ``Qc, Kc (L, K)``, ``Vc (L, V)``, ``bc (L,)``, the
    cumulative gates ``G (L,)`` (float64: see :mod:`minirec.kernels.numba.gla`),
    ``Gam_ij = e^{G_i − G_j}`` (j ≤ i, else 0), ``M`` (its strict lower
    triangle), ``Kq0 = e^{G} ⊙ K``, ``R``, ``W``, ``QKm``, ``Qg``, ``Kg``
    (module docstring)."""
    K = q.shape[3]
    Vd = v.shape[3]
    zero = one - one
    Qc = np.empty((L, K), q.dtype)
    Kc = np.empty((L, K), q.dtype)
    Vc = np.empty((L, Vd), q.dtype)
    bc = np.empty(L, q.dtype)
    G = np.zeros(L, np.float64)
    acc = 0.0
    for l in range(L):
        for c in range(K):
            Qc[l, c] = q[b, t0 + l, h, c]
            Kc[l, c] = k[b, t0 + l, h, c]
        for j in range(Vd):
            Vc[l, j] = v[b, t0 + l, h, j]
        bc[l] = beta[b, t0 + l, h]
        if has_g:
            acc += g[b, t0 + l, h]
            G[l] = acc
    Gam = np.zeros((L, L), q.dtype)
    for i in range(L):
        for j in range(i + 1):
            Gam[i, j] = np.exp(G[i] - G[j])
    eG = np.empty(L, q.dtype)
    eK = np.empty(L, q.dtype)
    for l in range(L):
        eG[l] = np.exp(G[l])
        eK[l] = np.exp(G[L - 1] - G[l])
    KK = np.dot(Kc, Kc.T)
    M = np.zeros((L, L), q.dtype)
    for i in range(L):
        for j in range(i):
            M[i, j] = bc[i] * KK[i, j] * Gam[i, j]
    Kq0 = np.empty((L, K), q.dtype)
    Qg = np.empty((L, K), q.dtype)
    Kg = np.empty((L, K), q.dtype)
    for l in range(L):
        for c in range(K):
            Kq0[l, c] = eG[l] * Kc[l, c]
            Qg[l, c] = eG[l] * Qc[l, c]
            Kg[l, c] = eK[l] * Kc[l, c]
    # R = V − Kq0 S_in;  W = M^{-1} diag(β) R by forward substitution
    R = Vc - np.dot(Kq0, S_in)
    W = np.empty((L, Vd), q.dtype)
    for i in range(L):
        for c in range(Vd):
            W[i, c] = bc[i] * R[i, c]
        for j in range(i):
            m = M[i, j]
            for c in range(Vd):
                W[i, c] -= m * W[j, c]
    QKm = np.dot(Qc, Kc.T)
    for i in range(L):
        for j in range(L):
            QKm[i, j] = QKm[i, j] * Gam[i, j] if j <= i else zero
    return Qc, Kc, Vc, bc, G, Gam, eG, eK, KK, M, Kq0, R, W, QKm, Qg, Kg


@njit(cache=True, error_model="numpy")
def _chunk_forward_row(q, k, v, g, beta, S0, scale, one, has_g, C, o, S_T, states, b, h):
    """One (batch row, head) of :func:`_chunk_forward`."""
    T = q.shape[1]
    K = q.shape[3]
    Vd = v.shape[3]
    n_chunks = states.shape[2]
    S = S0[b, h].copy()
    for n in range(n_chunks):
        states[b, h, n] = S
        t0 = n * C
        L = min(T, t0 + C) - t0
        (Qc, Kc, Vc, bc, G, Gam, eG, eK, KK, M, Kq0, R, W, QKm, Qg,
         Kg) = _chunk_inputs(q, k, v, g, beta, S, b, h, t0, L, has_g, one)
        O = np.dot(Qg, S) + np.dot(QKm, W)
        for l in range(L):
            for j in range(Vd):
                o[b, t0 + l, h, j] = scale * O[l, j]
        S_new = np.dot(Kg.T, W)
        gamma = np.exp(G[L - 1])
        for i in range(K):
            for j in range(Vd):
                S[i, j] = gamma * S[i, j] + S_new[i, j]
    S_T[b, h] = S


@njit(cache=True, error_model="numpy", parallel=True)
def _chunk_forward(q, k, v, g, beta, S0, scale, one, has_g, C, o, S_T, states):
    B, H = q.shape[0], q.shape[2]
    for job in prange(B * H):
        _chunk_forward_row(q, k, v, g, beta, S0, scale, one, has_g, C, o, S_T, states,
                           job // H, job % H)


@njit(cache=True, error_model="numpy")
def _chunk_backward_row(q, k, v, g, beta, states, do, dS_T, scale, one, has_g, C,
                        dq, dk, dv, dg, dbeta, dS0, b, h):
    """One (batch row, head) of :func:`_chunk_backward`."""
    T = q.shape[1]
    K = q.shape[3]
    Vd = v.shape[3]
    zero = one - one
    n_chunks = states.shape[2]
    dS = dS_T[b, h].copy()
    for n in range(n_chunks - 1, -1, -1):
        t0 = n * C
        L = min(T, t0 + C) - t0
        S_in = states[b, h, n]
        (Qc, Kc, Vc, bc, G, Gam, eG, eK, KK, M, Kq0, R, W, QKm, Qg,
         Kg) = _chunk_inputs(q, k, v, g, beta, S_in, b, h, t0, L, has_g, one)
        dO = np.empty((L, Vd), q.dtype)
        for l in range(L):
            for j in range(Vd):
                dO[l, j] = scale * do[b, t0 + l, h, j]
        # float64 like G (the reverse cumulative sum of dG cancels under strong decay)
        dG = np.zeros(L, np.float64)
        dgamma = 0.0
        # S_out = e^{γ} S_in + Kg^T W
        gamma = np.exp(G[L - 1])
        dS_prev = np.empty((K, Vd), q.dtype)
        s = zero
        for i in range(K):
            for j in range(Vd):
                s += dS[i, j] * S_in[i, j]
                dS_prev[i, j] = gamma * dS[i, j]
        dgamma += gamma * s
        dKg = np.dot(W, dS.T)
        dW = np.dot(Kg, dS)
        # O = Qg S_in + QKm W
        dQg = np.dot(dO, S_in.T)
        dS_prev += np.dot(Qg.T, dO)
        dQKm = np.dot(dO, W.T)
        dW += np.dot(QKm.T, dO)
        dQc = np.zeros((L, K), q.dtype)
        dKc = np.zeros((L, K), q.dtype)
        for l in range(L):
            pq = zero
            pk = zero
            for c in range(K):
                dQc[l, c] = eG[l] * dQg[l, c]
                pq += dQg[l, c] * Qg[l, c]
                dKc[l, c] = eK[l] * dKg[l, c]
                pk += dKg[l, c] * Kg[l, c]
            dG[l] += pq - pk
            dgamma += pk
        dQKmG = np.zeros((L, L), q.dtype)
        for i in range(L):
            for j in range(i + 1):
                dQKmG[i, j] = dQKm[i, j] * Gam[i, j]
                p = dQKm[i, j] * QKm[i, j]
                dG[i] += p
                dG[j] -= p
        dQc += np.dot(dQKmG, Kc)
        dKc += np.dot(dQKmG.T, Qc)
        # W = M^{-1} X: M^T dX = dW by backward substitution; dM = −dX W^T (i > j)
        dX = dW.copy()
        for i in range(L - 1, -1, -1):
            for j in range(i + 1, L):
                m = M[j, i]
                for c in range(Vd):
                    dX[i, c] -= m * dX[j, c]
        # X = diag(β) R, R = V − Kq0 S_in
        dR = np.empty((L, Vd), q.dtype)
        for l in range(L):
            s = zero
            for c in range(Vd):
                s += dX[l, c] * R[l, c]
                dR[l, c] = bc[l] * dX[l, c]
            dbeta[b, t0 + l, h] = s
            for c in range(Vd):
                dv[b, t0 + l, h, c] = dR[l, c]
        dKq0 = np.dot(dR, S_in.T)
        dS_prev -= np.dot(Kq0.T, dR)
        for l in range(L):
            p = zero
            for c in range(K):
                dKc[l, c] -= eG[l] * dKq0[l, c]
                p += dKq0[l, c] * Kq0[l, c]
            dG[l] -= p
        # M_ij = β_i KK_ij Gam_ij (i > j), dM_ij = −dX_i · W_j
        dMfull = np.dot(dX, W.T)
        dKK = np.zeros((L, L), q.dtype)
        for i in range(L):
            s = zero
            for j in range(i):
                dM = -dMfull[i, j]
                s += dM * KK[i, j] * Gam[i, j]
                dKK[i, j] = dM * bc[i] * Gam[i, j]
                p = dM * M[i, j]
                dG[i] += p
                dG[j] -= p
            dbeta[b, t0 + i, h] += s
        # KK = Kc Kc^T
        dKc += np.dot(dKK, Kc) + np.dot(dKK.T, Kc)
        for l in range(L):
            for c in range(K):
                dq[b, t0 + l, h, c] = dQc[l, c]
                dk[b, t0 + l, h, c] = dKc[l, c]
        if has_g:
            dG[L - 1] += dgamma
            run = 0.0
            for l in range(L - 1, -1, -1):
                run += dG[l]
                dg[b, t0 + l, h] = run
        dS = dS_prev
    dS0[b, h] = dS


@njit(cache=True, error_model="numpy", parallel=True)
def _chunk_backward(q, k, v, g, beta, states, do, dS_T, scale, one, has_g, C,
                    dq, dk, dv, dg, dbeta, dS0):
    """The chunk form's backward (module docstring), last chunk first."""
    B, H = q.shape[0], q.shape[2]
    for job in prange(B * H):
        _chunk_backward_row(q, k, v, g, beta, states, do, dS_T, scale, one, has_g, C,
                            dq, dk, dv, dg, dbeta, dS0, job // H, job % H)


class DeltaKernelCache(NamedTuple):
    """What :func:`backward` needs: ``method``, the contiguous inputs ``q, k, v,
    beta``, ``g`` (``(1, 1, 1)`` zeros when ``None``) and ``has_g``, ``scale``,
    ``chunk_size`` and ``states (B, H, ⌈T/chunk_size⌉, K, V)``: the state before
    steps 0, chunk_size, …"""

    method: str
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    g: np.ndarray
    beta: np.ndarray
    has_g: bool
    scale: float
    chunk_size: int
    states: np.ndarray


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None,
            beta: np.ndarray, initial_state: np.ndarray, *, scale: float,
            method: str = "recurrent", chunk_size: int = 64
            ) -> tuple[np.ndarray, np.ndarray, DeltaKernelCache]:
    """The delta engine's forward (module docstring), in ``q``'s dtype.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``.
        g: ``None`` or ``(B, T, H)`` log decays.
        beta: ``(B, T, H)`` write strengths.
        initial_state: ``(B, H, K, V)``.
        scale: the read-out factor.
        method: ``"recurrent"`` or ``"chunk"``.
        chunk_size: the chunk length (``"chunk"``) or the distance between two
            stored states (``"recurrent"``).

    Returns:
        ``o (B, T, H, V)``, ``S_T (B, H, K, V)`` and the cache for :func:`backward`.
    """
    C = check_method("delta-rule", METHODS, method, chunk_size)
    dtype = q.dtype
    B, T, H, K = q.shape
    Vd = v.shape[3]
    q, k, v, beta = _c(q, dtype), _c(k, dtype), _c(v, dtype), _c(beta, dtype)
    S0 = _c(initial_state, dtype)
    has_g = g is not None
    g3 = _c(g, dtype) if has_g else np.zeros((1, 1, 1), dtype)
    o = np.empty((B, T, H, Vd), dtype)
    S_T = np.empty((B, H, K, Vd), dtype)
    states = np.empty((B, H, max(1, -(-T // C)), K, Vd), dtype)
    if T == 0:
        S_T[...] = S0
        states[:, :, 0] = S0
    else:
        kernel = _rec_forward if method == "recurrent" else _chunk_forward
        with _blas_limit(method):
            kernel(q, k, v, g3, beta, S0, dtype.type(scale), dtype.type(1), has_g, C, o, S_T,
                   states)
    return o, S_T, DeltaKernelCache(method, q, k, v, g3, beta, has_g, scale, C, states)


def backward(cache: DeltaKernelCache, do: np.ndarray | None, dstate: np.ndarray | None
             ) -> dict:
    """The delta engine's backward by the algorithm of the forward that made
    ``cache`` (module docstring); ``do``/``dstate`` ``None`` mean zeros.

    Returns ``{"q", "k", "v", "g", "beta", "initial_state"}`` in the forward's
    shapes and dtype (``g`` ``None`` when it was ``None``)."""
    q, k, v = cache.q, cache.k, cache.v
    dtype = q.dtype
    B, T, H, K = q.shape
    Vd = v.shape[3]
    do = np.zeros((B, T, H, Vd), dtype) if do is None else _c(do, dtype)
    dS_T = np.zeros((B, H, K, Vd), dtype) if dstate is None else _c(dstate, dtype)
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    dbeta = np.empty_like(cache.beta)
    dg = np.empty((B, T, H), dtype) if cache.has_g else np.zeros((1, 1, 1), dtype)
    dS0 = np.empty((B, H, K, Vd), dtype)
    if T == 0:
        dS0[...] = dS_T
    else:
        kernel = _rec_backward if cache.method == "recurrent" else _chunk_backward
        with _blas_limit(cache.method):
            kernel(q, k, v, cache.g, cache.beta, cache.states, do, dS_T,
                   dtype.type(cache.scale), dtype.type(1), cache.has_g, cache.chunk_size,
                   dq, dk, dv, dg, dbeta, dS0)
    return {"q": dq, "k": dk, "v": dv, "g": dg if cache.has_g else None, "beta": dbeta,
            "initial_state": dS0}
