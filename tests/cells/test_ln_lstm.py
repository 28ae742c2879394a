"""cells.ln_lstm: golden values against an independent loop, what the layer norms
add (normalisation over all 4H gates, eps, scale invariance), gradients of every
gain and bias, every backend with a non-default eps, split-resume, and the
PyTorch float64 oracle (``torch.nn.functional.layer_norm``). The generic
contract (agreement at the default eps, dtypes, bad-input tables, NaN
propagation) is tests/test_contract.py's, entry "ln_lstm"."""

import math
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest

from minirec import _backend, gradcheck, registry
from minirec.cells import ln_lstm
from tests.conftest import TOL, assert_close
from tests.kernels.cuda_helpers import needs_compiler

BACKENDS = [pytest.param("numba", marks=pytest.mark.skipif(
                not _backend.available("numba"), reason="numba not installed")),
            pytest.param("cuda-emulated", marks=needs_compiler)]


def lin(a, b, *shape):
    return np.linspace(a, b, math.prod(shape)).reshape(shape)


def linspace_params(D, H):
    G = 4 * H
    return {"W_ih": lin(-0.6, 0.5, G, D), "W_hh": lin(0.4, -0.7, G, H), "b": lin(-0.1, 0.2, G),
            "alpha_ih": lin(0.8, 1.2, G), "beta_ih": lin(0.1, -0.1, G),
            "alpha_hh": lin(1.3, 0.7, G), "beta_hh": lin(-0.05, 0.15, G),
            "alpha_c": lin(0.9, 1.1, H), "beta_c": lin(0.2, -0.2, H)}


def make(rng, dtype=np.float64, **dims):
    """The registry's example inputs ``(params, x, (h0, c0))``, (B, T, D, H) = (2, 5, 3, 4)."""
    inputs = registry.get("ln_lstm").make_inputs(rng, dtype, "small", **dims)
    return inputs["params"], inputs["x"], inputs["state0"]


def loop(params, x, h0, c0, eps=1e-5):
    """The paper's equations with np.var and per-gate slices, independent of the module."""
    H = h0.shape[1]
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))
    ln = lambda z, a, b: (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True)
                                                                    + eps) * a + b
    h, c, ys = h0.copy(), c0.copy(), []
    for t in range(x.shape[1]):
        a = (ln(np.einsum("gk,bk->bg", params["W_hh"], h), params["alpha_hh"], params["beta_hh"])
             + ln(np.einsum("gd,bd->bg", params["W_ih"], x[:, t]), params["alpha_ih"],
                  params["beta_ih"]) + params["b"])
        i, f, g, o = (a[:, n * H:(n + 1) * H] for n in range(4))
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(ln(c, params["alpha_c"], params["beta_c"]))
        ys.append(h)
    return np.stack(ys, axis=1), h, c


def golden_inputs():
    B, T, D, H = 2, 6, 3, 4
    return (linspace_params(D, H), lin(-1.5, 2.0, B, T, D), lin(-0.3, 0.4, B, H),
            lin(0.8, -0.9, B, H))


