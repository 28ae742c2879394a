"""ops.mlstm: the three forms (recurrent, parallel, chunk) against the definition,
forward and every gradient (the initial state's three parts included); gradient
checks of each form; split-resume; golden values from an independent loop;
extreme gates in float32; the stabiliser's invariance; NaN causality; bad input."""

import numpy as np
import pytest

from minirec import gradcheck
from minirec._math import log_sigmoid
from minirec.ops import mlstm, softmax_scan
from minirec.ops.mlstm import recurrent
from tests.conftest import assert_close, readonly

F64_TOL = 1e-10   # float64 agreement with the definition, relative RMS (DESIGN §6)
F32_TOL = 1e-4    # float32 against the float64 definition, relative RMS
GRAD_TOL = 1e-6   # gradient check, float64 (DESIGN §6)
FORMS = [("parallel", 64)] + [("chunk", c) for c in (8, 16, 64)]


def make_inputs(rng, B=2, T=37, H=3, K=5, V=7, dtype=np.float64, *, i_loc=0.0, i_scale=2.0,
                f_loc=2.0, f_scale=2.0, state=True):
    """Random inputs; K ≠ V, neither a power of two. Defaults put both branches of
    both maxes in use (see test_random_inputs_exercise_every_branch)."""
    x = {"q": rng.standard_normal((B, T, H, K)), "k": rng.standard_normal((B, T, H, K)),
         "v": rng.standard_normal((B, T, H, V)),
         "i": i_loc + i_scale * rng.standard_normal((B, T, H)),
         "f": f_loc + f_scale * rng.standard_normal((B, T, H))}
    x["initial_state"] = ((rng.standard_normal((B, H, K, V)), rng.standard_normal((B, H, K)),
                           rng.standard_normal((B, H))) if state else None)
    return cast(x, dtype)


