"""sLSTM, the scalar-memory cell of xLSTM (Beck et al. 2024), as the xLSTM
authors' reference step computes it.

Dimension key: B batch, T time, D input size, H hidden size, NH heads,
dh = H / NH the head size. A hidden index is ``h·dh + j`` (head ``h``, unit
``j`` of the head).

Parameters (gate order i, f, z, o, as the authors'):
``W_ih (4H, D)`` the input weights, gates stacked on axis 0 (row ``g·H + h·dh + j``,
their "BSGNH" input layout); ``R (4, NH, dh, dh)`` the recurrent matrices, one
``(dh, dh)`` block per gate and head (``R[g, h]`` maps the head's ``h_{t-1}``
to its gate pre-activation, rows = outputs, as PyTorch's ``W_hh``); ``b (4H,)``.
The recurrent matrix of each gate is block-diagonal over the heads:

    a_t = x_t W_ih^T + b + r_t,   r_t[g, h, j] = Σ_k R[g, h, j, k] h_{t-1}[h, k]    (B, 4H)
    [a_i | a_f | a_z | a_o] = a_t                                                     (B, H) each
    lfm = m_{t-1} + log σ(a_f)                  log of the forget gate, stabilised by m_{t-1}
    m_t = a_i                  where n_{t-1} = 0     (the first step: nothing to forget)
          max(a_i, lfm)        elsewhere
    i = min(exp(a_i − m_t), 1)      f = min(exp(lfm − m_t), 1)      (stabilised gates)
    z = tanh(a_z)                   o = σ(a_o)
    c_t = f ⊙ c_{t-1} + i ⊙ z       n_t = f ⊙ n_{t-1} + i       h_t = o ⊙ c_t / n_t

The output is ``y_t = h_t``; the state is the tuple ``(h, c, n, m)``, each ``(B, H)``.
The forget gate is the sigmoid one (``log σ``), the authors' default ("slstm"
pointwise function of ``xlstm/blocks/slstm/src/vanilla/slstm.py``).

Exactly as the authors' step (read there, written here independently):

* **First-step convention.** ``m_t = a_i`` where ``n_{t-1} = 0``. The authors'
  vanilla PyTorch step tests ``torch.all(n == 0)`` over the whole state at once;
  their CUDA kernel tests each entry (``eq_zero_g(n_cur)``). We test each entry,
  so batch rows stay independent. The two agree whenever ``n_{t-1}`` is all
  zeros (the zero state) or has no zeros — every state this cell returns:
  after one step ``n_t ≥ 1``, since the larger of ``exp(a_i − m_t)`` and
  ``exp(lfm − m_t)`` is exactly ``exp(0) = 1``.
* **Clamping.** ``i`` and ``f`` are clamped at 1 (``torch.minimum(·, 1)``). We
  compute ``min(exp(u), 1)`` as ``exp(min(u, 0))``: the same number, without
  an overflow for a large ``u``. The clamp of ``i`` never binds
  (``a_i − m_t ≤ 0`` by the choice of ``m_t``); that of ``f`` binds only on the
  first-step branch with ``lfm > a_i`` (where ``f`` multiplies ``c_{t-1}`` and
  ``n_{t-1} = 0``). No other clamping (their ``forward_clipval`` is off by default).
* ``h_t = (o ⊙ c_t) / n_t`` in this order; the state ``m`` starts at 0 in the zero state.

``h_t`` does not depend on ``m`` (``c e^m`` and ``n e^m`` are the unstabilised
memories), but the returned state ``(c, n, m)`` does, so the backward below is
the exact derivative of the step as computed, through the max: the gradient of
``m_t`` goes to ``a_i`` where the first-step branch is taken or
``a_i ≥ lfm`` (**ties take the input-gate branch**), to ``lfm`` elsewhere; a
clamp that binds (``u > 0``) passes no gradient, ``u = 0`` counts as unclamped.
At ``n_{t-1} = 0`` exactly (the zero state) the derivative is that of the
first-step branch. (The authors' CUDA backward treats ``m`` as a constant and
gives ``m0`` no gradient. For a loss of the outputs ``y`` alone that changes
nothing else: the terms through ``m_t`` cancel, since ``(c e^{−δ}, n e^{−δ},
m + δ)`` is the same memory. It does differ for ``m0`` and for upstream
gradients of the returned ``(c, n, m)``, which ours differentiates as well.)

Backward through one step (``dh, dc, dn, dm`` = ∂L/∂(h_t, c_t, n_t, m_t), ``dh``
from the output and from t+1):

    dc_t = dc + dh ⊙ o / n_t                       dn_t = dn − dh ⊙ h_t / n_t
    da_o = dh ⊙ c_t / n_t ⊙ o (1 − o)                            (through h = o c / n)
    di = dc_t ⊙ z + dn_t      df = dc_t ⊙ c_{t-1} + dn_t ⊙ n_{t-1}
    da_z = dc_t ⊙ i ⊙ (1 − z²)                                   (through c, n)
    dc_prev = dc_t ⊙ f        dn_prev = dn_t ⊙ f
    du_i = 0 if a_i − m_t > 0 else di ⊙ i                        (through i = exp(min(u_i, 0)))
    du_f = 0 if lfm − m_t > 0 else df ⊙ f                        (through f = exp(min(u_f, 0)))
    dm_t = dm − du_i − du_f                                      (u_i, u_f both subtract m_t)
    da_i = du_i + [take_i] dm_t      dlfm = du_f + [not take_i] dm_t   (through m_t)
    dm_prev = dlfm            da_f = dlfm ⊙ σ(−a_f)              (through lfm; (log σ)' = σ(−·))
    da = [da_i | da_f | da_z | da_o]                             (B, 4H)
    dx_t = da W_ih     dW_ih += da^T x_t     db += Σ_B da
    dh_prev[h, k] = Σ_{g, j} da[g, h, j] R[g, h, j, k]
    dR[g, h, j, k] += Σ_B da[g, h, j] h_{t-1}[h, k]

with ``take_i = [n_{t-1} = 0] or [a_i ≥ lfm]``. The ``[·]`` selections are
selections, not products: a NaN on the branch not taken does not leak.

``forward``/``backward`` over a sequence are :mod:`minirec.bptt` loops over
``step_forward``/``step_backward`` (the definition). Other backends run the same
equations behind the backend seam, ``_backend.kernels("slstm", backend)``
(:mod:`minirec.kernels.numba.slstm`: one GEMM for ``x W_ih^T + b``, the fused
time loop with each head's blocks of ``R`` in cache, GEMMs for the weight
gradients; :mod:`minirec.kernels.cuda.slstm` for ``"cupy"`` and
``"cuda-emulated"``: the same GEMMs and one persistent kernel per direction,
a block per (batch row, head) with the head's ``R`` in shared memory).
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
GATES = 4  # i, f, z, o
PARAM_SHAPES = {"W_ih": ("G", "D"), "R": (GATES, "NH", "dh", "dh"), "b": ("G",)}
STATE_NAMES = ("h0", "c0", "n0", "m0")


class StepCache(NamedTuple):
    """What one step keeps for its backward (all ``(B, H)`` unless stated)."""

    params: dict
    x_t: np.ndarray      # (B, D)
    h_prev: np.ndarray   # h_{t-1}
    c_prev: np.ndarray   # c_{t-1}
    n_prev: np.ndarray   # n_{t-1}
    a: np.ndarray        # (B, 4H) the pre-activations [a_i | a_f | a_z | a_o]
    lfm: np.ndarray      # m_{t-1} + log σ(a_f)
    take_i: np.ndarray   # bool: m_t came from a_i (first step, or a_i ≥ lfm)
    m: np.ndarray        # m_t
    i: np.ndarray        # input gate exp(min(a_i − m_t, 0))
    f: np.ndarray        # forget gate exp(min(lfm − m_t, 0))
    z: np.ndarray        # tanh(a_z)
    o: np.ndarray        # σ(a_o)
    c: np.ndarray        # c_t
    n: np.ndarray        # n_t
    h: np.ndarray        # h_t


class SLSTMCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`.

    Fields:
        seq: ``backend="numpy"``: the :class:`minirec.bptt.SequenceCache` of the
            loop over :func:`step_forward`; ``None`` otherwise.
        kernel: other backends: the kernel module's own cache (see
            ``_backend.kernels("slstm", backend)``); ``None`` for NumPy.
        y_like: zeros shaped and typed like ``y (B, T, H)`` (a read-only view
            that holds no memory): what ``dy`` is checked against.
        state_like: the same for the final state ``(h, c, n, m)``, each ``(B, H)``.
        param_shapes: ``{name: shape}`` of the params the forward ran with.
        method, backend: the forward's options.
    """

    seq: bptt.SequenceCache | None
    kernel: Any
    y_like: np.ndarray
    state_like: tuple
    param_shapes: dict
    method: str
    backend: str


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64, *, num_heads: int = 1) -> dict[str, np.ndarray]:
    """``W_ih``, ``R``, ``b`` ~ U(−1/√H, 1/√H), then the forget gate's bias
    ``b_f`` set to ``linspace(3, 6, dh)`` in every head (the authors'
    ``bias_init="small_init"``: forget gates near 1 at the start).

    ``num_heads`` must divide ``hidden_size``. Returns
    ``{"W_ih": (4H, D), "R": (4, NH, dh, dh), "b": (4H,)}``.
    """
    V.positive_int("num_heads", num_heads)
    V.positive_int("hidden_size", hidden_size)
    if hidden_size % num_heads:
        raise ValueError(f"num_heads: expected a divisor of hidden_size={hidden_size}, "
                         f"got {num_heads}")
    H, dh = hidden_size, hidden_size // num_heads
    k = 1.0 / np.sqrt(H)
    params = {"W_ih": rng.uniform(-k, k, (GATES * H, input_size)),
              "R": rng.uniform(-k, k, (GATES, num_heads, dh, dh)),
              "b": rng.uniform(-k, k, GATES * H)}
    params["b"][H:2 * H] = np.tile(np.linspace(3.0, 6.0, dh), num_heads)
    return {n: v.astype(dtype) for n, v in params.items()}


