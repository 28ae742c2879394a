"""minGRU, from Feng et al., "Were RNNs All We Needed?" (2024).

Dimension key: B batch, T time, D input size, H hidden size.

Parameters: ``W_z (H, D)``, ``b_z (H,)``, ``W_h (H, D)``, ``b_h (H,)``.

    k_t  = x_t W_z^T + b_z                 (B, T, H)   gate logits
    z_t  = σ(k_t)                                      update gate
    h̃_t = x_t W_h^T + b_h                 (B, T, H)   candidate
    a_t  = 1 − z_t                         (computed as σ(−k_t): exact near 0)
    b_t  = z_t ⊙ h̃_t
    h_t  = a_t ⊙ h_{t−1} + b_t  =  (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t

The output is ``y_t = h_t``; the state is ``h (B, H)``. Neither gate looks at
``h_{t−1}``, so all T gates are computed at once and the recurrence is the
diagonal affine scan :func:`minirec.scan.linear.forward` — every one of its
methods (``recurrent`` is the loop; ``hillis_steele``, ``blelloch``,
``chunked`` and ``log`` are parallel). ``log`` is the paper's log-space form:
Heinsen's scan with ``log a_t = −softplus(k_t)``.

Negative eigenvalues (``negative_eigenvalues=True``, after Grazzi et al.,
"Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues", 2024):
the multiplier ``1 − z`` in (0, 1) is mapped by ``a ↦ 2a − 1`` to (−1, 1),

    a_t = 1 − 2 z_t  (= σ(−k_t) − σ(k_t)),     b_t = z_t ⊙ h̃_t  (unchanged),

so a channel can flip its sign every step (``k → +∞``: ``h_t = h̃_t − h_{t−1}``),
which a positive multiplier cannot do; this is what lets a diagonal linear RNN
track parity. ``method="log"`` takes ``log a`` and is refused in this mode.

Backward (``dy`` = ∂L/∂h_t from outside, ``dstate`` = ∂L/∂h_{T−1} through the
returned state; ``c = 1``, or ``c = 2`` with negative eigenvalues, so that
``a = 1 − c z``):

    da, db, dh0 = scan.linear.backward(dy, dstate)   reverse scan, same method
    dz      = db ⊙ h̃ − c · da                       through a and b
    dk      = dz ⊙ z ⊙ (1 − z)                       through σ
    dh̃     = db ⊙ z
    dW_z    = Σ_{B,T} dk^T x,      db_z = Σ_{B,T} dk
    dW_h    = Σ_{B,T} dh̃^T x,     db_h = Σ_{B,T} dh̃
    dx      = dk W_z + dh̃ W_h
    dstate0 = dh0

``step_forward``/``step_backward`` are one time step of the same equations,
for streaming (and a test loops them against ``forward``/``backward``).

``backend="numba"``: the gates stay vectorised NumPy (GEMMs over all T) and
the recurrence runs in :mod:`minirec.kernels.numba.linear_scan` (methods
``recurrent`` and ``chunked``), forward and backward.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit as _sigmoid  # σ, without overflow; σ(−k) is exact near 0

from minirec import _backend
from minirec import _validate as V
from minirec.scan import linear

METHODS = linear.METHODS  # ("recurrent", "hillis_steele", "blelloch", "chunked", "log")
BACKENDS = ("numpy", "numba")
# numba: the gates stay vectorised NumPy (GEMMs over all T); the recurrence runs in
# scan.linear's numba kernels, which exist for these methods
BACKEND_METHODS = linear.BACKEND_METHODS
PARAM_SHAPES = {"W_z": ("H", "D"), "b_z": ("H",), "W_h": ("H", "D"), "b_h": ("H",)}


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """Every entry ~ U(−1/√D, 1/√D) (a linear layer's default, as in the paper's code).

    Returns ``{"W_z": (H, D), "b_z": (H,), "W_h": (H, D), "b_h": (H,)}``.
    """
    k = 1.0 / np.sqrt(input_size)
    shapes = {"W_z": (hidden_size, input_size), "b_z": (hidden_size,),
              "W_h": (hidden_size, input_size), "b_h": (hidden_size,)}
    return {n: rng.uniform(-k, k, s).astype(dtype) for n, s in shapes.items()}


def zero_state(params: dict, batch_size: int, dtype=None) -> np.ndarray:
    """``h_{-1} = 0`` of shape ``(B, H)``."""
    W_h = params["W_h"]
    return np.zeros((batch_size, W_h.shape[0]), dtype or W_h.dtype)


def _gates(params, x, negative_eigenvalues):
    """``x (..., D)`` → ``z, h̃, a, b`` (each ``(..., H)``)."""
    k = x @ params["W_z"].T + params["b_z"]
    z = _sigmoid(k)
    one_minus_z = _sigmoid(-k)
    h_tilde = x @ params["W_h"].T + params["b_h"]
    a = one_minus_z - z if negative_eigenvalues else one_minus_z
    return z, h_tilde, a, z * h_tilde


def _gates_backward(params, x, z, h_tilde, da, db, negative_eigenvalues):
    """Back through ``_gates`` for ``x (N, D)`` and ``da, db (N, H)``: ``dx`` and dparams."""
    c = 2 if negative_eigenvalues else 1
    dz = db * h_tilde - c * da          # through a = 1 − c z and b = z ⊙ h̃
    dk = dz * z * (1 - z)               # through σ
    dh_tilde = db * z                   # through b = z ⊙ h̃
    dparams = {"W_z": dk.T @ x, "b_z": dk.sum(axis=0),
               "W_h": dh_tilde.T @ x, "b_h": dh_tilde.sum(axis=0)}
    return dk @ params["W_z"] + dh_tilde @ params["W_h"], dparams


def _check(params, x, state0):
    return V.cell_inputs("mingru", params, PARAM_SHAPES, x, state0, ("B", "H"))[0]


def _check_log(method, negative_eigenvalues):
    if method == "log" and negative_eigenvalues:
        raise ValueError(
            "method='log' needs a > 0 (it takes log a), but negative_eigenvalues=True "
            "gives a = 1 − 2z in (−1, 1). Use method='recurrent', 'hillis_steele', "
            "'blelloch' or 'chunked'."
        )


def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray, *,
                 negative_eigenvalues: bool = False) -> tuple[np.ndarray, tuple]:
    """One step: ``h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t`` (``a_t = 1 − 2 z_t``
    with negative eigenvalues).

    ``x_t (B, D)``, ``h_prev (B, H)`` → ``h_t (B, H)`` and the step cache
    ``(params, x_t, h_prev, z_t, h̃_t, a_t, negative_eigenvalues)``.
    """
    z, h_tilde, a, b = _gates(params, x_t, negative_eigenvalues)
    h = a * h_prev + b
    return h, (params, x_t, h_prev, z, h_tilde, a, negative_eigenvalues)


def step_backward(dh_next: np.ndarray, cache_t: tuple):
    """Back through one step: returns ``dx_t (B, D)``, ``dh_prev (B, H)`` and the
    step's parameter gradients (``da = dh ⊙ h_{t−1}``, ``db = dh``, then the gates)."""
    params, x_t, h_prev, z, h_tilde, a, neg = cache_t
    dx, dparams = _gates_backward(params, x_t, z, h_tilde, dh_next * h_prev, dh_next, neg)
    return dx, dh_next * a, dparams


