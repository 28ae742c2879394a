"""ops.selective_scan: every method equals the recurrent definition, forward and
backward; gradients by finite differences; split-resume; golden values."""

import itertools
import math

import numpy as np
import pytest

from minirec import gradcheck
from minirec.ops import selective_scan as ss
from tests.conftest import assert_close

OPTIONAL = ("D", "z", "delta_bias")


def make(rng, Bsz=2, T=7, D=3, N=4, dtype=np.float64, optional=OPTIONAL, h0=True):
    """Inputs keyed by forward's argument names; ``optional`` says which of D, z,
    delta_bias are given. A ∈ [−2, −0.5], Δ = O(1)."""
    x = {
        "u": rng.standard_normal((Bsz, T, D)),
        "delta": 0.5 * rng.standard_normal((Bsz, T, D)),
        "A": -rng.uniform(0.5, 2.0, (D, N)),
        "B": rng.standard_normal((Bsz, T, N)),
        "C": rng.standard_normal((Bsz, T, N)),
        "D": rng.standard_normal(D),
        "z": rng.standard_normal((Bsz, T, D)),
        "delta_bias": rng.uniform(-1.0, 1.0, D),
        "initial_state": rng.standard_normal((Bsz, D, N)) if h0 else None,
    }
    for k in OPTIONAL:
        if k not in optional:
            del x[k]
    return {k: (None if v is None else v.astype(dtype)) for k, v in x.items()}


def upstream(rng, y, h_T):
    return rng.standard_normal(y.shape), rng.standard_normal(h_T.shape)


def expected_keys(inputs):
    return {k for k, v in inputs.items() if v is not None} | {"initial_state"}


@pytest.mark.parametrize("method", ss.METHODS)
@pytest.mark.parametrize("T", [1, 7, 23])
@pytest.mark.parametrize("softplus", [True, False])
def test_method_equals_definition_forward_and_backward(method, T, softplus, rng):
    x = make(rng, T=T)
    if not softplus:  # Δ must be positive without the softplus
        x["delta"] = np.abs(x["delta"]) + 0.1
        x["delta_bias"] = np.abs(x["delta_bias"])
    ref, ref_T, ref_cache = ss.forward(**x, delta_softplus=softplus)
    dy, dh_T = upstream(rng, ref, ref_T)
    ref_g = ss.backward(ref_cache, dy, dh_T)
    assert set(ref_g) == expected_keys(x)
    for chunk in (None, 3, 8):  # T = 7, 23 are multiples of neither
        y, h_T, cache = ss.forward(**x, delta_softplus=softplus, method=method, chunk_size=chunk)
        g = ss.backward(cache, dy, dh_T)
        assert_close(y, ref, 1e-10, "y")
        assert_close(h_T, ref_T, 1e-10, "h_T")
        assert set(g) == set(ref_g)
        for k in ref_g:
            assert g[k].shape == ref_g[k].shape and g[k].dtype == ref_g[k].dtype, k
            assert_close(g[k], ref_g[k], 1e-10, f"d{k}")


@pytest.mark.parametrize("method", ss.METHODS)
def test_gradcheck_every_argument(method, rng):
    x = make(rng, Bsz=2, T=5, D=2, N=3)
    report = gradcheck.check_op(ss, x, method=method, chunk_size=2, delta_softplus=True)
    assert set(report.errors) == set(x)  # u, delta, A, B, C, D, z, delta_bias, initial_state
    assert report.passed, str(report)  # relative error < 1e-6 in float64


@pytest.mark.parametrize("optional", [c for r in range(3) for c in
                                      itertools.combinations(OPTIONAL, r)])
@pytest.mark.parametrize("softplus", [True, False])
def test_optional_arguments_none(optional, softplus, rng):
    """Every subset of (D, z, delta_bias) left out: the backward returns exactly the
    gradients of the arrays given, each checked by finite differences, and the
    blelloch scan still agrees with the loop."""
    x = make(rng, Bsz=2, T=4, D=2, N=2, optional=optional, h0=False)
    if not softplus:
        x["delta"] = np.abs(x["delta"]) + 0.1
    y, h_T, cache = ss.forward(**x, delta_softplus=softplus)
    g = ss.backward(cache, np.ones_like(y), None)
    assert set(g) == expected_keys(x)
    report = gradcheck.check_op(ss, x, delta_softplus=softplus)
    assert report.passed, str(report)  # relative error < 1e-6 in float64
    y2, h2, cache2 = ss.forward(**x, delta_softplus=softplus, method="blelloch")
    assert_close(y2, y, 1e-10, "y")
    g2 = ss.backward(cache2, np.ones_like(y), None)
    for k in g:
        assert_close(g2[k], g[k], 1e-10, f"d{k}")


