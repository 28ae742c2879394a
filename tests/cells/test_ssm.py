"""cells.ssm (S4D / LSSL): golden values from an independent loop, the kernel as
impulse response, ZOH vs bilinear, the initialisations (HiPPO-LegS eigenvalues
included, with a gradient check for each), NaN in the FFT convolution. The step
pair, ZOH's log method where Ā underflows and real initial states are tested
with the LRU's in tests/cells/test_lru.py; agreement of every method and
backend (conv included), gradient checks, split-resume and bad input are
tests/test_contract.py's."""

import cmath
import math

import numpy as np
import pytest

from minirec import gradcheck, registry
from minirec.cells import ssm

GRAD_TOL = 1e-6  # DESIGN §6: float64 central differences, relative error


def inputs(dtype=np.float64, **dims):
    """The registry's example: S4D-Lin with B moved off 1, a complex state0."""
    d = registry.get("ssm").make_inputs(np.random.default_rng(0), dtype, "small", **dims)
    return d["params"], d["x"], d["state0"]


def linspace_params(D, N):
    return {"log_dt": np.linspace(-3.0, -0.5, D),
            "A_re_log": np.linspace(-1.0, 0.5, D * N).reshape(D, N),
            "A_im": np.linspace(-2.0, 3.0, D * N).reshape(D, N),
            "B_re": np.linspace(-0.6, 0.5, D * N).reshape(D, N),
            "B_im": np.linspace(0.4, -0.7, D * N).reshape(D, N),
            "C_re": np.linspace(-0.3, 0.8, D * N).reshape(D, N),
            "C_im": np.linspace(0.2, -0.5, D * N).reshape(D, N),
            "D": np.linspace(-1.0, 1.0, D)}


def loop(p, x, h0, discretization):
    """Scalar complex arithmetic, element by element, independent of the module."""
    Bsz, T, D = x.shape
    N = p["A_im"].shape[1]
    y = np.zeros((Bsz, T, D))
    h_T = np.zeros((Bsz, D, N), complex)
    for d in range(D):
        dt = math.exp(p["log_dt"][d])
        for n in range(N):
            A = complex(-math.exp(p["A_re_log"][d, n]), p["A_im"][d, n])
            B = complex(p["B_re"][d, n], p["B_im"][d, n])
            if discretization == "zoh":
                Abar = cmath.exp(dt * A)
                Bbar = (Abar - 1) / A * B
            else:
                Abar = (1 + dt * A / 2) / (1 - dt * A / 2)
                Bbar = dt / (1 - dt * A / 2) * B
            C = complex(p["C_re"][d, n], p["C_im"][d, n])
            for b in range(Bsz):
                h = complex(h0[b, d, n])
                for t in range(T):
                    h = Abar * h + Bbar * x[b, t, d]
                    y[b, t, d] += 2 * (C * h).real
                h_T[b, d, n] = h
        y[:, :, d] += p["D"][d] * x[:, :, d]
    return y, h_T


@pytest.mark.parametrize("init", ssm.INITS)
def test_gradcheck_every_init_with_conv_and_no_initial_state(init):
    rng = np.random.default_rng(1234)
    params = ssm.init_params(rng, 2, 3, init=init)
    for k in ("B_re", "B_im"):  # move B off S4D's special B = 1
        params[k] = params[k] + 0.2 * rng.standard_normal(params[k].shape)
    x = rng.standard_normal((2, 4, 2))
    report = gradcheck.check_cell(ssm, params, x, None, method="conv", tol=GRAD_TOL)
    assert report.passed, str(report)


@pytest.mark.parametrize("discretization", ssm.DISCRETIZATIONS)
def test_golden_values_from_linspace(discretization):
    B, T, D, N = 2, 6, 3, 4
    params = linspace_params(D, N)
    x = np.linspace(-1.5, 2.0, B * T * D).reshape(B, T, D)
    h0 = (np.linspace(-0.3, 0.4, B * D * N) + 1j * np.linspace(0.5, -0.2, B * D * N)
          ).reshape(B, D, N)
    ref_y, ref_h = loop(params, x, h0, discretization)
    for method in ssm.METHODS:
        y, h_T, _ = ssm.forward(params, x, h0, method=method, chunk_size=4,
                                discretization=discretization)
        np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-13, err_msg=method)
        np.testing.assert_allclose(h_T, ref_h, rtol=1e-12, atol=1e-13, err_msg=method)


