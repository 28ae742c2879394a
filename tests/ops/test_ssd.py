"""ops.ssd (Mamba-2): the definition against an independent loop and the paper's
own chunked listing; every method against ``recurrent`` (forward, final state,
every gradient) in float64; gradient checks of every method; decays exactly 0
and very strong (dt·A = −20 and −100 per step) in float32; split-resume; bad
input. SSD ≡ simple GLA is tests/ops/test_variants.py's."""

import numpy as np
import pytest

from minirec import gradcheck
from minirec.ops import ssd
from tests.conftest import assert_close, readonly

TOL64 = 1e-10   # relative RMS, float64 (DESIGN §6)
TOL32 = 1e-4    # relative RMS, float32 against the float64 definition
GRAD_TOL = 1e-6  # gradcheck relative error, float64
NAMES = ("x", "dt", "A", "B", "C", "D", "initial_state")
OTHERS = tuple(m for m in ssd.METHODS if m != "recurrent")


def inputs(rng, *, batch=2, T=11, H=3, P=7, N=5, dtype=np.float64, D=True, h0=True):
    """P ≠ N, neither a power of two; dt ∈ (0.05, 1), A ∈ (−2, −0.5)."""
    d = {"x": rng.standard_normal((batch, T, H, P)),
         "dt": rng.uniform(0.05, 1.0, (batch, T, H)),
         "A": -rng.uniform(0.5, 2.0, H),
         "B": rng.standard_normal((batch, T, H, N)),
         "C": rng.standard_normal((batch, T, H, N)),
         "D": rng.standard_normal(H) if D else None,
         "initial_state": rng.standard_normal((batch, H, N, P)) if h0 else None}
    return {k: None if v is None else v.astype(dtype) for k, v in d.items()}


def upstream(rng, d):
    batch, T, H, P = d["x"].shape
    N = d["B"].shape[-1]
    dtype = d["x"].dtype
    return (rng.standard_normal((batch, T, H, P)).astype(dtype),
            rng.standard_normal((batch, H, N, P)).astype(dtype))


def run(d, dy, dstate, **kw):
    args = {k: d[k] for k in NAMES if k != "initial_state"}
    y, h_T, cache = ssd.forward(**args, initial_state=d["initial_state"], **kw)
    return y, h_T, ssd.backward(cache, dy, dstate)


def loop(x, dt, A, B, C, D, h0):
    """The module docstring's recurrence, step by step, one (batch, head) at a time."""
    batch, T, H, P = x.shape
    y = np.zeros(x.shape)
    h = np.array(h0, dtype=np.float64)
    for b in range(batch):
        for j in range(H):
            s = h[b, j].copy()
            for t in range(T):
                s = np.exp(dt[b, t, j] * A[j]) * s + dt[b, t, j] * np.outer(B[b, t, j], x[b, t, j])
                y[b, t, j] = s.T @ C[b, t, j] + (0 if D is None else D[j] * x[b, t, j])
            h[b, j] = s
    return y, h


def segsum(a):
    """The paper's stable segment sum: out[..., i, j] = Σ_{j < s ≤ i} a_s, −inf for j > i."""
    T = a.shape[-1]
    cs = np.cumsum(a, axis=-1)
    out = cs[..., :, None] - cs[..., None, :]
    return np.where(np.tril(np.ones((T, T), bool)), out, -np.inf)


