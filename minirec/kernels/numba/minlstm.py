"""``backend="numba"`` for :mod:`minirec.cells.minlstm`'s gated scan, reached
through ``_backend.kernels("minlstm", "numba")``.

The write-gate logit ``s = softplus(−k_f) − softplus(−k_i)`` is formed inside
the scan, then minGRU's recurrence on ``s``; the backward ends in
``dk_f = −ds σ(−k_f)``, ``dk_i = ds σ(−k_i)`` in the same reverse pass
(:func:`minirec.kernels.numba.diagonal.gated_forward`, ``gated_backward``;
methods ``recurrent`` and ``chunked``). Tested against
:func:`minirec.cells.minlstm.forward` / ``backward`` with ``backend="numpy"``.
The logits ``k_f``, ``k_i`` and ``h̃`` are GEMMs in the cell; arguments arrive
validated.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec.kernels.numba import diagonal


class Cache(NamedTuple):
    """What :func:`backward` needs: ``inputs = (k_f, k_i, h_tilde, h0)`` as the
    kernels took them, every state ``h (B, T, H)``, ``aux = (i', f', σ(−k_f),
    σ(−k_i)) (4, B, T, H)``, ``negative_eigenvalues``, ``method``, ``chunk_size``."""

    inputs: tuple
    h: np.ndarray
    aux: np.ndarray
    negative_eigenvalues: bool
    method: str
    chunk_size: int | None


def forward(k_f: np.ndarray, k_i: np.ndarray, h_tilde: np.ndarray, h0: np.ndarray, *,
            negative_eigenvalues: bool = False, method: str = "recurrent",
            chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray, Cache]:
    """``h (B, T, H)``, ``h_T (B, H)`` and the :class:`Cache`, from the gate logits
    ``k_f``, ``k_i``, the candidate ``h_tilde`` (each ``(B, T, H)``) and ``h0 (B, H)``."""
    inputs, h, aux = diagonal.gated_scan_forward("minlstm", k_f, k_i, h_tilde, h0,
                                                 negative_eigenvalues, method, chunk_size)
    return h, h[:, -1].copy(), Cache(inputs, h, aux, negative_eigenvalues, method, chunk_size)


def backward(cache: Cache, dy: np.ndarray, dstate: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(dk_f, dk_i, dh_tilde, dh0)`` from ``dy (B, T, H)`` and ``dstate (B, H)``."""
    c = cache
    return diagonal.gated_scan_backward("minlstm", c.inputs, c.h, c.aux, dy, dstate,
                                        c.negative_eigenvalues, c.method, c.chunk_size)
