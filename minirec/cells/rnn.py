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

**Multi-head (FlashRNN).** ``init_params(..., num_heads=NH)`` gives ``W_hh`` as
``NH`` blocks ``(NH, dh, dh)``, ``dh = H / NH``: the hidden units split into
``NH`` heads of ``dh`` units (unit ``h·dh + j`` is unit ``j`` of head ``h``), and
each head sees only its own previous state. The recurrent matrix is the
block-diagonal ``W = blockdiag(W_hh[0], …, W_hh[NH−1])`` (:func:`block_diagonal`);
``W_ih``, ``b_ih``, ``b_hh`` keep the full cell's shapes. ``forward`` detects
it from ``W_hh.ndim == 3``. Head ``h`` is exactly a PyTorch cell of hidden size
``dh`` with ``W_hh[h]`` as its ``weight_hh`` and the head's rows of ``W_ih``,
and the equations above hold with ``h_{t-1} W_hh^T`` read per head
(:func:`head_recurrent`),

    (h_{t-1} W^T)[h·dh + j] = Σ_k W_hh[h, j, k] h_{t-1}[h·dh + k]
    dh_{t-1}[h·dh + k] = Σ_j da[h·dh + j] W_hh[h, j, k]     dW_hh[h] += da_h^T h_{t-1, h}

