"""scan.newton: Newton solves of nonlinear recurrences (DEER / ParaRNN).

What is specific to Newton: after k iterations the first k states are exact;
converged Newton equals the recurrent definition (forward ≤ 1e-10, every
gradient ≤ 1e-8 relative RMS, float64) for T ∈ {1, 37, 256} on every backend;
what happens when it does not converge or diverges; what a cell without a
step Jacobian is told. The registry's contract tests cover the rest for the
"newton" pairs of rnn, rnn_relu, gru, lstm, gru_diagonal, lstm_diagonal.
"""

import warnings

import numpy as np
import pytest

from minirec import _backend, bptt, gradcheck
from minirec.cells import gru, lstm, rnn
from minirec.registry import _flatten, rel_rms
from minirec.scan import newton
from tests.kernels.cuda_helpers import cupy_or_skip

# (label, module, init_params keywords, forward keywords, state is (h, c))
CELLS = {
    "rnn": (rnn, {}, {}, False),
    "rnn_relu": (rnn, {}, {"nonlinearity": "relu"}, False),
    "gru": (gru, {}, {}, False),
    "lstm": (lstm, {}, {}, True),
    "gru_diagonal": (gru, {"diagonal": True}, {}, False),
    "lstm_diagonal": (lstm, {"diagonal": True}, {}, True),
}
STRUCTURE = {"rnn": "full", "rnn_relu": "full", "gru": "full", "lstm": "full",
             "gru_diagonal": "diagonal", "lstm_diagonal": "block"}


def make(name, rng, B=2, T=37, D=5, H=6, scale=1.0):
    """``(module, params, x, state0, forward kwargs)``; ``scale`` multiplies the
    recurrent weights (large: a strongly coupled cell that Newton takes many
    iterations to solve from zeros)."""
    mod, init_kw, fwd_kw, hc = CELLS[name]
    params = mod.init_params(rng, D, H, **init_kw)
    params["W_hh"] = scale * params["W_hh"]
    x = rng.standard_normal((B, T, D))
    state0 = ((rng.standard_normal((B, H)), rng.standard_normal((B, H))) if hc
              else rng.standard_normal((B, H)))
    return mod, params, x, state0, fwd_kw


def upstream(rng, y, state):
    dy = rng.standard_normal(y.shape)
    ds = (tuple(rng.standard_normal(s.shape) for s in state) if isinstance(state, tuple)
          else rng.standard_normal(state.shape))
    return dy, ds


def errors(got, ref):
    g, r = _flatten("", got), _flatten("", ref)
    assert set(g) == set(r)
    return {k: rel_rms(g[k], r[k]) for k in r}


# ---------------------------------------------------------------------------
# the k-steps-exact property
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CELLS))
def test_after_k_iterations_the_first_k_states_are_exact(name, rng):
    """From zeros, k Newton steps leave s*_0 … s*_{k−1} equal to the definition
    (to rounding), while (for small k) the later states are not. ``tol=1e-300``
    keeps the solve from stopping early."""
    T = 24
    mod, params, x, s0, kw = make(name, rng, T=T, scale=3.0)
    y_ref, _, _ = mod.forward(params, x, s0, **kw)
    for k in (1, 2, 3, 5, 8):
        with pytest.warns(newton.NewtonConvergenceWarning, match="did not converge"):
            y, _, cache = mod.forward(params, x, s0, method="newton", **kw,
                                      newton_options={"max_iter": k, "on_fail": "warn",
                                                      "tol": 1e-300})
        assert cache.newton.iterations == k and not cache.newton.converged
        exact = np.abs(y[:, :k] - y_ref[:, :k]).max()
        assert exact <= 1e-12, f"k={k}: first k states off by {exact:.1e}"
        if k <= 2:
            later = np.abs(y[:, k:] - y_ref[:, k:]).max()
            assert later > 1e-6, f"k={k}: the later states were already exact (test too easy)"


def test_T_iterations_always_suffice_even_for_a_strongly_coupled_cell(rng):
    """W_hh scaled ×3: Newton from zeros needs many iterations, never more than T."""
    mod, params, x, s0, kw = make("rnn", rng, T=30, scale=3.0)
    y_ref, _, _ = mod.forward(params, x, s0)
    y, _, cache = mod.forward(params, x, s0, method="newton",
                              newton_options={"max_iter": 30})
    assert cache.newton.converged and 8 <= cache.newton.iterations <= 30
    assert rel_rms(y, y_ref) <= 1e-10


