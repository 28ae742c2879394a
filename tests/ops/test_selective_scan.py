"""ops.selective_scan: entry-specific cases and golden values. Agreement of
every method and backend with the definition, gradient checks, split-resume,
dtypes, B = 0, NaN and the bad-input tables are the contract tests'
(tests/test_contract.py, entry "selective_scan")."""

import itertools
import math

import numpy as np
import pytest

from minirec import _math, gradcheck, registry
from minirec.ops import selective_scan as ss
from tests.conftest import TOL, assert_close

OPTIONAL = ("D", "z", "delta_bias")
ENTRY = registry.get("selective_scan")


def make(rng, dtype=np.float64, optional=OPTIONAL, h0=True, **dims):
    """The registry's inputs (A ∈ [−2, −0.5], Δ = O(1)) with only the optional
    arrays in ``optional`` given, and no initial state unless ``h0``."""
    x = ENTRY.make_inputs(rng, dtype, "small", **dims)
    for k in OPTIONAL:
        if k not in optional:
            del x[k]
    if not h0:
        x["initial_state"] = None
    return x


def expected_keys(inputs):
    return {k for k, v in inputs.items() if v is not None} | {"initial_state"}


@pytest.mark.parametrize("method", ss.METHODS)
@pytest.mark.parametrize("chunk", [None, 3, 8])
def test_without_softplus_every_method_equals_definition(method, chunk, rng):
    """delta_softplus=False (the contract runs True): Δ = delta + delta_bias as
    given, kept positive; T = 7 is a multiple of no chunk size."""
    x = make(rng, T=7)
    x["delta"] = np.abs(x["delta"]) + 0.1
    x["delta_bias"] = np.abs(x["delta_bias"])
    ref, ref_T, ref_cache = ss.forward(**x)
    dy, dstate = rng.standard_normal(ref.shape), rng.standard_normal(ref_T.shape)
    ref_g = ss.backward(ref_cache, dy, dstate)
    y, h_T, cache = ss.forward(**x, method=method, chunk_size=chunk)
    g = ss.backward(cache, dy, dstate)
    assert_close(y, ref, 1e-10, "y")
    assert_close(h_T, ref_T, 1e-10, "h_T")
    assert set(g) == set(ref_g) == expected_keys(x)
    for k in ref_g:
        assert_close(g[k], ref_g[k], 1e-10, f"d{k}")


@pytest.mark.parametrize("optional", [c for r in range(3) for c in
                                      itertools.combinations(OPTIONAL, r)])
@pytest.mark.parametrize("softplus", [True, False])
def test_optional_arguments_none(optional, softplus, rng):
    """Every subset of (D, z, delta_bias) left out: the backward returns exactly the
    gradients of the arrays given, each checked by finite differences, and the
    blelloch scan still agrees with the loop."""
    x = make(rng, optional=optional, h0=False, B=2, T=4, D=2, N=2)
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
    x = make(rng, optional=(), T=7)
    x["delta"] = np.abs(x["delta"])
    y, h_T, _ = ss.forward(**x)
    dt, u = x["delta"], x["u"]
    a = np.exp(dt[..., None] * x["A"])
    b = (dt * u)[..., None] * x["B"][:, :, None, :]
    h, h_T_ref, _ = linear.forward(a, b, x["initial_state"])
    assert_close(y, np.einsum("btdn,btn->btd", h, x["C"]), 1e-12, "y")
    assert_close(h_T, h_T_ref, 1e-12, "h_T")


def test_gradient_of_the_final_state_reaches_the_initial_state(rng):
    """With dy = 0, ∂L/∂h0 = Π_t exp(Δ_t A) ⊙ dstate (a product of the decays)."""
    x = make(rng, T=6)
    y, h_T, cache = ss.forward(**x, delta_softplus=True)
    dstate = rng.standard_normal(h_T.shape)
    g = ss.backward(cache, None, dstate)
    dt = _math.softplus(x["delta"] + x["delta_bias"])
    decay = np.exp(np.sum(dt, axis=1)[..., None] * x["A"])
    assert_close(g["initial_state"], decay * dstate, 1e-12, "dh0")


def test_zero_step_size_holds_the_state(rng):
    """Δ = 0 (no softplus, no bias): ā = 1 and b̄ = 0, so h_t = h0 for every t."""
    x = make(rng, optional=("D",), T=7)
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


def test_the_activations_are_stable_for_huge_inputs():
    """softplus, σ, silu and silu' of minirec._math, as the scan and Mamba use them."""
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    sp = _math.softplus(x)  # pyproject turns any overflow RuntimeWarning into an error
    expected = [0.0, math.log1p(math.exp(-30.0)), math.log(2),
                30.0 + math.log1p(math.exp(-30.0)), 1000.0]
    np.testing.assert_allclose(sp, expected, rtol=1e-15, atol=1e-300)
    np.testing.assert_allclose(_math.sigmoid(x), [0.0, 1 / (1 + math.exp(30.0)), 0.5,
                                                  1 / (1 + math.exp(-30.0)), 1.0], rtol=1e-15)
    assert np.all(np.isfinite(_math.silu(x))) and np.all(np.isfinite(_math.silu_grad(x)))
    # silu' by central differences
    t = np.linspace(-4, 4, 9)
    num = (_math.silu(t + 1e-6) - _math.silu(t - 1e-6)) / 2e-6
    np.testing.assert_allclose(_math.silu_grad(t), num, rtol=1e-8, atol=1e-10)


def test_huge_delta_with_softplus_is_finite(rng):
    x = make(rng, T=5)
    x["delta"] = x["delta"] * 1e3
    y, h_T, cache = ss.forward(**x, delta_softplus=True)
    g = ss.backward(cache, np.ones_like(y), np.ones_like(h_T))
    assert np.all(np.isfinite(y)) and all(np.all(np.isfinite(v)) for v in g.values())


@pytest.mark.parametrize("dtype, delta", [(np.float32, 120.0), (np.float64, 1000.0)])
def test_log_method_runs_where_the_decay_underflows(dtype, delta, rng):
    """Issue 7, defect 3: at a saturated pre-activation exp(Δ A) underflows to 0
    and the log method used to refuse ("needs a > 0"); it now scans log ā = Δ A
    directly and equals the loop, forward and backward."""
    x = make(rng, dtype, T=3)
    x["delta"] = np.full_like(x["delta"], delta)
    x["A"] = np.full_like(x["A"], -1.0)
    assert np.exp(dtype(-delta)) == 0          # ā = exp(Δ A) is 0 in this dtype
    ref, ref_T, ref_cache = ss.forward(**x, delta_softplus=True)
    y, h_T, cache = ss.forward(**x, delta_softplus=True, method="log")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dstate = rng.standard_normal(h_T.shape).astype(dtype)
    ref_g = ss.backward(ref_cache, dy, dstate)
    g = ss.backward(cache, dy, dstate)
    tol = TOL[np.dtype(dtype)]                 # float64 1e-10, float32 1e-4
    assert_close(y, ref, tol, "y")
    assert_close(h_T, ref_T, tol, "h_T")
    for k in ref_g:
        assert np.all(np.isfinite(g[k])), k
        assert_close(g[k], ref_g[k], tol, f"d{k}")


@pytest.mark.parametrize("change, match", [
    (dict(u=np.zeros((2, 5, 3), np.complex128)), "u: expected dtype"),
    (dict(C=np.zeros((2, 5, 4), np.float32)), "mixed precisions"),
])
def test_complex_and_mixed_precision_inputs_are_refused(change, match, rng):
    x = make(rng)
    x.update(change)
    with pytest.raises(TypeError, match=match):
        ss.forward(**x)