def test_no_optional_arguments_is_the_plain_scan(rng):
    """With D, z, delta_bias absent and no softplus, y_t = Σ_n h_t C_t exactly as
    scan.linear with a = exp(ΔA), b = Δ B u computes it."""
    from minirec.scan import linear
    x = make(rng, optional=(), h0=True)
    x["delta"] = np.abs(x["delta"])
    y, h_T, _ = ss.forward(**x)
    dt, u = x["delta"], x["u"]
    a = np.exp(dt[..., None] * x["A"])
    b = (dt * u)[..., None] * x["B"][:, :, None, :]
    h, h_T_ref, _ = linear.forward(a, b, x["initial_state"])
    assert_close(y, np.einsum("btdn,btn->btd", h, x["C"]), 1e-12, "y")
    assert_close(h_T, h_T_ref, 1e-12, "h_T")


@pytest.mark.parametrize("method", ss.METHODS)
def test_split_resume_equals_one_call(method, rng):
    x = make(rng, T=19)
    kw = dict(delta_softplus=True, method=method, chunk_size=4)
    y, h_T, _ = ss.forward(**x, **kw)
    first = {k: (v[:, :8] if v is not None and v.ndim == 3 and k != "initial_state" else v)
             for k, v in x.items()}
    second = {k: (v[:, 8:] if v is not None and v.ndim == 3 and k != "initial_state" else v)
              for k, v in x.items()}
    y1, s1, _ = ss.forward(**first, **kw)
    second["initial_state"] = s1
    y2, s2, _ = ss.forward(**second, **kw)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-12, "y")
    assert_close(s2, h_T, 1e-12, "h_T")


def test_gradient_of_the_final_state_reaches_the_initial_state(rng):
    """With dy = 0, ∂L/∂h0 = Π_t exp(Δ_t A) ⊙ dh_T (a product of the decays)."""
    x = make(rng, T=6)
    y, h_T, cache = ss.forward(**x, delta_softplus=True)
    dh_T = rng.standard_normal(h_T.shape)
    g = ss.backward(cache, None, dh_T)
    dt = ss.softplus(x["delta"] + x["delta_bias"])
    decay = np.exp(np.sum(dt, axis=1)[..., None] * x["A"])
    assert_close(g["initial_state"], decay * dh_T, 1e-12, "dh0")


def test_zero_step_size_holds_the_state(rng):
    """Δ = 0 (no softplus, no bias): ā = 1 and b̄ = 0, so h_t = h0 for every t."""
    x = make(rng, optional=("D",))
    x["delta"] = np.zeros_like(x["delta"])
    for method in ss.METHODS:
        y, h_T, _ = ss.forward(**x, method=method, chunk_size=3)
        expected = np.einsum("bdn,btn->btd", x["initial_state"], x["C"]) + x["D"] * x["u"]
        assert_close(y, expected, 1e-12, method)
        assert_close(h_T, x["initial_state"], 1e-12, method)


def _golden_loop(u, delta, A, B, C, D, z, delta_bias, initial_state):
    """The equations, one scalar at a time, in Python floats (independent of the module)."""
    Bsz, T, Dn = u.shape
    N = A.shape[1]
    y = np.zeros((Bsz, T, Dn))
    h = [[[float(initial_state[b, d, n]) for n in range(N)] for d in range(Dn)] for b in range(Bsz)]
    for b in range(Bsz):
        for t in range(T):
            for d in range(Dn):
                pre = float(delta[b, t, d] + delta_bias[d])
                dt = math.log1p(math.exp(pre))
                acc = 0.0
                for n in range(N):
                    h[b][d][n] = (math.exp(dt * A[d, n]) * h[b][d][n]
                                  + dt * B[b, t, n] * u[b, t, d])
                    acc += h[b][d][n] * C[b, t, n]
                acc += D[d] * u[b, t, d]
                zz = float(z[b, t, d])
                y[b, t, d] = acc * zz / (1 + math.exp(-zz))
    return y, np.array(h)


def test_golden_values():
    Bsz, T, Dn, N = 1, 6, 2, 3
    lin = lambda lo, hi, shape: np.linspace(lo, hi, int(np.prod(shape))).reshape(shape)
    x = {"u": lin(-1.0, 1.0, (Bsz, T, Dn)), "delta": lin(-2.0, 1.0, (Bsz, T, Dn)),
         "A": -lin(0.5, 3.0, (Dn, N)), "B": lin(-0.5, 1.5, (Bsz, T, N)),
         "C": lin(1.0, -1.0, (Bsz, T, N)), "D": lin(0.5, 1.5, (Dn,)),
         "z": lin(-2.0, 2.0, (Bsz, T, Dn)), "delta_bias": lin(-0.3, 0.3, (Dn,)),
         "initial_state": lin(-0.2, 0.4, (Bsz, Dn, N))}
    y_ref, h_ref = _golden_loop(**x)
    assert abs(y_ref).max() > 0.1  # the case is not degenerate
    for method in ss.METHODS:
        y, h_T, _ = ss.forward(**x, delta_softplus=True, method=method, chunk_size=4)
        np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-14, err_msg=method)
        np.testing.assert_allclose(h_T, h_ref, rtol=1e-12, atol=1e-14, err_msg=method)


