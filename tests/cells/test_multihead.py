"""Multi-head RNN, GRU and LSTM (FlashRNN's heads): ``init_params(..., num_heads=NH)``
gives ``W_hh (NH, G·dh, dh)``, one block per head.

The oracle is the full cell whose ``W_hh`` is the block-diagonal matrix of the
heads' blocks (:func:`minirec.cells.rnn.block_diagonal`): forward and every
gradient, on every CPU backend and for both methods. With ``NH = 1`` the
multi-head cell is the full cell. Newton solves head by head: equal to the
recurrent definition (forward ≤ 1e-10, gradients ≤ 1e-8, T ∈ {1, 37, 256}), and
a NaN in one head's upstream gradient stays in that head. Gradient checks,
split-resume, NaN patterns, bad-input families and the CUDA emulator are also
run generically by tests/test_contract.py (entries "rnn_multihead",
"gru_multihead", "lstm_multihead"); CUDA specifics are in
tests/kernels/test_cuda_multihead.py.
"""

import numpy as np
import pytest

from minirec import _backend, gradcheck
from minirec.cells import gru, lstm, rnn
from minirec.registry import _flatten, rel_rms
from minirec.scan import newton

# label: (module, forward keywords, state is (h, c))
CELLS = {"rnn": (rnn, {}, False), "rnn_relu": (rnn, {"nonlinearity": "relu"}, False),
         "gru": (gru, {}, False), "lstm": (lstm, {}, True)}
CPU_BACKENDS = [b for b in ("numpy", "numba") if _backend.available(b)]


def make(name, rng, B=3, T=11, D=4, H=6, NH=3, dtype=np.float64):
    mod, kw, hc = CELLS[name]
    params = mod.init_params(rng, D, H, dtype=dtype, num_heads=NH)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    s0 = (tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(2)) if hc
          else rng.standard_normal((B, H)).astype(dtype))
    return mod, kw, params, x, s0


def full_cell(params):
    """The same cell with the full ``W_hh (G·H, H)``: the heads' blocks on the diagonal."""
    return {**params, "W_hh": rnn.block_diagonal(params["W_hh"])}


def heads_of(dW_full, NH, dh):
    """The heads' blocks ``(NH, G·dh, dh)`` of a full ``(G·H, H)`` matrix."""
    G = dW_full.shape[0] // (NH * dh)
    W = dW_full.reshape(G, NH, dh, NH, dh)
    return np.stack([W[:, h, :, h, :].reshape(G * dh, dh) for h in range(NH)])


def upstream(rng, y, state):
    ds = (tuple(rng.standard_normal(s.shape) for s in state) if isinstance(state, tuple)
          else rng.standard_normal(state.shape))
    return rng.standard_normal(y.shape), ds


def errors(got, ref):
    g, r = _flatten("", got), _flatten("", ref)
    assert set(g) == set(r)
    return {k: rel_rms(g[k], r[k]) for k in r}


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, G", [("rnn", 1), ("gru", 3), ("lstm", 4)])
def test_init_params_gives_one_block_per_head(name, G, rng):
    mod, _, params, _, _ = make(name, rng, D=4, H=6, NH=3)
    assert params["W_hh"].shape == (3, G * 2, 2)
    assert params["W_ih"].shape == (G * 6, 4)
    assert params["b_ih"].shape == params["b_hh"].shape == (G * 6,)
    assert np.all(np.abs(params["W_hh"]) <= 1 / np.sqrt(6))  # U(−1/√H, 1/√H), PyTorch's


@pytest.mark.parametrize("mod", [rnn, gru, lstm])
def test_one_head_draws_the_full_cells_weights(mod):
    full = mod.init_params(np.random.default_rng(7), 3, 5)
    one = mod.init_params(np.random.default_rng(7), 3, 5, num_heads=1)
    for k in full:
        np.testing.assert_array_equal(one[k].reshape(full[k].shape), full[k])


