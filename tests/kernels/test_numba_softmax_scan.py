"""Numba softmax-scan kernels: what the contract tests (tests/test_contract.py)
do not reach — the empty prefix, no output gradient, a partial final-state
gradient, −inf scores, ties of the running max, scores of ±1e3 — each against
the NumPy definition, forward and every gradient."""

import warnings

import numpy as np
import pytest

from minirec import registry
from minirec.cells import aaren
from minirec.ops import softmax_scan
from tests.conftest import TOL, assert_close

pytest.importorskip("numba")


def _inputs(rng, B, T, H, Vd, dtype, state=True, scale=1.0):
    """The registry's inputs (scores ~ N(0, 4), a finite state) with ``H`` heads
    of ``Vd`` values, the scores times ``scale``."""
    x = registry.get("softmax_scan").make_inputs(rng, dtype, "small", B=B, T=T, heads=H, V=Vd)
    s = (scale * x["s"]).astype(dtype)
    return s, x["v"], x["initial_state"] if state else None


def _upstream(rng, o, state):
    dtype = o.dtype
    return (rng.standard_normal(o.shape).astype(dtype),
            tuple(rng.standard_normal(x.shape).astype(dtype) for x in state))


def _assert_states(state, ref, tol):
    # m may be −inf (an all −inf prefix): the max is exact, so compare it exactly
    np.testing.assert_array_equal(state[0], ref[0])
    assert_close(state[1], ref[1], tol, "u")
    assert_close(state[2], ref[2], tol, "w")


def _compare(s, v, init, rng, do_none=False):
    """Numba vs the NumPy recurrent definition: outputs, final state, every gradient."""
    tol = TOL[np.dtype(s.dtype)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 or inf − inf anywhere
        ref_o, ref_st, ref_c = softmax_scan.forward(s, v, initial_state=init)
        o, st, c = softmax_scan.forward(s, v, initial_state=init, backend="numba")
        do, dst = _upstream(rng, o, st)
        do = None if do_none else do
        ref_g = softmax_scan.backward(ref_c, do, dst)
        g = softmax_scan.backward(c, do, dst)
    assert o.dtype == ref_o.dtype and all(np.all(np.isfinite(x)) for x in (o, st[1], st[2]))
    assert_close(o, ref_o, tol, "o")
    _assert_states(st, ref_st, tol)
    for name in ("s", "v"):
        assert g[name].dtype == ref_g[name].dtype
        assert np.all(np.isfinite(g[name])), name
        assert_close(g[name], ref_g[name], tol, "d" + name)
    for name, a, b in zip("muw", g["initial_state"], ref_g["initial_state"]):
        assert np.all(np.isfinite(a)), name
        assert_close(a, b, tol, f"dinitial_state[{name}]")
    return g


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [1, 37])
def test_numba_equals_numpy_from_the_empty_prefix(dtype, T, rng):
    """initial_state=None (the contract starts from a finite state); odd H, V."""
    s, v, init = _inputs(rng, B=3, T=T, H=5, Vd=7, dtype=dtype, state=False)
    _compare(s, v, init, rng)


def test_without_output_gradient(rng):
    s, v, init = _inputs(rng, B=2, T=11, H=3, Vd=4, dtype=np.float64)
    _compare(s, v, init, rng, do_none=True)


def test_partial_final_state_gradient(rng):
    s, v, init = _inputs(rng, B=2, T=9, H=3, Vd=4, dtype=np.float64)
    _, _, ref_c = softmax_scan.forward(s, v, initial_state=init)
    _, _, c = softmax_scan.forward(s, v, initial_state=init, backend="numba")
    dm = rng.standard_normal((2, 3))
    ref_g = softmax_scan.backward(ref_c, None, (dm, None, None))
    g = softmax_scan.backward(c, None, (dm, None, None))
    assert np.any(g["s"] != 0)  # the final max's gradient reaches one score per (b, h)
    assert_close(g["s"], ref_g["s"], 1e-10, "ds")
    for a, b in zip(g["initial_state"], ref_g["initial_state"]):
        assert_close(a, b, 1e-10, "dinitial_state")


def test_empty_prefix_gives_exactly_zero_initial_state_gradient(rng):
    s, v, _ = _inputs(rng, B=2, T=6, H=3, Vd=4, dtype=np.float64, state=False)
    g = _compare(s, v, None, rng)
    for x in g["initial_state"]:
        assert np.all(x == 0)


@pytest.mark.parametrize("with_state", [False, True])
def test_minus_inf_scores_match_and_give_no_nan(with_state, rng):
    s, v, init = _inputs(rng, B=2, T=10, H=3, Vd=4, dtype=np.float64, state=with_state)
    s[:, :3, 0] = -np.inf      # a leading run of −inf (from the empty prefix: a plain mean)
    s[:, 5, :] = -np.inf       # a masked token after finite scores
    s[0, :, 2] = -np.inf       # a whole row of −inf
    g = _compare(s, v, init, rng)
    # token 5 follows finite scores in heads 0 and 1: masked, zero gradient
    assert not np.any(g["v"][:, 5, :2]) and not np.any(g["s"][:, 5, :2])


def test_tied_scores_route_the_max_gradient_like_the_definition(rng):
    s, v, init = _inputs(rng, B=2, T=15, H=3, Vd=4, dtype=np.float64)
    s = rng.integers(-1, 2, s.shape).astype(np.float64)  # many ties with the running max
    init = (np.ones((2, 3)), init[1], init[2])             # ties with the initial state too
    _compare(s, v, init, rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_of_a_thousand(dtype, rng):
    s, v, init = _inputs(rng, B=2, T=12, H=3, Vd=4, dtype=dtype, scale=500.0)
    _compare(s, v, init, rng)


def test_golden_values_against_a_hand_loop():
    """Independent check: the softmax-weighted prefix means written directly."""
    T = 6
    s = np.linspace(-1.0, 2.0, T).reshape(1, T, 1)
    v = np.linspace(0.5, -0.5, 2 * T).reshape(1, T, 1, 2)
    o, (m, u, w), _ = softmax_scan.forward(s, v, backend="numba")
    for t in range(T):
        e = np.exp(s[0, : t + 1, 0])
        want = (e[:, None] * v[0, : t + 1, 0]).sum(axis=0) / e.sum()
        np.testing.assert_allclose(o[0, t, 0], want, rtol=1e-13)
    assert m[0, 0] == 2.0
    np.testing.assert_allclose(u[0, 0], np.exp(s[0, :, 0] - 2.0).sum(), rtol=1e-13)


def test_numba_refuses_blelloch(rng):
    s, v, _ = _inputs(rng, B=1, T=3, H=1, Vd=2, dtype=np.float64, state=False)
    with pytest.raises(ValueError, match="backend='numba' supports .*got 'blelloch'"):
        softmax_scan.forward(s, v, method="blelloch", backend="numba")
    params = aaren.init_params(rng, 3, 4)
    with pytest.raises(ValueError, match="backend='numba' supports .*got 'blelloch'"):
        aaren.forward(params, np.zeros((1, 2, 3)), method="blelloch", backend="numba")
