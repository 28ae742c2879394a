"""gradcheck refuses what it cannot check instead of reporting PASSED (issue 7)."""

import types

import numpy as np
import pytest

from minirec import bptt, gradcheck
from minirec.cells import rnn


class Square:
    """``out = a² ⊙ w`` (elementwise), stateless: the smallest op gradcheck accepts.

    ``zero_backward=True`` returns an all-zero gradient, wrong everywhere."""

    __name__ = "square"

    def __init__(self, zero_backward=False):
        self.zero_backward = zero_backward

    def forward(self, a, w=1.0):
        return a * a * w, None, (a, w)

    def backward(self, cache, d_out, d_state):
        a, w = cache
        if self.zero_backward:
            return {"a": np.zeros_like(a), "w": np.zeros_like(a)}
        return {"a": 2 * a * w * d_out, "w": a * a * d_out}


class Gather:
    """``out = a[idx]``: ``idx`` is an integer index, not differentiable."""

    __name__ = "gather"

    def forward(self, a, idx):
        return a[idx], None, (a.shape, idx)

    def backward(self, cache, d_out, d_state):
        shape, idx = cache
        da = np.zeros(shape)
        np.add.at(da, idx, d_out)
        return {"a": da}


def make_rnn():
    rng = np.random.default_rng(0)
    params = rnn.init_params(rng, 3, 4)
    x = rng.standard_normal((2, 5, 3))
    h0 = rng.standard_normal((2, 4))
    return params, x, h0


# --- defect 12: a cell without zero_state and state0=None ---------------------

def test_state0_none_for_a_cell_without_zero_state_is_refused_clearly():
    params, x, _ = make_rnn()
    cell = bptt.make_cell(rnn.step_forward, rnn.step_backward)
    with pytest.raises(ValueError, match=r"state0: expected an initial state, got None.*"
                                         r"because the cell has no zero_state"):
        gradcheck.check_cell(cell, params, x, None)


def test_state0_none_asks_zero_state_with_the_dtype():
    params, x, _ = make_rnn()

    def zero_state(params, batch_size, dtype):  # dtype required, as make_cell documents
        return np.zeros((batch_size, params["W_hh"].shape[0]), dtype)

    cell = bptt.make_cell(rnn.step_forward, rnn.step_backward, zero_state)
    report = gradcheck.check_cell(cell, params, x, None)
    assert report.passed, str(report)  # relative error < 1e-6, float64
    assert "state0" in report.errors


def test_state0_none_for_an_object_without_zero_state_runs_forward_with_none():
    params, x, _ = make_rnn()
    cell = types.SimpleNamespace(forward=rnn.forward, backward=rnn.backward)
    report = gradcheck.check_cell(cell, params, x, None)
    assert report.passed, str(report)  # relative error < 1e-6, float64
    assert "state0" in report.errors


# --- defect 13: options and inputs that made a check vacuous -------------------

def test_max_elements_zero_is_refused():
    a = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(ValueError, match=r"max_elements: expected a positive integer, got 0"):
        gradcheck.check_op(Square(zero_backward=True), {"a": a}, max_elements=0)


def test_one_element_is_enough_to_catch_a_zero_backward():
    a = np.random.default_rng(0).standard_normal((3, 4))
    bad = gradcheck.check_op(Square(zero_backward=True), {"a": a}, max_elements=1)
    assert not bad.passed, str(bad)
    good = gradcheck.check_op(Square(), {"a": a}, max_elements=1)
    assert good.passed, str(good)  # relative error < 1e-6, float64


@pytest.mark.parametrize("eps", [0, 0.0, -1e-6, np.nan, np.inf])
def test_eps_must_be_positive_and_finite(eps):
    a = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(ValueError, match=r"eps: expected a positive finite number, got"):
        gradcheck.check_op(Square(), {"a": a}, eps=eps)


@pytest.mark.parametrize("tol", [-1, 0, np.nan, np.inf])
def test_tol_must_be_positive_and_finite(tol):
    a = np.random.default_rng(0).standard_normal((3, 4))
    with pytest.raises(ValueError, match=r"tol: expected a positive finite number, got"):
        gradcheck.check_op(Square(), {"a": a}, tol=tol)


def test_cell_options_are_checked_too():
    params, x, h0 = make_rnn()
    with pytest.raises(ValueError, match=r"tol: expected a positive finite number, got -1"):
        gradcheck.check_cell(rnn, params, x, h0, tol=-1)
    with pytest.raises(ValueError, match=r"max_elements: expected a positive integer, got 0"):
        gradcheck.check_cell(rnn, params, x, h0, max_elements=0)
    with pytest.raises(TypeError, match=r"eps: expected a positive finite number, got str"):
        gradcheck.check_cell(rnn, params, x, h0, eps="1e-6")


