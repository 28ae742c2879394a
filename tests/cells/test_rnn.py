"""cells.rnn: the Elman RNN against an independent loop, its gradients, its errors."""

import math

import numpy as np
import pytest

from minirec import gradcheck
from minirec.cells import rnn
from tests.conftest import assert_close


def linspace_params(D, H):
    return {"W_ih": np.linspace(-0.6, 0.5, H * D).reshape(H, D),
            "W_hh": np.linspace(0.4, -0.7, H * H).reshape(H, H),
            "b_ih": np.linspace(-0.1, 0.2, H),
            "b_hh": np.linspace(0.3, -0.2, H)}


def make(rng, B=2, T=7, D=3, H=4, dtype=np.float64):
    params = rnn.init_params(rng, D, H, dtype=dtype)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    return params, x, h0


def loop(params, x, h0, phi):
    """Elementwise sums written out, independent of the module's matrix code."""
    B, T, D = x.shape
    H = params["W_hh"].shape[0]
    h = h0.copy()
    ys = np.zeros((B, T, H))
    for t in range(T):
        new = np.zeros((B, H))
        for b in range(B):
            for j in range(H):
                a = params["b_ih"][j] + params["b_hh"][j]
                a += sum(params["W_ih"][j, d] * x[b, t, d] for d in range(D))
                a += sum(params["W_hh"][j, k] * h[b, k] for k in range(H))
                new[b, j] = phi(a)
        h = new
        ys[:, t] = h
    return ys, h


@pytest.mark.parametrize("nonlinearity, phi", [("tanh", math.tanh),
                                               ("relu", lambda a: max(a, 0.0))])
def test_golden_values_from_linspace(nonlinearity, phi):
    B, T, D, H = 2, 6, 3, 4
    params = linspace_params(D, H)
    x = np.linspace(-1.5, 2.0, B * T * D).reshape(B, T, D)
    h0 = np.linspace(-0.3, 0.4, B * H).reshape(B, H)
    ref_y, ref_h = loop(params, x, h0, phi)
    y, h, _ = rnn.forward(params, x, h0, nonlinearity=nonlinearity)
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, ref_h, rtol=1e-12, atol=1e-14)


def test_golden_scalar_worked_by_hand():
    """D = H = 1: h_1 = tanh(0.5·1 + 0.3), h_2 = tanh(0.5·2 + 0.3 − 0.25 h_1)."""
    p = {"W_ih": np.array([[0.5]]), "W_hh": np.array([[-0.25]]),
         "b_ih": np.array([0.1]), "b_hh": np.array([0.2])}
    y, _, _ = rnn.forward(p, np.array([[[1.0], [2.0]]]))
    h1 = math.tanh(0.8)
    h2 = math.tanh(1.3 - 0.25 * h1)
    np.testing.assert_allclose(y.ravel(), [h1, h2], rtol=1e-15)
    np.testing.assert_allclose(y.ravel(), [0.6640367702678491, 0.8123806933248059], rtol=1e-13)


def test_relu_differs_from_tanh_and_is_nonnegative(rng):
    params, x, h0 = make(rng, T=9)
    y_tanh, _, _ = rnn.forward(params, x, h0)
    y_relu, _, _ = rnn.forward(params, x, h0, nonlinearity="relu")
    assert np.all(y_relu >= 0) and np.any(y_relu == 0) and np.any(y_relu > 1e-3)
    assert np.any(y_tanh < 0)
    assert np.max(np.abs(y_relu - y_tanh)) > 0.1


@pytest.mark.parametrize("nonlinearity", rnn.NONLINEARITIES)
def test_gradcheck(nonlinearity, rng):
    params, x, h0 = make(rng, T=5)
    report = gradcheck.check_cell(rnn, params, x, h0, nonlinearity=nonlinearity)
    assert report.passed, str(report)  # relative error < 1e-6, float64


@pytest.mark.parametrize("nonlinearity", rnn.NONLINEARITIES)
def test_split_resume_equals_one_call(nonlinearity, rng):
    params, x, h0 = make(rng, T=11)
    y, h, _ = rnn.forward(params, x, h0, nonlinearity=nonlinearity)
    y1, s1, _ = rnn.forward(params, x[:, :4], h0, nonlinearity=nonlinearity)
    y2, s2, _ = rnn.forward(params, x[:, 4:], s1, nonlinearity=nonlinearity)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-14, "y")
    assert_close(s2, h, 1e-14, "h")