@pytest.mark.parametrize("method", ss.METHODS)
def test_float32_stays_float32_and_close(method, rng):
    x = make(rng, T=30, dtype=np.float32)
    ref, ref_T, ref_cache = ss.forward(**{k: v.astype(np.float64) for k, v in x.items()},
                                       delta_softplus=True)
    dy, dh_T = upstream(rng, ref, ref_T)
    ref_g = ss.backward(ref_cache, dy, dh_T)
    y, h_T, cache = ss.forward(**x, delta_softplus=True, method=method, chunk_size=8)
    g = ss.backward(cache, dy.astype(np.float32), dh_T.astype(np.float32))
    assert y.dtype == np.float32 and h_T.dtype == np.float32
    assert_close(y, ref, 1e-4, "y")  # float32 tolerance, DESIGN §6
    for k in ref_g:
        assert g[k].dtype == np.float32, k
        assert_close(g[k], ref_g[k], 1e-4, f"d{k}")


def test_softplus_sigmoid_silu_are_stable_for_huge_inputs():
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    sp = ss.softplus(x)  # pyproject turns any overflow RuntimeWarning into an error
    expected = [0.0, math.log1p(math.exp(-30.0)), math.log(2),
                30.0 + math.log1p(math.exp(-30.0)), 1000.0]
    np.testing.assert_allclose(sp, expected, rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(ss.sigmoid(x), [0.0, 1 / (1 + math.exp(30.0)), 0.5,
                                               1 / (1 + math.exp(-30.0)), 1.0], rtol=1e-15)
    assert np.all(np.isfinite(ss.silu(x))) and np.all(np.isfinite(ss.silu_grad(x)))
    # silu' by central differences
    t = np.linspace(-4, 4, 9)
    num = (ss.silu(t + 1e-6) - ss.silu(t - 1e-6)) / 2e-6
    np.testing.assert_allclose(ss.silu_grad(t), num, rtol=1e-8, atol=1e-10)


def test_huge_delta_with_softplus_is_finite(rng):
    x = make(rng, T=5)
    x["delta"] = x["delta"] * 1e3
    y, h_T, cache = ss.forward(**x, delta_softplus=True)
    g = ss.backward(cache, np.ones_like(y), np.ones_like(h_T))
    assert np.all(np.isfinite(y)) and all(np.all(np.isfinite(v)) for v in g.values())


def test_log_method_says_why_when_the_decay_underflows(rng):
    x = make(rng, T=4)
    x["A"] = np.full_like(x["A"], -1e4)
    x["delta"] = np.full_like(x["delta"], 100.0)  # exp(−1e6) == 0.0
    with pytest.raises(ValueError, match="a > 0"):
        ss.forward(**x, delta_softplus=True, method="log")


@pytest.mark.parametrize("change, match", [
    (dict(delta=np.zeros((2, 7, 4))), r"delta: expected shape \(B=2, T=7, D=3\)"),
    (dict(A=np.zeros((2, 4))), r"A: expected shape \(D=3, N\)"),
    (dict(B=np.zeros((2, 7, 5))), r"B: expected shape \(B=2, T=7, N=4\)"),
    (dict(C=np.zeros((2, 6, 4))), r"C: expected shape \(B=2, T=7, N=4\)"),
    (dict(D=np.zeros(4)), r"D: expected shape \(D=3\)"),
    (dict(z=np.zeros((2, 7))), r"z: expected a 3-d array, got shape \(2, 7\)"),
    (dict(delta_bias=np.zeros((3, 1))), "delta_bias: expected a 1-d array"),
    (dict(initial_state=np.zeros((2, 3, 5))), r"initial_state: expected shape \(B=2, D=3, N=4\)"),
    (dict(u=np.zeros((2, 7, 3), np.int64)), "u: expected dtype"),
    (dict(u=np.zeros((2, 7, 3), np.complex128)), "u: expected dtype"),
    (dict(C=np.zeros((2, 7, 4), np.float32)), "mixed precisions"),
    (dict(u=[[[0.0]]]), "u: expected an ndarray"),
])
def test_bad_input_is_refused_with_a_clear_message(change, match, rng):
    x = make(rng)
    x.update(change)
    with pytest.raises((ValueError, TypeError), match=match):
        ss.forward(**x)


def test_bad_method_backend_chunk_size_and_gradient_shapes(rng):
    x = make(rng)
    with pytest.raises(ValueError, match="method: expected one of"):
        ss.forward(**x, method="cumsum")
    with pytest.raises(ValueError, match="backend"):
        ss.forward(**x, backend="tpu")
    with pytest.raises(ValueError, match="chunk_size: expected a positive integer"):
        ss.forward(**x, method="chunked", chunk_size=0)
    empty = {k: (v[:, :0] if v is not None and v.ndim == 3 and k != "initial_state" else v)
             for k, v in x.items()}
    with pytest.raises(ValueError, match="T >= 1"):
        ss.forward(**empty)
    _, _, cache = ss.forward(**x)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 7, 3\)"):
        ss.backward(cache, np.zeros((2, 7, 4)))
    with pytest.raises(ValueError, match=r"dstate: expected shape \(2, 3, 4\)"):
        ss.backward(cache, None, np.zeros((2, 3)))