# ---------------------------------------------------------------------------
# converged Newton equals the definition, forward and backward, every backend
# ---------------------------------------------------------------------------

def _need(backend):
    if backend == "cupy":
        cupy_or_skip()
    if not _backend.available(backend):
        pytest.skip(f"backend {backend!r} is not usable here")


def _agreement(name, backend, T, rng, to_device=lambda a: a, to_host=lambda a: a):
    mod, params, x, s0, kw = make(name, rng, T=T)
    y_ref, st_ref, c_ref = mod.forward(params, x, s0, **kw)
    dy, ds = upstream(rng, y_ref, st_ref)
    g_ref = mod.backward(params, c_ref, dy, ds)
    dev = lambda v: {k: to_device(a) for k, a in v.items()} if isinstance(v, dict) else (  # noqa: E731
        tuple(map(to_device, v)) if isinstance(v, tuple) else to_device(v))
    host = lambda v: {k: host(a) for k, a in v.items()} if isinstance(v, dict) else (  # noqa: E731
        tuple(map(to_host, v)) if isinstance(v, tuple) else to_host(v))
    y, st, cache = mod.forward(dev(params), to_device(x), dev(s0), method="newton",
                               backend=backend, **kw)
    g = host(mod.backward(dev(params), cache, to_device(dy), dev(ds)))
    assert cache.newton.converged and cache.newton.residual <= cache.newton.tol
    fwd = errors({"y": host(y), "state": host(st)}, {"y": y_ref, "state": st_ref})
    bad = {k: v for k, v in fwd.items() if not v <= 1e-10}
    assert not bad, f"{name} {backend} T={T}: forward relative RMS above 1e-10: {bad}"
    bwd = errors(g, g_ref)
    bad = {k: v for k, v in bwd.items() if not v <= 1e-8}
    assert not bad, f"{name} {backend} T={T}: gradients relative RMS above 1e-8: {bad}"
    return cache


@pytest.mark.parametrize("T", [1, 37, 256])
@pytest.mark.parametrize("backend", ["numpy", "numba", "cuda-emulated"])
@pytest.mark.parametrize("name", list(CELLS))
def test_converged_newton_equals_recurrent(name, backend, T, rng):
    _need(backend)
    cache = _agreement(name, backend, T, rng)
    assert cache.newton.structure == (None if cache.newton.iterations == 0 else STRUCTURE[name])


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(CELLS))
def test_converged_newton_equals_recurrent_on_the_gpu(name, rng):
    """The steps in CuPy (the cells' NumPy code on CuPy arrays), the scans' CUDA kernels."""
    cupy = cupy_or_skip()
    _agreement(name, "cupy", 37, rng, cupy.asarray, lambda a: a.get())


@pytest.mark.parametrize("name", ["gru", "lstm", "gru_diagonal"])
def test_every_scan_method_gives_the_same_solve(name, rng):
    mod, params, x, s0, kw = make(name, rng, T=37)
    y_ref, _, _ = mod.forward(params, x, s0)
    methods = ("recurrent", "hillis_steele", "blelloch")
    if STRUCTURE[name] == "diagonal":
        methods += ("chunked",)
    for m in methods:
        y, _, cache = mod.forward(params, x, s0, method="newton", chunk_size=5,
                                  newton_options={"scan_method": m})
        assert rel_rms(y, y_ref) <= 1e-10, m
        assert cache.newton.scan_method == m


def test_a_scan_method_the_structure_lacks_is_refused(rng):
    mod, params, x, s0, _ = make("gru", rng, T=9)  # full Jacobian: scan.matrix
    with pytest.raises(ValueError, match=r"scan_method: expected one of .*got 'chunked'"):
        mod.forward(params, x, s0, method="newton", newton_options={"scan_method": "chunked"})


# ---------------------------------------------------------------------------
# the cache: iterations, residual, guesses
# ---------------------------------------------------------------------------

def test_the_cache_reports_iterations_and_the_final_residual(rng):
    mod, params, x, s0, _ = make("gru", rng, T=37)
    _, _, cache = mod.forward(params, x, s0, method="newton")
    c = cache.newton
    assert c.converged and 2 <= c.iterations <= 10
    assert 0 <= c.residual <= c.tol == newton.DEFAULT_TOL[np.dtype(np.float64)]
    assert c.max_iter == 37  # min(T, 100)


