"""ops.delta_rule and ops.gated_delta_rule: the recurrent form is the few-line
loop of the equations; the parallel and chunk (WY/UT) forms equal it forward
and in every gradient; gradient checks of every form; β at 0 and 2, gates at 0
and −20 per step; float32 stability at T = 256 under strong decay;
split-resume; the β = 2 reflection that lets DeltaNet track parity; golden
values from np.linspace inputs.

Tolerances (DESIGN §6): float64 agreement ≤ 1e-10 relative RMS, float32 ≤ 1e-4,
gradient checks < 1e-6.
"""

import numpy as np
import pytest

from minirec import gradcheck
from minirec.ops import delta_rule, gated_delta_rule
from tests.conftest import assert_close, readonly

OPS = {"delta_rule": delta_rule, "gated_delta_rule": gated_delta_rule}
FORMS = ("parallel", "chunk")


def make(rng, B=2, T=37, H=3, K=5, V=7, *, gated=True, g=None, beta=None,
         dtype=np.float64):
    """Inputs of the two ops: keys L2-normalised (as DeltaNet does, so β ∈ [0, 2]
    keeps the state bounded), β ~ U(0, 2), g ~ −U(0, 1), a random initial state.
    ``g``/``beta`` given as a number fill the whole array with it."""
    q = rng.standard_normal((B, T, H, K))
    k = rng.standard_normal((B, T, H, K))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    x = {"q": q, "k": k, "v": rng.standard_normal((B, T, H, V))}
    if gated:
        x["g"] = -rng.uniform(0, 1, (B, T, H)) if g is None else np.full((B, T, H), float(g))
    x["beta"] = rng.uniform(0, 2, (B, T, H)) if beta is None else np.full((B, T, H), float(beta))
    x["initial_state"] = rng.standard_normal((B, H, K, V))
    return {n: a.astype(dtype) for n, a in x.items()}


def op_of(x):
    return gated_delta_rule if "g" in x else delta_rule


def run(x, do=None, dstate=None, **kw):
    """forward and backward; returns (o, S_T, grads)."""
    x = dict(x)
    S0 = x.pop("initial_state")
    op = op_of(x)
    o, S_T, cache = op.forward(**x, initial_state=S0, **kw)
    return o, S_T, op.backward(cache, do, dstate)


def upstream(rng, x):
    B, T, H, K = x["q"].shape
    V = x["v"].shape[-1]
    return rng.standard_normal((B, T, H, V)), rng.standard_normal((B, H, K, V))


def loop(q, k, v, g, beta, S0, scale):
    """The equations, one (batch, head) at a time, independently of the module:
    S' = e^{g_t} S, S = S' + β_t k_t (v_t − S'^T k_t)^T, o_t = scale S^T q_t."""
    B, T, H, K = q.shape
    o = np.zeros(v.shape)
    S_T = np.zeros((B, H, K, v.shape[-1]))
    for b in range(B):
        for h in range(H):
            S = S0[b, h].copy()
            for t in range(T):
                S = S * (1.0 if g is None else np.exp(g[b, t, h]))
                S = S + beta[b, t, h] * np.outer(k[b, t, h], v[b, t, h] - S.T @ k[b, t, h])
                o[b, t, h] = scale * S.T @ q[b, t, h]
            S_T[b, h] = S
    return o, S_T


def agree(x, method, chunk_size, rng, rtol=1e-10):
    """``method`` equals ``recurrent``: outputs, final state, every gradient."""
    do, dstate = upstream(rng, x)
    ref_o, ref_S, ref_g = run(x, do, dstate)
    o, S, g = run(x, do, dstate, method=method, chunk_size=chunk_size)
    assert_close(o, ref_o, rtol, f"{method} o")
    assert_close(S, ref_S, rtol, f"{method} final state")
    assert set(g) == set(ref_g)
    for name in ref_g:
        assert_close(g[name], ref_g[name], rtol, f"{method} d{name}")


