"""cells.mingru, and what minLSTM shares with it (the write-gate scan): the
paper's equations, streaming steps, saturated and negative-eigenvalue gates,
golden values. Agreement of every method and backend, gradient checks,
split-resume and bad input are tests/test_contract.py's."""

import math

import numpy as np
import pytest

from minirec import bptt, registry
from minirec.cells import mingru, minlstm
from tests.conftest import TOL, assert_close

CELLS = {"mingru": mingru, "minlstm": minlstm}
# the bias that moves each cell's write gate w (minGRU's z, minLSTM's i')
GATE_BIAS = {"mingru": "b_z", "minlstm": "b_f"}


def shut(name):
    """Write gate shut: w = 0, a = 1 exactly (the state is held)."""
    return {"b_z": -1000.0} if name == "mingru" else {"b_i": -1000.0}


def opened(name, bias=1000.0):
    """Write gate open: w = 1, a = σ(−bias) (0 in floating point for 1000, and for
    200 in float32): h_t = h̃_t. minLSTM's forget gate is shut for it."""
    return {"b_z": bias} if name == "mingru" else {"b_i": bias, "b_f": -bias}


def inputs(name, dtype=np.float64, **dims):
    d = registry.get(name).make_inputs(np.random.default_rng(0), dtype, "small", **dims)
    return d["params"], d["x"], d["state0"]


def with_biases(params, biases, channels=slice(None)):
    p = {k: v.copy() for k, v in params.items()}
    for k, v in biases.items():
        p[k][channels] = v
    return p


