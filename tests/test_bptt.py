"""bptt: a user's step pair becomes a sequence cell that gradcheck accepts."""

import numpy as np
import pytest

from minirec import bptt, gradcheck, registry
from minirec.cells import gru, lstm, rnn


def test_make_cell_equals_the_module_and_passes_gradcheck(rng):
    params = gru.init_params(rng, 3, 4)
    x = rng.standard_normal((2, 6, 3))
    h0 = rng.standard_normal((2, 4))
    cell = bptt.make_cell(gru.step_forward, gru.step_backward, gru.zero_state, name="gru")
    y, h, _ = cell.forward(params, x, h0)
    y_ref, h_ref, _ = gru.forward(params, x, h0)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(h, h_ref)
    report = gradcheck.check_cell(cell, params, x, h0)
    assert report.passed, str(report)  # relative error < 1e-6, float64


def test_state0_none_needs_zero_state(rng):
    params = rnn.init_params(rng, 3, 4)
    cell = bptt.make_cell(rnn.step_forward, rnn.step_backward)
    with pytest.raises(ValueError, match="zero_state"):
        cell.forward(params, rng.standard_normal((2, 5, 3)))


def test_wrong_final_state_gradient_shape_is_refused(rng):
    params = rnn.init_params(rng, 3, 4)
    cell = bptt.make_cell(rnn.step_forward, rnn.step_backward, rnn.zero_state)
    y, h, cache = cell.forward(params, rng.standard_normal((2, 5, 3)))
    with pytest.raises(ValueError, match=r"dstate: expected shape \(2, 4\)"):
        cell.backward(params, cache, np.zeros_like(y), np.zeros((2, 3)))


@pytest.mark.parametrize("name", ["lru", "ssm", "mamba", "aaren"])
def test_separate_output_step_pairs(name):
    """Cells whose output is a read-out of the state: their step pairs, looped by
    bptt, equal the module's forward and pass gradcheck."""
    entry = registry.get(name)
    mod = entry.module
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, "small")
    cell = bptt.make_cell(mod.step_forward, mod.step_backward, name=name, separate_output=True)
    y, _, _ = cell.forward(inputs["params"], inputs["x"], inputs["state0"])
    y_ref, _, _ = mod.forward(inputs["params"], inputs["x"], inputs["state0"])
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-13)
    report = gradcheck.check_cell(cell, inputs["params"], inputs["x"], inputs["state0"])
    assert report.passed, str(report)


# --- issue 7, defect 14: a step pair with a mistake fails where the mistake is ---

def make_rnn():
    rng = np.random.default_rng(0)
    params = rnn.init_params(rng, 3, 4)
    x = rng.standard_normal((2, 5, 3))
    h0 = rng.standard_normal((2, 4))
    return params, x, h0


def backward_with(change):
    """rnn's step_backward with its result changed by ``change(dx, dh, dparams)``."""
    def step_backward(dh_next, cache_t):
        return change(*rnn.step_backward(dh_next, cache_t))
    return step_backward


def run_backward(step_backward, params, x, h0):
    cell = bptt.make_cell(rnn.step_forward, step_backward)
    y, _, cache = cell.forward(params, x, h0)
    return cell.backward(params, cache, np.ones_like(y))


def test_step_forward_returning_only_the_state_is_named():
    params, x, h0 = make_rnn()
    cell = bptt.make_cell(lambda p, x_t, h: rnn.step_forward(p, x_t, h)[0], rnn.step_backward)
    with pytest.raises(TypeError, match=r"step_forward: expected it to return "
                                        r"\(state_next, cache_t\), got an array of shape "
                                        r"\(2, 4\) at t=0; did it return only the state\?"):
        cell.forward(params, x, h0)


def test_step_forward_returning_only_a_tuple_state_is_named():
    params = lstm.init_params(np.random.default_rng(0), 3, 4)
    x = np.random.default_rng(1).standard_normal((2, 5, 3))
    state0 = (np.zeros((2, 4)), np.zeros((2, 4)))
    cell = bptt.make_cell(lambda p, x_t, s: lstm.step_forward(p, x_t, s)[0], lstm.step_backward)
    with pytest.raises(TypeError, match=r"step_forward: expected it to return "
                                        r"\(state_next, cache_t\) with state_next like the "
                                        r"state it was given \(a tuple of 2 arrays \(2, 4\), "
                                        r"\(2, 4\)\), got state_next = an array of shape"):
        cell.forward(params, x, state0)