def cast(x, dtype):
    if isinstance(x, dict):
        return {k: cast(v, dtype) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(cast(v, dtype) for v in x)
    return None if x is None else np.asarray(x, dtype)


def upstream(rng, x, dtype=np.float64):
    B, T, H, _ = x["q"].shape
    K, V = x["k"].shape[-1], x["v"].shape[-1]
    dh = rng.standard_normal((B, T, H, V)).astype(dtype)
    dstate = tuple(rng.standard_normal(s).astype(dtype)
                   for s in ((B, H, K, V), (B, H, K), (B, H)))
    return dh, dstate


def run(x, dh, dstate, **kw):
    """Forward and backward; returns ``(h, state, grads)``."""
    h, state, cache = mlstm.forward(x["q"], x["k"], x["v"], x["i"], x["f"],
                                    initial_state=x["initial_state"], **kw)
    return h, state, mlstm.backward(cache, dh, dstate)


def flat(h, state, grads):
    """Every output and gradient, by name."""
    out = {"h": h, "C": state[0], "n": state[1], "m": state[2]}
    out.update({f"d{k}": grads[k] for k in "qkvif"})
    out.update(zip(("dC0", "dn0", "dm0"), grads["initial_state"]))
    return out


def assert_all_close(got, ref, tol, names=None):
    got, ref = flat(*got), flat(*ref)
    for name in names or ref:
        assert got[name].shape == ref[name].shape, name
        assert_close(got[name], ref[name], tol, name)


# ---------------------------------------------------------------------------
# the definition
# ---------------------------------------------------------------------------

def independent_loop(q, k, v, i, f, C0, n0, m0, scale):
    """The unstabilised recurrence, one (batch, head) at a time: C̄ = e^{m}C,
    h = C̄^T q̃ / max(|n̄·q̃|, 1); the final state rescaled by the running max."""
    B, T, H, _ = q.shape
    h = np.zeros(v.shape)
    C, n, m = np.zeros(C0.shape), np.zeros(n0.shape), np.zeros(m0.shape)
    for b in range(B):
        for hh in range(H):
            Cb, nb, mb = np.exp(m0[b, hh]) * C0[b, hh], np.exp(m0[b, hh]) * n0[b, hh], m0[b, hh]
            for t in range(T):
                lf = -np.log1p(np.exp(-f[b, t, hh]))
                Cb = np.exp(lf) * Cb + np.exp(i[b, t, hh]) * np.outer(k[b, t, hh], v[b, t, hh])
                nb = np.exp(lf) * nb + np.exp(i[b, t, hh]) * k[b, t, hh]
                mb = max(lf + mb, i[b, t, hh])
                qs = scale * q[b, t, hh]
                h[b, t, hh] = Cb.T @ qs / max(abs(nb @ qs), 1.0)
            C[b, hh], n[b, hh], m[b, hh] = np.exp(-mb) * Cb, np.exp(-mb) * nb, mb
    return h, (C, n, m)


def linspace_inputs():
    B, T, H, K, V = 1, 6, 2, 3, 4

    def ls(a, b, shape):
        return np.linspace(a, b, int(np.prod(shape))).reshape(shape)

    return {"q": ls(-1, 1, (B, T, H, K)), "k": ls(1.5, -0.5, (B, T, H, K)),
            "v": ls(-2, 2, (B, T, H, V)), "i": ls(-1, 2, (B, T, H)), "f": ls(3, -2, (B, T, H)),
            "initial_state": (ls(0.5, -0.5, (B, H, K, V)), ls(0.2, 1.0, (B, H, K)),
                              ls(-0.5, 0.5, (B, H)))}


@pytest.mark.parametrize("method, chunk_size", [("recurrent", 64), ("parallel", 64),
                                                ("chunk", 4), ("chunk", 2)])
def test_golden_values_from_an_independent_loop(method, chunk_size):
    """np.linspace inputs (both branches of both maxes are taken at some step);
    the loop above is the reference, and a few of its values are pinned."""
    x = linspace_inputs()
    ref_h, ref_state = independent_loop(*(x[k] for k in "qkvif"), *x["initial_state"],
                                        scale=3 ** -0.5)
    np.testing.assert_allclose(ref_h[0, -1], [
        [-1.5800503435466913, -1.6658869430277032, -1.7517235425087152, -1.8375601419897274],
        [-1.7651332406603075, -1.8506523956206837, -1.9361715505810604, -2.021690705541437]],
        rtol=1e-13)
    np.testing.assert_allclose(ref_state[2], [[1.727272727272727, 2.0]], rtol=1e-14)
    h, state, _ = mlstm.forward(*(x[k] for k in "qkvif"), initial_state=x["initial_state"],
                                method=method, chunk_size=chunk_size)
    np.testing.assert_allclose(h, ref_h, rtol=1e-12, atol=1e-14)
    for got, ref in zip(state, ref_state):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def test_random_inputs_exercise_every_branch(rng):
    """The agreement tests below use inputs on which both branches of
    max(|d|, e^{−m}) and of max(log σ(f) + m_{t−1}, i) are taken, so a wrong
    branch's gradient cannot pass unnoticed."""
    x = make_inputs(rng)
    _, _, cache = mlstm.forward(*(x[k] for k in "qkvif"), initial_state=x["initial_state"])
    c = cache.engine.form
    d_branch = np.abs(c.d) >= recurrent.floor(c.m[:, 1:])
    forget = -np.log1p(np.exp(-x["f"])) + c.m[:, :-1] >= x["i"]
    assert 0.1 < d_branch.mean() < 0.9 and 0.1 < forget.mean() < 0.9


# ---------------------------------------------------------------------------
# every form equals the definition
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 37, 64, 100])
@pytest.mark.parametrize("method, chunk_size", FORMS)
def test_forms_match_definition(method, chunk_size, T):
    rng = np.random.default_rng(T)
    x = make_inputs(rng, T=T)
    dh, dstate = upstream(rng, x)
    ref = run(x, dh, dstate)
    got = run(x, dh, dstate, method=method, chunk_size=chunk_size)
    assert_all_close(got, ref, F64_TOL)


@pytest.mark.parametrize("method, chunk_size", [("recurrent", 64)] + FORMS)
def test_gates_exactly_zero(method, chunk_size, rng):
    """i = f = 0 and m0 = 0: m stays 0 (max(log ½, 0)), so C_t = ½ C_{t−1} + k_t v_t^T."""
    x = make_inputs(rng, T=37)
    x["i"] = np.zeros_like(x["i"])
    x["f"] = np.zeros_like(x["f"])
    C0, n0, _ = x["initial_state"]
    x["initial_state"] = (C0, n0, np.zeros_like(x["initial_state"][2]))
    dh, dstate = upstream(rng, x)
    got = run(x, dh, dstate, method=method, chunk_size=chunk_size)
    C = 0.5 ** 37 * C0 + np.einsum("t,bthk,bthv->bhkv", 0.5 ** np.arange(36, -1, -1),
                                   x["k"], x["v"])
    assert_close(got[1][0], C, F64_TOL, "C")
    np.testing.assert_array_equal(got[1][2], 0.0)
    assert_all_close(got, run(x, dh, dstate), F64_TOL)


