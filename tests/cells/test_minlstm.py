"""cells.minlstm: every method equals the definition, forward and backward; the
normalised gates; the negative-eigenvalue option; streaming steps."""

import math

import numpy as np
import pytest

from minirec import bptt, gradcheck
from minirec.cells import minlstm
from tests.conftest import assert_close

# (method, negative_eigenvalues): log-space needs a > 0, so no log with a ∈ (−1, 1)
CASES = [(m, neg) for neg in (False, True) for m in minlstm.METHODS
         if not (neg and m == "log")]


def make(rng, B=2, T=7, D=3, H=4, dtype=np.float64):
    params = minlstm.init_params(rng, D, H, dtype=np.float64)
    params["b_f"] = rng.standard_normal(H)  # normalised gates spread over (0, 1)
    params = {k: v.astype(dtype) for k, v in params.items()}
    x = rng.standard_normal((B, T, D)).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    return params, x, h0


def run(params, x, h0, dy, dstate, **kw):
    y, h_T, cache = minlstm.forward(params, x, h0, **kw)
    return y, h_T, minlstm.backward(params, cache, dy, dstate)


def sigmoid(u):
    return 1 / (1 + np.exp(-u))


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
        report = gradcheck.check_cell(minlstm, params, x, state0, method=method, chunk_size=2,
                                      negative_eigenvalues=neg)
        assert report.passed, str(report)  # relative error < 1e-6, float64
        assert set(report.errors) == set(params) | {"x", "state0"}


@pytest.mark.parametrize("neg", [False, True])
def test_recurrent_is_the_scan_of_the_paper_equations(neg, rng):
    """f' = f/(f+i), i' = i/(f+i) written naively; a = f' (or 2f' − 1)."""
    params, x, h0 = make(rng)
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


@pytest.mark.parametrize("neg", [False, True])
def test_step_loop_equals_forward_and_backward(neg, rng):
    """Streaming: looping step_forward (and BPTT over step_backward) is forward/backward."""
    params, x, h0 = make(rng, T=9)
    dy, dstate = rng.standard_normal((2, 9, 4)), rng.standard_normal((2, 4))
    y, h_T, g = run(params, x, h0, dy, dstate, method="chunked", chunk_size=4,
                    negative_eigenvalues=neg)
    h = h0
    for t in range(9):
        h, _ = minlstm.step_forward(params, x[:, t], h, negative_eigenvalues=neg)
        assert_close(h, y[:, t], 1e-12, f"h_{t}")
    ys, hs, cache = bptt.sequence_forward(minlstm.step_forward, params, x, h0,
                                          negative_eigenvalues=neg)
    g_steps = bptt.sequence_backward(minlstm.step_backward, params, cache, dy, dstate)
    assert_close(ys, y, 1e-12, "y")
    assert_close(hs, h_T, 1e-12, "h_T")
    for k in g:
        assert_close(g_steps[k], g[k], 1e-12, f"d{k}")


@pytest.mark.parametrize("method, neg", CASES)
def test_split_resume_equals_one_call(method, neg, rng):
    params, x, h0 = make(rng, T=23)
    kw = dict(method=method, chunk_size=4, negative_eigenvalues=neg)
    y, h_T, _ = minlstm.forward(params, x, h0, **kw)
    y1, s1, _ = minlstm.forward(params, x[:, :10], h0, **kw)
    y2, s2, _ = minlstm.forward(params, x[:, 10:], s1, **kw)
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


def test_normalised_gates_sum_to_one_and_stay_finite_when_both_underflow(rng):
    """b_f = b_i = −1000: f = i = 0 in floating point, so f/(f+i) is 0/0 naively;
    the log-ratio form gives the limit f' = σ(k_f − k_i) (both tails ≈ e^k)."""
    params, x, h0 = make(rng)
    params["b_f"][:] = -1000.0
    params["b_i"][:] = -1000.0
    _, _, cache = minlstm.forward(params, x, h0)
    _, _, f_n, i_n, _ = cache["gates"]
    assert np.all(np.isfinite(f_n)) and np.all(np.isfinite(i_n))
    np.testing.assert_allclose(f_n + i_n, 1.0, rtol=1e-15)
    limit = sigmoid(x @ (params["W_f"] - params["W_i"]).T)  # the ±1000 biases cancel
    np.testing.assert_allclose(f_n, limit, rtol=1e-12)


