"""cells.aaren: learned-query softmax attention as a many-to-many RNN — equal to
masked softmax attention, the streaming step pair, the empty prefix, B = 0,
NaN inputs, golden values. Agreement of every method and backend, gradient
checks from a finite state, split-resume, dtypes and the bad-input tables are
the contract tests' (tests/test_contract.py, entry "aaren")."""

import numpy as np
import pytest

from minirec import _backend, gradcheck, registry
from minirec.cells import aaren
from minirec.ops import softmax_scan
from tests.conftest import assert_close

ENTRY = registry.get("aaren")
B = 2                                   # batch of the registry's "small" inputs
D, O, NH, K, VD = 3, 5, 2, 3, 2         # the golden test's sizes (K ≠ V)


def make(rng, T=7, state=True, **dims):
    """The registry's inputs: D = 3, O = 4, two heads of K = V = 2, a finite
    state (``None`` unless ``state``)."""
    x = ENTRY.make_inputs(rng, np.float64, "small", T=T, **dims)
    return x["params"], x["x"], x["state0"] if state else None


def upstream(rng, y, state):
    return rng.standard_normal(y.shape), tuple(rng.standard_normal(a.shape) for a in state)


def sizes(params):
    """``(NH, K, V, D)`` from the parameter shapes."""
    nh, k = params["q"].shape
    return nh, k, params["W_v"].shape[0] // nh, params["W_k"].shape[1]


def direct(params, x):
    """The module's equations written out as a Transformer would run them: keys and
    values for every token, the learned query's scores, a masked softmax over all
    (t, i) pairs per head, the heads concatenated, the output projection."""
    nh, k_size, v_size, d = sizes(params)
    b, T = x.shape[:2]
    k = np.einsum("btd,hkd->bthk", x, params["W_k"].reshape(nh, k_size, d))
    v = np.einsum("btd,hvd->bthv", x, params["W_v"].reshape(nh, v_size, d))
    s = np.einsum("bthk,hk->bth", k, params["q"]) / np.sqrt(k_size)
    scores = np.where(np.tril(np.ones((T, T), bool))[None, :, :, None],
                      s[:, None, :, :], -np.inf)                        # [b, t, i, h]
    P = np.exp(scores - scores.max(axis=2, keepdims=True))
    P /= P.sum(axis=2, keepdims=True)
    o = np.einsum("btih,bihv->bthv", P, v).reshape(b, T, nh * v_size)
    return o @ params["W_o"].T + params["b_o"]


def test_init_params_shapes_and_dtype(rng):
    p = aaren.init_params(rng, D, O, num_heads=NH, key_size=K, value_size=VD, dtype=np.float32)
    assert {k: v.shape for k, v in p.items()} == {
        "q": (NH, K), "W_k": (NH * K, D), "W_v": (NH * VD, D), "W_o": (O, NH * VD), "b_o": (O,)}
    assert all(v.dtype == np.float32 for v in p.values())
    default = aaren.init_params(rng, 3, 8, num_heads=4)
    assert default["q"].shape == (4, 2) and default["W_v"].shape == (8, 3)


@pytest.mark.parametrize("method", aaren.METHODS)
def test_equals_masked_softmax_attention_with_a_learned_query(method, rng):
    params, x, _ = make(rng, T=9, state=False)
    y, _, _ = aaren.forward(params, x, method=method)
    assert_close(y, direct(params, x), 1e-12, "y")
    # key and value sizes that differ (K = 3, V = 2)
    params = aaren.init_params(rng, D, O, num_heads=NH, key_size=K, value_size=VD)
    y, _, _ = aaren.forward(params, x, method=method)
    assert_close(y, direct(params, x), 1e-12, "y (K != V)")


@pytest.mark.parametrize("method", aaren.METHODS)
def test_gradcheck_from_the_empty_prefix(method, rng):
    """state0 = the empty prefix (−inf, 0, 0) (the contract checks a finite state)."""
    params, x, _ = make(rng, T=5)
    report = gradcheck.check_cell(aaren, params, x, aaren.zero_state(params, B), method=method)
    assert report.passed, str(report)  # relative error < 1e-6 in float64
    assert set(report.errors) == set(params) | {"x", "state0[0]", "state0[1]", "state0[2]"}


def test_streaming_steps_equal_forward_and_keep_constant_memory(rng):
    params, x, state0 = make(rng, T=40)
    y, state, cache = aaren.forward(params, x, state0)
    dy, dstate = upstream(rng, y, state)
    g = aaren.backward(params, cache, dy, dstate)
    st, ys, caches = state0, [], []
    for t in range(40):
        y_t, st, c = aaren.step_forward(params, x[:, t], st)
        assert [a.shape for a in st] == [a.shape for a in state0]  # whatever t is
        ys.append(y_t)
        caches.append(c)
    assert_close(np.stack(ys, axis=1), y, 1e-12, "y")
    for a, b in zip(st, state):
        assert_close(a, b, 1e-12)
    # backpropagation through time over the step functions gives forward's gradients
    ds, dparams, dxs = dstate, {k: 0 for k in params}, []
    for t in reversed(range(40)):
        dx_t, ds, dp = aaren.step_backward(dy[:, t], ds, caches[t])
        dxs.insert(0, dx_t)
        dparams = {k: dparams[k] + dp[k] for k in params}
    for k in params:
        assert_close(dparams[k], g[k], 1e-10, f"d{k}")
    assert_close(np.stack(dxs, axis=1), g["x"], 1e-10, "dx")
    for a, b in zip(ds, g["state0"]):
        assert_close(a, b, 1e-10, "dstate0")


