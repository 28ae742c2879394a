"""cells.mingru: every method equals the definition, forward and backward; the
negative-eigenvalue option; streaming steps; gates at their limits."""

import math

import numpy as np
import pytest

from minirec import bptt, gradcheck
from minirec.cells import mingru
from tests.conftest import assert_close

# (method, negative_eigenvalues): log-space needs a > 0, so no log with a ∈ (−1, 1)
CASES = [(m, neg) for neg in (False, True) for m in mingru.METHODS
         if not (neg and m == "log")]


def make(rng, B=2, T=7, D=3, H=4, dtype=np.float64, gate_scale=1.0):
    params = mingru.init_params(rng, D, H, dtype=np.float64)
    params["b_z"] = gate_scale * rng.standard_normal(H)  # gates spread over (0, 1)
    params = {k: v.astype(dtype) for k, v in params.items()}
    x = rng.standard_normal((B, T, D)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    return params, x, h0


def run(params, x, h0, dy, dstate, **kw):
    y, h_T, cache = mingru.forward(params, x, h0, **kw)
    return y, h_T, mingru.backward(params, cache, dy, dstate)


@pytest.mark.parametrize("method, neg", CASES)
@pytest.mark.parametrize("T", [1, 7, 37])
def test_method_equals_definition_forward_and_backward(method, neg, T, rng):
    params, x, h0 = make(rng, T=T)
    dy, dstate = rng.standard_normal((2, T, 4)), rng.standard_normal((2, 4))
    ref = run(params, x, h0, dy, dstate, negative_eigenvalues=neg)
    for chunk in (None, 3, 8):  # 37 is prime: never a multiple of the chunk
        y, h_T, g = run(params, x, h0, dy, dstate, method=method, chunk_size=chunk,
                        negative_eigenvalues=neg)
        assert_close(y, ref[0], 1e-10, "y")
        assert_close(h_T, ref[1], 1e-10, "h_T")
        assert set(g) == set(ref[2]) == set(params) | {"x", "state0"}
        for k in g:
            assert_close(g[k], ref[2][k], 1e-10, f"d{k}")


@pytest.mark.parametrize("method, neg", CASES)
def test_gradcheck_every_parameter_input_and_state(method, neg, rng):
    params, x, h0 = make(rng, T=5)
    for state0 in (h0, None):
        report = gradcheck.check_cell(mingru, params, x, state0, method=method, chunk_size=2,
                                      negative_eigenvalues=neg)
        assert report.passed, str(report)  # relative error < 1e-6, float64
        assert set(report.errors) == set(params) | {"x", "state0"}


def test_recurrent_is_the_scan_of_the_paper_equations(rng):
    params, x, h0 = make(rng)
    y, h_T, _ = mingru.forward(params, x, h0)
    h = h0
    for t in range(x.shape[1]):
        z = 1 / (1 + np.exp(-(x[:, t] @ params["W_z"].T + params["b_z"])))
        h_tilde = x[:, t] @ params["W_h"].T + params["b_h"]
        h = (1 - z) * h + z * h_tilde
        assert_close(y[:, t], h, 1e-13, f"h_{t}")
    assert_close(h_T, h, 1e-13, "h_T")


@pytest.mark.parametrize("neg", [False, True])
def test_step_loop_equals_forward_and_backward(neg, rng):
    """Streaming: looping step_forward (and BPTT over step_backward) is forward/backward."""
    params, x, h0 = make(rng, T=9)
    dy, dstate = rng.standard_normal((2, 9, 4)), rng.standard_normal((2, 4))
    y, h_T, g = run(params, x, h0, dy, dstate, method="blelloch", negative_eigenvalues=neg)
    h = h0
    for t in range(9):
        h, _ = mingru.step_forward(params, x[:, t], h, negative_eigenvalues=neg)
        assert_close(h, y[:, t], 1e-12, f"h_{t}")
    ys, hs, cache = bptt.sequence_forward(mingru.step_forward, params, x, h0,
                                          negative_eigenvalues=neg)
    g_steps = bptt.sequence_backward(mingru.step_backward, params, cache, dy, dstate)
    assert_close(ys, y, 1e-12, "y")
    assert_close(hs, h_T, 1e-12, "h_T")
    for k in g:
        assert_close(g_steps[k], g[k], 1e-12, f"d{k}")


@pytest.mark.parametrize("method, neg", CASES)
def test_split_resume_equals_one_call(method, neg, rng):
    params, x, h0 = make(rng, T=23)
    kw = dict(method=method, chunk_size=4, negative_eigenvalues=neg)
    y, h_T, _ = mingru.forward(params, x, h0, **kw)
    y1, s1, _ = mingru.forward(params, x[:, :10], h0, **kw)
    y2, s2, _ = mingru.forward(params, x[:, 10:], s1, **kw)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-12, "y")
    assert_close(s2, h_T, 1e-12, "h_T")