@pytest.mark.parametrize("method, chunk_size", FORMS)
def test_a_tie_in_the_stabiliser_goes_to_the_forget_branch(method, chunk_size, rng):
    """i_0 = log σ(f_0) + m0 exactly: m_0 = max(log σ(f_0) + m0, i_0) is a tie, and
    every form sends ∂L/∂m_0 the same way (to m0 and f, the earlier argument)."""
    x = make_inputs(rng, T=1)
    C0, n0, _ = x["initial_state"]
    x["initial_state"] = (C0, n0, np.zeros_like(x["initial_state"][2]))
    x["i"] = log_sigmoid(x["f"])              # bit for bit what the forms compute
    dh, dstate = upstream(rng, x)
    ref = run(x, dh, dstate)
    assert np.all(ref[1][2] == x["i"][:, 0])  # the tie holds exactly
    assert_all_close(run(x, dh, dstate, method=method, chunk_size=chunk_size), ref, F64_TOL)


@pytest.mark.parametrize("method, chunk_size", FORMS)
def test_strong_decay_matches_definition(method, chunk_size, rng):
    """log σ(f) ≈ −20 per step: every earlier token is forgotten to e^{−20}."""
    x = make_inputs(rng, T=100, f_loc=-20.0, f_scale=1.0)
    dh, dstate = upstream(rng, x)
    assert_all_close(run(x, dh, dstate, method=method, chunk_size=chunk_size),
                     run(x, dh, dstate), F64_TOL)


# ---------------------------------------------------------------------------
# gradient checks of each form
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, chunk_size", [("recurrent", 64), ("parallel", 64),
                                                ("chunk", 3)])
def test_gradcheck(method, chunk_size):
    """Central differences, float64, every input including the three parts of the
    initial state (T = 7 with chunks of 3: a padded last chunk)."""
    x = make_inputs(np.random.default_rng(3), B=2, T=7, H=2, K=3, V=4)
    report = gradcheck.check_op(mlstm, x, method=method, chunk_size=chunk_size)
    assert report.passed, str(report)
    assert len(report.errors) == 8  # q, k, v, i, f, C0, n0, m0
    assert max(report.errors.values()) < GRAD_TOL


# ---------------------------------------------------------------------------
# split-resume
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, chunk_size", [("recurrent", 64), ("parallel", 64),
                                                ("chunk", 8)])
def test_split_resume(method, chunk_size, rng):
    """Two calls, the second starting from the first's final state, equal one
    call; and chaining the backwards (the second's initial-state gradient as the
    first's dstate) gives the one call's gradients."""
    x = make_inputs(rng, T=37)
    dh, dstate = upstream(rng, x)
    kw = {"method": method, "chunk_size": chunk_size}
    h, state, grads = run(x, dh, dstate, **kw)
    first = {k: x[k][:, :20] for k in "qkvif"}
    second = {k: x[k][:, 20:] for k in "qkvif"}
    first["initial_state"] = x["initial_state"]
    h1, s1, c1 = mlstm.forward(*(first[k] for k in "qkvif"),
                               initial_state=first["initial_state"], **kw)
    h2, s2, c2 = mlstm.forward(*(second[k] for k in "qkvif"), initial_state=s1, **kw)
    assert_close(np.concatenate([h1, h2], axis=1), h, F64_TOL, "h")
    for name, a, b in zip("Cnm", s2, state):
        assert_close(a, b, F64_TOL, name)
    g2 = mlstm.backward(c2, dh[:, 20:], dstate)
    g1 = mlstm.backward(c1, dh[:, :20], g2["initial_state"])
    for k in "qkvif":
        assert_close(np.concatenate([g1[k], g2[k]], axis=1), grads[k], F64_TOL, f"d{k}")
    for name, a, b in zip(("dC0", "dn0", "dm0"), g1["initial_state"], grads["initial_state"]):
        assert_close(a, b, F64_TOL, name)


