"""Numba kernels for the matrix affine scan ``h_t = A_t h_{t-1} + b_t``, ``method="recurrent"``.

Tested against :func:`minirec.scan.matrix.forward` / ``backward`` with
``backend="numpy"`` (tests/kernels/test_numba_matrix_scan.py).

``A (B, T, d, d)``, ``b (B, T, d)``, ``h0 (B, d)``, real or complex, C-contiguous.
The state size ``d`` is small (a DeltaNet head, a linearised RNN's Jacobian),
so each step is a ``d × d`` matrix-vector product in plain loops — row ``i`` of
``A_t`` is contiguous, so ``h_t[i] = Σ_j A_t[i, j] h_{t−1}[j] + b_t[i]`` reads
it in order — fused with the update; ``prange`` runs over the batch rows
(independent recurrences), the time loop stays inside each row.

The backward is one fused reverse pass (``^H`` the conjugate transpose):

    g_{T−1} = dh_{T−1} + dstate,     g_t = A_{t+1}^H g_{t+1} + dh_t
    db_t = g_t,    dA_t = g_t h_{t−1}^H,    dh0 = A_0^H g_0

with ``(A^H g)[j] = Σ_i conj(A[i, j]) g[i]`` accumulated row by row of ``A``
(contiguous inner loop over ``j``, written straight into ``db_t``: no
temporaries). ``fastmath`` is off so that results match the NumPy reference to
rounding. :func:`forward` and :func:`backward` at the end are the wrappers
:mod:`minirec.scan.matrix` calls, with its argument names and return
structure. This module imports nothing from the rest of minirec.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, error_model="numpy", parallel=True)
def _forward(A, b, h0, h):
    B, T, d = b.shape
    for n in prange(B):
        for t in range(T):
            for i in range(d):
                if t == 0:
                    acc = A[n, t, i, 0] * h0[n, 0]
                    for j in range(1, d):
                        acc += A[n, t, i, j] * h0[n, j]
                else:
                    acc = A[n, t, i, 0] * h[n, t - 1, 0]
                    for j in range(1, d):
                        acc += A[n, t, i, j] * h[n, t - 1, j]
                h[n, t, i] = acc + b[n, t, i]


@njit(cache=True, error_model="numpy", parallel=True)
def _backward(A, h, h0, dh, dstate, dA, db, dh0):
    B, T, d = h.shape
    for n in prange(B):
        # g_{T-1} = dh_{T-1} + dstate; g_t = A_{t+1}^H g_{t+1} + dh_t   (stored in db)
        for j in range(d):
            db[n, T - 1, j] = dstate[n, j] + dh[n, T - 1, j]
        for t in range(T - 2, -1, -1):
            for j in range(d):
                db[n, t, j] = np.conj(A[n, t + 1, 0, j]) * db[n, t + 1, 0]
            for i in range(1, d):
                g_i = db[n, t + 1, i]
                for j in range(d):
                    db[n, t, j] += np.conj(A[n, t + 1, i, j]) * g_i
            for j in range(d):
                db[n, t, j] += dh[n, t, j]
        # dA_t = g_t h_{t-1}^H
        for t in range(T):
            for i in range(d):
                g_i = db[n, t, i]
                for j in range(d):
                    h_prev = h0[n, j] if t == 0 else h[n, t - 1, j]
                    dA[n, t, i, j] = g_i * np.conj(h_prev)
        # dh0 = A_0^H g_0
        for j in range(d):
            dh0[n, j] = np.conj(A[n, 0, 0, j]) * db[n, 0, 0]
        for i in range(1, d):
            g_i = db[n, 0, i]
            for j in range(d):
                dh0[n, j] += np.conj(A[n, 0, i, j]) * g_i


def forward(A, b, initial_state, *, method):
    """``(h, h_T, None)`` as :func:`minirec.scan.matrix.forward` returns them
    (``None``: the backward needs nothing beyond the definition's cache).

    ``h (B, T, d)`` has the common dtype of ``A``, ``b``, ``initial_state``;
    ``A`` keeps its own (a real ``A`` is not copied to complex when only ``b``
    or ``initial_state`` is complex). ``method`` must be ``"recurrent"``.
    """
    if method != "recurrent":
        raise ValueError(f"method: the numba matrix scan expected 'recurrent', got {method!r}")
    dtype = np.result_type(A, b, initial_state)
    h = np.empty(b.shape, dtype)
    _forward(np.ascontiguousarray(A), np.ascontiguousarray(b, dtype=dtype),
             np.ascontiguousarray(initial_state, dtype=dtype), h)
    return h, h[:, -1].copy(), None


def backward(A, h, initial_state, kernel, dh, dstate, *, method):
    """``{"A", "b", "initial_state"}`` in ``h``'s dtype (complex when ``h`` is; the
    caller takes the real part for real inputs). ``kernel``: what :func:`forward`
    returned third (unused); ``dh (B, T, d)``, ``dstate (B, d)`` the upstream
    gradients; ``method`` must be ``"recurrent"``."""
    if method != "recurrent":
        raise ValueError(f"method: the numba matrix scan expected 'recurrent', got {method!r}")
    dtype = h.dtype
    dA = np.empty(A.shape, dtype)
    db = np.empty(h.shape, dtype)
    dh0 = np.empty(initial_state.shape, dtype)
    _backward(np.ascontiguousarray(A), np.ascontiguousarray(h),
              np.ascontiguousarray(initial_state, dtype=dtype),
              np.ascontiguousarray(dh, dtype=dtype),
              np.ascontiguousarray(dstate, dtype=dtype), dA, db, dh0)
    return {"A": dA, "b": db, "initial_state": dh0}
