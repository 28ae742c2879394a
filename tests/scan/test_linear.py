"""scan.linear: every method equals the recurrent definition, forward and backward."""

import numpy as np
import pytest

from minirec import gradcheck
from minirec.scan import linear
from tests.conftest import assert_close


def make(rng, B, T, rest, dtype, positive=False, h0=True):
    shape = (B, T) + rest
    a = rng.uniform(0.2, 1.0, shape) if positive else rng.uniform(-1.0, 1.0, shape)
    b = rng.standard_normal(shape)
    s = rng.standard_normal((B,) + rest) if h0 else None
    if np.dtype(dtype).kind == "c":
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
        b = b + 1j * rng.standard_normal(shape)
        s = None if s is None else s + 1j * rng.standard_normal(s.shape)
    cast = lambda x: None if x is None else x.astype(dtype)
    return cast(a), cast(b), cast(s)


def upstream(rng, h):
    g = rng.standard_normal(h.shape)
    if np.iscomplexobj(h):
        g = g + 1j * rng.standard_normal(h.shape)
    return g


@pytest.mark.parametrize("method", linear.METHODS)
@pytest.mark.parametrize("T", [1, 2, 7, 64, 100])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("with_h0", [True, False])
def test_method_equals_definition_forward_and_backward(method, T, dtype, with_h0, rng):
    a, b, h0 = make(rng, 2, T, (3,), dtype, positive=(method == "log"), h0=with_h0)
    ref, ref_T, ref_cache = linear.forward(a, b, h0)
    dh, dh_T = upstream(rng, ref), upstream(rng, ref_T)
    ref_g = linear.backward(ref_cache, dh, dh_T)
    for chunk in (None, 3, 8):
        h, h_T, cache = linear.forward(a, b, h0, method=method, chunk_size=chunk)
        g = linear.backward(cache, dh, dh_T)
        assert_close(h, ref, 1e-10, "h")
        assert_close(h_T, ref_T, 1e-10, "h_T")
        for k in ("a", "b", "initial_state"):
            assert g[k].shape == ref_g[k].shape
            assert g[k].dtype == ref_g[k].dtype
            assert_close(g[k], ref_g[k], 1e-10, f"d{k}")


def test_definition_is_the_loop(rng):
    a, b, h0 = make(rng, 2, 9, (4, 2), np.float64)
    h, h_T, _ = linear.forward(a, b, h0)
    state = h0.copy()
    for t in range(9):
        state = a[:, t] * state + b[:, t]
        np.testing.assert_allclose(h[:, t], state, rtol=0, atol=0)
    np.testing.assert_array_equal(h_T, state)


@pytest.mark.parametrize("method", linear.METHODS)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_gradcheck(method, dtype, rng):
    a, b, h0 = make(rng, 2, 6, (2,), dtype, positive=(method == "log"))
    report = gradcheck.check_op(linear, {"a": a, "b": b, "initial_state": h0},
                                method=method, chunk_size=4)
    assert report.passed, str(report)  # relative error < 1e-6 in float64


@pytest.mark.parametrize("method", linear.METHODS)
def test_split_resume_equals_one_call(method, rng):
    a, b, h0 = make(rng, 2, 23, (3,), np.float64, positive=(method == "log"))
    h, h_T, _ = linear.forward(a, b, h0, method=method, chunk_size=4)
    h1, s1, _ = linear.forward(a[:, :10], b[:, :10], h0, method=method, chunk_size=4)
    h2, s2, _ = linear.forward(a[:, 10:], b[:, 10:], s1, method=method, chunk_size=4)
    assert_close(np.concatenate([h1, h2], axis=1), h, 1e-12, "h")
    assert_close(s2, h_T, 1e-12, "h_T")


def test_float32_stays_float32_and_close(rng):
    a, b, h0 = make(rng, 2, 50, (8,), np.float32)
    ref, _, _ = linear.forward(*(x.astype(np.float64) for x in (a, b, h0)))
    for method in ("recurrent", "blelloch", "chunked"):
        h, h_T, _ = linear.forward(a, b, h0, method=method)
        assert h.dtype == np.float32 and h_T.dtype == np.float32
        assert_close(h, ref, 1e-5, method)


def test_gates_at_exactly_one_give_a_cumulative_sum(rng):
    """g = 0 in log space means a = 1: h is the running sum of b (plus h0)."""
    b = rng.standard_normal((2, 17, 3))
    h0 = rng.standard_normal((2, 3))
    for method in linear.METHODS:
        h, _, _ = linear.forward(np.ones_like(b), b, h0, method=method, chunk_size=5)
        assert_close(h, h0[:, None] + np.cumsum(b, axis=1), 1e-12, method)


def test_golden_values():
    """linspace inputs; the expected numbers were worked out by hand from the loop:
    a = 0.5 everywhere, b_t = t + 1, h0 = 1 → h = 1.5, 2.75, 4.375, 6.1875."""
    a = np.full((1, 4, 1), 0.5)
    b = np.linspace(1.0, 4.0, 4).reshape(1, 4, 1)
    expected = np.array([1.5, 2.75, 4.375, 6.1875]).reshape(1, 4, 1)
    for method in linear.METHODS:
        h, _, _ = linear.forward(a, b, np.ones((1, 1)), method=method, chunk_size=3)
        np.testing.assert_allclose(h, expected, rtol=1e-14, err_msg=method)


def test_log_method_refuses_nonpositive_gates(rng):
    a, b, _ = make(rng, 1, 5, (2,), np.float64)
    a[0, 2, 0] = -0.5
    with pytest.raises(ValueError, match="a > 0"):
        linear.forward(a, b, method="log")


def test_log_method_handles_tiny_gates_without_overflow():
    a = np.full((1, 200, 1), 1e-3)
    b = np.ones((1, 200, 1))
    h, _, _ = linear.forward(a, b, method="log")
    ref, _, _ = linear.forward(a, b)
    assert np.all(np.isfinite(h))
    assert_close(h, ref, 1e-10)


@pytest.mark.parametrize("bad, match", [
    (dict(a=np.zeros((2, 3, 4)), b=np.zeros((2, 3, 5))), r"expected shape \(2, 3, 4\)"),
    (dict(a=np.zeros((2,)), b=np.zeros((2,))), "at least 2 dimensions"),
    (dict(a=np.zeros((2, 3)), b=np.zeros((2, 3)), initial_state=np.zeros((3,))),
     r"initial_state: expected shape \(2,\)"),
    (dict(a=np.zeros((2, 3), np.int64), b=np.zeros((2, 3))), "expected dtype"),
    (dict(a=np.zeros((2, 3), np.float32), b=np.zeros((2, 3))), "mixed precisions"),
    (dict(a=[[1.0]], b=np.zeros((1, 1))), "expected an ndarray"),
    (dict(a=np.zeros((2, 0)), b=np.zeros((2, 0))), "T >= 1"),
])
def test_bad_input_is_refused_with_a_clear_message(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        linear.forward(**bad)


def test_bad_chunk_size_and_gradient_shape(rng):
    a, b, h0 = make(rng, 2, 5, (3,), np.float64)
    with pytest.raises(ValueError, match="chunk_size"):
        linear.forward(a, b, method="chunked", chunk_size=0)
    _, _, cache = linear.forward(a, b, h0)
    with pytest.raises(ValueError, match=r"dh: expected shape \(2, 5, 3\)"):
        linear.backward(cache, np.zeros((2, 4, 3)))
