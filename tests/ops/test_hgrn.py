"""ops.hgrn: the loop it is, g = 0, negative eigenvalues, saturated gates in the
log method, golden values; the lower-bounded forget gate and its backward.
Agreement of every method and backend, gradient checks, split-resume and bad
input are tests/test_contract.py's."""

import math

import numpy as np
import pytest

from minirec import gradcheck, registry
from minirec.ops import hgrn
from tests.conftest import TOL, assert_close

CASES = [(m, neg) for neg in (False, True) for m in hgrn.METHODS if not (neg and m == "log")]


def inputs(dtype=np.float64, **dims):
    """The registry's example: g ~ −U(0, 1.5), exactly 0 at the first step."""
    d = registry.get("hgrn").make_inputs(np.random.default_rng(0), dtype, "small", **dims)
    return d["x"], d["g"], d["initial_state"]


def run(x, g, h0, dh, dstate, **kw):
    h, h_T, cache = hgrn.forward(x, g, initial_state=h0, **kw)
    return h, h_T, hgrn.backward(cache, dh, dstate)


def test_definition_is_the_loop():
    x, g, h0 = inputs(T=9)
    for neg in (False, True):
        h, h_T, _ = hgrn.forward(x, g, initial_state=h0, negative_eigenvalues=neg)
        state = h0
        for t in range(9):
            a = 2 * np.exp(g[:, t]) - 1 if neg else np.exp(g[:, t])
            state = a * state + x[:, t]
            np.testing.assert_allclose(h[:, t], state, rtol=1e-14)
        np.testing.assert_allclose(h_T, state, rtol=1e-14)


@pytest.mark.parametrize("method, neg", CASES)
def test_gates_exactly_zero_give_a_cumulative_sum(method, neg):
    """g = 0: a = 1 (also with negative eigenvalues, 2e^0 − 1 = 1): h = h0 + cumsum(x),
    and every gradient of x and h0 is the reverse cumulative sum of dh."""
    x, _, h0 = inputs(T=17)
    g = np.zeros_like(x)
    dh = np.random.default_rng(1).standard_normal(x.shape)
    h, h_T, grads = run(x, g, h0, dh, None, method=method, chunk_size=5,
                        negative_eigenvalues=neg)
    assert_close(h, h0[:, None] + np.cumsum(x, axis=1), 1e-12, "h")
    rev = np.flip(np.cumsum(np.flip(dh, 1), axis=1), 1)
    assert_close(grads["x"], rev, 1e-12, "dx")
    assert_close(grads["initial_state"], rev[:, 0], 1e-12, "dh0")
    assert np.all(np.isfinite(grads["g"]))


def test_negative_eigenvalues_flip_the_state():
    """g → −∞: a = 2·0 − 1 = −1, h_t = x_t − h_{t−1}; the multiplier covers [−1, 1]."""
    x, _, h0 = inputs(T=5)
    g = np.full_like(x, -np.inf)
    h, _, _ = hgrn.forward(x, g, initial_state=h0, negative_eigenvalues=True)
    state = h0
    for t in range(5):
        state = x[:, t] - state
        np.testing.assert_allclose(h[:, t], state, rtol=1e-14)
    g = np.log(np.linspace(1e-6, 1.0, 11)).reshape(1, 11, 1)
    _, _, cache = hgrn.forward(np.zeros_like(g), g, negative_eigenvalues=True)
    a = cache.scan.a
    assert a.min() >= -1 and a.max() <= 1 and a.min() < -0.99 and a.max() == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log_method_runs_saturated_gates(dtype):
    """Issue 7, defect 3: hgrn.forward(x, full(x.shape, −120, float32), method="log")
    said "needs a > 0 … got min(a) = 0.0": exp(−120) underflows in float32, and the
    log method took log(exp(g)). It now hands g itself to the log-space scan."""
    x, _, h0 = inputs(dtype, T=5)
    g = np.full(x.shape, -120, dtype)
    dh = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    h, h_T, grads = run(x, g, h0, dh, None, method="log")
    ref = run(x, g, h0, dh, None)
    tol = TOL[np.dtype(dtype)]  # float64 1e-10, float32 1e-4 relative RMS
    assert_close(h, ref[0], tol, "h")      # a ≈ 0: h_t = x_t
    assert_close(h, x, tol, "h = x")
    for k in grads:
        assert np.all(np.isfinite(grads[k])), k
        assert_close(grads[k], ref[2][k], tol, f"d{k}")


def test_log_method_refuses_negative_eigenvalues_and_infinite_gates():
    x, g, h0 = inputs()
    with pytest.raises(ValueError, match=r"method: 'log' needs a > 0.*negative_eigenvalues"
                                         r".*expected.*got 'log'"):
        hgrn.forward(x, g, initial_state=h0, method="log", negative_eigenvalues=True)
    g[0, 3, 1] = -np.inf  # a = 0: no logarithm
    with pytest.raises(ValueError, match=r"g: method='log' expected g > -inf .*got -inf at "
                                         r"index \(0, 3, 1\)"):
        hgrn.forward(x, g, initial_state=h0, method="log")


