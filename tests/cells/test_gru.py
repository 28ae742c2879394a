"""cells.gru: the GRU against an independent loop, its gradients, its errors."""

import math

import numpy as np
import pytest

from minirec import gradcheck
from minirec.cells import gru
from tests.conftest import assert_close


def linspace_params(D, H):
    return {"W_ih": np.linspace(-0.6, 0.5, 3 * H * D).reshape(3 * H, D),
            "W_hh": np.linspace(0.4, -0.7, 3 * H * H).reshape(3 * H, H),
            "b_ih": np.linspace(-0.1, 0.2, 3 * H),
            "b_hh": np.linspace(0.3, -0.2, 3 * H)}


def make(rng, B=2, T=7, D=3, H=4, dtype=np.float64):
    params = gru.init_params(rng, D, H, dtype=dtype)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    return params, x, h0


def loop(params, x, h0):
    """PyTorch's documented GRU equations with per-gate blocks and the plain logistic."""
    H = h0.shape[1]
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))
    W_ir, W_iz, W_in = (params["W_ih"][n * H:(n + 1) * H] for n in range(3))
    W_hr, W_hz, W_hn = (params["W_hh"][n * H:(n + 1) * H] for n in range(3))
    b_ir, b_iz, b_in = (params["b_ih"][n * H:(n + 1) * H] for n in range(3))
    b_hr, b_hz, b_hn = (params["b_hh"][n * H:(n + 1) * H] for n in range(3))
    h, ys = h0.copy(), []
    for t in range(x.shape[1]):
        x_t = x[:, t]
        r = sig(np.einsum("jd,bd->bj", W_ir, x_t) + b_ir + np.einsum("jk,bk->bj", W_hr, h) + b_hr)
        z = sig(np.einsum("jd,bd->bj", W_iz, x_t) + b_iz + np.einsum("jk,bk->bj", W_hz, h) + b_hz)
        n = np.tanh(np.einsum("jd,bd->bj", W_in, x_t) + b_in
                    + r * (np.einsum("jk,bk->bj", W_hn, h) + b_hn))
        h = (1 - z) * n + z * h
        ys.append(h)
    return np.stack(ys, axis=1), h


def test_golden_values_from_linspace():
    B, T, D, H = 2, 6, 3, 4
    params = linspace_params(D, H)
    x = np.linspace(-1.5, 2.0, B * T * D).reshape(B, T, D)
    h0 = np.linspace(-0.3, 0.4, B * H).reshape(B, H)
    ref_y, ref_h = loop(params, x, h0)
    y, h, _ = gru.forward(params, x, h0)
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, ref_h, rtol=1e-12, atol=1e-14)


def test_golden_scalar_worked_by_hand():
    """D = H = 1, one step, x = 1, h0 = 0.5. The reset gate multiplies the hidden
    part *including* b_hn (PyTorch), not the input part:
    r = σ(0.1 + 0.25), z = σ(0.2 − 0.25), n = tanh(0.3 + 0.05 + r·(0.125 + 0.2))."""
    p = {"W_ih": np.array([[0.1], [0.2], [0.3]]), "W_hh": np.array([[0.5], [-0.5], [0.25]]),
         "b_ih": np.array([0.0, 0.0, 0.05]), "b_hh": np.array([0.0, 0.0, 0.2])}
    y, h, _ = gru.forward(p, np.ones((1, 1, 1)), np.full((1, 1), 0.5))
    sig = lambda a: 1 / (1 + math.exp(-a))
    r, z = sig(0.35), sig(-0.05)
    n = math.tanh(0.35 + r * 0.325)
    h_ref = (1 - z) * n + z * 0.5
    np.testing.assert_allclose([h.item(), y.item()], [h_ref, h_ref], rtol=1e-14)
    np.testing.assert_allclose(h_ref, 0.4966587088197346, rtol=1e-12)


def test_gradcheck(rng):
    params, x, h0 = make(rng, T=5)
    report = gradcheck.check_cell(gru, params, x, h0)
    assert report.passed, str(report)  # relative error < 1e-6, float64


def test_gradcheck_saturated_gates(rng):
    params, x, h0 = make(rng, T=4)
    params = {k: 4.0 * v for k, v in params.items()}
    report = gradcheck.check_cell(gru, params, 2.0 * x, h0)
    assert report.passed, str(report)  # relative error < 1e-6, float64


def test_split_resume_equals_one_call(rng):
    params, x, h0 = make(rng, T=11)
    y, h, _ = gru.forward(params, x, h0)
    y1, s1, _ = gru.forward(params, x[:, :4], h0)
    y2, s2, _ = gru.forward(params, x[:, 4:], s1)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-14, "y")
    assert_close(s2, h, 1e-14, "h")


