"""Numba selective-scan kernels equal the NumPy definition (ops.selective_scan,
method="recurrent") forward and in every gradient; the Mamba block with
backend="numba" equals the NumPy block; the kernels' own exp."""

import itertools

import numpy as np
import pytest

from minirec.cells import mamba
from minirec.ops import selective_scan as ss
from tests.conftest import TOL, assert_close, readonly

numba = pytest.importorskip("numba")
from minirec.kernels.numba import selective_scan as kern  # noqa: E402  (a broken kernel fails)

OPTIONAL = ("D", "z", "delta_bias", "initial_state")


def make(rng, Bsz=2, T=37, D=37, N=5, dtype=np.float64, optional=OPTIONAL, softplus=True):
    """Inputs keyed by forward's argument names. D = 37 channels: two blocks of
    the kernel's 32 lanes, the second padded; T = 37 crosses the 32-step
    checkpoint chunk. Without softplus, Δ = delta (+ bias) is kept positive."""
    delta = 0.5 * rng.standard_normal((Bsz, T, D))
    bias = rng.uniform(-1.0, 1.0, D)
    if not softplus:
        delta, bias = np.abs(delta) + 0.1, np.abs(bias)
    x = {"u": rng.standard_normal((Bsz, T, D)), "delta": delta,
         "A": -rng.uniform(0.5, 2.0, (D, N)),
         "B": rng.standard_normal((Bsz, T, N)), "C": rng.standard_normal((Bsz, T, N)),
         "D": rng.standard_normal(D), "z": rng.standard_normal((Bsz, T, D)),
         "delta_bias": bias, "initial_state": rng.standard_normal((Bsz, D, N))}
    return {k: v.astype(dtype) for k, v in x.items() if k not in OPTIONAL or k in optional}


def run(x, softplus, backend, dy, dh_T, **kw):
    y, h_T, cache = ss.forward(**x, delta_softplus=softplus, backend=backend, **kw)
    return y, h_T, ss.backward(cache, dy, dh_T)


def assert_same(got, ref, tol):
    (y, h_T, g), (ry, rh_T, rg) = got, ref
    assert y.dtype == ry.dtype and h_T.dtype == rh_T.dtype
    assert_close(y, ry, tol, "y")
    assert_close(h_T, rh_T, tol, "h_T")
    assert set(g) == set(rg)
    for k in rg:
        assert g[k].shape == rg[k].shape and g[k].dtype == rg[k].dtype, k
        assert_close(g[k], rg[k], tol, k)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("optional", [OPTIONAL, ()] + [(k,) for k in OPTIONAL],
                         ids=lambda o: "+".join(o) or "none")
def test_numba_equals_definition(dtype, T, softplus, optional, rng):
    x = make(rng, T=T, dtype=dtype, optional=optional, softplus=softplus)
    dy = rng.standard_normal((2, T, 37)).astype(dtype)
    dh_T = rng.standard_normal((2, 37, 5)).astype(dtype)
    ref = run(x, softplus, "numpy", dy, dh_T)
    got = run(x, softplus, "numba", dy, dh_T)
    assert_same(got, ref, TOL[np.dtype(dtype)])  # float64 1e-10, float32 1e-4 relative RMS


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("D", [1, 32, 70])
def test_channel_blocks_and_thread_groups(D, threads, rng):
    """D = 1 (31 pad lanes), 32 (one block, no padding), 70 (three blocks, the
    input padded to 96); with 1 thread one backward job runs every block of a
    batch row in turn, so its per-block state must be reset between blocks."""
    x = make(rng, T=9, D=D, N=3)
    dy, dh_T = rng.standard_normal((2, 9, D)), rng.standard_normal((2, D, 3))
    ref = run(x, True, "numpy", dy, dh_T)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = run(x, True, "numba", dy, dh_T)
    finally:
        numba.set_num_threads(before)
    assert_same(got, ref, 1e-10)


