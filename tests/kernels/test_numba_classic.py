"""The Numba RNN/GRU/LSTM kernels (kernels/numba/classic.py): what the contract
test (tests/test_contract.py) does not see — both forms of the recurrent
product (per-step BLAS gemm and row loop) whatever the size switch picks, batch
blocks of unequal size, a hidden size that is no multiple of a SIMD width,
float32 arithmetic staying float32 inside the loops, and the kernels' tanh near 0."""

import math

import numpy as np
import pytest

from minirec import registry
from tests.conftest import TOL

numba = pytest.importorskip("numba")
from minirec.kernels.numba import _math as NM  # noqa: E402  (imports numba)
from minirec.kernels.numba import classic  # noqa: E402

ENTRIES = ["rnn", "rnn_relu", "gru", "lstm"]
KERNELS = ["rnn_forward", "rnn_backward", "gru_forward", "gru_backward", "lstm_forward",
           "lstm_backward"]
# the size switch forced each way: (GEMM_MAX_W_BYTES, GEMM_MIN_ROWS, SMALL_GEMM_MACS);
# "panels": gemm per column panel at B = 5 (3 rows per block), H = 32 (see below)
PRODUCTS = {"gemm": (1 << 62, 1, 1 << 62), "row loop": (-1, 1 << 62, -1),
            "panels": (1 << 62, 1, 6144)}


def _force(monkeypatch, product):
    for name, value in zip(("GEMM_MAX_W_BYTES", "GEMM_MIN_ROWS", "SMALL_GEMM_MACS"),
                           PRODUCTS[product]):
        monkeypatch.setattr(classic, name, value)


def _agree(name, dtype, **dims):
    entry = registry.get(name)
    errors = registry.agreement(entry, "recurrent", "numba", dtype=np.dtype(dtype),
                                size=entry.size("medium", **dims))
    tol = TOL[np.dtype(dtype)]
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative RMS above {tol:.0e}: {bad}"


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_equals_definition_at_an_odd_hidden_size(name, dtype, product, monkeypatch):
    """H = 33: the vectorised inner loops have a remainder; B = 5 splits into
    batch blocks of unequal size (agreement with the float64 NumPy definition:
    relative RMS ≤ 1e-10 in float64, ≤ 1e-4 in float32), for both products."""
    _force(monkeypatch, product)
    _agree(name, dtype, B=5, T=13, H=33)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_a_single_row_runs_as_one_block(name, product, monkeypatch):
    """B = 1: one block, whatever the thread count."""
    _force(monkeypatch, product)
    _agree(name, np.float64, B=1, T=7, H=9)


@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_equals_definition_with_column_panels(name, dtype, monkeypatch):
    """SMALL_GEMM_MACS = 6144 at B = 5 (blocks of ≤ 3 rows), H = 32 cuts the
    per-step products into column panels: LSTM forward (3, 32)@(32, 128) into
    2 panels of 64, backward (3, 128)@(128, 32) into 2 of 16; GRU forward 3
    of 32, backward 2 of 16 (the RNN's fit whole)."""
    _force(monkeypatch, "panels")
    rows = classic.block_rows(5)
    assert rows <= 3
    if name == "lstm":
        assert classic.panel_width(rows, 32, 128) == 64
        assert classic.panel_width(rows, 128, 32) == 16
    _agree(name, dtype, B=5, T=13, H=32)


def test_the_size_switch(monkeypatch):
    """Panels: the widest that divides N and keeps rows·K·cb in the small-matrix
    kernel, the whole product when it fits; gemm (panelled) whenever the panels
    fit, the row loop only for a large operand, few rows and no fitting panel."""
    assert classic.panel_width(4, 256, 1024) == 256
    assert classic.panel_width(8, 256, 1024) == 256
    assert classic.panel_width(16, 512, 2048) == 64
    assert classic.panel_width(16, 2048, 512) == 16
    assert classic.panel_width(1, 256, 1024) == 1024   # fits whole
    assert classic.panel_width(64, 4096, 100) == 100   # nothing fits: one call
    huge = np.zeros((1 << 16, 32), np.float32)   # 8 MiB; 2 rows · 65536 · 16 > 2^19
    assert not classic.use_gemm(huge, 2 * classic.n_chunks(1 << 10))
    assert classic.use_gemm(np.zeros((256, 1024), np.float32), 8)
    assert classic.use_gemm(huge, classic.GEMM_MIN_ROWS * classic.n_chunks(1 << 10))
    M = np.arange(6 * 64, dtype=np.float32).reshape(6, 64)
    rows = classic.block_rows(1 << 10)
    monkeypatch.setattr(classic, "SMALL_GEMM_MACS", rows * 6 * 16)
    P = classic.panels(M, 1 << 10)
    assert P.flags.c_contiguous and P.shape == (4, 6, 16)
    np.testing.assert_array_equal(np.concatenate(list(P), axis=1), M)
    assert classic.n_chunks(1) == 1
    assert classic.n_chunks(0) == 1