def test_step_from_none_is_the_empty_prefix(rng):
    params, x, _ = make(rng, T=3, state=False)
    y, _, _ = aaren.forward(params, x)
    y0, _, _ = aaren.step_forward(params, x[:, 0], None)
    assert_close(y0, y[:, 0], 1e-14)


def test_golden_values():
    """linspace parameters and inputs against the masked-softmax computation above,
    and the first step against its one-token reduction o_0 = v_0 (softmax of one
    score is 1), i.e. y_0 = W_o W_v x_0 + b_o."""
    params = {"q": np.linspace(-1.0, 1.0, NH * K).reshape(NH, K),
              "W_k": np.linspace(-0.5, 0.5, NH * K * D).reshape(NH * K, D),
              "W_v": np.linspace(0.1, 0.9, NH * VD * D).reshape(NH * VD, D),
              "W_o": np.linspace(-0.3, 0.3, O * NH * VD).reshape(O, NH * VD),
              "b_o": np.linspace(0.0, 0.4, O)}
    x = np.linspace(-1.0, 1.0, B * 4 * D).reshape(B, 4, D)
    for method in aaren.METHODS:
        y, _, _ = aaren.forward(params, x, method=method)
        np.testing.assert_allclose(y, direct(params, x), rtol=1e-13, err_msg=method)
        x0 = np.linspace(-1.0, 1.0, 24)[:3]  # batch 0, step 0
        np.testing.assert_allclose(y[0, 0], params["W_o"] @ (params["W_v"] @ x0) + params["b_o"],
                                   rtol=1e-13)


def test_zero_state_is_the_empty_prefix(rng):
    params, x, _ = make(rng, T=4, state=False)
    m, u, w = aaren.zero_state(params, B)
    assert np.all(m == -np.inf) and not np.any(u) and not np.any(w)
    y0, _, _ = aaren.forward(params, x, (m, u, w))
    y1, _, _ = aaren.forward(params, x)
    np.testing.assert_array_equal(y0, y1)


def test_without_an_upstream_gradient_everything_is_zero(rng):
    params, x, state0 = make(rng, T=4)
    y, state, cache = aaren.forward(params, x, state0)
    g = aaren.backward(params, cache, None)
    assert not any(np.any(g[k]) for k in params)
    assert not np.any(g["x"]) and not any(np.any(a) for a in g["state0"])


@pytest.mark.parametrize("method, backend", ENTRY.pairs)
def test_an_empty_batch_gives_empty_outputs_and_gradients(method, backend, rng):
    """Issue 7, defect 10: ``aaren.forward(params, np.zeros((0, 5, 3)))`` ended in
    a reshape error; B = 0 gives empty outputs, state and gradients, as every
    other entry does, and so does the step pair."""
    if not _backend.available(backend):
        pytest.skip(f"backend {backend!r} is not usable here")
    params, _, _ = make(rng)
    y, state, cache = aaren.forward(params, np.zeros((0, 5, 3)), method=method, backend=backend)
    assert y.shape == (0, 5, 4) and [a.shape for a in state] == [(0, 2), (0, 2), (0, 2, 2)]
    g = aaren.backward(params, cache, np.zeros(y.shape), tuple(np.zeros(a.shape) for a in state))
    assert g["x"].shape == (0, 5, 3) and [a.shape for a in g["state0"]] == [a.shape for a in state]
    for k in params:  # no token, no gradient
        assert g[k].shape == params[k].shape and not np.any(g[k]), k
    y_t, state_t, cache_t = aaren.step_forward(params, np.zeros((0, 3)), None)
    assert y_t.shape == (0, 4)
    assert aaren.step_backward(np.zeros((0, 4)), state_t, cache_t)[0].shape == (0, 3)


@pytest.mark.parametrize("method, backend", ENTRY.pairs)
def test_a_nan_input_keeps_the_running_max_nan(method, backend, rng):
    """Issue 7, defect 11: a NaN in x at t = 4 makes that row's scores NaN; the
    final running max is NaN on every backend, as in the definition."""
    if not _backend.available(backend):
        pytest.skip(f"backend {backend!r} is not usable here")
    params, x, state0 = make(rng, T=9)
    x[0, 4, 0] = np.nan
    with np.errstate(invalid="ignore"):
        ref, ref_state, _ = aaren.forward(params, x, state0)
        y, state, _ = aaren.forward(params, x, state0, method=method, backend=backend)
    assert np.all(np.isnan(state[0][0])) and np.all(np.isfinite(state[0][1:]))
    for a, b in zip(state, ref_state):
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(ref))


def test_key_projection_rows_must_match_the_queries(rng):
    params, x, state0 = make(rng, T=4)
    with pytest.raises(ValueError, match=r"W_k: expected shape \(2·K=4, D\)"):
        aaren.forward({**params, "W_k": np.zeros((5, 3))}, x, state0)


def test_shares_the_op_definition(rng):
    """The cell's scan is exactly ops.softmax_scan on q·k/√K and W_v x."""
    params, x, state0 = make(rng, T=6)
    nh, k_size, v_size, _ = sizes(params)
    _, state, cache = aaren.forward(params, x, state0)
    k = (x @ params["W_k"].T).reshape(B, 6, nh, k_size)
    s = np.einsum("bthk,hk->bth", k, params["q"]) / np.sqrt(k_size)
    v = (x @ params["W_v"].T).reshape(B, 6, nh, v_size)
    _, ref_state, _ = softmax_scan.forward(s, v, initial_state=state0)
    for a, b in zip(state, ref_state):
        assert_close(a, b, 1e-14)
