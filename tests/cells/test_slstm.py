"""cells.slstm: equal to the xLSTM authors' vanilla step (an independent NumPy
transcription here; their own code when the ``xlstm`` package is installed),
and what only the sLSTM has: the first-step branch of the stabiliser, the clamp
of the forget gate, ties of the max, heads, extreme gates in float32.
Gradients, agreement of backends at the registry's sizes, split-resume, dtypes
and the bad-input tables are tests/test_contract.py's (entry "slstm")."""

import math

import numpy as np
import pytest

from minirec import _backend, bptt, gradcheck, registry
from minirec.cells import slstm
from tests.conftest import TOL, assert_close

BACKENDS = ["numpy",
            pytest.param("numba", marks=pytest.mark.skipif(
                not _backend.available("numba"), reason="numba not installed")),
            pytest.param("cuda-emulated", marks=pytest.mark.skipif(
                not _backend.available("cuda-emulated"),
                reason="no C++20 compiler for cuda-emulated"))]


def make(rng, dtype=np.float64, **dims):
    """The registry's example inputs ``(params, x, (h0, c0, n0, m0))``;
    (B, T, D, H, NH) = (2, 5, 3, 4, 2) unless overridden."""
    inputs = registry.get("slstm").make_inputs(rng, dtype, "small", **dims)
    return inputs["params"], inputs["x"], inputs["state0"]


# ---------------------------------------------------------------------------
# the authors' reference step, transcribed independently
# ---------------------------------------------------------------------------

def authors_step(Wx, Ry, b, states):
    """A NumPy reading of ``slstm_forward_pointwise`` in the xLSTM repository
    (xlstm/blocks/slstm/src/vanilla/slstm.py): ``Wx, Ry (B, 4H)``, ``b (4H,)``
    in their gate-major order i, f, z, o; ``states (4, B, H)`` = y, c, n, m."""
    raw = Wx + Ry + b
    y, c, n, m = states
    H = y.shape[1]
    iraw, fraw, zraw, oraw = (raw[:, g * H:(g + 1) * H] for g in range(4))
    logfplusm = m - np.logaddexp(0.0, -fraw)  # m + log σ(fraw)
    mnew = iraw if np.all(n == 0.0) else np.maximum(iraw, logfplusm)  # all(n == 0): global
    ogate = 1.0 / (1.0 + np.exp(-oraw))
    with np.errstate(over="ignore"):  # their min(exp(·), 1) overflows to inf, then 1
        igate = np.minimum(np.exp(iraw - mnew), 1.0)
        fgate = np.minimum(np.exp(logfplusm - mnew), 1.0)
    cnew = fgate * c + igate * np.tanh(zraw)
    nnew = fgate * n + igate
    ynew = ogate * cnew / nnew
    return np.stack([ynew, cnew, nnew, mnew])


def authors_recurrent_kernel(R):
    """Their vanilla cell's internal ``R (NH, 4·dh, dh)`` from their external
    layout ``(NH, dh_in, 4, dh_out)`` (``_recurrent_kernel_ext2int``), the
    external one built from ours: ``R_ext[h, k, g, j] = R[g, h, j, k]``."""
    _, NH, dh, _ = R.shape
    R_ext = R.transpose(1, 3, 0, 2)
    return R_ext.reshape(NH, dh, 4, dh).transpose(0, 2, 3, 1).reshape(NH, 4 * dh, dh)


def authors_loop(params, x, state0):
    """Their ``slstm_forward``: per step ``Ry`` from ``states[0]`` (their recipe of
    reshapes), then the pointwise step. Returns ``y (B, T, H)`` and the state."""
    R_int = authors_recurrent_kernel(params["R"])
    NH, dh4, dh = R_int.shape
    B, T, _ = x.shape
    b = params["b"].reshape(4, NH, dh).transpose(1, 0, 2)  # their external bias (NH, 4, dh)
    b = b.transpose(1, 0, 2).reshape(-1)                     # _bias_ext2int
    states = np.stack(state0)
    ys = []
    for t in range(T):
        Wx = x[:, t] @ params["W_ih"].T
        Ry = (states[0].reshape(B, NH, 1, dh)
              @ R_int.transpose(0, 2, 1).reshape(1, NH, dh, dh4))
        Ry = Ry.reshape(B, NH, 4, dh).transpose(0, 2, 1, 3).reshape(B, -1)
        states = authors_step(Wx, Ry, b, states)
        ys.append(states[0])
    return np.stack(ys, axis=1), tuple(states)


def _random_params(rng, D, H, NH, scale=1.0):
    p = slstm.init_params(rng, D, H, num_heads=NH)
    return {k: v + scale * rng.standard_normal(v.shape) for k, v in p.items()}