def test_separate_output_step_forward_must_return_three_values():
    params, x, h0 = make_rnn()
    cell = bptt.make_cell(rnn.step_forward, rnn.step_backward, separate_output=True)
    with pytest.raises(TypeError, match=r"step_forward: expected it to return "
                                        r"\(y_t, state_next, cache_t\), got a tuple of 2 values"):
        cell.forward(params, x, h0)


def test_step_forward_changing_the_state_shape_is_refused():
    params, x, h0 = make_rnn()

    def step_forward(p, x_t, h):
        h_next, cache_t = rnn.step_forward(p, x_t, h)
        return h_next[:, :3], cache_t

    cell = bptt.make_cell(step_forward, rnn.step_backward)
    with pytest.raises(ValueError, match=r"step_forward's state_next \(t=0\): expected shape "
                                         r"\(2, 4\) \(the shape of state\), got \(2, 3\)"):
        cell.forward(params, x, h0)


def test_step_backward_returning_two_values_is_named():
    params, x, h0 = make_rnn()
    with pytest.raises(TypeError, match=r"step_backward: expected it to return "
                                        r"\(dx_t, dstate_prev, dparams\), got a tuple of 2 "
                                        r"values at t=4"):
        run_backward(backward_with(lambda dx, dh, dp: (dx, dh)), params, x, h0)


def test_a_missing_or_unexpected_parameter_gradient_is_refused():
    params, x, h0 = make_rnn()

    def drop_b_hh(dx, dh, dp):
        dp = {k: v for k, v in dp.items() if k != "b_hh"}
        dp["bias"] = np.zeros(4)
        return dx, dh, dp

    with pytest.raises(ValueError, match=r"dparams \(t=4\): expected the keys of params "
                                         r"\['W_ih', 'W_hh', 'b_ih', 'b_hh'\], got .*"
                                         r"\(missing \['b_hh'\], unexpected \['bias'\]\)"):
        run_backward(backward_with(drop_b_hh), params, x, h0)


def test_a_parameter_gradient_of_the_wrong_shape_is_not_broadcast():
    params, x, h0 = make_rnn()

    def row_sums(dx, dh, dp):
        return dx, dh, {**dp, "W_hh": dp["W_hh"].sum(axis=1)}  # (H,) for an (H, H) parameter

    with pytest.raises(ValueError, match=r"step_backward's dparams\['W_hh'\] \(t=4\): expected "
                                         r"shape \(4, 4\) \(the shape of params\['W_hh'\]\), "
                                         r"got \(4,\)"):
        run_backward(backward_with(row_sums), params, x, h0)


def test_dx_t_and_dstate_prev_of_the_wrong_shape_are_refused():
    params, x, h0 = make_rnn()
    with pytest.raises(ValueError, match=r"step_backward's dx_t \(t=4\): expected shape "
                                         r"\(2, 3\)"):
        run_backward(backward_with(lambda dx, dh, dp: (dx[:, :2], dh, dp)), params, x, h0)
    with pytest.raises(ValueError, match=r"step_backward's dstate_prev \(t=4\): expected shape "
                                         r"\(2, 4\) \(the shape of state\), got \(1, 4\)"):
        run_backward(backward_with(lambda dx, dh, dp: (dx, dh[:1], dp)), params, x, h0)
    with pytest.raises(TypeError, match=r"step_backward's dstate_prev \(t=4\): expected an "
                                        r"array \(2, 4\) like the state, got a tuple of 2"):
        run_backward(backward_with(lambda dx, dh, dp: (dx, (dh, dh), dp)), params, x, h0)


def test_the_cache_is_a_sequence_cache():
    params, x, h0 = make_rnn()
    y, h, cache = bptt.sequence_forward(rnn.step_forward, params, x, h0)
    assert isinstance(cache, bptt.SequenceCache)
    assert len(cache.steps) == 5 and cache.state0 is h0
    assert cache.param_shapes == {k: v.shape for k, v in params.items()}