def test_golden_values_from_linspace():
    params, x, h0, c0 = golden_inputs()
    ref_y, ref_h, ref_c = loop(params, x, h0, c0)
    y, (h, c), _ = ln_lstm.forward(params, x, (h0, c0))
    np.testing.assert_allclose(y, ref_y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h, ref_h, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(c, ref_c, rtol=1e-12, atol=1e-14)
    # frozen (float64): catches a silent drift of the loop and the module together
    np.testing.assert_allclose(h, [[0.5829735436786565, -0.06470874552364554,
                                    -0.5130296971061263, -0.5506935486831025],
                                   [-0.43339445683356154, -0.3062539031627422,
                                    0.1759127151730295, 0.6606035878418671]], rtol=1e-12)
    np.testing.assert_allclose(c, [[0.0106212828939167, -0.4975071356139703,
                                    -0.6795842407518541, -0.6361081101742958],
                                   [0.15678505071651824, 0.20556241750495163,
                                    0.2797743906450726, 0.3741766905393595]], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_golden_values_on_every_backend(backend):
    params, x, h0, c0 = golden_inputs()
    ref_y, _, ref_c = loop(params, x, h0, c0)
    y, (_, c), _ = ln_lstm.forward(params, x, (h0, c0), backend=backend)
    assert_close(y, ref_y, 1e-12, "y")
    assert_close(c, ref_c, 1e-12, "c")


def test_layer_norm_is_over_all_four_gates():
    """The paper normalises the whole 4H pre-activation vector (one μ and one σ per
    row), not each gate: with eps inside the root, every xhat row has mean 0 and
    mean square var / (var + eps)."""
    rng = np.random.default_rng(0)
    params, x, (h0, c0) = make(rng, H=6)
    eps = 0.05
    _, cache = ln_lstm.step_forward(params, x[:, 0], (h0, c0), eps=eps)
    for z, (xhat, rstd) in [(x[:, 0] @ params["W_ih"].T, cache.ln_ih),
                            (h0 @ params["W_hh"].T, cache.ln_hh)]:
        assert xhat.shape == (2, 24) and rstd.shape == (2, 1)
        var = z.var(axis=1)
        np.testing.assert_allclose(xhat.mean(axis=1), 0, atol=1e-15)
        np.testing.assert_allclose((xhat ** 2).mean(axis=1), var / (var + eps), rtol=1e-13)
        gate_means = xhat.reshape(2, 4, 6).mean(axis=2)
        assert np.abs(gate_means).max() > 1e-3  # not normalised gate by gate


def test_input_weight_scale_is_normalised_away():
    """LN(k z) = LN(z) for k > 0 up to eps: scaling W_ih by 3 leaves the output
    (with eps = 1e-12) unchanged, and divides dW_ih by 3."""
    rng = np.random.default_rng(1)
    params, x, state0 = make(rng, T=7)
    scaled = {**params, "W_ih": 3.0 * params["W_ih"]}
    y, _, cache = ln_lstm.forward(params, x, state0, eps=1e-12)
    y3, _, cache3 = ln_lstm.forward(scaled, x, state0, eps=1e-12)
    assert_close(y3, y, 1e-10, "y")
    dy = rng.standard_normal(y.shape)
    g = ln_lstm.backward(params, cache, dy)
    g3 = ln_lstm.backward(scaled, cache3, dy)
    assert_close(3.0 * g3["W_ih"], g["W_ih"], 1e-9, "dW_ih")
    assert_close(g3["x"], g["x"], 1e-9, "dx")


def with_eps(eps):
    """The cell with its layer norms' eps bound (check_cell's own ``eps`` keyword is
    the finite-difference step, so the cell's cannot be passed through it)."""
    return SimpleNamespace(forward=partial(ln_lstm.forward, eps=eps),
                           backward=ln_lstm.backward, zero_state=ln_lstm.zero_state,
                           __name__=f"ln_lstm(eps={eps})")


@pytest.mark.parametrize("H", [1, 3])
@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_gradcheck_every_gain_bias_input_and_state(H, eps):
    """Float64 central differences, relative error < 1e-6, for W_ih, W_hh, b, the
    six gains and biases, x and (h0, c0); H = 1 makes LN(c_t) constant (β_c)."""
    params, x, state0 = make(np.random.default_rng(2), H=H)
    report = gradcheck.check_cell(with_eps(eps), params, x, state0)
    assert set(report.errors) == {*params, "x", "state0[0]", "state0[1]"}
    assert report.passed, str(report)


def test_gradcheck_large_gains_saturate_the_gates():
    params, x, state0 = make(np.random.default_rng(3), T=4)
    params = {k: 4.0 * v if k.startswith(("alpha", "W")) else v for k, v in params.items()}
    report = gradcheck.check_cell(ln_lstm, params, 2.0 * x, state0)
    assert report.passed, str(report)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_equals_definition_with_its_eps(backend, dtype):
    """eps = 0.02 (not the default) and state0 = None travel to the kernels: outputs,
    final state and every gradient against the float64 definition."""
    rng = np.random.default_rng(4)
    params, x, _ = make(rng, dtype, B=3, T=9, D=5, H=6)
    dy = rng.standard_normal((3, 9, 6))
    dstate = (rng.standard_normal((3, 6)), None)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    y_r, s_r, c_r = ln_lstm.forward(p64, x.astype(np.float64), eps=0.02)
    g_r = ln_lstm.backward(p64, c_r, dy, dstate)
    y, s, c = ln_lstm.forward(params, x, eps=0.02, backend=backend)
    g = ln_lstm.backward(params, c, dy.astype(dtype), (dstate[0].astype(dtype), None))
    tol = TOL[np.dtype(dtype)]  # float64 1e-10, float32 1e-4 relative RMS
    assert y.dtype == dtype
    assert_close(y, y_r, tol, "y")
    for n in range(2):
        assert_close(s[n], s_r[n], tol, f"state[{n}]")
        assert_close(g["state0"][n], g_r["state0"][n], tol, f"dstate0[{n}]")
    for k in (*params, "x"):
        assert g[k].dtype == dtype, k
        assert_close(g[k], g_r[k], tol, f"d{k}")


@pytest.mark.parametrize("backend", ["numpy", *BACKENDS])
def test_split_resume(backend):
    """T = 9 as 4 + 5, the second call from the first's final (h, c), equals one call."""
    params, x, state0 = make(np.random.default_rng(5), T=9)
    y, state, _ = ln_lstm.forward(params, x, state0, eps=1e-3, backend=backend)
    y1, s1, _ = ln_lstm.forward(params, x[:, :4], state0, eps=1e-3, backend=backend)
    y2, s2, _ = ln_lstm.forward(params, x[:, 4:], s1, eps=1e-3, backend=backend)
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-13, "y")
    for n in range(2):
        assert_close(s2[n], state[n], 1e-13, f"state[{n}]")


def test_init_params_gains_one_biases_zero(rng):
    p = ln_lstm.init_params(rng, 5, 16)
    assert {k: v.shape for k, v in p.items()} == {
        "W_ih": (64, 5), "W_hh": (64, 16), "b": (64,), "alpha_ih": (64,), "beta_ih": (64,),
        "alpha_hh": (64,), "beta_hh": (64,), "alpha_c": (16,), "beta_c": (16,)}
    for k in ("alpha_ih", "alpha_hh", "alpha_c"):
        assert np.all(p[k] == 1), k
    for k in ("beta_ih", "beta_hh", "beta_c"):
        assert np.all(p[k] == 0), k
    bound = 1 / math.sqrt(16)
    for k in ("W_ih", "W_hh", "b"):
        assert np.all(np.abs(p[k]) <= bound) and np.max(np.abs(p[k])) > 0.8 * bound, k


@pytest.mark.parametrize("eps, error, match", [
    (0.0, ValueError, r"eps: expected a positive finite number, got 0\.0"),
    (-1e-5, ValueError, r"eps: expected a positive finite number, got -1e-05"),
    (float("nan"), ValueError, r"eps: expected a positive finite number, got nan"),
    ("1e-5", TypeError, r"eps: expected a positive finite number, got str '1e-5'"),
    (True, TypeError, r"eps: expected a positive finite number, got bool True"),
])
def test_bad_eps_is_refused(eps, error, match):
    params, x, state0 = make(np.random.default_rng(6))
    with pytest.raises(error, match=match):
        ln_lstm.forward(params, x, state0, eps=eps)


def test_w_hh_without_four_gates_is_refused(rng):
    params, x, state0 = make(rng)
    cut = {k: v[:12] if v.shape[0] == 16 else v for k, v in params.items()}
    with pytest.raises(ValueError, match=r"W_hh: expected shape \(4H, H\) = \(16, 4\) "
                                         r"\(gates i, f, g, o stacked on axis 0\), got \(12, 4\)"):
        ln_lstm.forward(cut, x, state0)


def test_gain_of_the_cell_norm_must_have_h_entries(rng):
    params, x, state0 = make(rng)
    with pytest.raises(ValueError, match=r"alpha_c: expected shape \(H=4\), got \(5,\)"):
        ln_lstm.forward({**params, "alpha_c": np.ones(5)}, x, state0)


# ---------------------------------------------------------------------------
# PyTorch float64 oracle: the same equations written with torch's layer_norm
# ---------------------------------------------------------------------------

@pytest.mark.oracle
@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_equals_pytorch_layer_norm_lstm(eps):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(7)
    B, T, D, H = 3, 7, 5, 4  # D ≠ H: a transposed weight cannot pass
    params, x, (h0, c0) = make(rng, B=B, T=T, D=D, H=H)
    dy, dh, dc = (rng.standard_normal(s) for s in ((B, T, H), (B, H), (B, H)))
    y, (h, c), cache = ln_lstm.forward(params, x, (h0, c0), eps=eps)
    grads = ln_lstm.backward(params, cache, dy, (dh, dc))

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    tx, th0, tc0 = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    th, tc, ys = th0, tc0, []
    for t in range(T):
        a = (F.layer_norm(th @ tp["W_hh"].T, (4 * H,), tp["alpha_hh"], tp["beta_hh"], eps)
             + F.layer_norm(tx[:, t] @ tp["W_ih"].T, (4 * H,), tp["alpha_ih"], tp["beta_ih"],
                            eps) + tp["b"])
        i, f, g, o = a.chunk(4, dim=1)
        tc = torch.sigmoid(f) * tc + torch.sigmoid(i) * torch.tanh(g)
        th = torch.sigmoid(o) * torch.tanh(F.layer_norm(tc, (H,), tp["alpha_c"], tp["beta_c"],
                                                        eps))
        ys.append(th)
    ty = torch.stack(ys, dim=1)
    loss = ((ty * torch.from_numpy(dy)).sum() + (th * torch.from_numpy(dh)).sum()
            + (tc * torch.from_numpy(dc)).sum())
    loss.backward()
    tol = 1e-10  # relative RMS, float64
    assert_close(y, ty.detach().numpy(), tol, "y")
    assert_close(h, th.detach().numpy(), tol, "h")
    assert_close(c, tc.detach().numpy(), tol, "c")
    for k, v in tp.items():
        assert_close(grads[k], v.grad.numpy(), tol, f"d{k}")
    assert_close(grads["x"], tx.grad.numpy(), tol, "dx")
    assert_close(grads["state0"][0], th0.grad.numpy(), tol, "dh0")
    assert_close(grads["state0"][1], tc0.grad.numpy(), tol, "dc0")
