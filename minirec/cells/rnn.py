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

Step Jacobian (:func:`step_jacobian`, full ``(B, H, H)``), for ``method="newton"``:

    J_t = ∂h_t/∂h_{t−1} = diag(φ'(a_t)) W_hh,     φ' = 1 − h_t² (tanh), [h_t > 0] (relu)

``forward``/``backward`` over a sequence are :mod:`minirec.bptt` loops over
``step_forward``/``step_backward`` (the definition). Other backends run the same
equations behind the backend seam, ``_backend.kernels("rnn", backend)``
(:mod:`minirec.kernels.numba.rnn`: one GEMM for ``gi = x W_ih^T + b_ih + b_hh``
over all T, the fused time loop, GEMMs for the weight gradients;
:mod:`minirec.kernels.cuda.rnn` for ``"cupy"`` and ``"cuda-emulated"``: the same
GEMMs, and per step one GEMM ``h_{t-1} W_hh^T`` and one fused gate kernel).

``method="newton"`` solves all T steps at once by Newton's method
(:mod:`minirec.scan.newton`, DEER): each iteration evaluates every step in one
batched call and solves ``δ_t = J_t δ_{t−1} + r_t`` with the matrix scan; its
backward is one reverse scan with the converged Jacobians (the
implicit-function theorem). With ``backend="numba"``, ``"cupy"`` or
``"cuda-emulated"`` the scans run on that backend, the steps in NumPy (CuPy).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend, bptt
from minirec import _math as M
from minirec import _validate as V
from minirec.scan import newton

METHODS = ("recurrent", "newton")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# the methods each non-NumPy backend has kernels for (NumPy runs them all)
BACKEND_METHODS = {"numba": ("recurrent", "newton"), "cupy": ("recurrent", "newton"),
                   "cuda-emulated": ("recurrent", "newton")}
NONLINEARITIES = ("tanh", "relu")
PARAM_SHAPES = {"W_ih": ("H", "D"), "W_hh": ("H", "H"), "b_ih": ("H",), "b_hh": ("H",)}


class StepCache(NamedTuple):
    """What one step keeps for its backward."""

    params: dict
    x_t: np.ndarray      # (B, D)
    h_prev: np.ndarray   # (B, H) h_{t-1}
    h: np.ndarray        # (B, H) h_t = φ(a_t), post-activation
    nonlinearity: str    # "tanh" or "relu"


class RNNCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`.

    Fields:
        seq: ``backend="numpy"``, ``method="recurrent"``: the
            :class:`minirec.bptt.SequenceCache` of the loop over
            :func:`step_forward`; ``None`` otherwise.
        kernel: other backends: the kernel module's own cache (see
            ``_backend.kernels("rnn", backend)``); ``None`` for NumPy.
        y_like: zeros shaped and typed like ``y (B, T, H)`` (a read-only view
            that holds no memory): what ``dy`` is checked against.
        state_like: the same for the final state ``h (B, H)``.
        param_shapes: ``{name: shape}`` of the params the forward ran with.
        nonlinearity, method, backend: the forward's options.
        newton: ``method="newton"``: the :class:`minirec.scan.newton.NewtonCache`
            (``.iterations``, ``.residual``); ``None`` otherwise.
    """

    seq: bptt.SequenceCache | None
    kernel: Any
    y_like: np.ndarray
    state_like: np.ndarray
    param_shapes: dict
    nonlinearity: str
    method: str
    backend: str
    newton: newton.NewtonCache | None = None


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """PyTorch's initialisation: every entry ~ U(−1/√H, 1/√H)."""
    k = 1.0 / np.sqrt(hidden_size)
    shapes = {"W_ih": (hidden_size, input_size), "W_hh": (hidden_size, hidden_size),
              "b_ih": (hidden_size,), "b_hh": (hidden_size,)}
    return {n: rng.uniform(-k, k, s).astype(dtype) for n, s in shapes.items()}


def zero_state(params: dict, batch_size: int, dtype=None) -> np.ndarray:
    """``h_{-1} = 0`` of shape ``(B, H)`` (a CuPy array when the params are)."""
    W_hh = params["W_hh"]
    return _backend.xp_of(W_hh).zeros((batch_size, W_hh.shape[1]), dtype or W_hh.dtype)


def _check(params, x, state0):
    return V.cell_inputs("rnn", params, PARAM_SHAPES, x, state0, ("B", "H"))[0]




def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray,
                 nonlinearity: str = "tanh") -> tuple[np.ndarray, StepCache]:
    """One step: ``h_t = φ(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    ``x_t (B, D)``, ``h_prev (B, H)`` → ``h_t (B, H)`` and a :class:`StepCache`.
    """
    a = x_t @ params["W_ih"].T + params["b_ih"] + h_prev @ params["W_hh"].T + params["b_hh"]
    h = M.tanh(a) if nonlinearity == "tanh" else M.relu(a)
    return h, StepCache(params, x_t, h_prev, h, nonlinearity)


def step_backward(dh_next: np.ndarray, cache_t: StepCache):
    """Back through one step: returns ``dx_t (B, D)``, ``dh_prev (B, H)`` and the
    step's parameter gradients."""
    params, x_t, h_prev, h, nonlinearity = cache_t
    # through φ (h stored post-activation)
    if nonlinearity == "tanh":
        da = dh_next * M.dtanh_from_output(h)
    else:
        da = dh_next * (h > 0)
    # through the two affine maps
    dparams = {"W_ih": da.T @ x_t, "W_hh": da.T @ h_prev,
               "b_ih": da.sum(axis=0), "b_hh": da.sum(axis=0)}
    return da @ params["W_ih"], da @ params["W_hh"], dparams


def step_jacobian(params: dict, x_t: np.ndarray, h_prev: np.ndarray,
                  nonlinearity: str = "tanh") -> np.ndarray:
    """``J = ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hh``, full: ``(B, H, H)`` with
    ``J[b, i, j] = ∂h_t[b, i]/∂h_{t-1}[b, j]`` (for :mod:`minirec.scan.newton`)."""
    h, _ = step_forward(params, x_t, h_prev, nonlinearity)
    dphi = M.dtanh_from_output(h) if nonlinearity == "tanh" else (h > 0).astype(h.dtype)
    return dphi[:, :, None] * params["W_hh"][None]


def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            nonlinearity: str = "tanh", method: str = "recurrent",
            chunk_size: int | None = None, backend: str = "numpy",
            newton_options: dict | None = None) -> tuple[np.ndarray, np.ndarray, RNNCache]:
    """Run the RNN over ``x (B, T, D)`` from ``state0 (B, H)`` (zeros if ``None``).

    ``method="newton"`` solves every step at once (:func:`minirec.scan.newton.solve`;
    ``newton_options``: its ``max_iter``, ``tol``, ``guess``, ``scan_method``,
    ``on_fail``; ``chunk_size`` goes to its scan). ``chunk_size`` is otherwise
    accepted for the common cell API and checked all the same. Returns
    ``y (B, T, H)``, the final ``h (B, H)`` and the :class:`RNNCache` for
    :func:`backward`.
    """
    V.choice("nonlinearity", nonlinearity, NONLINEARITIES)
    V.choice("method", method, METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    _backend.resolve(backend, BACKENDS, what="cells.rnn", method=method,
                     backend_methods=BACKEND_METHODS)
    dtype = _check(params, x, state0)
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    opts = newton.options(newton_options, method)
    seq = kernel = solve = None
    if method == "newton":
        y, h, solve = newton.solve(step_forward, step_jacobian, params, x, h0,
                                   chunk_size=chunk_size, backend=backend,
                                   step_kwargs={"nonlinearity": nonlinearity},
                                   **opts)
    elif backend == "numpy":  # the definition: BPTT's loop over step_forward
        y, h, seq = bptt.sequence_forward(step_forward, params, x, h0, nonlinearity=nonlinearity)
    else:
        y, h, kernel = _backend.kernels("rnn", backend).forward(params, x, h0,
                                                                nonlinearity=nonlinearity)
    return y, h, RNNCache(seq, kernel, V.zeros_view(y), V.zeros_view(h), V.param_shapes(params),
                          nonlinearity, method, backend, solve)


def backward(params: dict, cache: RNNCache, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BPTT: gradients for ``W_ih, W_hh, b_ih, b_hh``, ``"x" (B, T, D)`` and
    ``"state0" (B, H)``. ``dy (B, T, H)`` and ``dstate (B, H)`` may be ``None``."""
    V.cache("rnn", cache, RNNCache)
    V.params_match("rnn", params, cache.param_shapes)
    fill = cache.backend != "numpy"  # kernels take arrays: None becomes zeros
    dy = V.grad_like("dy", dy, cache.y_like, "y", fill=fill)
    dstate = V.grad_state("dstate", dstate, cache.state_like, fill=fill)
    if cache.method == "newton":  # the implicit-function theorem: one reverse scan
        return newton.backward(step_backward, step_jacobian, params, cache.newton, dy, dstate)
    if cache.backend != "numpy":
        return _backend.kernels("rnn", cache.backend).backward(params, cache.kernel, dy, dstate)
    return bptt.sequence_backward(step_backward, params, cache.seq, dy, dstate)
