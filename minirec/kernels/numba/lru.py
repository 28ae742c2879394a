"""``backend="numba"`` for :mod:`minirec.cells.lru`'s recurrence, reached through
``_backend.kernels("lru", "numba")``.

    h_t = λ h_{t−1} + γ Bx_t                                          forward
    g_t = dh_t + conj(λ) g_{t+1};  gg_t = γ g_t,
    dλ += g_t conj(h_{t−1}),  dγ += Re(g_t conj(Bx_t))                  backward

one fused loop per direction (:func:`minirec.kernels.numba.diagonal.lru_forward`,
``lru_backward``; methods ``recurrent`` and ``chunked``). Tested against
:func:`minirec.cells.lru.forward` / ``backward`` with ``backend="numpy"``. The
projections ``Bx = x B^T``, ``y = Re(h C^T) + D x``, ``dh = dy conj(C)`` and the
weight gradients are GEMMs in the cell; arguments arrive validated.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec.kernels.numba import diagonal


class Cache(NamedTuple):
    """What :func:`backward` needs: ``lam (N,)``, ``gamma (N,)``, ``Bx``,
    ``h (B, T, N)`` and ``h0 (B, N)`` as the kernels took them (complex but
    ``gamma``), ``method``, ``chunk_size``."""

    lam: np.ndarray
    gamma: np.ndarray
    Bx: np.ndarray
    h0: np.ndarray
    h: np.ndarray
    method: str
    chunk_size: int | None


def forward(lam: np.ndarray, gamma: np.ndarray, Bx: np.ndarray, h0: np.ndarray, *,
            method: str = "recurrent", chunk_size: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, Cache]:
    """``h (B, T, N)`` complex, ``h_T (B, N)`` and the :class:`Cache`, from
    ``λ (N,)`` complex, ``γ (N,)`` real, ``Bx = x B^T (B, T, N)`` complex and
    ``h0 (B, N)``."""
    diagonal.check_method(method, "cells.lru")
    B, T, N = Bx.shape
    cdtype = np.result_type(lam.dtype, Bx.dtype, h0.dtype, np.complex64)
    rdtype = np.finfo(cdtype).dtype
    lam, gamma = diagonal.flat(lam, cdtype, (N,)), diagonal.flat(gamma, rdtype, (N,))
    Bx, h0 = diagonal.flat(Bx, cdtype, (B, T, N)), diagonal.flat(h0, cdtype, (B, N))
    L = diagonal.chunk_length(method, T, chunk_size)
    n = -(-T // L)
    h = np.empty((B, T, N), cdtype)
    with diagonal.threads(B * T * N):
        if n == 1:
            carry = np.ascontiguousarray(h0[:, None])
        else:
            tot = np.empty((B, n, N), cdtype)
            diagonal.lru_forward(lam, gamma, Bx, np.zeros((B, n, N), cdtype), L, True, h, tot)
            carry = diagonal.carries(h0, diagonal.chunk_powers(lam, L, T)[None], tot)
        diagonal.lru_forward(lam, gamma, Bx, carry, L, False, h, carry)
    return h, h[:, -1].copy(), Cache(lam, gamma, Bx, h0, h, method, chunk_size)


def backward(cache: Cache, dh: np.ndarray, dstate: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(gg, dlam, dgamma, dh0)`` from ``dh = ∂L/∂h (B, T, N)`` and ``dstate
    (B, N)`` (complex): ``gg = γ ⊙ g (B, T, N)`` with ``g = ∂L/∂u``,
    ``dlam = Σ_{b,t} g_t conj(h_{t−1}) (N,)``, ``dgamma = Σ_{b,t} Re(g_t
    conj(Bx_t)) (N,)`` and ``dh0 (B, N)``."""
    c = cache
    B, T, N = c.h.shape
    cdtype, rdtype = c.h.dtype, c.gamma.dtype
    dh, dstate = diagonal.flat(dh, cdtype, (B, T, N)), diagonal.flat(dstate, cdtype, (B, N))
    L = diagonal.chunk_length(c.method, T, c.chunk_size)
    n = -(-T // L)
    gg = np.empty((B, T, N), cdtype)
    dlam, dgamma = np.empty((B, n, N), cdtype), np.empty((B, n, N), rdtype)
    tot = np.empty((B, n, N), cdtype)
    with diagonal.threads(B * T * N):
        if n == 1:
            carry = np.ascontiguousarray(dstate[:, None])
        else:
            diagonal.lru_backward(c.lam, c.gamma, c.Bx, c.h, c.h0, dh, np.zeros((B, n, N), cdtype),
                                  L, True, gg, dlam, dgamma, tot)
            carry = diagonal.carries(dstate, diagonal.chunk_powers(np.conj(c.lam), L, T)[None],
                                     tot, reverse=True)
        diagonal.lru_backward(c.lam, c.gamma, c.Bx, c.h, c.h0, dh, carry, L, False, gg, dlam,
                              dgamma, tot)
    return gg, dlam.sum(axis=(0, 1)), dgamma.sum(axis=(0, 1)), np.ascontiguousarray(tot[:, 0])
