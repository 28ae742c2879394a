"""minGRU, from Feng et al., "Were RNNs All We Needed?" (2024).

Dimension key: B batch, T time, D input size, H hidden size.

Parameters: ``W_z (H, D)``, ``b_z (H,)``, ``W_h (H, D)``, ``b_h (H,)``.

    k_t  = x_t W_z^T + b_z                 (B, T, H)   gate logits
    z_t  = σ(k_t)                                      update gate
    h̃_t = x_t W_h^T + b_h                 (B, T, H)   candidate
    a_t  = 1 − z_t                         (computed as σ(−k_t): exact near 0)
    b_t  = z_t ⊙ h̃_t
    h_t  = a_t ⊙ h_{t−1} + b_t  =  (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t

The output is ``y_t = h_t``; the state is ``h (B, H)``. Neither gate looks at
``h_{t−1}``, so all T gates are computed at once and the recurrence is the
diagonal affine scan :func:`minirec.scan.linear.forward` — every one of its
methods (``recurrent`` is the loop; ``hillis_steele``, ``blelloch``,
``chunked`` and ``log`` are parallel). ``log`` is the paper's log-space form:
Heinsen's scan on the log gates ``log a_t = log σ(−k_t) = −softplus(k_t)``,
computed from ``k`` directly, so a saturated gate (``σ(−k)`` below the
smallest float) still runs.

The scan from the gate logits on, :func:`gated_scan` (``s`` → ``w = σ(s)``,
``a = 1 − w``, ``b = w ⊙ h̃`` → ``h``) and :func:`gated_scan_backward`, is
public: minLSTM (:mod:`minirec.cells.minlstm`) is this cell with the write
gate ``w = i'`` of logit ``s = log i − log f``.

Negative eigenvalues (``negative_eigenvalues=True``, after Grazzi et al.,
"Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues", 2024):
the multiplier ``1 − z`` in (0, 1) is mapped by ``a ↦ 2a − 1`` to (−1, 1),

    a_t = 1 − 2 z_t  (= σ(−k_t) − σ(k_t)),     b_t = z_t ⊙ h̃_t  (unchanged),

so a channel can flip its sign every step (``k → +∞``: ``h_t = h̃_t − h_{t−1}``),
which a positive multiplier cannot do; this is what lets a diagonal linear RNN
track parity. ``method="log"`` takes ``log a`` and is refused in this mode.

Backward (``dy`` = ∂L/∂h_t from outside, ``dstate`` = ∂L/∂h_{T−1} through the
returned state; ``c = 1``, or ``c = 2`` with negative eigenvalues, so that
``a = 1 − c z``):

    da, db, dh0 = scan.linear.backward(dy, dstate)   reverse scan, same method
    dz      = db ⊙ h̃ − c · da                       through a and b
    dk      = dz ⊙ z ⊙ (1 − z)                       through σ
    dh̃     = db ⊙ z
    dW_z    = Σ_{B,T} dk^T x,      db_z = Σ_{B,T} dk
    dW_h    = Σ_{B,T} dh̃^T x,     db_h = Σ_{B,T} dh̃
    dx      = dk W_z + dh̃ W_h
    dstate0 = dh0

``step_forward``/``step_backward`` are one time step of the same equations,
for streaming (and a test loops them against ``forward``/``backward``).

Other backends: the projections are GEMMs here (cuBLAS through CuPy for
``"cupy"``), then one fused kernel per direction computes the gates from ``k``
inside the scan and, backward, ``dk`` and ``dh̃`` in the same reverse pass
(``_backend.kernels("mingru", backend)``: :mod:`minirec.kernels.numba.mingru`
for ``"numba"``, :mod:`minirec.kernels.cuda.mingru` for ``"cupy"`` /
``"cuda-emulated"``; methods ``recurrent`` and ``chunked``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec._math import log_sigmoid, sigmoid
from minirec.scan import linear

METHODS = linear.METHODS  # ("recurrent", "hillis_steele", "blelloch", "chunked", "log")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# fused gate + scan kernels (kernels/numba/diagonal.py, kernels/cuda/diagonal.cu)
BACKEND_METHODS = {"numba": ("recurrent", "chunked"), "cupy": ("recurrent", "chunked"),
                   "cuda-emulated": ("recurrent", "chunked")}
PARAM_SHAPES = {"W_z": ("H", "D"), "b_z": ("H",), "W_h": ("H", "D"), "b_h": ("H",)}


class GatedScanCache(NamedTuple):
    """What :func:`gated_scan_backward` needs.

    Fields: ``w (B, T, H)`` the write gate ``σ(s)``; ``keep (B, T, H)`` ``1 − w``
    computed as ``σ(−s)``; ``h_tilde (B, T, H)``; ``negative_eigenvalues``;
    ``scan`` the :class:`minirec.scan.linear.LinearScanCache`.
    """

    w: np.ndarray
    keep: np.ndarray
    h_tilde: np.ndarray
    negative_eigenvalues: bool
    scan: linear.LinearScanCache


class KernelScanCache(NamedTuple):
    """The gated scan's cache on the kernel backends (numba, CUDA), whose fused
    kernels form the gates themselves: ``h (B, T, H)`` every state (what ``dy`` is checked against),
    ``backend``, and ``kernel``, the kernel module's own cache."""

    h: np.ndarray
    backend: str
    kernel: Any