def ssd_minimal_discrete(X, A, B, C, block_len, initial_states):
    """Dao & Gu 2024, Listing 1 (``ssd_minimal_discrete``), in NumPy: X (b, l, h, p)
    already multiplied by dt, A (b, l, h) = dt·A, B, C (b, l, h, n); l a multiple of
    block_len; initial_states (b, h, p, n) (the paper's state is P-first)."""
    b, L, h, p = X.shape
    c = L // block_len
    X, B, C = (z.reshape(b, c, block_len, *z.shape[2:]) for z in (X, B, C))
    A = A.reshape(b, c, block_len, h).transpose(0, 3, 1, 2)        # b h c l
    A_cumsum = np.cumsum(A, axis=-1)
    # 1. the diagonal blocks (intra-chunk outputs)
    Lmat = np.exp(segsum(A))
    Y_diag = np.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, Lmat, X)
    # 2. the state of each chunk
    decay_states = np.exp(A_cumsum[..., -1:] - A_cumsum)
    states = np.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)
    # 3. the inter-chunk recurrence
    states = np.concatenate([initial_states[:, None], states], axis=1)
    decay_chunk = np.exp(segsum(np.pad(A_cumsum[..., -1], ((0, 0), (0, 0), (1, 0)))))
    new_states = np.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    states, final_state = new_states[:, :-1], new_states[:, -1]
    # 4. state → output
    Y_off = np.einsum("bclhn,bchpn,bhcl->bclhp", C, states, np.exp(A_cumsum))
    return (Y_diag + Y_off).reshape(b, L, h, p), final_state


# ---------------------------------------------------------------------------
# the definition
# ---------------------------------------------------------------------------

def test_definition_is_the_loop(rng):
    d = inputs(rng, T=9)
    y, h_T, _ = ssd.forward(d["x"], d["dt"], d["A"], d["B"], d["C"], d["D"],
                            initial_state=d["initial_state"])
    y_ref, h_ref = loop(*(d[k] for k in NAMES))
    assert_close(y, y_ref, 1e-13, "y")
    assert_close(h_T, h_ref, 1e-13, "final state")


@pytest.mark.parametrize("method", ssd.METHODS)
def test_every_method_equals_the_papers_listing(method, rng):
    """Listing 1 of the paper (segment sums, chunks of 8) with X·dt and A·dt."""
    d = inputs(rng, T=24, D=False)
    y, h_T, _ = ssd.forward(d["x"], d["dt"], d["A"], d["B"], d["C"],
                            initial_state=d["initial_state"], method=method, chunk_size=16)
    y_ref, h_ref = ssd_minimal_discrete(d["x"] * d["dt"][..., None], d["dt"] * d["A"],
                                        d["B"], d["C"], 8,
                                        d["initial_state"].transpose(0, 1, 3, 2))
    assert_close(y, y_ref, TOL64, "y")
    assert_close(h_T, h_ref.transpose(0, 1, 3, 2), TOL64, "final state")


def test_definition_gradcheck(rng):
    d = inputs(rng, batch=2, T=6, H=2, P=3, N=4)
    report = gradcheck.check_op(ssd, d)
    assert report.passed, str(report)
    assert set(report.errors) == set(NAMES)


def test_without_skip_the_gradient_of_D_is_none(rng):
    d = inputs(rng, T=5, D=False)
    dy, dstate = upstream(rng, d)
    _, _, grads = run(d, dy, dstate)
    assert set(grads) == set(NAMES) and grads["D"] is None
    with_zero = dict(d, D=np.zeros(d["A"].shape))
    _, _, g0 = run(with_zero, dy, dstate)
    for k in NAMES:
        if k != "D":
            assert_close(grads[k], g0[k], 1e-14, k)


# ---------------------------------------------------------------------------
# every method equals the definition
# ---------------------------------------------------------------------------

CASES = [(m, T, cs) for m in OTHERS for T in (1, 37, 64, 100)
         for cs in ((8, 16, 64) if m == "chunk" else (64,))]


@pytest.mark.parametrize("method, T, chunk_size", CASES)
def test_method_equals_recurrent_forward_and_every_gradient(method, T, chunk_size, rng):
    d = inputs(rng, T=T, H=2)
    dy, dstate = upstream(rng, d)
    y0, h0, g0 = run(d, dy, dstate)
    y, h, g = run(d, dy, dstate, method=method, chunk_size=chunk_size)
    assert_close(y, y0, TOL64, "y")
    assert_close(h, h0, TOL64, "final state")
    for k in NAMES:
        assert_close(g[k], g0[k], TOL64, f"d{k}")


