"""``backend="cupy"`` and ``"cuda-emulated"`` for :mod:`minirec.cells.minlstm`'s
gated scan, reached through ``_backend.kernels("minlstm", backend)``.

One fused kernel (diagonal.cu, ``Gate::minlstm``) per direction and chunk: the
write-gate logit ``s = softplus(−k_f) − softplus(−k_i)`` is formed inside the
scan, then minGRU's recurrence on ``s``; the backward ends in
``dk_f = −ds σ(−k_f)``, ``dk_i = ds σ(−k_i)``. The logits ``k_f``, ``k_i`` and
``h̃`` are GEMMs in the cell. Arguments arrive validated; CuPy arrays run on
the GPU, NumPy arrays on the emulator (:mod:`minirec.kernels.cuda.diagonal`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from minirec.kernels.cuda import diagonal


class Cache(NamedTuple):
    """What :func:`backward` needs: ``k_f``, ``k_i``, ``h_tilde``, ``h (B, T, H)``
    and ``h0 (B, H)`` as the kernels took them, ``negative_eigenvalues``,
    ``method``, ``chunk_size``."""

    k_f: Any
    k_i: Any
    h_tilde: Any
    h0: Any
    h: Any
    negative_eigenvalues: bool
    method: str
    chunk_size: int | None


def forward(k_f: Any, k_i: Any, h_tilde: Any, h0: Any, *, negative_eigenvalues: bool = False,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str | None = None) -> tuple[Any, Any, Cache]:
    """``h (B, T, H)``, ``h_T (B, H)`` and the :class:`Cache`, from the gate
    logits ``k_f``, ``k_i``, the candidate ``h_tilde`` (each ``(B, T, H)``) and
    ``h0 (B, H)``. ``method``: ``"recurrent"`` or ``"chunked"``."""
    (k_f, k_i, h_tilde, h0), h, _ = diagonal.gated_forward(
        "minlstm", {"k_f": k_f, "k_i": k_i, "h_tilde": h_tilde, "h0": h0},
        negative_eigenvalues, method, chunk_size, backend)
    return h, h[:, -1].copy(), Cache(k_f, k_i, h_tilde, h0, h, negative_eigenvalues, method,
                                     chunk_size)


def backward(cache: Cache, dy: Any, dstate: Any, *, backend: str | None = None
             ) -> tuple[Any, Any, Any, Any]:
    """``(dk_f, dk_i, dh_tilde, dh0)`` from ``dy (B, T, H)`` and ``dstate (B, H)``."""
    c = cache
    return diagonal.gated_backward("minlstm", (c.k_f, c.k_i, c.h_tilde, c.h0), c.h, dy, dstate,
                                   c.negative_eigenvalues, c.method, c.chunk_size, backend)
