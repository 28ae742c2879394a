"""Layer-normalised LSTM (Ba, Kiros & Hinton, "Layer Normalization", 2016, §3.1 and
the LN-LSTM equations of its supplementary material), in PyTorch's gate order
i, f, g, o (the paper stacks f, i, o, g: a permutation of the 4H entries, which
the layer norms' mean and variance do not see; the gains and biases permute with
them).

Dimension key: B batch, T time, D input size, H hidden size, G = 4H.

Names (paper → code): W_x → ``W_ih (4H, D)``, W_h → ``W_hh (4H, H)``, b → ``b (4H,)``;
the gains and biases of the three layer norms: α₂, β₂ (input) → ``alpha_ih, beta_ih
(4H,)``, α₁, β₁ (recurrent) → ``alpha_hh, beta_hh (4H,)``, α₃, β₃ (cell) →
``alpha_c, beta_c (H,)``.

Layer norm of a row ``z ∈ R^n`` (the last axis), as the paper and
``torch.nn.functional.layer_norm`` compute it, with ``eps`` inside the root (the
paper leaves it unstated; default ``1e-5``, torch's) and the biased variance:

    μ = mean(z)    d = z − μ    rstd = (mean(d²) + eps)^{−1/2}    xhat = d · rstd
    LN(z; α, β) = α ⊙ xhat + β

As in the paper, each layer norm normalises the WHOLE gate vector of 4H
pre-activations (one μ and one rstd per row and step, not one per gate), and the
cell state's over its H units:

    zx = x_t W_ih^T            zh = h_{t-1} W_hh^T                                (B, 4H)
    a  = LN(zh; alpha_hh, beta_hh) + LN(zx; alpha_ih, beta_ih) + b = [a_i | a_f | a_g | a_o]
    i = σ(a_i)    f = σ(a_f)    g = tanh(a_g)    o = σ(a_o)                       (B, H)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    nc  = LN(c_t; alpha_c, beta_c)        h_t = o ⊙ tanh(nc)

The output is ``y_t = h_t``; the state is the tuple ``(h, c)``, each ``(B, H)``
(the state carries the un-normalised ``c_t``).

Backward through one layer norm (written once, in :mod:`minirec.nn.norm`, whose
``forward``/``backward`` the step pair calls three times each: ``weight`` = α,
``bias`` = β, ``x_hat`` = xhat, ``r`` = rstd), from ``dout = ∂L/∂LN(z)``; with
``ĝ = α ⊙ dout`` and ``∂xhat_k/∂z_j = rstd (δ_kj − 1/n − xhat_k xhat_j / n)``:

    dz = rstd ⊙ (ĝ − mean(ĝ) − xhat ⊙ mean(ĝ ⊙ xhat))       dα += Σ_B dout ⊙ xhat
                                                             dβ += Σ_B dout

Backward through one step (``dh = ∂L/∂h_t`` from the output and from t+1,
``dc = ∂L/∂c_t`` from t+1); post-activation values are cached, so every local
derivative is a polynomial in a cached value:

    do      = dh ⊙ tanh(nc)
    dnc     = dh ⊙ o ⊙ (1 − tanh(nc)²)                     (through h_t = o ⊙ tanh(nc))
    dc_t    = dc + LN-backward(dnc; xhat_c, rstd_c, alpha_c)   (through nc = LN(c_t))
    di = dc_t ⊙ g     df = dc_t ⊙ c_{t-1}     dg = dc_t ⊙ i     dc_prev = dc_t ⊙ f
    da   = [di ⊙ i(1 − i) | df ⊙ f(1 − f) | dg ⊙ (1 − g²) | do ⊙ o(1 − o)]      (B, 4H)
    db  += Σ_B da
    dzh  = LN-backward(da; xhat_hh, rstd_hh, alpha_hh)   dzx = LN-backward(da; xhat_ih, …)
    dx_t = dzx W_ih      dh_prev = dzh W_hh      dW_ih += dzx^T x_t      dW_hh += dzh^T h_{t-1}

``beta_ih``, ``beta_hh`` and ``b`` enter ``a`` only as a sum, so their gradients
are equal (the paper keeps all three; so does this module).

``forward``/``backward`` over a sequence are :mod:`minirec.bptt` loops over
``step_forward``/``step_backward`` (the definition). Other backends run the same
equations behind the backend seam, ``_backend.kernels("ln_lstm", backend)``
(:mod:`minirec.kernels.numba.ln_lstm`: one GEMM and the input-side layer norm for
all T before the fused time loop; :mod:`minirec.kernels.cuda.ln_lstm` for
``"cupy"`` and ``"cuda-emulated"``: per step the recurrent GEMM and one fused
layer-norm + gates kernel with block reductions).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend, bptt
from minirec import _math as M
from minirec import _validate as V
from minirec.nn import norm

METHODS = ("recurrent",)
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# the methods each non-NumPy backend has kernels for (NumPy runs them all)
BACKEND_METHODS = {"numba": ("recurrent",), "cupy": ("recurrent",),
                   "cuda-emulated": ("recurrent",)}
GATES = 4  # i, f, g, o
EPS = 1e-5  # the default eps of every layer norm (torch.nn.functional.layer_norm's)
PARAM_SHAPES = {"W_ih": ("G", "D"), "W_hh": ("G", "H"), "b": ("G",),
                "alpha_ih": ("G",), "beta_ih": ("G",), "alpha_hh": ("G",), "beta_hh": ("G",),
                "alpha_c": ("H",), "beta_c": ("H",)}


class StepCache(NamedTuple):
    """What one step keeps for its backward (all ``(B, ·)`` arrays of the step)."""

    params: dict
    x_t: np.ndarray       # (B, D)
    h_prev: np.ndarray    # (B, H)
    c_prev: np.ndarray    # (B, H)
    ln_ih: norm.LayerNormCache   # LN(x_t W_ih^T): x_hat (B, 4H), r = 1/√(var + eps) (B, 1)
    ln_hh: norm.LayerNormCache   # LN(h_{t-1} W_hh^T): the same
    i: np.ndarray         # input gate σ(a_i)                 (B, H)
    f: np.ndarray         # forget gate σ(a_f)
    g: np.ndarray         # candidate tanh(a_g)
    o: np.ndarray         # output gate σ(a_o)
    ln_c: norm.LayerNormCache    # LN(c_t): x_hat (B, H), r (B, 1)
    tanh_nc: np.ndarray   # (B, H) tanh(LN(c_t))


class LNLSTMCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`.

    Fields:
        seq: ``backend="numpy"``: the :class:`minirec.bptt.SequenceCache` of the
            loop over :func:`step_forward`; ``None`` otherwise.
        kernel: other backends: the kernel module's own cache (see
            ``_backend.kernels("ln_lstm", backend)``); ``None`` for NumPy.
        y_like: zeros shaped and typed like ``y (B, T, H)`` (a read-only view
            that holds no memory): what ``dy`` is checked against.
        state_like: the same for the final state ``(h, c)``, each ``(B, H)``.
        param_shapes: ``{name: shape}`` of the params the forward ran with.
        eps, method, backend: the forward's options.
    """

    seq: bptt.SequenceCache | None
    kernel: Any
    y_like: np.ndarray
    state_like: tuple[np.ndarray, np.ndarray]
    param_shapes: dict
    eps: float
    method: str
    backend: str


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """``W_ih (4H, D)``, ``W_hh (4H, H)``, ``b (4H,)`` ~ U(−1/√H, 1/√H) (PyTorch's LSTM);
    the layer norms' gains 1 and biases 0 (the paper): ``alpha_ih, beta_ih,
    alpha_hh, beta_hh (4H,)``, ``alpha_c, beta_c (H,)``."""
    k = 1.0 / np.sqrt(hidden_size)
    G = GATES * hidden_size
    p = {"W_ih": rng.uniform(-k, k, (G, input_size)), "W_hh": rng.uniform(-k, k, (G, hidden_size)),
         "b": rng.uniform(-k, k, G),
         "alpha_ih": np.ones(G), "beta_ih": np.zeros(G),
         "alpha_hh": np.ones(G), "beta_hh": np.zeros(G),
         "alpha_c": np.ones(hidden_size), "beta_c": np.zeros(hidden_size)}
    return {n: v.astype(dtype) for n, v in p.items()}


