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

Step Jacobian (:func:`step_jacobian`), for ``method="newton"``: the state
``(h, c)`` flattened to ``[h | c]`` (2H), ``W_hi, W_hf, W_hg, W_ho`` the four
``(H, H)`` blocks of ``W_hh``, and the same local derivatives as the backward:

    β_i = g ⊙ i ⊙ (1 − i)    β_f = c_{t-1} ⊙ f ⊙ (1 − f)    β_g = i ⊙ (1 − g²)
    β_o = tanh_c ⊙ o ⊙ (1 − o)                    γ = o ⊙ (1 − tanh_c²)
    ∂c_t/∂h_{t-1} = diag(β_i) W_hi + diag(β_f) W_hf + diag(β_g) W_hg    ∂c_t/∂c_{t-1} = diag(f)
    ∂h_t/∂h_{t-1} = diag(γ) ∂c_t/∂h_{t-1} + diag(β_o) W_ho         ∂h_t/∂c_{t-1} = diag(γ ⊙ f)
    J_t = [[∂h/∂h, ∂h/∂c], [∂c/∂h, ∂c/∂c]]                                (B, 2H, 2H)

``method="newton"`` solves all T steps at once by Newton's method
(:mod:`minirec.scan.newton`, DEER): each iteration evaluates every step in one
batched call and solves ``δ_t = J_t δ_{t−1} + r_t`` with a matrix scan; its
backward is one reverse scan with the converged Jacobians (the
implicit-function theorem). With ``backend="numba"``, ``"cupy"`` or
``"cuda-emulated"`` the scans run on that backend, the steps in NumPy (CuPy).

