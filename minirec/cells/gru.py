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
``step_forward``/``step_backward`` (the definition). Other backends run the same
equations behind the backend seam, ``_backend.kernels("gru", backend)``
(:mod:`minirec.kernels.numba.gru`: one GEMM for ``gi`` over all T, the fused
time loop with ``gh``, GEMMs for the weight gradients from ``dgi`` and ``dgh``;
:mod:`minirec.kernels.cuda.gru` for ``"cupy"`` and ``"cuda-emulated"``: the same
GEMMs, and per step one GEMM ``h_{t-1} W_hh^T`` and one fused gate kernel).

Step Jacobian (:func:`step_jacobian`), for ``method="newton"`` — the same
derivatives as the backward, read as a matrix (``W_hr, W_hz, W_hn`` the three
``(H, H)`` blocks of ``W_hh``):

    α_r = (1 − z) ⊙ (1 − n²) ⊙ gh_n ⊙ r ⊙ (1 − r)
    α_z = (h_{t-1} − n) ⊙ z ⊙ (1 − z)
    α_n = (1 − z) ⊙ (1 − n²) ⊙ r
    J_t = ∂h_t/∂h_{t-1} = diag(z) + diag(α_r) W_hr + diag(α_z) W_hz + diag(α_n) W_hn   (B, H, H)

``method="newton"`` solves all T steps at once by Newton's method
(:mod:`minirec.scan.newton`, DEER): each iteration evaluates every step in one
batched call and solves ``δ_t = J_t δ_{t−1} + r_t`` with a linear scan; its
backward is one reverse scan with the converged Jacobians (the
implicit-function theorem). With ``backend="numba"``, ``"cupy"`` or
``"cuda-emulated"`` the scans run on that backend, the steps in NumPy (CuPy).

**Diagonal recurrence (ParaRNN).** ``init_params(..., diagonal=True)`` gives
``W_hh`` as a vector ``(3H,)`` ``= [w_r | w_z | w_n]``: each unit sees only its
own previous value, ``gh = [w_r ⊙ h_{t-1} | w_z ⊙ h_{t-1} | w_n ⊙ h_{t-1}] + b_hh``
(the GRU of Danieli et al. 2025, "ParaRNN", with PyTorch's gate equations
otherwise). ``forward`` detects it from ``W_hh.ndim == 1``. The Jacobian is then
diagonal, ``J_t = z + α_r ⊙ w_r + α_z ⊙ w_z + α_n ⊙ w_n`` ``(B, H)``, so a Newton
iteration is a diagonal scan (:mod:`minirec.scan.linear`). In the backward,
``dh_prev = dh ⊙ z + Σ_gates dgh_gate ⊙ w_gate`` and ``dw_gate = Σ_B dgh_gate ⊙
h_{t-1}``. Every backend runs both methods: ``"recurrent"`` on the multi-head kernels
(:func:`minirec.cells.rnn.as_heads`: the diagonal ``W_hh`` is ``H`` heads of one
unit, ``(H, G, 1)``; a 1×1 block per unit and gate is the diagonal),
``"newton"`` on every backend's scans (:data:`DIAGONAL_BACKEND_METHODS`;
:data:`DIAGONAL` is the variant as a cell, the registry's ``"gru_diagonal"``).

**Multi-head (FlashRNN).** ``init_params(..., num_heads=NH)`` gives ``W_hh`` as
``NH`` blocks ``(NH, 3·dh, dh)``, ``dh = H / NH``, each head's gates r, z, n
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
cell of hidden size ``dh``, a Newton scan of its own ``(dh, dh)`` blocks). Kernels:
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
GATES = 3  # r, z, n
PARAM_SHAPES = {"W_ih": ("G", "D"), "W_hh": ("G", "H"), "b_ih": ("G",), "b_hh": ("G",)}
DIAGONAL_PARAM_SHAPES = {"W_ih": ("G", "D"), "W_hh": ("G",), "b_ih": ("G",), "b_hh": ("G",)}


