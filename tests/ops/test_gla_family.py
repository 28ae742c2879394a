"""The GLA engine (minirec.ops.gla: recurrent, parallel, chunk) and the five ops
on it: linear_attention, retention, simple_gla, gla, rwkv6.

Every form equals the recurrent definition forward and in every gradient
(float64, relative RMS ≤ 1e-10); every form's backward passes a gradient check
(float64, relative error < 1e-6, every input and the initial state); strong
decays stay finite and accurate in float32; split-resume; gates of exactly 0;
the normaliser of linear attention; golden values from an independent loop.
"""

import numpy as np
import pytest

from minirec import gradcheck
from minirec.ops import gla, linear_attention, retention, rwkv6, simple_gla
from minirec.ops.gla import recurrent
from minirec.registry import rel_rms
from tests.conftest import assert_close

METHODS = ("recurrent", "parallel", "chunk")
GATES = (None, "scalar", "key")
GRADCHECK_TOL = 1e-6   # DESIGN §6, float64 central differences


def engine_inputs(rng, B=2, T=37, H=2, K=5, V=7, gate="key", bonus=False, g_scale=1.0,
                  dtype=np.float64):
    """q, k (B, T, H, K), v (B, T, H, V), g None / (B, T, H) / (B, T, H, K) log
    decays in [−g_scale, 0], u (H, K) or None, S0 (B, H, K, V)."""
    q, k = rng.standard_normal((2, B, T, H, K))
    v = rng.standard_normal((B, T, H, V))
    g = None
    if gate == "scalar":
        g = -g_scale * rng.random((B, T, H))
    elif gate == "key":
        g = -g_scale * rng.random((B, T, H, K))
    u = rng.standard_normal((H, K)) if bonus else None
    S0 = rng.standard_normal((B, H, K, V))
    cast = (lambda x: None if x is None else x.astype(dtype))
    return tuple(cast(x) for x in (q, k, v, g, u, S0))


def run_engine(q, k, v, g, u, S0, method, chunk_size, do, dS, scale=0.7):
    o, S, cache = gla.run(q, k, v, g, u, S0, scale=scale, method=method,
                          chunk_size=chunk_size, backend="numpy")
    return o, S, gla.run_backward(cache, do, dS)


