"""Numba RNN/GRU/LSTM kernels equal the NumPy definition (forward and backward)."""

import numpy as np
import pytest

from minirec.cells import gru, lstm, rnn
from tests.conftest import TOL, assert_close

pytest.importorskip("numba")

CASES = [(rnn, {"nonlinearity": "tanh"}), (rnn, {"nonlinearity": "relu"}), (gru, {}), (lstm, {})]


def _state(cell, rng, B, H, dtype):
    if cell is lstm:
        return tuple(rng.standard_normal((B, H)).astype(dtype) for _ in range(2))
    return rng.standard_normal((B, H)).astype(dtype)


def _flat(g):
    out = {}
    for k, v in g.items():
        if isinstance(v, tuple):
            out.update({f"{k}[{i}]": w for i, w in enumerate(v)})
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("cell, kw", CASES, ids=["rnn", "rnn_relu", "gru", "lstm"])
@pytest.mark.parametrize("T", [1, 13])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_equals_definition(cell, kw, T, dtype, rng):
    B, D, H = 3, 5, 33  # H not a multiple of a SIMD width
    params = cell.init_params(rng, D, H, dtype=dtype)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    s0 = _state(cell, rng, B, H, dtype)
    ref_y, ref_s, ref_c = cell.forward(params, x, s0, **kw)
    y, s, c = cell.forward(params, x, s0, backend="numba", **kw)
    tol = TOL[np.dtype(dtype)]
    assert y.dtype == np.dtype(dtype)
    assert_close(y, ref_y, tol, "y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    ds = _state(cell, rng, B, H, dtype)
    ref_g = _flat(cell.backward(params, ref_c, dy, ds))
    g = _flat(cell.backward(params, c, dy, ds))
    assert set(g) == set(ref_g)
    for k in ref_g:
        assert g[k].dtype == ref_g[k].dtype, k
        assert_close(g[k], ref_g[k], tol, k)


def test_lstm_numba_accepts_partial_state_gradient(rng):
    params = lstm.init_params(rng, 4, 6)
    x = rng.standard_normal((2, 5, 4))
    _, _, ref_c = lstm.forward(params, x)
    _, _, c = lstm.forward(params, x, backend="numba")
    dh = rng.standard_normal((2, 6))
    ref = lstm.backward(params, ref_c, None, (dh, None))
    got = lstm.backward(params, c, None, (dh, None))
    assert_close(got["W_hh"], ref["W_hh"], 1e-10)
    assert_close(got["state0"][1], ref["state0"][1], 1e-10)


def test_numba_does_not_touch_read_only_inputs(rng):
    params = gru.init_params(rng, 3, 4)
    x = rng.standard_normal((2, 6, 3))
    for a in [*params.values(), x]:
        a.flags.writeable = False
    y, h, c = gru.forward(params, x, backend="numba")
    dy = np.ones_like(y)
    dy.flags.writeable = False
    gru.backward(params, c, dy, None)