def test_state0_none_equals_zeros(rng):
    params, x, h0 = make(rng)
    y0, h_0, c0 = rnn.forward(params, x, None)
    y1, h_1, c1 = rnn.forward(params, x, np.zeros_like(h0))
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(h_0, h_1)
    dy = rng.standard_normal(y0.shape)
    g0, g1 = rnn.backward(params, c0, dy), rnn.backward(params, c1, dy)
    for k in g1:
        np.testing.assert_array_equal(g0[k], g1[k])
    assert g0["state0"].shape == h0.shape and np.any(g0["state0"] != 0)


def test_t_equals_one_is_one_step(rng):
    params, x, h0 = make(rng, T=1)
    y, h, _ = rnn.forward(params, x, h0)
    step, _ = rnn.step_forward(params, x[:, 0], h0)
    np.testing.assert_array_equal(y[:, 0], step)
    np.testing.assert_array_equal(h, step)


def test_float32_stays_float32(rng):
    params, x, h0 = make(rng, T=20, dtype=np.float32)
    y, h, cache = rnn.forward(params, x, h0)
    assert y.dtype == np.float32 and h.dtype == np.float32
    g = rnn.backward(params, cache, np.ones_like(y), np.ones_like(h))
    assert all(v.dtype == np.float32 for v in g.values())
    y64, _, _ = rnn.forward({k: v.astype(np.float64) for k, v in params.items()},
                            x.astype(np.float64), h0.astype(np.float64))
    assert_close(y, y64, 1e-5, "float32 vs float64")


def test_init_params_follows_pytorch(rng):
    p = rnn.init_params(rng, 5, 16)
    assert {k: v.shape for k, v in p.items()} == {
        "W_ih": (16, 5), "W_hh": (16, 16), "b_ih": (16,), "b_hh": (16,)}
    bound = 1 / math.sqrt(16)
    for v in p.values():
        assert np.all(np.abs(v) <= bound) and np.max(np.abs(v)) > 0.8 * bound


def _without(p, key):
    return {k: v for k, v in p.items() if k != key}


@pytest.mark.parametrize("change, match", [
    (lambda p, x, h: (_without(p, "b_hh"), x, h), r"missing \['b_hh'\]"),
    (lambda p, x, h: ({**p, "W_xx": p["W_hh"]}, x, h), r"unexpected \['W_xx'\]"),
    (lambda p, x, h: ({**p, "W_hh": np.zeros((4, 3))}, x, h),
     r"W_hh: expected shape \(H=4, H=4\), got \(4, 3\)"),
    (lambda p, x, h: ({**p, "b_ih": np.zeros(5)}, x, h), r"b_ih: expected shape \(H=4\)"),
    (lambda p, x, h: (p, x[..., :2], h), r"x: expected shape \(B=2, T=7, D=3\), got \(2, 7, 2\)"),
    (lambda p, x, h: (p, x[0], h), r"x: expected a 3-d array, got shape \(7, 3\)"),
    (lambda p, x, h: (p, x, h[:, :3]), r"state0: expected shape \(B=2, H=4\), got \(2, 3\)"),
    (lambda p, x, h: (p, x.astype(np.float32), h), "mixed precisions"),
    (lambda p, x, h: (p, x.astype(np.int64), h), "expected dtype"),
    (lambda p, x, h: (p, x[:, :0], h), "T >= 1"),
])
def test_bad_input_is_refused_with_a_clear_message(change, match, rng):
    params, x, h0 = make(rng)
    with pytest.raises((ValueError, TypeError), match=match):
        rnn.forward(*change(params, x, h0))


def test_bad_options_are_refused(rng):
    params, x, h0 = make(rng)
    with pytest.raises(ValueError, match="nonlinearity: expected one of"):
        rnn.forward(params, x, h0, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="method"):
        rnn.forward(params, x, h0, method="blelloch")
    _, _, cache = rnn.forward(params, x, h0)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 7, 4\)"):
        rnn.backward(params, cache, np.zeros((2, 6, 4)))