def test_a_converged_guess_takes_no_iteration_and_still_differentiates(rng):
    mod, params, x, s0, _ = make("lstm", rng, T=20)
    y_ref, st_ref, c_ref = mod.forward(params, x, s0)
    # the exact states as the guess: (h, c) for every t
    cs = []
    state = s0
    for t in range(20):
        state, _ = mod.step_forward(params, x[:, t], state)
        cs.append(state[1])
    guess = (y_ref, np.stack(cs, axis=1))
    y, _, cache = mod.forward(params, x, s0, method="newton", newton_options={"guess": guess})
    assert cache.newton.iterations == 0 and cache.newton.structure is None
    assert rel_rms(y, y_ref) <= 1e-14
    dy, ds = upstream(rng, y_ref, st_ref)
    bad = {k: v for k, v in errors(mod.backward(params, cache, dy, ds),
                                   mod.backward(params, c_ref, dy, ds)).items() if v > 1e-8}
    assert not bad


def test_a_guess_of_the_wrong_shape_is_refused(rng):
    mod, params, x, s0, _ = make("gru", rng, T=9)
    with pytest.raises(ValueError, match=r"guess: expected part 0 of shape \(2, 9, 6\).*got "
                                         r"\(2, 8, 6\)"):
        mod.forward(params, x, s0, method="newton",
                    newton_options={"guess": np.zeros((2, 8, 6))})


# ---------------------------------------------------------------------------
# no silent wrong answer: running out of iterations, divergence
# ---------------------------------------------------------------------------

def test_running_out_of_iterations_raises_with_the_residual(rng):
    mod, params, x, s0, _ = make("rnn", rng, T=30, scale=3.0)
    with pytest.raises(newton.NewtonConvergenceError,
                       match=r"did not converge in max_iter=2 .*residual .* = \d\.\d+e[-+]\d+ "
                             r"> tol = 1\.0e-13") as info:
        mod.forward(params, x, s0, method="newton", newton_options={"max_iter": 2})
    err = info.value
    assert err.iterations == 2 and err.residual > err.tol and err.where[1] >= 2


def test_on_fail_warn_returns_the_last_iterate_and_says_so(rng):
    mod, params, x, s0, _ = make("rnn", rng, T=30, scale=3.0)
    with pytest.warns(newton.NewtonConvergenceWarning, match=r"residual .* > tol"):
        _, _, cache = mod.forward(params, x, s0, method="newton",
                                  newton_options={"max_iter": 2, "on_fail": "warn"})
    assert not cache.newton.converged and cache.newton.residual > cache.newton.tol


def _reciprocal_cell():
    """s_t = x_t / s_{t−1}: from the zero guess the second step divides by 0."""
    def step_forward(params, x_t, h):
        h_next = params["w"] * x_t / h
        return h_next, (params, x_t, h, h_next)

    def step_backward(dh, cache_t):
        params, x_t, h, h_next = cache_t
        return (dh * params["w"] / h, -dh * h_next / h,
                {"w": (dh * x_t / h).sum(axis=0)})

    def step_jacobian(params, x_t, h):
        return -params["w"] * x_t / h ** 2  # diagonal

    cell = bptt.make_cell(step_forward, step_backward, name="reciprocal")
    cell.step_jacobian = step_jacobian
    return cell


def test_divergence_is_an_error_not_a_nan(rng):
    cell = newton.cell(_reciprocal_cell())
    params = {"w": np.ones(3)}
    x = rng.uniform(0.5, 1.5, (2, 6, 3))
    with pytest.raises(newton.NewtonConvergenceError, match="diverged: a non-finite residual"):
        with np.errstate(divide="ignore", invalid="ignore"):
            cell.forward(params, x, np.ones((2, 3)))


def test_a_nan_input_propagates_as_in_the_definition_without_an_error(rng):
    """NaN in x at (0, 7): row 0 from t = 7 on is NaN exactly as in the
    definition; the rest converges (no error, no warning)."""
    for name in ("gru", "lstm_diagonal"):
        mod, params, x, s0, _ = make(name, rng, T=15)
        x = x.copy()
        x[0, 7, 1] = np.nan
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("error", newton.NewtonConvergenceWarning)
            y_ref, _, _ = mod.forward(params, x, s0)
            y, _, cache = mod.forward(params, x, s0, method="newton")
        np.testing.assert_array_equal(np.isnan(y), np.isnan(y_ref))
        assert np.isnan(y[0, 7:]).all() and cache.newton.converged
        assert rel_rms(y[1], y_ref[1]) <= 1e-10 and rel_rms(y[0, :7], y_ref[0, :7]) <= 1e-10


