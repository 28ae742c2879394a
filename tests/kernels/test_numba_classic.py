"""The Numba RNN/GRU/LSTM kernels (kernels/numba/classic.py): what the contract
test (tests/test_contract.py) does not see — a hidden size that is no multiple
of a SIMD width, and float32 arithmetic staying float32 inside the loops."""

import numpy as np
import pytest

from minirec import registry
from tests.conftest import TOL

numba = pytest.importorskip("numba")
from minirec.kernels.numba import classic  # noqa: E402  (imports numba)

ENTRIES = ["rnn", "rnn_relu", "gru", "lstm"]
KERNELS = ["rnn_forward", "rnn_backward", "gru_forward", "gru_backward", "lstm_forward",
           "lstm_backward"]


@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numba_equals_definition_at_an_odd_hidden_size(name, dtype):
    """H = 33: the vectorised inner loops have a remainder (agreement with the
    float64 NumPy definition: relative RMS ≤ 1e-10 in float64, ≤ 1e-4 in float32)."""
    entry = registry.get(name)
    errors = registry.agreement(entry, "recurrent", "numba", dtype=np.dtype(dtype),
                                size=entry.size("medium", T=13, H=33))
    tol = TOL[np.dtype(dtype)]
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative RMS above {tol:.0e}: {bad}"


def test_float32_is_computed_in_float32_inside_every_kernel(monkeypatch):
    """No float64 value anywhere in the float32 specialisations: a float64
    literal (``1.0 - z``) or the old local tanh/σ would promote the arithmetic.
    The kernels are recompiled uncached here so that their types can be read."""
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
