"""cells.slstm, method="newton" (issue 12): the step Jacobian, and the Newton
solve against the recurrent definition.

The Jacobian ∂(h, c, n, m)_t/∂(h, c, n, m)_{t-1} (N, 4H, 4H) is checked against
central differences of step_forward (n0 > 0, both branches of the max) and its
transpose against step_backward's state gradient (also on the first-step branch,
with a binding forget clamp, and at ties). The converged solve equals the
definition (forward ≤ 1e-10, every gradient ≤ 1e-8 relative RMS, float64) for
T ∈ {1, 37, 256} on numpy, numba and cuda-emulated; after k iterations the
first k states are exact. Gradcheck, dtypes, split-resume, NaN at one step and
bad input for the "newton" pairs are tests/test_contract.py's (entry "slstm").
"""

import warnings

import numpy as np
import pytest

from minirec import _math as M
from minirec import registry
from minirec.cells import slstm
from minirec.registry import _flatten, rel_rms
from minirec.scan import newton
from tests.cells.test_slstm import BACKENDS  # numpy, numba, cuda-emulated (skips said)


def make(rng, **dims):
    """The registry's example inputs ``(params, x, (h0, c0, n0, m0))`` (n0 ~ U(0.5, 2),
    m0 ~ N(0, 1)); (B, T, D, H, NH) = (2, 5, 3, 4, 2) unless overridden."""
    inputs = registry.get("slstm").make_inputs(rng, np.float64, "small", **dims)
    return inputs["params"], inputs["x"], inputs["state0"]


def step_inputs(rng, N=6, D=3, H=6, NH=2, m_scale=2.0, n0=None):
    """One step's ``(params, x_t, state)`` at a random state; ``m0 ~ N(0, m_scale²)``
    puts some entries on each branch of ``m_t = max(a_i, lfm)``."""
    params = slstm.init_params(rng, D, H, num_heads=NH)
    params["R"] = 3 * params["R"]  # a visible recurrent coupling
    state = (rng.standard_normal((N, H)), rng.standard_normal((N, H)),
             rng.uniform(0.5, 2.0, (N, H)) if n0 is None else n0,
             m_scale * rng.standard_normal((N, H)))
    return params, rng.standard_normal((N, D)), state


def finite_differences(params, x_t, state, eps=1e-6, columns=None):
    """Central differences ``(N, 4H, 4H)`` of step_forward in the flat state
    ``[h | c | n | m]``; only the listed columns (others left NaN)."""
    s = np.concatenate(state, axis=1)
    N, n = s.shape
    H = n // 4
    fd = np.full((N, n, n), np.nan)
    for j in range(n) if columns is None else columns:
        e = np.zeros(n)
        e[j] = eps
        plus = np.concatenate(slstm.step_forward(params, x_t, np.split(s + e, 4, axis=1))[0], 1)
        minus = np.concatenate(slstm.step_forward(params, x_t, np.split(s - e, 4, axis=1))[0], 1)
        fd[:, :, j] = (plus - minus) / (2 * eps)
    assert n == 4 * H
    return fd


def rel_max(a, b):
    """``max|a − b| / max(1e-8, max|a| + max|b|)`` (DESIGN §6)."""
    return float(np.max(np.abs(a - b)) / max(1e-8, np.max(np.abs(a)) + np.max(np.abs(b))))


def errors(got, ref):
    g, r = _flatten("", got), _flatten("", ref)
    assert set(g) == set(r)
    return {k: rel_rms(g[k], r[k]) for k in r}


def definition_states(params, x, state0):
    """The recurrent definition's states ``(B, T, 4H)`` in the flat order."""
    state, out = state0, []
    for t in range(x.shape[1]):
        state, _ = slstm.step_forward(params, x[:, t], state)
        out.append(np.concatenate(state, axis=1))
    return np.stack(out, axis=1)


