"""ops.softmax_scan: the (m, u, w) prefix scan equals causal softmax attention with
one query, forward and backward, for every method."""

import warnings

import numpy as np
import pytest

from minirec import gradcheck
from minirec.ops import softmax_scan
from tests.conftest import assert_close


def make(rng, B=2, T=7, H=3, Vd=4, dtype=np.float64, scale=1.0, state=True):
    s = scale * rng.standard_normal((B, T, H))
    v = rng.standard_normal((B, T, H, Vd))
    init = None
    if state:
        init = (rng.standard_normal((B, H)), rng.uniform(0.5, 2.0, (B, H)),
                rng.standard_normal((B, H, Vd)))
        init = tuple(x.astype(dtype) for x in init)
    return s.astype(dtype), v.astype(dtype), init


def upstream(rng, o, state):
    return rng.standard_normal(o.shape), tuple(rng.standard_normal(x.shape) for x in state)


def direct_attention(s, v, init=None):
    """Causal softmax attention computed over all (t, i) pairs with a mask, as a
    Transformer would, independently of the module. An initial state (m, u, w)
    is one extra key in front with score m + log u and value w / u.
    Returns o (B, T, H, V) and the attention matrix P (B, T, T', H)."""
    B, T, H, Vd = v.shape
    scores = np.broadcast_to(s[:, None, :, :], (B, T, T, H)).copy()  # [b, t, i, h] = s_i
    mask = np.tril(np.ones((T, T), bool))[None, :, :, None]
    scores = np.where(mask, scores, -np.inf)
    values = v
    if init is not None:
        m0, u0, w0 = init
        extra = np.broadcast_to((m0 + np.log(u0))[:, None, None, :], (B, T, 1, H))
        scores = np.concatenate([extra, scores], axis=2)
        values = np.concatenate([(w0 / u0[..., None])[:, None], v], axis=1)
    P = np.exp(scores - scores.max(axis=2, keepdims=True))
    P = P / P.sum(axis=2, keepdims=True)
    o = np.einsum("btih,bihv->bthv", P, values)
    return o, P


def direct_gradients(s, v, do):
    """The textbook softmax backward, from the attention matrix (no initial state):
    ds_i = Σ_{t≥i} p_{t,i} (v_i − o_t)·do_t,  dv_i = Σ_{t≥i} p_{t,i} do_t."""
    o, P = direct_attention(s, v)
    diff = v[:, None, :, :, :] - o[:, :, None, :, :]          # [b, t, i, h, :] = v_i − o_t
    ds = np.einsum("btih,btihv,bthv->bih", P, diff, do)
    dv = np.einsum("btih,bthv->bihv", P, do)
    return ds, dv


@pytest.mark.parametrize("method", softmax_scan.METHODS)
@pytest.mark.parametrize("T", [1, 2, 7, 37])
@pytest.mark.parametrize("with_state", [True, False])
def test_method_equals_definition_forward_and_backward(method, T, with_state, rng):
    s, v, init = make(rng, T=T, scale=2.0, state=with_state)
    ref, ref_state, ref_cache = softmax_scan.forward(s, v, initial_state=init)
    do, dstate = upstream(rng, ref, ref_state)
    ref_g = softmax_scan.backward(ref_cache, do, dstate)
    o, state, cache = softmax_scan.forward(s, v, initial_state=init, method=method)
    g = softmax_scan.backward(cache, do, dstate)
    assert_close(o, ref, 1e-10, "o")
    for name, a, b in zip("muw", state, ref_state):
        assert_close(a, b, 1e-10, name)
    for k in ("s", "v"):
        assert g[k].shape == ref_g[k].shape and g[k].dtype == ref_g[k].dtype
        assert_close(g[k], ref_g[k], 1e-10, f"d{k}")
    for name, a, b in zip("muw", g["initial_state"], ref_g["initial_state"]):
        assert_close(a, b, 1e-10, f"dinitial_state[{name}]")


