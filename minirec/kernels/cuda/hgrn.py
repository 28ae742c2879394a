"""``backend="cupy"`` and ``"cuda-emulated"`` for :mod:`minirec.ops.hgrn`,
reached through ``_backend.kernels("hgrn", backend)``.

One fused kernel (diagonal.cu, ``Gate::hgrn``) per direction and chunk:

    a_t = e^{g_t} (2e^{g_t} − 1), h_t = a_t h_{t−1} + x_t              forward
    g'_t = dh_t + a_{t+1} g'_{t+1};  dx = g',  dg = g' h_{t−1} e^g (·2)   backward

Arguments arrive validated; CuPy arrays run on the GPU, NumPy arrays on the
emulator (:mod:`minirec.kernels.cuda.diagonal`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from minirec.kernels.cuda import diagonal


class Cache(NamedTuple):
    """What :func:`backward` needs: ``g``, ``x``, ``h (B, T, D)`` and ``h0 (B, D)``
    as the kernels took them, ``negative_eigenvalues``, ``method``, ``chunk_size``."""

    g: Any
    x: Any
    h0: Any
    h: Any
    negative_eigenvalues: bool
    method: str
    chunk_size: int | None


def forward(x: Any, g: Any, initial_state: Any, *, negative_eigenvalues: bool = False,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str | None = None) -> tuple[Any, Any, Cache]:
    """``h (B, T, D)``, the final state ``(B, D)`` and the :class:`Cache`, from
    ``x``, ``g`` (each ``(B, T, D)``) and ``initial_state (B, D)`` (an array).
    ``method``: ``"recurrent"`` or ``"chunked"``."""
    (g, _, x, h0), h, _ = diagonal.gated_forward(
        "hgrn", {"g": g, "x": x, "initial_state": initial_state}, negative_eigenvalues, method,
        chunk_size, backend)
    return h, h[:, -1].copy(), Cache(g, x, h0, h, negative_eigenvalues, method, chunk_size)


def backward(cache: Cache, dh: Any, dstate: Any, *, backend: str | None = None
             ) -> dict[str, Any]:
    """``{"x", "g", "initial_state"}`` from ``dh (B, T, D)`` and ``dstate (B, D)``."""
    c = cache
    dg, _, dx, dh0 = diagonal.gated_backward("hgrn", (c.g, c.g, c.x, c.h0), c.h, dh, dstate,
                                             c.negative_eigenvalues, c.method, c.chunk_size,
                                             backend)
    return {"x": dx, "g": dg, "initial_state": dh0}
