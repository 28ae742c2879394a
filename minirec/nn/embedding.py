"""Embedding lookup ``y = W[idx]`` (PyTorch's ``nn.Embedding`` convention).

Dimension key: ``...`` any index shape, V vocabulary size, E embedding size.
``W (V, E)``, ``idx`` integers in ``[0, V)`` of shape ``(...)`` →
``y (..., E)``.

Backward (``dy = ∂L/∂y``): each row of ``W`` gets the sum of the gradients of
the positions that looked it up (a scatter-add)::

    dW[v] = Σ_{p : idx[p] = v} dy[p]           (V, E)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec import _validate as V

PARAM_SHAPES = {"W": ("V", "E")}


class EmbeddingCache(NamedTuple):
    """``idx`` the looked-up indices; ``num_embeddings`` V."""

    idx: np.ndarray
    num_embeddings: int


def init(rng: np.random.Generator | int | None, num_embeddings: int, dim: int,
         dtype=np.float64) -> dict[str, np.ndarray]:
    """PyTorch's initialisation: ``W (V, E)`` ~ N(0, 1). ``rng``: Generator or int seed."""
    rng = np.random.default_rng(rng)
    Vn = V.positive_int("num_embeddings", num_embeddings)
    E = V.positive_int("dim", dim)
    return {"W": rng.standard_normal((Vn, E)).astype(dtype)}


def check_indices(name: str, idx, num_classes: int) -> np.ndarray:
    """Check an integer index array with values in ``[0, num_classes)``; return it.

    Shared by :func:`forward` and :func:`minirec.nn.loss.softmax_cross_entropy`.
    """
    if not (hasattr(idx, "dtype") and hasattr(idx, "shape")):
        raise TypeError(f"{name}: expected an integer ndarray, got {type(idx).__name__}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{name}: expected an integer dtype, got {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(
            f"{name}: expected values in [0, {num_classes}), got min {int(idx.min())}, "
            f"max {int(idx.max())}"
        )
    return idx


def forward(params: dict, idx: np.ndarray) -> tuple[np.ndarray, EmbeddingCache]:
    """``y = W[idx]``: ``idx (...)`` integers → ``y (..., E)`` and the cache."""
    V.params("embedding", params, PARAM_SHAPES, V.Shapes())
    W = params["W"]
    V.array("embedding: W", W, allow_complex=False)
    check_indices("idx", idx, W.shape[0])
    return W[idx], EmbeddingCache(idx, W.shape[0])


def backward(params: dict, cache: EmbeddingCache, dy: np.ndarray) -> dict[str, np.ndarray]:
    """``dy (..., E)`` → ``{"W": dW (V, E)}`` (indices have no gradient)."""
    W = params["W"]
    idx = cache.idx
    V.grad_like("dy", dy, np.empty(idx.shape + W.shape[1:], dtype=W.dtype), "y")
    dW = np.zeros(W.shape, np.result_type(W, dy))
    np.add.at(dW, idx.reshape(-1), dy.reshape(-1, W.shape[1]))
    return {"W": dW}
