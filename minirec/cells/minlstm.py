"""minLSTM, from Feng et al., "Were RNNs All We Needed?" (2024).

Dimension key: B batch, T time, D input size, H hidden size.

Parameters: ``W_f (H, D)``, ``b_f (H,)``, ``W_i (H, D)``, ``b_i (H,)``,
``W_h (H, D)``, ``b_h (H,)``.

    k_f = x_t W_f^T + b_f,   k_i = x_t W_i^T + b_i      (B, T, H)  gate logits
    f_t = σ(k_f),            i_t = σ(k_i)
    h̃_t = x_t W_h^T + b_h                              (B, T, H)  candidate
    f'_t = f_t / (f_t + i_t),   i'_t = i_t / (f_t + i_t)         (f' + i' = 1)
    h_t  = f'_t ⊙ h_{t−1} + i'_t ⊙ h̃_t

The normalised gates are computed from the log-ratio, as in the paper's
log-space code, so that they stay finite when ``f`` and ``i`` both underflow:

    s    = log i − log f = softplus(−k_f) − softplus(−k_i)
    i'   = σ(s),   f' = σ(−s)

So minLSTM is minGRU (:mod:`minirec.cells.mingru`) with the write gate
``w = i'`` of logit ``s``: with ``a = f'`` and ``b = i' ⊙ h̃`` the recurrence
is :func:`minirec.cells.mingru.gated_scan`, the diagonal affine scan
:func:`minirec.scan.linear.forward` with every one of its methods (``log``
works on ``log a = log σ(−s)`` directly, so saturated gates run).

The output is ``y_t = h_t``; the state is ``h (B, H)``.

Negative eigenvalues (``negative_eigenvalues=True``; Grazzi et al., "Unlocking
State-Tracking in Linear RNNs Through Negative Eigenvalues", 2024): the
multiplier is mapped by ``a ↦ 2a − 1``,

    a_t = 2 f'_t − 1 = f'_t − i'_t ∈ (−1, 1),     b_t = i'_t ⊙ h̃_t  (unchanged);

``method="log"`` is refused in this mode (it takes ``log a``).

Backward (``dy`` = ∂L/∂h_t from outside, ``dstate`` through the final state;
write ``a = 1 − c i'`` with ``c = 1``, or ``c = 2`` with negative eigenvalues):

    da, db, dh0 = scan.linear.backward(dy, dstate)   reverse scan, same method
    di'   = db ⊙ h̃ − c · da                      through a and b
    ds    = di' ⊙ i' ⊙ f'                         through i' = σ(s)
    dk_f  = −ds ⊙ (1 − f)                         ∂s/∂k_f = −σ(−k_f)
    dk_i  = ds ⊙ (1 − i)                          ∂s/∂k_i = σ(−k_i)
    dh̃   = db ⊙ i'
    dW_f  = Σ_{B,T} dk_f^T x,  db_f = Σ dk_f    (W_i, b_i and W_h, b_h alike)
    dx    = dk_f W_f + dk_i W_i + dh̃ W_h
    dstate0 = dh0

Other backends: the projections are GEMMs here, then one fused kernel per
direction forms ``s`` from ``k_f``, ``k_i`` inside the scan and, backward,
returns ``dk_f``, ``dk_i``, ``dh̃`` from the same reverse pass
(``_backend.kernels("minlstm", backend)``: :mod:`minirec.kernels.numba.minlstm`,
:mod:`minirec.kernels.cuda.minlstm`; methods ``recurrent`` and ``chunked``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec import _validate as V
from minirec._math import sigmoid, softplus
from minirec.cells import mingru
from minirec.cells.mingru import (
    GatedScanCache,
    KernelScanCache,
    check_options,
    gated_scan,
    gated_scan_backward,
    kernel_scan,
    kernel_scan_backward,
    project,
    project_backward,
    write_gate,
    write_gate_backward,
    zero_state,
)

METHODS = mingru.METHODS
BACKENDS = mingru.BACKENDS
BACKEND_METHODS = mingru.BACKEND_METHODS
PARAM_SHAPES = {"W_f": ("H", "D"), "b_f": ("H",), "W_i": ("H", "D"), "b_i": ("H",),
                "W_h": ("H", "D"), "b_h": ("H",)}
__all__ = ["METHODS", "BACKENDS", "BACKEND_METHODS", "PARAM_SHAPES", "MinLSTMCache",
           "MinLSTMStepCache", "init_params", "zero_state", "write_gate_logit",
           "write_gate_logit_backward", "step_forward", "step_backward", "forward", "backward"]


class MinLSTMCache(NamedTuple):
    """What :func:`backward` needs: ``x (B, T, D)``, the gate logits
    ``k_f, k_i (B, T, H)``, ``core`` (minGRU's
    :class:`~minirec.cells.mingru.GatedScanCache`, or its
    :class:`~minirec.cells.mingru.KernelScanCache` on the kernel backends) and
    ``param_shapes`` (``{name: shape}`` of the forward's params)."""

    x: np.ndarray
    k_f: np.ndarray
    k_i: np.ndarray
    core: GatedScanCache | KernelScanCache
    param_shapes: dict


class MinLSTMStepCache(NamedTuple):
    """One step's cache: ``params``, ``x_t (B, D)``, ``h_prev``, ``k_f``, ``k_i``,
    ``i_n = i'``, ``f_n = f'``, ``h_tilde``, ``a`` (each ``(B, H)``) and
    ``negative_eigenvalues``."""

    params: dict
    x_t: np.ndarray
    h_prev: np.ndarray
    k_f: np.ndarray
    k_i: np.ndarray
    i_n: np.ndarray
    f_n: np.ndarray
    h_tilde: np.ndarray
    a: np.ndarray
    negative_eigenvalues: bool


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """Every entry ~ U(−1/√D, 1/√D) (a linear layer's default, as in the paper's code).

    Returns ``W_f, W_i, W_h (H, D)`` and ``b_f, b_i, b_h (H,)``.
    """
    return mingru.uniform_params(rng, PARAM_SHAPES, input_size, hidden_size, dtype)


def write_gate_logit(k_f: np.ndarray, k_i: np.ndarray) -> np.ndarray:
    """The write gate's logit ``s = log i − log f = softplus(−k_f) − softplus(−k_i)``
    (finite where ``f`` and ``i`` both underflow), so ``i' = σ(s)``, ``f' = σ(−s)``."""
    return softplus(-k_f) - softplus(-k_i)


def write_gate_logit_backward(ds: np.ndarray, k_f: np.ndarray, k_i: np.ndarray,
                              ) -> tuple[np.ndarray, np.ndarray]:
    """``(dk_f, dk_i)`` from ``ds``: ``∂s/∂k_f = −σ(−k_f)``, ``∂s/∂k_i = σ(−k_i)``."""
    return -ds * sigmoid(-k_f), ds * sigmoid(-k_i)


# ---------------------------------------------------------------------------
# one step
# ---------------------------------------------------------------------------

def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray, *,
                 negative_eigenvalues: bool = False) -> tuple[np.ndarray, MinLSTMStepCache]:
    """One step: ``h_t = f'_t ⊙ h_{t−1} + i'_t ⊙ h̃_t`` (``a_t = 2f'_t − 1`` with
    negative eigenvalues).

    ``x_t (B, D)``, ``h_prev (B, H)`` → ``h_t (B, H)`` and a :class:`MinLSTMStepCache`.
    """
    k_f, k_i, h_tilde = (project(params, x_t, n) for n in ("f", "i", "h"))
    i_n, f_n, a, b = write_gate(write_gate_logit(k_f, k_i), h_tilde, negative_eigenvalues)
    return a * h_prev + b, MinLSTMStepCache(params, x_t, h_prev, k_f, k_i, i_n, f_n, h_tilde,
                                            a, negative_eigenvalues)