# ---------------------------------------------------------------------------
# the definition
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("gated", [False, True])
def test_recurrent_is_the_loop(gated, rng):
    x = make(rng, T=9, gated=gated)
    o, S_T, _ = op_of(x).forward(**{n: a for n, a in x.items() if n != "initial_state"},
                                 initial_state=x["initial_state"])
    ref_o, ref_S = loop(x["q"], x["k"], x["v"], x.get("g"), x["beta"], x["initial_state"],
                        5 ** -0.5)
    np.testing.assert_allclose(o, ref_o, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(S_T, ref_S, rtol=1e-12, atol=1e-14)


def golden_inputs(T=11, B=1, H=2, K=3, V=4):
    """Smooth deterministic inputs from np.linspace (keys normalised)."""
    n = B * T * H
    q = np.linspace(-1, 1, n * K).reshape(B, T, H, K)
    k = np.cos(np.linspace(0, 7, n * K)).reshape(B, T, H, K)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = np.linspace(-2, 3, n * V).reshape(B, T, H, V)
    g = np.linspace(-0.9, 0, n).reshape(B, T, H)
    beta = np.linspace(0, 2, n).reshape(B, T, H)
    S0 = np.linspace(-0.5, 0.5, B * H * K * V).reshape(B, H, K, V)
    return q, k, v, g, beta, S0


@pytest.mark.parametrize("method", delta_rule.METHODS)
def test_golden_values(method):
    """Every method, both ops, against the loop on np.linspace inputs; a few
    numbers of the loop itself written down, so that a drift of both shows."""
    q, k, v, g, beta, S0 = golden_inputs()
    for gg, op, args in ((None, delta_rule, (q, k, v, beta)),
                         (g, gated_delta_rule, (q, k, v, g, beta))):
        ref_o, ref_S = loop(q, k, v, gg, beta, S0, 3 ** -0.5)
        o, S_T, _ = op.forward(*args, initial_state=S0, method=method, chunk_size=4)
        assert_close(o, ref_o, 1e-12, f"{op.__name__} o")
        assert_close(S_T, ref_S, 1e-12, f"{op.__name__} S_T")
    ref_o, ref_S = loop(q, k, v, None, beta, S0, 3 ** -0.5)
    np.testing.assert_allclose(ref_o[0, -1, 1], GOLDEN_O, rtol=1e-9)
    np.testing.assert_allclose(ref_S.sum(axis=(-2, -1))[0], GOLDEN_S_SUM, rtol=1e-9)
    ref_o, _ = loop(q, k, v, g, beta, S0, 3 ** -0.5)
    np.testing.assert_allclose(ref_o[0, -1, 1], GOLDEN_O_GATED, rtol=1e-9)


# the loop's o[0, −1, 1], Σ S_T per head, and the gated o[0, −1, 1] (float64, written down once)
GOLDEN_O = [2.941570151376826, 2.974486441722676, 3.0074027320685235, 3.040319022414371]
GOLDEN_S_SUM = [26.250464226186846, 21.071849622366795]
GOLDEN_O_GATED = [2.8366599981052323, 2.88324633179383, 2.9298326654824276, 2.976418999171025]


# ---------------------------------------------------------------------------
# every form equals the definition
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [1, 37, 64, 100])
@pytest.mark.parametrize("chunk_size", [8, 16, 64])
def test_chunk_equals_recurrent(gated, T, chunk_size, rng):
    agree(make(rng, B=1, T=T, H=2, gated=gated), "chunk", chunk_size, rng)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("T", [1, 37, 64, 100])
def test_parallel_equals_recurrent(gated, T, rng):
    agree(make(rng, B=1, T=T, H=2, gated=gated), "parallel", 64, rng)


@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("beta", [0.0, 2.0])
@pytest.mark.parametrize("g", [0.0, -20.0, None])
def test_extreme_beta_and_gates(method, beta, g, rng):
    """β exactly 0 and 2; log gates exactly 0 and −20 per step (and random)."""
    agree(make(rng, T=37, beta=beta, g=g), method, 16, rng)
    if g is None:
        agree(make(rng, T=37, beta=beta, gated=False), method, 16, rng)


