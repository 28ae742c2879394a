"""bptt: a user's step pair becomes a sequence cell that gradcheck accepts."""

import numpy as np
import pytest

from minirec import bptt, gradcheck, registry
from minirec.cells import gru, rnn


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
    with pytest.raises(ValueError, match=r"dstate\[0\]: expected shape \(2, 4\)"):
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