@pytest.mark.parametrize("method", minlstm.METHODS)
def test_gates_exactly_closed_in_log_space(method, rng):
    """b_i = −1000 (input gate 0): f' = 1 and a = 1 exactly (log a = 0): the state is
    held exactly, every method (log-space included) agrees, the gradients are finite."""
    params, x, h0 = make(rng, T=11)
    params["b_i"][:2] = -1000.0
    dy, dstate = rng.standard_normal((2, 11, 4)), rng.standard_normal((2, 4))
    y, h_T, g = run(params, x, h0, dy, dstate, method=method, chunk_size=4)
    ref = run(params, x, h0, dy, dstate)
    np.testing.assert_allclose(y[:, :, :2], np.broadcast_to(h0[:, None, :2], (2, 11, 2)),
                               rtol=1e-14)
    assert_close(y, ref[0], 1e-10, "y")
    for k in g:
        assert np.all(np.isfinite(g[k])), k
        assert_close(g[k], ref[2][k], 1e-10, f"d{k}")


def test_negative_eigenvalues_multiplier_spans_minus_one_to_one(rng):
    """a = f' − i' = 2f' − 1 ∈ [−1, 1]; with the forget gate shut it is exactly −1."""
    params, x, h0 = make(rng, T=200)
    params["b_f"] = np.array([-4.0, -2.0, 2.0, 4.0])
    _, _, cache = minlstm.forward(params, x, h0, negative_eigenvalues=True)
    _, _, f_n, i_n, _ = cache["gates"]
    a = cache["scan"].a
    assert a.min() >= -1 and a.max() <= 1
    assert a.min() < -0.5 and a.max() > 0.5
    np.testing.assert_allclose(a, 2 * f_n - 1, rtol=0, atol=1e-15)
    params["b_f"][:] = -1000.0
    params["b_i"][:] = 1000.0
    y, _, _ = minlstm.forward(params, x[:, :5], h0, negative_eigenvalues=True)
    h_tilde = x[:, :5] @ params["W_h"].T + params["b_h"]
    h = h0
    for t in range(5):
        h = h_tilde[:, t] - h
        np.testing.assert_allclose(y[:, t], h, rtol=1e-14)


def test_log_method_refuses_negative_eigenvalues(rng):
    params, x, h0 = make(rng)
    with pytest.raises(ValueError, match=r"method='log' needs a > 0.*negative_eigenvalues"):
        minlstm.forward(params, x, h0, method="log", negative_eigenvalues=True)


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
    for method, neg in CASES:
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


@pytest.mark.parametrize("change, match", [
    (lambda p, x, h: (p, x[0], h), r"x: expected a 3-d array, got shape \(7, 3\)"),
    (lambda p, x, h: (p, x[..., :2], h), r"x: expected shape .*D=3"),
    (lambda p, x, h: (p, x, h[:, :3]), r"state0: expected shape \(B=2, H=4\), got \(2, 3\)"),
    (lambda p, x, h: ({**p, "W_i": p["W_i"][:3]}, x, h), r"W_i: expected shape .*H=3"),
    (lambda p, x, h: ({k: v for k, v in p.items() if k != "b_f"}, x, h), r"missing \['b_f'\]"),
    (lambda p, x, h: (p, x.astype(np.float32), h), "mixed precisions"),
    (lambda p, x, h: (p, x.astype(np.int64), h), "expected dtype"),
])
def test_bad_input_is_refused_with_a_clear_message(change, match, rng):
    params, x, h0 = make(rng)
    with pytest.raises((ValueError, TypeError), match=match):
        minlstm.forward(*change(params, x, h0))


def test_bad_method_backend_and_gradient_shape(rng):
    params, x, h0 = make(rng)
    with pytest.raises(ValueError, match="method"):
        minlstm.forward(params, x, h0, method="fft")
    with pytest.raises(ValueError, match="backend"):
        minlstm.forward(params, x, h0, backend="cupy")
    _, _, cache = minlstm.forward(params, x, h0)
    with pytest.raises(ValueError, match=r"dh_T: expected shape \(2, 4\)"):
        minlstm.backward(params, cache, None, np.zeros((2, 5)))
