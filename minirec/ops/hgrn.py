"""HGRN's recurrence, from Qin et al., "Hierarchically Gated Recurrent Neural
Network for Sequence Modeling" (NeurIPS 2023), in its real, elementwise form.

Dimension key: B batch, T time, D channels.

    h_t = exp(g_t) ⊙ h_{t−1} + x_t            x, g (B, T, D);  h_{−1} (B, D)

The gate is passed in log space (``g ≤ 0``, multiplier ``a = exp(g) ∈ (0, 1]``;
``g = 0`` keeps the state exactly). The output is every ``h_t`` ``(B, T, D)``,
the state is ``h (B, D)``. This is the diagonal affine scan
:func:`minirec.scan.linear.forward` with ``log a = g`` (passed as ``log_a``,
so ``a = exp(g)``) and ``b = x``, with every one of its methods; ``log`` works
on ``g`` itself (no ``exp`` then ``log``), so gates whose ``exp(g)``
underflows (``g = −120`` in float32) run, and only ``g = −inf`` (``a = 0``,
no logarithm) needs another method.

In the HGRN layer the op sits between a gate and an input computed from the
layer input ``u`` (one layer of the stack, index ``l``):

    f_t = γ_l + (1 − γ_l) σ(u_t W_f^T + b_f)     forget gate, lower-bounded by γ_l
    c_t = SiLU(u_t W_c^T + b_c)                  candidate
    g_t = log f_t,   x_t = (1 − f_t) ⊙ c_t       → h = hgrn.forward(x, g)

where the lower bounds ``γ_l ∈ [0, 1)`` grow with depth (the paper computes
them as a cumulative softmax over layers, ``γ_1 = 0``), so upper layers are
forced to keep long memories. :func:`lower_bounded_gate` computes
``g = log(γ + (1 − γ) σ(f_logits))`` stably and
:func:`lower_bounded_gate_backward` its gradient.

Negative eigenvalues (``negative_eigenvalues=True``; Grazzi et al., "Unlocking
State-Tracking in Linear RNNs Through Negative Eigenvalues", 2024): the
multiplier ``exp(g) ∈ (0, 1]`` is mapped by ``a ↦ 2a − 1`` to ``(−1, 1]``,

    h_t = (2 exp(g_t) − 1) ⊙ h_{t−1} + x_t,

so ``g = 0`` still keeps the state and ``g → −∞`` flips its sign. ``g`` keeps
its meaning (the log of a gate in (0, 1], e.g. from :func:`lower_bounded_gate`,
whose bound γ then bounds ``a ≥ 2γ − 1``). ``method="log"`` is refused in this
mode (it needs ``a > 0``).

Backward (``dh`` = ∂L/∂h_t from outside, ``dstate`` through the final state):

    da, db, dh0 = scan.linear.backward(dh, dstate)   reverse scan, same method
    dx  = db
    dg  = da ⊙ exp(g)        (the scan's dlog_a; da ⊙ 2 exp(g) with negative
                              eigenvalues, where the scan is given a)
    d initial_state = dh0

Other backends: one fused kernel per direction forms ``exp(g)`` inside the
scan and, backward, ``dx`` and ``dg`` in the same reverse pass
(``_backend.kernels("hgrn", backend)``: :mod:`minirec.kernels.numba.hgrn`,
:mod:`minirec.kernels.cuda.hgrn`; methods ``recurrent`` and ``chunked``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec._math import log_sigmoid
from minirec.scan import linear

METHODS = linear.METHODS  # ("recurrent", "hillis_steele", "blelloch", "chunked", "log")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# fused gate + scan kernels (kernels/numba/diagonal.py, kernels/cuda/diagonal.cu)
BACKEND_METHODS = {"numba": ("recurrent", "chunked"), "cupy": ("recurrent", "chunked"),
                   "cuda-emulated": ("recurrent", "chunked")}


class HGRNCache(NamedTuple):
    """What :func:`backward` needs: ``negative_eigenvalues``; ``h (B, T, D)`` every
    state; ``backend``; for NumPy ``scan``, the scan's
    :class:`~minirec.scan.linear.LinearScanCache`, and with negative eigenvalues
    ``exp_g = e^g (B, T, D)`` (``None`` otherwise: the scan was given ``log a = g``
    and returns ``dg`` itself); for the other backends ``kernel``, the fused
    kernel's cache (the other two ``None``)."""

    negative_eigenvalues: bool
    h: np.ndarray
    backend: str
    scan: linear.LinearScanCache | None
    exp_g: np.ndarray | None
    kernel: Any