def test_block_diagonal_places_each_heads_gates():
    """``W[g·H + h·dh + j, h·dh + k] = W_hh[h, g·dh + j, k]``, zero between heads."""
    W_hh = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 6, 2) + 1  # NH=2, G=3, dh=2
    W = rnn.block_diagonal(W_hh)
    assert W.shape == (12, 4)
    for h in range(2):
        for g in range(3):
            np.testing.assert_array_equal(W[g * 4 + h * 2:g * 4 + h * 2 + 2, h * 2:h * 2 + 2],
                                          W_hh[h, g * 2:g * 2 + 2])
    assert np.count_nonzero(W) == W_hh.size


@pytest.mark.parametrize("mod", [rnn, gru, lstm])
def test_num_heads_must_divide_the_hidden_size(mod, rng):
    with pytest.raises(ValueError, match=r"num_heads: expected a divisor of hidden_size=6, "
                                         r"got 4"):
        mod.init_params(rng, 3, 6, num_heads=4)
    with pytest.raises(ValueError, match=r"num_heads: expected a positive"):
        mod.init_params(rng, 3, 6, num_heads=0)


@pytest.mark.parametrize("mod", [gru, lstm])
def test_heads_and_a_diagonal_recurrence_exclude_each_other(mod, rng):
    with pytest.raises(ValueError, match=r"num_heads: expected None with diagonal=True"):
        mod.init_params(rng, 3, 6, diagonal=True, num_heads=2)


# ---------------------------------------------------------------------------
# the oracle: the full cell with the block-diagonal W_hh
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", ["recurrent", "newton"])
@pytest.mark.parametrize("name", list(CELLS))
def test_equals_the_full_cell_with_the_block_diagonal_matrix(name, method, backend, rng):
    mod, kw, params, x, s0 = make(name, rng)
    full = full_cell(params)
    y_ref, st_ref, c_ref = mod.forward(full, x, s0, **kw)
    y, st, cache = mod.forward(params, x, s0, method=method, backend=backend, **kw)
    assert rel_rms(y, y_ref) <= 1e-10
    dy, ds = upstream(rng, y, st)
    g_ref = mod.backward(full, c_ref, dy, ds)
    g_ref["W_hh"] = heads_of(g_ref["W_hh"], 3, 2)
    bad = {k: e for k, e in errors(mod.backward(params, cache, dy, ds), g_ref).items()
           if not e <= 1e-10}
    assert not bad, f"{name} {method}/{backend}: differs from the full cell: {bad}"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("name", list(CELLS))
def test_one_head_is_the_full_cell(name, backend, rng):
    mod, kw, params, x, s0 = make(name, rng, NH=1)
    full = {**params, "W_hh": params["W_hh"][0]}
    y_ref, _, c_ref = mod.forward(full, x, s0, **kw)
    y, _, cache = mod.forward(params, x, s0, backend=backend, **kw)
    assert rel_rms(y, y_ref) <= 1e-12
    dy = rng.standard_normal(y.shape)
    g_ref = mod.backward(full, c_ref, dy)
    g_ref["W_hh"] = g_ref["W_hh"][None]
    bad = {k: e for k, e in errors(mod.backward(params, cache, dy), g_ref).items()
           if not e <= 1e-10}
    assert not bad, f"{name}/{backend}: NH = 1 differs from the full cell: {bad}"


@pytest.mark.parametrize("name", list(CELLS))
def test_float32_kernels_agree_with_the_float64_definition(name, rng):
    if "numba" not in CPU_BACKENDS:
        pytest.skip("numba is not installed")
    mod, kw, params, x, s0 = make(name, rng, B=2, T=37, D=8, H=16, NH=4)
    y_ref, _, c_ref = mod.forward(params, x, s0, **kw)
    to32 = lambda a: a.astype(np.float32)  # noqa: E731
    p32 = {k: to32(v) for k, v in params.items()}
    s32 = tuple(map(to32, s0)) if isinstance(s0, tuple) else to32(s0)
    y, _, cache = mod.forward(p32, to32(x), s32, backend="numba", **kw)
    assert y.dtype == np.float32 and rel_rms(y, y_ref) <= 1e-4
    dy = rng.standard_normal(y.shape)
    g_ref = mod.backward(params, c_ref, dy)
    bad = {k: e for k, e in errors(mod.backward(p32, cache, to32(dy)), g_ref).items()
           if not e <= 1e-4}
    assert not bad, f"{name}: float32 numba off: {bad}"


