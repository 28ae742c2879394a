"""ops.softmax_scan: the (m, u, w) prefix scan equals causal softmax attention
with one query, forward and backward; the empty prefix, −inf and huge scores,
ties of the running max, NaN scores, golden values. Agreement of every method
and backend with the definition, gradient checks from a finite state,
split-resume, dtypes, B = 0 and the bad-input tables are the contract tests'
(tests/test_contract.py, entry "softmax_scan")."""

import warnings

import numpy as np
import pytest

from minirec import _backend, gradcheck, registry
from minirec.ops import softmax_scan
from tests.conftest import assert_close

ENTRY = registry.get("softmax_scan")
PAIRS = [(m, b) for m, b in ENTRY.pairs]


def make(rng, T=7, state=True, scale=1.0, **dims):
    """The registry's inputs (scores ~ N(0, 4), a finite state with u > 0), three
    heads of four values; scores times ``scale``; no state unless ``state``."""
    x = ENTRY.make_inputs(rng, np.float64, "small", T=T, **{"heads": 3, "V": 4, **dims})
    return scale * x["s"], x["v"], x["initial_state"] if state else None


def upstream(rng, o, state):
    return rng.standard_normal(o.shape), tuple(rng.standard_normal(x.shape) for x in state)


def need(backend):
    if not _backend.available(backend):
        pytest.skip(f"backend {backend!r} is not usable here")


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
@pytest.mark.parametrize("T", [1, 7])
def test_from_the_empty_prefix_every_method_equals_definition(method, T, rng):
    """initial_state=None (the contract's agreement starts from a finite state)."""
    s, v, _ = make(rng, T=T, state=False)
    ref, ref_state, ref_cache = softmax_scan.forward(s, v)
    do, dstate = upstream(rng, ref, ref_state)
    ref_g = softmax_scan.backward(ref_cache, do, dstate)
    o, state, cache = softmax_scan.forward(s, v, method=method)
    g = softmax_scan.backward(cache, do, dstate)
    assert_close(o, ref, 1e-10, "o")
    np.testing.assert_array_equal(state[0], ref_state[0])  # the max is exact
    for name, a, b in zip("uw", state[1:], ref_state[1:]):
        assert_close(a, b, 1e-10, name)
    for k in ("s", "v"):
        assert_close(g[k], ref_g[k], 1e-10, f"d{k}")
    for a, b in zip(g["initial_state"], ref_g["initial_state"]):
        np.testing.assert_array_equal(a, b)  # exactly zero for the empty prefix


@pytest.mark.parametrize("method", softmax_scan.METHODS)
@pytest.mark.parametrize("with_state", [True, False])
def test_equals_masked_softmax_attention_over_all_pairs(method, with_state, rng):
    s, v, init = make(rng, T=11, scale=3.0, state=with_state)
    o, _, _ = softmax_scan.forward(s, v, initial_state=init, method=method)
    expected, _ = direct_attention(s, v, init)
    assert_close(o, expected, 1e-12, "o")


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_backward_equals_the_softmax_jacobian_formula(method, rng):
    s, v, _ = make(rng, T=9, state=False)
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
def test_gradcheck_from_the_empty_prefix(method, rng):
    """The empty prefix (−inf, 0, 0) given explicitly: every input and, through
    the random upstream gradient of the final state, the returned m, u, w."""
    s, v, _ = make(rng, T=6, state=False, B=2, heads=2, V=3)
    init = softmax_scan.empty_state(2, 2, 3)
    report = gradcheck.check_op(softmax_scan, {"s": s, "v": v, "initial_state": init},
                                method=method)
    assert report.passed, str(report)  # relative error < 1e-6 in float64
    assert set(report.errors) == {"s", "v", "initial_state[0]", "initial_state[1]",
                                  "initial_state[2]"}


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_gradcheck_when_the_initial_state_holds_the_maximum(method, rng):
    """m_0 above every score: the final state's m is m_0 and its gradient goes there."""
    s, v, init = make(rng, T=5, B=2, heads=2, V=3)
    init = (init[0] + 10.0, init[1], init[2])
    o, state, _ = softmax_scan.forward(s, v, initial_state=init, method=method)
    np.testing.assert_array_equal(state[0], init[0])
    report = gradcheck.check_op(softmax_scan, {"s": s, "v": v, "initial_state": init},
                                method=method)
    assert report.passed, str(report)  # relative error < 1e-6 in float64


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_state_gradient_of_the_final_max_alone(method, rng):
    """∂ m_T / ∂ inputs is the indicator of the first position holding the maximum."""
    s, v, _ = make(rng, T=6, state=False, B=1, heads=1, V=2)
    s[0, :, 0] = [0.0, 3.0, 1.0, 3.0, -2.0, 2.0]  # tie at 1 and 3: the earlier one wins
    o, state, cache = softmax_scan.forward(s, v, method=method)
    g = softmax_scan.backward(cache, None, (np.ones((1, 1)), None, None))
    np.testing.assert_array_equal(g["s"][0, :, 0], [0, 1, 0, 0, 0, 0])
    assert not np.any(g["v"])


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_split_backward_chains_through_the_state_gradient(method, rng):
    """Backward in two calls, the second call's initial-state gradient feeding the
    first's dstate, equals one call's."""
    s, v, init = make(rng, T=23)
    o, state, cache = softmax_scan.forward(s, v, initial_state=init, method=method)
    do, dstate = upstream(rng, o, state)
    g = softmax_scan.backward(cache, do, dstate)
    o1, st1, c1 = softmax_scan.forward(s[:, :10], v[:, :10], initial_state=init, method=method)
    o2, st2, c2 = softmax_scan.forward(s[:, 10:], v[:, 10:], initial_state=st1, method=method)
    g2 = softmax_scan.backward(c2, do[:, 10:], dstate)
    g1 = softmax_scan.backward(c1, do[:, :10], g2["initial_state"])
    assert_close(np.concatenate([g1["s"], g2["s"]], axis=1), g["s"], 1e-10, "ds")
    assert_close(np.concatenate([g1["v"], g2["v"]], axis=1), g["v"], 1e-10, "dv")
    for name, a, b in zip("muw", g1["initial_state"], g["initial_state"]):
        assert_close(a, b, 1e-10, f"dinitial_state[{name}]")


