"""LRU and S4D/LSSL with backend="numba" (numba scan.linear kernels, NumPy
projections) equal the NumPy definition, forward and every gradient."""

import numpy as np
import pytest

from minirec.cells import lru, ssm
from tests.conftest import TOL, assert_close

pytest.importorskip("numba")


def _complex(dtype):
    return np.result_type(dtype, np.complex64)


def _randc(rng, shape, dtype):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(_complex(dtype))


def _lru_case(rng, B, T, D, N, dtype):
    params = lru.init_params(rng, D, N, dtype=dtype, r_min=0.3)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    return params, x, _randc(rng, (B, N), dtype)


def _ssm_case(rng, B, T, D, N, dtype):
    params = ssm.init_params(rng, D, N, dtype=dtype)
    for k in ("B_re", "B_im"):  # S4D's B = 1 would hide a B-gradient bug
        params[k] = params[k] + (0.1 * rng.standard_normal(params[k].shape)).astype(dtype)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    return params, x, _randc(rng, (B, D, N), dtype)


def _compare(cell, params, x, s0, method, chunk_size, rng, **kw):
    """Forward outputs, final state and every gradient, numba vs numpy recurrent."""
    dtype = x.dtype
    tol = TOL[np.dtype(dtype)]
    ref_y, ref_s, ref_c = cell.forward(params, x, s0, **kw)
    y, s, c = cell.forward(params, x, s0, method=method, chunk_size=chunk_size,
                           backend="numba", **kw)
    assert y.dtype == ref_y.dtype and s.dtype == ref_s.dtype
    assert_close(y, ref_y, tol, "y")
    assert_close(s, ref_s, tol, "state")
    dy = rng.standard_normal(y.shape).astype(dtype)
    ds = _randc(rng, s.shape, dtype)
    ref_g = cell.backward(params, ref_c, dy, ds)
    g = cell.backward(params, c, dy, ds)
    assert set(g) == set(ref_g)
    for k in ref_g:
        assert g[k].dtype == ref_g[k].dtype, k
        assert_close(g[k], ref_g[k], tol, k)


@pytest.mark.parametrize("method", lru.BACKEND_METHODS["numba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T, chunk_size", [(1, None), (23, 5), (23, None)])
def test_lru_numba_equals_numpy(method, dtype, T, chunk_size, rng):
    params, x, s0 = _lru_case(rng, B=3, T=T, D=5, N=7, dtype=dtype)  # odd D and N
    _compare(lru, params, x, s0, method, chunk_size, rng)


@pytest.mark.parametrize("method", ssm.BACKEND_METHODS["numba"])
@pytest.mark.parametrize("discretization", ssm.DISCRETIZATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T, chunk_size", [(1, None), (19, 4)])
def test_ssm_numba_equals_numpy(method, discretization, dtype, T, chunk_size, rng):
    params, x, s0 = _ssm_case(rng, B=2, T=T, D=3, N=5, dtype=dtype)
    _compare(ssm, params, x, s0, method, chunk_size, rng, discretization=discretization)


@pytest.mark.parametrize("cell, case", [(lru, _lru_case), (ssm, _ssm_case)], ids=["lru", "ssm"])
def test_zero_initial_state_and_no_upstream_state_gradient(cell, case, rng):
    params, x, _ = case(rng, B=2, T=9, D=3, N=4, dtype=np.float64)
    ref_y, ref_s, ref_c = cell.forward(params, x)
    y, s, c = cell.forward(params, x, backend="numba")
    assert_close(y, ref_y, 1e-10, "y")
    dy = rng.standard_normal(y.shape)
    ref_g, g = cell.backward(params, ref_c, dy), cell.backward(params, c, dy)
    for k in ref_g:
        assert_close(g[k], ref_g[k], 1e-10, k)


@pytest.mark.parametrize("cell, case", [(lru, _lru_case), (ssm, _ssm_case)], ids=["lru", "ssm"])
def test_split_resume_with_numba(cell, case, rng):
    params, x, s0 = case(rng, B=2, T=12, D=3, N=4, dtype=np.float64)
    y, s, _ = cell.forward(params, x, s0, backend="numba")
    y1, s1, _ = cell.forward(params, x[:, :5], s0, backend="numba")
    y2, s2, _ = cell.forward(params, x[:, 5:], s1, backend="numba")
    assert_close(np.concatenate([y1, y2], axis=1), y, 1e-12, "y")
    assert_close(s2, s, 1e-12, "state")


@pytest.mark.parametrize("cell, case, method", [(lru, _lru_case, "blelloch"),
                                                (ssm, _ssm_case, "conv"),
                                                (ssm, _ssm_case, "log")],
                         ids=["lru-blelloch", "ssm-conv", "ssm-log"])
def test_numba_refuses_methods_without_a_kernel(cell, case, method, rng):
    params, x, _ = case(rng, B=1, T=3, D=2, N=2, dtype=np.float64)
    with pytest.raises(ValueError, match=f"backend='numba' supports .*got '{method}'"):
        cell.forward(params, x, method=method, backend="numba")
