"""The activations of minirec and their derivatives, written once.

Every definition (``cells/``, ``ops/``) takes its nonlinearities from here, so
σ or softplus has one implementation and one set of numerical properties.
Each function works on NumPy arrays of any shape and keeps their dtype
(float32 stays float32).

    σ(x)        = 1 / (1 + e^{−x})               σ'(x)        = σ(x) (1 − σ(x))
    log σ(x)    = −softplus(−x)                  (log σ)'(x)  = 1 − σ(x) = σ(−x)
    softplus(x) = log(1 + e^{x})                 softplus'(x) = σ(x)
    silu(x)     = x σ(x)                         silu'(x)     = σ(x) (1 + x (1 − σ(x)))
    tanh(x)                                      tanh'(x)     = 1 − tanh(x)²

None of them overflows: σ and log σ come from SciPy's ``expit``/``log_expit``
(``e^{−|x|} ≤ 1`` internally), softplus is ``max(x, 0) + log1p(e^{−|x|})``.
The derivative helpers that take the *output* (``dsigmoid_from_output``,
``dtanh_from_output``) are what the backward passes use: caches store
post-activation values, so a local derivative is a polynomial in a cached
value (STYLE.md).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit as _expit
from scipy.special import log_expit as _log_expit

__all__ = ["sigmoid", "log_sigmoid", "softplus", "silu", "silu_grad", "tanh",
           "dsigmoid_from_output", "dtanh_from_output", "relu"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """``σ(x) = 1 / (1 + e^{−x})``, without overflow (exact to rounding at any ``x``)."""
    return _expit(x)


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """``log σ(x) = −softplus(−x)``, accurate where σ underflows (``x → −∞``)."""
    return _log_expit(x)


def softplus(x: np.ndarray) -> np.ndarray:
    """``log(1 + e^x) = max(x, 0) + log1p(e^{−|x|})``, without overflow; its
    derivative is :func:`sigmoid`."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def silu(x: np.ndarray) -> np.ndarray:
    """``silu(x) = x σ(x)`` (also called swish)."""
    return x * _expit(x)


def silu_grad(x: np.ndarray) -> np.ndarray:
    """``d silu/dx = σ(x) (1 + x (1 − σ(x)))``."""
    s = _expit(x)
    return s * (1 + x * (1 - s))


def tanh(x: np.ndarray) -> np.ndarray:
    """``tanh(x)`` (NumPy's)."""
    return np.tanh(x)


def relu(x: np.ndarray) -> np.ndarray:
    """``relu(x) = max(x, 0)``; NaN stays NaN (``np.maximum`` propagates it)."""
    return np.maximum(x, 0)


def dsigmoid_from_output(s: np.ndarray) -> np.ndarray:
    """``σ'(x)`` from ``s = σ(x)``: ``s (1 − s)``."""
    return s * (1 - s)


def dtanh_from_output(y: np.ndarray) -> np.ndarray:
    """``tanh'(x)`` from ``y = tanh(x)``: ``1 − y²``."""
    return 1 - y * y