def zero_state(params: dict, batch_size: int, dtype=None) -> tuple:
    """``(h, c, n, m) = (0, 0, 0, 0)``, each ``(B, H)`` (CuPy arrays when the params
    are). ``n = 0`` makes the first step take the first-step branch ``m_0 = a_i``."""
    R = params["R"]
    xp, shape = _backend.xp_of(R), (batch_size, R.shape[1] * R.shape[2])
    return tuple(xp.zeros(shape, dtype or R.dtype) for _ in range(4))


def _check(params, x, state0):
    dtype, s = V.cell_inputs("slstm", params, PARAM_SHAPES, x, state0,
                             [("B", "H")] * 4, state_names=STATE_NAMES)
    H = s["NH"] * s["dh"]
    if s["G"] != GATES * H:
        raise ValueError(f"slstm: W_ih: expected shape (4H, D) = ({GATES * H}, {s['D']}) with "
                         f"H = NH·dh = {s['NH']}·{s['dh']} from R {tuple(params['R'].shape)} "
                         f"(gates i, f, z, o stacked on axis 0), got {tuple(params['W_ih'].shape)}")
    if state0 is not None and s["H"] != H:
        raise ValueError(f"slstm: state0[0] (h0): expected shape (B, H) with H = NH·dh = {H} "
                         f"from R {tuple(params['R'].shape)}, got {tuple(state0[0].shape)}")
    return dtype