@pytest.mark.parametrize("method, neg", CASES)
def test_float32_stays_float32_and_close(method, neg, rng):
    params, x, h0 = make(rng, T=37, dtype=np.float32)
    dy = rng.standard_normal((2, 37, 4)).astype(np.float32)
    ds = rng.standard_normal((2, 4)).astype(np.float32)
    to64 = lambda d: {k: v.astype(np.float64) for k, v in d.items()}
    ref = run(to64(params), x.astype(np.float64), h0.astype(np.float64),
              dy.astype(np.float64), ds.astype(np.float64), negative_eigenvalues=neg)
    y, h_T, g = run(params, x, h0, dy, ds, method=method, chunk_size=8,
                    negative_eigenvalues=neg)
    assert y.dtype == h_T.dtype == np.float32
    assert_close(y, ref[0], 1e-4, "y")
    for k in g:
        assert g[k].dtype == np.float32, k
        assert_close(g[k], ref[2][k], 1e-4, f"d{k}")


@pytest.mark.parametrize("method", mingru.METHODS)
def test_gates_exactly_closed_in_log_space(method, rng):
    """b_z = −1000: z = 0 and a = 1 exactly (log a = 0): the state is held exactly,
    every method (log-space included) agrees, and the gradients are finite."""
    params, x, h0 = make(rng, T=11)
    params["b_z"][:2] = -1000.0
    dy, dstate = rng.standard_normal((2, 11, 4)), rng.standard_normal((2, 4))
    y, h_T, g = run(params, x, h0, dy, dstate, method=method, chunk_size=4)
    ref = run(params, x, h0, dy, dstate)
    held = np.broadcast_to(h0[:, None, :2], (2, 11, 2))
    if method == "log":  # exp(log h) rounds
        np.testing.assert_allclose(y[:, :, :2], held, rtol=1e-14)
    else:
        np.testing.assert_array_equal(y[:, :, :2], held)
    assert_close(y, ref[0], 1e-10, "y")
    for k in g:
        assert np.all(np.isfinite(g[k])), k
        assert_close(g[k], ref[2][k], 1e-10, f"d{k}")
    # the held channels pass the state's gradient through unchanged
    np.testing.assert_allclose(g["state0"][:, :2], dy[:, :, :2].sum(1) + dstate[:, :2],
                               rtol=1e-13)


def test_gates_exactly_open(rng):
    """b_z = +1000: z = 1, a = 0 exactly: h_t = h̃_t, every method but log (log 0)."""
    params, x, h0 = make(rng, T=6)
    params["b_z"][:] = 1000.0
    h_tilde = x @ params["W_h"].T + params["b_h"]
    for method in ("recurrent", "hillis_steele", "blelloch", "chunked"):
        y, _, _ = mingru.forward(params, x, h0, method=method, chunk_size=4)
        assert_close(y, h_tilde, 1e-14, method)
    with pytest.raises(ValueError, match="a > 0"):
        mingru.forward(params, x, h0, method="log")