def test_float32_is_computed_in_float32_inside_every_kernel(monkeypatch):
    """No float64 value anywhere in the float32 specialisations: a float64
    literal (``1.0 - z``) or the old local tanh/σ would promote the arithmetic.
    The kernels are recompiled uncached here so that their types can be read;
    both products are compiled in every kernel (``gemm`` is a run-time flag)."""
    fresh = {k: numba.njit(getattr(classic, k).py_func) for k in KERNELS}
    for k, f in fresh.items():
        monkeypatch.setattr(classic, k, f)
    rng = np.random.default_rng(0)
    for name in ENTRIES:
        entry = registry.get(name)
        inputs = entry.make_inputs(rng, np.float32)
        out, state, cache = registry.run_forward(entry, inputs, **entry.forward_kwargs,
                                                 backend="numba")
        registry.run_backward(entry, inputs, cache, out, state)
    for k, f in fresh.items():
        (cres,) = f.overloads.values()
        typemap = cres.type_annotation.typemap
        assert numba.float32 in typemap.values(), k
        promoted = sorted(v for v, t in typemap.items() if t == numba.float64)
        assert not promoted, f"{k}: float64 values in the float32 kernel: {promoted}"


# ---------------------------------------------------------------------------
# tanh near 0: no cancellation in (1 − e)/(1 + e)
# ---------------------------------------------------------------------------

@numba.njit
def _tanh_kernel(x, out):
    for i in range(x.shape[0]):
        out[i] = NM.tanh(x[i])


def _tanh_exact(x):
    """tanh in float64 from expm1 (a few ulp, no cancellation anywhere), for |x| ≤ 1."""
    u = np.expm1(-2.0 * np.abs(x.astype(np.float64)))
    return np.sign(x) * (-u / (2.0 + u))


@pytest.mark.parametrize("dtype, max_eps", [(np.float64, 8), (np.float32, 4)])
def test_tanh_keeps_its_relative_precision_near_zero(dtype, max_eps):
    """Relative error ≤ a few eps of the dtype for 1e-30 ≤ |x| ≤ 1 (the exp form
    alone: ~1500 eps at |x| = 1e-4 in float64, and tanh(1e-9) was 0 in float32),
    in the compiled kernel function and in the plain Python one."""
    mag = np.geomspace(1e-30, 1.0, 3001).astype(dtype)
    x = np.concatenate([mag, -mag])
    ref = _tanh_exact(x)
    out = np.empty_like(x)
    _tanh_kernel(x, out)
    assert out.dtype == dtype
    eps = np.finfo(dtype).eps
    rel = np.abs(out.astype(np.float64) - ref) / np.abs(ref)
    assert rel.max() <= max_eps * eps, f"{rel.max() / eps:.1f} eps at x = {x[rel.argmax()]!r}"
    if dtype == np.float64:
        py = np.array([NM.tanh(float(v)) for v in x])
        rel_py = np.abs(py - ref) / np.abs(ref)
        assert rel_py.max() <= max_eps * eps


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tanh_at_the_edges(dtype):
    """Signed zeros, ±inf, NaN, large arguments and both sides of the series'
    threshold against np.tanh."""
    s = NM.TANH_SERIES_BELOW[np.dtype(dtype)]
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 30.0, -30.0, 1e30, s,
                  np.nextafter(s, 0), -s, 0.5, -3.0], dtype)
    out = np.empty_like(x)
    _tanh_kernel(x, out)
    ref = np.tanh(x.astype(np.float64))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    fin = ~np.isnan(ref)
    np.testing.assert_allclose(out[fin], ref[fin], rtol=8 * np.finfo(dtype).eps, atol=0)
    assert math.copysign(1.0, out[1]) == -1.0  # tanh(−0) = −0


@numba.njit
def _sigmoid_kernel(x, out):
    for i in range(x.shape[0]):
        out[i] = NM.sigmoid(x[i])


