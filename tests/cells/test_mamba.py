"""cells.mamba: the Mamba-1 block's own cases — short sequences against the
conv kernel, split points around d_conv − 1, chained backward calls, the
streaming step pair, saturated Δ in log space, golden values from an
independent loop. Agreement of every method and backend, gradient checks of
every parameter, dtypes, B = 0, NaN and the bad-input tables are the contract
tests' (tests/test_contract.py, entry "mamba")."""

import math

import numpy as np
import pytest

from minirec import gradcheck, registry
from minirec.cells import mamba
from tests.conftest import TOL, assert_close

ENTRY = registry.get("mamba")


def make(rng, dtype=np.float64, d_conv=4, state=True, **dims):
    """The registry's inputs (Mamba's init with dt_proj_bias, A_log and D
    randomised, a random state), the conv kernel cut to ``d_conv`` taps."""
    inputs = ENTRY.make_inputs(rng, dtype, "small", **dims)
    p, x, (conv0, ssm0) = inputs["params"], inputs["x"], inputs["state0"]
    p["conv1d_weight"] = np.ascontiguousarray(p["conv1d_weight"][:, :d_conv])
    s0 = (np.ascontiguousarray(conv0[:, :, :d_conv - 1]), ssm0) if state else None
    return p, x, s0


def upstream(rng, y, state):
    return rng.standard_normal(y.shape), tuple(rng.standard_normal(s.shape) for s in state)


@pytest.mark.parametrize("T, d_conv", [(2, 4), (1, 1), (3, 2)])
def test_gradcheck_short_sequences_and_other_kernels(T, d_conv, rng):
    """T < d_conv − 1 (the returned conv_state still holds part of state0), and
    d_conv = 1 (an empty conv_state)."""
    p, x, s0 = make(rng, T=T, M=2, N=2, d_conv=d_conv)
    report = gradcheck.check_cell(mamba, p, x, s0)
    assert report.passed, str(report)  # relative error < 1e-6 in float64


@pytest.mark.parametrize("split", [1, 2, 6])
def test_split_resume_around_the_conv_window(split, rng):
    """Split points before and after d_conv − 1 = 3 steps (the contract splits
    at 4 only)."""
    p, x, s0 = make(rng, T=9)
    y, s, _ = mamba.forward(p, x, s0)
    y1, s1, _ = mamba.forward(p, x[:, :split], s0)
    y2, s2, _ = mamba.forward(p, x[:, split:], s1)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-12, "y")
    assert_close(s2[0], s[0], 1e-12, "conv_state")
    assert_close(s2[1], s[1], 1e-12, "ssm_state")


def test_split_resume_gradients_chain(rng):
    """Backward of the second call feeds the first call's dstate: the chained
    gradients equal one call's."""
    p, x, s0 = make(rng, T=8)
    y, s, cache = mamba.forward(p, x, s0)
    dy, ds = upstream(rng, y, s)
    g = mamba.backward(p, cache, dy, ds)
    y1, s1, c1 = mamba.forward(p, x[:, :3], s0)
    y2, s2, c2 = mamba.forward(p, x[:, 3:], s1)
    g2 = mamba.backward(p, c2, dy[:, 3:], ds)
    g1 = mamba.backward(p, c1, dy[:, :3], g2["state0"])
    assert_close(np.concatenate([g1["x"], g2["x"]], axis=1), g["x"], 1e-12, "dx")
    for i in range(2):
        assert_close(g1["state0"][i], g["state0"][i], 1e-12, f"dstate0[{i}]")
    for k in p:
        assert_close(g1[k] + g2[k], g[k], 1e-12, f"d{k}")


