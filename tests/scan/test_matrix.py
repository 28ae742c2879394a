"""scan.matrix: golden values and what is particular to the matrix scan.

The contract test (tests/test_contract.py) checks every method and backend
against the definition (float64, float32, complex), gradients, forward
split-resume, T = 1/2/13, B = 0, read-only inputs and the bad-input tables;
this file keeps golden values, a scalar-loop oracle, complex and mixed
gradients, the backward split, and the diagonal case against
:mod:`minirec.scan.linear`.
"""

import numpy as np
import pytest

from minirec import gradcheck, registry
from minirec.scan import linear, matrix
from tests.conftest import assert_close

ENTRY = registry.get("scan.matrix")


def _inputs(rng, dtype=np.float64, **dims):
    """``(A, b, h0)`` from the registry: ``A_t = s_t Q_t``, ``Q_t`` orthogonal
    (unitary), ``s_t ∈ [0.5, 1]``: ``‖A_t‖ ≤ 1``. ``D`` is the state size d."""
    d = ENTRY.make_inputs(rng, dtype, "small", **dims)
    return d["A"], d["b"], d["initial_state"]


def upstream(rng, h):
    g = rng.standard_normal(h.shape)
    if np.iscomplexobj(h):
        g = g + 1j * rng.standard_normal(h.shape)
    return g


def loop_forward(A, b, h0):
    """The definition written out with scalar loops (independent of the module)."""
    B, T, d = b.shape
    h = np.zeros(b.shape, np.result_type(A, b, h0))
    for n in range(B):
        state = h0[n].copy()
        for t in range(T):
            new = b[n, t].copy()
            for i in range(d):
                for j in range(d):
                    new[i] += A[n, t, i, j] * state[j]
            state = new
            h[n, t] = state
    return h


