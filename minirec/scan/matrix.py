"""Matrix affine scan: ``h_t = A_t h_{t-1} + b_t`` over time (axis 1).

Dimension key: B batch, T time, d state size. ``A``: ``(B, T, d, d)``,
``b``: ``(B, T, d)``, real or complex; ``h_{-1}`` is ``initial_state``
``(B, d)`` (zeros when ``None``). This is the diagonal scan of
:mod:`minirec.scan.linear` with a full transition matrix per step — the form
of DeltaNet's ``I − β k k^T``, of a linearised RNN's Jacobians (DEER/ParaRNN),
and of any time-varying linear system.

The definition (``method="recurrent"``)::

    h = h0
    for t in range(T):
        h = A[:, t] @ h + b[:, t]
        out[:, t] = h

Backward (``dh`` = ∂L/∂h_t from outside, ``dstate`` = ∂L/∂h_{T-1} through the
returned final state; ``^H`` is the conjugate transpose, the plain transpose
for real ``A``; complex gradients are ``∂L/∂Re + i ∂L/∂Im``)::

    g_{T-1} = dh_{T-1} + dstate
    g_t     = dh_t + A_{t+1}^H g_{t+1}           (a reverse matrix scan)
    db_t    = g_t
    dA_t    = g_t h_{t-1}^H                      (outer product; real part if A is real)
    dh0     = A_0^H g_0

The reverse scan is the forward scan run on flipped inputs with matrices
``C_t = A_{t+1}^H`` (``C_{T-1} = I``) and initial state ``dstate``, so each
method's backward is its own algorithm, not a call to the loop.

Methods, all equal to the loop (tested to 1e-10 relative RMS in float64):

``recurrent``      the loop above, ``T`` matrix-vector products.
``hillis_steele``  :func:`minirec.scan.associative.scan` over the pairs
                   ``(A_t, b_t)`` with the operator
                   ``(A1, b1) ∘ (A2, b2) = (A2 A1, A2 b1 + b2)``
                   (apply step 1, then step 2), Hillis–Steele levels;
                   ``h0`` is folded into the first element, ``b_0 ← b_0 + A_0 h0``.
``blelloch``       the same operator with Blelloch's work-efficient sweeps.

The parallel methods multiply ``d × d`` matrices (``O(d³)`` per combine)
where the loop needs only ``O(d²)`` per step: they trade work for depth
``O(log T)``, which pays on parallel hardware, not in NumPy on a CPU.
Keep ``‖A_t‖ ≲ 1`` (e.g. scaled orthogonal matrices): products of long runs
of larger matrices overflow, whichever method computes them.

Backends: ``"numpy"`` runs every method; ``"numba"``
(:mod:`minirec.kernels.numba.matrix_scan`) runs ``recurrent``, real or
complex: the forward as one fused loop of ``d × d`` matrix-vector products per
batch row (``prange`` over the batch), the backward as one fused reverse pass
computing ``g_t``, ``dA_t = g_t h_{t-1}^H`` and ``dh0`` together.
``"cupy"`` and ``"cuda-emulated"`` (:mod:`minirec.kernels.cuda.matrix_scan`,
the same CUDA C on a GPU or in the CPU emulator) run ``recurrent`` with one
block per batch row and a thread per state entry: per step a matrix-vector
product from the previous state in shared memory, and the reverse scan with
``A^H`` for the backward.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.scan import associative
from minirec.scan.linear import _realify

METHODS = ("recurrent", "hillis_steele", "blelloch")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# the methods each non-NumPy backend has kernels for (NumPy runs them all)
BACKEND_METHODS = {"numba": ("recurrent",), "cupy": ("recurrent",),
                   "cuda-emulated": ("recurrent",)}


class MatrixScanCache(NamedTuple):
    """What :func:`backward` needs: the matrices, all states, and how they were made.

    Fields: ``A (B, T, d, d)``; ``h (B, T, d)`` every state; ``h0 (B, d)``;
    ``method``; ``backend``; ``real`` — which of A, b, h0 were real (their
    gradients are returned real); ``kernel`` — what the backend's forward
    kept for its backward (``None`` for NumPy).
    """

    A: np.ndarray
    h: np.ndarray
    h0: np.ndarray
    method: str
    backend: str
    real: dict
    kernel: Any


# ---------------------------------------------------------------------------
# the forward algorithms, each f(A, b, h0) -> h  (new array)
# ---------------------------------------------------------------------------

def _matvec(A, x):
    """``A @ x`` for stacks: ``A (..., d, d)``, ``x (..., d)`` → ``(..., d)``."""
    return (A @ x[..., None])[..., 0]


def _recurrent(A, b, h0):
    dtype = np.result_type(A, b, h0)
    h = np.empty(b.shape, dtype=dtype)
    state = h0.astype(dtype, copy=True)
    for t in range(b.shape[1]):
        state = _matvec(A[:, t], state) + b[:, t]
        h[:, t] = state
    return h


def _affine_combine(earlier, later):
    """``(A1, b1) ∘ (A2, b2) = (A2 A1, A2 b1 + b2)``: step 1, then step 2."""
    A1, b1 = earlier
    A2, b2 = later
    return A2 @ A1, _matvec(A2, b1) + b2


def _tree(algorithm):
    def run(A, b, h0):
        dtype = np.result_type(A, b, h0)
        b = b.astype(dtype, copy=True)
        b[:, 0] += _matvec(A[:, 0], h0)  # fold the initial state into the first element
        _, h = associative.scan(_affine_combine, (A, b), axis=1, algorithm=algorithm)
        return h
    return run


_FORWARD = {
    "recurrent": _recurrent,
    "hillis_steele": _tree("hillis_steele"),
    "blelloch": _tree("blelloch"),
}


def _herm(A):
    """Conjugate transpose of the last two axes (transpose for real A)."""
    return np.conj(np.swapaxes(A, -1, -2))


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def forward(A: np.ndarray, b: np.ndarray, initial_state: np.ndarray | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, MatrixScanCache]:
    """Run ``h_t = A_t h_{t-1} + b_t`` over axis 1.

    Args:
        A: ``(B, T, d, d)`` transition matrices, real or complex.
        b: ``(B, T, d)`` inputs.
        initial_state: ``(B, d)`` ``h_{-1}``; ``None`` means zeros.
        method: one of :data:`METHODS`.
        chunk_size: accepted for the scans' common signature and checked, but
            unused: no method of this module works in chunks.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``h (B, T, d)`` all states, ``h_T (B, d)`` the final state, and the
        cache for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="scan.matrix", method=method,
                     backend_methods=BACKEND_METHODS)
    V.array("A", A, ndim=4)
    V.array("b", b, ndim=3)
    s = V.Shapes()
    s.check("A", A, ("B", "T", "d", "d"))
    s.check("b", b, ("B", "T", "d"))
    V.time_steps("A", A)
    if initial_state is not None:
        V.array("initial_state", initial_state)
        s.check("initial_state", initial_state, ("B", "d"))
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    dtype = V.common_dtype(A=A, b=b, initial_state=initial_state)
    xp = _backend.xp_of(b)  # CuPy arrays stay on the GPU (backend="cupy")
    h0 = xp.zeros((s["B"], s["d"]), dtype) if initial_state is None else initial_state
    if backend != "numpy":
        h, h_T, kernel = _backend.kernels("matrix_scan", backend).forward(A, b, h0, method=method)
    else:
        h = _FORWARD[method](A, b, h0)
        h_T, kernel = h[:, -1].copy(), None
    real = {"A": not np.iscomplexobj(A), "b": not np.iscomplexobj(b),
            "initial_state": not np.iscomplexobj(h0)}
    cache = MatrixScanCache(A, h, h0, method, backend, real, kernel)
    return h, h_T, cache


