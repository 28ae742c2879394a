"""cells.minlstm: the paper's equations, the normalised gates, golden values.
minLSTM runs minGRU's write-gate scan (w = i'), so the streaming steps and the
shut, open, saturated and negative-eigenvalue gates are tested for both cells
in tests/cells/test_mingru.py; agreement, gradient checks, split-resume and
bad input are tests/test_contract.py's."""

import math

import numpy as np
import pytest

from minirec import registry
from minirec.cells import minlstm
from tests.conftest import assert_close


def inputs(**dims):
    d = registry.get("minlstm").make_inputs(np.random.default_rng(0), np.float64, "small",
                                            **dims)
    return d["params"], d["x"], d["state0"]


def sigmoid(u):
    return 1 / (1 + np.exp(-u))


@pytest.mark.parametrize("neg", [False, True])
def test_recurrent_is_the_scan_of_the_paper_equations(neg):
    """f' = f/(f+i), i' = i/(f+i) written naively; a = f' (or 2f' − 1)."""
    params, x, h0 = inputs(T=7)
    y, h_T, _ = minlstm.forward(params, x, h0, negative_eigenvalues=neg)
    h = h0
    for t in range(x.shape[1]):
        f = sigmoid(x[:, t] @ params["W_f"].T + params["b_f"])
        i = sigmoid(x[:, t] @ params["W_i"].T + params["b_i"])
        h_tilde = x[:, t] @ params["W_h"].T + params["b_h"]
        f_n, i_n = f / (f + i), i / (f + i)
        h = (2 * f_n - 1 if neg else f_n) * h + i_n * h_tilde
        assert_close(y[:, t], h, 1e-13, f"h_{t}")
    assert_close(h_T, h, 1e-13, "h_T")


def test_normalised_gates_sum_to_one_and_stay_finite_when_both_underflow():
    """b_f = b_i = −1000: f = i = 0 in floating point, so f/(f+i) is 0/0 naively;
    the log-ratio form gives the limit f' = σ(k_f − k_i) (both tails ≈ e^k)."""
    params, x, h0 = inputs(T=7)
    params["b_f"][:] = -1000.0
    params["b_i"][:] = -1000.0
    _, _, cache = minlstm.forward(params, x, h0)
    i_n, f_n = cache.core.w, cache.core.keep
    assert np.all(np.isfinite(f_n)) and np.all(np.isfinite(i_n))
    np.testing.assert_allclose(f_n + i_n, 1.0, rtol=1e-15)
    limit = sigmoid(x @ (params["W_f"] - params["W_i"]).T)  # the ±1000 biases cancel
    np.testing.assert_allclose(f_n, limit, rtol=1e-12)


def test_golden_values_worked_by_hand():
    """D = H = 1, W_f = W_i = 0, b_f = 0 → f = 1/2, b_i = log(1/3) → i = 1/4;
    f' = 2/3, i' = 1/3; W_h = 1, b_h = 0 → h̃ = x; x = 3, 6, 9 (linspace), h0 = 0:
      h = 2/3 h + 1/3 x:        1, 8/3, 43/9
      negative, a = 1/3:        1, 7/3, 34/9"""
    params = {"W_f": np.zeros((1, 1)), "b_f": np.zeros(1),
              "W_i": np.zeros((1, 1)), "b_i": np.array([math.log(1 / 3)]),
              "W_h": np.ones((1, 1)), "b_h": np.zeros(1)}
    x = np.linspace(3.0, 9.0, 3).reshape(1, 3, 1)
    expected = {False: [1, 8 / 3, 43 / 9], True: [1, 7 / 3, 34 / 9]}
    for neg in (False, True):
        for method in [m for m in minlstm.METHODS if not (neg and m == "log")]:
            y, _, _ = minlstm.forward(params, x, method=method, chunk_size=2,
                                      negative_eigenvalues=neg)
            np.testing.assert_allclose(y.ravel(), expected[neg], rtol=1e-14, err_msg=method)


def test_golden_values_from_a_scalar_loop():
    """linspace weights and inputs; expected numbers from a plain-Python loop with math.exp."""
    B, T, D, H = 1, 5, 2, 3
    lin = lambda lo, hi, shape: np.linspace(lo, hi, int(np.prod(shape))).reshape(shape)
    params = {"W_f": lin(-1, 1, (H, D)), "b_f": lin(0.5, 1.5, (H,)),
              "W_i": lin(1, -0.5, (H, D)), "b_i": lin(-0.5, 0.5, (H,)),
              "W_h": lin(0.5, -1.5, (H, D)), "b_h": lin(0.2, 0.4, (H,))}
    x = lin(-2, 2, (B, T, D))
    h0 = lin(1, -1, (1, H))
    sig = lambda u: 1 / (1 + math.exp(-u))
    dot = lambda W, j, t: sum(W[j, d] * x[0, t, d] for d in range(D))
    h = list(h0[0])
    expected = []
    for t in range(T):
        for j in range(H):
            f = sig(dot(params["W_f"], j, t) + params["b_f"][j])
            i = sig(dot(params["W_i"], j, t) + params["b_i"][j])
            ht = dot(params["W_h"], j, t) + params["b_h"][j]
            h[j] = f / (f + i) * h[j] + i / (f + i) * ht
        expected.append(list(h))
    for method in minlstm.METHODS:
        y, _, _ = minlstm.forward(params, x, h0, method=method, chunk_size=2)
        np.testing.assert_allclose(y[0], expected, rtol=1e-12, err_msg=method)


def test_init_params_shapes_and_dtype(rng):
    p = minlstm.init_params(rng, 3, 5, dtype=np.float32)
    assert {k: v.shape for k, v in p.items()} == {
        "W_f": (5, 3), "b_f": (5,), "W_i": (5, 3), "b_i": (5,), "W_h": (5, 3), "b_h": (5,)}
    assert all(v.dtype == np.float32 for v in p.values())
    assert all(np.abs(v).max() <= 1 / np.sqrt(3) for v in p.values())
