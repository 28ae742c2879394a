"""Gated recurrent unit (GRU), PyTorch's ``torch.nn.GRU`` convention.

Dimension key: B batch, T time, D input size, H hidden size.

Parameters (PyTorch's names, shapes and gate order r, z, n stacked along
axis 0): ``W_ih (3H, D)``, ``W_hh (3H, H)``, ``b_ih (3H,)``, ``b_hh (3H,)``.
The input and hidden affine maps are kept apart because the reset gate
multiplies only the hidden part of the candidate:

    gi = x_t W_ih^T + b_ih      = [gi_r | gi_z | gi_n]                       (B, 3H)
    gh = h_{t-1} W_hh^T + b_hh  = [gh_r | gh_z | gh_n]                       (B, 3H)
    r_t = σ(gi_r + gh_r)
    z_t = σ(gi_z + gh_z)
    n_t = tanh(gi_n + r_t ⊙ gh_n)          (= tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)))
    h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}                                     (B, H)

The output is ``y_t = h_t``; the state is ``h (B, H)``.

Backward through one step (``dh = ∂L/∂h_t`` from the output and from t+1).
Post-activation values ``r, z, n`` and ``gh_n`` are cached:

    dn    = dh ⊙ (1 − z)                   (through h_t)
    dz    = dh ⊙ (h_{t-1} − n)
    da_n  = dn ⊙ (1 − n²)                  (through tanh)
    dr    = da_n ⊙ gh_n                    (through r ⊙ gh_n)
    da_r  = dr ⊙ r ⊙ (1 − r)   da_z = dz ⊙ z ⊙ (1 − z)
    dgi   = [da_r | da_z | da_n]           dgh = [da_r | da_z | da_n ⊙ r]      (B, 3H)
    dx_t    = dgi W_ih                     dh_prev = dh ⊙ z + dgh W_hh
    dW_ih  += dgi^T x_t                    dW_hh  += dgh^T h_{t-1}
    db_ih  += Σ_B dgi                      db_hh  += Σ_B dgh

``forward``/``backward`` over a sequence are :mod:`minirec.bptt` loops over
``step_forward``/``step_backward`` (the definition). ``backend="numba"``: one
GEMM for ``x W_ih^T + b_ih`` over all T, the time loop fused in
:func:`minirec.kernels.numba.classic.gru_forward` / ``gru_backward``, and GEMMs
over all T for the weight gradients (:mod:`minirec.cells.common`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.special import expit as _sigmoid  # σ, without overflow

from minirec import _backend, bptt
from minirec import _validate as V
from minirec.cells import common

METHODS = ("recurrent",)
BACKENDS = ("numpy", "numba")
GATES = 3  # r, z, n
PARAM_SHAPES = {"W_ih": ("G", "D"), "W_hh": ("G", "H"), "b_ih": ("G",), "b_hh": ("G",)}


class StepCache(NamedTuple):
    """What one step keeps for its backward."""

    params: dict
    x_t: np.ndarray      # (B, D)
    h_prev: np.ndarray   # (B, H)
    r: np.ndarray        # reset gate σ(gi_r + gh_r)
    z: np.ndarray        # update gate σ(gi_z + gh_z)
    n: np.ndarray        # candidate tanh(gi_n + r ⊙ gh_n)
    gh_n: np.ndarray     # h_{t-1} W_hn^T + b_hn


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """PyTorch's initialisation: every entry ~ U(−1/√H, 1/√H).

    Returns ``{"W_ih": (3H, D), "W_hh": (3H, H), "b_ih": (3H,), "b_hh": (3H,)}``.
    """
    k = 1.0 / np.sqrt(hidden_size)
    G = GATES * hidden_size
    shapes = {"W_ih": (G, input_size), "W_hh": (G, hidden_size), "b_ih": (G,), "b_hh": (G,)}
    return {n: rng.uniform(-k, k, s).astype(dtype) for n, s in shapes.items()}


def zero_state(params: dict, batch_size: int, dtype=None) -> np.ndarray:
    """``h_{-1} = 0`` of shape ``(B, H)``."""
    W_hh = params["W_hh"]
    return np.zeros((batch_size, W_hh.shape[1]), dtype or W_hh.dtype)


def _check(params, x, state0):
    dtype, s = V.cell_inputs("gru", params, PARAM_SHAPES, x, state0, ("B", "H"))
    if s["G"] != GATES * s["H"]:
        raise ValueError(f"gru: W_hh: expected shape (3H, H) = ({GATES * s['H']}, {s['H']}) "
                         f"(gates r, z, n stacked on axis 0), got {params['W_hh'].shape}")
    return dtype


def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray) -> tuple[np.ndarray,
                                                                             StepCache]:
    """One step ``h_{t-1}, x_t → h_t`` (equations in the module docstring).

    ``x_t (B, D)``, ``h_prev (B, H)`` → ``h_t (B, H)`` and a :class:`StepCache`.
    """
    H = h_prev.shape[-1]
    gi = x_t @ params["W_ih"].T + params["b_ih"]
    gh = h_prev @ params["W_hh"].T + params["b_hh"]
    rz = _sigmoid(gi[:, :2 * H] + gh[:, :2 * H])  # r and z in one call
    r, z = rz[:, :H], rz[:, H:]
    gh_n = gh[:, 2 * H:]
    n = np.tanh(gi[:, 2 * H:] + r * gh_n)
    h = (1 - z) * n + z * h_prev
    return h, StepCache(params, x_t, h_prev, r, z, n, gh_n)


def step_backward(dh_next: np.ndarray, cache_t: StepCache):
    """Back through one step: returns ``dx_t (B, D)``, ``dh_prev (B, H)`` and the
    step's parameter gradients."""
    params, x_t, h_prev, r, z, n, gh_n = cache_t
    dh = dh_next
    # through h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}
    dn = dh * (1 - z)
    dz = dh * (h_prev - n)
    # through n = tanh(gi_n + r ⊙ gh_n)
    da_n = dn * (1 - n * n)
    dr = da_n * gh_n
    # through the sigmoids
    da_r = dr * r * (1 - r)
    da_z = dz * z * (1 - z)
    dgi = np.concatenate([da_r, da_z, da_n], axis=-1)
    dgh = np.concatenate([da_r, da_z, da_n * r], axis=-1)
    # through the two affine maps
    dparams = {"W_ih": dgi.T @ x_t, "W_hh": dgh.T @ h_prev,
               "b_ih": dgi.sum(axis=0), "b_hh": dgh.sum(axis=0)}
    return dgi @ params["W_ih"], dh * z + dgh @ params["W_hh"], dparams