def test_step_loop_equals_forward_and_backward(rng):
    p, x, s0 = make(rng, T=7)
    y, s, cache = mamba.forward(p, x, s0)
    dy, ds = upstream(rng, y, s)
    g = mamba.backward(p, cache, dy, ds)
    state, outs, caches = s0, [], []
    for t in range(x.shape[1]):
        o, state, c = mamba.step_forward(p, x[:, t], state)
        outs.append(o)
        caches.append(c)
    assert_close(np.stack(outs, axis=1), y, 1e-12, "y")
    assert_close(state[0], s[0], 1e-12, "conv_state")
    assert_close(state[1], s[1], 1e-12, "ssm_state")
    dstate, dxs, dparams = ds, [], {k: np.zeros_like(v) for k, v in p.items()}
    for t in reversed(range(x.shape[1])):
        dx_t, dstate, dp = mamba.step_backward(dy[:, t], dstate, caches[t])
        dxs.insert(0, dx_t)
        for k in dp:
            dparams[k] += dp[k]
    assert_close(np.stack(dxs, axis=1), g["x"], 1e-12, "dx")
    for i in range(2):
        assert_close(dstate[i], g["state0"][i], 1e-12, f"dstate0[{i}]")
    for k in p:
        assert_close(dparams[k], g[k], 1e-12, f"d{k}")


def test_step_from_zero_state(rng):
    p, x, _ = make(rng, T=1, state=False)
    o, state, _ = mamba.step_forward(p, x[:, 0])
    y, s, _ = mamba.forward(p, x)
    assert_close(o, y[:, 0], 1e-12, "y")
    assert_close(state[1], s[1], 1e-12, "ssm_state")


@pytest.mark.parametrize("dtype, bias", [(np.float32, 120.0), (np.float64, 1000.0)])
def test_log_method_runs_at_saturated_step_sizes(dtype, bias, rng):
    """Issue 7, defect 3: with Δ = softplus(δ W_dt^T + b_dt) large, e^{Δ A}
    underflows to 0 and the log method used to refuse the block; it now scans
    log ā = Δ A directly and equals the loop, forward and backward."""
    p, x, s0 = make(rng, dtype, T=3)
    p["dt_proj_bias"] = np.full_like(p["dt_proj_bias"], bias)
    p["A_log"] = np.zeros_like(p["A_log"])           # A = −1
    assert np.exp(dtype(-bias)) == 0                  # ā = e^{Δ A} is 0 in this dtype
    ref, ref_s, ref_cache = mamba.forward(p, x, s0)
    y, s, cache = mamba.forward(p, x, s0, method="log")
    dy, ds = upstream(rng, y, s)
    dy, ds = dy.astype(dtype), tuple(d.astype(dtype) for d in ds)
    ref_g = mamba.backward(p, ref_cache, dy, ds)
    g = mamba.backward(p, cache, dy, ds)
    tol = TOL[np.dtype(dtype)]                        # float64 1e-10, float32 1e-4
    assert_close(y, ref, tol, "y")
    assert_close(s[1], ref_s[1], tol, "ssm_state")
    for k in p:
        assert np.all(np.isfinite(g[k])), k
        assert_close(g[k], ref_g[k], tol, f"d{k}")


# ---------------------------------------------------------------------------
# golden values from an independent loop
# ---------------------------------------------------------------------------

def _silu(v):
    return v / (1 + math.exp(-v))


def _reference_block(p, x):
    """The Mamba block token by token and channel by channel, Python floats for the
    scan and the conv (independent of the module); zero initial state."""
    Bsz, T, M = x.shape
    I, K = p["conv1d_weight"].shape
    N = p["A_log"].shape[1]
    R = p["dt_proj_weight"].shape[1]
    out = np.zeros((Bsz, T, M))
    for b in range(Bsz):
        hist = [[0.0] * (K - 1) for _ in range(I)]  # previous conv inputs per channel
        h = [[0.0] * N for _ in range(I)]
        for t in range(T):
            xz = p["in_proj_weight"] @ x[b, t]
            xa = np.zeros(I)
            for i in range(I):
                window = hist[i] + [float(xz[i])]
                xc = p["conv1d_bias"][i] + sum(p["conv1d_weight"][i, k] * window[k]
                                               for k in range(K))
                xa[i] = _silu(xc)
                hist[i] = window[1:]
            proj = p["x_proj_weight"] @ xa
            dt_low, Bt, Ct = proj[:R], proj[R:R + N], proj[R + N:]
            y = np.zeros(I)
            for i in range(I):
                pre = float(p["dt_proj_weight"][i] @ dt_low + p["dt_proj_bias"][i])
                dt = math.log1p(math.exp(pre))
                acc = 0.0
                for n in range(N):
                    A = -math.exp(p["A_log"][i, n])
                    h[i][n] = math.exp(dt * A) * h[i][n] + dt * Bt[n] * xa[i]
                    acc += h[i][n] * Ct[n]
                y[i] = (acc + p["D"][i] * xa[i]) * _silu(float(xz[I + i]))
            out[b, t] = p["out_proj_weight"] @ y
    return out


