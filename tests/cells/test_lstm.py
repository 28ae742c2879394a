"""cells.lstm: golden values against an independent loop, and what only the
LSTM has (the (h, c) state and its gradient, saturated gates). Gradients,
agreement of backends, split-resume, dtypes and the bad-input tables are
tests/test_contract.py's (entries "lstm", "lstm_stack2")."""

import math

import numpy as np
import pytest

from minirec import _backend, gradcheck, registry
from minirec.cells import lstm


def linspace_params(D, H):
    return {"W_ih": np.linspace(-0.6, 0.5, 4 * H * D).reshape(4 * H, D),
            "W_hh": np.linspace(0.4, -0.7, 4 * H * H).reshape(4 * H, H),
            "b_ih": np.linspace(-0.1, 0.2, 4 * H),
            "b_hh": np.linspace(0.3, -0.2, 4 * H)}


def make(rng, dtype=np.float64, **dims):
    """The registry's example inputs ``(params, x, (h0, c0))``, (B, T, D, H) = (2, 5, 3, 4)."""
    inputs = registry.get("lstm").make_inputs(rng, dtype, "small", **dims)
    return inputs["params"], inputs["x"], inputs["state0"]


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


def test_gradcheck_saturated_gates(rng):
    """Large weights push σ and tanh to their flat ends; the cached-value
    derivatives y(1 − y) and 1 − y² must stay right there too."""
    params, x, state0 = make(rng, T=4)
    params = {k: 4.0 * v for k, v in params.items()}
    report = gradcheck.check_cell(lstm, params, 2.0 * x, state0)
    assert report.passed, str(report)  # relative error < 1e-6, float64


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not _backend.available("numba"), reason="numba not installed"))])
def test_final_state_gradient_none_parts_mean_zeros(backend, rng):
    params, x, state0 = make(rng)
    y, (h, c), cache = lstm.forward(params, x, state0, backend=backend)
    dh = rng.standard_normal(h.shape)
    a = lstm.backward(params, cache, None, (dh, None))
    b = lstm.backward(params, cache, np.zeros_like(y), (dh, np.zeros_like(c)))
    for k in params:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["state0"][1], b["state0"][1])


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


def test_w_hh_without_four_gates_is_refused(rng):
    params, x, state0 = make(rng)
    with pytest.raises(ValueError, match=r"W_hh: expected shape \(4H, H\) = \(16, 4\) "
                                         r"\(gates i, f, g, o stacked on axis 0\), got \(12, 4\)"):
        lstm.forward({k: v[:12] for k, v in params.items()}, x, state0)


@pytest.mark.parametrize("state0, match", [
    (lambda s: s[0], r"state0: expected a tuple \(h0, c0\) of 2 arrays \(B=2, H=4\), "
                     r"\(B=2, H=4\), got ndarray"),
    (lambda s: (s[0], s[1][:, :3]), r"state0\[1\] \(c0\): expected shape \(B=2, H=4\), "
                                    r"got \(2, 3\)"),
])
def test_state0_is_the_pair_h0_c0(state0, match, rng):
    params, x, s0 = make(rng)
    with pytest.raises((TypeError, ValueError), match=match):
        lstm.forward(params, x, state0(s0))


def test_dstate_is_the_pair_dh_dc(rng):
    params, x, state0 = make(rng)
    _, (h, c), cache = lstm.forward(params, x, state0)
    with pytest.raises(TypeError, match=r"dstate: expected a tuple of 2 arrays \(\(2, 4\), "
                                        r"\(2, 4\), the state's structure\), got ndarray"):
        lstm.backward(params, cache, None, h)
    with pytest.raises(ValueError, match=r"dstate\[1\]: expected shape \(2, 4\) \(the shape "
                                         r"of state\[1\]\), got \(2, 5\)"):
        lstm.backward(params, cache, None, (h, np.zeros((2, 5))))