class Engine:
    """The engine as an op for gradcheck.check_op."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def forward(self, q, k, v, g=None, u=None, initial_state=None):
        return gla.run(q, k, v, g, u, initial_state, backend="numpy", **self.kwargs)

    def backward(self, cache, do, dstate):
        return gla.run_backward(cache, do, dstate)


# ---------------------------------------------------------------------------
# the engine: every form equals the definition
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv"])
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("T", [1, 37, 64, 100])
def test_engine_forms_equal_recurrent(T, gate, bonus, rng):
    """Forward, final state and every gradient, T not a chunk multiple, chunk
    sizes 8, 16, 64; K = 5 ≠ V = 7. T = 100 crosses a recurrent segment."""
    q, k, v, g, u, S0 = engine_inputs(rng, T=T, gate=gate, bonus=bonus)
    do, dS = rng.standard_normal(v.shape), rng.standard_normal(S0.shape)
    ref_o, ref_S, ref_g = run_engine(q, k, v, g, u, S0, "recurrent", 64, do, dS)
    assert set(ref_g) == {"q", "k", "v", "g", "u", "initial_state"}
    for method, chunk_size in [("parallel", 64), ("chunk", 8), ("chunk", 16), ("chunk", 64)]:
        o, S, grads = run_engine(q, k, v, g, u, S0, method, chunk_size, do, dS)
        where = f"{method}/{chunk_size}"
        assert_close(o, ref_o, 1e-10, f"{where} o")
        assert_close(S, ref_S, 1e-10, f"{where} state")
        for name, ref in ref_g.items():
            if ref is None:
                assert grads[name] is None, f"{where} {name}"
                continue
            assert grads[name].shape == ref.shape, f"{where} d{name}"
            assert_close(grads[name], ref, 1e-10, f"{where} d{name}")


def test_engine_recurrent_equals_a_plain_loop(rng):
    """The definition against the equations written per (b, h) with np.outer."""
    q, k, v, g, u, S0 = engine_inputs(rng, B=1, T=9, H=2, gate="key", bonus=True)
    for uu in (None, u):
        o, S, _ = gla.run(q, k, v, g, uu, S0, scale=0.7, method="recurrent", chunk_size=64,
                          backend="numpy")
        for h in range(2):
            state = S0[0, h].copy()
            for t in range(9):
                kv = np.outer(k[0, t, h], v[0, t, h])
                if uu is not None:
                    ref = 0.7 * (state + uu[h][:, None] * kv).T @ q[0, t, h]
                state = np.exp(g[0, t, h])[:, None] * state + kv
                if uu is None:
                    ref = 0.7 * state.T @ q[0, t, h]
                np.testing.assert_allclose(o[0, t, h], ref, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(S[0, h], state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv"])
@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("method", METHODS)
def test_engine_gradcheck(method, gate, bonus, rng):
    """Every input including u and the initial state; T = 7 with chunks of 3
    (a padded last chunk)."""
    q, k, v, g, u, S0 = engine_inputs(rng, B=1, T=7, H=2, K=3, V=4, gate=gate, bonus=bonus)
    inputs = {"q": q, "k": k, "v": v, "initial_state": S0}
    if g is not None:
        inputs["g"] = g
    if u is not None:
        inputs["u"] = u
    report = gradcheck.check_op(Engine(scale=0.7, method=method, chunk_size=3), inputs)
    assert report.passed, str(report)
    assert set(report.errors) == set(inputs)
    assert max(report.errors.values()) < GRADCHECK_TOL


@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv"])
def test_recurrent_gradcheck_across_segments(bonus, rng, monkeypatch):
    """The recurrent backward recomputes states segment by segment from
    checkpoints: with SEGMENT = 3 and T = 8 three segments are crossed."""
    monkeypatch.setattr(recurrent, "SEGMENT", 3)
    q, k, v, g, u, S0 = engine_inputs(rng, B=1, T=8, H=1, K=3, V=2, gate="key", bonus=bonus)
    inputs = {"q": q, "k": k, "v": v, "g": g, "initial_state": S0}
    if bonus:
        inputs["u"] = u
    _, _, cache = gla.run(q, k, v, g, u, S0, scale=0.7, method="recurrent", chunk_size=64,
                          backend="numpy")
    assert cache.form.checkpoints.shape[1] == 3
    report = gradcheck.check_op(Engine(scale=0.7, method="recurrent", chunk_size=64), inputs)
    assert report.passed, str(report)


# ---------------------------------------------------------------------------
# stability: strong decays in float32
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("bonus", [False, True], ids=["gla", "rwkv"])
@pytest.mark.parametrize("gate", ["scalar", "key"])
@pytest.mark.parametrize("decay", ["-20", "-100"])
def test_float32_strong_decay_is_finite_and_accurate(decay, gate, bonus, rng):
    """T = 256, log decay −20 per step, or around −100 (where e^g underflows in
    float32): the parallel and chunk forms in float32 against the float64
    definition. Only within-chunk differences G_i − G_j ≤ 0 are exponentiated,
    so nothing overflows; the decay gradient is taken path by path, so it
    stays accurate at −20 (at −100 its true values, ~e^{−100}, are float32
    denormals: only finiteness is asked)."""
    q, k, v, _, u, S0 = engine_inputs(rng, B=1, T=256, H=2, K=5, V=4, gate=None, bonus=bonus)
    shape = (1, 256, 2) + ((5,) if gate == "key" else ())
    g = (np.full(shape, -20.0) if decay == "-20"
         else -100.0 + rng.standard_normal(shape))
    do, dS = rng.standard_normal(v.shape), rng.standard_normal(S0.shape)
    ref_o, ref_S, ref_g = run_engine(q, k, v, g, u, S0, "recurrent", 64, do, dS)
    f32 = [None if x is None else x.astype(np.float32) for x in (q, k, v, g, u, S0, do, dS)]
    for method in ("parallel", "chunk"):
        o, S, grads = run_engine(*f32[:6], method, 64, *f32[6:])
        assert o.dtype == np.float32 and S.dtype == np.float32
        for name, x in [("o", o), ("state", S)] + list(grads.items()):
            assert x is None or np.all(np.isfinite(x)), f"{method}: {name} not finite"
        assert_close(o, ref_o, 1e-4, f"{method} o")
        assert_close(S, ref_S, 1e-4, f"{method} state")
        names = ["q", "k", "v"] + (["u"] if bonus else []) + (["g"] if decay == "-20" else [])
        for name in names:
            assert grads[name].dtype == np.float32
            assert_close(grads[name], ref_g[name], 1e-4, f"{method} d{name}")


def test_float32_mild_decay_long_sequence(rng):
    """Weak per-key decays over T = 256 (cumulative decays of −100s): the chunk
    form in float32 within 1e-4 of the float64 definition."""
    q, k, v, g, _, S0 = engine_inputs(rng, B=1, T=256, H=2, gate="key", g_scale=0.8)
    do, dS = rng.standard_normal(v.shape), rng.standard_normal(S0.shape)
    ref_o, ref_S, ref_g = run_engine(q, k, v, g, None, S0, "recurrent", 64, do, dS)
    f32 = [x.astype(np.float32) for x in (q, k, v, g, S0, do, dS)]
    o, S, grads = run_engine(*f32[:4], None, f32[4], "chunk", 32, *f32[5:])
    assert_close(o, ref_o, 1e-4, "o")
    assert_close(S, ref_S, 1e-4, "state")
    for name in ("q", "k", "v", "g", "initial_state"):
        assert_close(grads[name], ref_g[name], 1e-4, f"d{name}")


# ---------------------------------------------------------------------------
# the five ops
# ---------------------------------------------------------------------------

def op_inputs(name, rng, B=2, T=11, H=2, K=5, V=7, dtype=np.float64):
    """The op's array arguments by name (initial_state included)."""
    q, k, v, g, u, S0 = engine_inputs(rng, B=B, T=T, H=H, K=K, V=V, dtype=dtype,
                                      gate={"simple_gla": "scalar", "gla": "key",
                                            "rwkv6": "key"}.get(name),
                                      bonus=name == "rwkv6")
    if name == "linear_attention_normalized":
        # positive features so that the normaliser q·z stays away from 0
        q, k = np.abs(q) + 0.1, np.abs(k) + 0.1
        z0 = (np.abs(rng.standard_normal((B, H, K))) + 0.1).astype(dtype)
        return {"q": q, "k": k, "v": v, "initial_state": (S0, z0)}
    if name in ("linear_attention", "retention"):
        return {"q": q, "k": k, "v": v, "initial_state": S0}
    if name == "rwkv6":
        return {"r": q, "k": k, "v": v, "w": g, "u": u, "initial_state": S0}
    return {"q": q, "k": k, "v": v, "g": g, "initial_state": S0}


