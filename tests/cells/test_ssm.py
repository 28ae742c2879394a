"""cells.ssm (S4D / LSSL): every scan method and the FFT convolution equal the
definition, forward and backward, for both discretisations; gradients by finite
differences; the initialisations (HiPPO-LegS eigenvalues included); golden values."""

import cmath
import math

import numpy as np
import pytest

from minirec import gradcheck
from minirec.cells import ssm
from tests.conftest import TOL, assert_close

GRAD_TOL = 1e-6  # DESIGN §6: float64 central differences, relative error


def make(rng, B=2, T=7, D=3, N=4, dtype=np.float64, init="s4d-lin"):
    params = ssm.init_params(rng, D, N, dtype=dtype, init=init)
    for k in ("B_re", "B_im"):  # move B off S4D's special B = 1
        params[k] = params[k] + (0.2 * rng.standard_normal(params[k].shape)).astype(dtype)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    cdtype = np.result_type(dtype, np.complex64)
    h0 = (rng.standard_normal((B, D, N)) + 1j * rng.standard_normal((B, D, N))).astype(cdtype)
    return params, x, h0


def upstream(rng, y, h_T):
    dy = rng.standard_normal(y.shape)
    dh = rng.standard_normal(h_T.shape) + 1j * rng.standard_normal(h_T.shape)
    return dy, dh


def to64(params):
    return {k: v.astype(np.float64) for k, v in params.items()}


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


@pytest.mark.parametrize("discretization", ssm.DISCRETIZATIONS)
@pytest.mark.parametrize("method", ssm.METHODS)
@pytest.mark.parametrize("T", [1, 2, 13])
def test_method_equals_definition_forward_and_backward(method, T, discretization, rng):
    params, x, h0 = make(rng, T=T)
    kw = {"discretization": discretization}
    ref_y, ref_h, ref_cache = ssm.forward(params, x, h0, **kw)
    dy, dh = upstream(rng, ref_y, ref_h)
    ref_g = ssm.backward(params, ref_cache, dy, dh)
    for chunk in (None, 4):  # 13 is not a multiple of 4
        y, h_T, cache = ssm.forward(params, x, h0, method=method, chunk_size=chunk, **kw)
        g = ssm.backward(params, cache, dy, dh)
        assert_close(y, ref_y, 1e-10, "y")
        assert_close(h_T, ref_h, 1e-10, "h_T")
        assert set(g) == set(ref_g)
        for k in ref_g:
            assert g[k].dtype == ref_g[k].dtype, k
            assert_close(g[k], ref_g[k], 1e-10, f"d{k}")


@pytest.mark.parametrize("discretization", ssm.DISCRETIZATIONS)
@pytest.mark.parametrize("method", ssm.METHODS)
def test_float32_matches_float64_definition(method, discretization, rng):
    params, x, h0 = make(rng, T=37, D=4, N=8, dtype=np.float32)
    kw = {"discretization": discretization}
    ref_y, ref_h, ref_cache = ssm.forward(to64(params), x.astype(np.float64),
                                          h0.astype(np.complex128), **kw)
    dy, dh = upstream(rng, ref_y, ref_h)
    ref_g = ssm.backward(to64(params), ref_cache, dy, dh)
    y, h_T, cache = ssm.forward(params, x, h0, method=method, chunk_size=5, **kw)
    g = ssm.backward(params, cache, dy.astype(np.float32), dh.astype(np.complex64))
    assert y.dtype == np.float32 and h_T.dtype == np.complex64
    tol = TOL[np.dtype(np.float32)]  # 1e-4 relative RMS
    assert_close(y, ref_y, tol, "y")
    assert_close(h_T, ref_h, tol, "h_T")
    for k in ref_g:
        assert g[k].dtype == (np.complex64 if k == "state0" else np.float32), k
        assert_close(g[k], ref_g[k], tol, f"d{k}")


@pytest.mark.parametrize("discretization", ssm.DISCRETIZATIONS)
@pytest.mark.parametrize("method", ssm.METHODS)
def test_gradcheck(method, discretization, rng):
    params, x, h0 = make(rng, T=5, D=2, N=3)
    report = gradcheck.check_cell(ssm, params, x, h0, method=method, chunk_size=2,
                                  discretization=discretization, tol=GRAD_TOL)
    assert report.passed, str(report)
    assert set(report.errors) == set(params) | {"x", "state0"}


@pytest.mark.parametrize("init", ssm.INITS)
def test_gradcheck_every_init_with_conv_and_no_initial_state(init, rng):
    params, x, _ = make(rng, T=4, D=2, N=3, init=init)
    report = gradcheck.check_cell(ssm, params, x, None, method="conv", tol=GRAD_TOL)
    assert report.passed, str(report)


@pytest.mark.parametrize("method", ssm.METHODS)
def test_split_resume_equals_one_call(method, rng):
    params, x, h0 = make(rng, T=23)
    y, h_T, _ = ssm.forward(params, x, h0, method=method, chunk_size=4)
    y1, s1, _ = ssm.forward(params, x[:, :10], h0, method=method, chunk_size=4)
    y2, s2, _ = ssm.forward(params, x[:, 10:], s1, method=method, chunk_size=4)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-12, "y")
    assert_close(s2, h_T, 1e-12, "h_T")


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
def test_kernel_is_the_impulse_response(discretization, rng):
    params, _, _ = make(rng, T=1)
    params["D"] = np.zeros_like(params["D"])
    x = np.zeros((1, 9, 3))
    x[0, 0] = 1.0
    y, _, _ = ssm.forward(params, x, discretization=discretization)
    K = ssm.kernel(params, 9, discretization=discretization)
    assert K.shape == (3, 9)
    np.testing.assert_allclose(y[0].T, K, rtol=1e-12, atol=1e-14)


