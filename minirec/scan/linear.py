"""Diagonal affine scan: ``h_t = a_t ⊙ h_{t-1} + b_t`` over time (axis 1).

Dimension key: B batch, T time, ``...`` any trailing shape (channels, heads,
state size). ``a``, ``b``: ``(B, T, ...)``, real or complex; ``h_{-1}`` is
``initial_state`` ``(B, ...)`` (zeros when ``None``). Instead of ``a`` a
caller may pass its logarithm, ``log_a`` (``a = exp(log_a)``: a log gate
``g ≤ 0``, a ``log σ``, Mamba's ``Δ ⊙ A``); the gradient then comes back as
``"log_a"``, and the ``log`` method uses it without ever forming ``a``.

The definition (``method="recurrent"``)::

    h = h0
    for t in range(T):
        h = a[:, t] * h + b[:, t]
        out[:, t] = h

Backward (``dh`` = ∂L/∂h_t from outside, ``dstate`` = ∂L/∂h_{T-1} through the
returned final state; complex gradients are ``∂L/∂Re + i ∂L/∂Im``)::

    g_{T-1}  = dh_{T-1} + dstate
    g_t      = dh_t + conj(a_{t+1}) ⊙ g_{t+1}         (a reverse affine scan)
    db_t     = g_t
    da_t     = g_t ⊙ conj(h_{t-1})                     (real part if a is real)
    dh0      = conj(a_0) ⊙ g_0
    dlog_a_t = da_t ⊙ conj(a_t)                        (a = exp(log_a), holomorphic)

The reverse scan is the forward scan run on flipped inputs with coefficients
``c_t = conj(a_{t+1})`` (``c_{T-1} = 1``; in log space ``log c_t =
conj(log a_{t+1})``, ``log c_{T-1} = 0``) and initial state ``dstate``, so
every method's backward is its own parallel algorithm, not a call to the loop.

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
                   ``b`` (real and imaginary). It takes ``log a``: pass
                   ``log_a`` directly (any finite real, or complex), or real
                   ``a > 0`` (complex ``a ≠ 0``), whose log it takes — a gate
                   whose ``exp`` underflowed to 0 can only come as ``log_a``.

Backends: ``"numpy"`` runs every method; ``"numba"``
(:mod:`minirec.kernels.numba.linear_scan`) has kernels for ``recurrent``
(fused forward and one fused reverse pass for the backward) and ``chunked``
(``prange`` over chunks; its backward is the chunked kernel on the reversed
coefficients, like the NumPy path).

Output buffers. ``forward(..., out=h_buf)`` writes ``h`` into a caller's array
and ``backward(..., out={"a": da_buf, "b": db_buf})`` the gradients into
caller's arrays, so a training loop that calls the scan again and again with
the same shapes reuses memory instead of faulting in fresh pages every call
(at (8, 4096, 1024) float32 a new 128 MiB array costs about as much as the
scan itself, which reads and writes each element once). The numba kernels
write straight into them; the other backends compute and copy. ``h`` then
lives in ``out``, and the cache refers to it: a later forward into the same
buffer makes this cache's backward raise instead of using the overwritten
states.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.scan import associative

METHODS = ("recurrent", "hillis_steele", "blelloch", "chunked", "log")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# the methods each non-NumPy backend has kernels for (NumPy runs them all)
BACKEND_METHODS = {"numba": ("recurrent", "chunked"), "cupy": ("recurrent", "chunked"),
                   "cuda-emulated": ("recurrent", "chunked")}
# the backends whose kernels write into ``out=`` buffers themselves (the others
# compute into new arrays, which are then copied into ``out``)
OUT_BACKENDS = ("numba",)


class LinearScanCache(NamedTuple):
    """What :func:`backward` needs: the coefficients, all states, and how they were made.

    Fields: ``a (B, T, ...)`` the coefficients (``exp(log_a)`` when the forward
    was given ``log_a``); ``log_a (B, T, ...)`` as given, or ``None`` when the
    forward was given ``a``; ``h (B, T, ...)`` every state; ``h0 (B, ...)``;
    ``method``; ``chunk_size`` (resolved: the default filled in for
    ``"chunked"``); ``backend``; ``real`` — for each gradient name (``"a"`` or
    ``"log_a"``, ``"b"``, ``"initial_state"``), whether that input was real
    (its gradient is returned real); ``kernel`` — what the backend's forward
    kept for its backward (``None`` for NumPy); ``out_stamp`` — ``None``, or
    when ``h`` was written into a caller's ``out`` buffer, ``(address, n)``:
    the buffer's address and the count of forwards that had written there
    (:func:`backward` refuses the cache once another forward has).
    """

    a: np.ndarray
    log_a: np.ndarray | None
    h: np.ndarray
    h0: np.ndarray
    method: str
    chunk_size: int | None
    backend: str
    real: dict
    kernel: Any
    out_stamp: tuple[int, int] | None = None


# ---------------------------------------------------------------------------
# the forward algorithms, each f(a, b, h0, chunk_size) -> h  (new array);
# the log method takes log a in place of a
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


def _log(log_a, b, h0, chunk_size=None):
    dtype = np.result_type(log_a, b, h0)
    complex_case = np.iscomplexobj(log_a) or np.iscomplexobj(b) or np.iscomplexobj(h0)
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


def _check_log_coefficients(a, log_a):
    """``method="log"`` takes ``log a``: ``a`` must have one, ``log_a`` must be > −inf."""
    other = "method='recurrent', 'blelloch' and 'chunked' take any a"
    if log_a is not None:
        bad = np.isneginf(log_a.real)
        if np.any(bad):
            raise ValueError(
                f"log_a: method='log' expected log_a > -inf (a = exp(log_a) = 0 resets the "
                f"state, which a log-space scan cannot represent), got -inf at index "
                f"{tuple(int(i) for i in np.argwhere(bad)[0])} ({other})")
    elif np.iscomplexobj(a):
        if np.any(a == 0):
            raise ValueError(
                f"a: method='log' expected nonzero complex a (it takes log a), got a == 0 at "
                f"index {tuple(int(i) for i in np.argwhere(a == 0)[0])}. If a is exp of "
                f"something that underflowed, pass that exponent as log_a=... instead of a "
                f"({other})")
    elif np.any(a <= 0):
        raise ValueError(
            f"a: method='log' expected a > 0 (it takes log a), got min(a) = "
            f"{float(np.min(a))!r}. If a is exp of a log gate (e.g. exp(g) that underflowed "
            f"to 0), pass the log gate itself: forward(None, b, log_a=g, method='log') "
            f"({other})")


# ---------------------------------------------------------------------------
# caller's output buffers (out=)
# ---------------------------------------------------------------------------

# forwards and backwards written into each out= buffer so far, by the buffer's
# address: a cache whose h lives in a buffer written again since is stale
_OUT_WRITES: dict[int, int] = {}


def _stamp(out) -> tuple[int, int]:
    """Count one more write into the buffer ``out``; its ``(address, count)``."""
    data = out.data
    address = int(data.ptr) if hasattr(data, "ptr") else int(out.__array_interface__["data"][0])
    _OUT_WRITES[address] = _OUT_WRITES.get(address, 0) + 1
    return address, _OUT_WRITES[address]


def _check_out(name, out, like_name, shape, dtype, like, others):
    """``out`` must be an array of ``like``'s kind (NumPy or CuPy), of ``shape``
    and ``dtype`` (those of ``like_name``, what it will hold), C-contiguous and
    writeable, and share no memory with any array in ``others`` (name →
    array or ``None``)."""
    V.array(name, out)
    xp = _backend.xp_of(like)
    if _backend.xp_of(out) is not xp:
        raise TypeError(f"{name}: expected a {xp.__name__} array like the inputs, got "
                        f"{type(out).__module__}.{type(out).__name__}")
    if np.dtype(out.dtype) != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} (that of {like_name}), "
                        f"got {out.dtype}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (that of {like_name}), "
                         f"got {tuple(out.shape)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array, got strides "
                         f"{tuple(out.strides)}")
    if not getattr(out.flags, "writeable", True):
        raise ValueError(f"{name}: expected a writeable array, got a read-only one")
    for other, x in others.items():
        if x is not None and xp.may_share_memory(out, x):
            raise ValueError(f"{name}: expected an array that shares no memory with "
                             f"{other}, got one that overlaps it")


def _check_grad_out(out, cache, dh, dstate):
    """The ``out=`` of :func:`backward`: a dict of buffers keyed like its result."""
    name = "a" if cache.log_a is None else "log_a"
    keys = (name, "b", "initial_state")
    if not isinstance(out, dict):
        raise TypeError(f"out: expected a dict of arrays keyed by some of {keys}, got "
                        f"{type(out).__name__}")
    for k in out:
        if k not in keys:
            raise ValueError(f"out: expected keys among {keys}, got {k!r}")
    h = cache.h
    real_dtype = np.finfo(h.dtype).dtype
    shapes = {name: h.shape, "b": h.shape, "initial_state": cache.h0.shape}
    others = {"dh": dh, "dstate": dstate, "the forward's a": cache.a, "log_a": cache.log_a,
              "h": h, "initial_state": cache.h0}
    for k, buf in out.items():
        dtype = real_dtype if cache.real[k] else h.dtype
        _check_out(f"out[{k!r}]", buf, f"the gradient of {k}", shapes[k], dtype, h, others)
        others[f"out[{k!r}]"] = buf


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def forward(a: np.ndarray | None, b: np.ndarray, initial_state: np.ndarray | None = None, *,
            log_a: np.ndarray | None = None, method: str = "recurrent",
            chunk_size: int | None = None, backend: str = "numpy",
            out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, LinearScanCache]:
    """Run ``h_t = a_t ⊙ h_{t-1} + b_t`` over axis 1.

    Give the coefficients either as ``a`` or, keyword-only, as their log
    ``log_a`` (then ``a`` is ``None``): ``forward(None, x, h0, log_a=g)`` runs
    ``h_t = exp(g_t) ⊙ h_{t-1} + x_t`` and :func:`backward` returns
    ``"log_a"`` in place of ``"a"``. Every method accepts either;
    ``method="log"`` uses ``log_a`` as it is (never forming ``exp(log_a)`` in
    the scan), so saturated gates whose ``exp`` underflows to 0 still run.

    Args:
        a: ``(B, T, ...)`` multipliers, real or complex, any values
            (``method="log"`` needs real ``a > 0`` or complex ``a ≠ 0``); or
            ``None`` when ``log_a`` is given.
        b: ``(B, T, ...)`` inputs, same shape as ``a``.
        initial_state: ``(B, ...)`` ``h_{-1}``; ``None`` means zeros.
        log_a: ``(B, T, ...)`` ``log a``, real or complex (``a = exp(log_a)``;
            ``method="log"`` needs ``log_a > -inf``); exclusive with ``a``.
        method: one of :data:`METHODS`.
        chunk_size: chunk length for ``"chunked"`` (default ⌈√T⌉); checked,
            and unused, by the other methods.
        backend: one of :data:`BACKENDS`.
        out: ``None`` (``h`` is a new array), or a ``(B, T, ...)`` array of
            ``h``'s dtype (the common dtype of the inputs), C-contiguous,
            writeable, sharing no memory with the inputs, into which ``h`` is
            written and which is returned as ``h``. Reusing one buffer across
            calls saves allocating (and faulting in) ``h`` each time. The
            cache refers to it: run :func:`backward` before writing into it
            again (a later forward or backward into it makes this cache's
            backward raise).

    Returns:
        ``h (B, T, ...)`` all states (``out`` when given), ``h_T (B, ...)`` the
        final state, and the cache for :func:`backward`.
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="scan.linear", method=method,
                     backend_methods=BACKEND_METHODS)
    if (a is None) == (log_a is None):
        raise TypeError("scan.linear.forward: expected the coefficients as exactly one of a "
                        "and log_a, got " + ("neither" if a is None else "both"))
    name, coef = ("a", a) if log_a is None else ("log_a", log_a)
    V.array(name, coef, min_ndim=2)
    V.array("b", b, min_ndim=2)
    V.same_shape("b", b, name, coef)
    T = V.time_steps(name, coef)
    state_shape = coef.shape[:1] + coef.shape[2:]
    if initial_state is not None:
        V.array("initial_state", initial_state)
        if tuple(initial_state.shape) != state_shape:
            raise ValueError(f"initial_state: expected shape {state_shape} (B, ...), "
                             f"got {tuple(initial_state.shape)}")
    chunk_size = V.positive_int("chunk_size", chunk_size, allow_none=True)
    if method == "chunked" and chunk_size is None:
        # ⌈√T⌉ on the CPU; a CUDA block scan picks its own tile (kernels/cuda/linear_scan)
        chunk_size = None if backend in _backend.CUDA_BACKENDS else default_chunk_size(T)
    dtype = V.common_dtype(**{name: coef}, b=b, initial_state=initial_state)
    if out is not None:
        _check_out("out", out, "h", coef.shape, dtype, b,
                   {name: coef, "b": b, "initial_state": initial_state})
    if method == "log":
        _check_log_coefficients(a, log_a)
    if log_a is not None:
        a = np.exp(log_a)
    xp = _backend.xp_of(b)  # CuPy arrays stay on the GPU (backend="cupy")
    h0 = xp.zeros(state_shape, dtype) if initial_state is None else initial_state
    if backend != "numpy":
        into = {"out": out} if out is not None and backend in OUT_BACKENDS else {}
        h, h_T, kernel = _backend.kernels("linear_scan", backend).forward(
            a, b, h0, method=method, chunk_size=chunk_size, **into)
    else:
        if method == "log":  # the log-space scan takes log a, never a
            h = _log(np.log(a) if log_a is None else log_a, b, h0)
        else:
            h = _FORWARD[method](a, b, h0, chunk_size)
        h_T, kernel = h[:, -1].copy(), None
    if out is not None and h is not out:
        xp.copyto(out, h)
        h = out
    real = {name: not np.iscomplexobj(coef), "b": not np.iscomplexobj(b),
            "initial_state": not np.iscomplexobj(h0)}
    cache = LinearScanCache(a, log_a, h, h0, method, chunk_size, backend, real, kernel,
                            None if out is None else _stamp(out))
    return h, h_T, cache