@pytest.mark.parametrize("discretization, expected", [
    ("zoh", lambda t: 1 - math.exp(-t)),      # exact for a piecewise-constant input
    ("bilinear", lambda t: 1 - 3.0 ** -t),    # Ā = (1 − 1/2)/(1 + 1/2) = 1/3, B̄ = 2/3
])
def test_golden_step_response_worked_by_hand(discretization, expected):
    """N = D = 1, A = −1, Δ = B = 1, C = 1/2 (so y = Re h), D = 0, x = 1:
    ZOH gives Ā = 1/e, B̄ = 1 − 1/e and h_t = 1 − e^{−t}, the continuous solution."""
    params = {"log_dt": np.zeros(1), "A_re_log": np.zeros((1, 1)), "A_im": np.zeros((1, 1)),
              "B_re": np.ones((1, 1)), "B_im": np.zeros((1, 1)),
              "C_re": np.full((1, 1), 0.5), "C_im": np.zeros((1, 1)), "D": np.zeros(1)}
    x = np.ones((1, 5, 1))
    want = [expected(t) for t in range(1, 6)]
    for method in ssm.METHODS:
        y, _, _ = ssm.forward(params, x, method=method, chunk_size=2,
                              discretization=discretization)
        np.testing.assert_allclose(y.ravel(), want, rtol=1e-14, err_msg=method)


@pytest.mark.parametrize("discretization", ssm.DISCRETIZATIONS)
def test_kernel_is_the_impulse_response(discretization):
    params, _, _ = inputs(T=1, D=3)
    params["D"] = np.zeros_like(params["D"])
    x = np.zeros((1, 9, 3))
    x[0, 0] = 1.0
    y, _, _ = ssm.forward(params, x, discretization=discretization)
    K = ssm.kernel(params, 9, discretization=discretization)
    assert K.shape == (3, 9)
    np.testing.assert_allclose(y[0].T, K, rtol=1e-12, atol=1e-14)


def test_zoh_and_bilinear_agree_to_second_order_in_dt():
    """Bilinear is the (1,1) Padé approximant of exp: Ā differs by O((ΔA)³), so the
    kernels over a fixed horizon differ by O(Δ²): halving Δ (and doubling T) divides
    the gap by about 4."""
    params, _, _ = inputs(D=1, N=4)
    gaps = []
    for k in range(3):
        p = dict(params, log_dt=np.array([math.log(0.05 / 2**k)]))
        T = 40 * 2**k
        K_z = ssm.kernel(p, T, "zoh") / math.exp(p["log_dt"][0])
        K_b = ssm.kernel(p, T, "bilinear") / math.exp(p["log_dt"][0])
        gaps.append(np.max(np.abs(K_z - K_b)))
    ratios = [gaps[i] / gaps[i + 1] for i in range(2)]
    assert all(3.5 < r < 4.5 for r in ratios), (gaps, ratios)


@pytest.mark.parametrize("N", [1, 4, 16, 64])
def test_legs_eigenvalues(N):
    w = ssm.legs_normal_eigenvalues(N)
    assert w.shape == (N,)
    np.testing.assert_allclose(w.real, -0.5, atol=1e-9)  # S = −I/2 + skew-symmetric
    assert np.all(w.imag > 0) and np.all(np.diff(w.imag) > 0)
    # independently: the skew part K[n, k] = −½ sqrt((2n+1)(2k+1)) sign(n − k) has
    # eigenvalues ±iω, i.e. the Hermitian i·K has eigenvalues ±ω
    q = np.sqrt(2 * np.arange(2 * N) + 1.0)
    n = np.arange(2 * N)
    K = -0.5 * np.outer(q, q) * np.sign(n[:, None] - n[None, :])
    omega = np.linalg.eigvalsh(1j * K)
    np.testing.assert_allclose(w.imag, np.sort(omega[omega > 0]), rtol=1e-9)


