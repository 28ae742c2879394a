"""scan.matrix: every method equals the recurrent definition, forward and backward."""

import numpy as np
import pytest

from minirec import gradcheck
from minirec.scan import linear, matrix
from tests.conftest import assert_close


def make(rng, B, T, d, dtype, h0=True):
    """A_t = s_t Q_t, Q_t orthogonal (unitary), s_t ∈ [0.5, 1]: ‖A_t‖ ≤ 1."""
    complex_ = np.dtype(dtype).kind == "c"
    Z = rng.standard_normal((B, T, d, d))
    b = rng.standard_normal((B, T, d))
    s = rng.standard_normal((B, d)) if h0 else None
    if complex_:
        Z = Z + 1j * rng.standard_normal(Z.shape)
        b = b + 1j * rng.standard_normal(b.shape)
        s = None if s is None else s + 1j * rng.standard_normal(s.shape)
    Q, _ = np.linalg.qr(Z)
    A = Q * rng.uniform(0.5, 1.0, (B, T, 1, 1))
    cast = lambda x: None if x is None else x.astype(dtype)
    return cast(A), cast(b), cast(s)


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


@pytest.mark.parametrize("method", matrix.METHODS)
@pytest.mark.parametrize("T", [1, 2, 7, 33])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("with_h0", [True, False])
def test_method_equals_definition_forward_and_backward(method, T, dtype, with_h0, rng):
    A, b, h0 = make(rng, 2, T, 3, dtype, h0=with_h0)
    ref, ref_T, ref_cache = matrix.forward(A, b, h0)
    dh, dh_T = upstream(rng, ref), upstream(rng, ref_T)
    ref_g = matrix.backward(ref_cache, dh, dh_T)
    h, h_T, cache = matrix.forward(A, b, h0, method=method)
    g = matrix.backward(cache, dh, dh_T)
    assert_close(h, ref, 1e-10, "h")
    assert_close(h_T, ref_T, 1e-10, "h_T")
    for k in ("A", "b", "initial_state"):
        assert g[k].shape == ref_g[k].shape, k
        assert g[k].dtype == ref_g[k].dtype, k
        assert_close(g[k], ref_g[k], 1e-10, f"d{k}")


def test_definition_is_the_loop(rng):
    A, b, h0 = make(rng, 2, 6, 3, np.float64)
    h, h_T, _ = matrix.forward(A, b, h0)
    np.testing.assert_allclose(h, loop_forward(A, b, h0), rtol=1e-13, atol=1e-14)
    np.testing.assert_array_equal(h_T, h[:, -1])


@pytest.mark.parametrize("method", matrix.METHODS)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_gradcheck(method, dtype, rng):
    A, b, h0 = make(rng, 2, 5, 3, dtype)
    report = gradcheck.check_op(matrix, {"A": A, "b": b, "initial_state": h0}, method=method)
    assert report.passed, str(report)  # relative error < 1e-6 in float64


def test_gradcheck_real_A_with_complex_b(rng):
    """A real, b complex: h is complex, dA is returned real (∂L/∂A of a real A)."""
    A, _, _ = make(rng, 2, 4, 2, np.float64)
    _, b, h0 = make(rng, 2, 4, 2, np.complex128)
    _, _, cache = matrix.forward(A, b, h0)
    g = matrix.backward(cache, np.ones((2, 4, 2), complex))
    assert g["A"].dtype == np.float64 and g["b"].dtype == np.complex128
    report = gradcheck.check_op(matrix, {"A": A, "b": b, "initial_state": h0}, method="blelloch")
    assert report.passed, str(report)


@pytest.mark.parametrize("method", matrix.METHODS)
def test_split_resume_equals_one_call(method, rng):
    A, b, h0 = make(rng, 2, 23, 4, np.float64)
    h, h_T, _ = matrix.forward(A, b, h0, method=method)
    h1, s1, _ = matrix.forward(A[:, :10], b[:, :10], h0, method=method)
    h2, s2, _ = matrix.forward(A[:, 10:], b[:, 10:], s1, method=method)
    assert_close(np.concatenate([h1, h2], axis=1), h, 1e-12, "h")
    assert_close(s2, h_T, 1e-12, "h_T")


@pytest.mark.parametrize("method", matrix.METHODS)
def test_split_resume_backward_equals_one_call(method, rng):
    """The final-state gradient of the first half carries the second half's dh0."""
    A, b, h0 = make(rng, 2, 12, 3, np.float64)
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