def backward(cache: LinearScanCache, dh: np.ndarray | None,
             dstate: np.ndarray | None = None, *,
             out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Gradients of :func:`forward` by the reverse scan of the same method.

    Args:
        cache: from :func:`forward`.
        dh: ``(B, T, ...)`` ∂L/∂h (``None`` means zeros).
        dstate: ``(B, ...)`` ∂L/∂h_T through the final state (``None`` means zeros).
        out: ``None``, or a dict of buffers for some of the gradients, keyed
            like the result (``"a"`` or ``"log_a"``, ``"b"``,
            ``"initial_state"``): each an array of that gradient's shape and
            dtype, C-contiguous, writeable, sharing no memory with ``dh``,
            ``dstate``, the cache's arrays or the other buffers. Those
            gradients are written into them (``out={"a": da, "b": db}``
            reuses two ``(B, T, ...)`` arrays across calls) and returned.

    Returns:
        ``{"a", "b", "initial_state"}`` — ``{"log_a", "b", "initial_state"}``
        when the forward was given ``log_a`` — with the shapes and dtypes of
        the forward's inputs (real for a real input); the ``out`` buffers
        where given.
    """
    V.cache("scan.linear", cache, LinearScanCache)
    if cache.out_stamp is not None and _OUT_WRITES.get(cache.out_stamp[0]) != cache.out_stamp[1]:
        raise ValueError("cache: expected the states h that the forward wrote into its out "
                         "buffer, got a cache whose out buffer has been written into since "
                         "(by a later forward or backward); run backward before reusing it")
    h = cache.h
    if out is not None:
        _check_grad_out(out, cache, dh, dstate)
    dh = V.grad_like("dh", dh, h, "h", fill=True)
    dstate = V.grad_state("dstate", dstate, h[:, -1], fill=True)
    if cache.backend != "numpy":
        into = {}
        if out is not None and cache.backend in OUT_BACKENDS:
            # the kernels compute in h's dtype: buffers of that dtype take their
            # gradient directly (a log_a buffer takes da, scaled in place below)
            into = {"out": {("a" if k == "log_a" else k): v for k, v in out.items()
                            if v.dtype == h.dtype}}
        grads = _backend.kernels("linear_scan", cache.backend).backward(
            cache.a, h, cache.h0, cache.kernel, dh, dstate,
            method=cache.method, chunk_size=cache.chunk_size, **into)
    else:
        grads = _reverse(cache, dh, dstate)
    if cache.log_a is not None:  # a = exp(log_a): ∂L/∂log_a = ∂L/∂a ⊙ conj(a)
        da = grads.pop("a")
        xp = _backend.xp_of(da)
        conj_a = xp.conj(cache.a) if xp.iscomplexobj(cache.a) else cache.a
        in_place = out is not None and da is out.get("log_a")
        grads = {"log_a": xp.multiply(da, conj_a, out=da if in_place else None), **grads}
    grads = _realify(grads, cache.real)
    if out is not None:
        for k, buf in out.items():
            if grads[k] is not buf:
                _backend.xp_of(buf).copyto(buf, grads[k])
                grads[k] = buf
            _stamp(buf)
    return grads


def _reverse(cache, dh, dstate):
    """The NumPy backward: ``g`` by the forward algorithm on the reversed scan."""
    a, h, h0 = cache.a, cache.h, cache.h0
    flip = lambda x: np.flip(x, axis=1)
    if cache.method == "log":  # log c_t = conj(log a_{t+1}), log c_{T-1} = 0
        log_a = np.log(a) if cache.log_a is None else cache.log_a
        log_c = np.zeros(log_a.shape, log_a.dtype)
        log_c[:, :-1] = np.conj(log_a[:, 1:])
        g = flip(_log(flip(log_c), flip(dh), dstate))
    else:  # c_t = conj(a_{t+1}), c_{T-1} = 1
        c = np.empty(a.shape, a.dtype)
        c[:, :-1] = np.conj(a[:, 1:])
        c[:, -1] = 1
        g = flip(_FORWARD[cache.method](flip(c), flip(dh), dstate, cache.chunk_size))
    h_prev = np.concatenate([h0.astype(h.dtype)[:, None], h[:, :-1]], axis=1)
    return {
        "a": g * np.conj(h_prev),
        "b": np.ascontiguousarray(g),
        "initial_state": np.conj(a[:, 0]) * g[:, 0],
    }


def _realify(grads: dict[str, np.ndarray], real: dict[str, bool]) -> dict[str, np.ndarray]:
    """Gradients of real inputs are real: ∂L/∂x = Re(∂L/∂Re + i ∂L/∂Im).

    Shared by :mod:`minirec.scan.matrix`.
    """
    for name, is_real in real.items():
        if is_real and np.iscomplexobj(grads[name]):
            grads[name] = _backend.xp_of(grads[name]).ascontiguousarray(grads[name].real)
    return grads
