"""cells.lstm: the LSTM against an independent loop, its gradients, its errors."""

import math

import numpy as np
import pytest

from minirec import gradcheck
from minirec.cells import lstm
from tests.conftest import assert_close


def linspace_params(D, H):
    return {"W_ih": np.linspace(-0.6, 0.5, 4 * H * D).reshape(4 * H, D),
            "W_hh": np.linspace(0.4, -0.7, 4 * H * H).reshape(4 * H, H),
            "b_ih": np.linspace(-0.1, 0.2, 4 * H),
            "b_hh": np.linspace(0.3, -0.2, 4 * H)}


def make(rng, B=2, T=7, D=3, H=4, dtype=np.float64):
    params = lstm.init_params(rng, D, H, dtype=dtype)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    state0 = (rng.standard_normal((B, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype))
    return params, x, state0


def loop(params, x, h0, c0):
    """Per-gate weight blocks and the plain logistic, independent of the module."""
    H = h0.shape[1]
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))
    blocks = {}
    for n, name in enumerate("ifgo"):
        rows = slice(n * H, (n + 1) * H)
        blocks[name] = (params["W_ih"][rows], params["W_hh"][rows],
                        params["b_ih"][rows] + params["b_hh"][rows])
    pre = lambda name, x_t, h: (np.einsum("jd,bd->bj", blocks[name][0], x_t)
                                + np.einsum("jk,bk->bj", blocks[name][1], h) + blocks[name][2])
    h, c, ys = h0.copy(), c0.copy(), []
    for t in range(x.shape[1]):
        i, f = sig(pre("i", x[:, t], h)), sig(pre("f", x[:, t], h))
        g, o = np.tanh(pre("g", x[:, t], h)), sig(pre("o", x[:, t], h))
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys, axis=1), h, c


def test_golden_values_from_linspace():
    B, T, D, H = 2, 6, 3, 4
    params = linspace_params(D, H)
    x = np.linspace(-1.5, 2.0, B * T * D).reshape(B, T, D)
    h0 = np.linspace(-0.3, 0.4, B * H).reshape(B, H)
    c0 = np.linspace(0.8, -0.9, B * H).reshape(B, H)
    ref_y, ref_h, ref_c = loop(params, x, h0, c0)
    y, (h, c), _ = lstm.forward(params, x, (h0, c0))
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, ref_h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c, ref_c, rtol=1e-12, atol=1e-14)


def test_golden_scalar_worked_by_hand():
    """D = H = 1, one step, x = 1, h0 = 0.5, c0 = −0.5, biases 0:
    a = W_ih·1 + W_hh·0.5 = (0.1 + 0.25, 0.2 − 0.25, 0.3 + 0.125, 0.4 + 0.5)."""
    p = {"W_ih": np.array([[0.1], [0.2], [0.3], [0.4]]),
         "W_hh": np.array([[0.5], [-0.5], [0.25], [1.0]]),
         "b_ih": np.zeros(4), "b_hh": np.zeros(4)}
    state0 = (np.full((1, 1), 0.5), np.full((1, 1), -0.5))
    y, (h, c), _ = lstm.forward(p, np.ones((1, 1, 1)), state0)
    sig = lambda a: 1 / (1 + math.exp(-a))
    c_ref = sig(-0.05) * -0.5 + sig(0.35) * math.tanh(0.425)
    h_ref = sig(0.9) * math.tanh(c_ref)
    np.testing.assert_allclose([h.item(), c.item(), y.item()], [h_ref, c_ref, h_ref], rtol=1e-14)
    np.testing.assert_allclose([h_ref, c_ref], [-0.00599947419899638, -0.008438878700996383],
                               rtol=1e-12)


def test_gradcheck(rng):
    params, x, state0 = make(rng, T=5)
    report = gradcheck.check_cell(lstm, params, x, state0)
    assert report.passed, str(report)  # relative error < 1e-6, float64
    assert {"state0[0]", "state0[1]"} <= set(report.errors)


def test_gradcheck_saturated_gates(rng):
    """Large weights push σ and tanh to their flat ends; the cached-value
    derivatives y(1 − y) and 1 − y² must stay right there too."""
    params, x, state0 = make(rng, T=4)
    params = {k: 4.0 * v for k, v in params.items()}
    report = gradcheck.check_cell(lstm, params, 2.0 * x, state0)
    assert report.passed, str(report)  # relative error < 1e-6, float64


def test_split_resume_equals_one_call(rng):
    params, x, state0 = make(rng, T=11)
    y, (h, c), _ = lstm.forward(params, x, state0)
    y1, s1, _ = lstm.forward(params, x[:, :4], state0)
    y2, (h2, c2), _ = lstm.forward(params, x[:, 4:], s1)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-14, "y")
    assert_close(h2, h, 1e-14, "h")
    assert_close(c2, c, 1e-14, "c")


def test_state0_none_equals_zeros(rng):
    params, x, (h0, _) = make(rng)
    y0, s0, cache0 = lstm.forward(params, x, None)
    y1, s1, cache1 = lstm.forward(params, x, (np.zeros_like(h0), np.zeros_like(h0)))
    np.testing.assert_array_equal(y0, y1)
    for a, b in zip(s0, s1):
        np.testing.assert_array_equal(a, b)
    dy = rng.standard_normal(y0.shape)
    g0, g1 = lstm.backward(params, cache0, dy), lstm.backward(params, cache1, dy)
    for k in params:
        np.testing.assert_array_equal(g0[k], g1[k])
    assert isinstance(g0["state0"], tuple) and len(g0["state0"]) == 2
    assert all(d.shape == h0.shape and np.any(d != 0) for d in g0["state0"])