@pytest.mark.parametrize("method", OTHERS)
def test_method_gradcheck(method, rng):
    d = inputs(rng, batch=2, T=9, H=2, P=3, N=4)
    report = gradcheck.check_op(ssd, d, method=method, chunk_size=4)
    assert report.passed, str(report)
    assert set(report.errors) == set(NAMES)


@pytest.mark.parametrize("method", ssd.METHODS)
def test_decay_exactly_zero_is_a_cumulative_sum(method, rng):
    """A = 0: h_t = h0 + Σ_{s≤t} dt_s B_s x_s^T, and dA = Σ ⟨g_t, h_{t−1}⟩ dt_t still flows."""
    d = inputs(rng, T=13)
    d["A"] = np.zeros_like(d["A"])
    dy, dstate = upstream(rng, d)
    y, h_T, grads = run(d, dy, dstate, method=method, chunk_size=4)
    inc = np.einsum("bth,bthn,bthp->bthnp", d["dt"], d["B"], d["x"])
    h = d["initial_state"][:, None] + np.cumsum(inc, axis=1)
    assert_close(y, np.einsum("bthnp,bthn->bthp", h, d["C"]) + d["D"][:, None] * d["x"],
                 1e-12, "y")
    assert_close(h_T, h[:, -1], 1e-12, "final state")
    assert all(np.all(np.isfinite(grads[k])) for k in NAMES)
    _, _, g_ref = run(d, dy, dstate)
    for k in NAMES:
        assert_close(grads[k], g_ref[k], TOL64, f"d{k}")


# ---------------------------------------------------------------------------
# strong decay in float32
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ssd.METHODS)
@pytest.mark.parametrize("log_decay", [-20.0, -100.0])
def test_strong_decay_float32_is_finite_and_accurate(method, log_decay, rng):
    """dt·A = −20 (and −100) per step, T = 256: e^{Σ dt A} underflows after a few
    steps, so only a form that exponentiates differences G_i − G_j ≤ 0 stays
    finite (a factored e^{G_i}·e^{−G_j} would overflow to inf·0 = nan)."""
    d = inputs(rng, batch=1, T=256, H=2, P=3, N=4)
    d["dt"] = np.full(d["dt"].shape, 1.25)
    d["A"] = np.full(d["A"].shape, log_decay / 1.25)  # dt·A = log_decay per step
    dy, dstate = upstream(rng, d)
    y64, h64, g64 = run(d, dy, dstate)
    d32 = {k: None if v is None else v.astype(np.float32) for k, v in d.items()}
    y, h, g = run(d32, dy.astype(np.float32), dstate.astype(np.float32), method=method,
                  chunk_size=64)
    assert y.dtype == np.float32 and all(g[k].dtype == np.float32 for k in NAMES)
    for name, a, ref in [("y", y, y64), ("final state", h, h64)] + \
            [(f"d{k}", g[k], g64[k]) for k in NAMES]:
        assert np.all(np.isfinite(a)), name
        if np.max(np.abs(ref)) < np.finfo(np.float32).tiny:
            # dA and d initial_state are ∝ e^{dt·A}: at e^{−100} that is below float32's
            # normal range (subnormal, no relative precision): it must be the ~0 it is
            assert np.max(np.abs(a)) < 1e-30, name
            continue
        assert_close(a, ref, TOL32, name)


