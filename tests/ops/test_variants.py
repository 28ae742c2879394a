"""ops.variants: Lightning Attention's per-head decays (the released formula, and
through retention they are the decayed loop), HGRN2 as GLA with k = 1 − f
(against its own loop; every method; gradient checks), and SSD ≡ simple GLA
(Mamba-2's op and simple GLA on the mapped arguments agree in the forward, the
final state and, mapped back, every gradient)."""

import math
import types

import numpy as np
import pytest

from minirec import gradcheck
from minirec.ops import gla, retention, simple_gla, ssd, variants
from tests.conftest import assert_close, readonly

TOL64 = 1e-10   # relative RMS, float64 (DESIGN §6)
GRAD_TOL = 1e-6  # gradcheck relative error
SSD_NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")

# ---------------------------------------------------------------------------
# Lightning Attention's decays
# ---------------------------------------------------------------------------


def test_lightning_decays_power_of_two_heads():
    """λ_h = exp(−2^{−8(h+1)/H} (1 + 1e-5)) for one layer; H = 8: slopes 1/2 … 1/256."""
    lam = variants.lightning_decays(8)
    slopes = 2.0 ** -np.arange(1, 9)
    assert_close(lam, np.exp(-slopes * (1 + 1e-5)), 1e-15, "λ")
    assert lam.shape == (8,) and lam.dtype == np.float64
    assert np.all(np.diff(lam) > 0)  # later heads keep longer memories


def test_lightning_decays_other_head_counts_and_layers():
    """H = 6: ALiBi takes the 4-head slopes (2^-2, 2^-4, 2^-6, 2^-8), then every other
    8-head slope (2^-1, 2^-3); layer l of L scales them by 1 − l/(L−1) + 1e-5."""
    slopes = 2.0 ** -np.array([2, 4, 6, 8, 1, 3])
    for layer, L in [(0, 4), (1, 4), (3, 4)]:
        ratio = 1 - layer / (L - 1) + 1e-5
        assert_close(variants.lightning_decays(6, layer=layer, num_layers=L),
                     np.exp(-slopes * ratio), 1e-15, f"λ layer {layer}")
    last = variants.lightning_decays(6, layer=3, num_layers=4)
    assert np.all(last < 1) and np.all(last > 1 - 1e-5)  # the top layer barely decays
    assert_close(variants.lightning_decays(1), np.array([math.exp(-(2.0 ** -8) * (1 + 1e-5))]),
                 1e-15, "H = 1")


def test_lightning_decays_bad_input():
    with pytest.raises(ValueError, match="H: expected a positive integer"):
        variants.lightning_decays(0)
    with pytest.raises(ValueError, match=r"layer: expected an integer in \[0, num_layers=3\)"):
        variants.lightning_decays(4, layer=3, num_layers=3)
    with pytest.raises(ValueError, match="num_layers: expected a positive integer"):
        variants.lightning_decays(4, num_layers=0)


def test_lightning_decays_drive_simple_gla_as_the_decayed_loop(rng):
    """S_t = λ_h S_{t−1} + k_t v_t^T, run as simple GLA with g = log λ broadcast."""
    B, T, H, K, Vd = 2, 9, 4, 5, 3
    lam = variants.lightning_decays(H, layer=1, num_layers=3)
    q, k = rng.standard_normal((2, B, T, H, K))
    v = rng.standard_normal((B, T, H, Vd))
    g = np.broadcast_to(np.log(lam), (B, T, H))
    o, S_T, _ = simple_gla.forward(q, k, v, g, scale=1.0)
    S = np.zeros((B, H, K, Vd))
    for t in range(T):
        S = lam[None, :, None, None] * S + np.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
        assert_close(o[:, t], np.einsum("bhkv,bhk->bhv", S, q[:, t]), 1e-13, f"o[{t}]")
    assert_close(S_T, S, 1e-13, "final state")