def forward(x: np.ndarray, g: np.ndarray, *, initial_state: np.ndarray | None = None,
            negative_eigenvalues: bool = False, method: str = "recurrent",
            chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, HGRNCache]:
    """Run ``h_t = exp(g_t) ⊙ h_{t−1} + x_t`` over axis 1.

    Args:
        x: ``(B, T, D)`` inputs.
        g: ``(B, T, D)`` log forget gates (``g ≤ 0`` by convention; not enforced).
        initial_state: ``(B, D)`` ``h_{−1}``; ``None`` means zeros.
        negative_eigenvalues: multiplier ``2 exp(g) − 1 ∈ (−1, 1]`` instead of ``exp(g)``.
        method: one of :data:`METHODS` (``log`` works on ``g`` directly; it needs
            ``g > −inf`` and ``negative_eigenvalues=False``).
        chunk_size: chunk length for ``method="chunked"`` (default ⌈√T⌉).
        backend: one of :data:`BACKENDS`.

    Returns:
        ``h (B, T, D)``, the final state ``(B, D)`` and the cache for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="ops.hgrn", method=method,
                     backend_methods=BACKEND_METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    s = V.Shapes()
    V.array("x", x, ndim=3, allow_complex=False)
    s.check("x", x, ("B", "T", "D"))
    V.time_steps("x", x)
    V.array("g", g, ndim=3, allow_complex=False)
    s.check("g", g, ("B", "T", "D"))
    if initial_state is not None:
        V.array("initial_state", initial_state, allow_complex=False)
        s.check("initial_state", initial_state, ("B", "D"))
    dtype = V.common_dtype(x=x, g=g, initial_state=initial_state)
    if method == "log":
        _check_log_method(g, negative_eigenvalues)
    if backend != "numpy":  # the gates and the scan fused in one kernel
        h0 = (_backend.xp_of(x).zeros((x.shape[0], x.shape[2]), dtype)
              if initial_state is None else initial_state)
        h, h_T, kernel = _backend.kernels("hgrn", backend).forward(
            x, g, h0, negative_eigenvalues=negative_eigenvalues, method=method,
            chunk_size=chunk_size)
        return h, h_T, HGRNCache(negative_eigenvalues, h, backend, None, None, kernel)
    if negative_eigenvalues:
        exp_g = np.exp(g)
        h, h_T, scan = linear.forward(2 * exp_g - 1, x, initial_state, method=method,
                                      chunk_size=chunk_size, backend=backend)
    else:  # a = exp(g): the scan takes the log gate itself
        exp_g = None
        h, h_T, scan = linear.forward(None, x, initial_state, log_a=g, method=method,
                                      chunk_size=chunk_size, backend=backend)
    return h, h_T, HGRNCache(negative_eigenvalues, h, backend, scan, exp_g, None)


def _check_log_method(g, negative_eigenvalues):
    others = "'recurrent', 'hillis_steele', 'blelloch' or 'chunked'"
    if negative_eigenvalues:
        raise ValueError(
            "method: 'log' needs a > 0 (it takes log a), but negative_eigenvalues=True "
            f"gives a = 2 exp(g) − 1 in (−1, 1]; expected {others} with "
            "negative_eigenvalues, got 'log'")
    bad = np.isneginf(g)
    if np.any(bad):
        raise ValueError(
            f"g: method='log' expected g > -inf (exp(g) = 0 resets the state, which a "
            f"log-space scan cannot represent), got -inf at index "
            f"{tuple(int(i) for i in np.argwhere(bad)[0])} (use method={others} for "
            f"such gates)")


def backward(cache: HGRNCache, dh: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` by the reverse scan of the same method.

    Args:
        cache: from :func:`forward`.
        dh: ``(B, T, D)`` ∂L/∂h (``None`` means zeros).
        dstate: ``(B, D)`` ∂L/∂h through the final state (``None`` means zeros).

    Returns:
        ``{"x", "g", "initial_state"}`` with the forward's shapes (``initial_state``
        also when it was ``None``).
    """
    V.cache("ops.hgrn.backward", cache, HGRNCache)
    V.grad_like("dh", dh, cache.h, "h")
    V.grad_state("dstate", dstate, cache.h[:, -1])
    if cache.backend != "numpy":
        return _backend.kernels("hgrn", cache.backend).backward(cache.kernel, dh, dstate)
    grads = linear.backward(cache.scan, dh, dstate)
    if cache.negative_eigenvalues:  # a = 2 exp(g) − 1
        dg = grads["a"] * (2 * cache.exp_g)
    else:                           # log a = g
        dg = grads["log_a"]
    return {"x": grads["b"], "g": dg, "initial_state": grads["initial_state"]}


