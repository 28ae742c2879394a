"""cells.rnn: golden values against an independent loop, and what only the RNN
has (the relu nonlinearity). Gradients, agreement of backends, split-resume,
dtypes and the bad-input tables are tests/test_contract.py's (entries "rnn" and
"rnn_relu"); the issue 7 reproducers are at the end."""

import math

import numpy as np
import pytest

from minirec import _backend, registry
from minirec.cells import rnn


def linspace_params(D, H):
    return {"W_ih": np.linspace(-0.6, 0.5, H * D).reshape(H, D),
            "W_hh": np.linspace(0.4, -0.7, H * H).reshape(H, H),
            "b_ih": np.linspace(-0.1, 0.2, H),
            "b_hh": np.linspace(0.3, -0.2, H)}


def make(rng, nonlinearity="tanh", dtype=np.float64, **dims):
    """The registry's example inputs ``(params, x, h0)``, (B, T, D, H) = (2, 5, 3, 4)."""
    name = "rnn" if nonlinearity == "tanh" else "rnn_relu"
    inputs = registry.get(name).make_inputs(rng, dtype, "small", **dims)
    return inputs["params"], inputs["x"], inputs["state0"]


needs_numba = pytest.mark.skipif(not _backend.available("numba"), reason="numba not installed")
BACKENDS = ["numpy", pytest.param("numba", marks=needs_numba)]


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


def test_init_params_follows_pytorch(rng):
    p = rnn.init_params(rng, 5, 16)
    assert {k: v.shape for k, v in p.items()} == {
        "W_ih": (16, 5), "W_hh": (16, 16), "b_ih": (16,), "b_hh": (16,)}
    bound = 1 / math.sqrt(16)
    for v in p.values():
        assert np.all(np.abs(v) <= bound) and np.max(np.abs(v)) > 0.8 * bound


def test_unknown_nonlinearity_is_refused(rng):
    params, x, h0 = make(rng)
    with pytest.raises(ValueError, match=r"nonlinearity: expected one of \('tanh', 'relu'\), "
                                         r"got 'sigmoid'"):
        rnn.forward(params, x, h0, nonlinearity="sigmoid")


# ---------------------------------------------------------------------------
# issue 7 reproducers (rng = default_rng(0), small shapes)
# ---------------------------------------------------------------------------

@needs_numba
def test_relu_numba_keeps_a_nan_as_numpy_does():
    """A NaN in x (or dy) disappeared in the numba relu kernel
    (numpy: 12 NaN outputs, numba: 0), since max(a, 0) drops a NaN."""
    params, x, h0 = make(np.random.default_rng(0), "relu")
    x = x.copy()
    x[0, 2, 0] = np.nan  # reaches every unit of batch row 0 from t = 2 on: 3 × 4 outputs
    ys = {b: rnn.forward(params, x, h0, nonlinearity="relu", backend=b) for b in ("numpy", "numba")}
    assert np.isnan(ys["numpy"][0]).sum() == 12
    np.testing.assert_array_equal(np.isnan(ys["numba"][0]), np.isnan(ys["numpy"][0]))
    # a NaN in dy: dh ⊙ [h > 0] stays NaN where h = 0 too, in both backends
    params, x, h0 = make(np.random.default_rng(0), "relu")
    dy = np.random.default_rng(1).standard_normal((2, 5, 4))
    dy[0, 2, 0] = np.nan
    grads = {}
    for b in ("numpy", "numba"):
        _, _, cache = rnn.forward(params, x, h0, nonlinearity="relu", backend=b)
        grads[b] = rnn.backward(params, cache, dy)
    assert np.isnan(grads["numpy"]["x"]).any()
    for k, v in grads["numpy"].items():
        np.testing.assert_array_equal(np.isnan(grads["numba"][k]), np.isnan(v), err_msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind, change, error, match", [
    ("int64", lambda y: y.astype(np.int64), TypeError, r"dy: expected dtype in .*got int64"),
    ("bool", lambda y: y > 0, TypeError, r"dy: expected dtype in .*got bool"),
    ("list", lambda y: y.tolist(), TypeError, r"dy: expected an ndarray, got list"),
])
def test_integer_bool_and_list_dy_are_refused(backend, kind, change, error, match):
    """Issue 7 #5 and #6: int64/bool/list dy were accepted (or raised an
    AttributeError for a list)."""
    params, x, h0 = make(np.random.default_rng(0))
    y, _, cache = rnn.forward(params, x, h0, backend=backend)
    with pytest.raises(error, match=match):
        rnn.backward(params, cache, change(y))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tuple_dstate_for_an_array_state_is_refused(backend):
    """Issue 7 #6: rnn.backward(p, c, y, (h, h)) ended in a broadcasting error."""
    params, x, h0 = make(np.random.default_rng(0))
    y, h, cache = rnn.forward(params, x, h0, backend=backend)
    with pytest.raises(TypeError, match=r"dstate: expected an array of shape \(2, 4\) \(the "
                                        r"state's\), got a tuple of length 2"):
        rnn.backward(params, cache, y, (h, h))


@pytest.mark.parametrize("backend", BACKENDS)
def test_params_that_do_not_match_the_cache_are_refused(backend):
    """Issue 7 #7: other params than the forward's ended in a matmul error."""
    params, x, h0 = make(np.random.default_rng(0))
    y, _, cache = rnn.forward(params, x, h0, backend=backend)
    other = rnn.init_params(np.random.default_rng(1), 6, 8)
    with pytest.raises(ValueError, match=r"rnn: params\['W_ih'\]: expected shape \(4, 3\) \(as "
                                         r"in the forward that made this cache\), got \(8, 6\)"):
        rnn.backward(other, cache, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk_size", [-1, 0, 2.5, "4", True], ids=repr)
def test_a_bad_chunk_size_is_refused_though_unused(backend, chunk_size):
    """Issue 7 #9: no RNN method uses chunk_size, and a bad one passed silently."""
    params, x, h0 = make(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"chunk_size: expected a positive integer, got "):
        rnn.forward(params, x, h0, chunk_size=chunk_size, backend=backend)
    rnn.forward(params, x, h0, chunk_size=4, backend=backend)  # a good one is accepted
