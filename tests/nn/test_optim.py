"""nn.optim (Adam, clipping) and nn.train.fit."""

import math

import numpy as np
import pytest

from minirec.nn import linear, loss, optim, train


def test_adam_matches_a_hand_written_update_on_two_parameters():
    """Two scalar parameters, three steps, Kingma & Ba's algorithm written out."""
    params = {"u": np.array(1.0), "w": np.array(-2.0)}
    grads_seq = [{"u": np.array(0.5), "w": np.array(-1.0)},
                 {"u": np.array(-0.25), "w": np.array(2.0)},
                 {"u": np.array(1.0), "w": np.array(0.0)}]
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    ref = {"u": 1.0, "w": -2.0}
    m = {"u": 0.0, "w": 0.0}
    v = {"u": 0.0, "w": 0.0}
    state = optim.adam_init(params)
    for t, grads in enumerate(grads_seq, start=1):
        for k in ref:
            g = float(grads[k])
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat = m[k] / (1 - b1 ** t)
            v_hat = v[k] / (1 - b2 ** t)
            ref[k] -= lr * m_hat / (math.sqrt(v_hat) + eps)
        params, state = optim.adam_update(params, grads, state, lr=lr, b1=b1, b2=b2, eps=eps)
        assert state["step"] == t
        for k in ref:
            assert float(params[k]) == pytest.approx(ref[k], rel=1e-14, abs=1e-15), (t, k)
    # first step moves every parameter with a nonzero gradient by exactly lr
    p1, _ = optim.adam_update({"a": np.array([3.0])}, {"a": np.array([-7.0])},
                              optim.adam_init({"a": np.array([3.0])}), lr=0.01)
    np.testing.assert_allclose(p1["a"], [3.01], rtol=1e-9)


def test_adam_is_pure_and_keeps_dtype(rng):
    params = {"W": rng.standard_normal((3, 2)).astype(np.float32),
              "nested": {"b": np.zeros(2, np.float32)}}
    grads = {"W": np.ones((3, 2), np.float32), "nested": {"b": np.ones(2, np.float32)}}
    state = optim.adam_init(params)
    before = params["W"].copy()
    for x in (params["W"], grads["W"], state["m"]["W"]):
        x.flags.writeable = False
    new, new_state = optim.adam_update(params, grads, state)
    np.testing.assert_array_equal(params["W"], before)
    assert state["step"] == 0 and new_state["step"] == 1
    assert new["W"].dtype == np.float32 and new["nested"]["b"].dtype == np.float32
    assert new_state["m"]["W"].dtype == np.float32
    assert not np.allclose(new["W"], before)


def test_adam_refuses_mismatched_grads(rng):
    params = {"W": np.zeros((2, 2)), "b": np.zeros(2)}
    state = optim.adam_init(params)
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \['x'\]"):
        optim.adam_update(params, {"W": np.zeros((2, 2)), "x": np.zeros(2)}, state)
    with pytest.raises(ValueError, match=r"expected shape \(2,\)"):
        optim.adam_update(params, {"W": np.zeros((2, 2)), "b": np.zeros(3)}, state)


def test_clip_by_global_norm_scales_to_max_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": {"c": np.array([[4.0]])}}  # norm 5
    clipped, n = optim.clip_by_global_norm(grads, 1.0)
    assert n == pytest.approx(5.0, rel=1e-15)
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0], rtol=1e-15)
    np.testing.assert_allclose(clipped["b"]["c"], [[0.8]], rtol=1e-15)
    assert optim.global_norm(clipped) == pytest.approx(1.0, rel=1e-15)
    np.testing.assert_array_equal(grads["a"], [3.0, 0.0])  # not modified


def test_clip_leaves_small_gradients_alone():
    grads = {"a": np.array([0.3, 0.4])}
    clipped, n = optim.clip_by_global_norm(grads, 1.0)
    assert n == pytest.approx(0.5, rel=1e-15)
    np.testing.assert_array_equal(clipped["a"], grads["a"])
    assert clipped["a"] is not grads["a"]


def test_clip_refuses_nonpositive_max_norm():
    with pytest.raises(ValueError, match="max_norm: expected a positive number, got 0"):
        optim.clip_by_global_norm({"a": np.ones(2)}, 0)


def regression(seed=0, n=64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    w_true = np.array([1.0, -2.0, 0.5])
    return X, X @ w_true + 0.3, w_true


def linreg_loss_and_grads(X, Y):
    def loss_and_grads(params, step):
        y, cache = linear.forward(params, X)
        value, dy = loss.mse(y[:, 0], Y)
        _, grads = linear.backward(params, cache, dy[:, None])
        return value, grads
    return loss_and_grads


def test_fit_decreases_the_loss_of_a_tiny_linear_regression():
    X, Y, w_true = regression()
    params = linear.init(0, 3, 1)
    trained, history = train.fit(linreg_loss_and_grads(X, Y), params, 200, lr=0.05,
                                 progress=False)
    assert len(history["loss"]) == len(history["grad_norm"]) == 200
    assert history["loss"][-1] < 1e-3 * history["loss"][0]
    np.testing.assert_allclose(trained["W"][0], w_true, atol=1e-2)
    np.testing.assert_allclose(trained["b"], [0.3], atol=1e-2)
    assert not np.allclose(params["W"][0], w_true, atol=1e-2)  # the input is untouched


def test_fit_with_clip_schedule_and_rng():
    X, Y, _ = regression()
    seen = []

    def loss_and_grads(params, step, rng):
        rows = rng.integers(0, len(X), 16)  # a minibatch drawn from the shared generator
        seen.append(rows)
        return linreg_loss_and_grads(X[rows], Y[rows])(params, step)

    _, h1 = train.fit(loss_and_grads, linear.init(0, 3, 1), 50, lr=lambda s: 0.05 / (1 + s),
                      clip=0.5, rng=3, progress=False)
    first = [r.copy() for r in seen]
    seen.clear()
    _, h2 = train.fit(loss_and_grads, linear.init(0, 3, 1), 50, lr=lambda s: 0.05 / (1 + s),
                      clip=0.5, rng=3, progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(first, seen))  # one seed, same batches
    assert h1["loss"] == h2["loss"]
    assert h1["lr"][0] == 0.05 and h1["lr"][9] == pytest.approx(0.005)
    assert max(h1["grad_norm"]) > 0.5  # clipping had something to do


def test_fit_stops_on_a_nonfinite_loss():
    def loss_and_grads(params, step):
        return (np.nan if step == 3 else 1.0), {"w": np.ones(1)}
    with pytest.raises(FloatingPointError, match="step 3"):
        train.fit(loss_and_grads, {"w": np.zeros(1)}, 10, progress=False)


def test_param_grads_takes_the_parameter_keys_out_of_a_cell_backward():
    from minirec.cells import rnn
    from minirec.nn import param_grads

    rng = np.random.default_rng(0)
    params = rnn.init_params(rng, 3, 4)
    y, _, cache = rnn.forward(params, rng.standard_normal((2, 5, 3)))
    grads = rnn.backward(params, cache, np.ones_like(y))
    g = param_grads(grads, params)
    assert set(g) == set(params) and "x" in grads and "state0" in grads
    assert all(g[k] is grads[k] for k in params)
    nested = param_grads({"cell": grads, "head": {"W": 1.0}}, {"cell": params, "head": {"W": 0}})
    assert set(nested["cell"]) == set(params)
    with pytest.raises(ValueError, match=r"expected a gradient for every parameter.*W_hh"):
        param_grads({k: v for k, v in grads.items() if k != "W_hh"}, params)