# ---------------------------------------------------------------------------
# float32 and extreme gates
# ---------------------------------------------------------------------------

def _float32_against_float64(x, method, rng, names):
    dh, dstate = upstream(rng, x)
    ref = run(x, dh, dstate)
    got = run(cast(x, np.float32), dh.astype(np.float32), cast(dstate, np.float32),
              method=method, chunk_size=16)
    for name, a in flat(*got).items():
        assert a.dtype == np.float32, name
        assert np.all(np.isfinite(a)), name
    assert_all_close(got, ref, F32_TOL, names)


@pytest.mark.parametrize("method", mlstm.METHODS)
def test_float32_extreme_gates(method, rng):
    """f = −30, i = +30 (± noise), T = 256, float32: no overflow (every exponent
    after the stabiliser is ≤ 0; a RuntimeWarning would fail the test), every
    output and gradient finite, and the outputs and the well-conditioned gradients
    within 1e-4 of float64. (Here each h_t ≈ sign(q̃_t·k_t) v_t: it does not change
    when q_t or k_t is scaled, so dq and dk are differences of two O(1/|q̃·k|)
    terms that cancel, and their float32 values are rounding noise.)"""
    x = make_inputs(rng, B=1, T=256, H=2, i_loc=30.0, i_scale=1.0, f_loc=-30.0, f_scale=1.0)
    _float32_against_float64(x, method, rng,
                             ["h", "C", "n", "m", "dv", "di", "df", "dC0", "dn0"])


@pytest.mark.parametrize("method", mlstm.METHODS)
def test_float32_strong_decay_is_accurate(method, rng):
    """log σ(f) ≈ −20 per step over T = 256 (cumulative −5000: the parallel form
    sums each segment directly instead of subtracting cumulative sums), float32:
    every output and gradient within 1e-4 of float64."""
    x = make_inputs(rng, B=1, T=256, H=2, f_loc=-20.0, f_scale=1.0)
    _float32_against_float64(x, method, rng, None)


# ---------------------------------------------------------------------------
# the stabiliser (in place of an oracle: no xLSTM package is installed)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("delta", [-3.0, 5.0])
@pytest.mark.parametrize("method, chunk_size", [("recurrent", 64), ("parallel", 64),
                                                ("chunk", 8)])
def test_shifting_the_stabiliser_changes_no_output(method, chunk_size, delta, rng):
    """(C0 e^{−δ}, n0 e^{−δ}, m0 + δ) is the same memory: every h_t is unchanged,
    and so is the unstabilised final memory e^{m} C, e^{m} n."""
    x = make_inputs(rng, T=37)
    C0, n0, m0 = x["initial_state"]
    kw = {"method": method, "chunk_size": chunk_size}
    args = [x[k] for k in "qkvif"]
    h, (C, n, m), _ = mlstm.forward(*args, initial_state=(C0, n0, m0), **kw)
    hs, (Cs, ns, ms), _ = mlstm.forward(
        *args, initial_state=(C0 * np.exp(-delta), n0 * np.exp(-delta), m0 + delta), **kw)
    assert_close(hs, h, F64_TOL, "h")
    assert_close(np.exp(ms)[..., None, None] * Cs, np.exp(m)[..., None, None] * C, F64_TOL,
                 "e^m C")
    assert_close(np.exp(ms)[..., None] * ns, np.exp(m)[..., None] * n, F64_TOL, "e^m n")


# ---------------------------------------------------------------------------
# NaN, defaults, dtypes, mutation, bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, chunk_size", [("recurrent", 64), ("parallel", 64),
                                                ("chunk", 8)])
def test_nan_in_q_reaches_only_its_output(method, chunk_size, rng):
    """q enters only h_t: a NaN at (b=0, t=11) gives a NaN there and nowhere else,
    in every form (masked with np.where, not multiplied by a 0/1 mask)."""
    x = make_inputs(rng, T=37)
    x["q"][0, 11, 1, 2] = np.nan
    h, state, _ = mlstm.forward(*(x[k] for k in "qkvif"), initial_state=x["initial_state"],
                                method=method, chunk_size=chunk_size)
    bad = ~np.isfinite(h)
    assert bad[0, 11, 1].all()
    bad[0, 11, 1] = False
    assert not bad.any()
    assert all(np.all(np.isfinite(s)) for s in state)