# ---------------------------------------------------------------------------
# split-resume, inputs untouched
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ssd.METHODS)
def test_split_resume(method, rng):
    """Two calls, the second starting from the first's state, equal one call; and the
    gradients of the two halves chain through dstate = d initial_state."""
    d = inputs(rng, T=23)
    dy, dstate = upstream(rng, d)
    y, h_T, g = run(d, dy, dstate, method=method, chunk_size=8)
    cut = 10
    first = {k: (v[:, :cut] if k in ("x", "dt", "B", "C") else v) for k, v in d.items()}
    second = {k: (v[:, cut:] if k in ("x", "dt", "B", "C") else v) for k, v in d.items()}
    y1, h1, c1 = ssd.forward(*(first[k] for k in NAMES[:6]), initial_state=d["initial_state"],
                             method=method, chunk_size=8)
    y2, h2, c2 = ssd.forward(*(second[k] for k in NAMES[:6]), initial_state=h1,
                             method=method, chunk_size=8)
    assert_close(np.concatenate([y1, y2], axis=1), y, TOL64, "y")
    assert_close(h2, h_T, TOL64, "final state")
    g2 = ssd.backward(c2, dy[:, cut:], dstate)
    g1 = ssd.backward(c1, dy[:, :cut], g2["initial_state"])
    for k in ("x", "dt", "B", "C"):
        assert_close(np.concatenate([g1[k], g2[k]], axis=1), g[k], TOL64, f"d{k}")
    for k in ("A", "D"):
        assert_close(g1[k] + g2[k], g[k], TOL64, f"d{k}")
    assert_close(g1["initial_state"], g["initial_state"], TOL64, "d initial_state")


@pytest.mark.parametrize("method", ssd.METHODS)
def test_inputs_and_upstream_gradients_are_not_written(method, rng):
    d = inputs(rng, T=9)
    dy, dstate = upstream(rng, d)
    readonly(*d.values(), dy, dstate)
    run(d, dy, dstate, method=method, chunk_size=4)


def test_nan_in_x_is_causal_in_the_definition(rng):
    """A NaN in x at step t makes y non-finite from t on in that batch row only."""
    d = inputs(rng, T=9)
    d["x"][0, 4, 1, 2] = np.nan
    y, h_T, _ = ssd.forward(*(d[k] for k in NAMES[:6]), initial_state=d["initial_state"])
    assert np.all(np.isfinite(y[:, :4])) and np.all(np.isfinite(y[1]))
    assert np.isnan(y[0, 4:, 1, 2]).all()
    assert np.all(np.isfinite(h_T[1])) and np.isnan(h_T[0, 1, :, 2]).all()


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def test_bad_input_is_refused_with_the_arguments_name(rng):
    d = inputs(rng, T=5)
    x, dt, A, B, C, D, h0 = (d[k] for k in NAMES)
    with pytest.raises(ValueError, match=r"A: expected shape \(H=3\)"):
        ssd.forward(x, dt, np.zeros(4), B, C)
    with pytest.raises(ValueError, match="dt: expected shape"):
        ssd.forward(x, dt[:, :4], A, B, C)
    with pytest.raises(ValueError, match="C: expected shape"):
        ssd.forward(x, dt, A, B, C[..., :3])
    with pytest.raises(ValueError, match="D: expected shape"):
        ssd.forward(x, dt, A, B, C, np.zeros(2))
    with pytest.raises(ValueError, match="initial_state: expected shape"):
        ssd.forward(x, dt, A, B, C, initial_state=h0[..., :2])
    with pytest.raises(TypeError, match="mixed precisions"):
        ssd.forward(x, dt.astype(np.float32), A, B, C)
    with pytest.raises(TypeError, match="x: expected an ndarray"):
        ssd.forward(x.tolist(), dt, A, B, C)
    with pytest.raises(ValueError, match="method: expected one of"):
        ssd.forward(x, dt, A, B, C, method="scan")
    with pytest.raises(ValueError, match="chunk_size: expected a positive integer"):
        ssd.forward(x, dt, A, B, C, method="chunk", chunk_size=0)
    with pytest.raises(ValueError, match="backend"):
        ssd.forward(x, dt, A, B, C, backend="tpu")
    _, _, cache = ssd.forward(x, dt, A, B, C, D)
    with pytest.raises(ValueError, match="dy: expected shape"):
        ssd.backward(cache, x[:, :2])
    with pytest.raises(ValueError, match="dstate: expected shape"):
        ssd.backward(cache, None, h0[..., :2])
    with pytest.raises(TypeError, match="cache: expected the cache returned by ops.ssd"):
        ssd.backward(tuple(cache), None)
