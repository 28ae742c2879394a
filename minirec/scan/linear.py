"""Diagonal affine scan: ``h_t = a_t ⊙ h_{t-1} + b_t`` over time (axis 1).

Dimension key: B batch, T time, ``...`` any trailing shape (channels, heads,
state size). ``a``, ``b``: ``(B, T, ...)``, real or complex; ``h_{-1}`` is
``initial_state`` ``(B, ...)`` (zeros when ``None``).

The definition (``method="recurrent"``)::

    h = h0
    for t in range(T):
        h = a[:, t] * h + b[:, t]
        out[:, t] = h

Backward (``dh`` = ∂L/∂h_t from outside, ``dh_T`` = ∂L/∂h_{T-1} through the
returned final state; complex gradients are ``∂L/∂Re + i ∂L/∂Im``):

    g_{T-1} = dh_{T-1} + dh_T
    g_t     = dh_t + conj(a_{t+1}) ⊙ g_{t+1}          (a reverse affine scan)
    db_t    = g_t
    da_t    = g_t ⊙ conj(h_{t-1})                      (real part if a is real)
    dh0     = conj(a_0) ⊙ g_0

The reverse scan is the forward scan run on flipped inputs with coefficients
``c_t = conj(a_{t+1})`` (``c_{T-1} = 1``) and initial state ``dh_T``, so every
method's backward is its own parallel algorithm, not a call to the loop.

Methods, all equal to the loop (tested to 1e-10 relative RMS in float64):

``recurrent``      the loop above.
``hillis_steele``  :func:`minirec.scan.associative.scan` with the affine
                   operator ``(a1, b1) ∘ (a2, b2) = (a2 a1, a2 b1 + b2)``,
                   Hillis–Steele levels; ``h0`` is folded into ``b_0``.
``blelloch``       the same operator with Blelloch's work-efficient sweeps.
``chunked``        reduce-then-scan: a local scan inside each chunk of
                   ``chunk_size`` steps (all chunks at once), a short scan of
                   the chunk carries, then a broadcast correction
                   ``h = h_local + (Π a within chunk) ⊙ carry``.
``log``            Heinsen's log-space scan,
                   ``h_t = e^{A*_t} (h0 + Σ_{i≤t} b_i e^{−A*_i})`` with
                   ``A*_t = Σ_{i≤t} log a_i``, the sum taken by a stable
                   ``logaddexp`` prefix over the positive and negative parts of
                   ``b`` (real and imaginary). Requires real ``a > 0``
                   (complex ``a ≠ 0``).

Backends: ``"numpy"`` runs every method; ``"numba"``
(:mod:`minirec.kernels.numba.linear_scan`) has kernels for ``recurrent``
(fused forward and one fused reverse pass for the backward) and ``chunked``
(``prange`` over chunks; its backward is the chunked kernel on the reversed
coefficients, like the NumPy path).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.scan import associative

METHODS = ("recurrent", "hillis_steele", "blelloch", "chunked", "log")
BACKENDS = ("numpy", "numba")
# the methods each non-NumPy backend has kernels for (NumPy runs them all)
BACKEND_METHODS = {"numba": ("recurrent", "chunked")}


class LinearScanCache(NamedTuple):
    """What :func:`backward` needs: the gates, all states, and how they were made.

    Fields: ``a (B, T, ...)``; ``h (B, T, ...)`` every state; ``h0 (B, ...)``;
    ``method``; ``chunk_size``; ``backend``; ``real`` — which of a, b, h0 were
    real (their gradients are returned real).
    """

    a: np.ndarray
    h: np.ndarray
    h0: np.ndarray
    method: str
    chunk_size: int | None
    backend: str
    real: dict


# ---------------------------------------------------------------------------
# the forward algorithms, each f(a, b, h0, chunk_size) -> h  (new array)
# ---------------------------------------------------------------------------

def _recurrent(a, b, h0, chunk_size=None):
    dtype = np.result_type(a, b, h0)
    h = np.empty(b.shape, dtype=dtype)
    state = h0.astype(dtype, copy=True)
    for t in range(b.shape[1]):
        state = a[:, t] * state + b[:, t]
        h[:, t] = state
    return h


def _affine_combine(earlier, later):
    a1, b1 = earlier
    a2, b2 = later
    return a2 * a1, a2 * b1 + b2


def _tree(algorithm):
    def run(a, b, h0, chunk_size=None):
        dtype = np.result_type(a, b, h0)
        b = b.astype(dtype, copy=True)
        b[:, 0] += a[:, 0] * h0  # fold the initial state into the first element
        _, h = associative.scan(_affine_combine, (a, b), axis=1, algorithm=algorithm)
        return h
    return run


def default_chunk_size(T: int) -> int:
    """⌈√T⌉: balances the in-chunk loop (C steps) and the carry scan (T/C steps)."""
    return max(1, int(np.ceil(np.sqrt(T))))


def _chunked(a, b, h0, chunk_size=None):
    B, T = b.shape[:2]
    rest = b.shape[2:]
    C = chunk_size or default_chunk_size(T)
    n = -(-T // C)
    dtype = np.result_type(a, b, h0)
    pad = n * C - T
    if pad:  # a = 1, b = 0 past the end leaves the state unchanged
        a = np.concatenate([a, np.ones((B, pad) + rest, a.dtype)], axis=1)
        b = np.concatenate([b, np.zeros((B, pad) + rest, b.dtype)], axis=1)
    a_r = a.reshape((B, n, C) + rest)
    b_r = b.reshape((B, n, C) + rest)
    # 1. reduce: local scan from zero inside every chunk, all chunks at once
    local = np.empty((B, n, C) + rest, dtype)
    prod = np.empty((B, n, C) + rest, a.dtype)
    acc = np.zeros((B, n) + rest, dtype)
    acc_a = np.ones((B, n) + rest, a.dtype)
    for j in range(C):
        acc = a_r[:, :, j] * acc + b_r[:, :, j]
        acc_a = acc_a * a_r[:, :, j]
        local[:, :, j] = acc
        prod[:, :, j] = acc_a
    # 2. scan the carries: state entering chunk c
    ends = _recurrent(prod[:, :, -1], local[:, :, -1], h0)
    carry = np.concatenate([h0.astype(dtype)[:, None], ends[:, :-1]], axis=1)
    # 3. correct every position with the carry that enters its chunk
    h = local + prod * carry[:, :, None]
    return h.reshape((B, n * C) + rest)[:, :T]


def _log(a, b, h0, chunk_size=None):
    dtype = np.result_type(a, b, h0)
    complex_case = np.iscomplexobj(a) or np.iscomplexobj(b) or np.iscomplexobj(h0)
    log_a = np.log(a.astype(np.result_type(a, np.float32)))
    A = np.cumsum(log_a, axis=1)  # A*_t = Σ_{i≤t} log a_i (complex if a is)
    R = A.real
    # prepend h0 as element -1 with A*_{-1} = 0
    zeros = np.zeros_like(R[:, :1])
    R_ext = np.concatenate([zeros, R], axis=1)
    w = np.concatenate([h0.astype(dtype)[:, None], b.astype(dtype)], axis=1)
    if np.iscomplexobj(A):
        P_ext = np.concatenate([zeros, A.imag], axis=1)
        w = w * np.exp(-1j * P_ext)  # rotate out the phase of A*, exactly
    parts = [(w.real, 1.0)]
    if complex_case:
        parts.append((w.imag, 1j))
    out = np.zeros(b.shape, dtype)
    with np.errstate(divide="ignore"):
        for part, unit in parts:
            for sign in (1.0, -1.0):
                mag = np.maximum(sign * part, 0)
                L = np.logaddexp.accumulate(np.log(mag) - R_ext, axis=1)
                out += (sign * unit) * np.exp(R + L[:, 1:])
    if np.iscomplexobj(A):
        out *= np.exp(1j * A.imag)
    return out


_FORWARD = {
    "recurrent": _recurrent,
    "hillis_steele": _tree("hillis_steele"),
    "blelloch": _tree("blelloch"),
    "chunked": _chunked,
    "log": _log,
}


def _check_log_gates(a):
    if np.iscomplexobj(a):
        if np.any(a == 0):
            raise ValueError("method='log' needs nonzero complex a; got a == 0 entries")
    elif np.any(a <= 0):
        raise ValueError(
            f"method='log' needs a > 0 (it takes log a); got min(a) = {float(np.min(a))!r}. "
            "Use method='recurrent', 'blelloch' or 'chunked' for a <= 0."
        )


def _run(a, b, h0, method, chunk_size, backend):
    if backend == "numpy":
        return _FORWARD[method](a, b, h0, chunk_size)
    return _backend.kernels("linear_scan", backend).forward(a, b, h0, method, chunk_size)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def forward(a: np.ndarray, b: np.ndarray, initial_state: np.ndarray | None = None, *,
            method: str = "recurrent", chunk_size: int | None = None,
            backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, LinearScanCache]:
    """Run ``h_t = a_t ⊙ h_{t-1} + b_t`` over axis 1.

    Args:
        a: ``(B, T, ...)`` multipliers, real or complex (``a ∈ [-1, 1]`` or any
            value; ``method="log"`` needs ``a > 0``).
        b: ``(B, T, ...)`` inputs, same shape as ``a``.
        initial_state: ``(B, ...)`` ``h_{-1}``; ``None`` means zeros.
        method: one of :data:`METHODS`.
        chunk_size: chunk length for ``"chunked"`` (default ⌈√T⌉).
        backend: one of :data:`BACKENDS`.

    Returns:
        ``h (B, T, ...)`` all states, ``h_T (B, ...)`` the final state, and the
        cache for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="scan.linear")
    _backend.check_method(method, backend, BACKEND_METHODS, what="scan.linear")
    V.array("a", a, min_ndim=2)
    V.array("b", b, min_ndim=2)
    V.same_shape("b", b, "a", a)
    if a.shape[1] < 1:
        raise ValueError(f"a: expected T >= 1 along axis 1, got shape {a.shape}")
    state_shape = a.shape[:1] + a.shape[2:]
    if initial_state is not None:
        V.array("initial_state", initial_state)
        if tuple(initial_state.shape) != state_shape:
            raise ValueError(
                f"initial_state: expected shape {state_shape} (B, ...), "
                f"got {tuple(initial_state.shape)}"
            )
    chunk_size = V.positive_int("chunk_size", chunk_size, allow_none=True)
    dtype = V.common_dtype(a=a, b=b, initial_state=initial_state)
    if method == "log":
        _check_log_gates(a)
    h0 = np.zeros(state_shape, dtype) if initial_state is None else initial_state
    h = _run(a, b, h0, method, chunk_size, backend)
    real = {"a": not np.iscomplexobj(a), "b": not np.iscomplexobj(b),
            "initial_state": not np.iscomplexobj(h0)}
    cache = LinearScanCache(a, h, h0, method, chunk_size, backend, real)
    return h, h[:, -1].copy(), cache