def test_defaults(rng):
    """scale None is K^{−1/2}; initial_state None is zeros (m0 = 0); dh and dstate
    None are zeros; the initial state's gradient is returned also for None."""
    x = make_inputs(rng, T=9, state=False)
    args = [x[k] for k in "qkvif"]
    h, state, cache = mlstm.forward(*args)
    zeros = tuple(np.zeros_like(s) for s in state)
    h2, state2, _ = mlstm.forward(*args, scale=5 ** -0.5, initial_state=zeros)
    np.testing.assert_array_equal(h, h2)
    for a, b in zip(state, state2):
        np.testing.assert_array_equal(a, b)
    g = mlstm.backward(cache, None)
    for k in "qkvif":
        np.testing.assert_array_equal(g[k], 0.0)
    assert [s.shape for s in g["initial_state"]] == [s.shape for s in state]
    h3, _, _ = mlstm.forward(*args, scale=1.0)
    assert not np.allclose(h3, h)


@pytest.mark.parametrize("method", mlstm.METHODS)
def test_inputs_and_upstream_gradients_are_not_mutated(method, rng):
    x = make_inputs(rng, T=11)
    dh, dstate = upstream(rng, x)
    arrays = [x[k] for k in "qkvif"] + list(x["initial_state"]) + [dh, *dstate]
    copies = [a.copy() for a in arrays]
    readonly(*arrays)
    h, state, cache = mlstm.forward(*(x[k] for k in "qkvif"), initial_state=x["initial_state"],
                                    method=method, chunk_size=4)
    mlstm.backward(cache, dh, dstate)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("method", mlstm.METHODS)
def test_float32_in_float32_out(method, rng):
    x = make_inputs(rng, T=9, dtype=np.float32)
    dh, dstate = upstream(rng, x, np.float32)
    for name, a in flat(*run(x, dh, dstate, method=method, chunk_size=4)).items():
        assert a.dtype == np.float32, name


def test_bad_input(rng):
    x = make_inputs(rng, T=5)
    q, k, v, i, f = (x[n] for n in "qkvif")
    with pytest.raises(ValueError, match=r"i: expected shape \(B=2, T=5, H=3\).*got \(2, 5, 4\)"):
        mlstm.forward(q, k, v, i[..., :1].repeat(4, -1), f)
    with pytest.raises(TypeError, match="mixed precisions"):
        mlstm.forward(q, k, v, i, f.astype(np.float32))
    with pytest.raises(TypeError, match=r"initial_state: expected a tuple of 3 arrays, got "
                                        r"ndarray"):
        mlstm.forward(q, k, v, i, f, initial_state=x["initial_state"][0])
    with pytest.raises(ValueError, match=r"initial_state\[m\]: expected shape \(B=2, H=3\)"):
        mlstm.forward(q, k, v, i, f, initial_state=(None, None, np.zeros((2, 4))))
    with pytest.raises(ValueError, match=r"method: expected one of .*got 'blelloch'"):
        mlstm.forward(q, k, v, i, f, method="blelloch")
    with pytest.raises(ValueError, match=r"chunk_size: expected a positive integer, got 0"):
        mlstm.forward(q, k, v, i, f, method="chunk", chunk_size=0)
    with pytest.raises(ValueError, match=r"method: ops.mlstm with backend='numba' supports "
                                         r"\('recurrent',\), got 'parallel'"):
        mlstm.forward(q, k, v, i, f, method="parallel", backend="numba")
    with pytest.raises(ValueError, match="scale: expected a positive finite number"):
        mlstm.forward(q, k, v, i, f, scale=0.0)
    _, _, cache = mlstm.forward(q, k, v, i, f)
    with pytest.raises(ValueError, match=r"dh: expected shape \(2, 5, 3, 7\)"):
        mlstm.backward(cache, np.zeros((2, 5, 3, 5)))
    with pytest.raises(TypeError, match=r"dstate: expected a tuple of 3 arrays"):
        mlstm.backward(cache, None, np.zeros((2, 3)))
    _, _, other = softmax_scan.forward(i, v)
    with pytest.raises(TypeError, match=r"ops.mlstm: cache: expected the cache .*MLSTMCache"):
        mlstm.backward(other, None)
