"""Affine layer ``y = x W^T + b`` (PyTorch's ``nn.Linear`` convention).

Dimension key: ``...`` any leading shape (batch, time), I in features, O out
features. ``W (O, I)``, ``b (O,)``, ``x (..., I)`` → ``y (..., O)``.

Backward (``dy = ∂L/∂y``, leading axes flattened to N rows)::

    dx = dy W                     (..., I)
    dW = Σ_N dy^T x               (O, I)
    db = Σ_N dy                   (O,)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec import _validate as V

PARAM_SHAPES = {"W": ("O", "I"), "b": ("O",)}


class LinearCache(NamedTuple):
    """``x (..., I)`` the layer's input, kept for ``dW``."""

    x: np.ndarray


def init(rng: np.random.Generator | int | None, in_features: int, out_features: int,
         dtype=np.float64) -> dict[str, np.ndarray]:
    """PyTorch's initialisation: every entry of ``W (O, I)`` and ``b (O,)`` ~ U(−1/√I, 1/√I).

    ``rng`` is a ``np.random.Generator`` or an int seed.
    """
    rng = np.random.default_rng(rng)
    I = V.positive_int("in_features", in_features)
    O = V.positive_int("out_features", out_features)
    k = 1.0 / np.sqrt(I)
    return {"W": rng.uniform(-k, k, (O, I)).astype(dtype),
            "b": rng.uniform(-k, k, (O,)).astype(dtype)}


def _check(params, x):
    s = V.Shapes()
    V.params("linear", params, PARAM_SHAPES, s)
    V.array("x", x, allow_complex=False, min_ndim=1)
    s.check("x", x, tuple(f"N{i}" for i in range(x.ndim - 1)) + ("I",))
    return V.common_dtype(x=x, **params)


def forward(params: dict, x: np.ndarray) -> tuple[np.ndarray, LinearCache]:
    """``y = x W^T + b``: ``x (..., I)`` → ``y (..., O)`` and the cache."""
    _check(params, x)
    y = x @ params["W"].T + params["b"]
    return y, LinearCache(x)


def backward(params: dict, cache: LinearCache,
             dy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``dy (..., O)`` → ``(dx (..., I), {"W": dW (O, I), "b": db (O,)})``."""
    x = cache.x
    W = params["W"]
    V.grad_like("dy", dy, np.empty(x.shape[:-1] + W.shape[:1], dtype=x.dtype), "y")
    dy2 = dy.reshape(-1, W.shape[0])
    x2 = x.reshape(-1, W.shape[1])
    dx = dy @ W
    grads = {"W": dy2.T @ x2, "b": dy2.sum(axis=0)}
    return dx, grads
