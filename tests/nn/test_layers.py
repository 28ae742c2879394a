"""nn.linear, nn.embedding, nn.norm: forward against direct formulas, hand backward
against central differences (minirec.gradcheck), shapes, dtypes, bad input."""

import types

import numpy as np
import pytest

from minirec import gradcheck
from minirec.nn import embedding, linear, norm

TOL = 1e-6  # gradcheck: relative error in float64


# --- linear ------------------------------------------------------------------

# check_op's op protocol: forward(**arrays) -> (out, final_state, cache) and
# backward(cache, d_out, d_state) -> dict; a layer has no state, so it is ().

def linear_op():
    def fwd(W, b, x):
        y, cache = linear.forward({"W": W, "b": b}, x)
        return y, (), (W, b, cache)

    def bwd(cache, dy, _):
        W, b, c = cache
        dx, g = linear.backward({"W": W, "b": b}, c, dy)
        return {"x": dx, **g}
    return types.SimpleNamespace(forward=fwd, backward=bwd)


def test_linear_init_shapes_and_scale(rng):
    p = linear.init(rng, 4, 3, dtype=np.float32)
    assert p["W"].shape == (3, 4) and p["b"].shape == (3,)
    assert p["W"].dtype == np.float32 and p["b"].dtype == np.float32
    assert np.all(np.abs(p["W"]) <= 0.5) and np.all(np.abs(p["b"]) <= 0.5)  # 1/√4
    np.testing.assert_array_equal(linear.init(7, 4, 3)["W"], linear.init(7, 4, 3)["W"])


def test_linear_forward_is_xWt_plus_b(rng):
    p = linear.init(rng, 4, 3)
    x = rng.standard_normal((2, 5, 4))
    y, _ = linear.forward(p, x)
    expected = np.einsum("bti,oi->bto", x, p["W"]) + p["b"]
    np.testing.assert_allclose(y, expected, rtol=1e-13)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_linear_gradcheck(lead, rng):
    p = linear.init(rng, 4, 3)
    x = rng.standard_normal(lead + (4,))
    report = gradcheck.check_op(linear_op(), {"W": p["W"], "b": p["b"], "x": x})
    assert report.passed, str(report)  # relative error < 1e-6
    assert set(report.errors) == {"W", "b", "x"}


def test_linear_float32_stays_float32(rng):
    p = linear.init(rng, 4, 3, dtype=np.float32)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    y, c = linear.forward(p, x)
    dx, g = linear.backward(p, c, np.ones_like(y))
    assert y.dtype == dx.dtype == g["W"].dtype == g["b"].dtype == np.float32


def test_linear_bad_input(rng):
    p = linear.init(rng, 4, 3)
    with pytest.raises(ValueError, match=r"x: expected shape \(N0=2, I=4\), got \(2, 5\)"):
        linear.forward(p, np.zeros((2, 5)))
    with pytest.raises(TypeError, match="mixed precisions"):
        linear.forward(p, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        linear.forward({"W": p["W"]}, np.zeros((2, 4)))
    _, c = linear.forward(p, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 3\)"):
        linear.backward(p, c, np.zeros((2, 4)))


# --- embedding ---------------------------------------------------------------

def embedding_op(idx):
    def fwd(W):
        y, cache = embedding.forward({"W": W}, idx)
        return y, (), (W, cache)

    def bwd(cache, dy, _):
        W, c = cache
        return embedding.backward({"W": W}, c, dy)
    return types.SimpleNamespace(forward=fwd, backward=bwd)


def test_embedding_forward_is_a_row_lookup(rng):
    p = embedding.init(rng, 6, 3)
    idx = np.array([[0, 5, 2], [2, 2, 1]])
    y, _ = embedding.forward(p, idx)
    assert y.shape == (2, 3, 3)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(y[i, j], p["W"][idx[i, j]])


def test_embedding_gradcheck_with_repeated_indices(rng):
    p = embedding.init(rng, 5, 3)
    idx = np.array([[0, 4, 4], [4, 1, 0]])  # repeats: gradients must add up
    report = gradcheck.check_op(embedding_op(idx), {"W": p["W"]})
    assert report.passed, str(report)  # relative error < 1e-6


def test_embedding_backward_adds_repeats_and_leaves_unused_rows_zero():
    W = np.zeros((4, 2))
    _, c = embedding.forward({"W": W}, np.array([1, 3, 1]))
    dW = embedding.backward({"W": W}, c, np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))["W"]
    np.testing.assert_array_equal(dW, [[0, 0], [6, 8], [0, 0], [3, 4]])


def test_embedding_bad_indices(rng):
    p = embedding.init(rng, 5, 3)
    with pytest.raises(ValueError, match=r"idx: expected values in \[0, 5\), got min 0, max 5"):
        embedding.forward(p, np.array([0, 5]))
    with pytest.raises(ValueError, match="got min -1"):
        embedding.forward(p, np.array([-1, 2]))
    with pytest.raises(TypeError, match="integer dtype"):
        embedding.forward(p, np.array([0.0, 1.0]))


# --- layer norm --------------------------------------------------------------

def norm_op():
    def fwd(weight, bias, x):
        y, cache = norm.forward({"weight": weight, "bias": bias}, x)
        return y, (), (weight, bias, cache)

    def bwd(cache, dy, _):
        weight, bias, c = cache
        dx, g = norm.backward({"weight": weight, "bias": bias}, c, dy)
        return {"x": dx, **g}
    return types.SimpleNamespace(forward=fwd, backward=bwd)


def test_layer_norm_forward_matches_the_formula(rng):
    x = rng.standard_normal((3, 2, 5)) * 4 + 1
    p = {"weight": rng.standard_normal(5), "bias": rng.standard_normal(5)}
    y, _ = norm.forward(p, x)
    for i in range(3):
        for j in range(2):
            row = x[i, j]
            mu = sum(row) / 5
            var = sum((v - mu) ** 2 for v in row) / 5
            expected = (row - mu) / np.sqrt(var + 1e-5) * p["weight"] + p["bias"]
            np.testing.assert_allclose(y[i, j], expected, rtol=1e-12)


def test_layer_norm_init_is_identity_after_normalising(rng):
    p = norm.init(6)
    y, _ = norm.forward(p, rng.standard_normal((4, 6)) * 3 + 2)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-4)  # eps = 1e-5 shrinks it slightly


def test_layer_norm_gradcheck(rng):
    x = rng.standard_normal((2, 3, 4))
    inputs = {"weight": rng.standard_normal(4), "bias": rng.standard_normal(4), "x": x}
    report = gradcheck.check_op(norm_op(), inputs)
    assert report.passed, str(report)  # relative error < 1e-6


def test_layer_norm_bad_input():
    with pytest.raises(ValueError, match=r"x: expected shape \(N0=2, D=4\), got \(2, 3\)"):
        norm.forward(norm.init(4), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="dim: expected a positive integer"):
        norm.init(0)
