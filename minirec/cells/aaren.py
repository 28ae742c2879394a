"""Aaren: attention as a many-to-many RNN (Feng et al. 2024, "Attention as an RNN").

Dimension key: B batch, T time, D input size, O output size, NH heads,
K key size, V value size per head.

Parameters: ``q (NH, K)`` one learned query per head, ``W_k (NH·K, D)``,
``W_v (NH·V, D)``, ``W_o (O, NH·V)``, ``b_o (O,)``.

    k_t = x_t W_k^T  → (B, NH, K)          v_t = x_t W_v^T  → (B, NH, V)
    s_t = q_h · k_{t,h} / √K                                  (B, NH)
    o_t = Σ_{i≤t} e^{s_i} v_i / Σ_{i≤t} e^{s_i}                (B, NH, V)
    y_t = concat_h(o_{t,h}) W_o^T + b_o                       (B, O)

The middle line is :mod:`minirec.ops.softmax_scan`, the state is its triple
``(m (B, NH), u (B, NH), w (B, NH, V))`` — running max, denominator and
numerator — and ``state0=None`` is the empty prefix ``(−inf, 0, 0)``.
Unlike a Transformer's, Aaren's query is not computed from a token: it is a
parameter learnt by backpropagation, which is what makes the output at step t
a prefix aggregate that can be updated token by token in O(1) memory.

Design choices. The paper presents Aaren as a drop-in replacement for a
Transformer's attention module (stacked with the same feed-forward blocks and
residuals), so we keep that module's multi-head layout: each head has its own
query and key/value projections, and an output projection ``W_o`` mixes the
concatenated heads (``num_heads=1`` is the paper's single-query equations
followed by a linear map). There is no key bias: it would add
``q_h · b_k / √K`` to every score of head h, a constant that softmax cancels.
There is no value bias: softmax weights sum to one, so it would pass through
unchanged and is already covered by ``b_o``.

Backward (``dy`` = ∂L/∂y; ``dstate`` = ∂L/∂ final state):

    do_t = dy_t W_o              dW_o = Σ_{B,T} dy_t^T concat(o_t)    db_o = Σ_{B,T} dy_t
    ds, dv, dstate0 = softmax_scan.backward(do, dstate)       (its docstring)
    dk_t = ds_t q / √K           dq   = Σ_{B,T} ds_t k_t / √K
    dx_t = dk_t W_k + dv_t W_v   dW_k = Σ_{B,T} dk_t^T x_t    dW_v = Σ_{B,T} dv_t^T x_t

Methods: ``recurrent`` and ``blelloch``, passed to :mod:`minirec.ops.softmax_scan`
(the projections are the same matrix products for both).

Streaming: :func:`step_forward` takes one token and the triple and returns
``y_t`` and the updated triple, in O(B·NH·(D·(K+V) + V·O)) time and memory
whatever t is — where causal softmax attention with a query per token keeps
all t keys and values. Because ``y_t`` is a read-out of the state and not one
of its arrays (as ``h`` is for an RNN or LSTM), the step returns it
separately: ``y_t, state, cache_t = step_forward(params, x_t, state)`` and
``dx_t, dstate_prev, dparams = step_backward(dy_t, dstate_next, cache_t)``.

Backends: ``backend="numba"`` runs :mod:`minirec.kernels.numba.aaren`
(``_backend.kernels("aaren", "numba")``): the projections and the weight
gradients as 2-D GEMMs over all tokens (scores and values as one GEMM,
``x [w_s; W_v]^T`` with ``w_s = q W_k / √K`` per head), the
``recurrent`` scan and its backward as one fused loop over time each
(softmax_scan's numba kernels); ``blelloch`` is NumPy-only.
``backend="cupy"`` and ``"cuda-emulated"`` keep the projections here and pass
the backend to :mod:`minirec.ops.softmax_scan`, whose CUDA kernels run the scan
(one warp per (batch, head)); for ``"cupy"`` the parameters and ``x`` are CuPy
arrays and the projections are CuPy GEMMs (cuBLAS).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.ops import softmax_scan

METHODS = softmax_scan.METHODS
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# the methods each non-NumPy backend runs (those of softmax_scan's kernels)
BACKEND_METHODS = {"numba": ("recurrent",), "cupy": ("recurrent",),
                   "cuda-emulated": ("recurrent",)}
PARAM_SHAPES = {"q": ("NH", "K"), "W_k": ("NH*K", "D"), "W_v": ("NH*V", "D"),
                "W_o": ("O", "NH*V"), "b_o": ("O",)}

State = tuple  # (m (B, NH), u (B, NH), w (B, NH, V))


class AarenStepCache(NamedTuple):
    """What :func:`step_backward` needs from one :func:`step_forward`:
    ``params``, ``x_t (B, D)``, the keys ``k_t (B, NH, K)``, the heads'
    outputs ``o_flat (B, NH·V)`` and the scan's step cache ``scan``
    (:class:`minirec.ops.softmax_scan.SoftmaxStepCache`)."""

    params: dict
    x_t: np.ndarray
    k_t: np.ndarray
    o_flat: np.ndarray
    scan: softmax_scan.SoftmaxStepCache


class AarenCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`: ``x (B, T, D)``, the
    keys ``k (B, T, NH, K)``, the heads' outputs ``o_flat (B, T, NH·V)``, the
    scan's cache ``scan``, ``param_shapes`` (checked against the params given to
    the backward), ``method``, ``backend``; with ``backend="numba"`` ``kernel``,
    the kernel module's cache (``k``, ``o_flat``, ``scan`` are ``None`` then),
    and ``state_like``, zeros shaped like the final state (``dstate`` is checked
    against it)."""

    x: np.ndarray
    k: np.ndarray | None
    o_flat: np.ndarray | None
    scan: softmax_scan.SoftmaxScanCache | None
    param_shapes: dict
    method: str
    backend: str
    kernel: Any = None
    state_like: tuple | None = None


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int, *,
                num_heads: int = 2, key_size: int | None = None, value_size: int | None = None,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """Parameters for inputs of size ``input_size`` (D) and outputs of size
    ``hidden_size`` (O).

    ``key_size`` and ``value_size`` default to ``max(1, hidden_size // num_heads)``.
    Projections use PyTorch's ``nn.Linear`` initialisation ``U(−1/√fan_in, 1/√fan_in)``;
    the queries are standard normal, so the scores start with variance about 1/3
    for unit-variance inputs.
    """
    for name, val in (("input_size", input_size), ("hidden_size", hidden_size),
                      ("num_heads", num_heads)):
        V.positive_int(name, val)
    K = V.positive_int("key_size", key_size, allow_none=True) or max(1, hidden_size // num_heads)
    Vd = V.positive_int("value_size", value_size, allow_none=True) or max(
        1, hidden_size // num_heads)
    kx = 1.0 / np.sqrt(input_size)
    ko = 1.0 / np.sqrt(num_heads * Vd)
    params = {
        "q": rng.standard_normal((num_heads, K)),
        "W_k": rng.uniform(-kx, kx, (num_heads * K, input_size)),
        "W_v": rng.uniform(-kx, kx, (num_heads * Vd, input_size)),
        "W_o": rng.uniform(-ko, ko, (hidden_size, num_heads * Vd)),
        "b_o": rng.uniform(-ko, ko, (hidden_size,)),
    }
    return {k: v.astype(dtype) for k, v in params.items()}


def _sizes(params: dict) -> tuple[int, int, int]:
    """``(NH, K, V)`` read from the parameter shapes."""
    NH, K = params["q"].shape
    return NH, K, params["W_v"].shape[0] // NH


def zero_state(params: dict, batch_size: int, dtype=None) -> State:
    """The empty prefix ``(m, u, w) = (−inf, 0, 0)``, shapes ``(B, NH)``, ``(B, NH)``,
    ``(B, NH, V)``."""
    NH, _, Vd = _sizes(params)
    return softmax_scan.empty_state(batch_size, NH, Vd, dtype or params["q"].dtype)


def _check(params, x, state0):
    state_spec = [("B", "NH"), ("B", "NH"), ("B", "NH", "V")]
    dtype, s = V.cell_inputs("aaren", params, PARAM_SHAPES, x, state0, state_spec,
                             state_names=("m", "u", "w"))
    NH, K = s["NH"], s["K"]
    for name, key in (("W_k", "NH*K"), ("W_v", "NH*V")):
        if s[key] % NH or (name == "W_k" and s[key] != NH * K):
            want = f"({NH}·K={NH * K}, D)" if name == "W_k" else f"(a multiple of NH={NH}, D)"
            raise ValueError(f"aaren: {name}: expected shape {want} for q of shape "
                             f"{tuple(params['q'].shape)}, got {tuple(params[name].shape)}")
    if state0 is not None and s["V"] != s["NH*V"] // NH:
        raise ValueError(f"state0[2] (w): expected shape ({x.shape[0]}, {NH}, "
                         f"V={s['NH*V'] // NH}) (W_v has NH·V rows), "
                         f"got {tuple(state0[2].shape)}")
    return dtype


def _flat_heads(shape):
    """``(..., NH, V)`` → ``(..., NH·V)``, spelt out (``-1`` fails for B = 0)."""
    return tuple(shape[:-2]) + (shape[-2] * shape[-1],)


def _project(params, x):
    """Keys, values and scores for ``x (..., D)``: ``k (..., NH, K)``, ``v (..., NH, V)``,
    ``s (..., NH)``."""
    NH, K, Vd = _sizes(params)
    lead = x.shape[:-1]
    k = (x @ params["W_k"].T).reshape(lead + (NH, K))
    v = (x @ params["W_v"].T).reshape(lead + (NH, Vd))
    s = (k * params["q"]).sum(axis=-1) / np.sqrt(K).astype(x.dtype)
    return k, v, s


def _project_backward(params, x, k, ds, dv):
    """Back through ``_project``: ``dx`` and the gradients of ``q, W_k, W_v``
    (summed over every leading axis of ``x``)."""
    NH, K, Vd = _sizes(params)
    scale = 1 / np.sqrt(K).astype(x.dtype)
    dk = ds[..., None] * params["q"] * scale                     # through s = q·k/√K
    dq = (ds[..., None] * k).reshape(-1, NH, K).sum(axis=0) * scale
    dk_flat = dk.reshape(x.shape[:-1] + (NH * K,))
    dv_flat = dv.reshape(x.shape[:-1] + (NH * Vd,))
    dx = dk_flat @ params["W_k"] + dv_flat @ params["W_v"]       # through k, v = x W^T
    x2 = x.reshape(-1, x.shape[-1])
    dW_k = dk_flat.reshape(-1, NH * K).T @ x2
    dW_v = dv_flat.reshape(-1, NH * Vd).T @ x2
    return dx, {"q": dq, "W_k": dW_k, "W_v": dW_v}


def _readout_backward(params, o_flat, dy):
    """Back through ``y = o_flat W_o^T + b_o``: ``do_flat`` and ``{W_o, b_o}`` grads."""
    O = params["W_o"].shape[0]
    d2 = dy.reshape(-1, O)
    return dy @ params["W_o"], {"W_o": d2.T @ o_flat.reshape(-1, o_flat.shape[-1]),
                                "b_o": d2.sum(axis=0)}


def step_forward(params: dict, x_t: np.ndarray, state: State | None
                 ) -> tuple[np.ndarray, State, AarenStepCache]:
    """One token in, the triple updated (constant memory; no checks, for speed).

    ``x_t (B, D)``, ``state = (m (B, NH), u (B, NH), w (B, NH, V))`` or ``None``
    for the empty prefix. Returns ``y_t (B, O)``, the new state and the step cache.
    """
    if state is None:
        state = zero_state(params, x_t.shape[0], x_t.dtype)
    k_t, v_t, s_t = _project(params, x_t)
    o_t, state, scan_cache = softmax_scan.step_forward(s_t, v_t, state)
    o_flat = o_t.reshape(_flat_heads(o_t.shape))              # (B, NH·V)
    y_t = o_flat @ params["W_o"].T + params["b_o"]
    return y_t, state, AarenStepCache(params, x_t, k_t, o_flat, scan_cache)


def step_backward(dy_t: np.ndarray | None, dstate_next: State, cache_t: AarenStepCache):
    """Back through :func:`step_forward`: ``dx_t (B, D)``, ``(dm, du, dw)`` of the
    previous state and the step's parameter gradients."""
    params, x_t, k_t, o_flat, scan_cache = V.cache("aaren.step", cache_t, AarenStepCache)
    NH, _, Vd = _sizes(params)
    if dy_t is None:
        do_t = None
        dout = {"W_o": np.zeros_like(params["W_o"]), "b_o": np.zeros_like(params["b_o"])}
    else:
        do_flat, dout = _readout_backward(params, o_flat, dy_t)
        do_t = do_flat.reshape(x_t.shape[0], NH, Vd)
    ds_t, dv_t, dstate_prev = softmax_scan.step_backward(do_t, dstate_next, scan_cache)
    dx_t, dproj = _project_backward(params, x_t, k_t, ds_t, dv_t)
    return dx_t, dstate_prev, {**dproj, **dout}


def forward(params: dict, x: np.ndarray, state0: State | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, State, AarenCache]:
    """Run Aaren over ``x (B, T, D)`` from ``state0`` (the empty prefix if ``None``).

    ``chunk_size`` is accepted for the common cell signature; neither method uses it.
    Returns ``y (B, T, O)``, the final ``(m, u, w)`` and the cache for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="cells.aaren", method=method,
                     backend_methods=BACKEND_METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    _check(params, x, state0)
    if backend == "numba":  # projections, scan and read-out behind the seam
        s0 = zero_state(params, x.shape[0], x.dtype) if state0 is None else state0
        y, state, kernel = _backend.kernels("aaren", backend).forward(params, x, s0)
        return y, state, AarenCache(x, None, None, None, V.param_shapes(params), method,
                                    backend, kernel, tuple(map(V.zeros_view, state)))
    k, v, s = _project(params, x)
    o, state, scan_cache = softmax_scan.forward(s, v, initial_state=state0, method=method,
                                                backend=backend)
    o_flat = o.reshape(_flat_heads(o.shape))                   # (B, T, NH·V)
    y = o_flat @ params["W_o"].T + params["b_o"]
    cache = AarenCache(x, k, o_flat, scan_cache, V.param_shapes(params), method, backend)
    return y, state, cache


def backward(params: dict, cache: AarenCache, dy: np.ndarray | None,
             dstate: State | None = None) -> dict:
    """Gradients for ``q, W_k, W_v, W_o, b_o``, ``"x" (B, T, D)`` and
    ``"state0"`` (the triple ``(dm, du, dw)``), by the forward's method."""
    c = V.cache("aaren", cache, AarenCache)
    V.params_match("aaren", params, c.param_shapes)
    x, k, o_flat = c.x, c.k, c.o_flat
    B, T = x.shape[:2]
    NH, _, Vd = _sizes(params)
    xp = _backend.xp_of(x)  # CuPy arrays for backend="cupy"
    y_like = V.zeros_view(x, (B, T) + params["b_o"].shape)
    dy = V.grad_like("dy", dy, y_like, "y")
    if c.backend == "numba":
        dstate = V.grad_state("dstate", dstate, c.state_like, fill=True)
        return _backend.kernels("aaren", c.backend).backward(params, c.kernel, dy, dstate)
    if dy is None:
        do = None
        dout = {"W_o": xp.zeros_like(params["W_o"]), "b_o": xp.zeros_like(params["b_o"])}
    else:
        do_flat, dout = _readout_backward(params, o_flat, dy)
        do = do_flat.reshape(B, T, NH, Vd)
    g = softmax_scan.backward(c.scan, do, dstate)
    dx, dproj = _project_backward(params, x, k, g["s"], g["v"])
    grads = {**dproj, **dout}
    grads = {name: grads[name].astype(params[name].dtype, copy=False) for name in params}
    grads["x"] = dx
    grads["state0"] = g["initial_state"]
    return grads