def backward(cache: LinearScanCache, dh: np.ndarray | None,
             dh_T: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` by the reverse scan of the same method.

    Args:
        cache: from :func:`forward`.
        dh: ``(B, T, ...)`` ∂L/∂h (``None`` means zeros).
        dh_T: ``(B, ...)`` ∂L/∂h_T through the final state (``None`` means zeros).

    Returns:
        ``{"a", "b", "initial_state"}`` with the shapes of the forward's inputs.
    """
    a, h, h0 = cache.a, cache.h, cache.h0
    V.grad_like("dh", dh, h, "h")
    V.grad_like("dh_T", dh_T, h0, "h_T")
    dtype = h.dtype
    if dh is None:
        dh = np.zeros(h.shape, dtype)
    g0 = np.zeros(h0.shape, dtype) if dh_T is None else dh_T
    if cache.backend != "numpy" and cache.method == "recurrent":  # one fused reverse pass
        kern = _backend.kernels("linear_scan", cache.backend)
        da, db, dh0 = kern.backward(a, h, h0, dh, g0)
        grads = {"a": da, "b": db, "initial_state": dh0}
        return _realify(grads, cache.real)
    # coefficients of the reverse scan: c_t = conj(a_{t+1}), c_{T-1} = 1
    c = np.empty(a.shape, a.dtype)
    c[:, :-1] = np.conj(a[:, 1:])
    c[:, -1] = 1
    flip = lambda x: np.flip(x, axis=1)
    g = flip(_run(flip(c), flip(dh), g0, cache.method, cache.chunk_size, cache.backend))
    h_prev = np.concatenate([h0.astype(dtype)[:, None], h[:, :-1]], axis=1)
    grads = {
        "a": g * np.conj(h_prev),
        "b": np.ascontiguousarray(g),
        "initial_state": np.conj(a[:, 0]) * g[:, 0],
    }
    return _realify(grads, cache.real)


def _realify(grads, real):
    """Gradients of real inputs are real: ∂L/∂x = Re(∂L/∂Re + i ∂L/∂Im)."""
    for name, is_real in real.items():
        if is_real and np.iscomplexobj(grads[name]):
            grads[name] = np.ascontiguousarray(grads[name].real)
    return grads