class MinGRUCache(NamedTuple):
    """What :func:`backward` needs: ``x (B, T, D)``, ``core`` (a
    :class:`GatedScanCache`, or a :class:`KernelScanCache` on the kernel backends)
    and ``param_shapes`` (``{name: shape}`` of the forward's params)."""

    x: np.ndarray
    core: GatedScanCache | KernelScanCache
    param_shapes: dict


class MinGRUStepCache(NamedTuple):
    """One step's cache: ``params``, ``x_t (B, D)``, ``h_prev (B, H)``, ``z = σ(k)``,
    ``keep = σ(−k)``, ``h_tilde``, ``a`` (each ``(B, H)``) and ``negative_eigenvalues``."""

    params: dict
    x_t: np.ndarray
    h_prev: np.ndarray
    z: np.ndarray
    keep: np.ndarray
    h_tilde: np.ndarray
    a: np.ndarray
    negative_eigenvalues: bool


def init_params(rng: np.random.Generator, input_size: int, hidden_size: int,
                dtype=np.float64) -> dict[str, np.ndarray]:
    """Every entry ~ U(−1/√D, 1/√D) (a linear layer's default, as in the paper's code).

    Returns ``{"W_z": (H, D), "b_z": (H,), "W_h": (H, D), "b_h": (H,)}``.
    """
    return uniform_params(rng, PARAM_SHAPES, input_size, hidden_size, dtype)


def uniform_params(rng: np.random.Generator, shapes: dict, input_size: int, hidden_size: int,
                   dtype=np.float64) -> dict[str, np.ndarray]:
    """``{name: U(−1/√D, 1/√D) of shape spec}`` for named specs over ``("H", "D")``
    (minGRU's and minLSTM's initialisation), drawn in the order of ``shapes``."""
    k = 1.0 / np.sqrt(input_size)
    size = {"H": hidden_size, "D": input_size}
    return {n: rng.uniform(-k, k, tuple(size[s] for s in spec)).astype(dtype)
            for n, spec in shapes.items()}


def zero_state(params: dict, batch_size: int, dtype=None) -> np.ndarray:
    """``h_{-1} = 0`` of shape ``(B, H)`` (a CuPy array when the params are)."""
    W_h = params["W_h"]
    return _backend.xp_of(W_h).zeros((batch_size, W_h.shape[0]), dtype or W_h.dtype)


# ---------------------------------------------------------------------------
# the pieces minGRU and minLSTM share: projections, the write gate, the scan
# ---------------------------------------------------------------------------

def project(params: dict, x: np.ndarray, name: str) -> np.ndarray:
    """``x W_name^T + b_name``: ``x (..., D)`` → ``(..., H)``."""
    return x @ params["W_" + name].T + params["b_" + name]


