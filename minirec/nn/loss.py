"""Losses, each returning ``(loss, dinput)``: the scalar and its gradient.

``softmax_cross_entropy`` — logits ``z (..., C)``, integer targets ``y (...)``,
optional boolean ``mask (...)``; with ``N = Σ mask`` (all positions when no
mask)::

    p      = softmax(z) = exp(z − max z) / Σ_c exp(z_c − max z)
    loss   = −(1/N) Σ_{masked p} log p[y]
    dz     = (p − onehot(y)) ⊙ mask / N

``log p`` is computed as ``z − max z − log Σ exp(z − max z)``, so large logits
do not overflow. A mask with no True entry gives loss 0 and a zero gradient.

``mse`` — ``loss = mean((pred − target)²)``, ``dpred = 2 (pred − target) / n``
with ``n`` the number of elements.
"""

from __future__ import annotations

import numpy as np

from minirec import _validate as V
from minirec.nn.embedding import check_indices


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``z − max z − log Σ exp(z − max z)`` over the last axis."""
    z = logits - logits.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray,
                          mask: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Mean cross-entropy over the unmasked positions, and ∂loss/∂logits.

    Args:
        logits: ``(..., C)`` unnormalised scores, float32 or float64.
        targets: ``(...)`` integers in ``[0, C)``.
        mask: ``(...)`` bool; only True positions count (``None``: all).

    Returns:
        ``(loss, dlogits)``: a Python float and an array shaped like ``logits``.
    """
    V.array("logits", logits, allow_complex=False, min_ndim=1)
    s = V.Shapes()
    lead = tuple(f"N{i}" for i in range(logits.ndim - 1))
    s.check("logits", logits, lead + ("C",))
    check_indices("targets", targets, s["C"])
    s.check("targets", targets, lead)
    if mask is not None:
        if not (hasattr(mask, "dtype") and np.dtype(mask.dtype) == np.bool_):
            raise TypeError(f"mask: expected a bool ndarray, got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        s.check("mask", mask, lead)
    logp = log_softmax(logits)
    picked = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    weight = np.ones(targets.shape, logits.dtype) if mask is None else mask.astype(logits.dtype)
    n = float(weight.sum())
    if n == 0:
        return 0.0, np.zeros_like(logits)
    loss = -float((picked * weight).sum()) / n
    dlogits = np.exp(logp)
    np.put_along_axis(dlogits, targets[..., None],
                      np.take_along_axis(dlogits, targets[..., None], axis=-1) - 1, axis=-1)
    dlogits *= (weight / logits.dtype.type(n))[..., None]
    return loss, dlogits


def mse(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    """``mean((pred − target)²)`` over all elements, and ``2 (pred − target) / n``."""
    V.array("pred", pred, allow_complex=False)
    V.array("target", target, allow_complex=False)
    V.same_shape("target", target, "pred", pred)
    diff = pred - target.astype(pred.dtype, copy=False)
    n = max(diff.size, 1)
    return float(np.sum(diff * diff)) / n, diff * pred.dtype.type(2.0 / n)