class StepCache(NamedTuple):
    """What one step keeps for its backward."""

    params: dict
    x_t: np.ndarray      # (B, D)
    h_prev: np.ndarray   # (B, H)
    r: np.ndarray        # reset gate σ(gi_r + gh_r)
    z: np.ndarray        # update gate σ(gi_z + gh_z)
    n: np.ndarray        # candidate tanh(gi_n + r ⊙ gh_n)
    gh_n: np.ndarray     # h_{t-1} W_hn^T + b_hn


class GRUCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`.

    Fields:
        seq: ``backend="numpy"``, ``method="recurrent"``: the
            :class:`minirec.bptt.SequenceCache` of the loop over
            :func:`step_forward`; ``None`` otherwise.
        kernel: other backends: the kernel module's own cache (see
            ``_backend.kernels("gru", backend)``); ``None`` for NumPy.
        y_like: zeros shaped and typed like ``y (B, T, H)`` (a read-only view
            that holds no memory): what ``dy`` is checked against.
        state_like: the same for the final state ``h (B, H)``.
        param_shapes: ``{name: shape}`` of the params the forward ran with.
        method, backend: the forward's options.
        newton: ``method="newton"``: the :class:`minirec.scan.newton.NewtonCache`
            (``.iterations``, ``.residual``; a :class:`minirec.cells.rnn.HeadsNewtonCache`
            with the same fields for a multi-head cell); ``None`` otherwise.
    """

    seq: bptt.SequenceCache | None
    kernel: Any
    y_like: np.ndarray
    state_like: np.ndarray
    param_shapes: dict
    method: str
    backend: str
    newton: newton.NewtonCache | rnn.HeadsNewtonCache | None = None


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64, diagonal: bool = False, *,
                num_heads: int | None = None) -> dict[str, np.ndarray]:
    """PyTorch's initialisation: every entry ~ U(−1/√H, 1/√H).

    Returns ``{"W_ih": (3H, D), "W_hh": (3H, H), "b_ih": (3H,), "b_hh": (3H,)}``;
    with ``diagonal=True`` (ParaRNN) ``W_hh`` is the vector ``(3H,)`` of the
    three diagonals; with ``num_heads=NH`` (a divisor of H) it is the heads'
    blocks ``(NH, 3·dh, dh)`` (the same draws: ``num_heads=1`` gives ``W_hh[None]``).
    """
    return rnn.classic_init("gru", rng, input_size, hidden_size, GATES, dtype, num_heads,
                            diagonal)


def _is_diagonal(params) -> bool:
    """``W_hh`` given as the vector of diagonals ``(3H,)`` (ParaRNN)."""
    return isinstance(params, dict) and getattr(params.get("W_hh"), "ndim", 2) == 1


def _hidden_size(W_hh) -> int:
    return rnn.hidden_size(W_hh, GATES)


def zero_state(params: dict, batch_size: int, dtype=None) -> np.ndarray:
    """``h_{-1} = 0`` of shape ``(B, H)`` (a CuPy array when the params are)."""
    W_hh = params["W_hh"]
    return _backend.xp_of(W_hh).zeros((batch_size, _hidden_size(W_hh)), dtype or W_hh.dtype)


def _check(params, x, state0):
    if rnn.is_multihead(params):
        return rnn.check_heads("gru", params, x, state0, GATES)
    if _is_diagonal(params):
        dtype, s = V.cell_inputs("gru", params, DIAGONAL_PARAM_SHAPES, x, state0, ("B", "H"))
        H = s.dims.get("H", s["G"] // GATES)
        if s["G"] != GATES * H:
            raise ValueError(f"gru: W_hh: expected shape (3H,) = ({GATES * H},) (diagonal "
                             f"recurrence: w_r, w_z, w_n stacked) for H = {H}, got "
                             f"{params['W_hh'].shape}")
        return dtype
    dtype, s = V.cell_inputs("gru", params, PARAM_SHAPES, x, state0, ("B", "H"))
    if s["G"] != GATES * s["H"]:
        raise ValueError(f"gru: W_hh: expected shape (3H, H) = ({GATES * s['H']}, {s['H']}) "
                         f"(gates r, z, n stacked on axis 0), got {params['W_hh'].shape}")
    return dtype


def _hh(h_prev, W_hh):
    """``h_{t-1} W_hh^T`` ``(B, 3H)``; for a diagonal ``W_hh (3H,)`` each gate's
    ``w_gate ⊙ h_{t-1}``."""
    if W_hh.ndim == 2:
        return h_prev @ W_hh.T
    if W_hh.ndim == 3:  # multi-head: per head
        return rnn.head_recurrent(h_prev, W_hh)
    B, H = h_prev.shape
    return (h_prev[:, None, :] * W_hh.reshape(-1, H)).reshape(B, W_hh.shape[0])


def _hh_backward(dgh, h_prev, W_hh):
    """Back through :func:`_hh`: ``(dh_prev part, dW_hh)``."""
    if W_hh.ndim == 2:
        return dgh @ W_hh, dgh.T @ h_prev
    if W_hh.ndim == 3:  # multi-head
        return rnn.head_recurrent_backward(dgh, h_prev, W_hh)
    B, H = h_prev.shape
    dg = dgh.reshape(B, W_hh.shape[0] // H, H)
    return (dg * W_hh.reshape(-1, H)).sum(axis=1), (dg * h_prev[:, None, :]).sum(axis=0).ravel()




def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray) -> tuple[np.ndarray,
                                                                             StepCache]:
    """One step ``h_{t-1}, x_t → h_t`` (equations in the module docstring).

    ``x_t (B, D)``, ``h_prev (B, H)`` → ``h_t (B, H)`` and a :class:`StepCache`.
    """
    H = h_prev.shape[-1]
    gi = x_t @ params["W_ih"].T + params["b_ih"]
    gh = _hh(h_prev, params["W_hh"]) + params["b_hh"]
    rz = M.sigmoid(gi[:, :2 * H] + gh[:, :2 * H])  # r and z in one call
    r, z = rz[:, :H], rz[:, H:]
    gh_n = gh[:, 2 * H:]
    n = M.tanh(gi[:, 2 * H:] + r * gh_n)
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
    da_n = dn * M.dtanh_from_output(n)
    dr = da_n * gh_n
    # through the sigmoids
    da_r = dr * M.dsigmoid_from_output(r)
    da_z = dz * M.dsigmoid_from_output(z)
    dgi = np.concatenate([da_r, da_z, da_n], axis=-1)
    dgh = np.concatenate([da_r, da_z, da_n * r], axis=-1)
    # through the two affine maps
    dh_hh, dW_hh = _hh_backward(dgh, h_prev, params["W_hh"])
    dparams = {"W_ih": dgi.T @ x_t, "W_hh": dW_hh,
               "b_ih": dgi.sum(axis=0), "b_hh": dgh.sum(axis=0)}
    return dgi @ params["W_ih"], dh * z + dh_hh, dparams


def step_jacobian(params: dict, x_t: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
    """``J = ∂h_t/∂h_{t-1}`` (module docstring) for :mod:`minirec.scan.newton`:
    full ``(B, H, H)`` with ``J[b, i, j] = ∂h_t[b, i]/∂h_{t-1}[b, j]``, or, for a
    diagonal ``W_hh (3H,)``, the diagonal ``(B, H)``. Multi-head ``W_hh``: the
    full shape, zero between heads."""
    _, (_, _, _, r, z, n, gh_n) = step_forward(params, x_t, h_prev)
    dn = (1 - z) * M.dtanh_from_output(n)                       # ∂h/∂a_n
    alpha = [dn * gh_n * M.dsigmoid_from_output(r),              # α_r
             (h_prev - n) * M.dsigmoid_from_output(z),           # α_z
             dn * r]                                             # α_n
    W_hh = params["W_hh"]
    H = h_prev.shape[-1]
    if W_hh.ndim == 1:
        w = W_hh.reshape(GATES, H)
        return z + alpha[0] * w[0] + alpha[1] * w[1] + alpha[2] * w[2]
    xp = _backend.xp_of(h_prev)
    W = (rnn.block_diagonal(W_hh) if W_hh.ndim == 3 else W_hh).reshape(GATES, H, H)
    J = (alpha[0][:, :, None] * W[0] + alpha[1][:, :, None] * W[1]
         + alpha[2][:, :, None] * W[2])
    idx = xp.arange(H)
    J[:, idx, idx] += z
    return J


def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy",
            newton_options: dict | None = None) -> tuple[np.ndarray, np.ndarray, GRUCache]:
    """Run the GRU over ``x (B, T, D)`` from ``state0 (B, H)`` (zeros if ``None``).

    ``method="newton"`` solves every step at once (:func:`minirec.scan.newton.solve`;
    ``newton_options``: its ``max_iter``, ``tol``, ``guess``, ``scan_method``,
    ``on_fail``; ``chunk_size`` goes to its scan). ``chunk_size`` is otherwise
    accepted for the common cell API and checked all the same. A diagonal
    ``W_hh (3H,)`` (ParaRNN) or a multi-head ``W_hh (NH, 3dh, dh)`` is detected
    from the params. Returns
    ``y (B, T, H)``, the final ``h (B, H)`` and the :class:`GRUCache` for
    :func:`backward`.
    """
    V.choice("method", method, METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    _backend.resolve(backend, BACKENDS, what="cells.gru", method=method,
                     backend_methods=BACKEND_METHODS)
    if _is_diagonal(params):
        _backend.check_method(method, backend, DIAGONAL_BACKEND_METHODS,
                              what="cells.gru with a diagonal W_hh (ParaRNN)")
    dtype = _check(params, x, state0)
    opts = newton.options(newton_options, method)
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    seq = kernel = solve = None
    if method == "newton":  # a multi-head cell: a solve per head (independent given x)
        solver = rnn.newton_heads if rnn.is_multihead(params) else newton.solve
        y, h, solve = solver(step_forward, step_jacobian, params, x, h0,
                                   chunk_size=chunk_size, backend=backend, **opts)
    elif backend == "numpy":  # the definition: BPTT's loop over step_forward
        y, h, seq = bptt.sequence_forward(step_forward, params, x, h0)
    elif rnn.is_multihead(params) or _is_diagonal(params):  # heads' blocks in cache / shared
        y, h, kernel = rnn.heads_kernel_forward("gru", params, x, h0, backend, GATES)
    else:
        y, h, kernel = _backend.kernels("gru", backend).forward(params, x, h0)
    return y, h, GRUCache(seq, kernel, V.zeros_view(y), V.zeros_view(h), V.param_shapes(params),
                          method, backend, solve)


def backward(params: dict, cache: GRUCache, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BPTT: gradients for ``W_ih, W_hh, b_ih, b_hh``, ``"x" (B, T, D)`` and
    ``"state0" (B, H)``. ``dy (B, T, H)`` and ``dstate (B, H)`` may be ``None``."""
    V.cache("gru", cache, GRUCache)
    V.params_match("gru", params, cache.param_shapes)
    fill = cache.backend != "numpy"  # kernels take arrays: None becomes zeros
    dy = V.grad_like("dy", dy, cache.y_like, "y", fill=fill)
    dstate = V.grad_state("dstate", dstate, cache.state_like, fill=fill)
    if cache.method == "newton":  # the implicit-function theorem: one reverse scan
        solve_backward = rnn.newton_heads_backward if rnn.is_multihead(params) else newton.backward
        return solve_backward(step_backward, step_jacobian, params, cache.newton, dy, dstate)
    if cache.backend != "numpy" and (rnn.is_multihead(params) or _is_diagonal(params)):
        return rnn.heads_kernel_backward(params, cache.kernel, dy, dstate, cache.backend, GATES)
    if cache.backend != "numpy":
        return _backend.kernels("gru", cache.backend).backward(params, cache.kernel, dy, dstate)
    return bptt.sequence_backward(step_backward, params, cache.seq, dy, dstate)


# the ParaRNN variant as a cell of its own (the registry's "gru_diagonal"): the
# same functions, diagonal parameters, and the backends it runs each method on
DIAGONAL = SimpleNamespace(
    __name__="minirec.cells.gru[diagonal]", METHODS=METHODS, BACKENDS=BACKENDS,
    BACKEND_METHODS=DIAGONAL_BACKEND_METHODS, init_params=partial(init_params, diagonal=True),
    zero_state=zero_state, step_forward=step_forward, step_backward=step_backward,
    step_jacobian=step_jacobian, forward=forward, backward=backward)
