"""Numba selective-scan kernels: what the contract tests (tests/test_contract.py)
do not reach — every subset of the optional arrays, Δ without softplus,
channel counts that pad the 32-lane blocks, one or several threads,
checkpoint chunks, the Mamba block over two lane blocks, and the kernels' own
exp."""

import itertools

import numpy as np
import pytest

from minirec import registry
from minirec.ops import selective_scan as ss
from tests.conftest import TOL, assert_close

numba = pytest.importorskip("numba")
from minirec.kernels.numba import selective_scan as kern  # noqa: E402  (a broken kernel fails)

OPTIONAL = ("D", "z", "delta_bias", "initial_state")


def make(rng, B=2, T=37, D=37, N=5, dtype=np.float64, optional=OPTIONAL, softplus=True):
    """The registry's inputs with only the optional arrays in ``optional``. D = 37
    channels: two blocks of the kernel's 32 lanes, the second padded; T = 37
    crosses the 32-step checkpoint chunk. Without softplus, Δ = delta (+ bias)
    is kept positive."""
    x = registry.get("selective_scan").make_inputs(rng, dtype, "small", B=B, T=T, D=D, N=N)
    if not softplus:
        x["delta"] = np.abs(x["delta"]) + dtype(0.1)
        x["delta_bias"] = np.abs(x["delta_bias"])
    return {k: v for k, v in x.items() if k not in OPTIONAL or k in optional}


def run(x, softplus, backend, dy, dstate, **kw):
    y, h_T, cache = ss.forward(**x, delta_softplus=softplus, backend=backend, **kw)
    return y, h_T, ss.backward(cache, dy, dstate)


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
    dstate = rng.standard_normal((2, 37, 5)).astype(dtype)
    ref = run(x, softplus, "numpy", dy, dstate)
    got = run(x, softplus, "numba", dy, dstate)
    assert_same(got, ref, TOL[np.dtype(dtype)])  # float64 1e-10, float32 1e-4 relative RMS


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("D", [1, 32, 70])
def test_channel_blocks_and_thread_groups(D, threads, rng):
    """D = 1 (31 pad lanes), 32 (one block, no padding), 70 (three blocks, the
    input padded to 96); with 1 thread one backward job runs every block of a
    batch row in turn, so its per-block state must be reset between blocks."""
    x = make(rng, T=9, D=D, N=3)
    dy, dstate = rng.standard_normal((2, 9, D)), rng.standard_normal((2, D, 3))
    ref = run(x, True, "numpy", dy, dstate)
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        got = run(x, True, "numba", dy, dstate)
    finally:
        numba.set_num_threads(before)
    assert_same(got, ref, 1e-10)


@pytest.mark.parametrize("chunk", [1, 5, 8, 64])
def test_kernel_checkpoint_chunks(chunk, rng):
    """The kernel module called directly with checkpoints every ``chunk`` steps
    (T = 23 a multiple of none of them but 1), against the definition."""
    x = make(rng, T=23, D=5, N=4)
    dy, dstate = rng.standard_normal((2, 23, 5)), rng.standard_normal((2, 5, 4))
    ry, rh_T, rg = run(x, True, "numpy", dy, dstate)
    y, h_T, kc = kern.forward(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                              x["delta_bias"], True, x["initial_state"], chunk=chunk)
    assert kc.checkpoints.shape == (2, -(-23 // chunk), 32, 4)  # D = 5 padded to 32 lanes
    assert_close(y, ry, 1e-10, "y")
    assert_close(h_T, rh_T, 1e-10, "h_T")
    g = kern.backward(kc, dy, dstate)
    assert set(g) == set(rg)
    for k in rg:
        assert_close(g[k], rg[k], 1e-10, k)


def test_numba_refuses_methods_it_has_no_kernel_for(rng):
    x = make(rng, T=4, D=2, N=2)
    with pytest.raises(ValueError, match="backend='numba' supports .*got 'blelloch'"):
        ss.forward(**x, method="blelloch", backend="numba")
    from minirec.cells import mamba
    m = registry.get("mamba").make_inputs(rng, np.float64, "small")
    with pytest.raises(ValueError, match="backend='numba' supports .*got 'hillis_steele'"):
        mamba.forward(m["params"], m["x"], method="hillis_steele", backend="numba")


def test_every_option_combination_builds_the_same_keys(rng):
    """The numba path returns exactly the gradient keys of the definition for
    every subset of the optional arrays."""
    for r in range(len(OPTIONAL) + 1):
        for opt in itertools.combinations(OPTIONAL, r):
            x = make(rng, T=3, D=2, N=2, optional=opt)
            y, h_T, c = ss.forward(**x, backend="numba")
            _, _, rc = ss.forward(**x)
            assert set(ss.backward(c, y, None)) == set(ss.backward(rc, y, None)), opt


# ---------------------------------------------------------------------------
# the Mamba block over two lane blocks
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T", [1, 37])
def test_mamba_block_numba_equals_numpy(dtype, T, rng):
    """d_model = 20: d_inner = 40 channels, two lane blocks (the contract's
    sizes have one)."""
    from minirec.cells import mamba
    inputs = registry.get("mamba").make_inputs(rng, dtype, "small", T=T, M=20, N=4)
    p, x, s0 = inputs["params"], inputs["x"], inputs["state0"]
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