**Diagonal recurrence (ParaRNN).** ``init_params(..., diagonal=True)`` gives
``W_hh`` as a vector ``(4H,)`` ``= [w_i | w_f | w_g | w_o]``: each unit's gates
see only its own previous ``h``, ``a = x_t W_ih^T + b_ih + [w_i ⊙ h_{t-1} | … |
w_o ⊙ h_{t-1}] + b_hh`` (the LSTM of Danieli et al. 2025, "ParaRNN", with
PyTorch's gate equations otherwise). ``forward`` detects it from
``W_hh.ndim == 1``. Units then do not interact through time, and the Jacobian
is one 2×2 block per unit ``j`` on ``(h_j, c_j)`` (``(B, H, 2, 2)``, the ``W``
blocks above replaced by ``w_i, w_f, w_g, w_o``), so a Newton iteration is a
matrix scan of 2×2 blocks with the units on the batch axis. In the backward,
``dh_prev = Σ_gates da_gate ⊙ w_gate`` and ``dw_gate = Σ_B da_gate ⊙ h_{t-1}``.
Every backend runs both methods: ``"recurrent"`` on the multi-head kernels
(:func:`minirec.cells.rnn.as_heads`: the diagonal ``W_hh`` is ``H`` heads of one
unit, ``(H, G, 1)``; a 1×1 block per unit and gate is the diagonal),
``"newton"`` on every backend's scans (:data:`DIAGONAL_BACKEND_METHODS`;
:data:`DIAGONAL` is the variant as a cell, the registry's ``"lstm_diagonal"``).

**Multi-head (FlashRNN).** ``init_params(..., num_heads=NH)`` gives ``W_hh`` as
``NH`` blocks ``(NH, 4·dh, dh)``, ``dh = H / NH``, each head's gates i, f, g, o
stacked in PyTorch's order (``W_hh[h]`` is the ``weight_hh`` of a PyTorch cell
of hidden size ``dh``): unit ``h·dh + j`` is unit ``j`` of head ``h``, and the
gates of a head see only the head's previous state. The recurrent matrix is
the block-diagonal :func:`minirec.cells.rnn.block_diagonal`, ``W[g·H + h·dh + j,
h·dh + k] = W_hh[h, g·dh + j, k]``; ``W_ih``, ``b_ih``, ``b_hh`` keep the full
cell's shapes and layout. ``forward`` detects it from ``W_hh.ndim == 3``. The
equations above hold with ``h_{t-1} W_hh^T`` read per head
(:func:`minirec.cells.rnn.head_recurrent`); in the backward
``dh_prev[h·dh + k] += Σ_{g,j} d·[g·H + h·dh + j] W_hh[h, g·dh + j, k]`` and
``dW_hh[h] = Σ_B d·_h^T h_{t-1, h}`` (``d·`` the gradient of the recurrent
pre-activations, ``_h`` the head's rows). The Jacobian is block-diagonal over
the heads; :func:`step_jacobian` returns it in the full cell's shape (zeros
between heads), while ``method="newton"`` solves head by head
(:func:`minirec.cells.rnn.newton_heads`: given ``x`` each head is the full
cell of hidden size ``dh``, a Newton scan of its own ``(2dh, 2dh)`` blocks on
the head's ``(h, c)``). Kernels:
:mod:`minirec.kernels.numba.multihead` and :mod:`minirec.kernels.cuda.multihead`
(``_backend.kernels("multihead", backend)``: the whole time loop with each
head's block in cache on the CPU, in shared memory on the GPU).
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np

from minirec import _backend, bptt
from minirec import _math as M
from minirec import _validate as V
from minirec.cells import rnn  # the multi-head layout and its helpers
from minirec.scan import newton

METHODS = ("recurrent", "newton")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# the methods each non-NumPy backend has kernels for (NumPy runs them all)
BACKEND_METHODS = {"numba": ("recurrent", "newton"), "cupy": ("recurrent", "newton"),
                   "cuda-emulated": ("recurrent", "newton")}
# the diagonal (ParaRNN) cell: the multi-head kernels with heads of one unit
DIAGONAL_BACKEND_METHODS = BACKEND_METHODS
GATES = 4  # i, f, g, o
PARAM_SHAPES = {"W_ih": ("G", "D"), "W_hh": ("G", "H"), "b_ih": ("G",), "b_hh": ("G",)}
DIAGONAL_PARAM_SHAPES = {"W_ih": ("G", "D"), "W_hh": ("G",), "b_ih": ("G",), "b_hh": ("G",)}


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
        seq: ``backend="numpy"``, ``method="recurrent"``: the
            :class:`minirec.bptt.SequenceCache` of the loop over
            :func:`step_forward`; ``None`` otherwise.
        kernel: other backends: the kernel module's own cache (see
            ``_backend.kernels("lstm", backend)``); ``None`` for NumPy.
        y_like: zeros shaped and typed like ``y (B, T, H)`` (a read-only view
            that holds no memory): what ``dy`` is checked against.
        state_like: the same for the final state ``(h, c)``, each ``(B, H)``.
        param_shapes: ``{name: shape}`` of the params the forward ran with.
        method, backend: the forward's options.
        newton: ``method="newton"``: the :class:`minirec.scan.newton.NewtonCache`
            (``.iterations``, ``.residual``; a :class:`minirec.cells.rnn.HeadsNewtonCache`
            with the same fields for a multi-head cell); ``None`` otherwise.
    """

    seq: bptt.SequenceCache | None
    kernel: Any
    y_like: np.ndarray
    state_like: tuple[np.ndarray, np.ndarray]
    param_shapes: dict
    method: str
    backend: str
    newton: newton.NewtonCache | rnn.HeadsNewtonCache | None = None


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64, diagonal: bool = False, *,
                num_heads: int | None = None) -> dict[str, np.ndarray]:
    """PyTorch's initialisation: every entry ~ U(−1/√H, 1/√H).

    Returns ``{"W_ih": (4H, D), "W_hh": (4H, H), "b_ih": (4H,), "b_hh": (4H,)}``;
    with ``diagonal=True`` (ParaRNN) ``W_hh`` is the vector ``(4H,)`` of the
    four diagonals; with ``num_heads=NH`` (a divisor of H) it is the heads'
    blocks ``(NH, 4·dh, dh)`` (the same draws: ``num_heads=1`` gives ``W_hh[None]``).
    """
    return rnn.classic_init("lstm", rng, input_size, hidden_size, GATES, dtype, num_heads,
                            diagonal)


def _is_diagonal(params) -> bool:
    """``W_hh`` given as the vector of diagonals ``(4H,)`` (ParaRNN)."""
    return isinstance(params, dict) and getattr(params.get("W_hh"), "ndim", 2) == 1


def _hidden_size(W_hh) -> int:
    return rnn.hidden_size(W_hh, GATES)


def zero_state(params: dict, batch_size: int, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """``(h_{-1}, c_{-1}) = (0, 0)``, each of shape ``(B, H)`` (CuPy arrays when the
    params are)."""
    W_hh = params["W_hh"]
    xp, shape = _backend.xp_of(W_hh), (batch_size, _hidden_size(W_hh))
    return xp.zeros(shape, dtype or W_hh.dtype), xp.zeros(shape, dtype or W_hh.dtype)


def _check(params, x, state0):
    if rnn.is_multihead(params):
        return rnn.check_heads("lstm", params, x, state0, GATES, [("B", "H"), ("B", "H")],
                           ("h0", "c0"))
    if _is_diagonal(params):
        dtype, s = V.cell_inputs("lstm", params, DIAGONAL_PARAM_SHAPES, x, state0,
                                 [("B", "H"), ("B", "H")], state_names=("h0", "c0"))
        H = s.dims.get("H", s["G"] // GATES)
        if s["G"] != GATES * H:
            raise ValueError(f"lstm: W_hh: expected shape (4H,) = ({GATES * H},) (diagonal "
                             f"recurrence: w_i, w_f, w_g, w_o stacked) for H = {H}, got "
                             f"{params['W_hh'].shape}")
        return dtype
    dtype, s = V.cell_inputs("lstm", params, PARAM_SHAPES, x, state0,
                             [("B", "H"), ("B", "H")], state_names=("h0", "c0"))
    if s["G"] != GATES * s["H"]:
        raise ValueError(f"lstm: W_hh: expected shape (4H, H) = ({GATES * s['H']}, {s['H']}) "
                         f"(gates i, f, g, o stacked on axis 0), got {params['W_hh'].shape}")
    return dtype


def _hh(h_prev, W_hh):
    """``h_{t-1} W_hh^T`` ``(B, 4H)``; for a diagonal ``W_hh (4H,)`` each gate's
    ``w_gate ⊙ h_{t-1}``."""
    if W_hh.ndim == 2:
        return h_prev @ W_hh.T
    if W_hh.ndim == 3:  # multi-head: per head
        return rnn.head_recurrent(h_prev, W_hh)
    B, H = h_prev.shape
    return (h_prev[:, None, :] * W_hh.reshape(-1, H)).reshape(B, W_hh.shape[0])


def _hh_backward(da, h_prev, W_hh):
    """Back through :func:`_hh`: ``(dh_prev, dW_hh)``."""
    if W_hh.ndim == 2:
        return da @ W_hh, da.T @ h_prev
    if W_hh.ndim == 3:  # multi-head
        return rnn.head_recurrent_backward(da, h_prev, W_hh)
    B, H = h_prev.shape
    dg = da.reshape(B, W_hh.shape[0] // H, H)
    return (dg * W_hh.reshape(-1, H)).sum(axis=1), (dg * h_prev[:, None, :]).sum(axis=0).ravel()




def step_forward(params: dict, x_t: np.ndarray,
                 state: tuple[np.ndarray, np.ndarray]) -> tuple[tuple, StepCache]:
    """One step ``(h_{t-1}, c_{t-1}), x_t → (h_t, c_t)`` (equations in the module docstring).

    ``x_t (B, D)``, ``state = (h_prev (B, H), c_prev (B, H))``. Returns the new
    state ``(h_t, c_t)`` and a :class:`StepCache`.
    """
    h_prev, c_prev = state
    a = x_t @ params["W_ih"].T + params["b_ih"] + _hh(h_prev, params["W_hh"]) + params["b_hh"]
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
    dh_prev, dW_hh = _hh_backward(da, h_prev, params["W_hh"])
    dparams = {"W_ih": da.T @ x_t, "W_hh": dW_hh, "b_ih": db, "b_hh": db.copy()}
    return da @ params["W_ih"], (dh_prev, dc_prev), dparams


def step_jacobian(params: dict, x_t: np.ndarray,
                  state: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """``J = ∂(h_t, c_t)/∂(h_{t-1}, c_{t-1})`` (module docstring) for
    :mod:`minirec.scan.newton`.

    Full W_hh: ``(B, 2H, 2H)`` on the flat state ``[h | c]``
    (``J[b, i, j] = ∂s_t[b, i]/∂s_{t-1}[b, j]``). Diagonal W_hh ``(4H,)``: one
    2×2 block per unit, ``(B, H, 2, 2)`` with ``J[b, j] = [[∂h_j/∂h_j, ∂h_j/∂c_j],
    [∂c_j/∂h_j, ∂c_j/∂c_j]]``. Multi-head ``W_hh``: the full shape, zero between heads.
    """
    h_prev, c_prev = state
    _, (_, _, _, _, i, f, g, o, tanh_c) = step_forward(params, x_t, state)
    beta = [g * M.dsigmoid_from_output(i),        # β_i = ∂c/∂a_i
            c_prev * M.dsigmoid_from_output(f),   # β_f
            i * M.dtanh_from_output(g)]           # β_g
    beta_o = tanh_c * M.dsigmoid_from_output(o)   # ∂h/∂a_o
    gamma = o * M.dtanh_from_output(tanh_c)       # ∂h/∂c_t
    W_hh = params["W_hh"]
    B, H = h_prev.shape
    xp = _backend.xp_of(h_prev)
    if W_hh.ndim == 1:
        w = W_hh.reshape(GATES, H)
        ch = beta[0] * w[0] + beta[1] * w[1] + beta[2] * w[2]
        J = xp.empty((B, H, 2, 2), h_prev.dtype)
        J[..., 0, 0] = gamma * ch + beta_o * w[3]
        J[..., 0, 1] = gamma * f
        J[..., 1, 0] = ch
        J[..., 1, 1] = f
        return J
    W = (rnn.block_diagonal(W_hh) if W_hh.ndim == 3 else W_hh).reshape(GATES, H, H)
    ch = (beta[0][:, :, None] * W[0] + beta[1][:, :, None] * W[1]
          + beta[2][:, :, None] * W[2])
    J = xp.zeros((B, 2 * H, 2 * H), h_prev.dtype)
    J[:, :H, :H] = gamma[:, :, None] * ch + beta_o[:, :, None] * W[3]
    J[:, H:, :H] = ch
    idx = xp.arange(H)
    J[:, idx, H + idx] = gamma * f
    J[:, H + idx, H + idx] = f
    return J


def forward(params: dict, x: np.ndarray, state0: tuple | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy",
            newton_options: dict | None = None) -> tuple[np.ndarray, tuple, LSTMCache]:
    """Run the LSTM over ``x (B, T, D)`` from ``state0 = (h0, c0)``, each ``(B, H)``
    (zeros if ``None``).

    ``method="newton"`` solves every step at once (:func:`minirec.scan.newton.solve`;
    ``newton_options``: its ``max_iter``, ``tol``, ``guess``, ``scan_method``,
    ``on_fail``; ``chunk_size`` goes to its scan). ``chunk_size`` is otherwise
    accepted for the common cell API and checked all the same. A diagonal
    ``W_hh (4H,)`` (ParaRNN) or a multi-head ``W_hh (NH, 4dh, dh)`` is detected
    from the params. Returns
    ``y (B, T, H)`` (every ``h_t``), the final state ``(h, c)`` and the
    :class:`LSTMCache` for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    _backend.resolve(backend, BACKENDS, what="cells.lstm", method=method,
                     backend_methods=BACKEND_METHODS)
    if _is_diagonal(params):
        _backend.check_method(method, backend, DIAGONAL_BACKEND_METHODS,
                              what="cells.lstm with a diagonal W_hh (ParaRNN)")
    dtype = _check(params, x, state0)
    opts = newton.options(newton_options, method)
    s0 = zero_state(params, x.shape[0], dtype) if state0 is None else tuple(state0)
    seq = kernel = solve = None
    if method == "newton":  # a multi-head cell: a solve per head (independent given x)
        solver = rnn.newton_heads if rnn.is_multihead(params) else newton.solve
        y, state, solve = solver(step_forward, step_jacobian, params, x, s0,
                                       chunk_size=chunk_size, backend=backend, **opts)
    elif backend == "numpy":  # the definition: BPTT's loop over step_forward
        y, state, seq = bptt.sequence_forward(step_forward, params, x, s0)
    elif rnn.is_multihead(params) or _is_diagonal(params):  # heads' blocks in cache / shared
        y, state, kernel = rnn.heads_kernel_forward("lstm", params, x, s0, backend, GATES)
    else:
        y, state, kernel = _backend.kernels("lstm", backend).forward(params, x, s0)
    return y, state, LSTMCache(seq, kernel, V.zeros_view(y), tuple(map(V.zeros_view, state)),
                               V.param_shapes(params), method, backend, solve)


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
    if cache.method == "newton":  # the implicit-function theorem: one reverse scan
        solve_backward = rnn.newton_heads_backward if rnn.is_multihead(params) else newton.backward
        return solve_backward(step_backward, step_jacobian, params, cache.newton, dy, dstate)
    if cache.backend != "numpy" and (rnn.is_multihead(params) or _is_diagonal(params)):
        return rnn.heads_kernel_backward(params, cache.kernel, dy, dstate, cache.backend, GATES)
    if cache.backend != "numpy":
        return _backend.kernels("lstm", cache.backend).backward(params, cache.kernel, dy, dstate)
    return bptt.sequence_backward(step_backward, params, cache.seq, dy, dstate)


# the ParaRNN variant as a cell of its own (the registry's "lstm_diagonal"): the
# same functions, diagonal parameters, and the backends it runs each method on
DIAGONAL = SimpleNamespace(
    __name__="minirec.cells.lstm[diagonal]", METHODS=METHODS, BACKENDS=BACKENDS,
    BACKEND_METHODS=DIAGONAL_BACKEND_METHODS, init_params=partial(init_params, diagonal=True),
    zero_state=zero_state, step_forward=step_forward, step_backward=step_backward,
    step_jacobian=step_jacobian, forward=forward, backward=backward)