# ---------------------------------------------------------------------------
# gradients (float64 central differences, relative error < 1e-6)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", ["recurrent", "newton"])
@pytest.mark.parametrize("name", list(CELLS))
def test_gradcheck_of_every_parameter_x_and_state0(name, method, backend, rng):
    mod, kw, params, x, s0 = make(name, rng, B=2, T=4, D=3, H=4, NH=2)
    report = gradcheck.check_cell(mod, params, x, s0, method=method, backend=backend, **kw)
    assert set(report.errors) >= {"W_ih", "W_hh", "b_ih", "b_hh", "x"}
    assert report.passed, str(report)  # relative error < 1e-6


# ---------------------------------------------------------------------------
# Newton, head by head
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 37, 256])
@pytest.mark.parametrize("name", list(CELLS))
def test_newton_equals_recurrent(name, T, rng):
    mod, kw, params, x, s0 = make(name, rng, B=2, T=T, D=3, H=6, NH=3)
    y_ref, st_ref, c_ref = mod.forward(params, x, s0, **kw)
    y, st, cache = mod.forward(params, x, s0, method="newton", **kw)
    assert rel_rms(y, y_ref) <= 1e-10
    for a, b in zip(_flatten("s", st).values(), _flatten("s", st_ref).values()):
        assert rel_rms(a, b) <= 1e-10
    assert cache.newton.converged and cache.newton.residual <= 1e-13
    assert 1 <= cache.newton.iterations <= T
    dy, ds = upstream(rng, y, st)
    bad = {k: e for k, e in errors(mod.backward(params, cache, dy, ds),
                                   mod.backward(params, c_ref, dy, ds)).items() if not e <= 1e-8}
    assert not bad, f"{name} T={T}: newton gradients differ from BPTT: {bad}"


@pytest.mark.parametrize("name, n", [("gru", 2), ("lstm", 4)])
def test_newton_scans_each_heads_own_block(name, n, rng):
    """One solve per head, each with the head's (dh, dh) Jacobian ((2dh, 2dh) on
    the LSTM's (h, c)), not the full (H, H)."""
    mod, kw, params, x, s0 = make(name, rng, H=6, NH=3)
    _, _, cache = mod.forward(params, x, s0, method="newton")
    assert isinstance(cache.newton, rnn.HeadsNewtonCache) and len(cache.newton.heads) == 3
    for c in cache.newton.heads:
        assert c.structure == "full" and c.prev.shape[-1] == n
    assert cache.newton.iterations == max(c.iterations for c in cache.newton.heads)


@pytest.mark.parametrize("method", ["recurrent", "newton"])
@pytest.mark.parametrize("name", list(CELLS))
def test_a_nan_gradient_in_one_head_stays_in_that_head(name, method, rng):
    mod, kw, params, x, s0 = make(name, rng, H=6, NH=3)
    y, st, cache = mod.forward(params, x, s0, method=method, **kw)
    dy = np.zeros_like(y)
    dy[0, 5, 1] = np.nan  # unit 1: head 0
    with np.errstate(invalid="ignore"):
        g = mod.backward(params, cache, dy)
    dh0 = g["state0"][0] if isinstance(g["state0"], tuple) else g["state0"]
    assert np.isnan(dh0[0, :2]).any() and np.isfinite(dh0[0, 2:]).all() and \
        np.isfinite(dh0[1:]).all()
    assert np.isfinite(g["W_hh"][1:]).all()  # the other heads' blocks


@pytest.mark.parametrize("name", list(CELLS))
def test_step_jacobian_is_block_diagonal_and_matches_finite_differences(name, rng):
    mod, kw, params, x, s0 = make(name, rng, H=6, NH=3)
    J = mod.step_jacobian(params, x[:, 0], s0, **kw)
    n = 12 if name == "lstm" else 6
    assert J.shape == (3, n, n)
    unit_head = np.arange(n) % 6 // 2
    assert not J[:, unit_head[:, None] != unit_head[None, :]].any()  # zero between heads
    err = newton.check_jacobian(mod.step_forward, mod.step_jacobian, params, x[:, 0], s0,
                                step_kwargs=kw)
    assert err < 1e-8, f"step_jacobian off by {err:.1e}"