def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, dict]:
    """Run the GRU over ``x (B, T, D)`` from ``state0 (B, H)`` (zeros if ``None``).

    Returns ``y (B, T, H)``, the final ``h (B, H)`` and the cache for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="cells.gru")
    dtype = _check(params, x, state0)
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    if backend == "numba":  # GEMM for x W_ih^T over all T, then the fused time loop
        with _backend.blas_single_thread():  # see _backend: BLAS vs numba threads
            kern = _backend.kernels("classic", backend)
            p = {k: v.astype(dtype, copy=False) for k, v in params.items()}
            xp = common.project(x.astype(dtype, copy=False), p["W_ih"], p["b_ih"])
            B, T, G = xp.shape
            hs = np.empty((B, T, G // GATES), dtype)
            gates = np.empty((B, T, (GATES + 1) * (G // GATES)), dtype)
            h0c = np.ascontiguousarray(h0, dtype=dtype)
            kern.gru_forward(xp, np.ascontiguousarray(p["W_hh"].T), p["b_hh"], h0c, hs, gates)
            cache = {"x": x, "hs": hs, "gates": gates, "state0": h0c, "method": method,
                     "backend": backend}
            return hs, hs[:, -1].copy(), cache
    y, h, cache = bptt.sequence_forward(step_forward, params, x, h0)
    cache.update(method=method, backend=backend)
    return y, h, cache


def backward(params: dict, cache: dict, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BPTT: gradients for ``W_ih, W_hh, b_ih, b_hh``, ``"x" (B, T, D)`` and
    ``"state0" (B, H)``. ``dy (B, T, H)`` and ``dstate (B, H)`` may be ``None``."""
    V.grad_like("dstate", dstate, cache["state0"], "the state")
    if cache["backend"] == "numba":
        with _backend.blas_single_thread():  # see _backend: BLAS vs numba threads
            kern = _backend.kernels("classic", "numba")
            hs, h0, x = cache["hs"], cache["state0"], cache["x"]
            dt = hs.dtype
            dy = np.zeros_like(hs) if dy is None else np.ascontiguousarray(V.grad_like(
                "dy", dy, hs, "y"), dtype=dt)
            dh_T = np.zeros_like(h0) if dstate is None else np.ascontiguousarray(dstate, dtype=dt)
            B, T, H = hs.shape
            dxp = np.empty((B, T, GATES * H), dt)
            dhp = np.empty((B, T, GATES * H), dt)
            dh0 = np.empty_like(h0)
            W_hh = np.ascontiguousarray(params["W_hh"], dtype=dt)
            kern.gru_backward(hs, h0, cache["gates"], W_hh, dy, dh_T, dxp, dhp, dh0)
            grads = common.dense_grads(x.astype(dt, copy=False), common.previous_states(h0, hs),
                                       dxp, dhp, params["W_ih"].astype(dt, copy=False))
            grads["state0"] = dh0
            return grads
    return bptt.sequence_backward(step_backward, params, cache, dy, dstate)