# ---------------------------------------------------------------------------
# the step Jacobian
# ---------------------------------------------------------------------------

def test_step_jacobian_is_the_full_flat_matrix_zero_between_heads(rng):
    params, x_t, state = step_inputs(rng, N=3, H=6, NH=3)
    J = slstm.step_jacobian(params, x_t, state)
    assert J.shape == (3, 24, 24)
    dh = 2
    head = np.arange(24) % 6 // dh  # the head of each flat entry [h | c | n | m]
    other = head[:, None] != head[None, :]
    assert np.all(J[:, other] == 0) and np.any(J[:, ~other] != 0)


def test_step_jacobian_equals_finite_differences_on_both_branches_of_the_max(rng):
    """n0 > 0: the derivative of the step as computed. The max must be taken on
    both sides, far enough from a tie for a central difference (gap ≫ eps)."""
    params, x_t, state = step_inputs(rng)
    _, cache = slstm.step_forward(params, x_t, state)
    assert cache.take_i.any() and (~cache.take_i).any(), "one branch of the max not exercised"
    H = state[0].shape[1]
    gap = np.abs(cache.a[:, :H] - cache.lfm).min()
    assert gap > 1e-4, f"a tie within {gap:.1e}: central differences would cross the branch"
    err = rel_max(slstm.step_jacobian(params, x_t, state), finite_differences(params, x_t, state))
    assert err < 1e-7, f"step_jacobian vs central differences: relative error {err:.2e} ≥ 1e-7"


def test_step_jacobian_on_the_first_step_branch_equals_finite_differences_but_in_n(rng):
    """n0 = 0 (the zero state's branch m_t = a_i; the forget clamp binds where
    lfm > a_i): the columns of h, c, m by central differences (moving n off 0
    would leave the branch, so its columns are checked by J^T v below)."""
    N, H = 6, 6
    params, x_t, state = step_inputs(rng, N=N, H=H, n0=np.zeros((N, H)))
    _, cache = slstm.step_forward(params, x_t, state)
    assert (cache.lfm - cache.m > 0).any(), "the forget clamp never binds"
    cols = [j for j in range(4 * H) if not 2 * H <= j < 3 * H]
    J = slstm.step_jacobian(params, x_t, state)
    fd = finite_differences(params, x_t, state, columns=cols)
    err = rel_max(J[:, :, cols], fd[:, :, cols])
    assert err < 1e-7, f"first-step branch: relative error {err:.2e} ≥ 1e-7"


def _tied_state(rng, N=4, H=6):
    """A state where a_i = lfm exactly for some entries: m0 := a_i − log σ(a_f)
    (kept where it rounds back to a_i)."""
    params, x_t, state = step_inputs(rng, N=N, H=H)
    _, cache = slstm.step_forward(params, x_t, state)
    a_i, a_f = cache.a[:, :H], cache.a[:, H:2 * H]
    m0 = a_i - M.log_sigmoid(a_f)
    tie = m0 + M.log_sigmoid(a_f) == a_i
    state = state[:3] + (np.where(tie, m0, state[3]),)
    return params, x_t, state, tie


@pytest.mark.parametrize("where", ["both branches", "first step", "ties"])
def test_jacobian_transpose_times_v_is_step_backwards_state_gradient(where, rng):
    N, H = 6, 6
    if where == "ties":
        params, x_t, state, tie = _tied_state(rng, N, H)
        assert tie.sum() >= N, "too few exact ties"
    else:
        params, x_t, state = step_inputs(rng, N=N, H=H,
                                         n0=np.zeros((N, H)) if where == "first step" else None)
    _, cache = slstm.step_forward(params, x_t, state)
    v = tuple(rng.standard_normal((N, H)) for _ in range(4))
    _, dprev, _ = slstm.step_backward(v, cache)
    J = slstm.step_jacobian(params, x_t, state)
    jtv = np.einsum("bi,bij->bj", np.concatenate(v, axis=1), J)
    err = rel_max(jtv, np.concatenate(dprev, axis=1))
    assert err <= 1e-12, f"{where}: J^T v vs step_backward: relative error {err:.2e} > 1e-12"