@pytest.mark.parametrize("chunk", [1, 5, 8, 64])
def test_kernel_checkpoint_chunks(chunk, rng):
    """The kernels called directly with checkpoints every ``chunk`` steps
    (T = 23 a multiple of none of them but 1), against the definition."""
    x = make(rng, T=23, D=5, N=4)
    dy, dh_T = rng.standard_normal((2, 23, 5)), rng.standard_normal((2, 5, 4))
    ry, rh_T, rg = run(x, True, "numpy", dy, dh_T)
    pre = x["delta"] + x["delta_bias"]
    y, y0, dt, h_T, ck = kern.forward(x["u"], pre, x["A"], x["B"], x["C"], x["D"], x["z"], True,
                                      x["initial_state"], chunk=chunk)
    assert ck.shape == (2, -(-23 // chunk), 32, 4)    # D = 5 padded to one block of 32 lanes
    assert_close(y, ry, 1e-10, "y")
    assert_close(h_T, rh_T, 1e-10, "h_T")
    g = kern.backward(x["u"], pre, dt, x["A"], x["B"], x["C"], x["D"], x["z"], True, ck, y0, dy,
                      dh_T, chunk=chunk)
    assert_close(g["pre"], rg["delta"], 1e-10, "delta")
    for k in ("u", "A", "B", "C", "D", "z", "initial_state"):
        assert_close(g[k], rg[k], 1e-10, k)


def test_kernel_refuses_checkpoints_of_another_chunk(rng):
    x = make(rng, T=10, D=3, N=2)
    pre = x["delta"]
    y, y0, dt, h_T, ck = kern.forward(x["u"], pre, x["A"], x["B"], x["C"], None, None, False,
                                      x["initial_state"], chunk=4)
    with pytest.raises(ValueError, match=r"checkpoints: expected shape \(2, 2, 32, 2\)"):
        kern.backward(x["u"], pre, dt, x["A"], x["B"], x["C"], None, None, False, ck, y0, y, h_T,
                      chunk=8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chunked_method_with_numba_backend(dtype, rng):
    x = make(rng, T=37, D=6, N=3, dtype=dtype)
    dy = rng.standard_normal((2, 37, 6)).astype(dtype)
    dh_T = rng.standard_normal((2, 6, 3)).astype(dtype)
    ref = run(x, True, "numpy", dy, dh_T)
    got = run(x, True, "numba", dy, dh_T, method="chunked", chunk_size=8)
    assert_same(got, ref, TOL[np.dtype(dtype)])


def test_split_resume(rng):
    """Two numba calls with the returned state equal one NumPy call."""
    x = make(rng, T=40, D=6, N=3)
    y, h_T, _ = ss.forward(**x, delta_softplus=True)
    first = {k: (v[:, :25] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
    second = {k: (v[:, 25:] if k in ("u", "delta", "B", "C", "z") else v) for k, v in x.items()}
    y1, h1, _ = ss.forward(**first, delta_softplus=True, backend="numba")
    second["initial_state"] = h1
    y2, h2, _ = ss.forward(**second, delta_softplus=True, backend="numba")
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-10, "y")
    assert_close(h2, h_T, 1e-10, "h_T")


def test_read_only_inputs_and_gradients(rng):
    x = make(rng, T=11, D=7, N=3)
    dy, dh_T = rng.standard_normal((2, 11, 7)), rng.standard_normal((2, 7, 3))
    ref = run(x, True, "numpy", dy, dh_T)
    before = {k: v.copy() for k, v in x.items()}
    readonly(*x.values(), dy, dh_T)
    got = run(x, True, "numba", dy, dh_T)
    assert_same(got, ref, 1e-10)
    for k, v in before.items():
        np.testing.assert_array_equal(x[k], v)


def test_numba_refuses_methods_it_has_no_kernel_for(rng):
    x = make(rng, T=4, D=2, N=2)
    with pytest.raises(ValueError, match="backend='numba' supports"):
        ss.forward(**x, method="blelloch", backend="numba")
    p, xm, _ = make_mamba(rng)
    with pytest.raises(ValueError, match="backend='numba' supports"):
        mamba.forward(p, xm, method="hillis_steele", backend="numba")


# ---------------------------------------------------------------------------
# the Mamba block
# ---------------------------------------------------------------------------

def make_mamba(rng, Bsz=2, T=37, M=20, N=4, dtype=np.float64):
    """d_inner = 40: two lane blocks; dt_proj_bias, A_log, D randomised."""
    p = mamba.init_params(rng, M, N)
    I, K = p["conv1d_weight"].shape
    p["dt_proj_bias"] = rng.uniform(-1.0, 1.0, I)
    p["A_log"] = np.log(rng.uniform(0.5, 4.0, (I, N)))
    p["D"] = rng.standard_normal(I)
    s0 = (rng.standard_normal((Bsz, I, K - 1)), rng.standard_normal((Bsz, I, N)))
    return ({k: v.astype(dtype) for k, v in p.items()},
            rng.standard_normal((Bsz, T, M)).astype(dtype), tuple(s.astype(dtype) for s in s0))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T", [1, 37])
def test_mamba_block_numba_equals_numpy(dtype, T, rng):
    p, x, s0 = make_mamba(rng, T=T, dtype=dtype)
    tol = TOL[np.dtype(dtype)]
    ref, ref_state, ref_cache = mamba.forward(p, x, s0)
    out, state, cache = mamba.forward(p, x, s0, backend="numba")
    assert out.dtype == ref.dtype
    assert_close(out, ref, tol, "out")
    for i in range(2):
        assert_close(state[i], ref_state[i], tol, f"state[{i}]")
    dy = rng.standard_normal(out.shape).astype(dtype)
    dstate = tuple(rng.standard_normal(s.shape).astype(dtype) for s in state)
    rg = mamba.backward(p, ref_cache, dy, dstate)
    g = mamba.backward(p, cache, dy, dstate)
    assert set(g) == set(rg)
    for k in rg:
        if k == "state0":
            for i in range(2):
                assert_close(g[k][i], rg[k][i], tol, f"state0[{i}]")
        else:
            assert g[k].dtype == rg[k].dtype, k
            assert_close(g[k], rg[k], tol, k)


# ---------------------------------------------------------------------------
# the kernels' exp
# ---------------------------------------------------------------------------

@numba.njit
def _exp_all(x, out, coef, con):
    for i in range(x.shape[0]):
        out[i] = kern._exp(x[i], coef, con)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exp_within_one_ulp_and_special_values(dtype, rng):
    info = np.finfo(dtype)
    big = float(np.log(info.max))
    x = np.concatenate([rng.uniform(-20, 1, 20000), rng.uniform(-big, big, 20000),
                        [0.0, -0.0, np.inf, -np.inf, np.nan, big, big * 1.001, -big * 1.2]])
    x = x.astype(dtype)
    out = np.empty_like(x)
    _exp_all(x, out, *kern.exp_constants(dtype))
    with np.errstate(over="ignore"):
        ref_d = np.exp(x.astype(np.longdouble)).astype(dtype)   # correctly rounded
    normal = np.isfinite(ref_d) & (ref_d >= 4 * info.tiny)
    ulps = np.abs(out[normal] - ref_d[normal]) / np.spacing(ref_d[normal])
    assert ulps.max() <= 1.0, ulps.max()                            # within 1 ulp of it
    special = ~np.isfinite(x) | ~np.isfinite(ref_d)
    np.testing.assert_array_equal(out[special], ref_d[special])     # inf, 0, nan as np.exp
    tiny = ~normal & ~special                                       # flushed: |error| ≤ 2 tiny
    assert np.all(np.abs(out[tiny].astype(np.float64) - ref_d[tiny]) <= 2 * info.tiny)


def test_every_option_combination_builds_the_same_keys(rng):
    """The numba path returns exactly the gradient keys of the definition for
    every subset of the optional arrays."""
    for r in range(len(OPTIONAL) + 1):
        for opt in itertools.combinations(OPTIONAL, r):
            x = make(rng, T=3, D=2, N=2, optional=opt)
            y, h_T, c = ss.forward(**x, backend="numba")
            _, _, rc = ss.forward(**x)
            assert set(ss.backward(c, y, None)) == set(ss.backward(rc, y, None)), opt
