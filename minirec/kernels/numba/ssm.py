"""``backend="numba"`` for :mod:`minirec.cells.ssm`'s scan methods, reached through
``_backend.kernels("ssm", "numba")``.

    h_t = Ā h_{t−1} + B̄ x_t,  y_t = 2 Re(Σ_n C h_t) + D x_t                forward
    g_t = 2 dy_t conj(C) + conj(Ā) g_{t+1},  dx_t = Re(Σ_n g_t conj(B̄)) + D dy_t,
    dĀ += g_t conj(h_{t−1}),  dB̄ += g_t x_t,  dC += 2 dy_t conj(h_t)           backward

one fused loop per direction over every channel's modes, the complex arithmetic
in real and imaginary parts, blocks of ``LANES`` channels per job
(:func:`minirec.kernels.numba.diagonal.ssm_forward`, ``ssm_backward``; methods
``recurrent`` and ``chunked``). Tested against :func:`minirec.cells.ssm.forward`
/ ``backward`` with ``backend="numpy"``. The discretisation (Ā, B̄ from the
parameters, and back) stays in the cell, on ``(D, N)`` arrays; no
``(B, T, D, N)`` array is made: the backward recomputes the states from
checkpoints. Arguments arrive validated; this module pads the channels to a
multiple of ``LANES`` and moves between the definition's layout ``(…, D, N)``
complex and the kernels' ``(…, NB, N, parts, LANES)`` real.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec.kernels.numba import diagonal
from minirec.kernels.numba.diagonal import CHECKPOINT, LANES


class Cache(NamedTuple):
    """What :func:`backward` needs: ``cf (NB, N, 6, LANES)`` the parts of ``Ā, B̄,
    C``; ``D (Dp,)``; ``x (B, T, Dp)`` (``Dp`` = D padded to LANES);
    ``checkpoints (B, blocks, NB, N, 2, LANES)`` the states entering every block of
    ``CHECKPOINT`` steps; ``channels`` D; ``method``, ``chunk_size``."""

    cf: np.ndarray
    D: np.ndarray
    x: np.ndarray
    checkpoints: np.ndarray
    channels: int
    method: str
    chunk_size: int | None


def _pad(u, axis, Dp):
    """``u`` with zeros appended along ``axis`` up to ``Dp`` entries."""
    extra = Dp - u.shape[axis]
    if not extra:
        return u
    width = [(0, 0)] * u.ndim
    width[axis] = (0, extra)
    return np.pad(u, width)


def _blocked(parts, rdtype):
    """``(..., P, D, N)`` real → ``(..., NB, N, P, LANES)``, channels padded."""
    *lead, P, Dn, N = parts.shape
    Dp = -(-Dn // LANES) * LANES
    u = _pad(parts, -2, Dp).reshape(*lead, P, Dp // LANES, LANES, N)
    return diagonal.flat(np.moveaxis(u, (-4, -3, -2, -1), (-2, -4, -1, -3)), rdtype,
                         (*lead, Dp // LANES, N, P, LANES))


def _complex_blocked(z, rdtype):
    """``z (..., D, N)`` complex → ``(..., NB, N, 2, LANES)`` real and imaginary parts."""
    z = np.asarray(z)
    return _blocked(np.stack([z.real, z.imag], axis=-3), rdtype)


def _unblocked(u, Dn, cdtype):
    """``(..., NB, N, 2, LANES)`` → ``(..., D, N)`` complex (inverse of
    :func:`_complex_blocked`)."""
    *lead, NB, N, _, _ = u.shape
    z = u[..., 0, :] + 1j * u[..., 1, :]                        # (..., NB, N, LANES)
    z = np.moveaxis(z, -1, -2).reshape(*lead, NB * LANES, N)[..., :Dn, :]
    return np.ascontiguousarray(z, dtype=cdtype)


def _carries(first, A, tot, rdtype, reverse=False):
    """:func:`diagonal.carries` on the complex values of ``(B, [n,] NB, N, 2, LANES)``
    parts; ``A (1, n, NB, N, LANES)`` complex."""
    cplx = lambda p: p[..., 0, :] + 1j * p[..., 1, :]  # noqa: E731
    carry = diagonal.carries(cplx(first), A, cplx(tot), reverse=reverse)
    return diagonal.flat(np.stack([carry.real, carry.imag], axis=-2), rdtype,
                         carry.shape[:-1] + (2, LANES))


def _chunk_powers(cf, conj, L, T):
    """``Ā^{len}`` (``conj(Ā)^{len}``) of every chunk, ``(1, n, NB, N, LANES)``."""
    a = cf[:, :, 0] - 1j * cf[:, :, 1] if conj else cf[:, :, 0] + 1j * cf[:, :, 1]
    return diagonal.chunk_powers(a, L, T)[None]


def forward(Abar: np.ndarray, Bbar: np.ndarray, C: np.ndarray, D: np.ndarray, x: np.ndarray,
            h0: np.ndarray, *, method: str = "recurrent", chunk_size: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, Cache]:
    """``y (B, T, D)`` real, ``h_T (B, D, N)`` complex and the :class:`Cache`,
    from the discretised ``Ā``, ``B̄`` and ``C`` ``(D, N)``, the skip ``D (D,)``,
    ``x (B, T, D)`` and ``h0 (B, D, N)``."""
    diagonal.check_method(method, "cells.ssm")
    (B, T, Dn), N = x.shape, Abar.shape[-1]
    rdtype = np.result_type(x.dtype, D.dtype)
    cdtype = np.result_type(rdtype, np.complex64)
    Dp = -(-Dn // LANES) * LANES
    NB = Dp // LANES
    coef = np.stack([f(z) for z in (Abar, Bbar, C) for f in (np.real, np.imag)])  # (6, D, N)
    cf = _blocked(coef, rdtype)                                    # (NB, N, 6, LANES)
    Dk = diagonal.flat(_pad(np.asarray(D), 0, Dp), rdtype, (Dp,))
    x = diagonal.flat(_pad(x, 2, Dp), rdtype, (B, T, Dp))
    h0 = _complex_blocked(h0, rdtype)                              # (B, NB, N, 2, LANES)
    two = rdtype.type(2)
    L = diagonal.chunk_length(method, T, chunk_size)
    n = -(-T // L)
    nb = -(-L // CHECKPOINT)
    y = np.empty((B, T, Dp), rdtype)
    ck = np.empty((B, n * nb, NB, N, 2, LANES), rdtype)
    tot = np.empty((B, n, NB, N, 2, LANES), rdtype)
    with diagonal.threads(B * T * Dp * N):
        if n == 1:
            carry = np.ascontiguousarray(h0[:, None])
        else:
            diagonal.ssm_forward(cf, Dk, x, np.zeros(tot.shape, rdtype), L, True, ck, y, tot,
                                 two)
            carry = _carries(h0, _chunk_powers(cf, False, L, T), tot, rdtype)
        diagonal.ssm_forward(cf, Dk, x, carry, L, False, ck, y, tot, two)
    y = y if Dp == Dn else np.ascontiguousarray(y[..., :Dn])
    return y, _unblocked(tot[:, -1], Dn, cdtype), Cache(cf, Dk, x, ck, Dn, method, chunk_size)


def backward(cache: Cache, dy: np.ndarray, dstate: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(dx, dh0, dAbar, dBbar, dC)`` from ``dy (B, T, D)`` real and ``dstate
    (B, D, N)`` complex: ``dx (B, T, D)``, ``dh0 (B, D, N)``, and the sums over
    batch and time ``dAbar``, ``dBbar``, ``dC`` ``(D, N)``."""
    c = cache
    B, T, Dp = c.x.shape
    NB, N = c.cf.shape[:2]
    Dn = c.channels
    rdtype = c.x.dtype
    cdtype = np.result_type(rdtype, np.complex64)
    dy = diagonal.flat(_pad(dy, 2, Dp), rdtype, (B, T, Dp))
    dstate = _complex_blocked(dstate, rdtype)
    two = rdtype.type(2)
    L = diagonal.chunk_length(c.method, T, c.chunk_size)
    n = -(-T // L)
    dx = np.empty((B, T, Dp), rdtype)
    sums = np.empty((B, n, NB, N, 6, LANES), rdtype)
    tot = np.empty((B, n, NB, N, 2, LANES), rdtype)
    with diagonal.threads(B * T * Dp * N):
        if n == 1:
            carry = np.ascontiguousarray(dstate[:, None])
        else:
            diagonal.ssm_backward(c.cf, c.D, c.x, c.checkpoints, dy, np.zeros(tot.shape, rdtype),
                                  L, True, dx, sums, tot, two)
            carry = _carries(dstate, _chunk_powers(c.cf, True, L, T), tot, rdtype, reverse=True)
        diagonal.ssm_backward(c.cf, c.D, c.x, c.checkpoints, dy, carry, L, False, dx, sums, tot,
                              two)
    S = sums.sum(axis=(0, 1))                                      # (NB, N, 6, LANES)
    dA, dB, dC = (_unblocked(S[..., k:k + 2, :], Dn, cdtype) for k in (0, 2, 4))
    dx = dx if Dp == Dn else np.ascontiguousarray(dx[..., :Dn])
    return dx, _unblocked(tot[:, 0], Dn, cdtype), dA, dB, 2 * dC