def zero_state(params: dict, batch_size: int, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    """``(h_{-1}, c_{-1}) = (0, 0)``, each of shape ``(B, H)`` (CuPy arrays when the
    params are)."""
    W_hh = params["W_hh"]
    xp, shape = _backend.xp_of(W_hh), (batch_size, W_hh.shape[1])
    return xp.zeros(shape, dtype or W_hh.dtype), xp.zeros(shape, dtype or W_hh.dtype)


def _check(params, x, state0):
    dtype, s = V.cell_inputs("ln_lstm", params, PARAM_SHAPES, x, state0,
                             [("B", "H"), ("B", "H")], state_names=("h0", "c0"))
    if s["G"] != GATES * s["H"]:
        raise ValueError(f"ln_lstm: W_hh: expected shape (4H, H) = ({GATES * s['H']}, {s['H']}) "
                         f"(gates i, f, g, o stacked on axis 0), got {params['W_hh'].shape}")
    return dtype


def _gain_bias(params: dict, name: str) -> dict:
    """One layer norm's parameters as :mod:`minirec.nn.norm` names them."""
    return {"weight": params[f"alpha_{name}"], "bias": params[f"beta_{name}"]}


def step_forward(params: dict, x_t: np.ndarray, state: tuple[np.ndarray, np.ndarray],
                 eps: float = EPS) -> tuple[tuple, StepCache]:
    """One step ``(h_{t-1}, c_{t-1}), x_t → (h_t, c_t)`` (equations in the module docstring).

    ``x_t (B, D)``, ``state = (h_prev (B, H), c_prev (B, H))``, ``eps`` of the layer
    norms. Returns the new state ``(h_t, c_t)`` and a :class:`StepCache`.
    """
    h_prev, c_prev = state
    H = h_prev.shape[-1]
    nx, ln_ih = norm.forward(_gain_bias(params, "ih"), x_t @ params["W_ih"].T, eps=eps)
    nh, ln_hh = norm.forward(_gain_bias(params, "hh"), h_prev @ params["W_hh"].T, eps=eps)
    a = nh + nx + params["b"]
    s = M.sigmoid(a)  # one call for the three σ gates (its g block is unused)
    i, f, o = s[:, :H], s[:, H:2 * H], s[:, 3 * H:]
    g = M.tanh(a[:, 2 * H:3 * H])
    c = f * c_prev + i * g
    nc, ln_c = norm.forward(_gain_bias(params, "c"), c, eps=eps)
    tanh_nc = M.tanh(nc)
    h = o * tanh_nc
    return (h, c), StepCache(params, x_t, h_prev, c_prev, ln_ih, ln_hh, i, f, g, o, ln_c,
                             tanh_nc)


def step_backward(dstate_next: tuple[np.ndarray, np.ndarray], cache_t: StepCache):
    """Back through one step.

    ``dstate_next = (dh (B, H), dc (B, H))``, the gradients of ``(h_t, c_t)``.
    Returns ``dx_t (B, D)``, ``(dh_prev, dc_prev)`` and the step's parameter gradients.
    """
    params, x_t, h_prev, c_prev, ln_ih, ln_hh, i, f, g, o, ln_c, tanh_nc = cache_t
    dh, dc = dstate_next
    # through h_t = o ⊙ tanh(nc)
    do = dh * tanh_nc
    dnc = dh * o * M.dtanh_from_output(tanh_nc)
    # through nc = LN(c_t; alpha_c, beta_c)
    dc_ln, dln_c = norm.backward(_gain_bias(params, "c"), ln_c, dnc)
    dc_t = dc + dc_ln
    # through c_t = f ⊙ c_{t-1} + i ⊙ g
    di, df, dg = dc_t * g, dc_t * c_prev, dc_t * i
    dc_prev = dc_t * f
    # through the gate nonlinearities (post-activation values cached)
    da = np.concatenate([di * M.dsigmoid_from_output(i), df * M.dsigmoid_from_output(f),
                         dg * M.dtanh_from_output(g), do * M.dsigmoid_from_output(o)], axis=-1)
    # through a = LN(zh) + LN(zx) + b
    dzh, dln_hh = norm.backward(_gain_bias(params, "hh"), ln_hh, da)
    dzx, dln_ih = norm.backward(_gain_bias(params, "ih"), ln_ih, da)
    # through zx = x_t W_ih^T and zh = h_{t-1} W_hh^T
    dparams = {"W_ih": dzx.T @ x_t, "W_hh": dzh.T @ h_prev, "b": da.sum(axis=0),
               "alpha_ih": dln_ih["weight"], "beta_ih": dln_ih["bias"],
               "alpha_hh": dln_hh["weight"], "beta_hh": dln_hh["bias"],
               "alpha_c": dln_c["weight"], "beta_c": dln_c["bias"]}
    return dzx @ params["W_ih"], (dzh @ params["W_hh"], dc_prev), dparams


def forward(params: dict, x: np.ndarray, state0: tuple | None = None, *, eps: float = EPS,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, tuple, LNLSTMCache]:
    """Run the LN-LSTM over ``x (B, T, D)`` from ``state0 = (h0, c0)``, each ``(B, H)``
    (zeros if ``None``); ``eps`` (> 0) is the layer norms' (inside the root).

    ``chunk_size`` is accepted for the common cell API (no method here uses it)
    and checked all the same. Returns ``y (B, T, H)`` (every ``h_t``), the final
    state ``(h, c)`` and the :class:`LNLSTMCache` for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    eps = V.positive_float("eps", eps)
    _backend.resolve(backend, BACKENDS, what="cells.ln_lstm", method=method,
                     backend_methods=BACKEND_METHODS)
    dtype = _check(params, x, state0)
    s0 = zero_state(params, x.shape[0], dtype) if state0 is None else tuple(state0)
    seq = kernel = None
    if backend == "numpy":  # the definition: BPTT's loop over step_forward
        y, state, seq = bptt.sequence_forward(step_forward, params, x, s0, eps=eps)
    else:
        y, state, kernel = _backend.kernels("ln_lstm", backend).forward(params, x, s0, eps)
    return y, state, LNLSTMCache(seq, kernel, V.zeros_view(y), tuple(map(V.zeros_view, state)),
                                 V.param_shapes(params), eps, method, backend)


def backward(params: dict, cache: LNLSTMCache, dy: np.ndarray | None,
             dstate: tuple | None = None) -> dict:
    """BPTT: gradients for every parameter, ``"x" (B, T, D)`` and
    ``"state0" = (dh0, dc0)``.

    ``dy (B, T, H)`` or ``None``; ``dstate = (dh, dc)``, the gradient of the
    final ``(h, c)`` (either part may be ``None``), or ``None``.
    """
    V.cache("ln_lstm", cache, LNLSTMCache)
    V.params_match("ln_lstm", params, cache.param_shapes)
    fill = cache.backend != "numpy"  # kernels take arrays: None becomes zeros
    dy = V.grad_like("dy", dy, cache.y_like, "y", fill=fill)
    dstate = V.grad_state("dstate", dstate, cache.state_like, fill=fill)
    if cache.backend != "numpy":
        return _backend.kernels("ln_lstm", cache.backend).backward(params, cache.kernel, dy,
                                                                  dstate)
    return bptt.sequence_backward(step_backward, params, cache.seq, dy, dstate)
