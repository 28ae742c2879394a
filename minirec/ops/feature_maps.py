"""Feature maps φ for linear attention, each with its backward.

Linear attention replaces softmax attention's ``exp(q·k)`` by a kernel
``φ(q)·φ(k)``, so that ``Σ_j φ(q_i)·φ(k_j) v_j = φ(q_i)^T S_i`` with the
matrix state ``S_i = Σ_{j≤i} φ(k_j) v_j^T`` (:mod:`minirec.ops.linear_attention`,
which takes the mapped ``φ(q), φ(k)`` as its ``q, k``). The map is applied to
the last axis; ``x (..., K)``, e.g. ``q (B, T, H, K)``, gives ``φ(x) (..., F')``.

Each map is a pair ``name(x) -> y`` and ``name_backward(x, dy) -> dx``
(Hedgehog, which has a learnable matrix, ``hedgehog(x, W) -> y`` and
``hedgehog_backward(x, W, dy) -> (dx, dW)``), listed in :data:`FEATURE_MAPS`.

==================  ==================================  ==========  ====================
name                φ(x)                                size F'     backward dx
==================  ==================================  ==========  ====================
``identity``        x                                   K           dy
``elu_plus_one``    1 + elu(x): x + 1 (x > 0), e^x      K           dy (x > 0), dy e^x
                    (Katharopoulos et al. 2020)
``relu``            max(x, 0)                           K           dy (x > 0), else 0
``taylor2``         [1, x / d^{1/4}, (x ⊗ x) / √(2d)]   1 + K + K²  see below
                    (Based, Arora et al. 2024), d = K
``hedgehog``        [softmax(x W), softmax(−x W)]       2F          see below
                    (Zhang et al. 2024), W (K, F)
==================  ==================================  ==========  ====================

(The derivative of ``relu`` at 0 is taken as 0, and ``elu_plus_one``'s at 0 as
``e^0 = 1`` from the left, which equals the right derivative 1.)

``taylor2``: the second-order Taylor map of Based ("Simple linear attention
language models balance the recall-throughput tradeoff", Arora et al. 2024;
the ``TaylorExp`` feature map of its code), with the scaling chosen exactly as
there: for ``d = K``

    φ(x) = [1,  x / d^{1/4},  vec(x ⊗ x) / (√2 √d)]       (all K² products, x_i x_j
                                                           and x_j x_i both kept)
    φ(q)·φ(k) = 1 + q·k/√d + (q·k)² / (2d),

the Taylor expansion of ``exp(q·k/√d)`` to second order, so the kernel
approximates softmax attention's ``exp`` with its usual ``1/√d`` temperature
(use ``linear_attention`` with ``scale=1``: the ``1/√d`` is inside φ).
Backward, with ``dy = [d0, d1, vec(dM)]`` (``dM (..., K, K)``):

    dx = d1 / d^{1/4} + (dM + dM^T) x / (√2 √d)

``hedgehog``: Hedgehog's learnable map ("The Hedgehog & the Porcupine:
Expressive Linear Attentions with Softmax Mimicry", Zhang et al., ICLR 2024):
``z = x W`` with ``W (K, F)`` (no bias), and softmax over the F features of
``z`` and of ``−z``, concatenated:

    s⁺ = softmax(z),  s⁻ = softmax(−z),  φ(x) = [s⁺, s⁻]       (..., 2F)

(the paper's ``[exp(W^T x), exp(−W^T x)]`` normalised over the features, as
its implementation does, so nothing overflows). Backward, ``dy = [d⁺, d⁻]``,
through each softmax ``dz = s ⊙ (d − Σ_f d ⊙ s)``:

    dz = s⁺ ⊙ (d⁺ − ⟨d⁺, s⁺⟩) − s⁻ ⊙ (d⁻ − ⟨d⁻, s⁻⟩)
    dx = dz W^T,      dW = Σ_{leading axes} x^T dz                (K, F)

All maps work in the input's dtype and never write to their arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V

_SQRT2 = float(np.sqrt(2.0))


def _input(x: Any) -> Any:
    V.array("x", x, allow_complex=False, min_ndim=1)
    return x


def _grad(dy: Any, shape: tuple, dtype: Any, like: Any) -> Any:
    """``dy`` checked against the map's output shape (cast to its dtype)."""
    return V.grad_like("dy", dy, V.zeros_view(like, shape, dtype), "φ(x)", fill=True)


# ---------------------------------------------------------------------------
# parameter-free maps
# ---------------------------------------------------------------------------

def identity(x: np.ndarray) -> np.ndarray:
    """``φ(x) = x`` (a copy), ``(..., K) → (..., K)``."""
    return _input(x).copy()


