"""Elman RNN, PyTorch's ``torch.nn.RNN`` convention.

Dimension key: B batch, T time, D input size, H hidden size.

Parameters (PyTorch's names and shapes): ``W_ih (H, D)``, ``W_hh (H, H)``,
``b_ih (H,)``, ``b_hh (H,)``.

    a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh          (B, H)
    h_t = φ(a_t),      φ = tanh  or  relu                   (B, H)

The output is ``y_t = h_t``; the state is ``h (B, H)``.

Backward through one step (dh = ∂L/∂h_t, from the output and from t+1):

    da      = dh ⊙ (1 − h_t²)        for tanh   (h_t stored, not a_t)
            = dh ⊙ [h_t > 0]         for relu
    dx_t    = da W_ih                dh_{t-1} = da W_hh
    dW_ih  += da^T x_t               dW_hh   += da^T h_{t-1}
    db_ih  += Σ_B da                 db_hh   += Σ_B da

``forward``/``backward`` over a sequence are :mod:`minirec.bptt` loops over
``step_forward``/``step_backward`` (the definition). ``backend="numba"`` runs
the same equations as one GEMM for the input projection of all T, the time
loop in :func:`minirec.kernels.numba.classic.rnn_forward` (backward:
``rnn_backward``), and GEMMs over all T for the weight gradients
(:mod:`minirec.cells.common`).
"""

from __future__ import annotations

import numpy as np

from minirec import _backend, bptt
from minirec import _validate as V
from minirec.cells import common

METHODS = ("recurrent",)
BACKENDS = ("numpy", "numba")
NONLINEARITIES = ("tanh", "relu")
PARAM_SHAPES = {"W_ih": ("H", "D"), "W_hh": ("H", "H"), "b_ih": ("H",), "b_hh": ("H",)}


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """PyTorch's initialisation: every entry ~ U(−1/√H, 1/√H)."""
    k = 1.0 / np.sqrt(hidden_size)
    shapes = {"W_ih": (hidden_size, input_size), "W_hh": (hidden_size, hidden_size),
              "b_ih": (hidden_size,), "b_hh": (hidden_size,)}
    return {n: rng.uniform(-k, k, s).astype(dtype) for n, s in shapes.items()}


def zero_state(params: dict, batch_size: int, dtype=None) -> np.ndarray:
    """``h_{-1} = 0`` of shape ``(B, H)``."""
    W_hh = params["W_hh"]
    return np.zeros((batch_size, W_hh.shape[1]), dtype or W_hh.dtype)


def _check(params, x, state0):
    return V.cell_inputs("rnn", params, PARAM_SHAPES, x, state0, ("B", "H"))[0]


def _phi(a, nonlinearity):
    return np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)


def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray,
                 nonlinearity: str = "tanh") -> tuple[np.ndarray, tuple]:
    """One step: ``h_t = φ(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    ``x_t (B, D)``, ``h_prev (B, H)`` → ``h_t (B, H)`` and the step cache
    ``(params, x_t, h_prev, h_t, nonlinearity)``.
    """
    a = x_t @ params["W_ih"].T + params["b_ih"] + h_prev @ params["W_hh"].T + params["b_hh"]
    h = _phi(a, nonlinearity)
    return h, (params, x_t, h_prev, h, nonlinearity)


def step_backward(dh_next: np.ndarray, cache_t: tuple):
    """Back through one step: returns ``dx_t (B, D)``, ``dh_prev (B, H)`` and the
    step's parameter gradients."""
    params, x_t, h_prev, h, nonlinearity = cache_t
    # through φ (h stored post-activation)
    da = dh_next * (1 - h * h) if nonlinearity == "tanh" else dh_next * (h > 0)
    # through the two affine maps
    dparams = {"W_ih": da.T @ x_t, "W_hh": da.T @ h_prev,
               "b_ih": da.sum(axis=0), "b_hh": da.sum(axis=0)}
    return da @ params["W_ih"], da @ params["W_hh"], dparams


def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            nonlinearity: str = "tanh", method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, dict]:
    """Run the RNN over ``x (B, T, D)`` from ``state0 (B, H)`` (zeros if ``None``).

    Returns ``y (B, T, H)``, the final ``h (B, H)`` and the cache for :func:`backward`.
    """
    V.choice("nonlinearity", nonlinearity, NONLINEARITIES)
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="cells.rnn")
    dtype = _check(params, x, state0)
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    if backend == "numba":
        with _backend.blas_single_thread():  # see _backend: BLAS vs numba threads
            kern = _backend.kernels("classic", backend)
            p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
            xp = common.project(x.astype(dtype, copy=False), p["W_ih"], p["b_ih"] + p["b_hh"])
            hs = np.empty(xp.shape, dtype)
            h0c = np.ascontiguousarray(h0, dtype=dtype)
            kern.rnn_forward(xp, np.ascontiguousarray(p["W_hh"].T), h0c, nonlinearity == "relu", hs)
            cache = {"x": x, "hs": hs, "state0": h0c, "nonlinearity": nonlinearity,
                     "method": method, "backend": backend}
            return hs, hs[:, -1].copy(), cache
    y, h, cache = bptt.sequence_forward(step_forward, params, x, h0, nonlinearity=nonlinearity)
    cache.update(method=method, backend=backend)
    return y, h, cache


def backward(params: dict, cache: dict, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BPTT: gradients for ``W_ih, W_hh, b_ih, b_hh``, ``"x" (B, T, D)`` and ``"state0" (B, H)``."""
    if cache["backend"] == "numba":
        with _backend.blas_single_thread():  # see _backend: BLAS vs numba threads
            kern = _backend.kernels("classic", "numba")
            hs, h0, x = cache["hs"], cache["state0"], cache["x"]
            dy = np.zeros_like(hs) if dy is None else np.ascontiguousarray(dy, dtype=hs.dtype)
            dh_T = np.zeros_like(h0) if dstate is None else np.ascontiguousarray(dstate, hs.dtype)
            V.grad_like("dy", dy, hs, "y")
            V.grad_like("dstate", dh_T, h0, "state")
            da = np.empty_like(hs)
            dh0 = np.empty_like(h0)
            W_hh = np.ascontiguousarray(params["W_hh"], dtype=hs.dtype)
            kern.rnn_backward(hs, W_hh, dy, dh_T, cache["nonlinearity"] == "relu", da, dh0)
            h_prev = common.previous_states(h0, hs)
            grads = common.dense_grads(x.astype(hs.dtype, copy=False), h_prev, da, da,
                                       params["W_ih"].astype(hs.dtype, copy=False))
            grads["state0"] = dh0
            return grads
    return bptt.sequence_backward(step_backward, params, cache, dy, dstate)