@pytest.mark.parametrize("method", softmax_scan.METHODS)
def test_empty_prefix_is_minus_inf_without_warnings_and_zero_gradient(method, rng):
    s, v, _ = make(rng, T=5, state=False, B=2, heads=3, V=4)
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


@pytest.mark.parametrize("method, backend", PAIRS)
def test_a_complex_upstream_gradient_of_the_real_output_is_refused(method, backend, rng):
    """Issue 7, defect 4: the blelloch backward returned complex gradients for
    real inputs given ``do * 1j``; every path refuses it before dispatch."""
    need(backend)
    s, v, init = make(rng, T=5)
    o, state, cache = softmax_scan.forward(s, v, initial_state=init, method=method,
                                           backend=backend)
    do, dstate = upstream(rng, o, state)
    with pytest.raises(TypeError, match=r"do: expected a real gradient .*got complex128"):
        softmax_scan.backward(cache, do * 1j, dstate)
    with pytest.raises(TypeError, match=r"dstate\[2\]: expected a real gradient"):
        softmax_scan.backward(cache, do, (dstate[0], dstate[1], dstate[2] * 1j))


@pytest.mark.parametrize("method, backend", PAIRS)
def test_a_nan_score_stays_in_the_running_max(method, backend, rng):
    """Issue 7, defect 11: after a NaN score the running max is NaN from that step
    on, as in the definition (numba used to forget it at the next finite score)."""
    need(backend)
    s, v, init = make(rng, T=9)
    s[0, 4, 1] = np.nan
    with np.errstate(invalid="ignore"):
        ref, ref_state, ref_cache = softmax_scan.forward(s, v, initial_state=init)
        o, state, cache = softmax_scan.forward(s, v, initial_state=init, method=method,
                                               backend=backend)
        do, dstate = upstream(rng, o, state)
        ref_g = softmax_scan.backward(ref_cache, do, dstate)
        g = softmax_scan.backward(cache, do, dstate)
    assert np.isnan(state[0][0, 1]) and np.isnan(ref_state[0][0, 1])
    assert np.all(np.isfinite(o[:, :4])) and np.all(np.isfinite(o[1:]))
    assert np.all(np.isnan(o[0, 4:, 1]))
    for a, b in zip(state, ref_state):
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    for k in ("s", "v"):
        np.testing.assert_array_equal(np.isfinite(g[k]), np.isfinite(ref_g[k]), err_msg=k)


def test_bad_upstream_gradients_are_refused(rng):
    s, v, init = make(rng, T=5)
    _, _, cache = softmax_scan.forward(s, v, initial_state=init)
    with pytest.raises(ValueError, match=r"do: expected shape \(2, 5, 3, 4\)"):
        softmax_scan.backward(cache, np.zeros((2, 4, 3, 4)))
    with pytest.raises(ValueError, match=r"dstate\[2\]: expected shape \(2, 3, 4\)"):
        softmax_scan.backward(cache, None, (None, None, np.zeros((2, 3))))
    with pytest.raises(TypeError, match="dstate: expected a tuple of 3 arrays"):
        softmax_scan.backward(cache, None, np.zeros((2, 3)))
