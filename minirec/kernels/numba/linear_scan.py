"""Numba kernels for the diagonal affine scan ``h_t = a_t ⊙ h_{t-1} + b_t``.

Tested against :func:`minirec.scan.linear.forward` / ``backward`` with
``backend="numpy"`` (tests/kernels/test_numba_linear_scan.py).

Arrays arrive flattened to ``(B, T, R)`` with ``R`` = the product of the
trailing axes, C-contiguous, so the inner loop runs over the contiguous ``R``
axis (the bandwidth-bound layout: one read of a and b and one write of h per
element, 12 bytes/element in float32).

* ``recurrent``: one fused pass over time per batch row, ``prange`` over the
  batch rows (measured at (8, 4096, 1024) float32: 51 ms on one thread with
  indexed loads, 22 ms with ``prange``, against a 16 ms bandwidth bound).
* ``chunked``: reduce-then-scan with ``prange`` over chunks (pass 1: local
  scans and products inside every chunk; pass 2: the short carry scan; pass
  3: the correction), worth it only when ``B·R`` is small and ``T`` long.

The backward of ``recurrent`` is one fused reverse pass (``g_{T-1} =
dh_{T-1} + dstate``, ``g_t = dh_t + conj(a_{t+1}) g_{t+1}``, ``db = g``,
``da = g ⊙ conj(h_{t-1})``, ``dh0 = conj(a_0) g_0``); that of ``chunked`` is
the chunked kernel on the reversed scan.

:func:`forward` and :func:`backward` at the end are the wrappers
:mod:`minirec.scan.linear` calls, with its argument names and return
structure; they flatten, cast and allocate (or hand the caller's ``out=``
buffers to the kernels: a new 128 MiB output costs about as much to fault in
as the forward scan itself), the kernels only compute.
``fastmath`` is off so that results match the NumPy reference to rounding.
This module imports nothing from the rest of minirec.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy", parallel=True)
def _forward_recurrent(a, b, h0, h):
    # prange over batch rows (independent); the state is carried in a local
    # row and each step is one vectorisable loop over the contiguous R axis
    B, T, R = b.shape
    for i in prange(B):
        state = h0[i].copy()
        for t in range(T):
            at = a[i, t]
            bt = b[i, t]
            ht = h[i, t]
            for r in range(R):
                state[r] = at[r] * state[r] + bt[r]
                ht[r] = state[r]


@njit(cache=True, error_model="numpy", parallel=True)
def _forward_chunked(a, b, h0, h, prod, C):
    B, T, R = b.shape
    n = (T + C - 1) // C
    # pass 1: local scan from zero and running product of a inside each chunk
    for job in prange(B * n):
        i = job // n
        c = job % n
        start = c * C
        stop = min(T, start + C)
        for r in range(R):
            h[i, start, r] = b[i, start, r]
            prod[i, start, r] = a[i, start, r]
        for t in range(start + 1, stop):
            for r in range(R):
                h[i, t, r] = a[i, t, r] * h[i, t - 1, r] + b[i, t, r]
                prod[i, t, r] = a[i, t, r] * prod[i, t - 1, r]
    # pass 2: carries — the true state at each chunk's last step, in order
    for i in range(B):
        for c in range(n):
            last = min(T, (c + 1) * C) - 1
            first = c * C
            for r in range(R):
                carry = h0[i, r] if c == 0 else h[i, first - 1, r]
                h[i, last, r] = h[i, last, r] + prod[i, last, r] * carry
    # pass 3: correct the other positions with the carry entering their chunk
    for job in prange(B * n):
        i = job // n
        c = job % n
        start = c * C
        last = min(T, start + C) - 1
        for t in range(start, last):
            for r in range(R):
                carry = h0[i, r] if c == 0 else h[i, start - 1, r]
                h[i, t, r] = h[i, t, r] + prod[i, t, r] * carry


@njit(cache=True, error_model="numpy", parallel=True)
def _backward(a, h, h0, dh, dstate, da, db, dh0):
    B, T, R = h.shape
    for i in prange(B):
        g = np.empty(R, db.dtype)
        for r in range(R):
            g[r] = dstate[i, r]
        # one reverse pass: g_t = dh_t + conj(a_{t+1}) g_{t+1}, then db_t, da_t
        for t in range(T - 1, -1, -1):
            dht = dh[i, t]
            dbt = db[i, t]
            dat = da[i, t]
            h_prev = h[i, t - 1] if t > 0 else h0[i]
            if t < T - 1:
                an = a[i, t + 1]
                for r in range(R):
                    g[r] = dht[r] + np.conj(an[r]) * g[r]
            else:
                for r in range(R):
                    g[r] = dht[r] + g[r]
            for r in range(R):
                dbt[r] = g[r]
                dat[r] = g[r] * np.conj(h_prev[r])
        a0 = a[i, 0]
        for r in range(R):
            dh0[i, r] = np.conj(a0[r]) * g[r]


def _flat(x, B, T, R, dtype=None):
    """``x`` as a C-contiguous ``(B, T, R)`` array (cast to ``dtype`` if given)."""
    return np.ascontiguousarray(x, dtype=dtype).reshape(B, T, R)


def forward(a, b, initial_state, *, method, chunk_size, out=None):
    """``(h, h_T, None)`` as :func:`minirec.scan.linear.forward` returns them
    (``None``: the backward needs nothing beyond the definition's cache).

    ``a``, ``b``: ``(B, T, ...)``; ``initial_state``: ``(B, ...)`` (an array);
    ``method`` in ``("recurrent", "chunked")``; ``chunk_size``: the chunk length
    for ``"chunked"`` (resolved by the caller). ``h`` has the common dtype of
    the three; ``a`` keeps its own (a real ``a`` is not copied to complex).
    ``out``: ``None``, or a C-contiguous, writeable ``(B, T, ...)`` array of
    ``h``'s dtype that shares no memory with the inputs (checked by the
    caller); the kernels write ``h`` straight into it and it is returned as
    ``h`` (no fresh pages to fault in per call).
    """
    B, T = b.shape[:2]
    R = int(np.prod(b.shape[2:], dtype=np.int64))
    dtype = np.result_type(a, b, initial_state)
    a3 = _flat(a, B, T, R)
    b3 = _flat(b, B, T, R, dtype)
    h03 = np.ascontiguousarray(initial_state, dtype=dtype).reshape(B, R)
    h = np.empty((B, T, R), dtype) if out is None else out.reshape(B, T, R)
    if method == "recurrent":
        _forward_recurrent(a3, b3, h03, h)
    elif method == "chunked":
        prod = np.empty((B, T, R), a3.dtype)
        _forward_chunked(a3, b3, h03, h, prod, int(chunk_size))
    else:
        raise ValueError(f"method: the numba linear scan expected 'recurrent' or 'chunked', "
                         f"got {method!r}")
    h = h.reshape(b.shape) if out is None else out
    return h, h[:, -1].copy(), None


def _buffer(out, key, shape, dtype):
    """``out[key]`` viewed as ``shape`` when the caller gave it, else a new array."""
    if out is not None and key in out:
        return out[key].reshape(shape)
    return np.empty(shape, dtype)


def backward(a, h, initial_state, kernel, dh, dstate, *, method, chunk_size, out=None):
    """``{"a", "b", "initial_state"}`` in ``h``'s dtype (complex when ``h`` is;
    the caller takes the real part for real inputs).

    ``a``, ``h``, ``initial_state`` from the forward; ``kernel``: what
    :func:`forward` returned third (unused); ``dh (B, T, ...)``,
    ``dstate (B, ...)`` the upstream gradients. ``recurrent``: one fused
    reverse pass that writes ``da`` and ``db`` together (read ``a, h, dh``
    once, write ``da, db`` once). ``chunked``: the chunked forward kernel on
    the reversed scan ``g_t = dh_t + conj(a_{t+1}) g_{t+1}``
    (``c_{T-1} = 1``), then ``da = g ⊙ conj(h_{t-1})``, ``dh0 = conj(a_0) ⊙ g_0``.
    ``out``: ``None`` or a dict with some of the keys ``"a", "b",
    "initial_state"``, each a C-contiguous, writeable array of its
    gradient's shape in ``h``'s dtype sharing no memory with the rest
    (checked by the caller); those gradients are written into them and they
    are returned.
    """
    B, T = h.shape[:2]
    R = int(np.prod(h.shape[2:], dtype=np.int64))
    dtype = h.dtype
    a3 = _flat(a, B, T, R)
    h3 = _flat(h, B, T, R)
    h03 = np.ascontiguousarray(initial_state, dtype=dtype).reshape(B, R)
    dh3 = _flat(dh, B, T, R, dtype)
    ds = np.ascontiguousarray(dstate, dtype=dtype).reshape(B, R)
    da = _buffer(out, "a", (B, T, R), dtype)
    db = _buffer(out, "b", (B, T, R), dtype)
    dh0 = _buffer(out, "initial_state", (B, R), dtype)
    if method == "recurrent":
        _backward(a3, h3, h03, dh3, ds, da, db, dh0)
    elif method == "chunked":
        c = np.empty((B, T, R), a3.dtype)
        c[:, :-1] = np.conj(a3[:, 1:])
        c[:, -1] = 1
        g = np.empty((B, T, R), dtype)
        prod = np.empty((B, T, R), a3.dtype)
        _forward_chunked(np.ascontiguousarray(c[:, ::-1]), np.ascontiguousarray(dh3[:, ::-1]),
                         ds, g, prod, int(chunk_size))
        db[...] = g[:, ::-1]
        h_prev = np.concatenate([h03[:, None], h3[:, :-1]], axis=1)
        np.multiply(db, np.conj(h_prev), out=da)
        np.multiply(np.conj(a3[:, 0]), db[:, 0], out=dh0)
    else:
        raise ValueError(f"method: the numba linear scan expected 'recurrent' or 'chunked', "
                         f"got {method!r}")
    grads = {"a": da, "b": db, "initial_state": dh0}
    shapes = {"a": h.shape, "b": h.shape, "initial_state": initial_state.shape}
    return {k: out[k] if out is not None and k in out else v.reshape(shapes[k])
            for k, v in grads.items()}