@pytest.mark.parametrize("method", softmax_scan.METHODS)
@pytest.mark.parametrize("with_state", [True, False])
def test_equals_masked_softmax_attention_over_all_pairs(method, with_state, rng):
    s, v, init = make(rng, T=11, scale=3.0, state=with_state)
    o, _, _ = softmax_scan.forward(s, v, initial_state=init, method=method)
    expected, _ = direct_attention(s, v, init)
    assert_close(o, expected, 1e-12, "o")


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_backward_equals_the_softmax_jacobian_formula(method, rng):
    s, v, _ = make(rng, T=9, scale=2.0, state=False)
    o, _, cache = softmax_scan.forward(s, v, method=method)
    do = rng.standard_normal(o.shape)
    g = softmax_scan.backward(cache, do)
    ds, dv = direct_gradients(s, v, do)
    assert_close(g["s"], ds, 1e-12, "ds")
    assert_close(g["v"], dv, 1e-12, "dv")


@pytest.mark.parametrize("method", softmax_scan.METHODS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scores_of_a_thousand_neither_overflow_nor_underflow(method, dtype, rng):
    """e^{1000} overflows even float64; the scan only ever exponentiates s − max ≤ 0."""
    s = rng.uniform(-1e3, 1e3, (2, 13, 2))
    v = rng.standard_normal((2, 13, 2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow or 0/0 anywhere fails the test
        o, state, cache = softmax_scan.forward(s.astype(dtype), v.astype(dtype), method=method)
        do = rng.standard_normal(o.shape)
        g = softmax_scan.backward(cache, do.astype(dtype))
    assert o.dtype == dtype and g["s"].dtype == dtype
    expected, _ = direct_attention(s, v)
    ds, dv = direct_gradients(s, v, do)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert_close(o, expected, tol, "o")
    assert_close(g["v"], dv, tol, "dv")
    # |ds| is tiny here (one score dominates each prefix); compare on the scale of dv
    assert np.max(np.abs(g["s"] - ds)) <= tol * np.max(np.abs(dv))
    assert np.all(np.isfinite(state[1])) and np.all(state[1] >= 1)


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_float32_stays_float32_and_close_to_float64(method, rng):
    s, v, init = make(rng, T=50, scale=2.0, dtype=np.float32)
    ref, ref_state, ref_cache = softmax_scan.forward(
        s.astype(np.float64), v.astype(np.float64),
        initial_state=tuple(x.astype(np.float64) for x in init))
    do, dstate = upstream(rng, ref, ref_state)
    ref_g = softmax_scan.backward(ref_cache, do, dstate)
    o, state, cache = softmax_scan.forward(s, v, initial_state=init, method=method)
    g = softmax_scan.backward(cache, do.astype(np.float32),
                              tuple(x.astype(np.float32) for x in dstate))
    assert o.dtype == np.float32 and all(x.dtype == np.float32 for x in state)
    assert g["s"].dtype == np.float32 and g["initial_state"][2].dtype == np.float32
    assert_close(o, ref, 1e-5, "o")
    assert_close(g["s"], ref_g["s"], 1e-4, "ds")
    assert_close(g["v"], ref_g["v"], 1e-4, "dv")
    for name, a, b in zip("muw", g["initial_state"], ref_g["initial_state"]):
        assert_close(a, b, 1e-4, f"dinitial_state[{name}]")


@pytest.mark.parametrize("method", softmax_scan.METHODS)
@pytest.mark.parametrize("with_state", [True, False])
def test_gradcheck(method, with_state, rng):
    """Every input including the three arrays of the initial state and, through the
    random upstream gradient of the final state, the returned m, u, w."""
    s, v, init = make(rng, B=2, T=6, H=2, Vd=3, scale=2.0)
    if not with_state:  # the empty prefix; its gradient is exactly zero
        init = softmax_scan.empty_state(2, 2, 3)
    report = gradcheck.check_op(softmax_scan, {"s": s, "v": v, "initial_state": init},
                                method=method)
    assert report.passed, str(report)  # relative error < 1e-6 in float64
    assert set(report.errors) == {"s", "v", "initial_state[0]", "initial_state[1]",
                                  "initial_state[2]"}


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_gradcheck_when_the_initial_state_holds_the_maximum(method, rng):
    """m_0 above every score: the final state's m is m_0 and its gradient goes there."""
    s, v, init = make(rng, B=2, T=5, H=2, Vd=3)
    init = (init[0] + 10.0, init[1], init[2])
    o, state, _ = softmax_scan.forward(s, v, initial_state=init, method=method)
    np.testing.assert_array_equal(state[0], init[0])
    report = gradcheck.check_op(softmax_scan, {"s": s, "v": v, "initial_state": init},
                                method=method)
    assert report.passed, str(report)  # relative error < 1e-6 in float64


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_state_gradient_of_the_final_max_alone(method, rng):
    """∂ m_T / ∂ inputs is the indicator of the first position holding the maximum."""
    s, v, init = make(rng, B=1, T=6, H=1, Vd=2, state=False)
    s[0, :, 0] = [0.0, 3.0, 1.0, 3.0, -2.0, 2.0]  # tie at 1 and 3: the earlier one wins
    o, state, cache = softmax_scan.forward(s, v, method=method)
    g = softmax_scan.backward(cache, None, (np.ones((1, 1)), None, None))
    np.testing.assert_array_equal(g["s"][0, :, 0], [0, 1, 0, 0, 0, 0])
    assert not np.any(g["v"])


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_split_resume_equals_one_call_forward_and_backward(method, rng):
    s, v, init = make(rng, T=23, scale=2.0)
    o, state, cache = softmax_scan.forward(s, v, initial_state=init, method=method)
    do, dstate = upstream(rng, o, state)
    g = softmax_scan.backward(cache, do, dstate)
    o1, st1, c1 = softmax_scan.forward(s[:, :10], v[:, :10], initial_state=init, method=method)
    o2, st2, c2 = softmax_scan.forward(s[:, 10:], v[:, 10:], initial_state=st1, method=method)
    assert_close(np.concatenate([o1, o2], axis=1), o, 1e-12, "o")
    for name, a, b in zip("muw", st2, state):
        assert_close(a, b, 1e-12, name)
    # backward in two calls: the second call's initial-state gradient feeds the first
    g2 = softmax_scan.backward(c2, do[:, 10:], dstate)
    g1 = softmax_scan.backward(c1, do[:, :10], g2["initial_state"])
    assert_close(np.concatenate([g1["s"], g2["s"]], axis=1), g["s"], 1e-10, "ds")
    assert_close(np.concatenate([g1["v"], g2["v"]], axis=1), g["v"], 1e-10, "dv")
    for name, a, b in zip("muw", g1["initial_state"], g["initial_state"]):
        assert_close(a, b, 1e-10, f"dinitial_state[{name}]")


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_empty_prefix_is_minus_inf_without_warnings_and_zero_gradient(method, rng):
    s, v, _ = make(rng, T=5, state=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o, state, cache = softmax_scan.forward(s, v, method=method)
        o_e, state_e, cache_e = softmax_scan.forward(
            s, v, initial_state=softmax_scan.empty_state(2, 3, 4), method=method)
        do, dstate = upstream(rng, o, state)
        g = softmax_scan.backward(cache, do, dstate)
        g_e = softmax_scan.backward(cache_e, do, dstate)
    np.testing.assert_array_equal(o, o_e)
    np.testing.assert_array_equal(o[:, 0], v[:, 0])  # one token: its own value
    for x in g["initial_state"]:
        assert np.all(x == 0)
    for a, b in zip(g["initial_state"], g_e["initial_state"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_a_minus_inf_score_masks_its_token(method, rng):
    s, v, init = make(rng, T=8)
    s_masked = s.copy()
    s_masked[:, 3] = -np.inf
    keep = [0, 1, 2, 4, 5, 6, 7]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        o, state, cache = softmax_scan.forward(s_masked, v, initial_state=init, method=method)
        g = softmax_scan.backward(cache, *upstream(rng, o, state))
    o_drop, state_drop, _ = softmax_scan.forward(s[:, keep], v[:, keep], initial_state=init)
    assert_close(o[:, keep], o_drop, 1e-12, "o")
    assert_close(state[2], state_drop[2], 1e-12, "w")
    assert not np.any(g["s"][:, 3]) and not np.any(g["v"][:, 3])


def test_combine_is_associative_with_and_without_minus_inf(rng):
    def triple(m):
        return (m, rng.uniform(0.5, 2.0, m.shape), rng.standard_normal(m.shape + (3,)))
    a = triple(rng.standard_normal((4, 2)))
    b = triple(np.array([[-np.inf, 1.0]] * 4))
    c = triple(3 * rng.standard_normal((4, 2)))
    left = softmax_scan.combine(softmax_scan.combine(a, b), c)
    right = softmax_scan.combine(a, softmax_scan.combine(b, c))
    for x, y in zip(left, right):
        assert_close(x, y, 1e-14)


def test_definition_is_the_step_loop(rng):
    s, v, init = make(rng, T=6)
    o, state, _ = softmax_scan.forward(s, v, initial_state=init)
    st = init
    for t in range(6):
        o_t, st, _ = softmax_scan.step_forward(s[:, t], v[:, t], st)
        np.testing.assert_array_equal(o[:, t], o_t)
    for a, b in zip(st, state):
        np.testing.assert_array_equal(a, b)


def test_golden_values():
    """linspace inputs; worked out by hand: s = (0, ln 2, ln 4) gives weights 1, 2, 4,
    v = (1, 2, 3) gives o = 1, (1 + 4)/3, (1 + 4 + 12)/7; final state
    m = ln 4, u = 7/4, w = 17/4."""
    s = np.linspace(0.0, np.log(4.0), 3).reshape(1, 3, 1)
    v = np.linspace(1.0, 3.0, 3).reshape(1, 3, 1, 1)
    for method in softmax_scan.METHODS:
        o, (m, u, w), _ = softmax_scan.forward(s, v, method=method)
        np.testing.assert_allclose(o.ravel(), [1.0, 5 / 3, 17 / 7], rtol=1e-14, err_msg=method)
        np.testing.assert_allclose([m.item(), u.item(), w.item()], [np.log(4), 7 / 4, 17 / 4],
                                   rtol=1e-14, err_msg=method)


@pytest.mark.parametrize("bad, match", [
    (dict(s=np.zeros((2, 3, 4)), v=np.zeros((2, 3, 5, 2))), r"v: expected shape \(B=2, T=3, H=4"),
    (dict(s=np.zeros((2, 3)), v=np.zeros((2, 3, 1, 2))), "s: expected a 3-d array"),
    (dict(s=np.zeros((2, 3, 4)), v=np.zeros((2, 3, 4))), "v: expected a 4-d array"),
    (dict(s=np.zeros((2, 3, 1), np.int64), v=np.zeros((2, 3, 1, 2))), "expected dtype"),
    (dict(s=np.zeros((2, 3, 1), np.complex128), v=np.zeros((2, 3, 1, 2))), "expected dtype"),
    (dict(s=np.zeros((2, 3, 1), np.float32), v=np.zeros((2, 3, 1, 2))), "mixed precisions"),
    (dict(s=np.zeros((2, 0, 1)), v=np.zeros((2, 0, 1, 2))), "T >= 1"),
    (dict(s=np.zeros((2, 3, 1)), v=np.zeros((2, 3, 1, 2)), initial_state=np.zeros((2, 1))),
     "initial_state: expected a tuple"),
    (dict(s=np.zeros((2, 3, 1)), v=np.zeros((2, 3, 1, 2)),
          initial_state=(np.zeros((2, 1)), np.ones((2, 1)), np.zeros((2, 1, 3)))),
     r"initial_state\[w\]: expected shape \(B=2, H=1, V=2\)"),
])
def test_bad_input_is_refused_with_a_clear_message(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        softmax_scan.forward(**bad)


def test_bad_upstream_gradients_are_refused(rng):
    s, v, init = make(rng, T=5)
    _, _, cache = softmax_scan.forward(s, v, initial_state=init)
    with pytest.raises(ValueError, match=r"do: expected shape \(2, 5, 3, 4\)"):
        softmax_scan.backward(cache, np.zeros((2, 4, 3, 4)))
    with pytest.raises(ValueError, match=r"dfinal_state\[dw\]: expected shape \(2, 3, 4\)"):
        softmax_scan.backward(cache, None, (None, None, np.zeros((2, 3))))
    with pytest.raises(TypeError, match="dfinal_state: expected None or a tuple"):
        softmax_scan.backward(cache, None, np.zeros((2, 3)))