def test_final_state_gradient_none_parts_mean_zeros(rng):
    params, x, state0 = make(rng)
    y, (h, c), cache = lstm.forward(params, x, state0)
    dh = rng.standard_normal(h.shape)
    a = lstm.backward(params, cache, None, (dh, None))
    b = lstm.backward(params, cache, np.zeros_like(y), (dh, np.zeros_like(c)))
    for k in params:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["state0"][1], b["state0"][1])


def test_t_equals_one_is_one_step(rng):
    params, x, state0 = make(rng, T=1)
    y, (h, c), _ = lstm.forward(params, x, state0)
    (h1, c1), _ = lstm.step_forward(params, x[:, 0], state0)
    np.testing.assert_array_equal(y[:, 0], h1)
    np.testing.assert_array_equal(h, h1)
    np.testing.assert_array_equal(c, c1)


def test_float32_stays_float32(rng):
    params, x, state0 = make(rng, T=20, dtype=np.float32)
    y, (h, c), cache = lstm.forward(params, x, state0)
    assert y.dtype == h.dtype == c.dtype == np.float32
    g = lstm.backward(params, cache, np.ones_like(y), (np.ones_like(h), np.ones_like(c)))
    assert all(g[k].dtype == np.float32 for k in (*params, "x"))
    assert all(d.dtype == np.float32 for d in g["state0"])
    to64 = lambda a: a.astype(np.float64)
    y64, _, _ = lstm.forward({k: to64(v) for k, v in params.items()}, to64(x),
                             tuple(map(to64, state0)))
    assert_close(y, y64, 1e-5, "float32 vs float64")


def test_large_preactivations_do_not_overflow():
    """σ written with exp(−|a|): no overflow warning (an error in this suite) at |a| ~ 1e3."""
    p = {"W_ih": np.full((8, 1), 1e3), "W_hh": np.zeros((8, 2)),
         "b_ih": np.zeros(8), "b_hh": np.zeros(8)}
    x = np.array([[[1.0], [-1.0]]])
    y, (h, c), _ = lstm.forward(p, x)
    assert np.all(np.isfinite(y))
    # t = 0: i = f = o = 1, g = 1 → c = 1, h = tanh(1); t = 1: i = f = o = 0, g = −1 → c = 0
    np.testing.assert_allclose(y[0, 0], [math.tanh(1.0)] * 2, rtol=1e-15)
    np.testing.assert_allclose(c, 0.0, atol=1e-300)


def test_init_params_follows_pytorch(rng):
    p = lstm.init_params(rng, 5, 16)
    assert {k: v.shape for k, v in p.items()} == {
        "W_ih": (64, 5), "W_hh": (64, 16), "b_ih": (64,), "b_hh": (64,)}
    bound = 1 / math.sqrt(16)
    for v in p.values():
        assert np.all(np.abs(v) <= bound) and np.max(np.abs(v)) > 0.8 * bound


def _without(p, key):
    return {k: v for k, v in p.items() if k != key}


@pytest.mark.parametrize("change, match", [
    (lambda p, x, s: (_without(p, "W_ih"), x, s), r"missing \['W_ih'\]"),
    (lambda p, x, s: ({**p, "W_hc": p["W_hh"]}, x, s), r"unexpected \['W_hc'\]"),
    (lambda p, x, s: ({k: v[:12] for k, v in p.items()}, x, s),
     r"W_hh: expected shape \(4H, H\) = \(16, 4\) .*got \(12, 4\)"),
    (lambda p, x, s: ({**p, "b_hh": np.zeros(12)}, x, s), r"b_hh: expected shape \(G=16\)"),
    (lambda p, x, s: (p, x[..., :2], s), r"x: expected shape \(B=2, T=7, D=3\), got \(2, 7, 2\)"),
    (lambda p, x, s: (p, x, s[0]), r"state0: expected a tuple \(h0, c0\) of 2 arrays "
                                   r"\(B=2, H=4\), \(B=2, H=4\), got ndarray"),
    (lambda p, x, s: (p, x, s[:1]), r"got tuple of length 1"),
    (lambda p, x, s: (p, x, (s[0], s[1][:, :3])),
     r"\(c0\): expected shape \(B=2, H=4\), got \(2, 3\)"),
    (lambda p, x, s: (p, x, (s[0].astype(np.float32), s[1])), "mixed precisions"),
    (lambda p, x, s: (p, x.astype(np.float32), s), "mixed precisions"),
    (lambda p, x, s: (p, x, (s[0], s[1] + 0j)), r"\(c0\): expected dtype in \['float32'"),
])
def test_bad_input_is_refused_with_a_clear_message(change, match, rng):
    params, x, state0 = make(rng)
    with pytest.raises((ValueError, TypeError), match=match):
        lstm.forward(*change(params, x, state0))


def test_bad_options_and_gradients_are_refused(rng):
    params, x, state0 = make(rng)
    with pytest.raises(ValueError, match="method: expected one of"):
        lstm.forward(params, x, state0, method="newton")
    with pytest.raises(ValueError, match="backend"):
        lstm.forward(params, x, state0, backend="tpu")
    _, _, cache = lstm.forward(params, x, state0)
    with pytest.raises(TypeError, match=r"dstate: expected a tuple \(dh, dc\)"):
        lstm.backward(params, cache, None, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"dstate\[1\]: expected shape \(2, 4\)"):
        lstm.backward(params, cache, None, (np.zeros((2, 4)), np.zeros((2, 5))))