@pytest.mark.parametrize("state", ["zero", "random", "n0 zero, c0 and m0 not"])
def test_equals_the_authors_vanilla_step(state, rng):
    """Their layout (gate-major i, f, z, o; their R and bias conversions), their
    first-step test and clamps: equal to rounding over T = 9, three heads."""
    B, T, D, H, NH = 3, 9, 4, 6, 3
    params = _random_params(rng, D, H, NH)
    x = rng.standard_normal((B, T, D))
    zeros = np.zeros((B, H))
    state0 = {"zero": (zeros, zeros, zeros, zeros),
              "random": (rng.standard_normal((B, H)), rng.standard_normal((B, H)),
                         rng.uniform(0.5, 2.0, (B, H)), rng.standard_normal((B, H))),
              # the first-step branch with f clamped at 1 where m0 + log σ(a_f) > a_i
              "n0 zero, c0 and m0 not": (rng.standard_normal((B, H)),
                                         rng.standard_normal((B, H)), zeros,
                                         rng.uniform(-3.0, 5.0, (B, H)))}[state]
    ref_y, ref_state = authors_loop(params, x, state0)
    y, state_t, _ = slstm.forward(params, x, state0)
    assert_close(y, ref_y, 1e-12, "y")
    for name, got, ref in zip("hcnm", state_t, ref_state):
        assert_close(got, ref, 1e-12, name)


def test_golden_scalar_worked_by_hand():
    """D = H = 1, one step from the zero state: m = a_i, i = 1, n = 1, c = z,
    h = σ(a_o) tanh(a_z), whatever the forget gate (it multiplies c0 = n0 = 0)."""
    p = {"W_ih": np.array([[0.1], [0.2], [0.3], [0.4]]), "R": np.zeros((4, 1, 1, 1)),
         "b": np.array([-0.5, 1.0, 0.25, -1.0])}
    y, (h, c, n, m), _ = slstm.forward(p, np.ones((1, 1, 1)))
    h_ref = 1 / (1 + math.exp(0.6)) * math.tanh(0.55)
    np.testing.assert_allclose([h.item(), c.item(), n.item(), m.item()],
                               [h_ref, math.tanh(0.55), 1.0, -0.4], rtol=1e-14)
    np.testing.assert_allclose(h_ref, 0.1773561804417929, rtol=1e-12)  # σ(−0.6) tanh(0.55)


@pytest.mark.oracle
def test_oracle_the_authors_code():
    """Their own ``slstm_forward`` (xlstm package, vanilla backend) in float64 on
    the same weights; skipped where ``xlstm`` is not installed."""
    pytest.importorskip("xlstm")
    torch = pytest.importorskip("torch")
    from xlstm.blocks.slstm.src.vanilla import slstm_forward, slstm_pointwise_function_registry
    rng = np.random.default_rng(0)
    B, T, D, H, NH = 2, 7, 3, 8, 2
    params = _random_params(rng, D, H, NH)
    x = rng.standard_normal((B, T, D))
    y, state, _ = slstm.forward(params, x)
    Wx = torch.from_numpy(np.ascontiguousarray((x @ params["W_ih"].T).transpose(1, 0, 2)))
    states_all, _, _ = slstm_forward(
        Wx, torch.zeros(4, B, H, dtype=torch.float64),
        torch.from_numpy(authors_recurrent_kernel(params["R"]).copy()),
        torch.from_numpy(params["b"].copy()), slstm_pointwise_function_registry["slstm"])
    ref = states_all.numpy()  # (4, T + 1, B, H): y, c, n, m
    assert_close(y, ref[0, 1:].transpose(1, 0, 2), 1e-12, "y")
    for k, got in enumerate(state):
        assert_close(got, ref[k, -1], 1e-12, "hcnm"[k])


# ---------------------------------------------------------------------------
# the stabiliser: first step, per-entry test, invariance, ties, clamps
# ---------------------------------------------------------------------------

