"""``backend="cupy"`` and ``"cuda-emulated"`` for :mod:`minirec.cells.lru`'s
recurrence, reached through ``_backend.kernels("lru", backend)``.

One fused kernel (diagonal.cu, ``lru_forward``/``lru_backward``) per direction
and chunk, a thread per state lane ``(i, n)``:

    h_t = λ h_{t−1} + γ Bx_t                                       forward
    g_t = dh_t + conj(λ) g_{t+1};  gg_t = γ g_t,
    dλ += g_t conj(h_{t−1}),  dγ += Re(g_t conj(Bx_t))                backward

The projections ``Bx = x B^T``, ``y = Re(h C^T) + D x``, ``dh = dy conj(C)`` and
the weight gradients are GEMMs in the cell. Arguments arrive validated; CuPy
arrays run on the GPU, NumPy arrays on the emulator
(:mod:`minirec.kernels.cuda.diagonal`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec.kernels.cuda import _launch, diagonal


class Cache(NamedTuple):
    """What :func:`backward` needs: ``lam (N,)``, ``gamma (N,)``, ``Bx``,
    ``h (B, T, N)`` and ``h0 (B, N)`` as the kernels took them (complex but
    ``gamma``), ``method``, ``chunk_size``."""

    lam: Any
    gamma: Any
    Bx: Any
    h0: Any
    h: Any
    method: str
    chunk_size: int | None


def forward(lam: Any, gamma: Any, Bx: Any, h0: Any, *, method: str = "recurrent",
            chunk_size: int | None = None, backend: str | None = None
            ) -> tuple[Any, Any, Cache]:
    """``h (B, T, N)`` complex, ``h_T (B, N)`` and the :class:`Cache`, from
    ``λ (N,)`` complex, ``γ (N,)`` real, ``Bx = x B^T (B, T, N)`` complex and
    ``h0 (B, N)``. ``method``: ``"recurrent"`` or ``"chunked"``."""
    diagonal.check_method(method, "cells.lru")
    backend, xp = _launch.backend_and_xp(backend, lam=lam, gamma=gamma, Bx=Bx, h0=h0)
    B, T, N = Bx.shape
    cdtype = np.result_type(lam.dtype, Bx.dtype, h0.dtype, np.complex64)
    rdtype = np.finfo(cdtype).dtype
    lam, gamma = diagonal.flat(xp, lam, cdtype, (N,)), diagonal.flat(xp, gamma, rdtype, (N,))
    Bx, h0 = diagonal.flat(xp, Bx, cdtype, (B, T, N)), diagonal.flat(xp, h0, cdtype, (B, N))
    h = xp.empty((B, T, N), cdtype)
    if h.size:
        diagonal.run(diagonal.plan_lru_forward(lam, gamma, Bx, h0, h, method, chunk_size, xp),
                     rdtype, backend)
    return h, h[:, -1].copy(), Cache(lam, gamma, Bx, h0, h, method, chunk_size)


def backward(cache: Cache, dh: Any, dstate: Any, *, backend: str | None = None
             ) -> tuple[Any, Any, Any, Any]:
    """``(gg, dlam, dgamma, dh0)`` from ``dh = ∂L/∂h (B, T, N)`` and ``dstate
    (B, N)`` (complex): ``gg = γ ⊙ g (B, T, N)`` with ``g = ∂L/∂u``,
    ``dlam = Σ_{b,t} g_t conj(h_{t−1}) (N,)``, ``dgamma = Σ_{b,t} Re(g_t
    conj(Bx_t)) (N,)`` and ``dh0 (B, N)``."""
    c = cache
    backend, xp = _launch.backend_and_xp(backend, h=c.h, dh=dh, dstate=dstate)
    B, T, N = c.h.shape
    cdtype, rdtype = c.h.dtype, c.gamma.dtype
    dh, dstate = diagonal.flat(xp, dh, cdtype, c.h.shape), diagonal.flat(xp, dstate, cdtype, (B, N))
    n = diagonal.chunks(c.method, T, c.chunk_size)[1]
    gg, dh0 = xp.empty((B, T, N), cdtype), xp.empty((B, N), cdtype)
    dlam, dgamma = xp.empty((B, n, N), cdtype), xp.empty((B, n, N), rdtype)
    if gg.size:
        diagonal.run(diagonal.plan_lru_backward(c.lam, c.gamma, c.Bx, c.h, c.h0, dh, dstate, gg,
                                                dlam, dgamma, dh0, c.method, c.chunk_size, xp),
                     rdtype, backend)
    return gg, dlam.sum(axis=(0, 1)), dgamma.sum(axis=(0, 1)), dh0
