"""The GLA engine's chunkwise-parallel form (Yang et al. 2024, §3; the
algorithm of flash-linear-attention's ``chunk`` kernels), and its backward,
chunkwise too.

Dimension key: B batch, T time, H heads, K key size, V value size; C chunk
length, N = ⌈T / C⌉ chunks (the last one padded with steps of ``q = k = v = 0``
and ``g = 0``, which change nothing and get no gradient). Engine semantics in
:mod:`.recurrent`.

Each chunk n is the parallel form of :mod:`.parallel` (its notation: ``G`` the
cumulative log decay *within the chunk*, ``E``, ``A``, ``Qe``, ``Kd``) started
from the state ``S_n`` the chunk receives:

    intra-chunk (quadratic, all chunks at once):
        O_n = scale·(A_n V_n + Qe_n S_n)
    inter-chunk (state passing, one step per chunk):
        S_{n+1} = Diag(e^{G_{n,C}}) S_n + ΔS_n,    ΔS_n = Kd_n^T V_n,   S_0 = initial_state

so the sequential part is N steps instead of T, and every exponent is a
within-chunk difference ``≤ 0`` (stable for any T and decay).

Backward. ``dS_{n+1}`` (∂L/∂S_{n+1}, the state chunk n hands on) is passed
back over the chunks, last first, starting from ``dstate``:

    dS_n = scale · Qe_n^T dO_n + Diag(e^{G_{n,C}}) dS_{n+1}

and then every chunk, given ``S_n`` and ``dS_{n+1}``, is the parallel form's
backward (:func:`.parallel.block_backward`: ``dA``, ``dV``, the decayed scores,
``Qe``, ``Kd``, and the decay gradient path by path within the chunk, the
path through ``S_n``'s decay included), all chunks at once. ``d initial_state = dS_0``.

Memory: ``O(T·C)`` for the scores (``O(T·C·K)`` with a per-key gate) and
``N`` states.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec.ops.gla.parallel import (
    Block,
    block_backward,
    causal_mask,
    cumulative,
    decays,
    heads_first,
    scores,
)
from minirec.ops.gla.recurrent import gate_grad, key_gate


class ChunkCache(NamedTuple):
    """What :func:`backward` needs: the chunked :class:`~.parallel.Block` (leading
    axes ``(B, H, N)``, block length C, ``S0`` = every chunk's incoming state
    ``S_n (B, H, N, K, V)``), the number of real steps ``T`` and ``g`` as given."""

    block: Block
    T: int
    g: np.ndarray | None


def _chunks(x: np.ndarray, C: int) -> np.ndarray:
    """``(B, T, H, …)`` → ``(B, H, N, C, …)``, the tail padded with zeros."""
    xh = heads_first(x)
    T = xh.shape[2]
    pad = -T % C
    if pad:
        widths = [(0, 0)] * xh.ndim
        widths[2] = (0, pad)
        xh = np.pad(xh, widths)
    # the chunk count spelt out: a reshape cannot infer it when B = 0
    return xh.reshape(xh.shape[:2] + ((T + pad) // C, C) + xh.shape[3:])


def _unchunk(x: np.ndarray, T: int) -> np.ndarray:
    """``(B, H, N, C, …)`` → a contiguous ``(B, T, H, …)`` (padding dropped)."""
    x = x.reshape(x.shape[:2] + (x.shape[2] * x.shape[3],) + x.shape[4:])[:, :, :T]
    return np.ascontiguousarray(np.moveaxis(x, 1, 2))


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None,
            u: np.ndarray | None, initial_state: np.ndarray, scale: float,
            chunk_size: int) -> tuple[np.ndarray, np.ndarray, ChunkCache]:
    """The chunkwise algorithm (module docstring) with ``C = min(chunk_size, T)``.

    Returns ``o (B, T, H, V)``, ``S_T (B, H, K, V)`` and the cache."""
    T = q.shape[1]
    C = min(chunk_size, T)
    rwkv = u is not None
    qc, kc, vc = _chunks(q, C), _chunks(k, C), _chunks(v, C)
    G, Gq = cumulative(_chunks(key_gate(g, q), C), rwkv)           # within each chunk
    ub = None if u is None else u[:, None, None, :]                # (H, 1, 1, K)
    # intra-chunk: the quadratic form of every chunk at once
    mask = causal_mask(C, rwkv)
    A = scores(qc, kc, decays(G, Gq, mask), mask, ub)               # (B, H, N, C, C)
    # what each chunk adds to the state it hands on, and how it decays the one it got
    G_C = G[..., -1:, :]
    dS_chunk = np.matmul(np.swapaxes(kc * np.exp(G_C - G), -1, -2), vc)   # ΔS_n
    decay = np.exp(G_C)[..., 0, :, None]                           # (B, H, N, K', 1)
    # inter-chunk: pass the state along, S_{n+1} = Diag(e^{G_C}) S_n + ΔS_n
    S_in = np.empty(dS_chunk.shape, dS_chunk.dtype)
    S = initial_state
    for n in range(qc.shape[2]):
        S_in[:, :, n] = S
        S = decay[:, :, n] * S + dS_chunk[:, :, n]
    o = scale * (np.matmul(A, vc) + np.matmul(qc * np.exp(Gq), S_in))
    blk = Block(qc, kc, vc, G, Gq, ub, S_in, scale)
    return _unchunk(o, T), S, ChunkCache(blk, T, g)


def backward(cache: ChunkCache, do: np.ndarray, dstate: np.ndarray) -> dict:
    """The chunkwise backward (module docstring): ``dS`` passed back over the
    chunks, then every chunk's parallel backward at once.

    Returns ``{"q", "k", "v", "g", "u", "initial_state"}``."""
    blk, T = cache.block, cache.T
    C = blk.q.shape[-2]
    doc = _chunks(do, C)
    # what each chunk's outputs ask of the state it received: scale · Qe_n^T dO_n
    read = blk.scale * np.matmul(np.swapaxes(blk.q * np.exp(blk.Gq), -1, -2), doc)
    decay = np.exp(blk.G[..., -1, :])[..., :, None]                # (B, H, N, K', 1)
    # inter-chunk, reversed: dS_n = scale · Qe_n^T dO_n + Diag(e^{G_C}) dS_{n+1}
    dS_out = np.empty(read.shape, read.dtype)                      # dS_{n+1} per chunk
    dS = dstate
    for n in reversed(range(read.shape[2])):
        dS_out[:, :, n] = dS
        dS = read[:, :, n] + decay[:, :, n] * dS
    # intra-chunk: every chunk's parallel backward, given S_n and dS_{n+1}
    dq, dk, dv, dg4, du, _ = block_backward(blk, doc, dS_out)
    return {"q": _unchunk(dq, T), "k": _unchunk(dk, T), "v": _unchunk(dv, T),
            "g": gate_grad(_unchunk(dg4, T), cache.g),
            "u": None if du is None else np.sum(du, axis=(0, 2, 3)), "initial_state": dS}