@pytest.mark.parametrize("method", retention.METHODS)
def test_lightning_decays_are_retentions_gamma(method, rng):
    """Passed as retention's gamma they give the same op as simple GLA with g = log λ."""
    B, T, H, K, Vd = 2, 21, 4, 5, 3
    lam = variants.lightning_decays(H, layer=0, num_layers=2)
    q, k = rng.standard_normal((2, B, T, H, K))
    v = rng.standard_normal((B, T, H, Vd))
    o, S_T, _ = retention.forward(q, k, v, gamma=lam, method=method, chunk_size=8)
    ref, S_ref, _ = simple_gla.forward(q, k, v, np.broadcast_to(np.log(lam), (B, T, H)))
    assert_close(o, ref, TOL64, "o")
    assert_close(S_T, S_ref, TOL64, "final state")


# ---------------------------------------------------------------------------
# HGRN2
# ---------------------------------------------------------------------------

def hgrn2_inputs(rng, B=2, T=11, H=2, K=5, Vd=7):
    q = rng.standard_normal((B, T, H, K))
    f_log = np.log(rng.uniform(0.05, 0.999, (B, T, H, K)))
    v = rng.standard_normal((B, T, H, Vd))
    S0 = rng.standard_normal((B, H, K, Vd))
    return q, f_log, v, S0


HGRN2 = types.SimpleNamespace(forward=variants.hgrn2, backward=variants.hgrn2_backward,
                              __name__="hgrn2")


def test_hgrn2_is_its_recurrence(rng):
    """S_t = Diag(f_t) S_{t−1} + (1 − f_t) v_t^T, o_t = scale S_t^T q_t (scale 1: the paper's)."""
    q, f_log, v, S0 = hgrn2_inputs(rng, T=8)
    o, S_T, _ = variants.hgrn2(q, f_log, v, scale=1.0, initial_state=S0)
    f = np.exp(f_log)
    S = S0.copy()
    for t in range(q.shape[1]):
        S = f[:, t, :, :, None] * S + np.einsum("bhk,bhv->bhkv", 1 - f[:, t], v[:, t])
        assert_close(o[:, t], np.einsum("bhkv,bhk->bhv", S, q[:, t]), 1e-13, f"o[{t}]")
    assert_close(S_T, S, 1e-13, "final state")


@pytest.mark.parametrize("method", gla.METHODS)
def test_hgrn2_every_method_equals_recurrent(method, rng):
    q, f_log, v, S0 = hgrn2_inputs(rng, T=37)
    do = rng.standard_normal(v.shape)
    dstate = rng.standard_normal(S0.shape)
    ref = variants.hgrn2(q, f_log, v, initial_state=S0)
    g_ref = variants.hgrn2_backward(ref[2], do, dstate)
    o, S_T, cache = variants.hgrn2(q, f_log, v, initial_state=S0, method=method, chunk_size=8)
    grads = variants.hgrn2_backward(cache, do, dstate)
    assert_close(o, ref[0], TOL64, "o")
    assert_close(S_T, ref[1], TOL64, "final state")
    assert set(grads) == {"q", "f_log", "v", "initial_state"}
    for name in grads:
        assert_close(grads[name], g_ref[name], TOL64, f"d{name}")


@pytest.mark.parametrize("method", gla.METHODS)
def test_hgrn2_gradcheck(method, rng):
    q, f_log, v, S0 = hgrn2_inputs(rng, B=1, T=7, K=3, Vd=4)
    report = gradcheck.check_op(HGRN2, {"q": q, "f_log": f_log, "v": v, "initial_state": S0},
                                method=method, chunk_size=3)
    assert report.passed, str(report)
    assert set(report.errors) == {"q", "f_log", "v", "initial_state"}


def test_hgrn2_bad_input(rng):
    q, f_log, v, S0 = hgrn2_inputs(rng, T=4)
    with pytest.raises(ValueError, match="f_log: expected shape"):
        variants.hgrn2(q, f_log[..., :2], v)
    with pytest.raises(TypeError, match="ops.variants.hgrn2"):
        variants.hgrn2_backward(None, None)