def test_inits_give_the_papers_eigenvalues():
    N = 6
    n = np.arange(N)
    rng = np.random.default_rng(0)
    want = {"s4d-lin": -0.5 + 1j * np.pi * n,
            # the paper's N counts the conjugate modes too: N_paper = 2N
            "s4d-inv": -0.5 + 1j * (2 * N / np.pi) * (2 * N / (2 * n + 1) - 1),
            "legs": ssm.legs_normal_eigenvalues(N)}
    for init, A in want.items():
        p = ssm.init_params(rng, 3, N, init=init, dt_min=0.01, dt_max=0.02)
        got = -np.exp(p["A_re_log"]) + 1j * p["A_im"]
        np.testing.assert_allclose(got, np.broadcast_to(A, (3, N)), rtol=1e-12, atol=1e-12)
        dt = np.exp(p["log_dt"])
        assert np.all((dt >= 0.01) & (dt <= 0.02))
        assert all(v.flags.c_contiguous for v in p.values())
        assert np.all(got.imag >= 0)  # the stored half; 2·Re adds the conjugates
        # every discretised eigenvalue is inside the unit disk (a stable filter)
        Abar, _ = ssm.discretize(p, "zoh")
        assert np.all(np.abs(Abar) < 1)


def test_float32_init_and_state_dtypes():
    params = ssm.init_params(np.random.default_rng(0), 3, 5, dtype=np.float32)
    assert all(v.dtype == np.float32 for v in params.values())
    for method in ("recurrent", "conv"):
        y, h_T, _ = ssm.forward(params, np.ones((2, 4, 3), np.float32), method=method)
        assert y.dtype == np.float32 and h_T.dtype == np.complex64 and h_T.shape == (2, 3, 5)


def _nan_masks(params, x, h0, dy, dstate, **kw):
    """Non-finite masks of the outputs, final state and every gradient."""
    with np.errstate(all="ignore"):
        y, h_T, cache = ssm.forward(params, x, h0, **kw)
        g = ssm.backward(params, cache, dy, dstate)
    return {"y": ~np.isfinite(y), "h_T": ~np.isfinite(h_T),
            **{"d" + k: ~np.isfinite(v) for k, v in g.items()}}


@pytest.mark.parametrize("where", ["x", "dy"])
@pytest.mark.parametrize("t_bad", [0, 3, 8])
@pytest.mark.parametrize("discretization", ssm.DISCRETIZATIONS)
def test_conv_keeps_nan_causal_like_the_recurrence(discretization, t_bad, where):
    """Issue 7, defect 2: one NaN in x at t = 3 made the conv method's outputs at
    t = 0..2 NaN too (the FFT mixes all steps). Now y_t is NaN exactly from the
    NaN on (in its batch row and channel), a NaN in dy reaches dx_j exactly for
    j ≤ t, and every output and gradient has the recurrence's non-finite mask."""
    params, x, h0 = inputs(T=9)
    rng = np.random.default_rng(1)
    dy, dstate = rng.standard_normal(x.shape), rng.standard_normal(h0.shape) + 0j
    if where == "x":
        x = x.copy()
        x[0, t_bad, 1] = np.nan
    else:
        dy[0, t_bad, 1] = np.inf
    kw = {"discretization": discretization}
    got = _nan_masks(params, x, h0, dy, dstate, method="conv", **kw)
    ref = _nan_masks(params, x, h0, dy, dstate, **kw)
    if where == "x":
        expected_y = np.zeros(x.shape, bool)
        expected_y[0, t_bad:, 1] = True
        np.testing.assert_array_equal(got["y"], expected_y)
    else:
        expected_dx = np.zeros(x.shape, bool)
        expected_dx[0, :t_bad + 1, 1] = True
        np.testing.assert_array_equal(got["dx"], expected_dx)
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_bad_discretization_and_init_arguments():
    params, x, h0 = inputs()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"discretization: expected one of .*got 'euler'"):
        ssm.forward(params, x, h0, discretization="euler")
    with pytest.raises(ValueError, match=r"init: expected one of .*got 'hippo'"):
        ssm.init_params(rng, 3, 4, init="hippo")
    with pytest.raises(ValueError, match=r"dt_min, dt_max: expected 0 < dt_min <= dt_max"):
        ssm.init_params(rng, 3, 4, dt_min=0.5, dt_max=0.1)