def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            negative_eigenvalues: bool = False, method: str = "recurrent",
            chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, dict]:
    """Run minGRU over ``x (B, T, D)`` from ``state0 (B, H)`` (zeros if ``None``).

    Args:
        params: from :func:`init_params`.
        x: ``(B, T, D)`` real input.
        state0: ``(B, H)`` ``h_{−1}``.
        negative_eigenvalues: ``a = 1 − 2z ∈ (−1, 1)`` instead of ``1 − z``.
        method: one of :data:`METHODS`, passed to :func:`minirec.scan.linear.forward`.
        chunk_size: for ``method="chunked"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``y (B, T, H)`` (every ``h_t``), the final ``h (B, H)`` and the cache for
        :func:`backward`: a dict with ``x``, ``z``, ``h_tilde``, ``scan`` (the
        scan's cache) and ``negative_eigenvalues``.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="cells.mingru")
    _backend.check_method(method, backend, BACKEND_METHODS, what="cells.mingru")
    dtype = _check(params, x, state0)
    _check_log(method, negative_eigenvalues)
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    z, h_tilde, a, b = _gates(params, x, negative_eigenvalues)
    y, h_T, scan_cache = linear.forward(a, b, h0, method=method, chunk_size=chunk_size,
                                        backend=backend)
    cache = {"x": x, "z": z, "h_tilde": h_tilde, "scan": scan_cache,
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
        ``{"W_z", "b_z", "W_h", "b_h", "x" (B, T, D), "state0" (B, H)}``.
    """
    x, z, h_tilde = cache["x"], cache["z"], cache["h_tilde"]
    g = linear.backward(cache["scan"], dy, dstate)
    B, T, D = x.shape
    H = z.shape[-1]
    flat = lambda u, n: u.reshape(B * T, n)
    dx, grads = _gates_backward(params, flat(x, D), flat(z, H), flat(h_tilde, H),
                                flat(g["a"], H), flat(g["b"], H),
                                cache["negative_eigenvalues"])
    grads["x"] = dx.reshape(B, T, D)
    grads["state0"] = g["initial_state"]
    return grads
