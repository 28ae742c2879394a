"""Every registry entry: gradient check, agreement of every method and backend
with the float64 recurrent definition, read-only inputs, gradient keys."""

import numpy as np
import pytest

from minirec import _backend, registry
from tests.conftest import TOL

ENTRY_METHODS = [(n, m) for n, e in registry.ENTRIES.items() for m in e.methods]
ENTRY_BACKEND_DTYPES = [
    (n, m, b, np.dtype(d).name)
    for n, e in registry.ENTRIES.items()
    for m, b in e.pairs
    for d in e.dtypes
]


@pytest.mark.parametrize("name, method", ENTRY_METHODS)
def test_gradcheck_every_entry_and_method(name, method):
    entry = registry.get(name)
    report = registry.gradcheck(entry, method)
    assert report.errors, "nothing was checked"
    assert report.passed, str(report)  # threshold: relative error < 1e-6, float64


@pytest.mark.parametrize("name, method, backend, dtype", ENTRY_BACKEND_DTYPES)
def test_agrees_with_definition(name, method, backend, dtype):
    if not _backend.available(backend):
        pytest.skip(f"backend {backend} is not installed here")
    entry = registry.get(name)
    errors = registry.agreement(entry, method, backend, dtype=np.dtype(dtype))
    tol = TOL[np.dtype(dtype)]  # float64 1e-10, float32 1e-4 relative RMS
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative RMS above {tol:.0e}: {bad}"


def _freeze(x):
    if isinstance(x, dict):
        for v in x.values():
            _freeze(v)
    elif isinstance(x, (tuple, list)):
        for v in x:
            _freeze(v)
    elif isinstance(x, np.ndarray):
        x.flags.writeable = False


def _snapshot(x):
    if isinstance(x, dict):
        return {k: _snapshot(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_snapshot(v) for v in x]
    return None if x is None else np.array(x, copy=True)


def _assert_same(a, b):
    if isinstance(a, dict):
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (tuple, list)):
        for u, v in zip(a, b):
            _assert_same(u, v)
    elif a is not None:
        np.testing.assert_array_equal(a, b)


ENTRY_PAIRS = [(n, m, b) for n, e in registry.ENTRIES.items() for m, b in e.pairs]


@pytest.mark.parametrize("name, method, backend", ENTRY_PAIRS)
def test_read_only_inputs_and_gradients_are_not_touched(name, method, backend):
    if not _backend.available(backend):
        pytest.skip(f"backend {backend} is not installed here")
    entry = registry.get(name)
    rng = np.random.default_rng(0)
    inputs = entry.make_inputs(rng, np.float64 if np.float64 in entry.dtypes else np.complex128,
                               "small", method=method)
    before = _snapshot(inputs)
    _freeze(inputs)
    kw = registry._method_kwargs(entry, method, backend)
    out, state, cache = registry.run_forward(entry, inputs, **kw)
    d_out = rng.standard_normal(np.shape(out))
    d_state = (tuple(rng.standard_normal(s.shape) for s in state)
               if isinstance(state, tuple) else rng.standard_normal(state.shape))
    d_before = _snapshot((d_out, d_state))
    _freeze(d_out)
    _freeze(d_state)
    registry.run_backward(entry, inputs, cache, d_out, d_state)
    _assert_same(inputs, before)
    _assert_same((d_out, d_state), d_before)


@pytest.mark.parametrize("name", [n for n, e in registry.ENTRIES.items() if e.kind == "cell"])
def test_cell_grads_have_param_keys_and_shapes(name):
    entry = registry.get(name)
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, "small")
    y, state, cache = registry.run_forward(entry, inputs, **entry.forward_kwargs)
    grads = registry.run_backward(entry, inputs, cache, np.ones_like(y), None)
    assert set(grads) == set(inputs["params"]) | {"x", "state0"}
    for k, p in inputs["params"].items():
        assert grads[k].shape == p.shape, k
        assert grads[k].dtype == p.dtype, k


@pytest.mark.parametrize("name", list(registry.ENTRIES))
def test_unknown_method_and_backend_are_refused(name):
    entry = registry.get(name)
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64
                               if np.float64 in entry.dtypes else np.complex128, "small")
    with pytest.raises(ValueError, match="method"):
        registry.run_forward(entry, inputs, method="no-such-method")
    with pytest.raises(ValueError, match="backend"):
        registry.run_forward(entry, inputs, backend="tpu")


def test_gradcheck_fails_on_a_backward_wrong_by_a_tenth_of_a_percent():
    import types

    from minirec.cells import rnn

    def bad_backward(params, cache, dy, dstate=None):
        g = rnn.backward(params, cache, dy, dstate)
        g["W_hh"] = g["W_hh"] * 1.001  # 0.1 % wrong
        return g

    broken = types.SimpleNamespace(forward=rnn.forward, backward=bad_backward)
    entry = registry.get("rnn")
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, "small")
    report = registry.gradcheck(entry)
    assert report.passed, str(report)
    from minirec import gradcheck
    bad = gradcheck.check_cell(broken, inputs["params"], inputs["x"], inputs["state0"])
    assert not bad.passed
    assert bad.errors["W_hh"] > 1e-4 and bad.errors["W_ih"] < 1e-6, str(bad)