@pytest.mark.parametrize("method", delta_rule.METHODS)
def test_beta_zero_only_decays(method, rng):
    """β = 0 writes nothing: o_t = scale e^{Γ_t} S0^T q_t, S_T = e^{Γ_T} S0."""
    x = make(rng, T=9, beta=0.0)
    o, S_T, _ = run(x, method=method, chunk_size=4)
    G = np.cumsum(x["g"], axis=1)                                      # (B, T, H)
    ref = 5 ** -0.5 * np.exp(G)[..., None] * np.einsum("bhkv,bthk->bthv",
                                                       x["initial_state"], x["q"])
    assert_close(o, ref, 1e-12, "o")
    assert_close(S_T, np.exp(G[:, -1])[..., None, None] * x["initial_state"], 1e-12, "S_T")


@pytest.mark.parametrize("method", delta_rule.METHODS)
def test_zero_gates_are_the_delta_rule(method, rng):
    x = make(rng, T=20, g=0.0)
    do, dstate = upstream(rng, x)
    o, S, g = run(x, do, dstate, method=method, chunk_size=8)
    plain = {n: a for n, a in x.items() if n != "g"}
    o2, S2, g2 = run(plain, do, dstate, method=method, chunk_size=8)
    assert_close(o, o2, 1e-13, "o")
    assert_close(S, S2, 1e-13, "S_T")
    assert set(g2) == {"q", "k", "v", "beta", "initial_state"}
    for name in g2:
        assert_close(g[name], g2[name], 1e-13, f"d{name}")


# ---------------------------------------------------------------------------
# gradient checks of every form
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", delta_rule.METHODS)
@pytest.mark.parametrize("name", OPS)
def test_gradcheck(method, name, rng):
    """Central differences, float64, relative error < 1e-6 for every input
    (the initial state included); T = 7 in chunks of 3 (the last one padded)."""
    x = make(rng, B=2, T=7, H=2, K=3, V=4, gated=name == "gated_delta_rule")
    report = gradcheck.check_op(OPS[name], x, method=method, chunk_size=3)
    assert report.passed, str(report)
    assert set(report.errors) == set(x)
    assert max(report.errors.values()) < 1e-6


# ---------------------------------------------------------------------------
# float32 stability at T = 256
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", FORMS)
@pytest.mark.parametrize("beta", [None, 2.0])
def test_float32_strong_decay_stays_accurate(method, beta, rng):
    """Log gate −20 per step over T = 256 (Γ reaches −5120 within one block of
    the parallel form): float32 equals the float64 definition to 1e-4 relative
    RMS in the outputs and every gradient."""
    x = make(rng, B=1, T=256, H=2, g=-20.0, beta=beta)
    do, dstate = upstream(rng, x)
    ref_o, ref_S, ref_g = run(x, do, dstate)
    x32 = {n: a.astype(np.float32) for n, a in x.items()}
    o, S, g = run(x32, do.astype(np.float32), dstate.astype(np.float32), method=method)
    assert o.dtype == S.dtype == np.float32
    assert_close(o, ref_o, 1e-4, "o")
    assert_close(S, ref_S, 1e-4, "S_T")
    for name in ref_g:
        assert g[name].dtype == np.float32
        assert_close(g[name], ref_g[name], 1e-4, f"d{name}")


@pytest.mark.parametrize("method", FORMS)
def test_float32_gates_around_minus_100_stay_finite(method, rng):
    """Gates around −100 (as a gate normaliser makes them): every result finite;
    outputs and the gradients of q, k, v, β to 1e-4. ``dg`` and ``d initial_state``
    are of order e^{−100}, below float32's normal range (so float32's own
    recurrent form has errors of 1e-3 there): checked against float64 in
    absolute terms, scaled by the size of the other gradients."""
    x = make(rng, B=1, T=256, H=2)
    x["g"] = -100 + rng.uniform(-5, 5, x["g"].shape)
    do, dstate = upstream(rng, x)
    ref_o, ref_S, ref_g = run(x, do, dstate)
    x32 = {n: a.astype(np.float32) for n, a in x.items()}
    o, S, g = run(x32, do.astype(np.float32), dstate.astype(np.float32), method=method)
    for name, a in [("o", o), ("S_T", S)] + list(g.items()):
        assert np.all(np.isfinite(a)), name
    assert_close(o, ref_o, 1e-4, "o")
    assert_close(S, ref_S, 1e-4, "S_T")
    for name in ("q", "k", "v", "beta"):
        assert_close(g[name], ref_g[name], 1e-4, f"d{name}")
    size = np.max(np.abs(ref_g["q"]))
    for name in ("g", "initial_state"):
        assert np.max(np.abs(g[name] - ref_g[name])) <= 1e-6 * size, name


