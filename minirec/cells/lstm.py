"""Long short-term memory (LSTM), PyTorch's ``torch.nn.LSTM`` convention.

Dimension key: B batch, T time, D input size, H hidden size.

Parameters (PyTorch's names, shapes and gate order i, f, g, o stacked along
axis 0): ``W_ih (4H, D)``, ``W_hh (4H, H)``, ``b_ih (4H,)``, ``b_hh (4H,)``.

    a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh   = [a_i | a_f | a_g | a_o]   (B, 4H)
    i_t = σ(a_i)     f_t = σ(a_f)     g_t = tanh(a_g)     o_t = σ(a_o)           (B, H)
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t                                               (B, H)
    h_t = o_t ⊙ tanh(c_t)                                                         (B, H)

The output is ``y_t = h_t``; the state is the tuple ``(h, c)``, each ``(B, H)``.

Backward through one step (``dh = ∂L/∂h_t`` from the output and from t+1,
``dc = ∂L/∂c_t`` from t+1). Post-activation values ``i, f, g, o`` and
``tanh_c = tanh(c_t)`` are cached, so every local derivative is a polynomial
in a cached value:

    do      = dh ⊙ tanh_c
    dc_t    = dc + dh ⊙ o ⊙ (1 − tanh_c²)          (through h_t = o ⊙ tanh(c_t))
    di      = dc_t ⊙ g      df = dc_t ⊙ c_{t-1}      dg = dc_t ⊙ i
    dc_prev = dc_t ⊙ f
    da_i = di ⊙ i ⊙ (1 − i)     da_f = df ⊙ f ⊙ (1 − f)
    da_g = dg ⊙ (1 − g²)        da_o = do ⊙ o ⊙ (1 − o)
    da   = [da_i | da_f | da_g | da_o]                                         (B, 4H)
    dx_t    = da W_ih            dh_prev = da W_hh
    dW_ih  += da^T x_t           dW_hh  += da^T h_{t-1}
    db_ih  += Σ_B da             db_hh  += Σ_B da

``forward``/``backward`` over a sequence are :mod:`minirec.bptt` loops over
``step_forward``/``step_backward`` (the definition). Other backends run the same
equations behind the backend seam, ``_backend.kernels("lstm", backend)``
(:mod:`minirec.kernels.numba.lstm`: one GEMM for ``gi = x W_ih^T + b_ih + b_hh``
over all T, the fused time loop, GEMMs for the weight gradients;
:mod:`minirec.kernels.cuda.lstm` for ``"cupy"`` and ``"cuda-emulated"``: the same
GEMMs, and per step one GEMM ``h_{t-1} W_hh^T`` and one fused gate kernel).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend, bptt
from minirec import _math as M
from minirec import _validate as V

METHODS = ("recurrent",)
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# the methods each non-NumPy backend has kernels for (NumPy runs them all)
BACKEND_METHODS = {"numba": ("recurrent",), "cupy": ("recurrent",),
                   "cuda-emulated": ("recurrent",)}
GATES = 4  # i, f, g, o
PARAM_SHAPES = {"W_ih": ("G", "D"), "W_hh": ("G", "H"), "b_ih": ("G",), "b_hh": ("G",)}


class StepCache(NamedTuple):
    """What one step keeps for its backward (all ``(B, ·)`` arrays of the step)."""

    params: dict
    x_t: np.ndarray      # (B, D)
    h_prev: np.ndarray   # (B, H)
    c_prev: np.ndarray   # (B, H)
    i: np.ndarray        # input gate σ(a_i)
    f: np.ndarray        # forget gate σ(a_f)
    g: np.ndarray        # candidate tanh(a_g)
    o: np.ndarray        # output gate σ(a_o)
    tanh_c: np.ndarray   # tanh(c_t)


class LSTMCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`.

    Fields:
        seq: ``backend="numpy"``: the :class:`minirec.bptt.SequenceCache` of the
            loop over :func:`step_forward`; ``None`` otherwise.
        kernel: other backends: the kernel module's own cache (see
            ``_backend.kernels("lstm", backend)``); ``None`` for NumPy.
        y_like: zeros shaped and typed like ``y (B, T, H)`` (a read-only view
            that holds no memory): what ``dy`` is checked against.
        state_like: the same for the final state ``(h, c)``, each ``(B, H)``.
        param_shapes: ``{name: shape}`` of the params the forward ran with.
        method, backend: the forward's options.
    """

    seq: bptt.SequenceCache | None
    kernel: Any
    y_like: np.ndarray
    state_like: tuple[np.ndarray, np.ndarray]
    param_shapes: dict
    method: str
    backend: str


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """PyTorch's initialisation: every entry ~ U(−1/√H, 1/√H).

    Returns ``{"W_ih": (4H, D), "W_hh": (4H, H), "b_ih": (4H,), "b_hh": (4H,)}``.
    """
    k = 1.0 / np.sqrt(hidden_size)
    G = GATES * hidden_size
    shapes = {"W_ih": (G, input_size), "W_hh": (G, hidden_size), "b_ih": (G,), "b_hh": (G,)}
    return {n: rng.uniform(-k, k, s).astype(dtype) for n, s in shapes.items()}