def _branching(dtype):
    """σ and tanh as they were written before, with branches and libm's exp,
    compiled for ``dtype``."""
    one, m2 = dtype(1), dtype(-2)
    s = dtype(NM.TANH_SERIES_BELOW[np.dtype(dtype)])
    c3, c5, c7 = (dtype(c) for c in (NM._C3, NM._C5, NM._C7))

    @numba.njit
    def run(x, sig, th):
        for i in range(x.shape[0]):
            v = x[i]
            if v < 0:
                e = np.exp(v)
                sig[i] = e / (one + e)
            else:
                sig[i] = one / (one + np.exp(-v))
            a = abs(v)
            if a < s:
                a2 = a * a
                th[i] = v * (one - a2 * (c3 - a2 * (c5 - a2 * c7)))
            else:
                e = np.exp(m2 * a)
                y = (one - e) / (one + e)
                th[i] = -y if v < 0 else y
    return run


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kernels_activations_against_the_branching_formulas(dtype):
    """float64: σ and tanh are the branching formulas with libm's exp, bit for
    bit. float32: branch-free blends over exp_poly (so loops vectorise), within
    4 eps of the branching versions' values, and equal at ±0, ±inf and NaN
    (signed zero included)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(4000) * 4, np.geomspace(1e-8, 50, 500),
                        -np.geomspace(1e-8, 50, 500),
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30]]).astype(dtype)
    sig, th = np.empty_like(x), np.empty_like(x)
    _branching(dtype)(x, sig, th)
    special = ~np.isfinite(x) | (x == 0) | (np.abs(x) > 1e20)
    for kernel, ref in ((_sigmoid_kernel, sig), (_tanh_kernel, th)):
        out = np.empty_like(x)
        kernel(x, out)
        assert out.dtype == dtype
        if dtype == np.float64:
            np.testing.assert_array_equal(out.view(np.uint8), ref.view(np.uint8))
            continue
        np.testing.assert_array_equal(out[special].view(np.uint8), ref[special].view(np.uint8))
        fin = ~special & (ref != 0)
        rel = np.abs(out[fin].astype(np.float64) - ref[fin]) / np.abs(ref[fin].astype(np.float64))
        assert rel.max() <= 4 * np.finfo(dtype).eps, f"{rel.max() / np.finfo(dtype).eps:.1f} eps"


# ---------------------------------------------------------------------------
# log1p on [0, 1] and softplus (the minLSTM gates, mLSTM, sLSTM)
# ---------------------------------------------------------------------------

@numba.njit
def _log1p_unit_kernel(e, out):
    for i in range(e.shape[0]):
        out[i] = NM.log1p_unit(e[i])


@numba.njit
def _softplus_kernel(x, out):
    for i in range(x.shape[0]):
        out[i] = NM.softplus(x[i])


@pytest.mark.parametrize("dtype, max_eps", [(np.float32, 3), (np.float64, 2)])
def test_log1p_unit_against_log1p(dtype, max_eps):
    """log1p(e) for e ∈ [0, 1] (float32: the atanh series on both sides of √2 − 1,
    no branch; float64: libm's log1p): within a few eps of np.log1p in
    float64, 0 at 0, e itself for tiny e, NaN for NaN."""
    e = np.concatenate([np.linspace(0, 1, 20001), np.geomspace(1e-30, 1, 3001),
                        [NM._SQRT2_M1, np.nextafter(NM._SQRT2_M1, 1)]]).astype(dtype)
    out = np.empty_like(e)
    _log1p_unit_kernel(e, out)
    assert out.dtype == dtype
    ref = np.log1p(e.astype(np.float64))
    nz = ref != 0
    rel = np.abs(out[nz].astype(np.float64) - ref[nz]) / ref[nz]
    assert rel.max() <= max_eps * np.finfo(dtype).eps, \
        f"{rel.max() / np.finfo(dtype).eps:.1f} eps at e = {e[nz][rel.argmax()]!r}"
    assert out[e == 0].tolist() == [0.0] * int((e == 0).sum())
    nan = np.empty(1, dtype)
    _log1p_unit_kernel(np.array([np.nan], dtype), nan)
    assert np.isnan(nan[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softplus_against_the_float64_formula(dtype):
    """softplus(x) = max(x, 0) + log1p(e^{−|x|}) within 4 eps of the float64 value
    (float32: vectorising exp and log1p), ±inf and NaN as the formula."""
    x = np.concatenate([np.linspace(-30, 30, 6001), [0.0, -0.0, 1e30, -1e30]]).astype(dtype)
    out = np.empty_like(x)
    _softplus_kernel(x, out)
    x64 = x.astype(np.float64)
    ref = np.maximum(x64, 0) + np.log1p(np.exp(-np.abs(x64)))
    big = np.abs(ref) > 0
    rel = np.abs(out[big].astype(np.float64) - ref[big]) / ref[big]
    assert rel.max() <= 4 * np.finfo(dtype).eps, f"{rel.max() / np.finfo(dtype).eps:.1f} eps"
    edge = np.array([np.inf, -np.inf, np.nan], dtype)
    got = np.empty_like(edge)
    _softplus_kernel(edge, got)
    assert got[0] == np.inf and got[1] == 0 and np.isnan(got[2])
