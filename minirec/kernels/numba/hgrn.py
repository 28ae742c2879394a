"""``backend="numba"`` for :mod:`minirec.ops.hgrn`, reached through
``_backend.kernels("hgrn", "numba")``.

    a_t = e^{g_t} (2e^{g_t} − 1), h_t = a_t h_{t−1} + x_t                forward
    g'_t = dh_t + a_{t+1} g'_{t+1};  dx = g',  dg = g' h_{t−1} e^g (·2)    backward

in one fused loop per direction (:func:`minirec.kernels.numba.diagonal.gated_forward`,
``gated_backward``; methods ``recurrent`` and ``chunked``). Tested against
:func:`minirec.ops.hgrn.forward` / ``backward`` with ``backend="numpy"``.
Arguments arrive validated.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec.kernels.numba import diagonal


class Cache(NamedTuple):
    """What :func:`backward` needs: ``inputs = (g, g, x, h0)`` as the kernels took
    them, every state ``h (B, T, D)``, ``aux = e^g (1, B, T, D)``,
    ``negative_eigenvalues``, ``method``, ``chunk_size``."""

    inputs: tuple
    h: np.ndarray
    aux: np.ndarray
    negative_eigenvalues: bool
    method: str
    chunk_size: int | None


def forward(x: np.ndarray, g: np.ndarray, initial_state: np.ndarray, *,
            negative_eigenvalues: bool = False, method: str = "recurrent",
            chunk_size: int | None = None) -> tuple[np.ndarray, np.ndarray, Cache]:
    """``h (B, T, D)``, the final state ``(B, D)`` and the :class:`Cache`, from
    ``x``, ``g`` (each ``(B, T, D)``) and ``initial_state (B, D)`` (an array)."""
    inputs, h, aux = diagonal.gated_scan_forward("hgrn", g, g, x, initial_state,
                                                 negative_eigenvalues, method, chunk_size)
    return h, h[:, -1].copy(), Cache(inputs, h, aux, negative_eigenvalues, method, chunk_size)


def backward(cache: Cache, dh: np.ndarray, dstate: np.ndarray) -> dict[str, np.ndarray]:
    """``{"x", "g", "initial_state"}`` from ``dh (B, T, D)`` and ``dstate (B, D)``."""
    c = cache
    dg, _, dx, dh0 = diagonal.gated_scan_backward("hgrn", c.inputs, c.h, c.aux, dh, dstate,
                                                  c.negative_eigenvalues, c.method,
                                                  c.chunk_size)
    return {"x": dx, "g": dg, "initial_state": dh0}
