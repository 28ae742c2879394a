"""``backend="cupy"`` and ``"cuda-emulated"`` for :mod:`minirec.cells.mingru`'s
gated scan, reached through ``_backend.kernels("mingru", backend)``.

One fused kernel (diagonal.cu, ``Gate::mingru``) per direction and chunk:

    w = σ(s), keep = σ(−s), a = keep (keep − w), h_t = a_t h_{t−1} + w_t h̃_t   forward
    g_t = dy_t + a_{t+1} g_{t+1};  ds, dh̃ from g, h_{t−1} and the gates      backward

The gate logit ``s = x W_z^T + b_z`` and ``h̃`` are GEMMs in the cell. Arguments
arrive validated; CuPy arrays run on the GPU, NumPy arrays on the emulator
(:mod:`minirec.kernels.cuda.diagonal`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from minirec.kernels.cuda import diagonal


class Cache(NamedTuple):
    """What :func:`backward` needs: ``s``, ``h_tilde``, ``h (B, T, H)`` and
    ``h0 (B, H)`` as the kernels took them (C-contiguous, one dtype),
    ``negative_eigenvalues``, ``method``, ``chunk_size``."""

    s: Any
    h_tilde: Any
    h0: Any
    h: Any
    negative_eigenvalues: bool
    method: str
    chunk_size: int | None


def forward(s: Any, h_tilde: Any, h0: Any, *, negative_eigenvalues: bool = False,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str | None = None) -> tuple[Any, Any, Cache]:
    """``h (B, T, H)``, ``h_T (B, H)`` and the :class:`Cache`, from the gate logit
    ``s``, the candidate ``h_tilde`` (each ``(B, T, H)``) and ``h0 (B, H)``.
    ``method``: ``"recurrent"`` or ``"chunked"``. ``backend``: ``"cupy"``,
    ``"cuda-emulated"`` or None (follow the arrays)."""
    (s, _, h_tilde, h0), h, _ = diagonal.gated_forward(
        "mingru", {"s": s, "h_tilde": h_tilde, "h0": h0}, negative_eigenvalues, method,
        chunk_size, backend)
    return h, h[:, -1].copy(), Cache(s, h_tilde, h0, h, negative_eigenvalues, method, chunk_size)


def backward(cache: Cache, dy: Any, dstate: Any, *, backend: str | None = None
             ) -> tuple[Any, Any, Any]:
    """``(ds, dh_tilde, dh0)`` from ``dy (B, T, H)`` and ``dstate (B, H)`` (None: zeros)."""
    c = cache
    ds, _, dh_tilde, dh0 = diagonal.gated_backward(
        "mingru", (c.s, c.s, c.h_tilde, c.h0), c.h, dy, dstate, c.negative_eigenvalues,
        c.method, c.chunk_size, backend)
    return ds, dh_tilde, dh0