def upstream(y, h_T, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(y.shape).astype(y.dtype), rng.standard_normal(h_T.shape
                                                                             ).astype(y.dtype)


def candidate(params, x):
    return x @ params["W_h"].T + params["b_h"]


def test_recurrent_is_the_scan_of_the_paper_equations():
    params, x, h0 = inputs("mingru", T=7)
    y, h_T, _ = mingru.forward(params, x, h0)
    h = h0
    for t in range(x.shape[1]):
        z = 1 / (1 + np.exp(-(x[:, t] @ params["W_z"].T + params["b_z"])))
        h = (1 - z) * h + z * candidate(params, x[:, t])
        assert_close(y[:, t], h, 1e-13, f"h_{t}")
    assert_close(h_T, h, 1e-13, "h_T")


@pytest.mark.parametrize("neg", [False, True])
@pytest.mark.parametrize("name", CELLS)
def test_step_loop_equals_forward_and_backward(name, neg):
    """Streaming: looping step_forward (and BPTT over step_backward) is forward/backward."""
    cell = CELLS[name]
    params, x, h0 = inputs(name, T=9)
    y, h_T, cache = cell.forward(params, x, h0, method="blelloch", negative_eigenvalues=neg)
    dy, dstate = upstream(y, h_T)
    g = cell.backward(params, cache, dy, dstate)
    ys, hs, steps = bptt.sequence_forward(cell.step_forward, params, x, h0,
                                          negative_eigenvalues=neg)
    g_steps = bptt.sequence_backward(cell.step_backward, params, steps, dy, dstate)
    assert_close(ys, y, 1e-12, "y")
    assert_close(hs, h_T, 1e-12, "h_T")
    assert set(g_steps) == set(g)
    for k in g:
        assert_close(g_steps[k], g[k], 1e-12, f"d{k}")


@pytest.mark.parametrize("method", mingru.METHODS)
@pytest.mark.parametrize("name", CELLS)
def test_shut_gates_hold_the_state_in_every_method(name, method):
    """Write gate shut in channels 0, 1: a = 1 exactly (log a = 0), so the state
    is held, every method (log-space included) agrees, the gradients are finite
    and the held channels pass the state's gradient through unchanged."""
    cell = CELLS[name]
    params, x, h0 = inputs(name, T=11)
    params = with_biases(params, shut(name), slice(0, 2))
    y, h_T, cache = cell.forward(params, x, h0, method=method, chunk_size=4)
    ref_y, _, ref_cache = cell.forward(params, x, h0)
    dy, dstate = upstream(y, h_T)
    g, ref_g = cell.backward(params, cache, dy, dstate), cell.backward(params, ref_cache, dy,
                                                                       dstate)
    held = np.broadcast_to(h0[:, None, :2], y[:, :, :2].shape)
    if method == "log":  # exp(log-sums) rounds
        np.testing.assert_allclose(y[:, :, :2], held, rtol=1e-14)
    else:
        np.testing.assert_array_equal(y[:, :, :2], held)
    assert_close(y, ref_y, 1e-10, "y")
    for k in g:
        assert np.all(np.isfinite(g[k])), k
        assert_close(g[k], ref_g[k], 1e-10, f"d{k}")
    np.testing.assert_allclose(g["state0"][:, :2], dy[:, :, :2].sum(1) + dstate[:, :2],
                               rtol=1e-13)


@pytest.mark.parametrize("method", mingru.METHODS)
@pytest.mark.parametrize("name", CELLS)
def test_open_gates_give_the_candidate_in_every_method(name, method):
    """Write gate open: a = 0 (log a = −1000, finite), h_t = h̃_t; the log method
    runs too, on the log gates (a = σ(−1000) is 0 in floating point)."""
    cell = CELLS[name]
    params, x, h0 = inputs(name, T=6)
    params = with_biases(params, opened(name))
    y, _, _ = cell.forward(params, x, h0, method=method, chunk_size=4)
    assert_close(y, candidate(params, x), 1e-12, method)


@pytest.mark.parametrize("dtype, bias", [(np.float32, 200.0), (np.float64, 1000.0)])
@pytest.mark.parametrize("name", CELLS)
def test_log_method_runs_saturated_gates(name, dtype, bias):
    """Issue 7, defect 3: the log method used to take log of a = σ(−k), which is 0
    at saturated pre-activations (σ(−200) underflows in float32), and refused
    with "needs a > 0". It now works on log σ(−k) = −softplus(k) directly."""
    cell = CELLS[name]
    params, x, h0 = inputs(name, dtype, T=5)
    params = with_biases(params, opened(name, bias), slice(0, 2))
    y, h_T, cache = cell.forward(params, x, h0, method="log")
    ref_y, ref_h, ref_cache = cell.forward(params, x, h0)
    dy, dstate = upstream(y, h_T)
    g, ref_g = cell.backward(params, cache, dy, dstate), cell.backward(params, ref_cache, dy,
                                                                       dstate)
    tol = TOL[np.dtype(dtype)]  # float64 1e-10, float32 1e-4 relative RMS
    assert_close(y, ref_y, tol, "y")
    assert_close(h_T, ref_h, tol, "h_T")
    for k in ref_g:
        assert np.all(np.isfinite(g[k])), k
        assert_close(g[k], ref_g[k], tol, f"d{k}")


@pytest.mark.parametrize("name", CELLS)
def test_negative_eigenvalues_multiplier_spans_minus_one_to_one(name):
    """a = 1 − 2w ∈ [−1, 1]; with the write gate open it is exactly −1:
    h_t = h̃_t − h_{t−1}."""
    cell = CELLS[name]
    params, x, h0 = inputs(name, T=200)
    params = with_biases(params, {GATE_BIAS[name]: np.array([-4.0, -2.0, 2.0, 4.0])})
    _, _, cache = cell.forward(params, x, h0, negative_eigenvalues=True)
    a, core = cache.core.scan.a, cache.core
    assert a.min() >= -1 and a.max() <= 1
    assert a.min() < -0.5 and a.max() > 0.5  # both signs really occur
    np.testing.assert_allclose(a, 1 - 2 * core.w, rtol=0, atol=1e-15)
    params = with_biases(params, opened(name))
    y, _, _ = cell.forward(params, x[:, :5], h0, negative_eigenvalues=True)
    h = h0
    for t in range(5):
        h = candidate(params, x[:, t]) - h
        np.testing.assert_allclose(y[:, t], h, rtol=1e-14)


@pytest.mark.parametrize("name", CELLS)
def test_log_method_refuses_negative_eigenvalues(name):
    params, x, h0 = inputs(name)
    with pytest.raises(ValueError, match=r"method: 'log' needs a > 0.*negative_eigenvalues"
                                         r".*expected.*got 'log'"):
        CELLS[name].forward(params, x, h0, method="log", negative_eigenvalues=True)


def test_golden_values_worked_by_hand():
    """D = H = 1, W_z = 0, b_z = log 3 → z = 3/4; W_h = 1, b_h = 0 → h̃ = x;
    x = 1, 2, 3, 4 (linspace), h0 = 0:
      h = 3/4 x + 1/4 h:   0.75, 1.6875, 2.671875, 3.66796875
      negative, a = −1/2:  0.75, 1.125,  1.6875,   2.15625"""
    params = {"W_z": np.zeros((1, 1)), "b_z": np.array([math.log(3.0)]),
              "W_h": np.ones((1, 1)), "b_h": np.zeros(1)}
    x = np.linspace(1.0, 4.0, 4).reshape(1, 4, 1)
    expected = {False: [0.75, 1.6875, 2.671875, 3.66796875], True: [0.75, 1.125, 1.6875, 2.15625]}
    for neg, entry in ((False, "mingru"), (True, "mingru_neg")):
        for method in registry.get(entry).methods:
            y, _, _ = mingru.forward(params, x, method=method, chunk_size=3,
                                     negative_eigenvalues=neg)
            np.testing.assert_allclose(y.ravel(), expected[neg], rtol=1e-14, err_msg=method)


def test_golden_values_from_a_scalar_loop():
    """linspace weights and inputs; expected numbers from a plain-Python loop with math.exp."""
    B, T, D, H = 1, 5, 2, 3
    params = {"W_z": np.linspace(-1, 1, H * D).reshape(H, D), "b_z": np.linspace(-0.5, 0.5, H),
              "W_h": np.linspace(0.5, -1.5, H * D).reshape(H, D), "b_h": np.linspace(0.2, 0.4, H)}
    x = np.linspace(-2, 2, B * T * D).reshape(B, T, D)
    h0 = np.linspace(1, -1, H).reshape(1, H)
    h = list(h0[0])
    expected = []
    for t in range(T):
        for j in range(H):
            k = sum(params["W_z"][j, d] * x[0, t, d] for d in range(D)) + params["b_z"][j]
            z = 1 / (1 + math.exp(-k))
            ht = sum(params["W_h"][j, d] * x[0, t, d] for d in range(D)) + params["b_h"][j]
            h[j] = (1 - z) * h[j] + z * ht
        expected.append(list(h))
    for method in mingru.METHODS:
        y, _, _ = mingru.forward(params, x, h0, method=method, chunk_size=2)
        np.testing.assert_allclose(y[0], expected, rtol=1e-12, err_msg=method)


def test_init_params_shapes_and_dtype(rng):
    p = mingru.init_params(rng, 3, 5, dtype=np.float32)
    assert {k: v.shape for k, v in p.items()} == {"W_z": (5, 3), "b_z": (5,),
                                                  "W_h": (5, 3), "b_h": (5,)}
    assert all(v.dtype == np.float32 for v in p.values())
    assert all(np.abs(v).max() <= 1 / np.sqrt(3) for v in p.values())


def test_registry_negative_entry_runs_every_method_but_log():
    entry = registry.get("mingru_neg")
    assert entry.forward_kwargs == {"negative_eigenvalues": True}
    assert entry.methods == tuple(m for m in mingru.METHODS if m != "log")
    assert registry.get("mingru").methods == mingru.METHODS
