"""The GLA engine's parallel form: the masked quadratic form over the whole
sequence, plus the initial-state term; and its hand-derived backward.

Dimension key: B batch, T time, H heads, K key size, V value size; inside a
block (the whole sequence here, one chunk in :mod:`.chunk`) ``L`` steps
indexed ``i`` (query) and ``j`` (key). Engine semantics in
:mod:`.recurrent`. With ``G_i = Σ_{s≤i} g_s`` (cumulative within the block;
``(…, L, K')``, ``K' = 1`` for a scalar gate) the recurrence unrolls to

    GLA  (Gq_i = G_i,     j ≤ i):
        o_i = scale·[ Σ_{j≤i} (q_i ⊙ e^{Gq_i − G_j}) · k_j  v_j  +  (q_i ⊙ e^{Gq_i}) S_0 ]
    RWKV (Gq_i = G_{i−1}, j < i; G_{−1} = 0):
        o_i = scale·[ Σ_{j<i} (q_i ⊙ e^{Gq_i − G_j}) · k_j  v_j  +  (q_i·(u ⊙ k_i)) v_i
                      + (q_i ⊙ e^{Gq_i}) S_0 ]
    S_L = Diag(e^{G_L}) S_0 + Σ_j (k_j ⊙ e^{G_L − G_j}) v_j^T       (G_L = G_{L−1})

In matrices: ``E_ijk = e^{Gq_ik − G_jk}`` on the mask (``j ≤ i``, or ``j < i``
for RWKV) and 0 above it, ``A_ij = Σ_k q_ik k_jk E_ijk`` (for a scalar gate
``A = (Q K^T) ⊙ E``) plus, for RWKV, the bonus ``A_ii = Σ_k q_ik u_k k_ik``;
``Qe = Q ⊙ e^{Gq}``, ``Kd = K ⊙ e^{G_L − G}``:

    O   = scale·(A V + Qe S_0)
    S_L = Diag(e^{G_L}) S_0 + Kd^T V

Stability: on the mask ``Gq_i − G_j = Σ_{j<s≤i} g_s ≤ 0`` (and
``G_L − G_j ≤ 0``, ``G ≤ 0``) for ``g ≤ 0``: every exponent is a difference of
cumulative log decays taken before ``exp``, never ``e^{Gq_i}·e^{−G_j}``.
Above the mask the exponent is replaced by ``−inf`` with ``np.where`` before
``exp``, so ``e^{positive}`` is never formed.

Backward (``dO`` = do, ``dS_L`` = dstate; each line one node):

    dA    = scale · dO V^T, on the mask (and the diagonal for RWKV)
    dV    = scale · A^T dO + Kd dS_L
    dQe   = scale · dO S_0^T;     dS_0 = scale · Qe^T dO + Diag(e^{G_L}) dS_L
    dKd   = V dS_L^T
    through A_ij = Σ_k q_ik k_jk E_ijk, with W_ijk = dA_ij E_ijk:
        dq_ik += Σ_j W_ijk k_jk;    dk_jk += Σ_i W_ijk q_ik
        (scalar gate: W = dA ⊙ E, dq += W K, dk += W^T Q)
    through the bonus (RWKV), with d_i = dA_ii:
        dq_i += d_i (u ⊙ k_i);  dk_i += d_i (u ⊙ q_i);  du += Σ_{b,i} d_i (q_i ⊙ k_i)
    through Qe = Q ⊙ e^{Gq}:      dq += dQe ⊙ e^{Gq}
    through Kd = K ⊙ e^{G_L − G}: dk += dKd ⊙ e^{G_L − G}

The decay gradient, path by path. ``g_s`` enters ``E_ij`` when ``j < s`` and
``s`` is on the query's side of the mask (``s ≤ i``, RWKV ``s < i``: the
mask's entry ``[i, s]``), ``Qe_i`` under the same condition, ``Kd_j`` when
``j < s``, and ``e^{G_L}`` always; each path contributes the product of its
node's value and gradient, ``P_ijk = dA_ij E_ijk q_ik k_jk`` (scalar gate:
``P = dA ⊙ A``):

    dg_s = Σ_{i: mask[i,s]} Σ_{j<s} P_ij  +  Σ_{i: mask[i,s]} dQe_i ⊙ Qe_i
           + Σ_{j<s} dKd_j ⊙ Kd_j  +  Σ_V dS_L ⊙ (e^{G_L} S_0)

(prefix and suffix sums). Every term is a product along a path through the
decay, so a strong decay makes it small; the shorter route through
``dG_i = ∂L/∂G_i`` and ``dg_s = Σ_{i≥s} dG_i`` subtracts O(1) terms from each
other and, in float32, leaves rounding noise of ~1e-7 in gradients that are
really ~e^{−20}.

For a scalar gate every sum over ``k`` of a gate gradient is also taken
(``K' = 1``). The functions below work on blocks with any leading axes
``(…, L, K)``: this module runs one block of length T with leading ``(B, H)``;
:mod:`.chunk` runs them on ``(B, H, N, C, K)`` chunks.

Memory: ``O(T²)`` for ``A`` (``O(T²·K)`` for ``E`` with a per-key gate).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec.ops.gla.recurrent import gate_grad, key_gate, reduce_gate

# ---------------------------------------------------------------------------
# block functions, leading axes (…), block length L
# ---------------------------------------------------------------------------

def cumulative(g4: np.ndarray, rwkv: bool) -> tuple[np.ndarray, np.ndarray]:
    """``G`` (inclusive cumulative sum of ``g4 (…, L, K')`` over L) and the
    query's ``Gq``: ``G`` itself (GLA), or ``G`` shifted one step (RWKV:
    ``Gq_0 = 0``, ``Gq_i = G_{i−1}``)."""
    G = np.cumsum(g4, axis=-2)
    if not rwkv:
        return G, G
    Gq = np.concatenate([np.zeros_like(G[..., :1, :]), G[..., :-1, :]], axis=-2)
    return G, Gq


def causal_mask(L: int, rwkv: bool) -> np.ndarray:
    """``(L, L)`` True where key j feeds query i through the state: j ≤ i (GLA), j < i (RWKV)."""
    return np.tri(L, L, -1 if rwkv else 0, dtype=bool)


def decays(G: np.ndarray, Gq: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``E = e^{Gq_i − G_j}`` on the mask, 0 above it (masked before ``exp``):
    ``(…, L, L)`` for a scalar gate, ``(…, L, L, K)`` per key."""
    if G.shape[-1] == 1:
        diff = Gq[..., :, None, 0] - G[..., None, :, 0]
        return np.exp(np.where(mask, diff, -np.inf))
    diff = Gq[..., :, None, :] - G[..., None, :, :]
    return np.exp(np.where(mask[:, :, None], diff, -np.inf))


def scores(q: np.ndarray, k: np.ndarray, E: np.ndarray, mask: np.ndarray,
           u: np.ndarray | None) -> np.ndarray:
    """``A (…, L, L)``: ``A_ij = Σ_k q_ik k_jk E_ijk`` on the mask (0 above it, by
    ``np.where`` so that a non-finite later key stays out of earlier rows), plus
    the bonus ``Σ_k q_ik u_k k_ik`` on the diagonal in RWKV mode."""
    if E.ndim == q.ndim:   # scalar gate: (Q K^T) ⊙ E
        A = np.matmul(q, np.swapaxes(k, -1, -2)) * E
    else:
        A = np.sum(q[..., :, None, :] * k[..., None, :, :] * E, axis=-1)
    A = np.where(mask, A, 0)
    if u is not None:
        L = q.shape[-2]
        A[..., np.arange(L), np.arange(L)] = np.sum(q * u * k, axis=-1)
    return A


def write_state(k: np.ndarray, v: np.ndarray, G: np.ndarray, S0: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """``S_L = Diag(e^{G_L}) S_0 + Kd^T V`` with ``Kd = K ⊙ e^{G_L − G}``;
    returns ``(S_L, Kd)``."""
    G_L = G[..., -1:, :]
    Kd = k * np.exp(G_L - G)
    return np.exp(G_L)[..., 0, :, None] * S0 + np.matmul(np.swapaxes(Kd, -1, -2), v), Kd


class Block(NamedTuple):
    """One block's inputs (leading axes ``…``): ``q, k (…, L, K)``, ``v (…, L, V)``,
    ``G, Gq (…, L, K')`` (:func:`cumulative`), ``u`` ``None`` or broadcasting to
    ``(…, L, K)``, ``S0 (…, K, V)`` the state entering the block, ``scale``."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    G: np.ndarray
    Gq: np.ndarray
    u: np.ndarray | None
    S0: np.ndarray
    scale: float



def _exclusive_cumsum(x: np.ndarray, axis: int) -> np.ndarray:
    """``y_s = Σ_{j<s} x_j`` along ``axis`` (built by shifting, not by ``cumsum − x``)."""
    c = np.cumsum(x, axis=axis)
    zero = np.zeros_like(np.take(c, [0], axis=axis))
    return np.concatenate([zero, np.delete(c, -1, axis=axis)], axis=axis)


def _suffix_sum(x: np.ndarray, inclusive: bool) -> np.ndarray:
    """``y_s = Σ_{i≥s} x_i`` (``inclusive``) or ``Σ_{i>s} x_i`` along axis −2."""
    y = np.flip(np.cumsum(np.flip(x, axis=-2), axis=-2), axis=-2)
    if inclusive:
        return y
    return np.concatenate([y[..., 1:, :], np.zeros_like(y[..., :1, :])], axis=-2)


def block_backward(blk: Block, do: np.ndarray, dS_L: np.ndarray
                   ) -> tuple[np.ndarray, ...]:
    """Back through one block (the module docstring's equations).

    Returns ``dq, dk (…, L, K)``, ``dv (…, L, V)``, ``dg4 (…, L, K')`` (the log
    decays' gradient, path by path), ``du`` (``(…, L, K)`` per position, the
    caller sums it; ``None`` in GLA mode) and ``dS0 (…, K, V)``."""
    q, k, v, G, Gq, u, S0, scale = blk
    L, width = q.shape[-2], G.shape[-1]
    rwkv = u is not None
    mask = causal_mask(L, rwkv)
    E = decays(G, Gq, mask)
    A = scores(q, k, E, mask, u)
    dA = scale * np.matmul(do, np.swapaxes(v, -1, -2))
    # dV = scale·A^T dO + Kd dS_L
    S_L, Kd = write_state(k, v, G, S0)
    dv = scale * np.matmul(np.swapaxes(A, -1, -2), do) + np.matmul(Kd, dS_L)
    # through the decayed scores (the mask's entries; the bonus diagonal below)
    dA_mask = np.where(mask, dA, 0)
    if width == 1:
        W = dA_mask * E
        dq = np.matmul(W, k)
        dk = np.matmul(np.swapaxes(W, -1, -2), q)
        P = np.where(mask, dA_mask * A, 0)[..., None]            # A without the bonus
    else:
        W = dA_mask[..., None] * E                                # (…, L, L, K)
        Wq = W * q[..., :, None, :]
        dq = np.sum(W * k[..., None, :, :], axis=-2)
        dk = np.sum(Wq, axis=-3)
        P = Wq * k[..., None, :, :]
    du = None
    if rwkv:   # the bonus on the diagonal
        d = np.diagonal(dA, axis1=-2, axis2=-1)[..., None]        # (…, L, 1)
        dq = dq + d * u * k
        dk = dk + d * u * q
        du = d * q * k
    # through the initial state's read, Qe = Q ⊙ e^{Gq}
    eq = np.exp(Gq)
    Qe = q * eq
    dQe = scale * np.matmul(do, np.swapaxes(S0, -1, -2))
    dq = dq + dQe * eq
    eL = np.exp(G[..., -1, :])[..., :, None]                     # (…, K', 1)
    dS0 = scale * np.matmul(np.swapaxes(Qe, -1, -2), do) + eL * dS_L
    # through the state's write, Kd = K ⊙ e^{G_L − G}
    dKd = np.matmul(v, np.swapaxes(dS_L, -1, -2))
    dk = dk + dKd * np.exp(G[..., -1:, :] - G)
    # dg_s: every path through step s's decay (no differences taken)
    P_before = _exclusive_cumsum(P, axis=-2)          # [i, s] = Σ_{j<s} P_ij
    dg4 = reduce_gate(np.sum(np.where(mask[:, :, None], P_before, 0), axis=-3), width)
    dg4 = dg4 + _suffix_sum(reduce_gate(dQe * Qe, width), inclusive=not rwkv)
    dg4 = dg4 + _exclusive_cumsum(reduce_gate(dKd * Kd, width), axis=-2)
    dg4 = dg4 + reduce_gate(np.sum(dS_L * eL * S0, axis=-1), width)[..., None, :]
    return dq, dk, dv, dg4, du, dS0


def heads_first(x: np.ndarray) -> np.ndarray:
    """``(B, T, H, …)`` → ``(B, H, T, …)`` (a view)."""
    return np.moveaxis(x, 2, 1)


def time_first(x: np.ndarray) -> np.ndarray:
    """``(B, H, T, …)`` → a contiguous ``(B, T, H, …)``."""
    return np.ascontiguousarray(np.moveaxis(x, 1, 2))


# ---------------------------------------------------------------------------
# the form: one block of length T
# ---------------------------------------------------------------------------

class ParallelCache(NamedTuple):
    """What :func:`backward` needs: the :class:`Block` over the whole sequence
    (heads first, ``(B, H, T, …)``) and ``g`` as given (for its gradient's shape)."""

    block: Block
    g: np.ndarray | None


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None,
            u: np.ndarray | None, initial_state: np.ndarray, scale: float
            ) -> tuple[np.ndarray, np.ndarray, ParallelCache]:
    """``O = scale·(A V + Qe S_0)`` and ``S_T = Diag(e^{G_T}) S_0 + Kd^T V`` over the
    whole sequence (module docstring). Returns ``o (B, T, H, V)``, ``S_T`` and the cache."""
    qh, kh, vh = heads_first(q), heads_first(k), heads_first(v)
    G, Gq = cumulative(heads_first(key_gate(g, q)), u is not None)
    ub = None if u is None else u[:, None, :]                      # (H, 1, K)
    mask = causal_mask(q.shape[1], u is not None)
    A = scores(qh, kh, decays(G, Gq, mask), mask, ub)
    o = scale * (np.matmul(A, vh) + np.matmul(qh * np.exp(Gq), initial_state))
    S_T, _ = write_state(kh, vh, G, initial_state)
    blk = Block(qh, kh, vh, G, Gq, ub, initial_state, scale)
    return time_first(o), S_T, ParallelCache(blk, g)


def backward(cache: ParallelCache, do: np.ndarray, dstate: np.ndarray) -> dict:
    """Back through :func:`forward` by :func:`block_backward` (module docstring).

    Returns ``{"q", "k", "v", "g", "u", "initial_state"}``."""
    dq, dk, dv, dg4, du, dS0 = block_backward(cache.block, heads_first(do), dstate)
    return {"q": time_first(dq), "k": time_first(dk), "v": time_first(dv),
            "g": gate_grad(time_first(dg4), cache.g),
            "u": None if du is None else np.sum(du, axis=(0, 2)), "initial_state": dS0}