OPS = {"linear_attention": (linear_attention, {}),
       "linear_attention_normalized": (linear_attention, {"normalize": True}),
       "retention": (retention, {}),
       "simple_gla": (simple_gla, {}),
       "gla": (gla, {}),
       "rwkv6": (rwkv6, {})}


def _flat(x):
    return list(x) if isinstance(x, tuple) else [x]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(OPS))
def test_op_gradcheck(name, method, rng):
    """Every array argument and the initial state (a pair with normalize)."""
    op, kwargs = OPS[name]
    inputs = op_inputs(name, rng, B=1, T=5, H=2, K=3, V=2)
    report = gradcheck.check_op(op, inputs, method=method, chunk_size=2, **kwargs)
    assert report.passed, str(report)
    assert max(report.errors.values()) < GRADCHECK_TOL


@pytest.mark.parametrize("name", list(OPS))
def test_op_methods_equal_recurrent(name, rng):
    op, kwargs = OPS[name]
    inputs = op_inputs(name, rng, T=37)
    o0, S0, c0 = op.forward(**inputs, **kwargs)
    do = rng.standard_normal(o0.shape)
    dS = tuple(rng.standard_normal(x.shape) for x in _flat(S0))
    dS = dS if isinstance(S0, tuple) else dS[0]
    ref = op.backward(c0, do, dS)
    assert set(ref) == set(inputs)
    for method in ("parallel", "chunk"):
        o, S, cache = op.forward(**inputs, method=method, chunk_size=16, **kwargs)
        assert_close(o, o0, 1e-10, f"{method} o")
        for a, b in zip(_flat(S), _flat(S0)):
            assert_close(a, b, 1e-10, f"{method} state")
        grads = op.backward(cache, do, dS)
        for key in ref:
            for a, b in zip(_flat(grads[key]), _flat(ref[key])):
                assert a.shape == b.shape
                assert_close(a, b, 1e-10, f"{method} d{key}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(OPS))
def test_op_split_resume(name, method, rng):
    """Two calls, the second from the first's final state, equal one call;
    so do the gradients (the second call's initial-state gradient is the
    first call's dstate)."""
    op, kwargs = OPS[name]
    inputs = op_inputs(name, rng, T=13)
    cut = 6
    o, S, cache = op.forward(**inputs, method=method, chunk_size=4, **kwargs)
    first = {n: (x[:, :cut] if n not in ("u", "initial_state") else x) for n, x in inputs.items()}
    second = {n: (x[:, cut:] if n not in ("u", "initial_state") else x)
              for n, x in inputs.items()}
    o1, S1, c1 = op.forward(**first, method=method, chunk_size=4, **kwargs)
    second["initial_state"] = S1
    o2, S2, c2 = op.forward(**second, method=method, chunk_size=4, **kwargs)
    assert_close(np.concatenate([o1, o2], axis=1), o, 1e-10, "o")
    for a, b in zip(_flat(S2), _flat(S)):
        assert_close(a, b, 1e-10, "state")
    do = rng.standard_normal(o.shape)
    dS = tuple(rng.standard_normal(x.shape) for x in _flat(S))
    dS = dS if isinstance(S, tuple) else dS[0]
    full = op.backward(cache, do, dS)
    g2 = op.backward(c2, do[:, cut:], dS)
    g1 = op.backward(c1, do[:, :cut], g2["initial_state"])
    for n in inputs:
        if n == "initial_state":
            for a, b in zip(_flat(g1[n]), _flat(full[n])):
                assert_close(a, b, 1e-10, "dinitial_state")
        elif n == "u":
            assert_close(g1[n] + g2[n], full[n], 1e-10, "du")
        else:
            assert_close(np.concatenate([g1[n], g2[n]], axis=1), full[n], 1e-10, f"d{n}")


@pytest.mark.parametrize("method", METHODS)
def test_zero_gates_are_linear_attention(method, rng):
    """Log gates of exactly 0 (no decay) in every gated op give linear attention,
    and zero gates still get their gradient."""
    x = op_inputs("gla", rng, T=20)
    q, k, v, S0 = x["q"], x["k"], x["v"], x["initial_state"]
    ref, ref_S, ref_c = linear_attention.forward(q, k, v, initial_state=S0, method=method,
                                                 chunk_size=8)
    do = rng.standard_normal(ref.shape)
    ref_g = linear_attention.backward(ref_c, do)
    B, T, H, K = q.shape
    runs = [(gla, (q, k, v, np.zeros((B, T, H, K)))),
            (simple_gla, (q, k, v, np.zeros((B, T, H)))),
            (retention, (q, k, v))]
    for op, args in runs:
        kw = {"gamma": np.ones(H)} if op is retention else {}
        o, S, c = op.forward(*args, initial_state=S0, method=method, chunk_size=8, **kw)
        assert_close(o, ref, 1e-10, f"{op.__name__} o")
        assert_close(S, ref_S, 1e-10, f"{op.__name__} state")
        grads = op.backward(c, do)
        for n in ("q", "k", "v", "initial_state"):
            assert_close(grads[n], ref_g[n], 1e-10, f"{op.__name__} d{n}")
    # dg at g = 0 is the sensitivity of the loss to a small decay: equal in every form
    _, _, c = gla.forward(q, k, v, np.zeros((B, T, H, K)), initial_state=S0)
    _, _, c2 = gla.forward(q, k, v, np.zeros((B, T, H, K)), initial_state=S0, method=method,
                           chunk_size=8)
    assert_close(gla.backward(c2, do)["g"], gla.backward(c, do)["g"], 1e-10, "dg at g = 0")


@pytest.mark.parametrize("method", METHODS)
def test_normalized_linear_attention_is_the_ratio(method, rng):
    """o_t = (scale S_t^T q_t) / (scale q_t·z_t), z_t = z_{t−1} + k_t, state (S, z)."""
    x = op_inputs("linear_attention_normalized", rng, T=17)
    q, k, v, (S0, z0) = x["q"], x["k"], x["v"], x["initial_state"]
    o, (S, z), _ = linear_attention.forward(q, k, v, normalize=True, initial_state=(S0, z0),
                                            method=method, chunk_size=8)
    Sc = S0 + np.einsum("bthk,bthv->bhkv", k, v)
    zc = np.cumsum(k, axis=1) + z0[:, None]
    Sc_t = S0[:, None] + np.cumsum(np.einsum("bthk,bthv->bthkv", k, v), axis=1)
    ref = np.einsum("bthkv,bthk->bthv", Sc_t, q) / np.einsum("bthk,bthk->bth", zc, q)[..., None]
    assert_close(o, ref, 1e-10, "o")
    assert_close(S, Sc, 1e-10, "S")
    assert_close(z, zc[:, -1], 1e-10, "z")
    # the scale cancels
    o2, _, _ = linear_attention.forward(q, k, v, normalize=True, initial_state=(S0, z0),
                                        scale=3.0, method=method, chunk_size=8)
    assert_close(o2, o, 1e-12, "scale-free")


def test_normalized_state_is_a_pair_and_none_is_zeros(rng):
    x = op_inputs("linear_attention_normalized", rng, T=5)
    B, _, H, K = x["q"].shape
    Vd = x["v"].shape[-1]
    o, state, cache = linear_attention.forward(x["q"], x["k"], x["v"], normalize=True)
    assert isinstance(state, tuple) and [s.shape for s in state] == [(B, H, K, Vd), (B, H, K)]
    o2, _, _ = linear_attention.forward(x["q"], x["k"], x["v"], normalize=True,
                                        initial_state=(np.zeros((B, H, K, Vd)),
                                                       np.zeros((B, H, K))))
    np.testing.assert_array_equal(o, o2)
    grads = linear_attention.backward(cache, np.ones(o.shape), (None, None))
    assert [g.shape for g in grads["initial_state"]] == [(B, H, K, Vd), (B, H, K)]
    with pytest.raises(TypeError, match="initial_state: expected a tuple of 2 arrays"):
        linear_attention.forward(x["q"], x["k"], x["v"], normalize=True,
                                 initial_state=np.zeros((B, H, K, Vd)))
    with pytest.raises(TypeError, match="normalize: expected True or False"):
        linear_attention.forward(x["q"], x["k"], x["v"], normalize="yes")


def test_retention_decays_and_gamma(rng):
    np.testing.assert_array_equal(retention.decays(3), [1 - 2.0 ** -5, 1 - 2.0 ** -6,
                                                        1 - 2.0 ** -7])
    x = op_inputs("retention", rng, T=9, H=3)
    q, k, v = x["q"], x["k"], x["v"]
    B, T, H, _ = q.shape
    # the default is simple GLA with g = log γ_h
    o, S, c = retention.forward(q, k, v)
    g = np.broadcast_to(np.log(retention.decays(H)), (B, T, H)).copy()
    o_ref, S_ref, _ = simple_gla.forward(q, k, v, g)
    assert_close(o, o_ref, 1e-12, "o")
    assert_close(S, S_ref, 1e-12, "state")
    assert set(retention.backward(c, np.ones(o.shape))) == {"q", "k", "v", "initial_state"}
    # per-head decays passed in (lightning attention)
    gamma = np.array([0.5, 0.9, 1.0])
    o, _, _ = retention.forward(q, k, v, gamma=gamma, method="chunk", chunk_size=4)
    o_ref, _, _ = simple_gla.forward(q, k, v, np.broadcast_to(np.log(gamma), (B, T, H)).copy())
    assert_close(o, o_ref, 1e-10, "gamma")
    with pytest.raises(ValueError, match=r"gamma: expected decays in \(0, 1\]"):
        retention.forward(q, k, v, gamma=np.array([0.5, 0.0, 0.9]))
    with pytest.raises(ValueError, match=r"gamma: expected shape \(H=3,\)"):
        retention.forward(q, k, v, gamma=np.array([0.5, 0.9]))


def test_rwkv6_bonus_reads_the_state_before_the_update(rng):
    """At t = 0 from a zero state only the bonus speaks: o_0 = scale (r_0·(u⊙k_0)) v_0."""
    x = op_inputs("rwkv6", rng, T=3)
    o, _, _ = rwkv6.forward(x["r"], x["k"], x["v"], x["w"], x["u"], scale=1.0)
    bonus = np.sum(x["r"][:, 0] * x["u"] * x["k"][:, 0], axis=-1)
    np.testing.assert_allclose(o[:, 0], bonus[..., None] * x["v"][:, 0], rtol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_nan_in_q_stays_causal(method, rng):
    """A NaN in q at step t: outputs before t and the other batch rows stay finite."""
    for name in ("gla", "rwkv6", "simple_gla"):
        op, _ = OPS[name]
        x = op_inputs(name, rng, T=20)
        first = "r" if name == "rwkv6" else "q"
        x[first] = x[first].copy()
        x[first][0, 11, 1, 2] = np.nan
        o, S, _ = op.forward(**x, method=method, chunk_size=8)
        assert np.all(np.isfinite(o[0, :11])) and np.all(np.isfinite(o[1]))
        assert np.all(np.isnan(o[0, 11, 1]))
        assert np.all(np.isfinite(S))


def test_inputs_and_gradients_are_not_mutated(rng):
    for name in ("rwkv6", "linear_attention_normalized"):
        op, kwargs = OPS[name]
        x = op_inputs(name, rng, T=10)
        copies = {n: tuple(a.copy() for a in _flat(v)) for n, v in x.items()}
        for method in METHODS:
            o, S, c = op.forward(**x, method=method, chunk_size=4, **kwargs)
            do = rng.standard_normal(o.shape)
            dS = tuple(rng.standard_normal(s.shape) for s in _flat(S))
            dS = dS if isinstance(S, tuple) else dS[0]
            do_copy, dS_copy = do.copy(), tuple(a.copy() for a in _flat(dS))
            op.backward(c, do, dS)
            np.testing.assert_array_equal(do, do_copy)
            for a, b in zip(_flat(dS), dS_copy):
                np.testing.assert_array_equal(a, b)
        for n, v in x.items():
            for a, b in zip(_flat(v), copies[n]):
                np.testing.assert_array_equal(a, b)


def test_bad_input_is_refused(rng):
    x = op_inputs("gla", rng, T=4)
    q, k, v, g = x["q"], x["k"], x["v"], x["g"]
    with pytest.raises(ValueError, match="g: expected a 4-d array, got shape"):
        gla.forward(q, k, v, g[..., 0])
    with pytest.raises(ValueError, match="g: expected a 3-d array, got shape"):
        simple_gla.forward(q, k, v, g)
    with pytest.raises(ValueError, match="g: expected shape"):
        gla.forward(q, k, v, g[:, :3])
    with pytest.raises(ValueError, match="u: expected shape"):
        rwkv6.forward(q, k, v, g, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="method: expected one of"):
        gla.forward(q, k, v, g, method="fast")
    with pytest.raises(ValueError, match="chunk_size: expected a positive integer"):
        gla.forward(q, k, v, g, method="chunk", chunk_size=0)
    with pytest.raises(TypeError, match="mixed precisions"):
        gla.forward(q, k, v, g.astype(np.float32))
    _, _, cache = simple_gla.forward(q, k, v, g[..., 0])
    with pytest.raises(TypeError, match="cache: expected the cache returned by ops.gla"):
        gla.backward(cache, None)
    _, _, cache = gla.forward(q, k, v, g)
    with pytest.raises(ValueError, match="do: expected shape"):
        gla.backward(cache, np.zeros((2, 4, 2, 5)))


# ---------------------------------------------------------------------------
# golden values
# ---------------------------------------------------------------------------

def linspace_inputs(B=1, T=6, H=2, K=3, V=2):
    n = B * T * H
    q = np.linspace(-1.0, 1.0, n * K).reshape(B, T, H, K)
    k = np.linspace(0.5, -0.7, n * K).reshape(B, T, H, K)
    v = np.linspace(-0.3, 0.9, n * V).reshape(B, T, H, V)
    g = np.linspace(-0.9, -0.05, n * K).reshape(B, T, H, K)
    u = np.linspace(0.2, -0.4, H * K).reshape(H, K)
    S0 = np.linspace(0.1, -0.2, B * H * K * V).reshape(B, H, K, V)
    return q, k, v, g, u, S0


def loop_reference(q, k, v, a, u, S0, scale):
    """An independent loop over (b, h, t): a = multipliers (B, T, H, K)."""
    B, T, H, _ = q.shape
    o = np.zeros(v.shape)
    S_T = np.zeros(S0.shape)
    for b in range(B):
        for h in range(H):
            S = S0[b, h].copy()
            for t in range(T):
                kv = np.outer(k[b, t, h], v[b, t, h])
                if u is not None:
                    o[b, t, h] = scale * (S + u[h][:, None] * kv).T @ q[b, t, h]
                S = a[b, t, h][:, None] * S + kv
                if u is None:
                    o[b, t, h] = scale * S.T @ q[b, t, h]
            S_T[b, h] = S
    return o, S_T


# o[0, -1, -1, :] and Σ o from loop_reference on linspace_inputs() (computed once)
GOLDEN = {
    "linear_attention": ([-1.98680041945632, -2.114273001532629], -7.080194601919819),
    "retention": ([-1.9450226742872747, -2.0700431930859033], -6.876361468370061),
    "simple_gla": ([-1.5837727434225553, -1.6925017976658117], -5.560861179823208),
    "gla": ([-1.6096505814894309, -1.7200776994999845], -5.6457216267934545),
    "rwkv6": ([-0.4204413544962282, -0.45848386773389227], -1.214601217742426),
}


def _golden_call(name, method):
    q, k, v, g, u, S0 = linspace_inputs()
    kw = {"scale": 0.6, "initial_state": S0, "method": method, "chunk_size": 4}
    if name == "linear_attention":
        return linear_attention.forward(q, k, v, **kw)[0]
    if name == "retention":
        return retention.forward(q, k, v, **kw)[0]
    if name == "simple_gla":
        return simple_gla.forward(q, k, v, g[..., 0], **kw)[0]
    if name == "gla":
        return gla.forward(q, k, v, g, **kw)[0]
    return rwkv6.forward(q, k, v, g, u, **kw)[0]


def _loop_for(name):
    q, k, v, g, u, S0 = linspace_inputs()
    a = np.ones(q.shape)
    if name == "retention":
        a = a * (1 - 2.0 ** (-5.0 - np.arange(2)))[:, None]
    elif name == "simple_gla":
        a = a * np.exp(g[..., :1])
    elif name in ("gla", "rwkv6"):
        a = np.exp(g)
    return loop_reference(q, k, v, a, u if name == "rwkv6" else None, S0, 0.6)


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_values(name):
    o_loop, _ = _loop_for(name)
    last, total = GOLDEN[name]
    np.testing.assert_allclose(o_loop[0, -1, -1], last, rtol=1e-12)
    np.testing.assert_allclose(o_loop.sum(), total, rtol=1e-12)
    for method in METHODS:
        o = _golden_call(name, method)
        assert rel_rms(o, o_loop) < 1e-12, method
        np.testing.assert_allclose(o[0, -1, -1], last, rtol=1e-10)