# ---------------------------------------------------------------------------
# the HGRN layer's lower-bounded forget gate
# ---------------------------------------------------------------------------

def _check_gate_args(f_logits, lower_bound):
    V.array("f_logits", f_logits, allow_complex=False)
    if isinstance(lower_bound, (int, float, np.floating)) and not isinstance(lower_bound, bool):
        lower_bound = np.asarray(lower_bound, dtype=f_logits.dtype)
    V.array("lower_bound", lower_bound, allow_complex=False)
    V.common_dtype(f_logits=f_logits, lower_bound=lower_bound)
    try:
        np.broadcast_shapes(lower_bound.shape, f_logits.shape)
    except ValueError:
        raise ValueError(f"lower_bound: expected a shape that broadcasts to f_logits' "
                         f"{tuple(f_logits.shape)} (e.g. (D,) or a scalar), got "
                         f"{tuple(lower_bound.shape)}") from None
    if lower_bound.size and not (np.min(lower_bound) >= 0 and np.max(lower_bound) < 1):
        raise ValueError(f"lower_bound: expected values in [0, 1), got min "
                         f"{float(np.min(lower_bound))!r}, max {float(np.max(lower_bound))!r}")
    return lower_bound


def lower_bounded_gate(f_logits: np.ndarray, lower_bound: float | np.ndarray) -> np.ndarray:
    """HGRN's forget gate in log space: ``g = log(γ + (1 − γ) σ(f_logits))``.

    Computed without overflow or cancellation as
    ``g = logaddexp(log γ, log(1 − γ) + log σ(u))`` with ``u = f_logits`` and
    ``log σ(u) = −softplus(−u)`` (for γ = 0 this is ``log σ(u)`` exactly), so
    ``log γ ≤ g ≤ 0``.

    Args:
        f_logits: ``(..., D)``, e.g. ``(B, T, D)``.
        lower_bound: γ, a float or an array broadcasting to ``f_logits`` (per
            channel ``(D,)``), values in ``[0, 1)``.

    Returns:
        ``g`` with the shape of ``f_logits``, ready for :func:`forward`.
    """
    gamma = _check_gate_args(f_logits, lower_bound)
    with np.errstate(divide="ignore"):  # γ = 0: log γ = −inf, and logaddexp(−inf, y) = y
        log_gamma = np.log(gamma)
    return np.logaddexp(log_gamma, np.log1p(-gamma) + log_sigmoid(f_logits))


def lower_bounded_gate_backward(f_logits: np.ndarray, lower_bound: float | np.ndarray,
                                dg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Back through :func:`lower_bounded_gate`.

    With ``s = σ(u)``, ``f = γ + (1 − γ) s = e^g``:

        ∂g/∂u = (1 − γ) s (1 − s) / f = (1 − γ) (1 − s) · exp(log s − g)
        ∂g/∂γ = (1 − s) / f           = exp(log(1 − s) − g)

    (written with logs so that nothing is 0/0 when ``s`` underflows). ∂g/∂γ is
    unbounded as ``f → 0`` (γ = 0 and ``u → −∞``); there it is ``inf``, as the
    true derivative is, without a warning.

    Args:
        f_logits: as given to :func:`lower_bounded_gate`.
        lower_bound: as given to :func:`lower_bounded_gate`.
        dg: ``∂L/∂g``, the shape of ``f_logits``.

    Returns:
        ``(df_logits, dlower_bound)``; ``dlower_bound`` has ``lower_bound``'s
        shape (a 0-d array for a float), summed over broadcast axes.
    """
    gamma = _check_gate_args(f_logits, lower_bound)
    V.grad_like("dg", dg, f_logits, "f_logits")
    g = lower_bounded_gate(f_logits, gamma)
    log_s, log_1ms = log_sigmoid(f_logits), log_sigmoid(-f_logits)
    df = dg * (1 - gamma) * np.exp(log_1ms) * np.exp(log_s - g)
    with np.errstate(over="ignore"):
        dgamma = dg * np.exp(log_1ms - g)
    # sum over the axes γ was broadcast along
    extra = dgamma.ndim - gamma.ndim
    dgamma = dgamma.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(gamma.shape) if n == 1 and dgamma.shape[i] != 1)
    dgamma = dgamma.sum(axis=axes, keepdims=True)
    return df, np.asarray(dgamma, dtype=gamma.dtype)