def _recurrent(R: np.ndarray, h_prev: np.ndarray) -> np.ndarray:
    """``r[b, g·H + h·dh + j] = Σ_k R[g, h, j, k] h_prev[b, h·dh + k]`` → ``(B, 4H)``."""
    G, NH, dh, _ = R.shape
    hp = h_prev.reshape(-1, NH, dh)
    return np.einsum("ghjk,bhk->bghj", R, hp).reshape(-1, G * NH * dh)


def step_forward(params: dict, x_t: np.ndarray, state: tuple) -> tuple[tuple, StepCache]:
    """One step ``(h, c, n, m)_{t-1}, x_t → (h, c, n, m)_t`` (equations in the
    module docstring). ``x_t (B, D)``, each state part ``(B, H)``. Returns the
    new state and a :class:`StepCache`."""
    h_prev, c_prev, n_prev, m_prev = state
    a = x_t @ params["W_ih"].T + params["b"] + _recurrent(params["R"], h_prev)
    H = h_prev.shape[-1]
    a_i, a_f, a_z, a_o = (a[:, g * H:(g + 1) * H] for g in range(GATES))
    lfm = m_prev + M.log_sigmoid(a_f)
    first = n_prev == 0
    m = np.where(first, a_i, np.maximum(a_i, lfm))  # np.maximum keeps a NaN, as torch's
    take_i = first | (a_i >= lfm)                   # where m's gradient goes (ties: a_i)
    i = np.exp(np.minimum(a_i - m, 0))              # = min(exp(a_i − m), 1)
    f = np.exp(np.minimum(lfm - m, 0))              # = min(exp(lfm − m), 1)
    z = M.tanh(a_z)
    o = M.sigmoid(a_o)
    c = f * c_prev + i * z
    n = f * n_prev + i
    h = o * c / n
    return (h, c, n, m), StepCache(params, x_t, h_prev, c_prev, n_prev, a, lfm, take_i, m,
                                   i, f, z, o, c, n, h)