def test_negative_eigenvalues_multiplier_spans_minus_one_to_one(rng):
    """a = 1 − 2z ∈ [−1, 1]; at b_z = +1000 it is exactly −1: h_t = h̃_t − h_{t−1}."""
    params, x, h0 = make(rng, T=200, gate_scale=4.0)
    _, _, cache = mingru.forward(params, x, h0, negative_eigenvalues=True)
    a = cache["scan"].a
    assert a.min() >= -1 and a.max() <= 1
    assert a.min() < -0.5 and a.max() > 0.5  # both signs really occur
    np.testing.assert_allclose(a, 1 - 2 * cache["z"], rtol=0, atol=1e-15)
    params["b_z"][:] = 1000.0
    y, _, _ = mingru.forward(params, x[:, :5], h0, negative_eigenvalues=True)
    h_tilde = x[:, :5] @ params["W_h"].T + params["b_h"]
    h = h0
    for t in range(5):
        h = h_tilde[:, t] - h
        np.testing.assert_allclose(y[:, t], h, rtol=1e-14)


def test_log_method_refuses_negative_eigenvalues(rng):
    params, x, h0 = make(rng)
    with pytest.raises(ValueError, match=r"method='log' needs a > 0.*negative_eigenvalues"):
        mingru.forward(params, x, h0, method="log", negative_eigenvalues=True)


def test_golden_values_worked_by_hand():
    """D = H = 1, W_z = 0, b_z = log 3 → z = 3/4; W_h = 1, b_h = 0 → h̃ = x;
    x = 1, 2, 3, 4 (linspace), h0 = 0:
      h = 3/4 x + 1/4 h:   0.75, 1.6875, 2.671875, 3.66796875
      negative, a = −1/2:  0.75, 1.125,  1.6875,   2.15625"""
    params = {"W_z": np.zeros((1, 1)), "b_z": np.array([math.log(3.0)]),
              "W_h": np.ones((1, 1)), "b_h": np.zeros(1)}
    x = np.linspace(1.0, 4.0, 4).reshape(1, 4, 1)
    expected = {False: [0.75, 1.6875, 2.671875, 3.66796875], True: [0.75, 1.125, 1.6875, 2.15625]}
    for method, neg in CASES:
        y, _, _ = mingru.forward(params, x, method=method, chunk_size=3, negative_eigenvalues=neg)
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


@pytest.mark.parametrize("change, match", [
    (lambda p, x, h: (p, x[0], h), r"x: expected a 3-d array, got shape \(7, 3\)"),
    (lambda p, x, h: (p, x[..., :2], h), r"x: expected shape .*D=3"),
    (lambda p, x, h: (p, x, h[:, :3]), r"state0: expected shape \(B=2, H=4\), got \(2, 3\)"),
    (lambda p, x, h: ({k: v for k, v in p.items() if k != "b_h"}, x, h), r"missing \['b_h'\]"),
    (lambda p, x, h: (p, x.astype(np.float32), h), "mixed precisions"),
    (lambda p, x, h: (p, x.astype(np.int64), h), "expected dtype"),
    (lambda p, x, h: (p, x.astype(np.complex128), h), "expected dtype"),
    (lambda p, x, h: (p, x[:, :0], h), "T >= 1"),
])
def test_bad_input_is_refused_with_a_clear_message(change, match, rng):
    params, x, h0 = make(rng)
    with pytest.raises((ValueError, TypeError), match=match):
        mingru.forward(*change(params, x, h0))


def test_bad_method_backend_and_gradient_shape(rng):
    params, x, h0 = make(rng)
    with pytest.raises(ValueError, match="method"):
        mingru.forward(params, x, h0, method="fft")
    with pytest.raises(ValueError, match="backend"):
        mingru.forward(params, x, h0, backend="cupy")
    _, _, cache = mingru.forward(params, x, h0)
    with pytest.raises(ValueError, match=r"dh: expected shape \(2, 7, 4\)"):
        mingru.backward(params, cache, np.zeros((2, 6, 4)))


def test_registry_negative_entry_runs_every_method_but_log():
    from minirec import registry
    entry = registry.get("mingru_neg")
    assert entry.forward_kwargs == {"negative_eigenvalues": True}
    assert entry.methods == tuple(m for m in mingru.METHODS if m != "log")
    assert registry.get("mingru").methods == mingru.METHODS