def test_sequence_backward_refuses_another_cache():
    params, x, h0 = make_rnn()
    y, _, cache = bptt.sequence_forward(rnn.step_forward, params, x, h0)
    as_dict = {"steps": cache.steps, "state0": cache.state0, "y_like": cache.y_like}
    with pytest.raises(TypeError, match=r"cache: expected the cache returned by "
                                        r"sequence_forward, got dict"):
        bptt.sequence_backward(rnn.step_backward, params, as_dict, np.ones_like(y))
    with pytest.raises(ValueError, match=r"cache: expected a cache of sequence_forward\("
                                         r"separate_output=True\)"):
        bptt.sequence_backward(rnn.step_backward, params, cache, np.ones_like(y),
                               separate_output=True)


def test_a_none_entry_of_a_tuple_dstate_is_zeros():
    rng = np.random.default_rng(0)
    params = lstm.init_params(rng, 3, 4)
    x = rng.standard_normal((2, 5, 3))
    cell = bptt.make_cell(lstm.step_forward, lstm.step_backward, lstm.zero_state)
    y, (h, c), cache = cell.forward(params, x)
    dh = rng.standard_normal(h.shape)
    with_none = cell.backward(params, cache, None, dstate=(dh, None))
    with_zeros = cell.backward(params, cache, None, dstate=(dh, np.zeros_like(c)))
    for k in with_zeros:
        np.testing.assert_array_equal(np.asarray(with_none[k]), np.asarray(with_zeros[k]))
    with pytest.raises(TypeError, match=r"dstate: expected a tuple of 2 arrays \(\(2, 4\), "
                                        r"\(2, 4\), the state's structure\), got ndarray"):
        cell.backward(params, cache, None, dstate=dh)


def test_separate_output_dy_of_the_wrong_shape_is_refused():
    entry = registry.get("lru")
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, "small")
    mod = entry.module
    cell = bptt.make_cell(mod.step_forward, mod.step_backward, separate_output=True)
    y, _, cache = cell.forward(inputs["params"], inputs["x"], inputs["state0"])
    bad = np.zeros((y.shape[0], y.shape[1] + 1) + y.shape[2:])
    with pytest.raises(ValueError, match=rf"dy: expected shape \({y.shape[0]}, {y.shape[1]}, "
                                         rf"{y.shape[2]}\) \(the shape of y\)"):
        cell.backward(inputs["params"], cache, bad)


def test_a_mistake_after_the_first_step_is_still_named_with_its_step():
    params, x, h0 = make_rnn()
    forward_calls = []

    def step_forward(p, x_t, h):
        forward_calls.append(None)
        h_next, cache_t = rnn.step_forward(p, x_t, h)
        return (h_next[:, :3] if len(forward_calls) == 4 else h_next), cache_t  # wrong at t=3

    cell = bptt.make_cell(step_forward, rnn.step_backward)
    with pytest.raises(ValueError, match=r"step_forward's state_next \(t=3\): expected shape "
                                         r"\(2, 4\)"):
        cell.forward(params, x, h0)

    backward_calls = []

    def step_backward(dh_next, cache_t):
        backward_calls.append(None)
        dx, dh, dp = rnn.step_backward(dh_next, cache_t)
        if len(backward_calls) == 4:  # t = 1: steps run T-1 = 4, 3, 2, 1, 0
            dp = {**dp, "b_ih": dp["b_ih"][:2]}
        return dx, dh, dp

    with pytest.raises(ValueError, match=r"step_backward's dparams\['b_ih'\] \(t=1\): expected "
                                         r"shape \(4,\)"):
        run_backward(step_backward, params, x, h0)


def test_backward_refuses_params_other_than_the_forwards():
    params, x, h0 = make_rnn()
    y, _, cache = rnn.forward(params, x, h0)
    other = rnn.init_params(np.random.default_rng(1), 3, 5)
    with pytest.raises(ValueError, match=r"params\['W_ih'\]: expected shape \(4, 3\) \(as in the "
                                         r"forward that made this cache\), got \(5, 3\)"):
        rnn.backward(other, cache, np.ones_like(y))
