"""mLSTM, the parallel (quadratic) form of the xLSTM paper, with its own backward.

Dimension key: B batch, T time (L within one block), H heads, K key size,
V value size. Work is per batch row and head, on a block of L steps with
the state ``(C0, n0, m0)`` in front of it (here the whole sequence, L = T and
the initial state; :mod:`.chunk` runs the same block on every chunk).
Indices t (the output row) and j (the input column), j ≤ t:

    lf_t = log σ(f_t),   F_t = Σ_{s≤t} lf_s             cumulative log forget gate
    D_tj = F_t − F_j + i_j = Σ_{j<s≤t} lf_s + i_j
                             (j ≤ t; −inf above the diagonal: masked before exp)
    D0_t = F_t + m0                                      the initial state's column
    m_t  = max(D0_t, max_{j≤t} D_tj)                     row-wise stabiliser
    W_tj = e^{D_tj − m_t},   w0_t = e^{D0_t − m_t}       (exponents ≤ 0)
    P_tj = (q̃_t · k_j) W_tj                              q̃ = scale · q
    num_t = Σ_j P_tj v_j + w0_t C0^T q̃_t
    d_t   = Σ_j P_tj     + w0_t n0 · q̃_t
    h_t   = num_t / max(|d_t|, e^{−m_t})

``Σ_{j<s≤t} lf_s`` is summed term by term (:func:`segment_sum`, as in
Mamba-2's minimal SSD), not formed as the difference ``F_t − F_j`` of two
large sums, which loses the digits of a strong decay in float32.

``m_t`` is the recurrence's stabiliser in closed form: unrolling
``m_t = max(lf_t + m_{t−1}, i_t)`` gives the running max of
``F_t − F_j + i_j`` over the inputs j ≤ t and ``F_t + m0`` for the initial
state; ``C_t = Σ_j W_tj k_j v_j^T + w0_t C0`` and ``n_t`` likewise are the
recurrence's states, so this form equals it to rounding. The final state is
that of the last row (:func:`summary_forward`, with ``g_j = D_{L−1,j}``,
``G0 = D0_{L−1}``, ``a = w0_{L−1}``, ``w_j = W_{L−1,j}``).

Backward of the outputs (:func:`block_backward`). ``h_t`` does not depend on
``m_t`` (scaling ``num_t``, ``d_t`` and ``e^{−m_t}`` by the same ``e^{−m_t}``
cancels), so ``m`` is held constant: exact, not an approximation, and the
reason no gradient of the outputs goes through ``max`` here. With ``dh``:

    dnum_t = dh_t / den_t,   hd_t = dh_t · h_t
    dd_t   = −hd_t / d_t  if |d_t| ≥ e^{−m_t} (ties: the |d| branch), else 0
    dP_tj  = dnum_t · v_j + dd_t
    dq̃_t  = Σ_j dP_tj W_tj k_j + w0_t (C0 dnum_t + dd_t n0)      dq = scale · dq̃
    dk_j   = Σ_t dP_tj W_tj q̃_t,     dv_j = Σ_t P_tj dnum_t
    dD_tj  = dP_tj P_tj              (∂P/∂D = P)
    dD0_t  = w0_t (dnum_t · C0^T q̃_t + dd_t n0 · q̃_t)
    dC0    = Σ_t w0_t q̃_t dnum_t^T,  dn0 = Σ_t w0_t dd_t q̃_t
    di_j   = Σ_t dD_tj,   dm0 = Σ_t dD0_t
    dlf_s  = Σ_{t≥s} (dD0_t + Σ_{j<s} dD_tj)     (lf_s is in D_tj iff j < s ≤ t)
    df     = dlf · σ(−f)

``dlf`` is summed over that rectangle directly (a reverse cumulative sum over
t, then a cumulative sum over j), not as ``Σ_{t≥s}(Σ_j dD_tj − Σ_t' dD_t't)``,
which cancels large terms when the decay is strong.

Backward of the final state (:func:`summary_backward`) ``(C, n, m)``, with
``dstate = (dC, dn, dm)``: here ``m`` matters, since the returned ``C = e^{−m} C̄``.

    da  = Σ dC ⊙ C0 + dn · n0                     dw_j = k_j^T dC v_j + dn · k_j
    dk_j += w_j (dC v_j + dn),  dv_j += w_j dC^T k_j,  dC0 += a dC,  dn0 += a dn
    dG0 = a da,  dg_j = w_j dw_j
    E   = dm − a da − Σ_j w_j dw_j                (∂L/∂m at fixed G0, g)
    E goes through m = max(G0, max_j g_j) to its first maximum: to G0 if
    G0 ≥ max_j g_j, else to the smallest j holding the max (ties go to the
    earlier argument, as in the recurrence's forget-branch rule)
    dm0 += dG0,  di_j += dg_j,  dlf_s += dG0 + Σ_{j<s} dg_j

Masking and non-finite input: the upper triangle (and, for :mod:`.chunk`,
padding) is masked with ``np.where`` before ``exp`` and wherever a masked
entry could be NaN/inf, so a NaN in ``q_t`` reaches ``h_t`` only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec._math import log_sigmoid, sigmoid
from minirec.ops.mlstm.recurrent import floor

State = tuple  # (C (B, H, K, V), n (B, H, K), m (B, H))


class BlockCache(NamedTuple):
    """What :func:`block_backward` needs (leading axes ``…`` = (B, H) or (B, H, N)):
    ``mask (…, L, L)`` causal (and valid) entries, ``W, P (…, L, L)``,
    ``w0, m, d, den (…, L)``, ``h (…, L, V)``, ``qC0 = C0^T q̃ (…, L, V)``,
    ``qn0 = n0 · q̃ (…, L)``."""

    mask: np.ndarray
    W: np.ndarray
    P: np.ndarray
    w0: np.ndarray
    m: np.ndarray
    d: np.ndarray
    den: np.ndarray
    h: np.ndarray
    qC0: np.ndarray
    qn0: np.ndarray


class SummaryCache(NamedTuple):
    """What :func:`summary_backward` needs: ``a = e^{G0 − m} (…)``,
    ``w = e^{g − m} (…, L)``, ``from_init (…)`` (the max is ``G0``) and
    ``jstar (…)`` (else the first j holding it)."""

    a: np.ndarray
    w: np.ndarray
    from_init: np.ndarray
    jstar: np.ndarray


class ParallelCache(NamedTuple):
    """What :func:`backward` needs: ``f (B, T, H)`` as given, ``scale``; in the
    head-major layout ``qs = scale·q, k (B, H, T, K)``, ``v (B, H, T, V)``;
    the initial state ``C0, n0``; the :class:`BlockCache` and
    :class:`SummaryCache`."""

    f: np.ndarray
    scale: float
    qs: np.ndarray
    k: np.ndarray
    v: np.ndarray
    C0: np.ndarray
    n0: np.ndarray
    block: BlockCache
    summary: SummaryCache


def _mT(x: np.ndarray) -> np.ndarray:
    return np.swapaxes(x, -1, -2)


def segment_sum(lf: np.ndarray) -> np.ndarray:
    """``S_tj = Σ_{j<s≤t} lf_s`` for ``j ≤ t`` (0 above the diagonal), ``(…, L, L)``.

    Summed term by term (a cumulative sum over t of ``lf_s`` masked to ``s > j``),
    not as ``F_t − F_j``: the difference of two large cumulative sums loses the
    digits of a strong decay in float32 (``F ≈ −5000`` after 256 steps of −20).
    """
    L = lf.shape[-1]
    above = np.tri(L, k=-1, dtype=bool)                   # s > j
    return np.cumsum(np.where(above, lf[..., :, None], 0), axis=-2)


def block_forward(qs: np.ndarray, k: np.ndarray, v: np.ndarray, i: np.ndarray,
                  lf: np.ndarray, C0: np.ndarray, n0: np.ndarray, m0: np.ndarray,
                  valid: np.ndarray | None = None) -> tuple[np.ndarray, BlockCache]:
    """The outputs of one block of L steps after the state ``(C0, n0, m0)``.

    ``qs = scale·q, k (…, L, K)``, ``v (…, L, V)``, ``i, lf = log σ(f) (…, L)``,
    ``C0 (…, K, V)``, ``n0 (…, K)``, ``m0 (…)``; ``valid`` ``None`` or a boolean
    ``(…, L)`` mask of the steps that are not padding (padding columns are masked
    out). Returns ``h (…, L, V)``.
    """
    L = lf.shape[-1]
    mask = np.tri(L, dtype=bool)                          # j ≤ t
    if valid is not None:
        mask = mask & valid[..., None, :]
    D = np.where(mask, segment_sum(lf) + i[..., None, :], -np.inf)
    D0 = np.cumsum(lf, axis=-1) + m0[..., None]           # F_t + m0
    m = np.maximum(D0, np.max(D, axis=-1))
    W = np.exp(D - m[..., None])                          # masked: e^{−inf} = 0
    w0 = np.exp(D0 - m)
    P = np.where(mask, (qs @ _mT(k)) * W, 0)
    qC0 = qs @ C0
    qn0 = (qs @ n0[..., None])[..., 0]
    num = P @ v + w0[..., None] * qC0
    d = np.sum(P, axis=-1) + w0 * qn0
    den = np.maximum(np.abs(d), floor(m))
    h = num / den[..., None]
    return h, BlockCache(mask, W, P, w0, m, d, den, h, qC0, qn0)


def block_backward(dh: np.ndarray, c: BlockCache, qs: np.ndarray, k: np.ndarray,
                   v: np.ndarray, C0: np.ndarray, n0: np.ndarray) -> dict:
    """Back through :func:`block_forward` (equations in the module docstring).

    Returns ``{"qs", "k", "v", "i", "lf", "C0", "n0", "m0"}`` (``qs``:
    ∂L/∂(scale·q); ``lf``: ∂L/∂ log σ(f)), shaped like the block's arrays.
    """
    dnum = dh / c.den[..., None]
    hd = np.sum(dh * c.h, axis=-1)
    d_branch = np.abs(c.d) >= floor(c.m)                  # ties: the |d| branch
    dd = np.divide(-hd, c.d, out=np.zeros_like(hd), where=d_branch)
    dP = dnum @ _mT(v) + dd[..., None]
    dS = np.where(c.mask, dP * c.W, 0)                    # ∂L/∂(q̃_t · k_j)
    dD = np.where(c.mask, dP * c.P, 0)
    w0 = c.w0
    dqs = dS @ k + w0[..., None] * (dnum @ _mT(C0) + dd[..., None] * n0[..., None, :])
    dk = _mT(dS) @ qs
    dv = _mT(c.P) @ dnum
    dD0 = w0 * (np.sum(dnum * c.qC0, axis=-1) + dd * c.qn0)
    dC0 = _mT(w0[..., None] * qs) @ dnum
    dn0 = ((w0 * dd)[..., None, :] @ qs)[..., 0, :]
    di = np.sum(dD, axis=-2)
    dm0 = np.sum(dD0, axis=-1)
    # dlf_s = Σ_{t≥s} Σ_{j'≤s} X_tj' with X = [dD0 | dD] (column 0 the initial state)
    X = np.concatenate([dD0[..., None], dD], axis=-1)    # (…, L, L+1)
    X = np.flip(np.cumsum(np.flip(X, axis=-2), axis=-2), axis=-2)
    X = np.cumsum(X, axis=-1)
    dlf = np.diagonal(X, axis1=-2, axis2=-1).copy()       # X[s, s], s < L
    return {"qs": dqs, "k": dk, "v": dv, "i": di, "lf": dlf, "C0": dC0, "n0": dn0, "m0": dm0}


def summary_forward(k: np.ndarray, v: np.ndarray, i: np.ndarray, lf: np.ndarray,
                    C0: np.ndarray, n0: np.ndarray, m0: np.ndarray,
                    valid: np.ndarray | None = None) -> tuple[State, SummaryCache]:
    """The state ``(C, n, m)`` after a block of L steps that starts from ``(C0, n0, m0)``
    (shapes as in :func:`block_forward`):

        g_j = Σ_{s>j} lf_s + i_j,   G0 = Σ_s lf_s + m0,   m = max(G0, max_j g_j)
        C = e^{G0 − m} C0 + Σ_j e^{g_j − m} k_j v_j^T,   n likewise with k_j

    (``Σ_{s>j} lf_s = F_{L−1} − F_j``, summed directly as a reverse cumulative sum.)
    """
    rev = np.flip(np.cumsum(np.flip(lf, axis=-1), axis=-1), axis=-1)   # Σ_{s≥j} lf_s
    Fl = rev[..., 0]
    g = np.concatenate([rev[..., 1:], np.zeros_like(rev[..., :1])], axis=-1) + i
    if valid is not None:
        g = np.where(valid, g, -np.inf)
    G0 = Fl + m0
    gmax = np.max(g, axis=-1)
    m = np.maximum(G0, gmax)
    a = np.exp(G0 - m)
    w = np.exp(g - m[..., None])
    wk = w[..., None] * k
    C = a[..., None, None] * C0 + _mT(wk) @ v
    n = a[..., None] * n0 + np.sum(wk, axis=-2)
    return (C, n, m), SummaryCache(a, w, G0 >= gmax, np.argmax(g, axis=-1))


def summary_backward(dstate: State, c: SummaryCache, k: np.ndarray, v: np.ndarray,
                     C0: np.ndarray, n0: np.ndarray) -> dict:
    """Back through :func:`summary_forward` (equations in the module docstring).

    ``dstate = (dC, dn, dm)``. Returns ``{"k", "v", "i", "lf", "C0", "n0", "m0"}``.
    """
    dC, dn, dm = dstate
    a, w = c.a, c.w
    da = np.sum(dC * C0, axis=(-2, -1)) + np.sum(dn * n0, axis=-1)
    kdC = k @ dC                                          # (…, L, V): k_j^T dC
    dw = np.sum(kdC * v, axis=-1) + (k @ dn[..., None])[..., 0]
    dk = w[..., None] * (v @ _mT(dC) + dn[..., None, :])
    dv = w[..., None] * kdC
    dG0 = a * da
    dg = w * dw
    E = dm - dG0 - np.sum(dg, axis=-1)
    # through m = max(G0, max_j g_j): to its first maximum (G0 first)
    dG0 = dG0 + np.where(c.from_init, E, 0)
    first = np.arange(w.shape[-1]) == c.jstar[..., None]
    dg = dg + np.where(first & ~c.from_init[..., None], E[..., None], 0)
    # lf_s is in G0 and in g_j for j < s
    dlf = dG0[..., None] + np.concatenate(
        [np.zeros_like(dg[..., :1]), np.cumsum(dg, axis=-1)[..., :-1]], axis=-1)
    return {"k": dk, "v": dv, "i": dg, "lf": dlf, "C0": a[..., None, None] * dC,
            "n0": a[..., None] * dn, "m0": dG0}


def _heads_first(x: np.ndarray) -> np.ndarray:
    """``(B, T, H, …) → (B, H, T, …)`` (a view)."""
    return np.moveaxis(x, 2, 1)


def _time_first(x: np.ndarray) -> np.ndarray:
    """``(B, H, T, …) → (B, T, H, …)``, contiguous."""
    return np.ascontiguousarray(np.moveaxis(x, 1, 2))


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, i: np.ndarray, f: np.ndarray,
            initial_state: State, scale: float) -> tuple[np.ndarray, State, ParallelCache]:
    """The quadratic form over the whole sequence (one block, L = T).

    ``q, k (B, T, H, K)``, ``v (B, T, H, V)``, ``i, f (B, T, H)``,
    ``initial_state = (C0, n0, m0)`` arrays. Returns ``h (B, T, H, V)``, the
    final state ``(C, n, m)`` and the cache. Memory O(B·H·T²).
    """
    C0, n0, m0 = initial_state
    qs, kk, vv = (_heads_first(x) for x in (scale * q, k, v))
    ii = _heads_first(i)
    lf = log_sigmoid(_heads_first(f))
    h, block = block_forward(qs, kk, vv, ii, lf, C0, n0, m0)
    state, summary = summary_forward(kk, vv, ii, lf, C0, n0, m0)
    return _time_first(h), state, ParallelCache(f, scale, qs, kk, vv, C0, n0, block, summary)


def backward(cache: ParallelCache, dh: np.ndarray, dstate: State) -> dict:
    """:func:`block_backward` of ``dh`` plus :func:`summary_backward` of ``dstate``.

    Returns ``{"q", "k", "v", "i", "f", "initial_state": (dC0, dn0, dm0)}``.
    """
    c = cache
    gb = block_backward(_heads_first(dh), c.block, c.qs, c.k, c.v, c.C0, c.n0)
    gs = summary_backward(dstate, c.summary, c.k, c.v, c.C0, c.n0)
    dlf = _time_first(gb["lf"] + gs["lf"])
    return {"q": c.scale * _time_first(gb["qs"]),
            "k": _time_first(gb["k"] + gs["k"]),
            "v": _time_first(gb["v"] + gs["v"]),
            "i": _time_first(gb["i"] + gs["i"]),
            "f": dlf * sigmoid(-c.f),
            "initial_state": tuple(gb[x] + gs[x] for x in ("C0", "n0", "m0"))}
