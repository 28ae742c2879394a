"""Layer normalisation over the last axis (PyTorch's ``nn.LayerNorm(dim)``).

Dimension key: ``...`` any leading shape, D the normalised size.
``weight (D,)``, ``bias (D,)``, ``x (..., D)`` → ``y (..., D)``::

    μ    = mean_D x                    σ² = mean_D (x − μ)²   (biased, as PyTorch)
    r    = 1 / √(σ² + eps)
    x̂    = (x − μ) r
    y    = x̂ ⊙ weight + bias

Backward (``dy = ∂L/∂y``; means over the last axis)::

    dx̂      = dy ⊙ weight
    dx      = r ⊙ (dx̂ − mean_D dx̂ − x̂ ⊙ mean_D(dx̂ ⊙ x̂))
    dweight = Σ_... dy ⊙ x̂
    dbias   = Σ_... dy
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec import _validate as V

PARAM_SHAPES = {"weight": ("D",), "bias": ("D",)}


class LayerNormCache(NamedTuple):
    """``x_hat (..., D)`` the normalised input; ``r (..., 1)`` the inverse std."""

    x_hat: np.ndarray
    r: np.ndarray


def init(dim: int, dtype=np.float64) -> dict[str, np.ndarray]:
    """``weight = 1``, ``bias = 0`` of shape ``(D,)``: the identity after normalising."""
    D = V.positive_int("dim", dim)
    return {"weight": np.ones(D, dtype), "bias": np.zeros(D, dtype)}


def forward(params: dict, x: np.ndarray, *, eps: float = 1e-5) -> tuple[np.ndarray,
                                                                         LayerNormCache]:
    """``y = (x − μ)/√(σ² + eps) ⊙ weight + bias`` over the last axis of ``x (..., D)``."""
    s = V.Shapes()
    V.params("layer_norm", params, PARAM_SHAPES, s)
    V.array("x", x, allow_complex=False, min_ndim=1)
    s.check("x", x, tuple(f"N{i}" for i in range(x.ndim - 1)) + ("D",))
    dtype = V.common_dtype(x=x, **params)
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    r = 1.0 / np.sqrt(var + dtype.type(eps))
    x_hat = xc * r
    y = x_hat * params["weight"] + params["bias"]
    return y, LayerNormCache(x_hat, r)


def backward(params: dict, cache: LayerNormCache,
             dy: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``dy (..., D)`` → ``(dx (..., D), {"weight": (D,), "bias": (D,)})``."""
    x_hat, r = cache
    V.grad_like("dy", dy, x_hat, "y")
    D = x_hat.shape[-1]
    dx_hat = dy * params["weight"]
    dx = r * (dx_hat - dx_hat.mean(axis=-1, keepdims=True)
              - x_hat * (dx_hat * x_hat).mean(axis=-1, keepdims=True))
    grads = {"weight": (dy * x_hat).reshape(-1, D).sum(axis=0),
             "bias": dy.reshape(-1, D).sum(axis=0)}
    return dx, grads
