"""cells.aaren: learned-query softmax attention as a many-to-many RNN."""

import numpy as np
import pytest

from minirec import gradcheck
from minirec.cells import aaren
from minirec.ops import softmax_scan
from tests.conftest import assert_close

B, D, O, NH, K, VD = 2, 3, 5, 2, 3, 2


def make(rng, T=7, dtype=np.float64, state=True):
    params = aaren.init_params(rng, D, O, num_heads=NH, key_size=K, value_size=VD, dtype=dtype)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    state0 = None
    if state:
        state0 = (rng.standard_normal((B, NH)), rng.uniform(0.5, 2.0, (B, NH)),
                  rng.standard_normal((B, NH, VD)))
        state0 = tuple(a.astype(dtype) for a in state0)
    return params, x, state0


def upstream(rng, y, state):
    return rng.standard_normal(y.shape), tuple(rng.standard_normal(a.shape) for a in state)


def direct(params, x):
    """The module's equations written out as a Transformer would run them: keys and
    values for every token, the learned query's scores, a masked softmax over all
    (t, i) pairs per head, the heads concatenated, the output projection."""
    T = x.shape[1]
    k = np.einsum("btd,hkd->bthk", x, params["W_k"].reshape(NH, K, D))
    v = np.einsum("btd,hvd->bthv", x, params["W_v"].reshape(NH, VD, D))
    s = np.einsum("bthk,hk->bth", k, params["q"]) / np.sqrt(K)
    scores = np.where(np.tril(np.ones((T, T), bool))[None, :, :, None],
                      s[:, None, :, :], -np.inf)                        # [b, t, i, h]
    P = np.exp(scores - scores.max(axis=2, keepdims=True))
    P /= P.sum(axis=2, keepdims=True)
    o = np.einsum("btih,bihv->bthv", P, v).reshape(B, T, NH * VD)
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


@pytest.mark.parametrize("method", aaren.METHODS)
@pytest.mark.parametrize("T", [1, 37])
def test_method_equals_definition_forward_and_backward(method, T, rng):
    params, x, state0 = make(rng, T=T)
    ref, ref_state, ref_cache = aaren.forward(params, x, state0)
    dy, dstate = upstream(rng, ref, ref_state)
    ref_g = aaren.backward(params, ref_cache, dy, dstate)
    y, state, cache = aaren.forward(params, x, state0, method=method)
    g = aaren.backward(params, cache, dy, dstate)
    assert_close(y, ref, 1e-10, "y")
    for name, a, b in zip("muw", state, ref_state):
        assert_close(a, b, 1e-10, name)
    for k in list(params) + ["x"]:
        assert_close(g[k], ref_g[k], 1e-10, f"d{k}")
    for name, a, b in zip("muw", g["state0"], ref_g["state0"]):
        assert_close(a, b, 1e-10, f"dstate0[{name}]")


@pytest.mark.parametrize("method", aaren.METHODS)
@pytest.mark.parametrize("with_state", [True, False])
def test_gradcheck(method, with_state, rng):
    params, x, state0 = make(rng, T=5)
    if not with_state:  # the empty prefix (−inf, 0, 0)
        state0 = aaren.zero_state(params, B)
    report = gradcheck.check_cell(aaren, params, x, state0, method=method)
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
        assert [a.shape for a in st] == [(B, NH), (B, NH), (B, NH, VD)]  # whatever t is
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


@pytest.mark.parametrize("method", aaren.METHODS)
def test_split_resume_equals_one_call(method, rng):
    params, x, state0 = make(rng, T=23)
    y, state, _ = aaren.forward(params, x, state0, method=method)
    y1, s1, _ = aaren.forward(params, x[:, :9], state0, method=method)
    y2, s2, _ = aaren.forward(params, x[:, 9:], s1, method=method)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-12, "y")
    for a, b in zip(s2, state):
        assert_close(a, b, 1e-12)


@pytest.mark.parametrize("method", aaren.METHODS)
def test_float32_stays_float32_and_close_to_float64(method, rng):
    params, x, state0 = make(rng, T=30, dtype=np.float32)
    to64 = lambda a: a.astype(np.float64)
    p64 = {k: to64(v) for k, v in params.items()}
    ref, ref_state, ref_cache = aaren.forward(p64, to64(x), tuple(map(to64, state0)))
    dy, dstate = upstream(rng, ref, ref_state)
    ref_g = aaren.backward(p64, ref_cache, dy, dstate)
    y, state, cache = aaren.forward(params, x, state0, method=method)
    g = aaren.backward(params, cache, dy.astype(np.float32),
                       tuple(a.astype(np.float32) for a in dstate))
    assert y.dtype == np.float32 and all(a.dtype == np.float32 for a in state)
    assert_close(y, ref, 1e-5, "y")
    for k in list(params) + ["x"]:
        assert g[k].dtype == np.float32, k
        assert_close(g[k], ref_g[k], 1e-4, f"d{k}")


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


def test_params_and_grads_share_keys_shapes_and_state0_is_a_triple(rng):
    params, x, state0 = make(rng, T=4)
    y, state, cache = aaren.forward(params, x, state0)
    g = aaren.backward(params, cache, np.ones_like(y))
    assert set(g) == set(params) | {"x", "state0"}
    assert [a.shape for a in g["state0"]] == [a.shape for a in state0]
    # without an upstream gradient everything is zero
    g0 = aaren.backward(params, cache, None)
    assert not any(np.any(g0[k]) for k in params)


@pytest.mark.parametrize("change, match", [
    (lambda p, x, s: ({k: v for k, v in p.items() if k != "b_o"}, x, s), "missing"),
    (lambda p, x, s: ({**p, "W_k": np.zeros((5, D))}, x, s), "W_k: expected shape"),
    (lambda p, x, s: ({**p, "W_o": np.zeros((O, 3))}, x, s), "W_o: expected shape"),
    (lambda p, x, s: (p, np.zeros((B, 4, D + 1)), s), r"x: expected shape"),
    (lambda p, x, s: (p, x.astype(np.float32), s), "mixed precisions"),
    (lambda p, x, s: (p, x, s[0]), "state0: expected a tuple"),
    (lambda p, x, s: (p, x, (s[0], s[1], np.zeros((B, NH, 3)))),
     r"state0\[w\]: expected shape \(2, 2, 2\)"),
])
def test_bad_input_is_refused_with_a_clear_message(change, match, rng):
    params, x, state0 = make(rng, T=4)
    p, xx, s = change(params, x, state0)
    with pytest.raises((ValueError, TypeError), match=match):
        aaren.forward(p, xx, s)


def test_bad_upstream_gradient_and_method(rng):
    params, x, state0 = make(rng, T=4)
    _, _, cache = aaren.forward(params, x, state0)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 4, 5\)"):
        aaren.backward(params, cache, np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="method"):
        aaren.forward(params, x, method="chunked")


def test_shares_the_op_definition(rng):
    """The cell's scan is exactly ops.softmax_scan on q·k/√K and W_v x."""
    params, x, state0 = make(rng, T=6)
    _, state, cache = aaren.forward(params, x, state0)
    k = (x @ params["W_k"].T).reshape(B, 6, NH, K)
    s = np.einsum("bthk,hk->bth", k, params["q"]) / np.sqrt(K)
    v = (x @ params["W_v"].T).reshape(B, 6, NH, VD)
    _, ref_state, _ = softmax_scan.forward(s, v, initial_state=state0)
    for a, b in zip(state, ref_state):
        assert_close(a, b, 1e-14)
