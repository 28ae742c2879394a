"""cells.lru: golden values from an independent loop, the ring initialisation,
eigenvalues near zero in the log method; and, for the LRU and S4D alike (a
complex diagonal state read out to a real output), the step pair, the log
method where the eigenvalues underflow, real initial states. Agreement of every
method and backend, gradient checks, split-resume and bad input are
tests/test_contract.py's."""

import cmath
import math

import numpy as np
import pytest

from minirec import bptt, registry
from minirec.cells import lru, ssm
from tests.conftest import TOL, assert_close


def inputs(dtype=np.float64, name="lru", **dims):
    """The registry's example (LRU: ring init with |λ| in [0.3, 1); S4D: S4D-Lin
    with B moved off 1), a complex state0."""
    d = registry.get(name).make_inputs(np.random.default_rng(0), dtype, "small", **dims)
    return d["params"], d["x"], d["state0"]


def upstream(y, h_T, seed=1):
    """Random dy (real, like y) and dstate (complex, like h_T)."""
    rng = np.random.default_rng(seed)
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    dh = (rng.standard_normal(h_T.shape) + 1j * rng.standard_normal(h_T.shape)).astype(h_T.dtype)
    return dy, dh


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


def test_log_method_with_eigenvalues_near_zero():
    params, x, h0 = inputs(T=40)
    params["nu_log"] = np.full_like(params["nu_log"], math.log(8.0))  # |λ| = e^-8
    ref, ref_h, _ = lru.forward(params, x, h0)
    y, h_T, _ = lru.forward(params, x, h0, method="log")
    assert_close(y, ref, 1e-10, "y")
    assert_close(h_T, ref_h, 1e-10, "h_T")


def test_init_refuses_a_bad_ring():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"r_min, r_max: expected 0 <= r_min < r_max <= 1, "
                                         r"got r_min=0.5, r_max=0.4"):
        lru.init_params(rng, 3, 4, r_min=0.5, r_max=0.4)
    with pytest.raises(ValueError, match=r"max_phase: expected a positive angle, got 0"):
        lru.init_params(rng, 3, 4, max_phase=0)


# ---------------------------------------------------------------------------
# LRU and S4D alike
# ---------------------------------------------------------------------------

def _underflow_lru(params):
    """|λ| = exp(−e^ν) with e^ν = 200 in modes 0, 1: 0 in float32."""
    params["nu_log"][:2] = np.float32(math.log(200.0))
    return lru.eigenvalues(params)[:2]


def _underflow_ssm(params):
    """ZOH's Ā = exp(Δ A) with Δ·Re A = −200 in channel 0: 0 in float32."""
    params["A_re_log"][0] = np.float32(math.log(200.0)) - params["log_dt"][0]
    return ssm.discretize(params, "zoh")[0][0]


@pytest.mark.parametrize("name", ["lru", "ssm", "ssm_bilinear"])
def test_step_pair_equals_sequence(name):
    """Looping the step pair (bptt's separate-output form) is forward/backward."""
    entry = registry.get(name)
    cell, kw = entry.module, entry.forward_kwargs
    params, x, h0 = inputs(name=name, T=6)
    y, h_T, cache = cell.forward(params, x, h0, **kw)
    dy, dh = upstream(y, h_T)
    g = cell.backward(params, cache, dy, dh)
    ys, hs, steps = bptt.sequence_forward(cell.step_forward, params, x, h0,
                                          separate_output=True, **kw)
    g_steps = bptt.sequence_backward(cell.step_backward, params, steps, dy, dh,
                                     separate_output=True)
    assert_close(ys, y, 1e-13, "y")
    assert_close(hs, h_T, 1e-13, "h_T")
    assert set(g_steps) == set(g)
    for k in g:
        assert_close(g_steps[k], g[k], 1e-12, f"d{k}")


@pytest.mark.parametrize("name, underflow", [("lru", _underflow_lru), ("ssm", _underflow_ssm)])
def test_log_method_runs_where_the_eigenvalues_underflow(name, underflow):
    """Where λ (the LRU's) or Ā (S4D's, ZOH) is 0 in float32 no log could be taken
    (issue 7, defect 3, for these cells): the log method is given log λ =
    −e^ν + i e^θ, or log Ā = Δ A, itself and agrees with the recurrence, gradients
    included."""
    cell = registry.get(name).module
    params, x, h0 = inputs(np.float32, name=name, T=5)
    assert np.all(underflow(params) == 0)
    y, h_T, cache = cell.forward(params, x, h0, method="log")
    ref_y, ref_h, ref_cache = cell.forward(params, x, h0)
    dy, dh = upstream(y, h_T)
    g, ref_g = cell.backward(params, cache, dy, dh), cell.backward(params, ref_cache, dy, dh)
    tol = TOL[np.dtype(np.float32)]  # 1e-4 relative RMS
    assert_close(y, ref_y, tol, "y")
    assert_close(h_T, ref_h, tol, "h_T")
    for k in ref_g:
        assert np.all(np.isfinite(g[k])), k
        assert_close(g[k], ref_g[k], tol, f"d{k}")


@pytest.mark.parametrize("name, method", [("lru", "recurrent"), ("ssm", "recurrent"),
                                          ("ssm", "conv")])
def test_real_initial_state_gets_a_real_gradient(name, method):
    cell = registry.get(name).module
    params, x, h0 = inputs(name=name, T=7)
    y, _, cache = cell.forward(params, x, h0.real.copy(), method=method)
    g = cell.backward(params, cache, np.ones_like(y))
    assert not np.iscomplexobj(g["state0"])
    _, _, cache_c = cell.forward(params, x, h0.real.astype(complex), method=method)
    g_c = cell.backward(params, cache_c, np.ones_like(y))
    np.testing.assert_allclose(g["state0"], g_c["state0"].real, rtol=1e-13)
