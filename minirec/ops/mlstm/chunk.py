"""mLSTM, the chunkwise form: parallel inside chunks, recurrent between them.

Dimension key: B batch, T time, H heads, K key size, V value size; L the
chunk length (``chunk_size``, or T if smaller), N = ⌈T / L⌉ chunks (the last
one padded with steps that are masked out: ``log σ(f) = 0``, no input).

Forward, in two phases:

1. Inter-chunk recurrence on the state at chunk boundaries, one chunk a step
   (:func:`~minirec.ops.mlstm.parallel.summary_forward`), with ``F`` the
   cumulative ``log σ(f)`` *inside* chunk c (restarting at 0):

       g_j = F_{L−1} − F_j + i_j,     G0 = F_{L−1} + m_{c−1}
       m_c = max(G0, max_j g_j)
       C_c = e^{G0 − m_c} C_{c−1} + Σ_j e^{g_j − m_c} k_j v_j^T,   n_c likewise

   ``(C_{−1}, n_{−1}, m_{−1})`` is the initial state; ``(C_{N−1}, n_{N−1}, m_{N−1})``
   the final one. ``m_c`` is the recurrence's stabiliser at the chunk's end
   (the running max in closed form), so every state equals the recurrence's.
2. Intra-chunk outputs, all chunks at once
   (:func:`~minirec.ops.mlstm.parallel.block_forward`): the parallel form of
   each chunk with the state entering it, ``(C_{c−1}, n_{c−1}, m_{c−1})``, as
   its initial state. Cost O(T·L·(K+V)) instead of O(T²·(K+V)).

Only ``F_t − F_j ≤ 0`` inside one chunk, ``g − m ≤ 0`` and ``G0 − m ≤ 0`` are
exponentiated; ``F`` restarts every chunk, so it stays small in float32.

Backward, chunkwise, in the reverse order:

2'. :func:`~minirec.ops.mlstm.parallel.block_backward` of ``dh`` for all chunks
    at once: ``dq``, ``dk``, ``dv``, ``di``, ``dlf`` of the intra-chunk terms and
    ``(dC_in, dn_in, dm_in)[c]``, the gradient of the state entering chunk c.
1'. The reverse inter-chunk recurrence: start from ``dstate``; for
    c = N−1, …, 0, :func:`~minirec.ops.mlstm.parallel.summary_backward` of
    ``(dC_c, dn_c, dm_c)`` adds chunk c's terms to ``dk, dv, di, dlf`` and gives
    the previous state's part; add ``(dC_in, dn_in, dm_in)[c]``:

        (dC_{c−1}, dn_{c−1}, dm_{c−1}) = summary_backward(...)[C0, n0, m0]
                                         + (dC_in, dn_in, dm_in)[c]

    and the gradient reaching ``c = −1`` is ``initial_state``'s.
    Then ``dq = scale · dq̃``, ``df = dlf · σ(−f)``.

The equations of both pieces (including the gradient through the maxes: the
outputs do not depend on the stabiliser, the final ``m`` goes to its first
maximum, the initial state's ``G0`` before any step) are in
:mod:`minirec.ops.mlstm.parallel`'s docstring.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec._math import log_sigmoid, sigmoid
from minirec.ops.mlstm import parallel

State = tuple  # (C (B, H, K, V), n (B, H, K), m (B, H))


class ChunkCache(NamedTuple):
    """What :func:`backward` needs: ``f (B, T, H)`` as given, ``scale``, the
    chunked arrays ``qs = scale·q, k (B, H, N, L, K)``, ``v (B, H, N, L, V)``,
    the states entering each chunk ``C_in (B, H, N, K, V)``, ``n_in (B, H, N, K)``,
    the intra-chunk :class:`~minirec.ops.mlstm.parallel.BlockCache` and one
    :class:`~minirec.ops.mlstm.parallel.SummaryCache` per chunk."""

    f: np.ndarray
    scale: float
    qs: np.ndarray
    k: np.ndarray
    v: np.ndarray
    C_in: np.ndarray
    n_in: np.ndarray
    block: parallel.BlockCache
    summaries: list


def _to_chunks(x: np.ndarray, N: int, L: int) -> np.ndarray:
    """``(B, T, H, …) → (B, H, N, L, …)``, padded with zeros at the end of time."""
    x = np.moveaxis(x, 2, 1)
    pad = N * L - x.shape[2]
    if pad:
        x = np.concatenate([x, np.zeros(x.shape[:2] + (pad,) + x.shape[3:], x.dtype)], axis=2)
    return x.reshape(x.shape[:2] + (N, L) + x.shape[3:])


def _from_chunks(x: np.ndarray, T: int) -> np.ndarray:
    """``(B, H, N, L, …) → (B, T, H, …)`` (padding dropped), contiguous."""
    x = x.reshape(x.shape[:2] + (x.shape[2] * x.shape[3],) + x.shape[4:])[:, :, :T]
    return np.ascontiguousarray(np.moveaxis(x, 1, 2))


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, i: np.ndarray, f: np.ndarray,
            initial_state: State, scale: float, chunk_size: int
            ) -> tuple[np.ndarray, State, ChunkCache]:
    """The chunkwise form (phases 1 and 2 of the module docstring).

    ``q, k (B, T, H, K)``, ``v (B, T, H, V)``, ``i, f (B, T, H)``,
    ``initial_state = (C0, n0, m0)`` arrays, ``chunk_size`` ≥ 1. Returns
    ``h (B, T, H, V)``, the final state ``(C, n, m)`` and the cache.
    """
    T = q.shape[1]
    L = min(chunk_size, T)
    N = -(-T // L)
    valid = None if N * L == T else (np.arange(N * L) < T).reshape(N, L)
    qs, kc, vc = (_to_chunks(x, N, L) for x in (scale * q, k, v))
    ic = _to_chunks(i, N, L)
    lf = _to_chunks(log_sigmoid(f), N, L)                 # padding: log σ(f) = 0
    C_in = np.empty(kc.shape[:3] + (k.shape[-1], v.shape[-1]), q.dtype)
    n_in = np.empty(kc.shape[:3] + (k.shape[-1],), q.dtype)
    m_in = np.empty(kc.shape[:3], q.dtype)
    # phase 1: the recurrence between chunks
    state = tuple(initial_state)
    summaries = []
    for c in range(N):
        C_in[:, :, c], n_in[:, :, c], m_in[:, :, c] = state
        state, sc = parallel.summary_forward(kc[:, :, c], vc[:, :, c], ic[:, :, c],
                                             lf[:, :, c], *state,
                                             None if valid is None else valid[c])
        summaries.append(sc)
    # phase 2: every chunk's outputs at once, from the state entering it
    h, block = parallel.block_forward(qs, kc, vc, ic, lf, C_in, n_in, m_in, valid)
    return (_from_chunks(h, T), state,
            ChunkCache(f, scale, qs, kc, vc, C_in, n_in, block, summaries))


def backward(cache: ChunkCache, dh: np.ndarray, dstate: State) -> dict:
    """The chunkwise backward (phases 2' and 1' of the module docstring).

    Returns ``{"q", "k", "v", "i", "f", "initial_state": (dC0, dn0, dm0)}``.
    """
    c = cache
    N, L = c.k.shape[2:4]
    T = c.f.shape[1]
    # phase 2': intra-chunk terms, all chunks at once
    g = parallel.block_backward(_to_chunks(dh, N, L), c.block, c.qs, c.k, c.v, c.C_in, c.n_in)
    dk, dv, di, dlf = g["k"], g["v"], g["i"], g["lf"]
    # phase 1': the reverse recurrence between chunks
    dC, dn, dm = dstate
    for ch in reversed(range(N)):
        gs = parallel.summary_backward((dC, dn, dm), c.summaries[ch], c.k[:, :, ch],
                                       c.v[:, :, ch], c.C_in[:, :, ch], c.n_in[:, :, ch])
        dk[:, :, ch] += gs["k"]
        dv[:, :, ch] += gs["v"]
        di[:, :, ch] += gs["i"]
        dlf[:, :, ch] += gs["lf"]
        dC = gs["C0"] + g["C0"][:, :, ch]
        dn = gs["n0"] + g["n0"][:, :, ch]
        dm = gs["m0"] + g["m0"][:, :, ch]
    return {"q": c.scale * _from_chunks(g["qs"], T),
            "k": _from_chunks(dk, T),
            "v": _from_chunks(dv, T),
            "i": _from_chunks(di, T),
            "f": _from_chunks(dlf, T) * sigmoid(-c.f),
            "initial_state": (dC, dn, dm)}
