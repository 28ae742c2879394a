"""ops.feature_maps: each map's values (against its formula written out here),
its backward by gradient check (float64, < 1e-6), the kernels they stand for
(Based's Taylor map reproduces the second-order expansion of exp(q·k/√d)),
Hedgehog's softmax halves, no overflow, inputs untouched, bad input."""

import numpy as np
import pytest

from minirec import gradcheck
from minirec.ops import feature_maps as fm
from tests.conftest import assert_close, readonly

GRAD_TOL = 1e-6  # gradcheck relative error, float64
PARAMETER_FREE = [name for name, f in fm.FEATURE_MAPS.items() if not f.params]


class MapOp:
    """A map as an op for gradcheck.check_op: forward(x[, W]) -> (φ, None, cache)."""

    def __init__(self, name):
        self.entry = fm.FEATURE_MAPS[name]
        self.__name__ = name

    def forward(self, x, W=None):
        y = self.entry.forward(x) if W is None else self.entry.forward(x, W)
        return y, None, (x, W)

    def backward(self, cache, dy, dstate=None):
        x, W = cache
        if W is None:
            return {"x": self.entry.backward(x, dy)}
        dx, dW = self.entry.backward(x, W, dy)
        return {"x": dx, "W": dW}


def test_the_catalogue():
    assert set(fm.FEATURE_MAPS) == {"identity", "elu_plus_one", "relu", "taylor2", "hedgehog"}
    assert fm.FEATURE_MAPS["hedgehog"].params == ("W",)
    assert all(not fm.FEATURE_MAPS[n].params for n in PARAMETER_FREE)


@pytest.mark.parametrize("name", PARAMETER_FREE)
def test_backward_gradcheck(name, rng):
    x = rng.standard_normal((2, 3, 2, 5))   # (B, T, H, K); no entry within eps of 0
    report = gradcheck.check_op(MapOp(name), {"x": x})
    assert report.passed, str(report)


def test_hedgehog_backward_gradcheck_of_x_and_W(rng):
    x = rng.standard_normal((2, 3, 2, 5))
    W = rng.standard_normal((5, 4))
    report = gradcheck.check_op(MapOp("hedgehog"), {"x": x, "W": W})
    assert report.passed, str(report)
    assert set(report.errors) == {"x", "W"}


def test_values_follow_their_formulas(rng):
    x = rng.standard_normal((3, 4, 6))
    assert_close(fm.identity(x), x, 0, "identity")
    assert_close(fm.relu(x), np.where(x > 0, x, 0), 0, "relu")
    elu = np.where(x > 0, x, np.expm1(x))
    assert_close(fm.elu_plus_one(x), 1 + elu, 1e-15, "elu_plus_one")
    assert np.all(fm.elu_plus_one(x) > 0)
    K = x.shape[-1]
    phi = fm.taylor2(x)
    assert phi.shape == (3, 4, 1 + K + K * K)
    assert_close(phi[..., 0], np.ones((3, 4)), 0, "taylor2 constant")
    assert_close(phi[..., 1:1 + K], x / K ** 0.25, 1e-15, "taylor2 linear")
    outer = np.einsum("abi,abj->abij", x, x).reshape(3, 4, K * K)
    assert_close(phi[..., 1 + K:], outer / np.sqrt(2 * K), 1e-15, "taylor2 quadratic")


def test_taylor2_is_the_second_order_expansion_of_exp(rng):
    """Based's map: φ(q)·φ(k) = 1 + q·k/√d + (q·k)²/(2d), the Taylor polynomial of
    exp(q·k/√d) to order 2 (so the temperature 1/√d is inside φ)."""
    d = 7
    q, k = rng.standard_normal((2, 10, d))
    s = np.sum(q * k, axis=-1) / np.sqrt(d)
    kernel = np.sum(fm.taylor2(q) * fm.taylor2(k), axis=-1)
    assert_close(kernel, 1 + s + s ** 2 / 2, 1e-14, "φ(q)·φ(k)")
    small = 1e-2 * q
    ks = np.sum(fm.taylor2(small) * fm.taylor2(k), axis=-1)
    exact = np.exp(np.sum(small * k, axis=-1) / np.sqrt(d))
    assert np.max(np.abs(ks - exact)) < 1e-5   # O(s³) with |s| ≲ 0.03


def test_hedgehog_is_two_softmaxes(rng):
    x = rng.standard_normal((2, 3, 5))
    W = rng.standard_normal((5, 4))
    y = fm.hedgehog(x, W)
    z = x @ W
    pos = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    neg = np.exp(-z) / np.exp(-z).sum(-1, keepdims=True)
    assert y.shape == (2, 3, 8)
    assert_close(y, np.concatenate([pos, neg], axis=-1), 1e-14, "hedgehog")
    assert_close(y[..., :4].sum(-1), np.ones((2, 3)), 1e-15, "softmax⁺ sums to 1")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_overflow_for_large_inputs(dtype, rng):
    """e^x is only formed for x ≤ 0 (elu+1) or after subtracting the max (Hedgehog)."""
    x = (1000 * rng.standard_normal((4, 6))).astype(dtype)
    W = rng.standard_normal((6, 3)).astype(dtype)
    dy = rng.standard_normal((4, 6)).astype(dtype)
    with np.errstate(over="raise", invalid="raise"):
        for out in (fm.elu_plus_one(x), fm.elu_plus_one_backward(x, dy), fm.hedgehog(x, W),
                    *fm.hedgehog_backward(x, W, rng.standard_normal((4, 6)).astype(dtype))):
            assert out.dtype == dtype and np.all(np.isfinite(out))


def test_relu_subgradient_at_zero_is_zero():
    x = np.array([-1.0, 0.0, 2.0])
    assert_close(fm.relu_backward(x, np.ones(3)), np.array([0.0, 0.0, 1.0]), 0, "drelu")


@pytest.mark.parametrize("name", list(fm.FEATURE_MAPS))
def test_inputs_are_not_written(name, rng):
    x = rng.standard_normal((2, 3, 4))
    entry = fm.FEATURE_MAPS[name]
    if entry.params:
        W = rng.standard_normal((4, 5))
        readonly(x, W)
        y = entry.forward(x, W)
        dy = rng.standard_normal(y.shape)
        readonly(dy)
        entry.backward(x, W, dy)
    else:
        readonly(x)
        y = entry.forward(x)
        assert not np.shares_memory(y, x)
        dy = rng.standard_normal(y.shape)
        readonly(dy)
        dx = entry.backward(x, dy)
        assert not np.shares_memory(dx, dy)


def test_bad_input_is_refused(rng):
    x = rng.standard_normal((2, 4))
    with pytest.raises(TypeError, match="x: expected an ndarray"):
        fm.relu([1.0, 2.0])
    with pytest.raises(TypeError, match="x: expected dtype"):
        fm.taylor2(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 21\)"):
        fm.taylor2_backward(x, np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"W: expected shape \(K=4, F\)"):
        fm.hedgehog(x, np.ones((3, 5)))
    with pytest.raises(TypeError, match="mixed precisions"):
        fm.hedgehog(x, np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 10\)"):
        fm.hedgehog_backward(x, np.ones((4, 5)), np.ones((2, 5)))
