"""Numba linear-scan kernels equal the NumPy reference (forward and backward)."""

import numpy as np
import pytest

from minirec.scan import linear
from tests.conftest import TOL, assert_close

pytest.importorskip("numba")


def _inputs(rng, shape, dtype):
    a = rng.uniform(-1, 1, shape)
    b = rng.standard_normal(shape)
    h0 = rng.standard_normal(shape[:1] + shape[2:])
    if np.dtype(dtype).kind == "c":
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
        b = b + 1j * rng.standard_normal(shape)
        h0 = h0 + 1j * rng.standard_normal(h0.shape)
    return a.astype(dtype), b.astype(dtype), h0.astype(dtype)


@pytest.mark.parametrize("method", linear.BACKEND_METHODS["numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("shape", [(2, 1, 3), (2, 29, 3, 2), (1, 64, 5)])
def test_numba_equals_numpy(method, dtype, shape, rng):
    a, b, h0 = _inputs(rng, shape, dtype)
    ref, ref_T, ref_cache = linear.forward(a, b, h0, method="recurrent")
    dh = _inputs(rng, shape, dtype)[1]
    dh_T = _inputs(rng, shape, dtype)[2]
    ref_g = linear.backward(ref_cache, dh, dh_T)
    for chunk in (None, 4, 7):
        h, h_T, cache = linear.forward(a, b, h0, method=method, chunk_size=chunk, backend="numba")
        g = linear.backward(cache, dh, dh_T)
        tol = TOL[np.dtype(dtype)]
        assert h.dtype == ref.dtype
        assert_close(h, ref, tol, "h")
        assert_close(h_T, ref_T, tol, "h_T")
        for k in ref_g:
            assert g[k].dtype == ref_g[k].dtype, k
            assert_close(g[k], ref_g[k], tol, k)


def test_real_gates_with_complex_inputs(rng):
    a = rng.uniform(-1, 1, (2, 9, 3))
    b = rng.standard_normal((2, 9, 3)) + 1j * rng.standard_normal((2, 9, 3))
    ref, _, rc = linear.forward(a, b)
    h, _, c = linear.forward(a, b, backend="numba")
    assert_close(h, ref, 1e-12)
    dh = rng.standard_normal(h.shape) + 0j
    g, rg = linear.backward(c, dh), linear.backward(rc, dh)
    assert not np.iscomplexobj(g["a"])
    assert_close(g["a"], rg["a"], 1e-12)


def test_numba_refuses_methods_it_has_no_kernel_for(rng):
    a, b, h0 = _inputs(rng, (1, 4, 2), np.float64)
    with pytest.raises(ValueError, match="backend='numba' supports"):
        linear.forward(a, b, method="blelloch", backend="numba")