def test_zoh_and_bilinear_agree_to_second_order_in_dt(rng):
    """Bilinear is the (1,1) Padé approximant of exp: Ā differs by O((ΔA)³), so the
    kernels over a fixed horizon differ by O(Δ²): halving Δ (and doubling T) divides
    the gap by about 4."""
    params, _, _ = make(rng, D=1, N=4)
    gaps = []
    for k in range(3):
        p = dict(params, log_dt=np.array([math.log(0.05 / 2**k)]))
        T = 40 * 2**k
        K_z = ssm.kernel(p, T, "zoh") / math.exp(p["log_dt"][0])
        K_b = ssm.kernel(p, T, "bilinear") / math.exp(p["log_dt"][0])
        gaps.append(np.max(np.abs(K_z - K_b)))
    ratios = [gaps[i] / gaps[i + 1] for i in range(2)]
    assert all(3.5 < r < 4.5 for r in ratios), (gaps, ratios)


def test_step_pair_equals_sequence(rng):
    params, x, h0 = make(rng, T=6)
    for disc in ssm.DISCRETIZATIONS:
        y, h_T, cache = ssm.forward(params, x, h0, discretization=disc)
        dy, dh = upstream(rng, y, h_T)
        g = ssm.backward(params, cache, dy, dh)
        h, ys, caches = h0, [], []
        for t in range(x.shape[1]):
            y_t, h, c = ssm.step_forward(params, x[:, t], h, disc)
            ys.append(y_t)
            caches.append(c)
        assert_close(np.stack(ys, axis=1), y, 1e-13, "y")
        assert_close(h, h_T, 1e-13, "h_T")
        dh_t, dxs = dh, []
        sums = {k: np.zeros_like(v) for k, v in params.items()}
        for t in reversed(range(x.shape[1])):
            dx_t, dh_t, dp = ssm.step_backward(dy[:, t], dh_t, caches[t])
            dxs.append(dx_t)
            for k in sums:
                sums[k] += dp[k]
        assert_close(np.stack(dxs[::-1], axis=1), g["x"], 1e-12, "dx")
        assert_close(dh_t, g["state0"], 1e-12, "dstate0")
        for k in sums:
            assert_close(sums[k], g[k], 1e-12, f"d{k}")


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


def test_real_initial_state_gets_a_real_gradient(rng):
    params, x, h0 = make(rng)
    for method in ("recurrent", "conv"):
        y, _, cache = ssm.forward(params, x, h0.real.copy(), method=method)
        g = ssm.backward(params, cache, np.ones_like(y))
        assert not np.iscomplexobj(g["state0"])
        _, _, cache_c = ssm.forward(params, x, h0.real.astype(complex), method=method)
        g_c = ssm.backward(params, cache_c, np.ones_like(y))
        np.testing.assert_allclose(g["state0"], g_c["state0"].real, rtol=1e-13)


@pytest.mark.parametrize("change, match", [
    (lambda p, x, h: (dict(p, B_re=p["B_re"][:, :3]), x, h), r"B_re: expected shape \(D=3, N=4\)"),
    (lambda p, x, h: (p, x[..., :2], h), r"x: expected shape"),
    (lambda p, x, h: (p, x + 0j, h), "expected dtype"),
    (lambda p, x, h: (p, x, h[:, :, :3]), r"state0: expected shape \(B=2, D=3, N=4\)"),
    (lambda p, x, h: (p, x.astype(np.float32), h), "mixed precisions"),
    (lambda p, x, h: (dict(p, extra=p["D"]), x, h), "unexpected"),
    (lambda p, x, h: (dict(p, A_im=p["A_im"] + 0j), x, h), "expected dtype"),
    (lambda p, x, h: (p, x[:, :0], h), "T >= 1"),
])
def test_bad_input_is_refused_with_a_clear_message(change, match, rng):
    params, x, h0 = change(*make(rng))
    with pytest.raises((ValueError, TypeError), match=match):
        ssm.forward(params, x, h0)


def test_bad_arguments(rng):
    params, x, h0 = make(rng)
    with pytest.raises(ValueError, match="discretization"):
        ssm.forward(params, x, h0, discretization="euler")
    with pytest.raises(ValueError, match="method"):
        ssm.forward(params, x, h0, method="fft")
    with pytest.raises(ValueError, match="init"):
        ssm.init_params(rng, 3, 4, init="hippo")
    with pytest.raises(ValueError, match="dt_min"):
        ssm.init_params(rng, 3, 4, dt_min=0.5, dt_max=0.1)
    for method in ("recurrent", "conv"):
        _, _, cache = ssm.forward(params, x, h0, method=method)
        with pytest.raises(ValueError, match=r"dy: expected shape \(2, 7, 3\)"):
            ssm.backward(params, cache, np.zeros((2, 6, 3)))
        with pytest.raises(ValueError, match=r"dstate: expected shape \(2, 3, 4\)"):
            ssm.backward(params, cache, None, np.zeros((2, 3, 5), complex))