def project_backward(params: dict, x: np.ndarray,
                     dk: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """Back through :func:`project` for every ``name`` in ``dk`` (``x (N, D)``,
    ``dk[name] (N, H)``): ``dx = Σ_name dk W_name`` and
    ``{W_name: dk^T x, b_name: Σ_N dk}``."""
    dparams, dx = {}, 0
    for name, d in dk.items():
        dparams["W_" + name] = d.T @ x
        dparams["b_" + name] = d.sum(axis=0)
        dx = dx + d @ params["W_" + name]
    return dx, dparams


def write_gate(s: np.ndarray, h_tilde: np.ndarray, negative_eigenvalues: bool = False,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The scan's coefficients from the write-gate logit ``s`` (each ``(..., H)``):
    ``w = σ(s)``, ``keep = σ(−s)`` (= 1 − w, exact near 0),
    ``a = keep`` (``keep − w`` with negative eigenvalues), ``b = w ⊙ h̃``.
    Returns ``(w, keep, a, b)``."""
    w, keep = sigmoid(s), sigmoid(-s)
    a = keep - w if negative_eigenvalues else keep
    return w, keep, a, w * h_tilde


def write_gate_backward(w: np.ndarray, keep: np.ndarray, h_tilde: np.ndarray, db: np.ndarray,
                        *, da: np.ndarray | None = None, dlog_a: np.ndarray | None = None,
                        negative_eigenvalues: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Back through :func:`write_gate`: ``(ds, dh̃)`` from ``db`` and either ``da``
    or, when the scan was given ``log a = log σ(−s)`` (the log method), ``dlog_a``
    (``= da ⊙ a``; ``∂ log a/∂s = −w``)."""
    if dlog_a is not None:
        ds = (db * h_tilde * keep - dlog_a) * w
    else:
        c = 2 if negative_eigenvalues else 1
        dw = db * h_tilde - c * da      # through a = 1 − c w and b = w ⊙ h̃
        ds = dw * w * keep              # σ'(s) = w (1 − w)
    return ds, db * w                   # b = w ⊙ h̃


def check_options(where: str, method: str, backend: str, chunk_size: int | None,
                  negative_eigenvalues: bool) -> None:
    """The option checks of :func:`forward` (and minLSTM's): method, backend,
    ``chunk_size``, and no ``log`` with negative eigenvalues (``a`` may be ≤ 0)."""
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what=where, method=method,
                     backend_methods=BACKEND_METHODS)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    if method == "log" and negative_eigenvalues:
        raise ValueError(
            "method: 'log' needs a > 0 (it takes log a), but negative_eigenvalues=True "
            "gives multipliers a in (−1, 1); expected 'recurrent', 'hillis_steele', "
            f"'blelloch' or 'chunked' with negative_eigenvalues, got {method!r}")


def gated_scan(s: np.ndarray, h_tilde: np.ndarray, h0: np.ndarray, *,
               negative_eigenvalues: bool = False, method: str = "recurrent",
               chunk_size: int | None = None, backend: str = "numpy",
               ) -> tuple[np.ndarray, np.ndarray, GatedScanCache]:
    """``h_t = (1 − w_t) ⊙ h_{t−1} + w_t ⊙ h̃_t`` with ``w = σ(s)``, over axis 1.

    ``s, h_tilde (B, T, H)``, ``h0 (B, H)`` (already checked by the caller).
    The ``log`` method gets ``log a = log σ(−s)`` from ``s`` itself.
    Returns ``h (B, T, H)``, ``h_T (B, H)`` and the cache for
    :func:`gated_scan_backward`.
    """
    w, keep, a, b = write_gate(s, h_tilde, negative_eigenvalues)
    if method == "log":  # the log gates themselves: σ(−s) may underflow, log σ(−s) does not
        a, log_a = None, log_sigmoid(-s)
    else:
        log_a = None
    h, h_T, scan = linear.forward(a, b, h0, log_a=log_a, method=method, chunk_size=chunk_size,
                                  backend=backend)
    return h, h_T, GatedScanCache(w, keep, h_tilde, negative_eigenvalues, scan)


def gated_scan_backward(cache: GatedScanCache, dy: np.ndarray | None,
                        dstate: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Back through :func:`gated_scan`: ``dy (B, T, H)`` ∂L/∂h and ``dstate (B, H)``
    ∂L/∂h_T (each ``None`` for zeros; checked against the forward's outputs) →
    ``(ds, dh̃, dh0)``."""
    V.grad_like("dy", dy, cache.scan.h, "y")
    V.grad_state("dstate", dstate, cache.scan.h[:, -1])
    g = linear.backward(cache.scan, dy, dstate)
    ds, dh_tilde = write_gate_backward(cache.w, cache.keep, cache.h_tilde, g["b"],
                                       da=g.get("a"), dlog_a=g.get("log_a"),
                                       negative_eigenvalues=cache.negative_eigenvalues)
    return ds, dh_tilde, g["initial_state"]


def kernel_scan(family: str, logits: tuple, h_tilde: np.ndarray, h0: np.ndarray, *,
                negative_eigenvalues: bool, method: str, chunk_size: int | None, backend: str,
                ) -> tuple[np.ndarray, np.ndarray, KernelScanCache]:
    """The gated scan on a kernel backend: ``family``'s fused kernel (``"mingru"``:
    ``logits = (s,)``; ``"minlstm"``: ``(k_f, k_i)``) computes the gates from the
    logits inside the scan. Returns ``h``, ``h_T`` and a :class:`KernelScanCache`."""
    h, h_T, kernel = _backend.kernels(family, backend).forward(
        *logits, h_tilde, h0, negative_eigenvalues=negative_eigenvalues, method=method,
        chunk_size=chunk_size)
    return h, h_T, KernelScanCache(h, backend, kernel)


def kernel_scan_backward(family: str, cache: KernelScanCache, dy: np.ndarray | None,
                         dstate: np.ndarray | None) -> tuple:
    """Back through :func:`kernel_scan` (``dy``, ``dstate`` checked first):
    ``(ds, dh̃, dh0)`` for minGRU, ``(dk_f, dk_i, dh̃, dh0)`` for minLSTM."""
    dy = V.grad_like("dy", dy, cache.h, "y", fill=True)
    dstate = V.grad_state("dstate", dstate, cache.h[:, -1], fill=True)
    return _backend.kernels(family, cache.backend).backward(cache.kernel, dy, dstate)


# ---------------------------------------------------------------------------
# one step
# ---------------------------------------------------------------------------

def step_forward(params: dict, x_t: np.ndarray, h_prev: np.ndarray, *,
                 negative_eigenvalues: bool = False) -> tuple[np.ndarray, MinGRUStepCache]:
    """One step: ``h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t`` (``a_t = 1 − 2 z_t``
    with negative eigenvalues).

    ``x_t (B, D)``, ``h_prev (B, H)`` → ``h_t (B, H)`` and a :class:`MinGRUStepCache`.
    """
    h_tilde = project(params, x_t, "h")
    z, keep, a, b = write_gate(project(params, x_t, "z"), h_tilde, negative_eigenvalues)
    h = a * h_prev + b
    return h, MinGRUStepCache(params, x_t, h_prev, z, keep, h_tilde, a, negative_eigenvalues)


def step_backward(dh_next: np.ndarray, cache_t: MinGRUStepCache,
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Back through one step: returns ``dx_t (B, D)``, ``dh_prev (B, H)`` and the
    step's parameter gradients (``da = dh ⊙ h_{t−1}``, ``db = dh``, then the gates)."""
    c = cache_t
    dk, dh_tilde = write_gate_backward(c.z, c.keep, c.h_tilde, dh_next, da=dh_next * c.h_prev,
                                       negative_eigenvalues=c.negative_eigenvalues)
    dx, dparams = project_backward(c.params, c.x_t, {"z": dk, "h": dh_tilde})
    return dx, dh_next * c.a, dparams


# ---------------------------------------------------------------------------
# the sequence
# ---------------------------------------------------------------------------

def forward(params: dict, x: np.ndarray, state0: np.ndarray | None = None, *,
            negative_eigenvalues: bool = False, method: str = "recurrent",
            chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, MinGRUCache]:
    """Run minGRU over ``x (B, T, D)`` from ``state0 (B, H)`` (zeros if ``None``).

    Args:
        params: from :func:`init_params`.
        x: ``(B, T, D)`` real input.
        state0: ``(B, H)`` ``h_{−1}``.
        negative_eigenvalues: ``a = 1 − 2z ∈ (−1, 1)`` instead of ``1 − z``.
        method: one of :data:`METHODS`, passed to :func:`minirec.scan.linear.forward`.
        chunk_size: for ``method="chunked"``.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``y (B, T, H)`` (every ``h_t``), the final ``h (B, H)`` and a
        :class:`MinGRUCache` for :func:`backward`.
    """
    check_options("cells.mingru", method, backend, chunk_size, negative_eigenvalues)
    dtype = V.cell_inputs("mingru", params, PARAM_SHAPES, x, state0, ("B", "H"))[0]
    h0 = zero_state(params, x.shape[0], dtype) if state0 is None else state0
    k, h_tilde = project(params, x, "z"), project(params, x, "h")
    if backend != "numpy":  # gates and scan fused (kernels/{numba,cuda}/mingru)
        y, h_T, core = kernel_scan("mingru", (k,), h_tilde, h0,
                                   negative_eigenvalues=negative_eigenvalues, method=method,
                                   chunk_size=chunk_size, backend=backend)
    else:
        y, h_T, core = gated_scan(k, h_tilde, h0, negative_eigenvalues=negative_eigenvalues,
                                  method=method, chunk_size=chunk_size, backend=backend)
    return y, h_T, MinGRUCache(x, core, V.param_shapes(params))


def backward(params: dict, cache: MinGRUCache, dy: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward`: the scan's reverse scan, then the gates by hand.

    Args:
        params: the parameters given to :func:`forward`.
        cache: from :func:`forward`.
        dy: ``(B, T, H)`` ∂L/∂y (``None`` means zeros).
        dstate: ``(B, H)`` ∂L/∂h through the final state (``None`` means zeros).

    Returns:
        ``{"W_z", "b_z", "W_h", "b_h", "x" (B, T, D), "state0" (B, H)}``.
    """
    V.cache("cells.mingru.backward", cache, MinGRUCache)
    V.params_match("cells.mingru.backward", params, cache.param_shapes)
    if isinstance(cache.core, KernelScanCache):
        dk, dh_tilde, dh0 = kernel_scan_backward("mingru", cache.core, dy, dstate)
    else:
        dk, dh_tilde, dh0 = gated_scan_backward(cache.core, dy, dstate)
    B, T, D = cache.x.shape
    H = dk.shape[-1]
    dx, grads = project_backward(params, cache.x.reshape(B * T, D),
                                 {"z": dk.reshape(B * T, H), "h": dh_tilde.reshape(B * T, H)})
    grads["x"] = dx.reshape(B, T, D)
    grads["state0"] = dh0
    return grads