def test_golden_values_worked_by_hand():
    """g = log(1/2), x = 1, 2, 3, 4 (linspace), h0 = 2:
      h = h/2 + x:                 2, 3, 4.5, 6.25
      negative, a = 2·1/2 − 1 = 0: h = x = 1, 2, 3, 4"""
    x = np.linspace(1.0, 4.0, 4).reshape(1, 4, 1)
    g = np.full_like(x, math.log(0.5))
    expected = {False: [2.0, 3.0, 4.5, 6.25], True: [1.0, 2.0, 3.0, 4.0]}
    for method, neg in CASES:
        h, _, _ = hgrn.forward(x, g, initial_state=np.full((1, 1), 2.0), method=method,
                               chunk_size=3, negative_eigenvalues=neg)
        np.testing.assert_allclose(h.ravel(), expected[neg], rtol=1e-14, atol=1e-15,
                                   err_msg=method)


# ---------------------------------------------------------------------------
# lower-bounded forget gate
# ---------------------------------------------------------------------------

def test_lower_bounded_gate_is_log_of_the_bounded_sigmoid(rng):
    u = 3 * rng.standard_normal((2, 5, 4))
    gamma = np.array([0.0, 0.2, 0.5, 0.95])
    g = hgrn.lower_bounded_gate(u, gamma)
    expected = np.log(gamma + (1 - gamma) / (1 + np.exp(-u)))
    np.testing.assert_allclose(g, expected, rtol=1e-13, atol=1e-15)  # naive log(≈1) rounds
    assert np.all(g <= 0) and np.all(g >= np.log(np.maximum(gamma, 1e-300)))


def test_lower_bounded_gate_saturates_at_its_bounds():
    """u → −∞: f → γ (g → log γ, or → u for γ = 0); u → +∞: f → 1 (g → 0)."""
    u = np.array([-1000.0, 1000.0])
    np.testing.assert_allclose(hgrn.lower_bounded_gate(u, 0.25), [math.log(0.25), 0.0],
                               rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(hgrn.lower_bounded_gate(u, 0.0), [-1000.0, 0.0])


def _numerical(fn, x, eps=1e-6):
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = eps
        grad.flat[i] = (fn(x + e) - fn(x - e)) / (2 * eps)
    return grad


@pytest.mark.parametrize("gamma", [0.0, 0.3, np.array([0.0, 0.4, 0.9]),
                                   np.array([[0.1, 0.4, 0.9]])])
def test_lower_bounded_gate_backward_matches_finite_differences(gamma, rng):
    u = 2 * rng.standard_normal((2, 4, 3))
    dg = rng.standard_normal(u.shape)
    du, dgamma = hgrn.lower_bounded_gate_backward(u, gamma, dg)
    L = lambda uu, gg: float(np.sum(dg * hgrn.lower_bounded_gate(uu, gg)))
    num_u = _numerical(lambda uu: L(uu, gamma), u)
    assert gradcheck.rel_error(num_u, du) < 1e-6  # float64 threshold
    assert dgamma.shape == np.shape(gamma)
    if np.min(gamma) > 0:  # central differences need γ − ε ≥ 0
        num_g = _numerical(lambda gg: L(u, gg), gamma)
        assert gradcheck.rel_error(num_g, dgamma) < 1e-6


def test_lower_bounded_gate_backward_is_finite_in_the_tails():
    du, _ = hgrn.lower_bounded_gate_backward(np.array([-1000.0, 0.0, 1000.0]), 0.0, np.ones(3))
    np.testing.assert_allclose(du, [1.0, 0.5, 0.0], atol=1e-300)  # d log σ(u)/du = 1 − σ(u)


def test_lower_bounded_gate_feeds_hgrn_and_gradients_compose(rng):
    """g = lower_bounded_gate(u, γ) → hgrn: the chain of the two backwards matches
    central differences in u."""
    u = rng.standard_normal((2, 5, 3))
    x, _, h0 = inputs(T=5)
    gamma = np.array([0.0, 0.5, 0.9])
    dh = rng.standard_normal(x.shape)

    def loss(uu):
        h, _, _ = hgrn.forward(x, hgrn.lower_bounded_gate(uu, gamma), initial_state=h0)
        return float(np.sum(dh * h))

    _, _, cache = hgrn.forward(x, hgrn.lower_bounded_gate(u, gamma), initial_state=h0,
                               method="blelloch")
    dg = hgrn.backward(cache, dh)["g"]
    du, _ = hgrn.lower_bounded_gate_backward(u, gamma, dg)
    assert gradcheck.rel_error(_numerical(loss, u), du) < 1e-6


@pytest.mark.parametrize("gamma, match", [
    (1.0, r"lower_bound: expected values in \[0, 1\), got min 1.0"),
    (np.array([-0.1, 0.5, 0.5]), r"expected values in \[0, 1\)"),
    (np.array([0.1, 0.2]), r"lower_bound: expected a shape that broadcasts .*\(2,\)"),
    (np.array([0.1, 0.2, 0.3], np.float32), "mixed precisions"),
])
def test_lower_bounded_gate_refuses_bad_bounds(gamma, match):
    with pytest.raises((ValueError, TypeError), match=match):
        hgrn.lower_bounded_gate(np.zeros((2, 4, 3)), gamma)
