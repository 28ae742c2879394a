"""Numba matrix-scan kernels equal the NumPy definition (forward and backward).

The contract test compares every dtype at the registry's sizes; here: d = 1 and
a longer T, real matrices with complex inputs, no upstream gradients,
non-contiguous inputs, and a hand-written loop.
"""

import numpy as np
import pytest

from minirec import registry
from minirec.scan import matrix
from tests.conftest import TOL, assert_close

pytest.importorskip("numba")

ENTRY = registry.get("scan.matrix")


def _inputs(rng, dtype=np.float64, **dims):
    """``(A, b, h0)`` from the registry (``‖A_t‖ ≤ 1``); ``D`` is the state size d."""
    d = ENTRY.make_inputs(rng, dtype, "small", **dims)
    return d["A"], d["b"], d["initial_state"]


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
@pytest.mark.parametrize("B, T, d", [(3, 29, 5), (1, 17, 1)])
def test_numba_equals_numpy(dtype, B, T, d, rng):
    A, b, h0 = _inputs(rng, dtype, B=B, T=T, D=d)
    tol = TOL[np.dtype(dtype)]
    ref, ref_T, ref_c = matrix.forward(A, b, h0)
    h, h_T, c = matrix.forward(A, b, h0, backend="numba")
    assert h.dtype == ref.dtype
    assert_close(h, ref, tol, "h")
    assert_close(h_T, ref_T, tol, "h_T")
    _, dh, dstate = _inputs(rng, dtype, B=B, T=T, D=d)  # random, shaped like h and h_T
    ref_g, g = matrix.backward(ref_c, dh, dstate), matrix.backward(c, dh, dstate)
    for k in ref_g:
        assert g[k].dtype == ref_g[k].dtype, k
        assert_close(g[k], ref_g[k], tol, k)


def test_no_upstream_gradient_is_zero(rng):
    A, b, _ = _inputs(rng, T=9, D=4)
    ref, _, ref_c = matrix.forward(A, b)
    h, _, c = matrix.forward(A, b, backend="numba")
    assert_close(h, ref, 1e-10, "h")
    dh = rng.standard_normal(h.shape)
    for args in ((dh, None), (None, dh[:, -1])):
        ref_g, g = matrix.backward(ref_c, *args), matrix.backward(c, *args)
        for k in ref_g:
            assert_close(g[k], ref_g[k], 1e-10, k)


def test_real_matrices_with_complex_inputs(rng):
    A, _, _ = _inputs(rng, T=11)
    _, b, h0 = _inputs(rng, np.complex128, T=11)
    ref, _, ref_c = matrix.forward(A, b, h0)
    h, _, c = matrix.forward(A, b, h0, backend="numba")
    assert h.dtype == np.complex128
    assert_close(h, ref, 1e-10, "h")
    _, dh, _ = _inputs(rng, np.complex128, T=11)
    ref_g, g = matrix.backward(ref_c, dh), matrix.backward(c, dh)
    assert not np.iscomplexobj(g["A"])  # ∂L/∂A of a real A is real
    for k in ref_g:
        assert g[k].dtype == ref_g[k].dtype, k
        assert_close(g[k], ref_g[k], 1e-10, k)


def test_golden_values_against_a_hand_loop():
    """Independent check: the recurrence and its adjoint written entry by entry."""
    T, d = 4, 2
    A = np.linspace(-0.6, 0.6, T * d * d).reshape(1, T, d, d)
    b = np.linspace(1.0, -1.0, T * d).reshape(1, T, d)
    h0 = np.array([[0.5, -0.25]])
    h, _, c = matrix.forward(A, b, h0, backend="numba")
    state = [0.5, -0.25]
    states = [state]
    for t in range(T):
        state = [A[0, t, i, 0] * state[0] + A[0, t, i, 1] * state[1] + b[0, t, i]
                 for i in range(d)]
        states.append(state)
    np.testing.assert_allclose(h[0], np.array(states[1:]), rtol=1e-14)
    # L = Σ_t Σ_i h_t[i]: dh = 1 everywhere; adjoint g_t = 1 + A_{t+1}^T g_{t+1}
    g = matrix.backward(c, np.ones_like(h))
    gt = [1.0, 1.0]
    for t in range(T - 1, -1, -1):
        if t < T - 1:
            gt = [1.0 + A[0, t + 1, 0, j] * gt[0] + A[0, t + 1, 1, j] * gt[1] for j in range(d)]
        np.testing.assert_allclose(g["b"][0, t], gt, rtol=1e-14)
        want_A = [[gt[i] * states[t][j] for j in range(d)] for i in range(d)]
        np.testing.assert_allclose(g["A"][0, t], want_A, rtol=1e-14)
    want_h0 = [A[0, 0, 0, j] * gt[0] + A[0, 0, 1, j] * gt[1] for j in range(d)]
    np.testing.assert_allclose(g["initial_state"][0], want_h0, rtol=1e-14)


@pytest.mark.parametrize("method", ["hillis_steele", "blelloch"])
def test_numba_refuses_methods_without_a_kernel(method, rng):
    A, b, _ = _inputs(rng)
    with pytest.raises(ValueError, match=f"backend='numba' supports .*got '{method}'"):
        matrix.forward(A, b, method=method, backend="numba")


def test_non_contiguous_inputs(rng):
    A, b, h0 = _inputs(rng, T=7)
    At = np.swapaxes(A, -1, -2)  # a transposed view: not C-contiguous
    ref, _, ref_c = matrix.forward(At, b, h0)
    h, h_T, c = matrix.forward(At, b, h0, backend="numba")
    assert_close(h, ref, 1e-10, "h")
    dh = rng.standard_normal(h.shape)
    ref_g, g = matrix.backward(ref_c, dh), matrix.backward(c, dh)
    assert_close(g["A"], ref_g["A"], 1e-10, "A")