def test_normaliser_is_at_least_one_after_a_step(rng):
    """Why testing n = 0 per entry (their CUDA kernel) or for the whole state
    (their vanilla step) agree on every state the cell returns: n_t ≥ 1."""
    params = _random_params(rng, 3, 4, 2, scale=3.0)
    _, (_, _, n, _), cache = slstm.forward(params, 3 * rng.standard_normal((4, 6, 3)))
    ns = np.stack([s.n for s in cache.seq.steps], axis=1)
    assert np.all(ns >= 1.0) and np.all(n >= 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_step_branch_is_per_entry_so_rows_stay_independent(backend, rng):
    """Row 0 starts from n0 = 0 (first-step branch), row 1 from n0 > 0: each row
    equals its own run. The authors' vanilla step tests the whole state at once,
    so there row 0 takes the max branch (their CUDA kernel tests per entry, as
    we do): the one place the two conventions differ."""
    params, x, (h0, c0, n0, m0) = make(rng, B=2, T=4)
    n0 = n0.copy()
    n0[0] = 0.0
    m0 = m0 + 3.0  # lfm > a_i: the two branches give different m_0
    y, _, _ = slstm.forward(params, x, (h0, c0, n0, m0), backend=backend)
    for b in range(2):
        yb, _, _ = slstm.forward(params, x[b:b + 1],
                                 tuple(s[b:b + 1] for s in (h0, c0, n0, m0)), backend=backend)
        assert_close(y[b:b + 1], yb, 1e-14, f"row {b}")  # only the GEMMs' rounding differs
    y_whole, _ = authors_loop(params, x, (h0, c0, n0, m0))
    assert_close(y[1:], y_whole[1:], 1e-12, "row 1")
    assert registry.rel_rms(y[:1], y_whole[:1]) > 1e-3


def test_output_does_not_depend_on_the_stabiliser(rng):
    """(c, n, m) and (c e^δ, n e^δ, m − δ) are the same memory: h_t is unchanged
    (the stabiliser only keeps the exponentials in range)."""
    params, x, (h0, c0, n0, m0) = make(rng, T=6)
    y, _, _ = slstm.forward(params, x, (h0, c0, n0, m0))
    d = 0.7
    y2, _, _ = slstm.forward(params, x, (h0, c0 * math.exp(d), n0 * math.exp(d), m0 - d))
    assert_close(y2, y, 1e-13, "y")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_of_the_max_take_the_input_gate_branch(backend):
    """a_i = lfm = m0 + log σ(a_f) exactly (a = 0, m0 = −log σ(0)): the gradient of
    m_1 goes to a_i (b_i), none to m0 (the docstring's convention)."""
    p = {"W_ih": np.zeros((4, 1)), "R": np.zeros((4, 1, 1, 1)), "b": np.zeros(4)}
    m0 = np.array([[math.log(2.0)]])  # −log σ(0), so that lfm = log 2 − log 2 = 0
    state0 = (np.zeros((1, 1)), np.zeros((1, 1)), np.ones((1, 1)), m0)
    y, (h, c, n, m), cache = slstm.forward(p, np.zeros((1, 1, 1)), state0, backend=backend)
    assert m.item() == 0.0
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    g = slstm.backward(p, cache, None, (zero, zero, zero, one))
    np.testing.assert_array_equal(g["b"], [1.0, 0.0, 0.0, 0.0])
    assert g["state0"][3].item() == 0.0


def _authors_backward_step(dstate_next, cache_t):
    """A NumPy reading of their CUDA ``SLSTMPointwiseBackward`` (slstm_pointwise.cu):
    ``m`` treated as a constant, its gradient set to zero."""
    (params, x_t, h_prev, c_prev, n_prev, a, lfm, take_i, m, i, f, z, o, c, n, h) = cache_t
    dh, dc, dn, _ = dstate_next
    H = h.shape[1]
    dy_inter = dh / n
    dc_total, dn_total = dc + dy_inter * o, dn - dy_inter * h
    dg_i = i * (z * dc_total + dn_total)
    dg_f = f * (dc_total * c_prev + dn_total * n_prev) * (1 - 1 / (1 + np.exp(-a[:, H:2 * H])))
    dg_z = dc_total * i * (1 - z * z)
    dg_o = (1 - o) * h * dh
    da = np.concatenate([dg_i, dg_f, dg_z, dg_o], axis=1)
    R = params["R"]
    _, NH, dh_, _ = R.shape
    da4 = da.reshape(-1, 4, NH, dh_)
    dparams = {"W_ih": da.T @ x_t, "b": da.sum(axis=0),
               "R": np.einsum("bghj,bhk->ghjk", da4, h_prev.reshape(-1, NH, dh_))}
    dh_prev = np.einsum("bghj,ghjk->bhk", da4, R).reshape(h_prev.shape)
    return da @ params["W_ih"], (dh_prev, f * dc_total, f * dn_total, 0 * m), dparams


def test_gradient_through_the_stabiliser_cancels_for_a_loss_of_y(rng):
    """For a loss of y alone, the authors' backward (m a constant) and ours (through
    the max) agree on every gradient but m0's (theirs: none): h is invariant along
    (c e^{−δ}, n e^{−δ}, m + δ). Large weights: m switches branches."""
    params, x, state0 = make(rng, T=8)
    params = {k: 3.0 * v for k, v in params.items()}
    y, _, cache = slstm.forward(params, x, state0)
    dy = rng.standard_normal(y.shape)
    ours = slstm.backward(params, cache, dy)
    theirs = bptt.sequence_backward(_authors_backward_step, params, cache.seq, dy)
    for k in ("W_ih", "R", "b", "x"):
        assert_close(ours[k], theirs[k], 1e-12, f"d{k}")
    for k in range(3):
        assert_close(ours["state0"][k], theirs["state0"][k], 1e-12, f"d{'hcn'[k]}0")
    assert np.abs(ours["state0"][3]).max() > 1e-3  # y depends on m0 (the memory's scale)


class _FixedN0:
    """The cell with n0 held fixed (not an input): ``state0 = (h0, c0, m0)``.
    Finite differences cannot cross n0 = 0 (the branch test), the rest can."""

    __name__ = "slstm with n0 fixed"

    def __init__(self, n0, backend):
        self.n0, self.backend = n0, backend

    def forward(self, params, x, state0, **kw):
        h0, c0, m0 = state0
        return slstm.forward(params, x, (h0, c0, self.n0, m0), backend=self.backend, **kw)

    def backward(self, params, cache, dy, dstate=None):
        g = slstm.backward(params, cache, dy, dstate)
        dh0, dc0, _, dm0 = g["state0"]
        g["state0"] = (dh0, dc0, dm0)
        return g


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_through_the_first_step_branch_and_the_forget_clamp(backend, rng):
    """n0 = 0 with c0 ≠ 0 and m0 ~ U(−3, 5): m_0 = a_i, and f = min(exp(lfm − a_i), 1)
    is clamped at 1 where lfm > a_i (no gradient to a_f, m0 there). Float64,
    relative error < 1e-6 for every parameter, x, h0, c0, m0."""
    params, x, (h0, c0, n0, m0) = make(rng, T=4)
    m0 = rng.uniform(-3.0, 5.0, m0.shape)
    cell = _FixedN0(np.zeros_like(n0), backend)
    _, _, cache = cell.forward(params, x, (h0, c0, m0))
    if backend == "numpy":  # both sides of the clamp are exercised
        s0 = cache.seq.steps[0]
        assert (s0.lfm - s0.m > 0).any() and (s0.lfm - s0.m < 0).any()
    report = gradcheck.check_cell(cell, params, x, (h0, c0, m0))
    assert report.passed, str(report)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_large_gates_both_branches_of_the_max(backend, rng):
    """Weights ×4, inputs ×2: large pre-activations, m_t switching between a_i and
    lfm along the sequence. Float64, relative error < 1e-6."""
    params, x, state0 = make(rng, T=6)
    params = {k: 4.0 * v for k, v in params.items()}
    _, _, cache = slstm.forward(params, 2.0 * x, state0)
    take = np.stack([s.take_i for s in cache.seq.steps])
    assert take.any() and not take.all()
    report = gradcheck.check_cell(slstm, params, 2.0 * x, state0, backend=backend)
    assert report.passed, str(report)


# ---------------------------------------------------------------------------
# heads, backends, float32 extremes, split-resume from the zero state
# ---------------------------------------------------------------------------

def test_heads_are_block_diagonal(rng):
    """Zeroing x's influence, h of head 1 never reads head 0: perturbing h0 of
    head 0 leaves head 1's outputs unchanged (R is block-diagonal)."""
    params, x, (h0, c0, n0, m0) = make(rng, T=5, H=6, NH=3)
    y, _, _ = slstm.forward(params, x, (h0, c0, n0, m0))
    h0b = h0.copy()
    h0b[:, :2] += 1.0  # head 0 = units 0, 1
    y2, _, _ = slstm.forward(params, x, (h0b, c0, n0, m0))
    np.testing.assert_array_equal(y2[..., 2:], y[..., 2:])
    assert not np.allclose(y2[..., :2], y[..., :2])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", BACKENDS[1:])
@pytest.mark.parametrize("state", ["given", "zero"])
def test_backends_equal_the_definition_odd_heads(backend, dtype, state, rng):
    """NH = 3 heads of dh = 5 (no power of two), T = 11, from a given state and from
    the zero state (the first-step branch on every backend)."""
    params, x, state0 = make(rng, dtype, B=3, T=11, D=4, H=15, NH=3)
    state0 = None if state == "zero" else state0
    p64, x64 = registry._to64(params), registry._to64(x)
    s64 = None if state0 is None else registry._to64(state0)
    y_r, st_r, c_r = slstm.forward(p64, x64, s64)
    y, st, c = slstm.forward(params, x, state0, backend=backend)
    dy = rng.standard_normal(y_r.shape)
    ds = tuple(rng.standard_normal(s.shape) for s in st_r)
    g_r = slstm.backward(p64, c_r, dy, ds)
    g = slstm.backward(params, c, dy.astype(dtype), tuple(d.astype(dtype) for d in ds))
    tol = TOL[np.dtype(dtype)]
    assert_close(y, y_r, tol, "y")
    for k, (a, b) in enumerate(zip(st, st_r)):
        assert_close(a, b, tol, "hcnm"[k])
    for k in ("W_ih", "R", "b", "x"):
        assert_close(g[k], g_r[k], tol, f"d{k}")
    for k, (a, b) in enumerate(zip(g["state0"], g_r["state0"])):
        assert_close(a, b, tol, f"d{'hcnm'[k]}0")


@pytest.mark.parametrize("backend", BACKENDS)
def test_extreme_gates_stay_finite_in_float32(backend, rng):
    """Pre-activations ~1e3 in float32: exp(a_i) alone would overflow at 89; the
    stabilised gates, the state and every gradient stay finite (and no overflow
    warning, an error in this suite)."""
    params, x, state0 = make(rng, np.float32, T=8)
    params = {k: (v * 400).astype(np.float32) for k, v in params.items()}
    x = (x * 5).astype(np.float32)
    _, _, ref = slstm.forward(params, x, state0)
    assert max(np.abs(s.a).max() for s in ref.seq.steps) > 500
    y, state, cache = slstm.forward(params, x, state0, backend=backend)
    g = slstm.backward(params, cache, np.ones_like(y), tuple(np.ones_like(s) for s in state))
    for name, v in registry._flatten("", {"y": y, "state": state, "grads": g}).items():
        assert v.dtype == np.float32, name
        assert np.all(np.isfinite(v)), name


def test_split_resume_from_the_zero_state(rng):
    """From state0 = None (first-step branch), running T in two calls with the
    returned state equals one call (the resumed run has n ≥ 1: no branch)."""
    params, x, _ = make(rng, T=9)
    y, state, _ = slstm.forward(params, x)
    y1, s1, _ = slstm.forward(params, x[:, :4])
    y2, s2, _ = slstm.forward(params, x[:, 4:], s1)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-15, "y")
    for k, (a, b) in enumerate(zip(s2, state)):
        assert_close(a, b, 1e-15, "hcnm"[k])