def test_newton_not_converging_names_the_head(rng):
    mod, kw, params, x, s0 = make("gru", rng, T=24, H=6, NH=3)
    params["W_hh"] = 3 * params["W_hh"]
    with pytest.raises(newton.NewtonConvergenceError, match=r"(?s)did not converge in "
                                                             r"max_iter=2.*\[head 0 of 3"):
        mod.forward(params, x, s0, method="newton", newton_options={"max_iter": 2})
    with pytest.warns(newton.NewtonConvergenceWarning):
        _, _, cache = mod.forward(params, x, s0, method="newton",
                                  newton_options={"max_iter": 2, "on_fail": "warn"})
    assert not cache.newton.converged and cache.newton.iterations == 2


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_newton_guess_is_split_by_head(name, rng):
    """The exact states as the guess: every head's solve is converged before its first
    step (so each head got its own units of the guess)."""
    mod, kw, params, x, s0 = make(name, rng, H=6, NH=3)
    y_ref, _, c_ref = mod.forward(params, x, s0, method="newton")
    if name == "lstm":  # c_t of every step: the heads' converged iterates, shifted back
        c_all = np.concatenate([np.concatenate([c.prev[:, 1:, 2:], c.prev[:, -1:, 2:]], axis=1)
                                for c in c_ref.newton.heads], axis=-1)
        c_all[:, -1] = mod.forward(params, x, s0)[1][1]
        guess = (y_ref, c_all)
    else:
        guess = y_ref
    _, _, cache = mod.forward(params, x, s0, method="newton", newton_options={"guess": guess})
    assert cache.newton.iterations == 0 and cache.newton.converged
    bad = (y_ref[..., :5], guess[1]) if name == "lstm" else y_ref[..., :5]
    with pytest.raises(ValueError, match=r"guess: expected part 0 of shape \(B, T, H\) with "
                                         r"H = NH·dh = 6, got \(3, 11, 5\)"):
        mod.forward(params, x, s0, method="newton", newton_options={"guess": bad})


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, G", [("rnn", 1), ("gru", 3), ("lstm", 4)])
def test_a_block_of_the_wrong_size_is_refused(name, G, rng):
    mod, kw, params, x, s0 = make(name, rng, H=6, NH=3)
    bad = {**params, "W_hh": np.zeros((3, G * 2 + 1, 2))}
    with pytest.raises(ValueError, match=rf"{name}: W_hh: expected shape \(NH, {G}·dh, dh\) = "
                                         rf"\(3, {2 * G}, 2\) .*got \(3, {2 * G + 1}, 2\)"):
        mod.forward(bad, x, s0, **kw)
    bad = {**params, "W_hh": np.zeros((2, G * 2, 2))}  # H = 4 from W_hh, 6 from W_ih
    with pytest.raises(ValueError, match=rf"{name}: W_ih: expected shape \({G}H, D\) = "
                                         rf"\({4 * G}, 4\) with H = NH·dh = 2·2 .*got "
                                         rf"\({6 * G}, 4\)"):
        mod.forward(bad, x, None, **kw)


@pytest.mark.parametrize("name", list(CELLS))
def test_a_state_of_the_wrong_width_is_refused(name, rng):
    mod, kw, params, x, s0 = make(name, rng, H=6, NH=3)
    params = {**params, "W_ih": params["W_ih"][:params["W_ih"].shape[0] // 6 * 4],
              "b_ih": params["b_ih"][:params["b_ih"].shape[0] // 6 * 4],
              "b_hh": params["b_hh"][:params["b_hh"].shape[0] // 6 * 4],
              "W_hh": params["W_hh"][:2]}  # H = 4
    with pytest.raises(ValueError, match=r"state0(\[0\] \(h0\))?: expected shape \(B, H\) with "
                                         r"H = NH·dh = 4 .*got \(3, 6\)"):
        mod.forward(params, x, s0, **kw)