# ---------------------------------------------------------------------------
# converged Newton equals the definition
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("state", ["random", "zero"])
@pytest.mark.parametrize("T", [1, 37, 256])
@pytest.mark.parametrize("backend", BACKENDS)
def test_converged_newton_equals_recurrent(backend, T, state, rng):
    params, x, s0 = make(rng, B=2, T=T, D=5, H=8, NH=2)
    if state == "zero":
        s0 = None
    y_ref, st_ref, c_ref = slstm.forward(params, x, s0)
    dy = rng.standard_normal(y_ref.shape)
    ds = tuple(rng.standard_normal(s.shape) for s in st_ref)
    g_ref = slstm.backward(params, c_ref, dy, ds)
    y, st, cache = slstm.forward(params, x, s0, method="newton", backend=backend)
    assert cache.newton.converged and cache.newton.residual <= newton.DEFAULT_TOL[x.dtype]
    fwd = errors({"y": y, "state": st}, {"y": y_ref, "state": st_ref})
    bad = {k: v for k, v in fwd.items() if not v <= 1e-10}
    assert not bad, f"{backend} T={T}: forward relative RMS above 1e-10: {bad}"
    g = slstm.backward(params, cache, dy, ds)
    assert list(g) == list(g_ref)
    bad = {k: v for k, v in errors(g, g_ref).items() if not v <= 1e-8}
    assert not bad, f"{backend} T={T}: gradients relative RMS above 1e-8: {bad}"


def test_every_scan_method_gives_the_same_solve(rng):
    params, x, s0 = make(rng, T=37)
    ref, _, _ = slstm.forward(params, x, s0)
    for scan_method in ("recurrent", "hillis_steele", "blelloch"):
        y, _, cache = slstm.forward(params, x, s0, method="newton",
                                    newton_options={"scan_method": scan_method})
        assert cache.newton.converged
        assert rel_rms(y, ref) <= 1e-10, scan_method


# ---------------------------------------------------------------------------
# the k-steps-exact property, the guess, the cache
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("guess", ["default", "zeros"])
def test_after_k_iterations_the_first_k_states_are_exact(guess, rng):
    """k Newton steps leave s*_0 … s*_{k−1} (every part h, c, n, m) equal to the
    definition from any guess; ``tol=1e-300`` keeps the solve from stopping early."""
    T, H = 24, 4
    params, x, s0 = make(rng, T=T)
    params["R"] = 3 * params["R"]
    ref = definition_states(params, x, s0)
    g = None if guess == "default" else tuple(np.zeros((2, T, H)) for _ in range(4))
    for k in (1, 2, 3, 5, 8):
        with pytest.warns(newton.NewtonConvergenceWarning, match="did not converge"):
            y, _, cache = slstm.forward(params, x, s0, method="newton",
                                        newton_options={"max_iter": k, "on_fail": "warn",
                                                        "tol": 1e-300, "guess": g})
        assert cache.newton.iterations == k and not cache.newton.converged
        # each head's iterate: prev[:, t] = s*_{t−1}, so s*_0 … s*_{k−1} = prev[:, 1:k+1]
        S = np.concatenate([np.stack(np.split(c.prev[:, 1:k + 1], 4, axis=2))
                            for c in cache.newton.heads], axis=3)
        S = np.concatenate(list(S), axis=2)
        exact = np.abs(S - ref[:, :k]).max()
        assert exact <= 1e-12, f"{guess}, k={k}: first k states off by {exact:.1e}"
        assert np.abs(y[:, :k] - ref[:, :k, :H]).max() <= 1e-12
        if guess == "zeros" and k <= 2:
            later = np.abs(y[:, k:] - ref[:, k:, :H]).max()
            assert later > 1e-6, f"k={k}: the later states were already exact (test too easy)"


