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


class GRUCache(NamedTuple):
    """What :func:`backward` needs from :func:`forward`.

    Fields:
        seq: ``backend="numpy"``: the :class:`minirec.bptt.SequenceCache` of the
            loop over :func:`step_forward`; ``None`` otherwise.
        kernel: other backends: the kernel module's own cache (see
            ``_backend.kernels("gru", backend)``); ``None`` for NumPy.
        y_like: zeros shaped and typed like ``y (B, T, H)`` (a read-only view
            that holds no memory): what ``dy`` is checked against.
        state_like: the same for the final state ``h (B, H)``.
        param_shapes: ``{name: shape}`` of the params the forward ran with.
        method, backend: the forward's options.
    """

    seq: bptt.SequenceCache | None
    kernel: Any
    y_like: np.ndarray
    state_like: np.ndarray
    param_shapes: dict
    method: str
    backend: str


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
    """``h_{-1} = 0`` of shape ``(B, H)`` (a CuPy array when the params are)."""
    W_hh = params["W_hh"]
    return _backend.xp_of(W_hh).zeros((batch_size, W_hh.shape[1]), dtype or W_hh.dtype)


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
    dparams = {"W_ih": dgi.T @ x_t, "W_hh": dgh.T @ h_prev,
               "b_ih": dgi.sum(axis=0), "b_hh": dgh.sum(axis=0)}
    return dgi @ params["W_ih"], dh * z + dgh @ params["W_hh"], dparams


def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, GRUCache]:
    """Run the GRU over ``x (B, T, D)`` from ``state0 (B, H)`` (zeros if ``None``).

    ``chunk_size`` is accepted for the common cell API (no method here uses it)
    and checked all the same. Returns ``y (B, T, H)``, the final ``h (B, H)``
    and the :class:`GRUCache` for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    _backend.resolve(backend, BACKENDS, what="cells.gru", method=method,
                     backend_methods=BACKEND_METHODS)
    dtype = _check(params, x, state0)
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    seq = kernel = None
    if backend == "numpy":  # the definition: BPTT's loop over step_forward
        y, h, seq = bptt.sequence_forward(step_forward, params, x, h0)
    else:
        y, h, kernel = _backend.kernels("gru", backend).forward(params, x, h0)
    return y, h, GRUCache(seq, kernel, V.zeros_view(y), V.zeros_view(h), V.param_shapes(params),
                          method, backend)


def backward(params: dict, cache: GRUCache, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """BPTT: gradients for ``W_ih, W_hh, b_ih, b_hh``, ``"x" (B, T, D)`` and
    ``"state0" (B, H)``. ``dy (B, T, H)`` and ``dstate (B, H)`` may be ``None``."""
    V.cache("gru", cache, GRUCache)
    V.params_match("gru", params, cache.param_shapes)
    fill = cache.backend != "numpy"  # kernels take arrays: None becomes zeros
    dy = V.grad_like("dy", dy, cache.y_like, "y", fill=fill)
    dstate = V.grad_state("dstate", dstate, cache.state_like, fill=fill)
    if cache.backend != "numpy":
        return _backend.kernels("gru", cache.backend).backward(params, cache.kernel, dy, dstate)
    return bptt.sequence_backward(step_backward, params, cache.seq, dy, dstate)
