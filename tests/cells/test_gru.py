"""cells.gru: golden values against PyTorch's documented equations, and what
only the GRU has (the reset gate on the hidden part, z = 1 keeps the state).
Gradients, agreement of backends, split-resume, dtypes and the bad-input tables
are tests/test_contract.py's (entries "gru", "gru_bidirectional"); the issue 7
reproducer is at the end."""

import math

import numpy as np
import pytest

from minirec import _backend, gradcheck, registry
from minirec.cells import gru, rnn


def linspace_params(D, H):
    return {"W_ih": np.linspace(-0.6, 0.5, 3 * H * D).reshape(3 * H, D),
            "W_hh": np.linspace(0.4, -0.7, 3 * H * H).reshape(3 * H, H),
            "b_ih": np.linspace(-0.1, 0.2, 3 * H),
            "b_hh": np.linspace(0.3, -0.2, 3 * H)}


def make(rng, dtype=np.float64, **dims):
    """The registry's example inputs ``(params, x, h0)``, (B, T, D, H) = (2, 5, 3, 4)."""
    inputs = registry.get("gru").make_inputs(rng, dtype, "small", **dims)
    return inputs["params"], inputs["x"], inputs["state0"]


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


def test_gradcheck_saturated_gates(rng):
    params, x, h0 = make(rng, T=4)
    params = {k: 4.0 * v for k, v in params.items()}
    report = gradcheck.check_cell(gru, params, 2.0 * x, h0)
    assert report.passed, str(report)  # relative error < 1e-6, float64


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


def test_init_params_follows_pytorch(rng):
    p = gru.init_params(rng, 5, 16)
    assert {k: v.shape for k, v in p.items()} == {
        "W_ih": (48, 5), "W_hh": (48, 16), "b_ih": (48,), "b_hh": (48,)}
    bound = 1 / math.sqrt(16)
    for v in p.values():
        assert np.all(np.abs(v) <= bound) and np.max(np.abs(v)) > 0.8 * bound


def test_w_hh_without_three_gates_is_refused(rng):
    params, x, h0 = make(rng)
    with pytest.raises(ValueError, match=r"W_hh: expected shape \(3H, H\) = \(12, 4\) "
                                         r"\(gates r, z, n stacked on axis 0\), got \(8, 4\)"):
        gru.forward({k: v[:8] for k, v in params.items()}, x, h0)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not _backend.available("numba"), reason="numba not installed"))])
def test_a_cache_of_another_cell_is_refused(backend):
    """Issue 7 #8: gru.backward(gp, rnn_cache, y) ended in an unpacking error."""
    rng = np.random.default_rng(0)
    gp, x, h0 = make(rng)
    rp = rnn.init_params(rng, 3, 4)
    y, _, rnn_cache = rnn.forward(rp, x, h0, backend=backend)
    with pytest.raises(TypeError, match=r"gru: cache: expected the cache returned by gru's "
                                        r"forward \(GRUCache\), got RNNCache"):
        gru.backward(gp, rnn_cache, y)
    for not_a_cache in ({}, None):
        with pytest.raises(TypeError, match=r"gru: cache: expected .* got (dict|NoneType)"):
            gru.backward(gp, not_a_cache, y)
