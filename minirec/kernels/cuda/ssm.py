"""``backend="cupy"`` and ``"cuda-emulated"`` for :mod:`minirec.cells.ssm`'s
scan methods, reached through ``_backend.kernels("ssm", backend)``.

One fused kernel (diagonal.cu, ``ssm_forward``/``ssm_backward``) per direction
and chunk, a thread per mode ``(i, d, n)``, the threads of a channel ``(i, d)``
side by side (in one warp when N ≤ 32, else one block) so that the sums over
n are shuffles:

    h_t = Ā h_{t−1} + B̄ x_t,  y_t = 2 Re(Σ_n C h_t) + D x_t                forward
    g_t = 2 dy_t conj(C) + conj(Ā) g_{t+1},  dx_t = Re(Σ_n g_t conj(B̄)) + D dy_t,
    dĀ += g_t conj(h_{t−1}),  dB̄ += g_t x_t,  dC += 2 dy_t conj(h_t)           backward

The discretisation (Ā, B̄ from the parameters, and back) stays in the cell, on
``(D, N)`` arrays. The states ``h (B, T, D, N)`` are kept for the backward.
Arguments arrive validated; CuPy arrays run on the GPU, NumPy arrays on the
emulator (:mod:`minirec.kernels.cuda.diagonal`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec.kernels.cuda import _launch, diagonal


class Cache(NamedTuple):
    """What :func:`backward` needs: ``Abar``, ``Bbar``, ``C`` ``(D, N)`` complex,
    ``D (D,)``, ``x (B, T, D)``, ``h0 (B, D, N)`` and ``h (B, T, D, N)`` as the
    kernels took them, ``method``, ``chunk_size``."""

    Abar: Any
    Bbar: Any
    C: Any
    D: Any
    x: Any
    h0: Any
    h: Any
    method: str
    chunk_size: int | None


def forward(Abar: Any, Bbar: Any, C: Any, D: Any, x: Any, h0: Any, *, method: str = "recurrent",
            chunk_size: int | None = None, backend: str | None = None
            ) -> tuple[Any, Any, Cache]:
    """``y (B, T, D)`` real, ``h_T (B, D, N)`` complex and the :class:`Cache`,
    from the discretised ``Ā``, ``B̄`` and ``C`` ``(D, N)``, the skip ``D (D,)``,
    ``x (B, T, D)`` and ``h0 (B, D, N)``. ``method``: ``"recurrent"`` or
    ``"chunked"``. Raises ``ValueError`` for ``N > 1024``."""
    diagonal.check_method(method, "cells.ssm")
    backend, xp = _launch.backend_and_xp(backend, Abar=Abar, Bbar=Bbar, C=C, D=D, x=x, h0=h0)
    (B, T, Dn), N = x.shape, Abar.shape[-1]
    diagonal.group_width(N)  # N ≤ 1024, before any copy
    rdtype = np.result_type(x.dtype, D.dtype)
    cdtype = np.result_type(rdtype, np.complex64)
    Abar, Bbar, C = (diagonal.flat(xp, a, cdtype, (Dn, N)) for a in (Abar, Bbar, C))
    D, x = diagonal.flat(xp, D, rdtype, (Dn,)), diagonal.flat(xp, x, rdtype, (B, T, Dn))
    h0 = diagonal.flat(xp, h0, cdtype, (B, Dn, N))
    h, y = xp.empty((B, T, Dn, N), cdtype), xp.empty((B, T, Dn), rdtype)
    if h.size:
        diagonal.run(diagonal.plan_ssm_forward(Abar, Bbar, C, D, x, h0, h, y, method, chunk_size,
                                               xp), rdtype, backend)
    return y, h[:, -1].copy(), Cache(Abar, Bbar, C, D, x, h0, h, method, chunk_size)


def backward(cache: Cache, dy: Any, dstate: Any, *, backend: str | None = None
             ) -> tuple[Any, Any, Any, Any, Any]:
    """``(dx, dh0, dAbar, dBbar, dC)`` from ``dy (B, T, D)`` real and ``dstate
    (B, D, N)`` complex: ``dx (B, T, D)``, ``dh0 (B, D, N)``, and the sums over
    batch and time ``dAbar``, ``dBbar``, ``dC`` ``(D, N)`` (the conv method's
    return structure in :mod:`minirec.cells.ssm`)."""
    c = cache
    backend, xp = _launch.backend_and_xp(backend, h=c.h, dy=dy, dstate=dstate)
    B, T, Dn, N = c.h.shape
    cdtype, rdtype = c.h.dtype, c.x.dtype
    dy = diagonal.flat(xp, dy, rdtype, (B, T, Dn))
    dstate = diagonal.flat(xp, dstate, cdtype, (B, Dn, N))
    n = diagonal.chunks(c.method, T, c.chunk_size)[1]
    dx, dh0 = xp.empty((B, T, Dn), rdtype), xp.empty((B, Dn, N), cdtype)
    dAbar, dBbar, dC = (xp.empty((B, n, Dn, N), cdtype) for _ in range(3))
    if dh0.size:
        diagonal.run(diagonal.plan_ssm_backward(c.Abar, c.Bbar, c.C, c.D, c.x, c.h, c.h0, dy,
                                                dstate, dx, dAbar, dBbar, dC, dh0, c.method,
                                                c.chunk_size, xp), rdtype, backend)
    return (dx, dh0, dAbar.sum(axis=(0, 1)), dBbar.sum(axis=(0, 1)), dC.sum(axis=(0, 1)))
