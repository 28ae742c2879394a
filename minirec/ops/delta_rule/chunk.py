"""The delta engine's chunkwise form: the WY/UT representation per chunk.

DeltaNet: Yang et al. 2024, "Parallelizing Linear Transformers with the Delta
Rule over Sequence Length"; the gated rule: Yang et al. 2024, "Gated Delta
Networks". Dimension key: B batch, T time, H heads, K key size, V value size,
C chunk length, N = ⌈T / C⌉ chunks (the last one padded with ``k = v = q = 0``,
``β = 0``, ``g = 0``, which changes nothing).

Within one chunk (rows i, j = 0 … C−1; ``S0`` the state entering it; the
definition is :mod:`.recurrent`) let

    Γ_i   = Σ_{s≤i} g_s                    local cumulative log decay (0 when g is None)
    D_ij  = e^{Γ_i − Γ_j} for j ≤ i, else 0        (masked before exp: exponents ≤ 0)
    e_i   = e^{Γ_i},   r_i = e^{Γ_{C−1} − Γ_i},   γ = e^{Γ_{C−1}}      (all ≤ 1)

Unrolling ``S_i = e^{g_i} S_{i−1} + β_i k_i u_i^T`` with the errors
``u_i = v_i − (e^{g_i} S_{i−1})^T k_i`` gives, for ``δ_i = β_i u_i``,

    S_i = e_i S0 + Σ_{j≤i} D_ij k_j δ_j^T
    δ_i + Σ_{j<i} β_i (k_i·k_j) D_ij δ_j = β_i (v_i − e_i S0^T k_i)

a unit lower triangular system. With ``L = tril(Diag(β) K K^T ⊙ D, −1)`` and
``A = I + L`` (the UT transform ``T = A^{−1} Diag(β)``):

    U  = A^{−1} (β ⊙ V)            W = A^{−1} (β ⊙ Kd),   Kd = e ⊙ K    (independent of S0)
    δ  = U − W S0                                                        (C, V)
    P  = (Q K^T) ⊙ D               (masked with np.where: j ≤ i)
    O  = scale · [(e ⊙ Q) S0 + P δ]
    S1 = γ S0 + Kr^T δ,            Kr = r ⊙ K                            (the next chunk's S0)

``A`` is solved with :func:`scipy.linalg.solve_triangular` (unit lower), never
inverted. ``U, W, P`` of all chunks are computed at once; only ``δ`` and the
state pass from chunk to chunk.

Backward (``dO`` = ∂L/∂O, ``dS1`` = ∂L/∂S1, ``dstate`` for the last chunk),
first a reverse pass over the chunks carrying ``dS``:

    dδ  = scale · P^T dO + Kr dS1
    dS0 = γ dS1 + scale · (e ⊙ Q)^T dO − W^T dδ

then, for all chunks at once (each line goes back through one forward line):

    dKr = δ dS1^T,   dγ = Σ dS1 ⊙ S0                               (S1)
    dU  = dδ,        dW = −dδ S0^T                                 (δ)
    dP  = scale · dO δ^T (j ≤ i),   dEQ = scale · dO S0^T          (O)
    dQ  = e ⊙ dEQ + (dP ⊙ D) K,   dK = (dP ⊙ D)^T Q,   de = Σ_K dEQ ⊙ Q,   dD = dP ⊙ Q K^T
    [dRv | dRk] = A^{−T} [dU | dW]                                 (the solves: Rv = β ⊙ V,
    dL  = −tril(dRv U^T + dRk W^T, −1)                              Rk = β ⊙ Kd, A = I + L)
    dV  = β ⊙ dRv,   dβ = Σ_V dRv ⊙ V + Σ_K dRk ⊙ Kd,   dKd = β ⊙ dRk
    dK += e ⊙ dKd,   de += Σ_K dKd ⊙ K                             (Kd = e ⊙ K)
    dβ_i += Σ_j dL_ij (K K^T)_ij D_ij,   dKK = dL ⊙ β_i D,   dD += dL ⊙ β_i K K^T
    dK += (dKK + dKK^T) K                                          (K K^T)
    dK += r ⊙ dKr,   dr = Σ_K dKr ⊙ K                              (Kr = r ⊙ K)

and the gates. ``g_m`` enters ``Γ_i`` for every ``i ≥ m``, so it scales
``e_i`` (i ≥ m), ``D_ij`` (j < m ≤ i), ``r_j = e^{Σ_{j<l≤C−1} g_l}`` (j < m) and ``γ``:

    dg_m = Σ_{i≥m} de_i e_i + Σ_{i≥m} Σ_{j<m} dD_ij D_ij + Σ_{j<m} dr_j r_j + dγ γ
    with dr_j = Σ_K dKr_j ⊙ k_j

Summed in this form rather than as ``dΓ`` then a reverse cumsum (and the sum
over ``j < m`` as an exclusive cumsum): otherwise the diagonal ``D_ii = 1`` and
``r_{C−1} = 1`` would add and subtract O(1) terms whose difference is 0, and
under strong decay (log gate −20) the true ``dg`` (of order e^{−20}) would
drown in their float32 rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.linalg import solve_triangular


class ChunkCache(NamedTuple):
    """What :func:`backward` needs. ``T`` and ``gated`` (whether ``g`` was given),
    ``scale``; the chunked inputs ``Q, K (B, H, N, C, K)``, ``Vc (B, H, N, C, V)``,
    ``beta (B, H, N, C)``, ``G (B, H, N, C)`` (Γ, zeros when not gated); the
    chunk algebra ``A (B, H, N, C, C)`` (``I + L``), ``U (B, H, N, C, V)``,
    ``W (B, H, N, C, K)``, ``delta (B, H, N, C, V)`` and ``S_start
    (B, H, N, K, V)``, the state entering every chunk."""

    T: int
    gated: bool
    scale: float
    Q: np.ndarray
    K: np.ndarray
    Vc: np.ndarray
    beta: np.ndarray
    G: np.ndarray
    A: np.ndarray
    U: np.ndarray
    W: np.ndarray
    delta: np.ndarray
    S_start: np.ndarray


# ---------------------------------------------------------------------------
# layout and the pieces shared by forward and backward
# ---------------------------------------------------------------------------

def _to_chunks(x: np.ndarray, C: int) -> np.ndarray:
    """``(B, T, H, ...)`` → ``(B, H, N, C, ...)``, zero-padded at the end of time."""
    x = np.moveaxis(x, 1, 2)
    T = x.shape[2]
    N = -(-T // C)
    if N * C != T:
        pad = [(0, 0)] * x.ndim
        pad[2] = (0, N * C - T)
        x = np.pad(x, pad)
    return x.reshape(x.shape[:2] + (N, C) + x.shape[3:])


def _from_chunks(x: np.ndarray, T: int) -> np.ndarray:
    """``(B, H, N, C, ...)`` → ``(B, T, H, ...)`` (the padding dropped)."""
    x = x.reshape(x.shape[:2] + (x.shape[2] * x.shape[3],) + x.shape[4:])[:, :, :T]
    return np.ascontiguousarray(np.moveaxis(x, 2, 1))


def _masks(C: int) -> tuple[np.ndarray, np.ndarray]:
    """``(j ≤ i, j < i)`` as boolean ``(C, C)`` arrays."""
    return np.tril(np.ones((C, C), bool)), np.tril(np.ones((C, C), bool), -1)


def _decays(G: np.ndarray, incl: np.ndarray):
    """From ``Γ (..., C)``: ``D (..., C, C)``, ``e``, ``r (..., C)`` and ``γ (...)``.
    Every exponent is a difference ``Γ_i − Γ_j`` with ``j ≤ i`` (masked to −inf
    before ``exp`` elsewhere) or ``Γ`` itself — never ``e^{Γ_i} e^{−Γ_j}``."""
    diff = np.where(incl, G[..., :, None] - G[..., None, :], -np.inf)
    D = np.exp(diff)
    e = np.exp(G)
    r = np.exp(G[..., -1:] - G)
    gam = np.exp(G[..., -1])
    return D, e, r, gam


def _mT(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


def _causal_matmul(P: np.ndarray, x: np.ndarray, incl: np.ndarray) -> np.ndarray:
    """``P x`` for ``P (..., C, C)`` zero above the diagonal. If ``x`` holds NaN/inf,
    the matmul's ``0 · NaN`` would carry a later step's NaN back to earlier rows;
    then the sum is taken over ``j ≤ i`` only (masked with np.where), so NaN in
    ``k, v, g, β`` reaches the outputs causally, as in the definition."""
    if np.all(np.isfinite(x)):
        return P @ x
    terms = P[..., :, :, None] * x[..., None, :, :]
    return np.sum(np.where(incl[:, :, None], terms, 0), axis=-2)


def _solve_unit_lower(A: np.ndarray, b: np.ndarray, trans: bool = False) -> np.ndarray:
    """``A^{−1} b`` (or ``A^{−T} b``) for unit lower triangular ``A (..., C, C)``,
    ``b (..., C, M)``, one :func:`scipy.linalg.solve_triangular` per leading index
    (its diagonal is not read; ``check_finite=False`` so that NaN propagates)."""
    out = np.empty(b.shape, np.result_type(A, b))
    for idx in np.ndindex(*A.shape[:-2]):
        out[idx] = solve_triangular(A[idx], b[idx], lower=True, unit_diagonal=True,
                                    trans="T" if trans else "N", check_finite=False)
    return out


# ---------------------------------------------------------------------------
# forward and backward
# ---------------------------------------------------------------------------

def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None,
            beta: np.ndarray, initial_state: np.ndarray, scale: float, chunk_size: int
            ) -> tuple[np.ndarray, np.ndarray, ChunkCache]:
    """The chunkwise WY/UT forward of the module docstring (inputs already checked).

    ``chunk_size`` is the chunk length C (shortened to T when T is smaller).
    Returns ``o (B, T, H, V)``, ``S_T (B, H, K, V)`` and the :class:`ChunkCache`.
    """
    T = q.shape[1]
    C = min(chunk_size, T)
    incl, strict = _masks(C)
    Q, Kc, Vc, bc = (_to_chunks(x, C) for x in (q, k, v, beta))
    G = np.zeros(bc.shape, bc.dtype) if g is None else np.cumsum(_to_chunks(g, C), axis=-1)
    D, e, r, gam = _decays(G, incl)
    # the UT transform, every chunk at once: A = I + tril(Diag(β) K K^T ⊙ D, −1)
    KK = Kc @ _mT(Kc)
    L = np.where(strict, bc[..., :, None] * KK * D, 0)
    A = L + np.eye(C, dtype=L.dtype)
    Kd = e[..., None] * Kc
    Vd = Vc.shape[-1]
    UW = _solve_unit_lower(A, np.concatenate([bc[..., None] * Vc, bc[..., None] * Kd], -1))
    U, W = UW[..., :Vd], UW[..., Vd:]
    # state passing, chunk by chunk: δ = U − W S0, S1 = γ S0 + Kr^T δ
    Kr = r[..., None] * Kc
    N = Q.shape[2]
    S_start = np.empty(Q.shape[:3] + (Kc.shape[-1], Vd), Q.dtype)
    delta = np.empty(U.shape, U.dtype)
    S = initial_state
    for n in range(N):
        S_start[:, :, n] = S
        delta[:, :, n] = U[:, :, n] - W[:, :, n] @ S
        S = gam[:, :, n, None, None] * S + _mT(Kr[:, :, n]) @ delta[:, :, n]
    # outputs, every chunk at once: O = scale · [(e ⊙ Q) S0 + (Q K^T ⊙ D) δ]
    P = np.where(incl, (Q @ _mT(Kc)) * D, 0)
    O = scale * ((e[..., None] * Q) @ S_start + _causal_matmul(P, delta, incl))
    cache = ChunkCache(T, g is not None, scale, Q, Kc, Vc, bc, G, A, U, W, delta, S_start)
    return _from_chunks(O, T), np.array(S, copy=True), cache


def backward(cache: ChunkCache, do: np.ndarray, dstate: np.ndarray) -> dict:
    """The chunkwise backward of the module docstring: a reverse pass over the
    chunks carrying ``dS``, then every chunk's local gradients at once.

    ``do (B, T, H, V)``, ``dstate (B, H, K, V)`` arrays of the forward's dtype.
    Returns ``{"q", "k", "v", "g", "beta", "initial_state"}`` (``g`` ``None``
    when the forward's was).
    """
    T, gated, scale, Q, Kc, Vc, bc, G, A, U, W, delta, S_start = cache
    C = Q.shape[3]
    incl, strict = _masks(C)
    D, e, r, gam = _decays(G, incl)
    Kr = r[..., None] * Kc
    P = np.where(incl, (Q @ _mT(Kc)) * D, 0)
    eQ = e[..., None] * Q
    dO = scale * _to_chunks(do, C)
    # reverse pass over chunks: dδ = scale P^T dO + Kr dS1, dS0 = γ dS1 + scale (eQ)^T dO − W^T dδ
    N = Q.shape[2]
    ddelta = np.empty(delta.shape, delta.dtype)
    dS_end = np.empty(S_start.shape, S_start.dtype)
    dS = dstate
    for n in reversed(range(N)):
        dS_end[:, :, n] = dS
        ddelta[:, :, n] = _mT(P[:, :, n]) @ dO[:, :, n] + Kr[:, :, n] @ dS
        dS = (gam[:, :, n, None, None] * dS + _mT(eQ[:, :, n]) @ dO[:, :, n]
              - _mT(W[:, :, n]) @ ddelta[:, :, n])
    # S1 = γ S0 + Kr^T δ
    dKr = delta @ _mT(dS_end)
    dgam = np.sum(dS_end * S_start, axis=(-2, -1))
    # δ = U − W S0
    dU, dW = ddelta, -(ddelta @ _mT(S_start))
    # O = scale · [(e ⊙ Q) S0 + P δ],  P = (Q K^T) ⊙ D
    dP = np.where(incl, dO @ _mT(delta), 0)
    dPD = dP * D
    dEQ = dO @ _mT(S_start)
    dQ = e[..., None] * dEQ + dPD @ Kc
    dK = _mT(dPD) @ Q
    de = np.sum(dEQ * Q, axis=-1)
    dD = np.where(incl, dP * (Q @ _mT(Kc)), 0)
    # [U | W] = A^{−1} [β ⊙ V | β ⊙ Kd]
    Vd = Vc.shape[-1]
    dR = _solve_unit_lower(A, np.concatenate([dU, dW], -1), trans=True)
    dRv, dRk = dR[..., :Vd], dR[..., Vd:]
    dL = np.where(strict, -(dRv @ _mT(U) + dRk @ _mT(W)), 0)
    Kd = e[..., None] * Kc
    dV = bc[..., None] * dRv
    dbeta = np.sum(dRv * Vc, axis=-1) + np.sum(dRk * Kd, axis=-1)
    dKd = bc[..., None] * dRk
    dK += e[..., None] * dKd            # Kd = e ⊙ K
    de += np.sum(dKd * Kc, axis=-1)
    # L = tril(β_i (K K^T)_ij D_ij, −1)
    KK = Kc @ _mT(Kc)
    dbeta += np.sum(np.where(strict, dL * KK * D, 0), axis=-1)
    dKK = dL * bc[..., :, None] * D
    dD += np.where(strict, dL * bc[..., :, None] * KK, 0)
    dK += (dKK + _mT(dKK)) @ Kc         # K K^T
    dK += r[..., None] * dKr            # Kr = r ⊙ K
    grads = {"q": _from_chunks(dQ, T), "k": _from_chunks(dK, T), "v": _from_chunks(dV, T),
             "g": None, "beta": _from_chunks(dbeta, T), "initial_state": dS}
    if gated:  # g_m enters Γ_i for i ≥ m: e_i (i ≥ m), D_ij (j < m ≤ i), r_j (j < m), γ
        dr = np.sum(dKr * Kc, axis=-1)
        dDD = np.where(strict, dD * D, 0)
        cross = np.sum(np.where(strict, _rcumsum(dDD, -2), 0), axis=-1)
        dr_r = dr * r                                   # Σ_{j<m}, not cumsum − itself:
        before = np.zeros(dr_r.shape, dr_r.dtype)       # r_{C−1} = 1 would cancel O(1)
        before[..., 1:] = np.cumsum(dr_r[..., :-1], axis=-1)
        dg = _rcumsum(de * e, -1) + cross + before + (dgam * gam)[..., None]
        grads["g"] = _from_chunks(dg, T)
    return grads


def _rcumsum(x: np.ndarray, axis: int) -> np.ndarray:
    """Reverse cumulative sum: ``out_m = Σ_{i≥m} x_i`` along ``axis``."""
    return np.flip(np.cumsum(np.flip(x, axis), axis=axis), axis)