def step_backward(dh_next: np.ndarray, cache_t: MinLSTMStepCache,
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Back through one step: ``dx_t (B, D)``, ``dh_prev (B, H)``, parameter gradients
    (``da = dh ⊙ h_{t−1}``, ``db = dh``, then the gates)."""
    c = cache_t
    ds, dh_tilde = write_gate_backward(c.i_n, c.f_n, c.h_tilde, dh_next, da=dh_next * c.h_prev,
                                       negative_eigenvalues=c.negative_eigenvalues)
    dk_f, dk_i = write_gate_logit_backward(ds, c.k_f, c.k_i)
    dx, dparams = project_backward(c.params, c.x_t, {"f": dk_f, "i": dk_i, "h": dh_tilde})
    return dx, dh_next * c.a, dparams


# ---------------------------------------------------------------------------
# the sequence
# ---------------------------------------------------------------------------

def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            negative_eigenvalues: bool = False, method: str = "recurrent",
            chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, MinLSTMCache]:
    """Run minLSTM over ``x (B, T, D)`` from ``state0 (B, H)`` (zeros if ``None``).

    Args:
        params: from :func:`init_params`.
        x: ``(B, T, D)`` real input.
        state0: ``(B, H)`` ``h_{−1}``.
        negative_eigenvalues: ``a = 2f' − 1 ∈ (−1, 1)`` instead of ``f'``.
        method: one of :data:`METHODS`, passed to :func:`minirec.scan.linear.forward`.
        chunk_size: for ``method="chunked"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``y (B, T, H)``, the final ``h (B, H)`` and a :class:`MinLSTMCache` for
        :func:`backward`.
    """
    check_options("cells.minlstm", method, backend, chunk_size, negative_eigenvalues)
    dtype = V.cell_inputs("minlstm", params, PARAM_SHAPES, x, state0, ("B", "H"))[0]
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    k_f, k_i, h_tilde = (project(params, x, n) for n in ("f", "i", "h"))
    if backend != "numpy":  # s, the gates and the scan fused in one kernel
        y, h_T, core = kernel_scan("minlstm", (k_f, k_i), h_tilde, h0,
                                   negative_eigenvalues=negative_eigenvalues, method=method,
                                   chunk_size=chunk_size, backend=backend)
    else:
        y, h_T, core = gated_scan(write_gate_logit(k_f, k_i), h_tilde, h0,
                                  negative_eigenvalues=negative_eigenvalues, method=method,
                                  chunk_size=chunk_size, backend=backend)
    return y, h_T, MinLSTMCache(x, k_f, k_i, core, V.param_shapes(params))


def backward(params: dict, cache: MinLSTMCache, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward`: the scan's reverse scan, then the gates by hand.

    Args:
        params: the parameters given to :func:`forward`.
        cache: from :func:`forward`.
        dy: ``(B, T, H)`` ∂L/∂y (``None`` means zeros).
        dstate: ``(B, H)`` ∂L/∂h through the final state (``None`` means zeros).

    Returns:
        ``{"W_f", "b_f", "W_i", "b_i", "W_h", "b_h", "x" (B, T, D), "state0" (B, H)}``.
    """
    V.cache("cells.minlstm.backward", cache, MinLSTMCache)
    V.params_match("cells.minlstm.backward", params, cache.param_shapes)
    if isinstance(cache.core, KernelScanCache):
        dk_f, dk_i, dh_tilde, dh0 = kernel_scan_backward("minlstm", cache.core, dy, dstate)
    else:
        ds, dh_tilde, dh0 = gated_scan_backward(cache.core, dy, dstate)
        dk_f, dk_i = write_gate_logit_backward(ds, cache.k_f, cache.k_i)
    B, T, D = cache.x.shape
    flat = lambda u: u.reshape(B * T, u.shape[-1])  # noqa: E731
    dx, grads = project_backward(params, flat(cache.x),
                                 {"f": flat(dk_f), "i": flat(dk_i), "h": flat(dh_tilde)})
    grads["x"] = dx.reshape(B, T, D)
    grads["state0"] = dh0
    return grads