# ---------------------------------------------------------------------------
# parameters and their checks
# ---------------------------------------------------------------------------

def test_init_params_shapes_and_forget_bias(rng):
    p = slstm.init_params(rng, 5, 12, num_heads=3)
    assert {k: v.shape for k, v in p.items()} == {"W_ih": (48, 5), "R": (4, 3, 4, 4),
                                                 "b": (48,)}
    np.testing.assert_array_equal(p["b"][12:24], np.tile(np.linspace(3.0, 6.0, 4), 3))
    bound = 1 / math.sqrt(12)
    assert np.all(np.abs(p["W_ih"]) <= bound) and np.all(np.abs(p["R"]) <= bound)
    assert slstm.init_params(rng, 2, 4, np.float32)["R"].dtype == np.float32


@pytest.mark.parametrize("num_heads, match", [(5, r"num_heads: expected a divisor of "
                                                  r"hidden_size=12, got 5"),
                                              (0, r"num_heads: expected a positive integer, "
                                                  r"got 0")])
def test_init_params_refuses_bad_heads(num_heads, match, rng):
    with pytest.raises(ValueError, match=match):
        slstm.init_params(rng, 3, 12, num_heads=num_heads)


def test_mismatched_heads_and_input_weights_are_refused(rng):
    params, x, state0 = make(rng)
    bad = dict(params, R=np.zeros((4, 3, 2, 2)))  # H = 6 from R, W_ih has 4H = 16 rows
    with pytest.raises(ValueError, match=r"W_ih: expected shape \(4H, D\) = \(24, 3\).*got "
                                         r"\(16, 3\)"):
        slstm.forward(bad, x, state0)
    with pytest.raises(ValueError, match=r"R: expected shape .*got \(4, 2, 2, 3\)"):
        slstm.forward(dict(params, R=np.zeros((4, 2, 2, 3))), x, state0)
    with pytest.raises(TypeError, match=r"state0: expected a tuple \(h0, c0, n0, m0\) of 4 "
                                        r"arrays.*got tuple of length 2"):
        slstm.forward(params, x, state0[:2])