def identity_backward(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``dx = dy`` (a copy)."""
    _input(x)
    return _grad(dy, x.shape, x.dtype, x).copy()


def elu_plus_one(x: np.ndarray) -> np.ndarray:
    """``φ(x) = 1 + elu(x)``: ``x + 1`` for ``x > 0``, ``e^x`` otherwise
    (Katharopoulos et al. 2020, "Transformers are RNNs"); positive everywhere."""
    xp = _backend.xp_of(_input(x))
    return xp.where(x > 0, x + 1, xp.exp(xp.minimum(x, 0)))  # exp only of x ≤ 0


def elu_plus_one_backward(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``dx = dy`` for ``x > 0``, ``dy e^x`` otherwise."""
    xp = _backend.xp_of(_input(x))
    dy = _grad(dy, x.shape, x.dtype, x)
    return dy * xp.where(x > 0, 1, xp.exp(xp.minimum(x, 0))).astype(x.dtype, copy=False)


def relu(x: np.ndarray) -> np.ndarray:
    """``φ(x) = max(x, 0)``."""
    xp = _backend.xp_of(_input(x))
    return xp.maximum(x, 0).astype(x.dtype, copy=False)


def relu_backward(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``dx = dy`` where ``x > 0``, else 0 (the subgradient 0 at ``x = 0``)."""
    xp = _backend.xp_of(_input(x))
    dy = _grad(dy, x.shape, x.dtype, x)
    return xp.where(x > 0, dy, 0).astype(x.dtype, copy=False)


def taylor2(x: np.ndarray) -> np.ndarray:
    """Based's second-order Taylor map, ``(..., K) → (..., 1 + K + K²)``:
    ``[1, x / K^{1/4}, vec(x ⊗ x) / √(2K)]``, so that
    ``φ(q)·φ(k) = 1 + q·k/√K + (q·k)²/(2K)`` (module docstring)."""
    xp = _backend.xp_of(_input(x))
    K = x.shape[-1]
    outer = (x[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (K * K,))
    one = xp.ones(x.shape[:-1] + (1,), x.dtype)
    return xp.concatenate([one, x / K ** 0.25, outer / (_SQRT2 * K ** 0.5)], axis=-1)


def taylor2_backward(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``dx = d1 / K^{1/4} + (dM + dM^T) x / √(2K)`` with ``dy = [d0, d1, vec(dM)]``."""
    _input(x)
    K = x.shape[-1]
    dy = _grad(dy, x.shape[:-1] + (1 + K + K * K,), x.dtype, x)
    d1 = dy[..., 1:1 + K]
    dM = dy[..., 1 + K:].reshape(x.shape[:-1] + (K, K))
    dMx = (dM * x[..., None, :]).sum(-1) + (dM * x[..., :, None]).sum(-2)   # (dM + dM^T) x
    return d1 / K ** 0.25 + dMx / (_SQRT2 * K ** 0.5)


# ---------------------------------------------------------------------------
# Hedgehog: a learnable map
# ---------------------------------------------------------------------------

def _hedgehog_check(x, W):
    _input(x)
    V.array("W", W, ndim=2, allow_complex=False)
    if W.shape[0] != x.shape[-1]:
        raise ValueError(f"W: expected shape (K={x.shape[-1]}, F) (K the last axis of x "
                         f"{tuple(x.shape)}), got {tuple(W.shape)}")
    V.common_dtype(x=x, W=W)


def _softmax(z, xp):
    e = xp.exp(z - z.max(axis=-1, keepdims=True))  # exponents ≤ 0
    return e / e.sum(axis=-1, keepdims=True)


def hedgehog(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Hedgehog's map ``[softmax(x W), softmax(−x W)]``, ``(..., K) → (..., 2F)``.

    Args:
        x: ``(..., K)``.
        W: ``(K, F)`` the learnable projection.
    """
    _hedgehog_check(x, W)
    xp = _backend.xp_of(x)
    z = x @ W
    return xp.concatenate([_softmax(z, xp), _softmax(-z, xp)], axis=-1)


def hedgehog_backward(x: np.ndarray, W: np.ndarray,
                      dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Back through :func:`hedgehog`: ``dz = s⁺ ⊙ (d⁺ − ⟨d⁺, s⁺⟩) − s⁻ ⊙ (d⁻ − ⟨d⁻, s⁻⟩)``,
    ``dx = dz W^T``, ``dW = Σ x^T dz``.

    Returns:
        ``(dx (..., K), dW (K, F))``.
    """
    _hedgehog_check(x, W)
    xp = _backend.xp_of(x)
    F = W.shape[1]
    dy = _grad(dy, x.shape[:-1] + (2 * F,), x.dtype, x)
    z = x @ W
    s_pos, s_neg = _softmax(z, xp), _softmax(-z, xp)
    d_pos, d_neg = dy[..., :F], dy[..., F:]
    dz = (s_pos * (d_pos - (d_pos * s_pos).sum(-1, keepdims=True))
          - s_neg * (d_neg - (d_neg * s_neg).sum(-1, keepdims=True)))
    dx = dz @ W.T
    dW = x.reshape(-1, x.shape[-1]).T @ dz.reshape(-1, F)
    return dx, dW


class FeatureMap(NamedTuple):
    """One entry of :data:`FEATURE_MAPS`: the map, its backward, and the names of
    its learnable parameters (``()``, or ``("W",)`` for Hedgehog, whose map and
    backward take ``W`` after ``x``)."""

    forward: Callable[..., Any]
    backward: Callable[..., Any]
    params: tuple[str, ...] = ()


FEATURE_MAPS: dict[str, FeatureMap] = {
    "identity": FeatureMap(identity, identity_backward),
    "elu_plus_one": FeatureMap(elu_plus_one, elu_plus_one_backward),
    "relu": FeatureMap(relu, relu_backward),
    "taylor2": FeatureMap(taylor2, taylor2_backward),
    "hedgehog": FeatureMap(hedgehog, hedgehog_backward, ("W",)),
}
