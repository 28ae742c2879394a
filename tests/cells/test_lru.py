"""cells.lru: every scan method equals the definition, forward and backward;
gradients by finite differences; the ring initialisation; golden values."""

import cmath
import math

import numpy as np
import pytest

from minirec import gradcheck
from minirec.cells import lru
from tests.conftest import TOL, assert_close

GRAD_TOL = 1e-6  # DESIGN §6: float64 central differences, relative error


def make(rng, B=2, T=7, D=3, N=4, dtype=np.float64, r_min=0.3):
    params = lru.init_params(rng, D, N, dtype=dtype, r_min=r_min)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    cdtype = np.result_type(dtype, np.complex64)
    h0 = (rng.standard_normal((B, N)) + 1j * rng.standard_normal((B, N))).astype(cdtype)
    return params, x, h0


def upstream(rng, y, h_T):
    dy = rng.standard_normal(y.shape)
    dh = rng.standard_normal(h_T.shape) + 1j * rng.standard_normal(h_T.shape)
    return dy, dh


def to64(params):
    return {k: v.astype(np.float64) for k, v in params.items()}


def linspace_params(D, N):
    return {"nu_log": np.linspace(-2.0, 0.5, N), "theta_log": np.linspace(-1.0, 1.5, N),
            "gamma_log": np.linspace(-0.5, -0.1, N),
            "B_re": np.linspace(-0.6, 0.5, N * D).reshape(N, D),
            "B_im": np.linspace(0.4, -0.7, N * D).reshape(N, D),
            "C_re": np.linspace(-0.3, 0.8, D * N).reshape(D, N),
            "C_im": np.linspace(0.2, -0.5, D * N).reshape(D, N),
            "D": np.linspace(-1.0, 1.0, D)}


def loop(p, x, h0):
    """Scalar complex arithmetic, element by element, independent of the module."""
    Bsz, T, D = x.shape
    N = len(p["nu_log"])
    y = np.zeros((Bsz, T, D))
    h_T = np.zeros((Bsz, N), complex)
    for b in range(Bsz):
        h = [complex(h0[b, n]) for n in range(N)]
        for t in range(T):
            for n in range(N):
                lam = cmath.exp(complex(-math.exp(p["nu_log"][n]), math.exp(p["theta_log"][n])))
                Bx = sum(complex(p["B_re"][n, d], p["B_im"][n, d]) * x[b, t, d]
                         for d in range(D))
                h[n] = lam * h[n] + math.exp(p["gamma_log"][n]) * Bx
            for d in range(D):
                Ch = sum(complex(p["C_re"][d, n], p["C_im"][d, n]) * h[n] for n in range(N))
                y[b, t, d] = Ch.real + p["D"][d] * x[b, t, d]
        h_T[b] = h
    return y, h_T


@pytest.mark.parametrize("method", lru.METHODS)
@pytest.mark.parametrize("T", [1, 2, 13])
def test_method_equals_definition_forward_and_backward(method, T, rng):
    params, x, h0 = make(rng, T=T)
    ref_y, ref_h, ref_cache = lru.forward(params, x, h0)
    dy, dh = upstream(rng, ref_y, ref_h)
    ref_g = lru.backward(params, ref_cache, dy, dh)
    for chunk in (None, 4):  # 13 is not a multiple of 4
        y, h_T, cache = lru.forward(params, x, h0, method=method, chunk_size=chunk)
        g = lru.backward(params, cache, dy, dh)
        assert_close(y, ref_y, 1e-10, "y")
        assert_close(h_T, ref_h, 1e-10, "h_T")
        assert set(g) == set(ref_g)
        for k in ref_g:
            assert g[k].dtype == ref_g[k].dtype, k
            assert_close(g[k], ref_g[k], 1e-10, f"d{k}")


@pytest.mark.parametrize("method", lru.METHODS)
def test_float32_matches_float64_definition(method, rng):
    params, x, h0 = make(rng, T=37, D=4, N=8, dtype=np.float32)
    ref_y, ref_h, ref_cache = lru.forward(to64(params), x.astype(np.float64),
                                          h0.astype(np.complex128))
    dy, dh = upstream(rng, ref_y, ref_h)
    ref_g = lru.backward(to64(params), ref_cache, dy, dh)
    y, h_T, cache = lru.forward(params, x, h0, method=method, chunk_size=5)
    g = lru.backward(params, cache, dy.astype(np.float32), dh.astype(np.complex64))
    assert y.dtype == np.float32 and h_T.dtype == np.complex64
    tol = TOL[np.dtype(np.float32)]  # 1e-4 relative RMS
    assert_close(y, ref_y, tol, "y")
    assert_close(h_T, ref_h, tol, "h_T")
    for k in ref_g:
        assert g[k].dtype == (np.complex64 if k == "state0" else np.float32), k
        assert_close(g[k], ref_g[k], tol, f"d{k}")