def backward(cache: MatrixScanCache, dh: np.ndarray | None,
             dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` by the reverse scan of the same method.

    Args:
        cache: from :func:`forward`.
        dh: ``(B, T, d)`` ∂L/∂h (``None`` means zeros).
        dstate: ``(B, d)`` ∂L/∂h_T through the final state (``None`` means zeros).

    Returns:
        ``{"A", "b", "initial_state"}`` with the shapes and dtypes of the
        forward's inputs (real for a real input).
    """
    V.cache("scan.matrix", cache, MatrixScanCache)
    A, h, h0 = cache.A, cache.h, cache.h0
    dh = V.grad_like("dh", dh, h, "h", fill=True)
    dstate = V.grad_state("dstate", dstate, h[:, -1], fill=True)
    if cache.backend != "numpy":
        grads = _backend.kernels("matrix_scan", cache.backend).backward(
            A, h, h0, cache.kernel, dh, dstate, method=cache.method)
        return _realify(grads, cache.real)
    # matrices of the reverse scan: C_t = A_{t+1}^H, C_{T-1} = I
    C = np.empty(A.shape, A.dtype)
    C[:, :-1] = _herm(A[:, 1:])
    C[:, -1] = np.eye(A.shape[-1], dtype=A.dtype)
    flip = lambda x: np.flip(x, axis=1)
    g = flip(_FORWARD[cache.method](flip(C), flip(dh), dstate))
    h_prev = np.concatenate([h0.astype(h.dtype)[:, None], h[:, :-1]], axis=1)
    grads = {
        "A": g[..., :, None] * np.conj(h_prev)[..., None, :],  # dA_t = g_t h_{t-1}^H
        "b": np.ascontiguousarray(g),
        "initial_state": _matvec(_herm(A[:, 0]), g[:, 0]),      # dh0 = A_0^H g_0
    }
    return _realify(grads, cache.real)
