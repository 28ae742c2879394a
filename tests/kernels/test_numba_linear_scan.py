"""Numba linear-scan kernels equal the NumPy reference (forward and backward).

The contract test compares every dtype at the registry's sizes; here: several
trailing axes, chunk sizes that do not divide T, real gates with complex
inputs, and ``log_a``.
"""

import numpy as np
import pytest

from minirec import registry
from minirec.scan import linear
from tests.conftest import TOL, assert_close

pytest.importorskip("numba")

ENTRY = registry.get("scan.linear")


def _randn(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def _assert_numba_equals_numpy(rng, a, b, h0, chunks=(None,), **kw):
    ref, ref_T, ref_cache = linear.forward(a, b, h0, **kw)
    dh, dstate = _randn(rng, ref.shape, ref.dtype), _randn(rng, ref_T.shape, ref.dtype)
    ref_g = linear.backward(ref_cache, dh, dstate)
    tol = TOL[ref.dtype]
    for method in linear.BACKEND_METHODS["numba"]:
        for chunk in chunks:
            h, h_T, cache = linear.forward(a, b, h0, method=method, chunk_size=chunk,
                                           backend="numba", **kw)
            g = linear.backward(cache, dh, dstate)
            assert h.dtype == ref.dtype
            assert_close(h, ref, tol, f"{method} h")
            assert_close(h_T, ref_T, tol, f"{method} h_T")
            assert set(g) == set(ref_g)
            for k in ref_g:
                assert g[k].dtype == ref_g[k].dtype, k
                assert_close(g[k], ref_g[k], tol, f"{method} d{k}")


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("shape", [(2, 29, 3, 2), (1, 64, 5)])
def test_numba_equals_numpy_trailing_axes_and_chunks(dtype, shape, rng):
    d = ENTRY.make_inputs(rng, dtype, "small", T=shape[1], B=shape[0],
                          D=int(np.prod(shape[2:])))
    a, b, h0 = (d[k].reshape(shape if k != "initial_state" else shape[:1] + shape[2:])
                for k in ("a", "b", "initial_state"))
    _assert_numba_equals_numpy(rng, a, b, h0, chunks=(None, 4, 7))


def test_real_gates_with_complex_inputs(rng):
    a = rng.uniform(-1, 1, (2, 9, 3))
    b = _randn(rng, (2, 9, 3), np.complex128)
    h0 = rng.standard_normal((2, 3))  # real h0, complex h: dstate complex
    _assert_numba_equals_numpy(rng, a, b, h0, chunks=(None, 4))
    _, _, c = linear.forward(a, b, h0, backend="numba")
    g = linear.backward(c, _randn(rng, b.shape, np.complex128))
    assert g["a"].dtype == np.float64 and g["initial_state"].dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_log_a(dtype, rng):
    b = _randn(rng, (2, 11, 3), dtype)
    h0 = _randn(rng, (2, 3), dtype)
    log_a = -rng.uniform(0, 1.5, b.shape)
    if np.dtype(dtype).kind == "c":
        log_a = log_a + 1j * rng.uniform(-np.pi, np.pi, b.shape)
    _assert_numba_equals_numpy(rng, None, b, h0, chunks=(None, 4), log_a=log_a.astype(dtype))


def test_numba_refuses_methods_it_has_no_kernel_for(rng):
    d = ENTRY.make_inputs(rng, np.float64)
    with pytest.raises(ValueError, match="backend='numba' supports"):
        linear.forward(d["a"], d["b"], method="blelloch", backend="numba")


@pytest.mark.parametrize("method", ["recurrent", "chunked"])
def test_kernels_write_into_the_callers_buffers(method, rng):
    """With ``out`` the wrappers hand the caller's arrays to the kernels (no new
    ``(B, T, R)`` output, no copy); results equal those of new arrays."""
    from minirec.kernels.numba import linear_scan as kern
    a, b, h0 = (rng.standard_normal(s) for s in ((2, 10, 3, 2), (2, 10, 3, 2), (2, 3, 2)))
    h, h_T, _ = kern.forward(a, b, h0, method=method, chunk_size=4)
    buf = np.full_like(h, np.nan)
    h2, h_T2, _ = kern.forward(a, b, h0, method=method, chunk_size=4, out=buf)
    assert h2 is buf
    np.testing.assert_array_equal(h2, h)
    np.testing.assert_array_equal(h_T2, h_T)
    dh, dstate = rng.standard_normal(h.shape), rng.standard_normal(h_T.shape)
    ref = kern.backward(a, h, h0, None, dh, dstate, method=method, chunk_size=4)
    bufs = {"a": np.full_like(h, np.nan), "initial_state": np.full_like(h0, np.nan)}
    g = kern.backward(a, h, h0, None, dh, dstate, method=method, chunk_size=4, out=bufs)
    assert g["a"] is bufs["a"] and g["initial_state"] is bufs["initial_state"]
    for k in ref:
        assert g[k].shape == ref[k].shape
        np.testing.assert_array_equal(g[k], ref[k])