@pytest.mark.parametrize("method", lru.METHODS)
def test_gradcheck(method, rng):
    params, x, h0 = make(rng, T=5)
    report = gradcheck.check_cell(lru, params, x, h0, method=method, chunk_size=2,
                                  tol=GRAD_TOL)
    assert report.passed, str(report)
    assert set(report.errors) == set(params) | {"x", "state0"}


def test_gradcheck_without_initial_state(rng):
    params, x, _ = make(rng, T=4)
    report = gradcheck.check_cell(lru, params, x, None, tol=GRAD_TOL)
    assert report.passed, str(report)


@pytest.mark.parametrize("method", lru.METHODS)
def test_split_resume_equals_one_call(method, rng):
    params, x, h0 = make(rng, T=23)
    y, h_T, _ = lru.forward(params, x, h0, method=method, chunk_size=4)
    y1, s1, _ = lru.forward(params, x[:, :10], h0, method=method, chunk_size=4)
    y2, s2, _ = lru.forward(params, x[:, 10:], s1, method=method, chunk_size=4)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-12, "y")
    assert_close(s2, h_T, 1e-12, "h_T")


def test_golden_values_from_linspace():
    B, T, D, N = 2, 6, 3, 4
    params = linspace_params(D, N)
    x = np.linspace(-1.5, 2.0, B * T * D).reshape(B, T, D)
    h0 = np.linspace(-0.3, 0.4, B * N).reshape(B, N) + 1j * np.linspace(0.5, -0.2, B * N
                                                                           ).reshape(B, N)
    ref_y, ref_h = loop(params, x, h0)
    for method in lru.METHODS:
        y, h_T, _ = lru.forward(params, x, h0, method=method, chunk_size=4)
        np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-13, err_msg=method)
        np.testing.assert_allclose(h_T, ref_h, rtol=1e-12, atol=1e-13, err_msg=method)


def test_golden_scalar_worked_by_hand():
    """N = D = 1, ν = 1, θ = π/2, γ = B = C = 1, D = 0: λ = i/e, so an impulse gives
    h = 1, i/e, −1/e², −i/e³ and y = Re h = 1, 0, −1/e², 0."""
    params = {"nu_log": np.zeros(1), "theta_log": np.array([math.log(math.pi / 2)]),
              "gamma_log": np.zeros(1), "B_re": np.ones((1, 1)), "B_im": np.zeros((1, 1)),
              "C_re": np.ones((1, 1)), "C_im": np.zeros((1, 1)), "D": np.zeros(1)}
    x = np.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 4, 1)
    e = math.e
    for method in lru.METHODS:
        y, h_T, _ = lru.forward(params, x, method=method, chunk_size=3)
        np.testing.assert_allclose(y.ravel(), [1, 0, -1 / e**2, 0], atol=1e-15, err_msg=method)
        np.testing.assert_allclose(h_T.ravel(), [-1j / e**3], atol=1e-15, err_msg=method)


def test_step_pair_equals_sequence(rng):
    params, x, h0 = make(rng, T=6)
    y, h_T, cache = lru.forward(params, x, h0)
    dy, dh = upstream(rng, y, h_T)
    g = lru.backward(params, cache, dy, dh)
    h, ys, caches = h0, [], []
    for t in range(x.shape[1]):
        y_t, h, c = lru.step_forward(params, x[:, t], h)
        ys.append(y_t)
        caches.append(c)
    assert_close(np.stack(ys, axis=1), y, 1e-13, "y")
    assert_close(h, h_T, 1e-13, "h_T")
    dh_t, dxs = dh, []
    sums = {k: np.zeros_like(v) for k, v in params.items()}
    for t in reversed(range(x.shape[1])):
        dx_t, dh_t, dp = lru.step_backward(dy[:, t], dh_t, caches[t])
        dxs.append(dx_t)
        for k in sums:
            sums[k] += dp[k]
    assert_close(np.stack(dxs[::-1], axis=1), g["x"], 1e-12, "dx")
    assert_close(dh_t, g["state0"], 1e-12, "dstate0")
    for k in sums:
        assert_close(sums[k], g[k], 1e-12, f"d{k}")


@pytest.mark.parametrize("r_min, r_max, max_phase", [(0.0, 1.0, 2 * np.pi),
                                                     (0.9, 0.999, np.pi / 10)])