# ---------------------------------------------------------------------------
# split-resume
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", delta_rule.METHODS)
@pytest.mark.parametrize("gated", [False, True])
def test_split_resume(method, gated, rng):
    """Two calls, the second from the first's final state, equal one call —
    forward, and backward with the second call's d initial_state as the first
    call's dstate."""
    x = make(rng, T=37, gated=gated)
    do, dstate = upstream(rng, x)
    o, S, g = run(x, do, dstate, method=method, chunk_size=8)
    cut = 20
    first = {n: (a if n == "initial_state" else a[:, :cut]) for n, a in x.items()}
    o1, S1, _ = run(first, method=method, chunk_size=8)
    second = {n: (S1 if n == "initial_state" else a[:, cut:]) for n, a in x.items()}
    o2, S2, g2 = run(second, do[:, cut:], dstate, method=method, chunk_size=8)
    _, _, g1 = run(first, do[:, :cut], g2["initial_state"], method=method, chunk_size=8)
    assert_close(np.concatenate([o1, o2], axis=1), o, 1e-12, "o")
    assert_close(S2, S, 1e-12, "S_T")
    for name in g:
        if name == "initial_state":
            assert_close(g1[name], g[name], 1e-12, "dinitial_state")
        else:
            assert_close(np.concatenate([g1[name], g2[name]], axis=1), g[name], 1e-12,
                         f"d{name}")


# ---------------------------------------------------------------------------
# β = 2: reflections, and parity
# ---------------------------------------------------------------------------

def test_beta_two_is_a_reflection(rng):
    """With v = 0 and S0 = I (K = V), one step returns the transition
    I − β k k^T itself; at β = 2 and ‖k‖ = 1 it is a reflection: orthogonal,
    symmetric, eigenvalues (−1, 1, …, 1), k ↦ −k."""
    K = 5
    k = rng.standard_normal((1, 1, 1, K))
    k /= np.linalg.norm(k)
    zeros = np.zeros((1, 1, 1, K))
    _, M, _ = delta_rule.forward(zeros, k, zeros, np.full((1, 1, 1), 2.0),
                                 initial_state=np.eye(K)[None, None])
    M = M[0, 0]
    np.testing.assert_allclose(M, M.T, atol=1e-15)
    np.testing.assert_allclose(M @ M.T, np.eye(K), atol=1e-14)
    eig = np.sort(np.linalg.eigvalsh(M))
    np.testing.assert_allclose(eig, [-1.0] + [1.0] * (K - 1), atol=1e-14)
    np.testing.assert_allclose(M @ k[0, 0, 0], -k[0, 0, 0], atol=1e-15)


@pytest.mark.parametrize("method", delta_rule.METHODS)
def test_beta_two_tracks_parity(method, rng):
    """A fixed unit key, β_t = 2·bit_t, v = 0, S0 = k 1^T: every 1-bit reflects
    k, so reading with q = k gives (−1)^{parity of the bits so far} · scale.
    (β ≤ 1 only shrinks the state: no sign flip, no parity.)"""
    B, T, K, V = 4, 29, 5, 3
    bits = rng.integers(0, 2, (B, T, 1))
    k = np.broadcast_to(rng.standard_normal(K), (B, T, 1, K)).copy()
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    S0 = k[:, 0, :, :, None] * np.ones((B, 1, 1, V))
    o, _, _ = delta_rule.forward(k, k, np.zeros((B, T, 1, V)), 2.0 * bits,
                                 initial_state=S0, method=method, chunk_size=8)
    parity = np.cumsum(bits, axis=1) % 2                               # (B, T, 1)
    expected = (1 - 2 * parity)[..., None] * K ** -0.5 * np.ones(V)
    np.testing.assert_allclose(o, expected, atol=1e-12)