# ---------------------------------------------------------------------------
# SSD ≡ simple GLA
# ---------------------------------------------------------------------------

def ssd_inputs(rng, batch=2, T=29, H=3, P=7, N=5):
    return {"x": rng.standard_normal((batch, T, H, P)),
            "dt": rng.uniform(0.05, 1.0, (batch, T, H)),
            "A": -rng.uniform(0.5, 2.0, H),
            "B": rng.standard_normal((batch, T, H, N)),
            "C": rng.standard_normal((batch, T, H, N)),
            "D": rng.standard_normal(H),
            "initial_state": rng.standard_normal((batch, H, N, P))}


def test_ssd_as_simple_gla_arguments(rng):
    d = ssd_inputs(rng, T=4)
    args = variants.ssd_as_simple_gla(d["x"], d["dt"], d["A"], d["B"], d["C"])
    assert set(args) == {"q", "k", "v", "g", "scale"} and args["scale"] == 1.0
    assert args["q"] is d["C"] and args["v"] is d["x"]
    assert_close(args["k"], d["dt"][..., None] * d["B"], 0, "k")
    assert_close(args["g"], d["dt"] * d["A"], 0, "g")


@pytest.mark.parametrize("gla_method", simple_gla.METHODS)
@pytest.mark.parametrize("ssd_method", ssd.METHODS)
def test_ssd_is_simple_gla(ssd_method, gla_method, rng):
    """Every SSD method equals every simple GLA method on the mapped arguments:
    y = o + D x, the same final state, and (chain rule) every gradient."""
    d = ssd_inputs(rng)
    dy = rng.standard_normal(d["x"].shape)
    dstate = rng.standard_normal(d["initial_state"].shape)
    readonly(*d.values(), dy, dstate)
    y, h_T, cache = ssd.forward(*(d[k] for k in SSD_NAMES[:6]), initial_state=d["initial_state"],
                                method=ssd_method, chunk_size=8)
    g_ssd = ssd.backward(cache, dy, dstate)
    args = variants.ssd_as_simple_gla(d["x"], d["dt"], d["A"], d["B"], d["C"])
    o, S_T, gcache = simple_gla.forward(**args, initial_state=d["initial_state"],
                                        method=gla_method, chunk_size=16)
    assert_close(o + d["D"][:, None] * d["x"], y, TOL64, "y")
    assert_close(S_T, h_T, TOL64, "final state")
    g_gla = simple_gla.backward(gcache, dy, dstate)
    mapped = variants.ssd_grads_from_simple_gla(g_gla, d["x"], d["dt"], d["A"], d["B"],
                                                d["D"], dy)
    assert set(mapped) == set(SSD_NAMES)
    for k in SSD_NAMES:
        assert_close(mapped[k], g_ssd[k], TOL64, f"d{k}")


def test_ssd_grads_from_simple_gla_without_skip(rng):
    d = ssd_inputs(rng, T=5)
    args = variants.ssd_as_simple_gla(d["x"], d["dt"], d["A"], d["B"], d["C"])
    _, _, gcache = simple_gla.forward(**args)
    dy = rng.standard_normal(d["x"].shape)
    mapped = variants.ssd_grads_from_simple_gla(simple_gla.backward(gcache, dy), d["x"],
                                                d["dt"], d["A"], d["B"])
    _, _, cache = ssd.forward(d["x"], d["dt"], d["A"], d["B"], d["C"])
    ref = ssd.backward(cache, dy)
    assert mapped["D"] is None and ref["D"] is None
    for k in ("x", "dt", "A", "B", "C", "initial_state"):
        assert_close(mapped[k], ref[k], TOL64, f"d{k}")
    with pytest.raises(ValueError, match="dy: expected"):
        variants.ssd_grads_from_simple_gla(simple_gla.backward(gcache, dy), d["x"], d["dt"],
                                           d["A"], d["B"], d["D"])
