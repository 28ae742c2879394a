"""``backend="numba"`` for :mod:`minirec.cells.mingru`'s gated scan, reached
through ``_backend.kernels("mingru", "numba")``.

    w = σ(s), keep = σ(−s), a = keep (keep − w), h_t = a_t h_{t−1} + w_t h̃_t   forward
    g_t = dy_t + a_{t+1} g_{t+1};  ds, dh̃ from g, h_{t−1} and the gates      backward

in one fused loop per direction (:func:`minirec.kernels.numba.diagonal.gated_forward`,
``gated_backward``; methods ``recurrent`` and ``chunked``). Tested against
:func:`minirec.cells.mingru.gated_scan` / ``gated_scan_backward``. The gate logit
``s = x W_z^T + b_z`` and ``h̃`` are GEMMs in the cell; arguments arrive validated.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec.kernels.numba import diagonal


class Cache(NamedTuple):
    """What :func:`backward` needs: ``inputs = (s, s, h_tilde, h0)`` as the kernels
    took them, every state ``h (B, T, H)``, ``aux = (w, keep) (2, B, T, H)``,
    ``negative_eigenvalues``, ``method``, ``chunk_size``."""

    inputs: tuple
    h: np.ndarray
    aux: np.ndarray
    negative_eigenvalues: bool
    method: str
    chunk_size: int | None


def forward(s: np.ndarray, h_tilde: np.ndarray, h0: np.ndarray, *,
            negative_eigenvalues: bool = False, method: str = "recurrent",
            chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray, Cache]:
    """``h (B, T, H)``, ``h_T (B, H)`` and the :class:`Cache`, from the gate logit
    ``s``, the candidate ``h_tilde`` (each ``(B, T, H)``) and ``h0 (B, H)``."""
    inputs, h, aux = diagonal.gated_scan_forward("mingru", s, s, h_tilde, h0,
                                                 negative_eigenvalues, method, chunk_size)
    return h, h[:, -1].copy(), Cache(inputs, h, aux, negative_eigenvalues, method, chunk_size)


def backward(cache: Cache, dy: np.ndarray, dstate: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ds, dh_tilde, dh0)`` from ``dy (B, T, H)`` and ``dstate (B, H)`` (arrays)."""
    c = cache
    ds, _, dh_tilde, dh0 = diagonal.gated_scan_backward(
        "mingru", c.inputs, c.h, c.aux, dy, dstate, c.negative_eigenvalues, c.method,
        c.chunk_size)
    return ds, dh_tilde, dh0