def test_the_cache_reports_iterations_and_the_final_residual(rng):
    params, x, s0 = make(rng, T=37, H=8, NH=2)
    _, _, cache = slstm.forward(params, x, s0, method="newton")
    c = cache.newton
    assert c.converged and 2 <= c.iterations <= 10
    assert 0 <= c.residual <= newton.DEFAULT_TOL[np.dtype(np.float64)]
    assert len(c.heads) == 2 and c.iterations == max(h.iterations for h in c.heads)
    assert c.residual == max(h.residual for h in c.heads)
    for h in c.heads:
        assert h.structure == "full" and h.max_iter == 37 and h.converged  # min(T, 100)


def test_the_default_guess_converges_where_zeros_take_many_iterations(rng):
    """T = 256, init_params weights from the zero state: the guess without the
    recurrent input needs a handful of iterations, zeros several times more
    (module docstring, "The first iterate")."""
    B, T, D, H = 2, 256, 8, 16
    params = slstm.init_params(rng, D, H, num_heads=4)
    x = rng.standard_normal((B, T, D))
    y_ref, _, _ = slstm.forward(params, x)
    y, _, cache = slstm.forward(params, x, method="newton")
    assert cache.newton.converged and cache.newton.iterations <= 8
    assert rel_rms(y, y_ref) <= 1e-10
    zeros = tuple(np.zeros((B, T, H)) for _ in range(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", newton.NewtonConvergenceWarning)
        _, _, cz = slstm.forward(params, x, method="newton",
                                 newton_options={"guess": zeros, "on_fail": "warn"})
    assert cz.newton.iterations >= 3 * cache.newton.iterations


def test_newton_guess_is_the_cell_without_its_recurrent_input(rng):
    """With R = 0 the guess is the solution itself: no Newton step is taken."""
    params, x, s0 = make(rng, T=37)
    params["R"] = np.zeros_like(params["R"])
    y_ref, st_ref, _ = slstm.forward(params, x, s0)
    guess = slstm.newton_guess(params, x, s0)
    assert rel_rms(guess[0], y_ref) <= 1e-12
    assert all(rel_rms(g[:, -1], s) <= 1e-12 for g, s in zip(guess, st_ref))
    _, _, cache = slstm.forward(params, x, s0, method="newton")
    assert cache.newton.iterations == 0


def test_a_nan_in_one_head_of_state0_stays_in_that_head(rng):
    """As in the definition (R is block-diagonal): head by head, the other
    head's outputs stay finite and equal."""
    params, x, s0 = make(rng, T=9)
    h0 = s0[0].copy()
    h0[0, 0] = np.nan  # unit 0: head 0 of 2
    s0 = (h0,) + s0[1:]
    y_ref, _, _ = slstm.forward(params, x, s0)
    with np.errstate(invalid="ignore"):
        y, _, cache = slstm.forward(params, x, s0, method="newton")
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(y_ref))
    assert np.isnan(y[0, :, :2]).all() and np.isfinite(y[0, :, 2:]).all()
    assert rel_rms(y[:, :, 2:], y_ref[:, :, 2:]) <= 1e-10


def test_a_guess_of_the_wrong_shape_is_refused(rng):
    params, x, s0 = make(rng, T=9)
    bad = tuple(np.zeros((2, 9, 3)) for _ in range(4))
    with pytest.raises(ValueError, match=r"guess: expected part 0 of shape \(B, T, H\) with "
                                         r"H = NH·dh = 4, got \(2, 9, 3\)"):
        slstm.forward(params, x, s0, method="newton", newton_options={"guess": bad})
    with pytest.raises(TypeError, match=r"guess: expected a tuple of 4 arrays .*got ndarray"):
        slstm.forward(params, x, s0, method="newton",
                      newton_options={"guess": np.zeros((2, 9, 4))})