def step_backward(dstate_next: tuple, cache_t: StepCache):
    """Back through one step.

    ``dstate_next = (dh, dc, dn, dm)``, the gradients of ``(h_t, c_t, n_t, m_t)``,
    each ``(B, H)``. Returns ``dx_t (B, D)``, ``(dh_prev, dc_prev, dn_prev, dm_prev)``
    and the step's parameter gradients.
    """
    (params, x_t, h_prev, c_prev, n_prev, a, lfm, take_i, m, i, f, z, o, c, n, h) = cache_t
    dh, dc, dn, dm = dstate_next
    H = h.shape[-1]
    a_i, a_f = a[:, :H], a[:, H:2 * H]
    # through h = o ⊙ c / n
    dc_t = dc + dh * o / n
    dn_t = dn - dh * h / n
    da_o = dh * c / n * M.dsigmoid_from_output(o)
    # through c = f ⊙ c_{t-1} + i ⊙ z and n = f ⊙ n_{t-1} + i
    di = dc_t * z + dn_t
    df = dc_t * c_prev + dn_t * n_prev
    da_z = dc_t * i * M.dtanh_from_output(z)
    dc_prev, dn_prev = dc_t * f, dn_t * f
    # through the clamped exponentials i = exp(min(a_i − m, 0)), f = exp(min(lfm − m, 0))
    du_i = np.where(a_i - m > 0, 0, di * i)
    du_f = np.where(lfm - m > 0, 0, df * f)
    dm_t = dm - du_i - du_f
    # through m = a_i (take_i) or lfm
    da_i = du_i + np.where(take_i, dm_t, 0)
    dlfm = du_f + np.where(take_i, 0, dm_t)
    # through lfm = m_{t-1} + log σ(a_f)
    da_f = dlfm * M.sigmoid(-a_f)
    da = np.concatenate([da_i, da_f, da_z, da_o], axis=-1)
    # through the affine maps
    R = params["R"]
    G, NH, dh_, _ = R.shape
    da4 = da.reshape(-1, G, NH, dh_)
    hp = h_prev.reshape(-1, NH, dh_)
    dparams = {"W_ih": da.T @ x_t,
               "R": np.einsum("bghj,bhk->ghjk", da4, hp),
               "b": da.sum(axis=0)}
    dh_prev = np.einsum("bghj,ghjk->bhk", da4, R).reshape(h_prev.shape)
    return da @ params["W_ih"], (dh_prev, dc_prev, dn_prev, dlfm), dparams


def forward(params: dict, x: np.ndarray, state0: tuple | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, tuple, SLSTMCache]:
    """Run the sLSTM over ``x (B, T, D)`` from ``state0 = (h0, c0, n0, m0)``, each
    ``(B, H)`` (zeros if ``None``: the first step then takes ``m_0 = a_i``).

    ``chunk_size`` is accepted for the common cell API (no method here uses it)
    and checked all the same. Returns ``y (B, T, H)`` (every ``h_t``), the final
    state ``(h, c, n, m)`` and the :class:`SLSTMCache` for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    _backend.resolve(backend, BACKENDS, what="cells.slstm", method=method,
                     backend_methods=BACKEND_METHODS)
    dtype = _check(params, x, state0)
    s0 = zero_state(params, x.shape[0], dtype) if state0 is None else tuple(state0)
    seq = kernel = None
    if backend == "numpy":  # the definition: BPTT's loop over step_forward
        y, state, seq = bptt.sequence_forward(step_forward, params, x, s0)
    else:
        y, state, kernel = _backend.kernels("slstm", backend).forward(params, x, s0)
    return y, state, SLSTMCache(seq, kernel, V.zeros_view(y), tuple(map(V.zeros_view, state)),
                                V.param_shapes(params), method, backend)


def backward(params: dict, cache: SLSTMCache, dy: np.ndarray | None,
             dstate: tuple | None = None) -> dict:
    """BPTT: gradients for ``W_ih, R, b``, ``"x" (B, T, D)`` and
    ``"state0" = (dh0, dc0, dn0, dm0)``.

    ``dy (B, T, H)`` or ``None``; ``dstate = (dh, dc, dn, dm)``, the gradient of
    the final state (any part may be ``None``), or ``None``.
    """
    V.cache("slstm", cache, SLSTMCache)
    V.params_match("slstm", params, cache.param_shapes)
    fill = cache.backend != "numpy"  # kernels take arrays: None becomes zeros
    dy = V.grad_like("dy", dy, cache.y_like, "y", fill=fill)
    dstate = V.grad_state("dstate", dstate, cache.state_like, fill=fill)
    if cache.backend != "numpy":
        return _backend.kernels("slstm", cache.backend).backward(params, cache.kernel, dy, dstate)
    return bptt.sequence_backward(step_backward, params, cache.seq, dy, dstate)