def zero_state(params: dict, batch_size: int, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """``(h_{-1}, c_{-1}) = (0, 0)``, each of shape ``(B, H)`` (CuPy arrays when the
    params are)."""
    W_hh = params["W_hh"]
    xp, shape = _backend.xp_of(W_hh), (batch_size, W_hh.shape[1])
    return xp.zeros(shape, dtype or W_hh.dtype), xp.zeros(shape, dtype or W_hh.dtype)


def _check(params, x, state0):
    dtype, s = V.cell_inputs("lstm", params, PARAM_SHAPES, x, state0,
                             [("B", "H"), ("B", "H")], state_names=("h0", "c0"))
    if s["G"] != GATES * s["H"]:
        raise ValueError(f"lstm: W_hh: expected shape (4H, H) = ({GATES * s['H']}, {s['H']}) "
                         f"(gates i, f, g, o stacked on axis 0), got {params['W_hh'].shape}")
    return dtype




def step_forward(params: dict, x_t: np.ndarray,
                 state: tuple[np.ndarray, np.ndarray]) -> tuple[tuple, StepCache]:
    """One step ``(h_{t-1}, c_{t-1}), x_t → (h_t, c_t)`` (equations in the module docstring).

    ``x_t (B, D)``, ``state = (h_prev (B, H), c_prev (B, H))``. Returns the new
    state ``(h_t, c_t)`` and a :class:`StepCache`.
    """
    h_prev, c_prev = state
    a = x_t @ params["W_ih"].T + params["b_ih"] + h_prev @ params["W_hh"].T + params["b_hh"]
    H = h_prev.shape[-1]
    s = M.sigmoid(a)  # one call for the three σ gates (its g block is unused)
    i, f, o = s[:, :H], s[:, H:2 * H], s[:, 3 * H:]
    g = M.tanh(a[:, 2 * H:3 * H])
    c = f * c_prev + i * g
    tanh_c = M.tanh(c)
    h = o * tanh_c
    return (h, c), StepCache(params, x_t, h_prev, c_prev, i, f, g, o, tanh_c)


def step_backward(dstate_next: tuple[np.ndarray, np.ndarray], cache_t: StepCache):
    """Back through one step.

    ``dstate_next = (dh (B, H), dc (B, H))``, the gradients of ``(h_t, c_t)``.
    Returns ``dx_t (B, D)``, ``(dh_prev, dc_prev)`` and the step's parameter gradients.
    """
    params, x_t, h_prev, c_prev, i, f, g, o, tanh_c = cache_t
    dh, dc = dstate_next
    # through h_t = o ⊙ tanh(c_t)
    do = dh * tanh_c
    dc_t = dc + dh * o * M.dtanh_from_output(tanh_c)
    # through c_t = f ⊙ c_{t-1} + i ⊙ g
    di, df, dg = dc_t * g, dc_t * c_prev, dc_t * i
    dc_prev = dc_t * f
    # through the gate nonlinearities (post-activation values cached)
    da = np.concatenate([di * M.dsigmoid_from_output(i), df * M.dsigmoid_from_output(f),
                         dg * M.dtanh_from_output(g), do * M.dsigmoid_from_output(o)], axis=-1)
    # through the two affine maps
    db = da.sum(axis=0)
    dparams = {"W_ih": da.T @ x_t, "W_hh": da.T @ h_prev, "b_ih": db, "b_hh": db.copy()}
    return da @ params["W_ih"], (da @ params["W_hh"], dc_prev), dparams


def forward(params: dict, x: np.ndarray, state0: tuple | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, tuple, LSTMCache]:
    """Run the LSTM over ``x (B, T, D)`` from ``state0 = (h0, c0)``, each ``(B, H)``
    (zeros if ``None``).

    ``chunk_size`` is accepted for the common cell API (no method here uses it)
    and checked all the same. Returns ``y (B, T, H)`` (every ``h_t``), the final
    state ``(h, c)`` and the :class:`LSTMCache` for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    _backend.resolve(backend, BACKENDS, what="cells.lstm", method=method,
                     backend_methods=BACKEND_METHODS)
    dtype = _check(params, x, state0)
    s0 = zero_state(params, x.shape[0], dtype) if state0 is None else tuple(state0)
    seq = kernel = None
    if backend == "numpy":  # the definition: BPTT's loop over step_forward
        y, state, seq = bptt.sequence_forward(step_forward, params, x, s0)
    else:
        y, state, kernel = _backend.kernels("lstm", backend).forward(params, x, s0)
    return y, state, LSTMCache(seq, kernel, V.zeros_view(y), tuple(map(V.zeros_view, state)),
                               V.param_shapes(params), method, backend)


def backward(params: dict, cache: LSTMCache, dy: np.ndarray | None,
             dstate: tuple | None = None) -> dict:
    """BPTT: gradients for ``W_ih, W_hh, b_ih, b_hh``, ``"x" (B, T, D)`` and
    ``"state0" = (dh0, dc0)``.

    ``dy (B, T, H)`` or ``None``; ``dstate = (dh, dc)``, the gradient of the
    final ``(h, c)`` (either part may be ``None``), or ``None``.
    """
    V.cache("lstm", cache, LSTMCache)
    V.params_match("lstm", params, cache.param_shapes)
    fill = cache.backend != "numpy"  # kernels take arrays: None becomes zeros
    dy = V.grad_like("dy", dy, cache.y_like, "y", fill=fill)
    dstate = V.grad_state("dstate", dstate, cache.state_like, fill=fill)
    if cache.backend != "numpy":
        return _backend.kernels("lstm", cache.backend).backward(params, cache.kernel, dy, dstate)
    return bptt.sequence_backward(step_backward, params, cache.seq, dy, dstate)