def test_state0_none_equals_zeros(rng):
    params, x, h0 = make(rng)
    y0, h_0, c0 = gru.forward(params, x, None)
    y1, h_1, c1 = gru.forward(params, x, np.zeros_like(h0))
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(h_0, h_1)
    dy = rng.standard_normal(y0.shape)
    g0, g1 = gru.backward(params, c0, dy), gru.backward(params, c1, dy)
    for k in g1:
        np.testing.assert_array_equal(g0[k], g1[k])
    assert g0["state0"].shape == h0.shape and np.any(g0["state0"] != 0)


def test_update_gate_one_keeps_the_state(rng):
    """z = 1 (huge b_hz): h_t = h_{t-1} exactly, and the gradient passes through unchanged."""
    params, x, h0 = make(rng)
    params["b_hh"] = params["b_hh"].copy()
    params["b_hh"][4:8] = 1e3
    y, h, cache = gru.forward(params, x, h0)
    np.testing.assert_array_equal(h, h0)
    dh = rng.standard_normal(h.shape)
    g = gru.backward(params, cache, None, dh)
    np.testing.assert_array_equal(g["state0"], dh)


def test_t_equals_one_is_one_step(rng):
    params, x, h0 = make(rng, T=1)
    y, h, _ = gru.forward(params, x, h0)
    step, _ = gru.step_forward(params, x[:, 0], h0)
    np.testing.assert_array_equal(y[:, 0], step)
    np.testing.assert_array_equal(h, step)


def test_float32_stays_float32(rng):
    params, x, h0 = make(rng, T=20, dtype=np.float32)
    y, h, cache = gru.forward(params, x, h0)
    assert y.dtype == np.float32 and h.dtype == np.float32
    g = gru.backward(params, cache, np.ones_like(y), np.ones_like(h))
    assert all(v.dtype == np.float32 for v in g.values())
    y64, _, _ = gru.forward({k: v.astype(np.float64) for k, v in params.items()},
                            x.astype(np.float64), h0.astype(np.float64))
    assert_close(y, y64, 1e-5, "float32 vs float64")


def test_init_params_follows_pytorch(rng):
    p = gru.init_params(rng, 5, 16)
    assert {k: v.shape for k, v in p.items()} == {
        "W_ih": (48, 5), "W_hh": (48, 16), "b_ih": (48,), "b_hh": (48,)}
    bound = 1 / math.sqrt(16)
    for v in p.values():
        assert np.all(np.abs(v) <= bound) and np.max(np.abs(v)) > 0.8 * bound


def _without(p, key):
    return {k: v for k, v in p.items() if k != key}


@pytest.mark.parametrize("change, match", [
    (lambda p, x, h: (_without(p, "b_ih"), x, h), r"missing \['b_ih'\]"),
    (lambda p, x, h: ({**p, "W_hz": p["W_hh"]}, x, h), r"unexpected \['W_hz'\]"),
    (lambda p, x, h: ({k: v[:8] for k, v in p.items()}, x, h),
     r"W_hh: expected shape \(3H, H\) = \(12, 4\) .*got \(8, 4\)"),
    (lambda p, x, h: ({**p, "W_ih": np.zeros((12, 3, 1))}, x, h), r"W_ih: expected shape"),
    (lambda p, x, h: (p, x[..., :2], h), r"x: expected shape \(B=2, T=7, D=3\), got \(2, 7, 2\)"),
    (lambda p, x, h: (p, x, h[:1]), r"state0: expected shape \(B=2, H=4\), got \(1, 4\)"),
    (lambda p, x, h: (p, x, (h, h)), "expected an ndarray, got tuple"),
    (lambda p, x, h: (p, x.astype(np.float32), h), "mixed precisions"),
    (lambda p, x, h: (p, x + 0j, h), "expected dtype"),
    (lambda p, x, h: (p, x, h + 0j), r"state0: expected dtype in \['float32', 'float64'\]"),
])
def test_bad_input_is_refused_with_a_clear_message(change, match, rng):
    params, x, h0 = make(rng)
    with pytest.raises((ValueError, TypeError), match=match):
        gru.forward(*change(params, x, h0))


def test_bad_options_and_gradients_are_refused(rng):
    params, x, h0 = make(rng)
    with pytest.raises(ValueError, match="method: expected one of"):
        gru.forward(params, x, h0, method="newton")
    with pytest.raises(ValueError, match="backend"):
        gru.forward(params, x, h0, backend="tpu")
    _, _, cache = gru.forward(params, x, h0)
    with pytest.raises(ValueError, match=r"dstate: expected shape \(2, 4\)"):
        gru.backward(params, cache, None, np.zeros((2, 5)))