# ---------------------------------------------------------------------------
# a user's cell: what to provide, and then it works
# ---------------------------------------------------------------------------

def _user_rnn():
    """An Elman RNN written as a user would, through minirec.bptt."""
    return bptt.make_cell(rnn.step_forward, rnn.step_backward, rnn.zero_state, name="my_rnn")


def test_a_cell_without_step_jacobian_is_told_what_to_provide():
    with pytest.raises(TypeError, match=r"(?s)expected my_rnn to have step_jacobian\(params, "
                                        r"x_t, state\).*got a cell without one.*Provide it.*"
                                        r"\(N, n, n\) \(full\), \(N, n\) \(diagonal\)"):
        newton.cell(_user_rnn())
    with pytest.raises(TypeError, match=r"step_jacobian: method='newton' expected a function"):
        newton.solve(rnn.step_forward, None, {}, np.zeros((1, 2, 3)), np.zeros((1, 4)))


def test_a_user_cell_with_step_jacobian_solves_and_passes_gradcheck(rng):
    user = _user_rnn()
    user.step_jacobian = rnn.step_jacobian
    cell = newton.cell(user)
    params = rnn.init_params(rng, 3, 4)
    x, h0 = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 4))
    y_ref, _, _ = user.forward(params, x, h0)
    y, _, cache = cell.forward(params, x, h0)
    assert rel_rms(y, y_ref) <= 1e-10 and cache.converged
    report = gradcheck.check_cell(cell, params, x, h0)
    assert report.passed, str(report)  # relative error < 1e-6, float64


def test_a_wrong_step_jacobian_shape_is_refused(rng):
    user = _user_rnn()
    user.step_jacobian = lambda params, x_t, h: np.zeros((h.shape[0], 3, 3))
    params = rnn.init_params(rng, 3, 4)
    with pytest.raises(ValueError, match=r"step_jacobian: expected J of shape \(N, n, n\) = "
                                         r"\(10, 4, 4\).*got \(10, 3, 3\)"):
        newton.cell(user).forward(params, rng.standard_normal((2, 5, 3)), np.zeros((2, 4)))


@pytest.mark.parametrize("name", list(CELLS))
def test_every_cells_step_jacobian_matches_finite_differences(name, rng):
    mod, params, x, s0, kw = make(name, rng, T=1)
    err = newton.check_jacobian(mod.step_forward, mod.step_jacobian, params, x[:, 0], s0,
                                step_kwargs=kw)
    assert err < 1e-8, f"{name}: step_jacobian off by {err:.1e} (relative)"


def test_check_jacobian_catches_a_wrong_jacobian(rng):
    mod, params, x, s0, _ = make("gru", rng, T=1)
    wrong = lambda p, x_t, h: 1.01 * gru.step_jacobian(p, x_t, h)  # noqa: E731
    assert newton.check_jacobian(gru.step_forward, wrong, params, x[:, 0], s0) > 1e-3


# ---------------------------------------------------------------------------
# bad options
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"max_iters": 3}, r"newton_options: expected keys among .*got \['max_iters'\]"),
    ({"max_iter": -1}, r"max_iter: expected a positive integer, got -1"),
    ({"tol": 0.0}, r"tol: expected a positive finite number, got 0.0"),
    ({"on_fail": "ignore"}, r"on_fail: expected one of \('raise', 'warn'\), got 'ignore'"),
    ({"scan_method": "fft"}, r"scan_method: expected one of .*got 'fft'"),
])
def test_bad_newton_options_are_refused(options, message, rng):
    mod, params, x, s0, _ = make("gru", rng, T=5)
    with pytest.raises(ValueError, match=message):
        mod.forward(params, x, s0, method="newton", newton_options=options)


def test_newton_options_without_method_newton_are_refused(rng):
    mod, params, x, s0, _ = make("lstm", rng, T=5)
    with pytest.raises(ValueError, match=r"newton_options: expected None with "
                                         r"method='recurrent'.*got \{'max_iter': 3\}"):
        mod.forward(params, x, s0, newton_options={"max_iter": 3})