# ---------------------------------------------------------------------------
# API details
# ---------------------------------------------------------------------------

def test_default_scale_and_zero_initial_state(rng):
    x = make(rng, T=6)
    a, Sa, _ = gated_delta_rule.forward(x["q"], x["k"], x["v"], x["g"], x["beta"])
    b, Sb, _ = gated_delta_rule.forward(x["q"], x["k"], x["v"], x["g"], x["beta"],
                                        scale=5 ** -0.5, initial_state=np.zeros_like(Sa))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(Sa, Sb)


@pytest.mark.parametrize("method", delta_rule.METHODS)
def test_inputs_and_upstream_gradients_are_not_mutated(method, rng):
    x = make(rng, T=10)
    do, dstate = upstream(rng, x)
    copies = {n: a.copy() for n, a in x.items()}
    readonly(*x.values(), do, dstate)
    o, S, g = run(x, do, dstate, method=method, chunk_size=4)   # would raise on a write
    for n, a in x.items():
        np.testing.assert_array_equal(a, copies[n])
    assert set(g) == {"q", "k", "v", "g", "beta", "initial_state"}
    for n, a in g.items():
        assert a.shape == copies[n].shape and a.dtype == np.float64, n


def test_bad_input_is_refused(rng):
    x = make(rng, T=5)
    q, k, v, g, beta = x["q"], x["k"], x["v"], x["g"], x["beta"]
    with pytest.raises(ValueError, match=r"beta: expected shape"):
        delta_rule.forward(q, k, v, beta[:, :, :2])
    with pytest.raises(ValueError, match=r"g: expected shape"):
        gated_delta_rule.forward(q, k, v, g[:, :4], beta)
    with pytest.raises(ValueError, match=r"method: expected one of"):
        delta_rule.forward(q, k, v, beta, method="fused")
    with pytest.raises(ValueError, match=r"chunk_size: expected a positive integer"):
        delta_rule.forward(q, k, v, beta, method="chunk", chunk_size=0)
    with pytest.raises(TypeError, match=r"mixed precisions"):
        delta_rule.forward(q, k, v, beta.astype(np.float32))
    with pytest.raises(ValueError, match=r"initial_state: expected shape"):
        delta_rule.forward(q, k, v, beta, initial_state=x["initial_state"][..., :3])
    _, _, cache = delta_rule.forward(q, k, v, beta)
    with pytest.raises(TypeError, match=r"cache: expected the cache"):
        gated_delta_rule.backward(cache, None)
    with pytest.raises(ValueError, match=r"do: expected shape"):
        delta_rule.backward(cache, np.zeros((2, 5, 3, 6)))
    with pytest.raises(ValueError, match=r"dstate: expected shape"):
        delta_rule.backward(cache, None, np.zeros((2, 3, 5, 6)))


@pytest.mark.parametrize("name", ["q", "k", "v", "g", "beta"])
def test_nan_reaches_the_outputs_causally(name, rng):
    """A NaN in one input at (b=1, t=9, h=0) makes the same outputs non-finite in
    every method as in the definition: none before step 9, none in other rows
    (the chunk forms keep a later step's NaN out of earlier rows of a chunk)."""
    x = make(rng, T=20, H=2)
    x[name][1, 9, 0] = np.nan
    ref, ref_S, _ = run(x)
    assert not np.isfinite(ref[1, 9, 0]).all() and np.isfinite(ref[:, :9]).all()
    assert np.isfinite(ref[0]).all()
    for method in FORMS:
        o, S, _ = run(x, method=method, chunk_size=8)
        np.testing.assert_array_equal(np.isfinite(o), np.isfinite(ref), err_msg=method)
        np.testing.assert_array_equal(np.isfinite(S), np.isfinite(ref_S), err_msg=method)


@pytest.mark.parametrize("method", delta_rule.METHODS)
def test_empty_batch(method, rng):
    x = {n: a[:0] for n, a in make(rng, T=5).items()}
    o, S, g = run(x, method=method, chunk_size=2)
    assert o.shape == (0, 5, 3, 7) and S.shape == (0, 3, 5, 7)
    assert {n: a.shape for n, a in g.items()} == {n: a.shape for n, a in x.items()}
