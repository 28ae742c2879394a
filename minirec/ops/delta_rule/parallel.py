"""The delta engine's parallel form: the WY/UT algebra over the whole sequence.

Dimension key: B batch, T time, H heads, K key size, V value size. With the
sequence as one block (Γ_i = Σ_{s≤i} g_s, D_ij = e^{Γ_i − Γ_j} for j ≤ i,
e_i = e^{Γ_i}, all exponents ≤ 0):

    A = I + tril(Diag(β) K K^T ⊙ D, −1)                       (T, T) unit lower
    δ = A^{−1} β ⊙ (V − (e ⊙ K) S0)         δ_t = β_t u_t, the scaled errors
    O = scale · [(e ⊙ Q) S0 + ((Q K^T) ⊙ D) δ]
    S_T = e^{Γ_{T−1}} S0 + (e^{Γ_{T−1} − Γ} ⊙ K)^T δ

one unit lower triangular solve of size T (with K + V right-hand sides) per
(batch, head) and no state passing: O(T² (K + V)) work and O(T²) memory per
head, against the recurrence's O(T K V).

This is exactly :mod:`.chunk` with one chunk of length T, so the code *is*
:func:`.chunk.forward` with ``chunk_size = T`` and its backward (the
equations are in :mod:`.chunk`; the reverse pass over chunks is a single
step: ``dδ = scale P^T dO + Kr dstate``, ``dS0 = γ dstate + scale (e ⊙ Q)^T dO − W^T dδ``).
It is listed and tested as a method of its own.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec.ops.delta_rule import chunk


class ParallelCache(NamedTuple):
    """What :func:`backward` needs: ``block``, the :class:`.chunk.ChunkCache` of the
    single chunk of length T."""

    block: chunk.ChunkCache


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None,
            beta: np.ndarray, initial_state: np.ndarray, scale: float
            ) -> tuple[np.ndarray, np.ndarray, ParallelCache]:
    """The whole-sequence WY/UT forward (inputs already checked): :func:`.chunk.forward`
    with one chunk of length T. Returns ``o (B, T, H, V)``, ``S_T (B, H, K, V)``
    and the :class:`ParallelCache`."""
    o, S_T, block = chunk.forward(q, k, v, g, beta, initial_state, scale, q.shape[1])
    return o, S_T, ParallelCache(block)


def backward(cache: ParallelCache, do: np.ndarray, dstate: np.ndarray) -> dict:
    """Back through :func:`forward` (:func:`.chunk.backward` on the one block).
    Returns ``{"q", "k", "v", "g", "beta", "initial_state"}``."""
    return chunk.backward(cache.block, do, dstate)