def test_golden_values():
    M, N, K, R = 2, 2, 3, 1
    I = 2 * M
    lin = lambda lo, hi, shape: np.linspace(lo, hi, int(np.prod(shape))).reshape(shape)
    p = {"in_proj_weight": lin(-0.8, 0.9, (2 * I, M)), "conv1d_weight": lin(0.5, -0.4, (I, K)),
         "conv1d_bias": lin(-0.1, 0.2, (I,)), "x_proj_weight": lin(-0.7, 0.6, (R + 2 * N, I)),
         "dt_proj_weight": lin(0.3, -0.5, (I, R)), "dt_proj_bias": lin(-1.0, 0.5, (I,)),
         "A_log": np.log(lin(1.0, 3.0, (I, N))), "D": lin(0.5, 1.5, (I,)),
         "out_proj_weight": lin(-0.6, 0.7, (M, I))}
    x = lin(-1.5, 2.0, (1, 6, M))
    expected = _reference_block(p, x)
    assert np.abs(expected).max() > 0.05  # not a degenerate case
    for method in mamba.METHODS:
        y, _, _ = mamba.forward(p, x, method=method, chunk_size=4)
        np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14, err_msg=method)


# ---------------------------------------------------------------------------
# initialisation, partial state gradients, the block's own shape rules
# ---------------------------------------------------------------------------

def test_init_params_follows_the_paper(rng):
    p = mamba.init_params(rng, d_model=32, d_state=5, dtype=np.float32)
    assert p["in_proj_weight"].shape == (128, 32) and p["out_proj_weight"].shape == (32, 64)
    assert p["x_proj_weight"].shape == (2 + 10, 64)  # dt_rank = ⌈32/16⌉ = 2
    assert p["conv1d_weight"].shape == (64, 4) and p["dt_proj_weight"].shape == (64, 2)
    assert all(v.dtype == np.float32 for v in p.values())
    # S4D-real: A = −(1, …, N) in every channel
    np.testing.assert_allclose(-np.exp(p["A_log"]), -np.tile(np.arange(1.0, 6.0), (64, 1)),
                               rtol=1e-6)
    # softplus(dt bias) is the sampled dt, in [1e-3, 1e-1]
    dt = np.log1p(np.exp(p["dt_proj_bias"].astype(np.float64)))
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    np.testing.assert_array_equal(p["D"], 1.0)
    q = mamba.init_params(rng, 4, 3, expand=3, d_conv=2, dt_rank=5)
    assert q["in_proj_weight"].shape == (24, 4) and q["x_proj_weight"].shape == (11, 12)


def test_a_state_gradient_of_none_parts_is_zero(rng):
    p, x, _ = make(rng, T=4, state=False)
    y, s, cache = mamba.forward(p, x)
    g_none = mamba.backward(p, cache, np.ones_like(y), None)
    g_zero = mamba.backward(p, cache, np.ones_like(y), (None, np.zeros_like(s[1])))
    for k in p:
        np.testing.assert_array_equal(g_none[k], g_zero[k])


def test_projection_rows_must_fit_the_inner_width_and_state_size(rng):
    """in_proj has 2·d_inner rows (xs and z), x_proj dt_rank + 2·d_state rows."""
    p, x, _ = make(rng)
    bad = dict(p, A_log=p["A_log"][:, :2])
    with pytest.raises(ValueError, match=r"x_proj_weight: expected shape \(5, 8\)"):
        mamba.forward(bad, x)
    bad = dict(p, in_proj_weight=p["in_proj_weight"][:-1])
    with pytest.raises(ValueError, match=r"in_proj_weight: expected shape \(16, M\)"):
        mamba.forward(bad, x)