(``da_h``, ``h_{t-1, h}`` the head's ``(B, dh)`` slices). The Jacobian is
block-diagonal, ``diag(φ'(a_t)) W``; :func:`step_jacobian` returns it as the
full ``(B, H, H)`` matrix (zeros off the heads' blocks: what
:func:`minirec.scan.newton.check_jacobian` and :func:`minirec.scan.newton.cell`
take). ``method="newton"`` uses the blocks instead: given ``x`` the heads are
independent recurrences, head ``h`` the full cell of hidden size ``dh`` with
its rows of ``W_ih, b_ih, b_hh`` and ``W_hh[h]`` (:func:`head_params`), so
:func:`newton_heads` solves each head on its own, a Newton scan of ``(dh, dh)``
Jacobians (``(2dh, 2dh)`` for the LSTM's ``(h, c)``) instead of ``(H, H)``:
``NH²`` times less work per combine, and a NaN in one head's gradient stays in
that head, as in the definition. Kernels: :mod:`minirec.kernels.numba.multihead` and
:mod:`minirec.kernels.cuda.multihead` (``_backend.kernels("multihead", backend)``:
each head's block in cache on the CPU, in shared memory on the GPU). The GRU and
LSTM (:mod:`minirec.cells.gru`, :mod:`minirec.cells.lstm`) take ``num_heads``
the same way, ``W_hh (NH, G·dh, dh)`` with each head's gates stacked in
PyTorch's order; the helpers here serve all three.

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
MULTIHEAD_PARAM_SHAPES = {"W_ih": ("H", "D"), "W_hh": ("NH", "dh", "dh"), "b_ih": ("H",),
                          "b_hh": ("H",)}


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
            (``.iterations``, ``.residual``; a :class:`HeadsNewtonCache` with the
            same fields for a multi-head cell); ``None`` otherwise.
    """

    seq: bptt.SequenceCache | None
    kernel: Any
    y_like: np.ndarray
    state_like: np.ndarray
    param_shapes: dict
    nonlinearity: str
    method: str
    backend: str
    newton: newton.NewtonCache | HeadsNewtonCache | None = None


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64, *, num_heads: int | None = None) -> dict[str, np.ndarray]:
    """PyTorch's initialisation: every entry ~ U(−1/√H, 1/√H).

    Returns ``{"W_ih": (H, D), "W_hh": (H, H), "b_ih": (H,), "b_hh": (H,)}``; with
    ``num_heads=NH`` (a divisor of H) ``W_hh`` is the heads' blocks ``(NH, dh, dh)``
    (the same draws: ``num_heads=1`` gives the full cell's ``W_hh[None]``).
    """
    return classic_init("rnn", rng, input_size, hidden_size, 1, dtype, num_heads)


def classic_init(where: str, rng: np.random.Generator, input_size: int, hidden_size: int,
                 gates: int, dtype, num_heads: int | None,
                 diagonal: bool = False) -> dict[str, np.ndarray]:
    """The classic cells' init: U(−1/√H, 1/√H) for ``W_ih (G·H, D)``, ``W_hh``
    (full ``(G·H, H)``, diagonal ``(G·H,)`` or per head ``(NH, G·dh, dh)``),
    ``b_ih``, ``b_hh (G·H,)``, drawn in this order."""
    G = gates * hidden_size
    if num_heads is None:
        W_hh = (G,) if diagonal else (G, hidden_size)
    else:
        V.positive_int("num_heads", num_heads)
        if diagonal:
            raise ValueError(f"{where}: num_heads: expected None with diagonal=True (a "
                             f"diagonal W_hh has no heads), got {num_heads}")
        if hidden_size % num_heads:
            raise ValueError(f"{where}: num_heads: expected a divisor of hidden_size="
                             f"{hidden_size}, got {num_heads}")
        dh = hidden_size // num_heads
        W_hh = (num_heads, gates * dh, dh)
    k = 1.0 / np.sqrt(hidden_size)
    shapes = {"W_ih": (G, input_size), "W_hh": W_hh, "b_ih": (G,), "b_hh": (G,)}
    return {n: rng.uniform(-k, k, s).astype(dtype) for n, s in shapes.items()}


def is_multihead(params) -> bool:
    """``W_hh`` given as the heads' blocks ``(NH, G·dh, dh)`` (multi-head cell)."""
    return isinstance(params, dict) and getattr(params.get("W_hh"), "ndim", 2) == 3


def hidden_size(W_hh, gates: int = 1) -> int:
    """H from ``W_hh``: full ``(G·H, H)``, diagonal ``(G·H,)`` or per head
    ``(NH, G·dh, dh)``."""
    if W_hh.ndim == 3:
        return W_hh.shape[0] * W_hh.shape[2]
    return W_hh.shape[0] // gates if W_hh.ndim == 1 else W_hh.shape[1]


def zero_state(params: dict, batch_size: int, dtype=None) -> np.ndarray:
    """``h_{-1} = 0`` of shape ``(B, H)`` (a CuPy array when the params are)."""
    W_hh = params["W_hh"]
    return _backend.xp_of(W_hh).zeros((batch_size, hidden_size(W_hh)), dtype or W_hh.dtype)


def check_heads(where: str, params: dict, x, state0, gates: int,
                state_spec: Any = ("B", "H"), state_names=None) -> np.dtype:
    """The checks of a multi-head cell's inputs: the full cell's, with
    ``W_hh (NH, G·dh, dh)`` and ``H = NH·dh``. Returns the computation dtype."""
    spec = {"W_ih": ("G", "D"), "W_hh": ("NH", "Gd", "dh"), "b_ih": ("G",), "b_hh": ("G",)}
    dtype, s = V.cell_inputs(where, params, spec, x, state0, state_spec,
                             state_names=state_names)
    NH, dh = s["NH"], s["dh"]
    H = NH * dh
    if s["Gd"] != gates * dh:
        raise ValueError(f"{where}: W_hh: expected shape (NH, {gates}·dh, dh) = "
                         f"({NH}, {gates * dh}, {dh}) (one block per head, the head's gates "
                         f"stacked), got {tuple(params['W_hh'].shape)}")
    if s["G"] != gates * H:
        raise ValueError(f"{where}: W_ih: expected shape ({gates}H, D) = ({gates * H}, "
                         f"{s['D']}) with H = NH·dh = {NH}·{dh} from W_hh "
                         f"{tuple(params['W_hh'].shape)}, got {tuple(params['W_ih'].shape)}")
    if state0 is not None and s["H"] != H:
        name, h0 = ("state0", state0) if state_names is None else \
            (f"state0[0] ({state_names[0]})", state0[0])
        raise ValueError(f"{where}: {name}: expected shape (B, H) with H = NH·dh = {H} from "
                         f"W_hh {tuple(params['W_hh'].shape)}, got {tuple(h0.shape)}")
    return dtype


def _check(params, x, state0):
    if is_multihead(params):
        return check_heads("rnn", params, x, state0, 1)
    return V.cell_inputs("rnn", params, PARAM_SHAPES, x, state0, ("B", "H"))[0]


def head_recurrent(h_prev: np.ndarray, W_hh: np.ndarray) -> np.ndarray:
    """``h_{t-1} W^T`` for the block-diagonal ``W`` of the heads' blocks
    ``W_hh (NH, G·dh, dh)``: ``h_prev (B, H)`` → ``(B, G·H)`` in the full cell's
    gate-major layout,

        out[b, g·H + h·dh + j] = Σ_k W_hh[h, g·dh + j, k] h_prev[b, h·dh + k].
    """
    NH, Gd, dh = W_hh.shape
    B = h_prev.shape[0]
    hp = h_prev.reshape(B, NH, dh).transpose(1, 0, 2)          # (NH, B, dh)
    out = hp @ W_hh.transpose(0, 2, 1)                         # (NH, B, G·dh)
    return out.reshape(NH, B, Gd // dh, dh).transpose(1, 2, 0, 3).reshape(B, Gd * NH)


def head_recurrent_backward(dg: np.ndarray, h_prev: np.ndarray,
                            W_hh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Back through :func:`head_recurrent`, ``dg = ∂L/∂out (B, G·H)``:
    ``dh_prev[b, h·dh + k] = Σ_{g,j} dg[b, g·H + h·dh + j] W_hh[h, g·dh + j, k]`` and
    ``dW_hh[h, g·dh + j, k] = Σ_b dg[b, g·H + h·dh + j] h_prev[b, h·dh + k]``."""
    NH, Gd, dh = W_hh.shape
    B = h_prev.shape[0]
    dg_h = dg.reshape(B, Gd // dh, NH, dh).transpose(2, 0, 1, 3).reshape(NH, B, Gd)
    hp = h_prev.reshape(B, NH, dh).transpose(1, 0, 2)          # (NH, B, dh)
    dh_prev = (dg_h @ W_hh).transpose(1, 0, 2).reshape(B, NH * dh)
    return dh_prev, dg_h.transpose(0, 2, 1) @ hp


def block_diagonal(W_hh: np.ndarray) -> np.ndarray:
    """The full cell's ``W_hh (G·H, H)`` of the heads' blocks ``(NH, G·dh, dh)``:
    ``W[g·H + h·dh + j, h·dh + k] = W_hh[h, g·dh + j, k]``, zero between heads."""
    NH, Gd, dh = W_hh.shape
    G = Gd // dh
    W = _backend.xp_of(W_hh).zeros((G, NH, dh, NH, dh), W_hh.dtype)
    heads = _backend.xp_of(W_hh).arange(NH)
    W[:, heads, :, heads, :] = W_hh.reshape(NH, G, dh, dh)  # the index axis comes first
    return W.reshape(G * NH * dh, NH * dh)


def as_heads(params: dict, gates: int) -> dict:
    """A diagonal (ParaRNN) cell's params with ``W_hh (G·H,)`` recast as ``H``
    heads of one unit each, ``W_hh (H, G, 1)`` with ``W[j, g, 0] = w[g·H + j]``
    (the block-diagonal matrix with ``1×1`` blocks IS the diagonal one), so the
    multi-head kernels run the diagonal cells; other params come back as given."""
    W = params["W_hh"]
    if W.ndim != 1:
        return params
    xp = _backend.xp_of(W)
    return {**params, "W_hh": xp.ascontiguousarray(W.reshape(gates, -1).T)[:, :, None]}


def heads_kernel_forward(cell: str, params: dict, x: Any, state0: Any, backend: str,
                         gates: int) -> tuple:
    """``_backend.kernels("multihead", backend).forward`` for a multi-head cell
    ``W_hh (NH, G·dh, dh)`` or a diagonal one ``W_hh (G·H,)`` (:func:`as_heads`)."""
    return _backend.kernels("multihead", backend).forward(as_heads(params, gates), x, state0,
                                                          cell=cell)


def heads_kernel_backward(params: dict, kernel_cache: Any, dy: Any, dstate: Any, backend: str,
                          gates: int) -> dict:
    """The gradients of :func:`heads_kernel_forward`; a diagonal cell's ``(H, G, 1)``
    weight gradient is returned in its own shape ``(G·H,)``."""
    grads = _backend.kernels("multihead", backend).backward(as_heads(params, gates),
                                                            kernel_cache, dy, dstate)
    if params["W_hh"].ndim == 1:
        dW = grads["W_hh"]
        grads["W_hh"] = _backend.xp_of(dW).ascontiguousarray(dW[:, :, 0].T).reshape(-1)
    return grads


def head_params(params: dict, h: int) -> dict:
    """Head ``h`` of a multi-head cell as the full cell of hidden size ``dh``:
    ``{"W_ih": (G·dh, D), "W_hh": (G·dh, dh), "b_ih": (G·dh,), "b_hh": (G·dh,)}``,
    the head's rows ``g·H + h·dh + j`` of the gate-major ``W_ih, b_ih, b_hh``."""
    NH, Gd, dh = params["W_hh"].shape

    def rows(a):
        return a.reshape(Gd // dh, NH, dh, *a.shape[1:])[:, h].reshape(Gd, *a.shape[1:])
    return {"W_ih": rows(params["W_ih"]), "W_hh": params["W_hh"][h],
            "b_ih": rows(params["b_ih"]), "b_hh": rows(params["b_hh"])}


def _head_units(s, h, dh):
    """Head ``h``'s units ``h·dh … h·dh + dh − 1`` (last axis) of an array or a
    tuple of arrays; ``None`` stays ``None``."""
    if s is None:
        return None
    if isinstance(s, (tuple, list)):
        return tuple(_head_units(p, h, dh) for p in s)
    return s[..., h * dh:(h + 1) * dh]


def _concat_heads(parts, xp):
    """The inverse of :func:`_head_units`: per-head arrays (or tuples) joined on the last axis."""
    if isinstance(parts[0], tuple):
        return tuple(xp.concatenate(p, axis=-1) for p in zip(*parts))
    return xp.concatenate(parts, axis=-1)


class HeadsNewtonCache(NamedTuple):
    """``method="newton"`` of a multi-head cell (:func:`newton_heads`): one solve per head.

    Fields:
        iterations: the most Newton steps a head took.
        residual: the largest final scaled residual of the heads (``nan`` if one is).
        converged: whether every head converged.
        heads: each head's :class:`minirec.scan.newton.NewtonCache`, in head order.
    """

    iterations: int
    residual: float
    converged: bool
    heads: tuple


def newton_heads(step_forward, step_jacobian, params: dict, x: np.ndarray, state0: Any, *,
                 guess: Any = None, **options) -> tuple[np.ndarray, Any, HeadsNewtonCache]:
    """``method="newton"`` of a multi-head cell, head by head.

    Given ``x``, head ``h`` is the full cell of hidden size ``dh`` with the
    parameters :func:`head_params` and the state's units ``h·dh …``, independent
    of the other heads; each is solved by :func:`minirec.scan.newton.solve` with
    the cell's own step functions (``(dh, dh)`` Jacobian blocks). ``guess``
    (the state's structure with a time axis, ``(B, T, H)`` per part) is split
    the same way; ``options`` go to every solve. Returns ``y (B, T, H)``, the
    final state and a :class:`HeadsNewtonCache`.
    """
    NH, _, dh = params["W_hh"].shape
    if guess is not None:
        for i, p in enumerate(guess if isinstance(guess, (tuple, list)) else (guess,)):
            V.array(f"guess[{i}]", p)
            if p.ndim != 3 or p.shape[-1] != NH * dh:
                raise ValueError(f"guess: expected part {i} of shape (B, T, H) with H = "
                                 f"NH·dh = {NH * dh}, got {tuple(p.shape)}")
    return solve_heads(step_forward, step_jacobian, [head_params(params, h) for h in range(NH)],
                       x, state0, guess, dh, **options)


def solve_heads(step_forward, step_jacobian, heads: list, x: np.ndarray, state0: Any,
                guess: Any, dh: int, **options) -> tuple[np.ndarray, Any, HeadsNewtonCache]:
    """One :func:`minirec.scan.newton.solve` per head: ``heads[h]`` is head ``h``'s
    parameters (a cell of hidden size ``dh``), its state and guess the units
    ``h·dh … h·dh + dh − 1`` of ``state0`` and ``guess`` (``None`` stays ``None``).
    A head that does not converge raises with the head named. Returns ``y (B, T,
    H)``, the final state (the heads joined) and a :class:`HeadsNewtonCache`.
    Shared by the multi-head classic cells and the sLSTM."""
    NH = len(heads)
    ys, finals, caches = [], [], []
    for h, p in enumerate(heads):
        try:
            y, s, c = newton.solve(step_forward, step_jacobian, p, x, _head_units(state0, h, dh),
                                   guess=_head_units(guess, h, dh), **options)
        except newton.NewtonConvergenceError as e:
            raise newton.NewtonConvergenceError(f"{e} [head {h} of {NH}, units {h * dh}…"
                                                f"{(h + 1) * dh - 1}]", e.iterations,
                                                e.residual, e.tol, e.where) from None
        ys.append(y)
        finals.append(s)
        caches.append(c)
    xp = _backend.xp_of(x)
    cache = HeadsNewtonCache(max(c.iterations for c in caches),
                             float(np.max([c.residual for c in caches])),
                             all(c.converged for c in caches), tuple(caches))
    return _concat_heads(ys, xp), _concat_heads(finals, xp), cache


def backward_heads(step_backward, step_jacobian, heads: list, cache: HeadsNewtonCache,
                   dy: Any, dstate: Any, dh: int) -> tuple[list, dict]:
    """The gradients of :func:`solve_heads`: each head's
    :func:`minirec.scan.newton.backward` (``heads[h]`` its parameters, ``dy`` and
    ``dstate`` cut to its units). Returns the per-head gradient dicts (the caller
    puts the parameters back in its own layout) and ``{"x": Σ_heads dx,
    "state0": the heads' state gradients joined}``."""
    V.cache("newton heads", cache, HeadsNewtonCache)
    per_head = [newton.backward(step_backward, step_jacobian, p, cache.heads[h],
                                _head_units(dy, h, dh), _head_units(dstate, h, dh))
                for h, p in enumerate(heads)]
    xp = _backend.xp_of(per_head[0]["x"])
    shared = {"x": sum(g["x"] for g in per_head[1:]) + per_head[0]["x"],
              "state0": _concat_heads([g["state0"] for g in per_head], xp)}
    return per_head, shared


def newton_heads_backward(step_backward, step_jacobian, params: dict, cache: HeadsNewtonCache,
                          dy: np.ndarray | None, dstate: Any = None) -> dict:
    """The gradients of :func:`newton_heads`: each head's
    :func:`minirec.scan.newton.backward`, put back in place (its rows of
    ``W_ih, b_ih, b_hh``, ``W_hh[h]``, its units of ``state0``; ``dx`` summed)."""
    NH, Gd, dh = params["W_hh"].shape
    G = Gd // dh
    per_head, shared = backward_heads(step_backward, step_jacobian,
                                      [head_params(params, h) for h in range(NH)], cache, dy,
                                      dstate, dh)
    xp = _backend.xp_of(shared["x"])
    grads = {"W_hh": xp.stack([g["W_hh"] for g in per_head])}
    for k in ("W_ih", "b_ih", "b_hh"):  # rows g·H + h·dh + j: (G, NH, dh, …) → (G·H, …)
        blocks = xp.stack([g[k].reshape(G, dh, *g[k].shape[1:]) for g in per_head], axis=1)
        grads[k] = blocks.reshape(G * NH * dh, *blocks.shape[3:])
    grads.update(shared)
    return grads


def _hh(h_prev, W_hh):
    """``h_{t-1} W_hh^T`` ``(B, H)``, per head for ``W_hh (NH, dh, dh)``."""
    return head_recurrent(h_prev, W_hh) if W_hh.ndim == 3 else h_prev @ W_hh.T


def _hh_backward(da, h_prev, W_hh):
    """Back through :func:`_hh`: ``(dh_prev, dW_hh)``."""
    if W_hh.ndim == 3:
        return head_recurrent_backward(da, h_prev, W_hh)
    return da @ W_hh, da.T @ h_prev




def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray,
                 nonlinearity: str = "tanh") -> tuple[np.ndarray, StepCache]:
    """One step: ``h_t = φ(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    ``x_t (B, D)``, ``h_prev (B, H)`` → ``h_t (B, H)`` and a :class:`StepCache`.
    """
    a = x_t @ params["W_ih"].T + params["b_ih"] + _hh(h_prev, params["W_hh"]) + params["b_hh"]
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
    dh_prev, dW_hh = _hh_backward(da, h_prev, params["W_hh"])
    dparams = {"W_ih": da.T @ x_t, "W_hh": dW_hh,
               "b_ih": da.sum(axis=0), "b_hh": da.sum(axis=0)}
    return da @ params["W_ih"], dh_prev, dparams


def step_jacobian(params: dict, x_t: np.ndarray, h_prev: np.ndarray,
                  nonlinearity: str = "tanh") -> np.ndarray:
    """``J = ∂h_t/∂h_{t-1} = diag(φ'(a_t)) W_hh``, full: ``(B, H, H)`` with
    ``J[b, i, j] = ∂h_t[b, i]/∂h_{t-1}[b, j]`` (for :mod:`minirec.scan.newton`);
    multi-head: the same with ``W = block_diagonal(W_hh)`` (zero between heads)."""
    h, _ = step_forward(params, x_t, h_prev, nonlinearity)
    dphi = M.dtanh_from_output(h) if nonlinearity == "tanh" else (h > 0).astype(h.dtype)
    W = params["W_hh"]
    return dphi[:, :, None] * (block_diagonal(W) if W.ndim == 3 else W)[None]


def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            nonlinearity: str = "tanh", method: str = "recurrent",
            chunk_size: int | None = None, backend: str = "numpy",
            newton_options: dict | None = None) -> tuple[np.ndarray, np.ndarray, RNNCache]:
    """Run the RNN over ``x (B, T, D)`` from ``state0 (B, H)`` (zeros if ``None``).

    ``method="newton"`` solves every step at once (:func:`minirec.scan.newton.solve`;
    ``newton_options``: its ``max_iter``, ``tol``, ``guess``, ``scan_method``,
    ``on_fail``; ``chunk_size`` goes to its scan). ``chunk_size`` is otherwise
    accepted for the common cell API and checked all the same. A multi-head
    ``W_hh (NH, dh, dh)`` is detected from the params. Returns ``y (B, T, H)``,
    the final ``h (B, H)`` and the :class:`RNNCache` for :func:`backward`.
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
    if method == "newton" and is_multihead(params):  # independent heads: a solve each
        y, h, solve = newton_heads(step_forward, step_jacobian, params, x, h0,
                                   chunk_size=chunk_size, backend=backend,
                                   step_kwargs={"nonlinearity": nonlinearity}, **opts)
    elif method == "newton":
        y, h, solve = newton.solve(step_forward, step_jacobian, params, x, h0,
                                   chunk_size=chunk_size, backend=backend,
                                   step_kwargs={"nonlinearity": nonlinearity},
                                   **opts)
    elif backend == "numpy":  # the definition: BPTT's loop over step_forward
        y, h, seq = bptt.sequence_forward(step_forward, params, x, h0, nonlinearity=nonlinearity)
    elif is_multihead(params):  # W_hh (NH, dh, dh): each head's block in cache / shared memory
        y, h, kernel = _backend.kernels("multihead", backend).forward(
            params, x, h0, cell="rnn", nonlinearity=nonlinearity)
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
        solve_backward = newton_heads_backward if is_multihead(params) else newton.backward
        return solve_backward(step_backward, step_jacobian, params, cache.newton, dy, dstate)
    if cache.backend != "numpy":
        family = "multihead" if is_multihead(params) else "rnn"
        return _backend.kernels(family, cache.backend).backward(params, cache.kernel, dy, dstate)
    return bptt.sequence_backward(step_backward, params, cache.seq, dy, dstate)
