"""minLSTM, from Feng et al., "Were RNNs All We Needed?" (2024).

Dimension key: B batch, T time, D input size, H hidden size.

Parameters: ``W_f (H, D)``, ``b_f (H,)``, ``W_i (H, D)``, ``b_i (H,)``,
``W_h (H, D)``, ``b_h (H,)``.

    k_f = x_t W_f^T + b_f,   k_i = x_t W_i^T + b_i      (B, T, H)  gate logits
    f_t = σ(k_f),            i_t = σ(k_i)
    h̃_t = x_t W_h^T + b_h                              (B, T, H)  candidate
    f'_t = f_t / (f_t + i_t),   i'_t = i_t / (f_t + i_t)         (f' + i' = 1)
    h_t  = f'_t ⊙ h_{t−1} + i'_t ⊙ h̃_t

The normalised gates are computed from the log-ratio, as in the paper's
log-space code, so that they stay finite when ``f`` and ``i`` both underflow:

    d    = log f − log i = softplus(−k_i) − softplus(−k_f)
    f'   = σ(d),   i' = σ(−d)

The output is ``y_t = h_t``; the state is ``h (B, H)``. With ``a = f'`` and
``b = i' ⊙ h̃`` the recurrence is the diagonal affine scan
:func:`minirec.scan.linear.forward`, with every one of its methods (``log``:
``log a = −softplus(−d)``).

Negative eigenvalues (``negative_eigenvalues=True``; Grazzi et al., "Unlocking
State-Tracking in Linear RNNs Through Negative Eigenvalues", 2024): the
multiplier is mapped by ``a ↦ 2a − 1``,

    a_t = 2 f'_t − 1 = f'_t − i'_t ∈ (−1, 1),     b_t = i'_t ⊙ h̃_t  (unchanged);

``method="log"`` is refused in this mode (it takes ``log a``).

Backward (``dy`` = ∂L/∂h_t from outside, ``dstate`` through the final state;
write ``a = 1 − c i'`` with ``c = 1``, or ``c = 2`` with negative eigenvalues):

    da, db, dh0 = scan.linear.backward(dy, dstate)   reverse scan, same method
    di'   = db ⊙ h̃ − c · da                      through a and b
    dd    = −di' ⊙ f' ⊙ i'                        through i' = σ(−d)
    dk_f  = dd ⊙ (1 − f)                          ∂d/∂k_f = σ(−k_f)
    dk_i  = −dd ⊙ (1 − i)                         ∂d/∂k_i = −σ(−k_i)
    dh̃   = db ⊙ i'
    dW_f  = Σ_{B,T} dk_f^T x,  db_f = Σ dk_f    (W_i, b_i and W_h, b_h alike)
    dx    = dk_f W_f + dk_i W_i + dh̃ W_h
    dstate0 = dh0

``backend="numba"``: the gates stay vectorised NumPy (GEMMs over all T) and
the recurrence runs in :mod:`minirec.kernels.numba.linear_scan` (methods
``recurrent`` and ``chunked``), forward and backward.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit as _sigmoid  # σ, without overflow

from minirec import _backend
from minirec import _validate as V
from minirec.scan import linear

METHODS = linear.METHODS  # ("recurrent", "hillis_steele", "blelloch", "chunked", "log")
BACKENDS = ("numpy", "numba")
# numba: the gates stay vectorised NumPy (GEMMs over all T); the recurrence runs in
# scan.linear's numba kernels, which exist for these methods
BACKEND_METHODS = linear.BACKEND_METHODS
PARAM_SHAPES = {"W_f": ("H", "D"), "b_f": ("H",), "W_i": ("H", "D"), "b_i": ("H",),
                "W_h": ("H", "D"), "b_h": ("H",)}


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """Every entry ~ U(−1/√D, 1/√D) (a linear layer's default, as in the paper's code).

    Returns ``W_f, W_i, W_h (H, D)`` and ``b_f, b_i, b_h (H,)``.
    """
    k = 1.0 / np.sqrt(input_size)
    return {n: rng.uniform(-k, k, (hidden_size, input_size) if n[0] == "W"
                           else (hidden_size,)).astype(dtype) for n in PARAM_SHAPES}


def zero_state(params: dict, batch_size: int, dtype=None) -> np.ndarray:
    """``h_{-1} = 0`` of shape ``(B, H)``."""
    W_h = params["W_h"]
    return np.zeros((batch_size, W_h.shape[0]), dtype or W_h.dtype)


def _softplus(u):
    """log(1 + e^u) without overflow: max(u, 0) + log1p(e^{−|u|})."""
    return np.maximum(u, 0) + np.log1p(np.exp(-np.abs(u)))


def _gates(params, x, negative_eigenvalues):
    """``x (..., D)`` → ``(k_f, k_i, f', i', h̃)``, ``a``, ``b`` (each ``(..., H)``)."""
    k_f = x @ params["W_f"].T + params["b_f"]
    k_i = x @ params["W_i"].T + params["b_i"]
    h_tilde = x @ params["W_h"].T + params["b_h"]
    d = _softplus(-k_i) - _softplus(-k_f)    # log f − log i
    f_n, i_n = _sigmoid(d), _sigmoid(-d)     # f', i'
    a = f_n - i_n if negative_eigenvalues else f_n
    return (k_f, k_i, f_n, i_n, h_tilde), a, i_n * h_tilde


def _gates_backward(params, x, gates, da, db, negative_eigenvalues):
    """Back through ``_gates`` for ``x (N, D)``, ``da, db (N, H)``: ``dx`` and dparams."""
    k_f, k_i, f_n, i_n, h_tilde = gates
    c = 2 if negative_eigenvalues else 1
    di_n = db * h_tilde - c * da         # through a = 1 − c i' and b = i' ⊙ h̃
    dd = -di_n * f_n * i_n               # through i' = σ(−d)
    dk_f = dd * _sigmoid(-k_f)           # through d = softplus(−k_i) − softplus(−k_f)
    dk_i = -dd * _sigmoid(-k_i)
    dh_tilde = db * i_n                  # through b = i' ⊙ h̃
    dparams = {"W_f": dk_f.T @ x, "b_f": dk_f.sum(axis=0),
               "W_i": dk_i.T @ x, "b_i": dk_i.sum(axis=0),
               "W_h": dh_tilde.T @ x, "b_h": dh_tilde.sum(axis=0)}
    dx = dk_f @ params["W_f"] + dk_i @ params["W_i"] + dh_tilde @ params["W_h"]
    return dx, dparams


def _check(params, x, state0):
    return V.cell_inputs("minlstm", params, PARAM_SHAPES, x, state0, ("B", "H"))[0]


def _check_log(method, negative_eigenvalues):
    if method == "log" and negative_eigenvalues:
        raise ValueError(
            "method='log' needs a > 0 (it takes log a), but negative_eigenvalues=True "
            "gives a = 2f' − 1 in (−1, 1). Use method='recurrent', 'hillis_steele', "
            "'blelloch' or 'chunked'."
        )


def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray, *,
                 negative_eigenvalues: bool = False) -> tuple[np.ndarray, tuple]:
    """One step: ``h_t = f'_t ⊙ h_{t−1} + i'_t ⊙ h̃_t`` (``a_t = 2f'_t − 1`` with
    negative eigenvalues).

    ``x_t (B, D)``, ``h_prev (B, H)`` → ``h_t (B, H)`` and the step cache
    ``(params, x_t, h_prev, gates, a_t, negative_eigenvalues)``.
    """
    gates, a, b = _gates(params, x_t, negative_eigenvalues)
    return a * h_prev + b, (params, x_t, h_prev, gates, a, negative_eigenvalues)


def step_backward(dh_next: np.ndarray, cache_t: tuple):
    """Back through one step: ``dx_t (B, D)``, ``dh_prev (B, H)``, parameter gradients
    (``da = dh ⊙ h_{t−1}``, ``db = dh``, then the gates)."""
    params, x_t, h_prev, gates, a, neg = cache_t
    dx, dparams = _gates_backward(params, x_t, gates, dh_next * h_prev, dh_next, neg)
    return dx, dh_next * a, dparams


def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            negative_eigenvalues: bool = False, method: str = "recurrent",
            chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, dict]:
    """Run minLSTM over ``x (B, T, D)`` from ``state0 (B, H)`` (zeros if ``None``).

    Args:
        params: from :func:`init_params`.
        x: ``(B, T, D)`` real input.
        state0: ``(B, H)`` ``h_{−1}``.
        negative_eigenvalues: ``a = 2f' − 1 ∈ (−1, 1)`` instead of ``f'``.
        method: one of :data:`METHODS`, passed to :func:`minirec.scan.linear.forward`.
        chunk_size: for ``method="chunked"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``y (B, T, H)``, the final ``h (B, H)`` and the cache for
        :func:`backward`: a dict with ``x``, ``gates`` (``k_f, k_i, f', i', h̃``),
        ``scan`` (the scan's cache) and ``negative_eigenvalues``.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="cells.minlstm")
    _backend.check_method(method, backend, BACKEND_METHODS, what="cells.minlstm")
    dtype = _check(params, x, state0)
    _check_log(method, negative_eigenvalues)
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    gates, a, b = _gates(params, x, negative_eigenvalues)
    y, h_T, scan_cache = linear.forward(a, b, h0, method=method, chunk_size=chunk_size,
                                        backend=backend)
    cache = {"x": x, "gates": gates, "scan": scan_cache,
             "negative_eigenvalues": negative_eigenvalues}
    return y, h_T, cache


def backward(params: dict, cache: dict, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward`: the scan's reverse scan, then the gates by hand.

    Args:
        params: the parameters given to :func:`forward`.
        cache: from :func:`forward`.
        dy: ``(B, T, H)`` ∂L/∂y (``None`` means zeros).
        dstate: ``(B, H)`` ∂L/∂h through the final state (``None`` means zeros).

    Returns:
        ``{"W_f", "b_f", "W_i", "b_i", "W_h", "b_h", "x" (B, T, D), "state0" (B, H)}``.
    """
    x = cache["x"]
    g = linear.backward(cache["scan"], dy, dstate)
    B, T, D = x.shape
    H = g["b"].shape[-1]
    gates = tuple(u.reshape(B * T, H) for u in cache["gates"])
    dx, grads = _gates_backward(params, x.reshape(B * T, D), gates, g["a"].reshape(B * T, H),
                                g["b"].reshape(B * T, H), cache["negative_eigenvalues"])
    grads["x"] = dx.reshape(B, T, D)
    grads["state0"] = g["initial_state"]
    return grads