def test_ring_init_radii_phases_and_normalisation(r_min, r_max, max_phase):
    N = 20000
    params = lru.init_params(np.random.default_rng(0), 2, N, r_min=r_min, r_max=r_max,
                             max_phase=max_phase)
    lam = lru.eigenvalues(params)
    r = np.abs(lam)
    assert r.min() >= r_min and r.max() <= r_max
    phase = np.exp(params["theta_log"])
    assert phase.min() >= 0 and phase.max() <= max_phase
    np.testing.assert_allclose(np.angle(lam), np.angle(np.exp(1j * phase)), atol=1e-12)
    np.testing.assert_allclose(np.exp(params["gamma_log"]), np.sqrt(1 - r**2), atol=1e-12)
    # uniform in area on the ring: |λ|² ~ U(r_min², r_max²), mean (r_min² + r_max²)/2;
    # 20000 samples give a standard error of (r_max² − r_min²)/sqrt(12·20000) ≈ 0.002 span
    span = r_max**2 - r_min**2
    assert abs(np.mean(r**2) - (r_min**2 + r_max**2) / 2) < 0.01 * span
    assert abs(np.mean(phase) - max_phase / 2) < 0.01 * max_phase


def test_init_shapes_and_dtype():
    params = lru.init_params(np.random.default_rng(0), 3, 5, dtype=np.float32)
    shapes = {"nu_log": (5,), "theta_log": (5,), "gamma_log": (5,), "B_re": (5, 3),
              "B_im": (5, 3), "C_re": (3, 5), "C_im": (3, 5), "D": (3,)}
    assert {k: v.shape for k, v in params.items()} == shapes
    assert all(v.dtype == np.float32 for v in params.values())
    y, h_T, _ = lru.forward(params, np.ones((2, 4, 3), np.float32))
    assert y.dtype == np.float32 and h_T.dtype == np.complex64 and h_T.shape == (2, 5)


def test_log_method_with_eigenvalues_near_zero(rng):
    params, x, h0 = make(rng, T=40, r_min=0.0)
    params["nu_log"] = np.full_like(params["nu_log"], math.log(8.0))  # |λ| = e^-8
    ref, ref_h, _ = lru.forward(params, x, h0)
    y, h_T, _ = lru.forward(params, x, h0, method="log")
    assert_close(y, ref, 1e-10, "y")
    assert_close(h_T, ref_h, 1e-10, "h_T")


def test_real_initial_state_gets_a_real_gradient(rng):
    params, x, h0 = make(rng)
    y, h_T, cache = lru.forward(params, x, h0.real.copy())
    g = lru.backward(params, cache, np.ones_like(y), None)
    assert not np.iscomplexobj(g["state0"])
    _, _, cache_c = lru.forward(params, x, h0.real.astype(complex))
    np.testing.assert_allclose(g["state0"], lru.backward(params, cache_c, np.ones_like(y))
                               ["state0"].real, rtol=1e-14)


@pytest.mark.parametrize("change, match", [
    (lambda p, x, h: (dict(p, B_re=p["B_re"][:3]), x, h), r"B_re: expected shape \(N=4, D\)"),
    (lambda p, x, h: (p, x[..., :2], h), r"x: expected shape"),
    (lambda p, x, h: (p, x + 0j, h), "expected dtype"),
    (lambda p, x, h: (p, x, h[:, :3]), r"state0: expected shape \(B=2, N=4\)"),
    (lambda p, x, h: (p, x.astype(np.float32), h), "mixed precisions"),
    (lambda p, x, h: ({k: v for k, v in p.items() if k != "D"}, x, h), "missing"),
    (lambda p, x, h: (dict(p, D=p["D"] + 0j), x, h), "expected dtype"),
    (lambda p, x, h: (p, x[:, :0], h), "T >= 1"),
])
def test_bad_input_is_refused_with_a_clear_message(change, match, rng):
    params, x, h0 = change(*make(rng))
    with pytest.raises((ValueError, TypeError), match=match):
        lru.forward(params, x, h0)


def test_bad_arguments(rng):
    params, x, h0 = make(rng)
    with pytest.raises(ValueError, match="method"):
        lru.forward(params, x, h0, method="conv")
    with pytest.raises(ValueError, match="r_min"):
        lru.init_params(rng, 3, 4, r_min=0.5, r_max=0.4)
    _, _, cache = lru.forward(params, x, h0)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 7, 3\)"):
        lru.backward(params, cache, np.zeros((2, 6, 3)))
    with pytest.raises(ValueError, match=r"dstate: expected shape \(2, 4\)"):
        lru.backward(params, cache, None, np.zeros((2, 5), complex))