@pytest.mark.parametrize("idx", [np.array([0, 2, 2]), np.array([True, False, True, False]),
                                 np.array([0, 2], dtype=object)])
def test_a_non_float_input_to_check_is_refused(idx):
    a = np.random.default_rng(0).standard_normal(4)
    with pytest.raises(TypeError, match=rf"check_op: idx: expected a floating or complex array "
                                        rf"to differentiate, got dtype {idx.dtype}; pass "
                                        r"non-differentiable arguments as keyword arguments"):
        gradcheck.check_op(Gather(), {"a": a, "idx": idx})


def test_an_index_passed_as_keyword_or_skipped_is_fine():
    a = np.random.default_rng(0).standard_normal(4)
    idx = np.array([0, 2, 2])
    by_keyword = gradcheck.check_op(Gather(), {"a": a}, idx=idx)
    skipped = gradcheck.check_op(Gather(), {"a": a, "idx": idx}, skip=("idx",))
    for report in (by_keyword, skipped):
        assert report.passed, str(report)  # relative error < 1e-6, float64
        assert list(report.errors) == ["a"]


def test_an_unknown_skip_name_is_refused():
    a = np.random.default_rng(0).standard_normal(4)
    with pytest.raises(ValueError, match=r"skip: expected names of inputs \['a'\], got \['b'\]"):
        gradcheck.check_op(Square(), {"a": a}, skip=("b",))


def test_a_report_with_nothing_checked_has_not_passed():
    a = np.random.default_rng(0).standard_normal(4)
    idx = np.array([1, 3])
    report = gradcheck.check_op(Gather(), {"a": a, "idx": idx}, skip=("a", "idx"))
    assert not report.errors
    assert not report.passed
    assert "PASSED" not in str(report) and "nothing was checked" in str(report)
    assert not gradcheck.GradcheckReport().passed


def test_a_non_float_parameter_is_refused_by_check_cell():
    params, x, h0 = make_rnn()
    params["b_hh"] = np.zeros(4, dtype=np.int64)
    with pytest.raises(TypeError, match=r"check_cell: b_hh: expected a floating or complex "
                                        r"array to differentiate, got dtype int64"):
        gradcheck.check_cell(rnn, params, x, h0)


def test_a_backward_that_returns_no_dict_is_refused():
    a = np.random.default_rng(0).standard_normal(4)
    op = types.SimpleNamespace(forward=Square().forward,
                               backward=lambda cache, d_out, d_state: 2 * cache[0] * d_out)
    with pytest.raises(TypeError, match=r"backward: expected a dict of gradients keyed by input "
                                        r"name, got ndarray"):
        gradcheck.check_op(op, {"a": a})


def test_a_two_input_op_still_checks_both():
    rng = np.random.default_rng(0)
    report = gradcheck.check_op(Square(), {"a": rng.standard_normal(3),
                                           "w": rng.standard_normal(3)})
    assert report.passed, str(report)  # relative error < 1e-6, float64
    assert sorted(report.errors) == ["a", "w"]


def test_forward_options_carry_a_name_the_checker_takes_itself():
    """ln_lstm's layer-norm ``eps`` through ``forward_options``: it reaches forward
    in every call while ``eps=`` stays the finite-difference step."""
    from minirec.cells import ln_lstm

    rng = np.random.default_rng(0)
    params = ln_lstm.init_params(rng, 3, 4)
    x = rng.standard_normal((2, 4, 3))
    seen = []

    class Spy:
        __name__ = "ln_lstm"
        zero_state = staticmethod(ln_lstm.zero_state)

        @staticmethod
        def forward(params, x, state0, **kw):
            seen.append(kw)
            return ln_lstm.forward(params, x, state0, **kw)

        backward = staticmethod(ln_lstm.backward)

    report = gradcheck.check_cell(Spy, params, x, eps=1e-6, forward_options={"eps": 0.5})
    assert report.passed, report
    assert seen and all(kw == {"eps": 0.5} for kw in seen)
    y_half = ln_lstm.forward(params, x, None, eps=0.5)[0]
    y_default = ln_lstm.forward(params, x, None)[0]
    assert not np.allclose(y_half, y_default)  # the option matters to the result


def test_forward_options_must_be_a_dict_without_repeats():
    with pytest.raises(TypeError, match=r"forward_options: expected a dict .* got list"):
        gradcheck.check_cell(rnn, rnn.init_params(np.random.default_rng(0), 2, 3),
                             np.zeros((1, 2, 2)), forward_options=[("method", "recurrent")])
    with pytest.raises(ValueError, match=r"forward_options: expected names not also given .*"
                                         r"\['method'\] twice"):
        gradcheck.check_cell(rnn, rnn.init_params(np.random.default_rng(0), 2, 3),
                             np.zeros((1, 2, 2)), method="recurrent",
                             forward_options={"method": "recurrent"})