@pytest.mark.parametrize("method", matrix.METHODS)
def test_diagonal_A_equals_linear_scan(method, rng):
    a = rng.uniform(-1.0, 1.0, (2, 9, 4))
    b = rng.standard_normal((2, 9, 4))
    h0 = rng.standard_normal((2, 4))
    A = a[..., :, None] * np.eye(4)  # A_t = diag(a_t)
    h, h_T, cache = matrix.forward(A, b, h0, method=method)
    h_lin, h_T_lin, cache_lin = linear.forward(a, b, h0, method=method)
    assert_close(h, h_lin, 1e-12, "h")
    assert_close(h_T, h_T_lin, 1e-12, "h_T")
    dh, dh_T = upstream(rng, h), upstream(rng, h_T)
    g = matrix.backward(cache, dh, dh_T)
    g_lin = linear.backward(cache_lin, dh, dh_T)
    assert_close(np.diagonal(g["A"], axis1=-2, axis2=-1), g_lin["a"], 1e-12, "diag dA")
    assert_close(g["b"], g_lin["b"], 1e-12, "db")
    assert_close(g["initial_state"], g_lin["initial_state"], 1e-12, "dh0")


def test_float32_stays_float32_and_close(rng):
    A, b, h0 = make(rng, 2, 40, 5, np.float32)
    ref, _, ref_cache = matrix.forward(*(x.astype(np.float64) for x in (A, b, h0)))
    dh = upstream(rng, ref)
    ref_g = matrix.backward(ref_cache, dh)
    for method in matrix.METHODS:
        h, h_T, cache = matrix.forward(A, b, h0, method=method)
        g = matrix.backward(cache, dh.astype(np.float32))
        assert h.dtype == np.float32 and h_T.dtype == np.float32
        assert all(v.dtype == np.float32 for v in g.values())
        assert_close(h, ref, 1e-5, method)
        assert_close(g["A"], ref_g["A"], 1e-4, f"{method} dA")


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
    With a = (0.5, 0.25), b = (1, 2), h0 = 2 and dh = (1, 1), dh_T = 0:
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


@pytest.mark.parametrize("bad, match", [
    (dict(A=np.zeros((2, 3, 4, 4)), b=np.zeros((2, 3, 5))), r"d=5 disagrees with d=4"),
    (dict(A=np.zeros((2, 3, 4, 5)), b=np.zeros((2, 3, 4))), r"A: expected shape"),
    (dict(A=np.zeros((2, 3, 4, 4)), b=np.zeros((2, 2, 4))), r"T=2 disagrees with T=3"),
    (dict(A=np.zeros((2, 3, 4)), b=np.zeros((2, 3, 4))), r"expected a 4-d array, got shape"),
    (dict(A=np.zeros((2, 3, 4, 4)), b=np.zeros((2, 3, 4)), initial_state=np.zeros((2, 3))),
     r"initial_state: expected shape \(B=2, d=4\)"),
    (dict(A=np.zeros((2, 3, 2, 2), np.int64), b=np.zeros((2, 3, 2))), "expected dtype"),
    (dict(A=np.zeros((2, 3, 2, 2), np.float32), b=np.zeros((2, 3, 2))), "mixed precisions"),
    (dict(A=[[[[1.0]]]], b=np.zeros((1, 1, 1))), "expected an ndarray"),
    (dict(A=np.zeros((2, 0, 2, 2)), b=np.zeros((2, 0, 2))), "T >= 1"),
])
def test_bad_input_is_refused_with_a_clear_message(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        matrix.forward(**bad)


def test_bad_method_chunk_size_and_gradient_shape(rng):
    A, b, h0 = make(rng, 2, 5, 3, np.float64)
    with pytest.raises(ValueError, match="method: expected one of"):
        matrix.forward(A, b, method="chunked")
    with pytest.raises(ValueError, match="chunk_size"):
        matrix.forward(A, b, method="blelloch", chunk_size=0)
    _, _, cache = matrix.forward(A, b, h0)
    with pytest.raises(ValueError, match=r"dh: expected shape \(2, 5, 3\)"):
        matrix.backward(cache, np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match=r"dh_T: expected shape \(2, 3\)"):
        matrix.backward(cache, None, np.zeros((2, 4)))


def test_inputs_and_upstream_gradients_are_not_modified(rng):
    A, b, h0 = make(rng, 2, 7, 3, np.float64)
    for x in (A, b, h0):
        x.flags.writeable = False
    for method in matrix.METHODS:
        h, h_T, cache = matrix.forward(A, b, h0, method=method)
        dh, dh_T = upstream(rng, h), upstream(rng, h_T)
        dh.flags.writeable = False
        dh_T.flags.writeable = False
        matrix.backward(cache, dh, dh_T)