def test_definition_is_the_loop(rng):
    A, b, h0 = _inputs(rng, T=6)
    h, h_T, _ = matrix.forward(A, b, h0)
    np.testing.assert_allclose(h, loop_forward(A, b, h0), rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(h_T, h[:, -1])


@pytest.mark.parametrize("method", matrix.METHODS)
def test_gradcheck_complex(method, rng):
    """The contract gradchecks float64; complex A, b, h0 here (∂L/∂Re + i ∂L/∂Im)."""
    A, b, h0 = _inputs(rng, np.complex128)
    report = gradcheck.check_op(matrix, {"A": A, "b": b, "initial_state": h0}, method=method)
    assert report.passed, str(report)  # relative error < 1e-6 in float64


def test_gradcheck_real_A_with_complex_b(rng):
    """A real, b complex: h is complex, dA is returned real (∂L/∂A of a real A)."""
    A, _, _ = _inputs(rng, T=4, D=2)
    _, b, h0 = _inputs(rng, np.complex128, T=4, D=2)
    _, _, cache = matrix.forward(A, b, h0)
    g = matrix.backward(cache, np.ones((2, 4, 2), complex))
    assert g["A"].dtype == np.float64 and g["b"].dtype == np.complex128
    report = gradcheck.check_op(matrix, {"A": A, "b": b, "initial_state": h0}, method="blelloch")
    assert report.passed, str(report)


@pytest.mark.parametrize("method", matrix.METHODS)
def test_split_resume_backward_equals_one_call(method, rng):
    """The final-state gradient of the first half carries the second half's dh0."""
    A, b, h0 = _inputs(rng, T=12)
    _, _, cache = matrix.forward(A, b, h0, method=method)
    dh = upstream(rng, b)
    g = matrix.backward(cache, dh)
    _, s1, c1 = matrix.forward(A[:, :5], b[:, :5], h0, method=method)
    _, _, c2 = matrix.forward(A[:, 5:], b[:, 5:], s1, method=method)
    g2 = matrix.backward(c2, dh[:, 5:])
    g1 = matrix.backward(c1, dh[:, :5], g2["initial_state"])
    assert_close(np.concatenate([g1["A"], g2["A"]], axis=1), g["A"], 1e-12, "dA")
    assert_close(np.concatenate([g1["b"], g2["b"]], axis=1), g["b"], 1e-12, "db")
    assert_close(g1["initial_state"], g["initial_state"], 1e-12, "dh0")


@pytest.mark.parametrize("b_dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("method", matrix.METHODS)
def test_diagonal_A_equals_linear_scan(method, b_dtype, rng):
    """Real a and h0; with complex b the state and dstate are complex while dA and
    dh0 stay real."""
    a = rng.uniform(-1.0, 1.0, (2, 9, 4))
    b = upstream(rng, np.zeros((2, 9, 4), b_dtype))
    h0 = rng.standard_normal((2, 4))
    A = a[..., :, None] * np.eye(4)  # A_t = diag(a_t)
    h, h_T, cache = matrix.forward(A, b, h0, method=method)
    h_lin, h_T_lin, cache_lin = linear.forward(a, b, h0, method=method)
    assert_close(h, h_lin, 1e-12, "h")
    assert_close(h_T, h_T_lin, 1e-12, "h_T")
    dh, dstate = upstream(rng, h), upstream(rng, h_T)
    g = matrix.backward(cache, dh, dstate)
    g_lin = linear.backward(cache_lin, dh, dstate)
    assert g["A"].dtype == g["initial_state"].dtype == np.float64
    assert_close(np.diagonal(g["A"], axis1=-2, axis2=-1), g_lin["a"], 1e-12, "diag dA")
    assert_close(g["b"], g_lin["b"], 1e-12, "db")
    assert_close(g["initial_state"], g_lin["initial_state"], 1e-12, "dh0")


def test_golden_values():
    """linspace inputs; expected numbers worked out by hand from the recurrence.

    A_t = [[0, 1], [-1, 0]] / 2 (a half-turn rotation, every t), b_t = (t + 1, 0),
    h0 = (1, 1):
        h_0 = (0.5·1 + 1,  −0.5·1 + 0) = (1.5, −0.5)
        h_1 = (0.5·(−0.5) + 2, −0.5·1.5) = (1.75, −0.75)
        h_2 = (0.5·(−0.75) + 3, −0.5·1.75) = (2.625, −0.875)
    """
    A = np.broadcast_to(np.array([[0.0, 0.5], [-0.5, 0.0]]), (1, 3, 2, 2))
    b = np.stack([np.linspace(1.0, 3.0, 3), np.zeros(3)], axis=-1)[None]
    expected = np.array([[[1.5, -0.5], [1.75, -0.75], [2.625, -0.875]]])
    for method in matrix.METHODS:
        h, h_T, _ = matrix.forward(A, b, np.ones((1, 2)), method=method)
        np.testing.assert_allclose(h, expected, rtol=1e-14, err_msg=method)
        np.testing.assert_allclose(h_T, expected[:, -1], rtol=1e-14, err_msg=method)


def test_golden_gradient():
    """T = 2, d = 1 reduces to scalars: h_0 = a_0 h0 + b_0, h_1 = a_1 h_0 + b_1.
    With a = (0.5, 0.25), b = (1, 2), h0 = 2 and dh = (1, 1), dstate = 0:
    h_0 = 2, g_1 = 1, g_0 = 1 + 0.25·1 = 1.25, dA = (g_0 h0, g_1 h_0) = (2.5, 2),
    dh0 = 0.5·1.25 = 0.625."""
    A = np.linspace(0.5, 0.25, 2).reshape(1, 2, 1, 1)
    b = np.linspace(1.0, 2.0, 2).reshape(1, 2, 1)
    for method in matrix.METHODS:
        _, _, cache = matrix.forward(A, b, np.full((1, 1), 2.0), method=method)
        g = matrix.backward(cache, np.ones((1, 2, 1)))
        np.testing.assert_allclose(g["A"].ravel(), [2.5, 2.0], rtol=1e-14, err_msg=method)
        np.testing.assert_allclose(g["b"].ravel(), [1.25, 1.0], rtol=1e-14, err_msg=method)
        np.testing.assert_allclose(g["initial_state"].ravel(), [0.625], rtol=1e-14)


def test_non_square_A_is_refused():
    with pytest.raises(ValueError, match=r"A: expected shape \(B=2, T=3, d=4, d=4\), got "
                                         r"\(2, 3, 4, 5\)"):
        matrix.forward(np.zeros((2, 3, 4, 5)), np.zeros((2, 3, 4)))
