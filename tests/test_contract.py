"""The contract every registry entry keeps (DESIGN §3, §4, §6), one test each,
parametrised over ``registry.ENTRIES`` × method × backend (× dtype).

A new entry in the registry is checked by all of these without a line here:
its ``time_inputs`` (batch axis 0, time axis 1) and named dimensions are what
make splitting, ``T = 1``, ``B = 0`` and the NaN probes generic. Per-entry test
files keep golden values and entry-specific cases only.

Thresholds (DESIGN §6): gradient checks in float64, relative error < 1e-6;
agreement with the float64 recurrent NumPy definition ≤ 1e-10 relative RMS in
float64, ≤ 1e-4 in float32.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from minirec import _backend, registry
from tests.conftest import TOL

ENTRIES = registry.ENTRIES
F64, C128 = np.dtype(np.float64), np.dtype(np.complex128)
PAIRS = [(n, m, b) for n, e in ENTRIES.items() for m, b in e.pairs]
CAUSAL_PAIRS = [(n, m, b) for n, m, b in PAIRS if ENTRIES[n].causal]
PAIR_DTYPES = [(n, m, b, np.dtype(d).name) for n, m, b in PAIRS for d in ENTRIES[n].dtypes]
ENTRY_BACKENDS = [(n, b) for n, e in ENTRIES.items() for b in e.backends]
# gradients and messages: "x: expected shape (2, 5, 3), got (2, 4, 3)"
MESSAGE = r"(?is)expected.*got"


# ---------------------------------------------------------------------------
# helpers: one calling convention for every entry
# ---------------------------------------------------------------------------

def _need(backend):
    if not _backend.available(backend):
        pytest.skip(f"backend {backend!r} is not usable here (package or device missing)")


def _f64(entry):
    return F64 if F64 in entry.dtypes else C128


def _inputs(entry, dtype=None, method=None, seed=0, size="small", **dims):
    rng = np.random.default_rng(seed)
    return entry.make_inputs(rng, dtype or _f64(entry), size, method, **dims)


def _kw(entry, method, backend):
    return registry._method_kwargs(entry, method, backend)


def _fwd(entry, inputs, method="recurrent", backend="numpy"):
    return registry.run_forward(entry, inputs, **_kw(entry, method, backend))


def _bwd(entry, inputs, cache, dout, dstate):
    return registry.run_backward(entry, inputs, cache, dout, dstate)


def _map(f, x):
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: _map(f, v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_map(f, v) for v in x)
    return f(x)


def _host(x):
    return _map(lambda a: a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray)
                else np.asarray(a), x)


def _upstream(rng, out, state):
    """Random upstream gradients shaped (and typed: real or complex) like the outputs."""
    def like(a):
        g = rng.standard_normal(a.shape)
        if np.iscomplexobj(a):
            g = g + 1j * rng.standard_normal(a.shape)
        return g.astype(a.dtype)
    return like(out), _map(like, state)


def _flat(x):
    return registry._flatten("", _host(x))


def _time_slice(entry, inputs, sl):
    out = dict(inputs)
    for n in entry.time_inputs:
        out[n] = np.ascontiguousarray(inputs[n][:, sl])
    return out


def _grad_inputs(entry, inputs):
    """The inputs the gradient dict is keyed by: cells → params, x, state0."""
    if entry.kind == "cell":
        return {**inputs["params"], "x": inputs["x"], "state0": inputs["state0"]}
    return inputs


def _assert_close(got, ref, tol, what):
    g, r = _flat(got), _flat(ref)
    assert set(g) == set(r), f"{what}: keys {sorted(g)} vs {sorted(r)}"
    for k in r:
        err = registry.rel_rms(g[k], r[k])
        assert err <= tol, f"{what} {k}: relative RMS {err:.2e} > {tol:.0e}"


# ---------------------------------------------------------------------------
# correctness: gradients, agreement, split-resume, short and prime T
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, method, backend", PAIRS)
def test_gradcheck(name, method, backend):
    _need(backend)
    report = registry.gradcheck(ENTRIES[name], method, backend)
    assert report.errors, "nothing was checked"
    assert report.passed, str(report)  # every input, parameter and state: rel. error < 1e-6


@pytest.mark.parametrize("name, method, backend, dtype", PAIR_DTYPES)
def test_agrees_with_definition(name, method, backend, dtype):
    _need(backend)
    errors = registry.agreement(ENTRIES[name], method, backend, dtype=np.dtype(dtype))
    tol = TOL[np.dtype(dtype)]  # float64 1e-10, float32 1e-4 relative RMS
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"relative RMS above {tol:.0e}: {bad}"


@pytest.mark.parametrize("T", [1, 2, 13])
@pytest.mark.parametrize("name, method, backend", PAIRS)
def test_agrees_at_short_and_prime_T(name, method, backend, T):
    _need(backend)
    entry = ENTRIES[name]
    errors = registry.agreement(entry, method, backend, dtype=_f64(entry),
                                size=entry.size("small", T=T))
    bad = {k: v for k, v in errors.items() if not v <= 1e-10}
    assert not bad, f"T={T}: relative RMS above 1e-10: {bad}"


@pytest.mark.parametrize("name, method, backend", CAUSAL_PAIRS)
def test_split_resume(name, method, backend):
    """Running T = 11 steps as 4 + 7, the second call from the first's final
    state, equals one call (outputs and final state)."""
    _need(backend)
    entry = ENTRIES[name]
    inputs = _inputs(entry, method=method, T=11)
    out, state, _ = _fwd(entry, inputs, method, backend)
    first = _time_slice(entry, inputs, slice(0, 4))
    out1, state1, _ = _fwd(entry, first, method, backend)
    second = _time_slice(entry, inputs, slice(4, None))
    second[entry.state_name] = state1
    out2, state2, _ = _fwd(entry, second, method, backend)
    _assert_close(np.concatenate([_host(out1), _host(out2)], axis=1), out, 1e-10, "outputs")
    _assert_close(state2, state, 1e-10, "final state")


@pytest.mark.parametrize("name, method, backend", PAIRS)
def test_empty_batch(name, method, backend):
    """B = 0 gives empty outputs and empty gradients of the right shapes."""
    _need(backend)
    entry = ENTRIES[name]
    inputs = _inputs(entry, method=method, B=0)
    out, state, cache = _fwd(entry, inputs, method, backend)
    assert np.shape(out)[:2] == (0, entry.size("small")["T"])
    dout, dstate = _upstream(np.random.default_rng(1), _host(out), _host(state))
    grads = _bwd(entry, inputs, cache, dout, dstate)
    for k, v in _flat(_grad_inputs(entry, inputs)).items():
        assert _flat(grads)[k].shape == v.shape, k


# ---------------------------------------------------------------------------
# what comes back: dtypes, keys, shapes, no mutation, determinism
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, method, backend, dtype", PAIR_DTYPES)
def test_dtypes_kept(name, method, backend, dtype):
    """Outputs keep the inputs' precision; each gradient has its input's dtype."""
    _need(backend)
    entry = ENTRIES[name]
    dtype = np.dtype(dtype)
    inputs = _inputs(entry, dtype, method)
    out, state, cache = _fwd(entry, inputs, method, backend)
    single = dtype in (np.dtype(np.float32), np.dtype(np.complex64))
    for k, v in _flat({"out": out, "state": state}).items():
        assert (v.dtype.itemsize // (2 if v.dtype.kind == "c" else 1) == 4) == single, \
            f"{k}: dtype {v.dtype} for {dtype} inputs"
    dout, dstate = _upstream(np.random.default_rng(1), _host(out), _host(state))
    grads = _flat(_bwd(entry, inputs, cache, dout, dstate))
    for k, v in _flat(_grad_inputs(entry, inputs)).items():
        assert grads[k].dtype == v.dtype, f"d{k}: dtype {grads[k].dtype}, input {v.dtype}"


@pytest.mark.parametrize("name, method, backend", PAIRS)
def test_gradient_keys_and_shapes(name, method, backend):
    _need(backend)
    entry = ENTRIES[name]
    inputs = _inputs(entry, method=method)
    out, state, cache = _fwd(entry, inputs, method, backend)
    dout, dstate = _upstream(np.random.default_rng(1), _host(out), _host(state))
    grads = _bwd(entry, inputs, cache, dout, dstate)
    want = _grad_inputs(entry, inputs)
    assert set(grads) == set(want), f"gradient keys {sorted(grads)}, inputs {sorted(want)}"
    g = _flat(grads)
    for k, v in _flat(want).items():
        assert g[k].shape == v.shape, f"d{k}: shape {g[k].shape}, input {v.shape}"


@pytest.mark.parametrize("name, method, backend", PAIRS)
def test_read_only_inputs_and_gradients_are_not_touched(name, method, backend):
    _need(backend)
    entry = ENTRIES[name]
    inputs = _inputs(entry, method=method)
    before = _map(np.copy, inputs)
    _map(lambda a: setattr(a.flags, "writeable", False), inputs)
    out, state, cache = _fwd(entry, inputs, method, backend)
    dout, dstate = _upstream(np.random.default_rng(1), _host(out), _host(state))
    d_before = _map(np.copy, (dout, dstate))
    _map(lambda a: setattr(a.flags, "writeable", False), (dout, dstate))
    _bwd(entry, inputs, cache, dout, dstate)
    for k, v in _flat(before).items():
        np.testing.assert_array_equal(_flat(inputs)[k], v, err_msg=k)
    for k, v in _flat(d_before).items():
        np.testing.assert_array_equal(_flat((dout, dstate))[k], v, err_msg=k)


@pytest.mark.parametrize("name, method, backend", PAIRS)
def test_backward_twice_gives_the_same_result(name, method, backend):
    _need(backend)
    entry = ENTRIES[name]
    inputs = _inputs(entry, method=method)
    out, state, cache = _fwd(entry, inputs, method, backend)
    dout, dstate = _upstream(np.random.default_rng(1), _host(out), _host(state))
    g1 = _flat(_bwd(entry, inputs, cache, dout, dstate))
    g2 = _flat(_bwd(entry, inputs, cache, dout, dstate))
    for k in g1:
        np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)


def _empty_state(entry, state):
    """The explicit state that ``None`` stands for (zeros; the empty prefix
    ``(−inf, 0, 0)`` for the softmax scans)."""
    fill = entry.empty_state or ()
    if isinstance(state, (tuple, list)):
        return tuple(np.full(s.shape, fill[i] if i < len(fill) else 0, s.dtype)
                     for i, s in enumerate(state))
    return np.zeros(state.shape, state.dtype)


@pytest.mark.parametrize("name, method, backend", PAIRS)
def test_no_initial_state_equals_the_empty_state(name, method, backend):
    _need(backend)
    entry = ENTRIES[name]
    inputs = _inputs(entry, method=method)
    explicit = dict(inputs)
    explicit[entry.state_name] = _empty_state(entry, _host(inputs[entry.state_name]))
    inputs[entry.state_name] = None
    out0, st0, c0 = _fwd(entry, inputs, method, backend)
    out1, st1, c1 = _fwd(entry, explicit, method, backend)
    _assert_close(out0, out1, 1e-12, "outputs")
    _assert_close(st0, st1, 1e-12, "final state")
    dout, dstate = _upstream(np.random.default_rng(1), _host(out0), _host(st0))
    g0 = _bwd(entry, inputs, c0, dout, dstate)
    g1 = _bwd(entry, explicit, c1, dout, dstate)
    _assert_close(g0, g1, 1e-12, "gradients")


# ---------------------------------------------------------------------------
# NaN at one step: causal, and the same in every method and backend
# ---------------------------------------------------------------------------

def _nan_runs(entry, method, backend, where):
    """Forward and backward with one NaN: in the first time input at (0, 4)
    (``where="input"``) or in the upstream gradient at (0, 4) (``"dout"``)."""
    inputs = _inputs(entry, method=method, T=9)
    if where == "input":
        n = entry.time_inputs[0]
        x = inputs[n].copy()
        x[(0, 4) + (0,) * (x.ndim - 2)] = np.nan
        inputs[n] = x
    out, state, cache = _fwd(entry, inputs, method, backend)
    rng = np.random.default_rng(1)
    dout, dstate = _upstream(rng, _host(out), _host(state))
    if where == "dout":
        dout = dout.copy()
        dout[(0, 4) + (0,) * (dout.ndim - 2)] = np.nan
    with np.errstate(all="ignore"):
        grads = _bwd(entry, inputs, cache, dout, dstate)
    return inputs, out, state, grads


@pytest.mark.parametrize("where", ["input", "dout"])
@pytest.mark.parametrize("name, method, backend", PAIRS)
def test_nan_at_one_step_is_causal_and_the_same_everywhere(name, method, backend, where):
    _need(backend)
    entry = ENTRIES[name]
    with np.errstate(all="ignore"):
        _, out, state, grads = _nan_runs(entry, method, backend, where)
        _, out_r, state_r, grads_r = _nan_runs(entry, "recurrent", "numpy", where)
    out, out_r = _host(out), _host(out_r)
    if where == "input" and entry.causal:  # outputs before step 4, other batch rows: clean
        assert np.all(np.isfinite(out[:, :4])), "a NaN at t = 4 reached an earlier output"
        assert np.all(np.isfinite(out[1:])), "a NaN in batch row 0 reached another row"
        assert not np.all(np.isfinite(out[0, 4:])), "the NaN disappeared"
    got = _flat({"out": out, "state": state, "grads": grads})
    ref = _flat({"out": out_r, "state": state_r, "grads": grads_r})
    for k in ref:
        bad, bad_r = ~np.isfinite(got[k]), ~np.isfinite(ref[k])
        if k.startswith("grads") and method in entry.matmul_methods:
            # a NaN times a masked zero is NaN in a matrix product: more may be
            # non-finite, but never fewer (a NaN must not vanish)
            assert np.all(bad[bad_r]), (f"non-finite entries of {k} in the recurrent "
                                        f"NumPy definition are finite in {method}")
            continue
        np.testing.assert_array_equal(bad, bad_r,
                                      err_msg=f"non-finite entries of {k} differ from the "
                                              f"recurrent NumPy definition's")


# ---------------------------------------------------------------------------
# bad input: every case family refused with expected-and-got messages
# ---------------------------------------------------------------------------

def _grow(a, axis=0):
    """``a`` with one more entry along ``axis``."""
    return np.concatenate([a, np.take(a, [0], axis=axis)], axis=axis)


def _forward_cases(entry):
    """``(label, inputs-changer, kwargs)``: every way a forward call can be wrong."""
    cases = []
    sn = entry.state_name

    def set_(name, f):
        def change(inp):
            inp = dict(inp)
            inp[name] = f(inp[name])
            return inp
        return change

    for n in entry.time_inputs:
        cases += [(f"{n}: one axis fewer", set_(n, lambda a: np.ascontiguousarray(a[..., 0]))),
                  (f"{n}: batch B+1", set_(n, _grow))]
        if len(entry.time_inputs) > 1:
            cases.append((f"{n}: time T-1", set_(n, lambda a: np.ascontiguousarray(a[:, 1:]))))
    n0 = entry.time_inputs[0]
    for label, f in [("int64", lambda a: a.real.astype(np.int64)),
                     ("float16", lambda a: a.real.astype(np.float16)),
                     ("bool", lambda a: a.real > 0), ("object", lambda a: a.astype(object)),
                     ("list", lambda a: a.tolist())]:
        cases.append((f"{n0}: {label}", set_(n0, f)))

    def t0(inp):
        return _time_slice(entry, inp, slice(0, 0))
    cases.append(("T = 0", t0))
    # the initial state: batch, shape, structure, dtype
    cases += [(f"{sn}: batch B+1", set_(sn, lambda s: _map(_grow, s))),
              (f"{sn}: one axis fewer", set_(sn, lambda s: _map(lambda a: a[..., 0], s))),
              (f"{sn}: int64", set_(sn, lambda s: _map(lambda a: a.real.astype(np.int64), s))),
              (f"{sn}: wrong structure", set_(sn, lambda s: s[0] if isinstance(s, tuple)
                                              else (s, s)))]
    # parameters (cells) and the other array inputs (ops): shape, keys, dtype
    if entry.kind == "cell":
        keys = list(_inputs(entry)["params"])
        pset = lambda f: set_("params", f)
        cases += [("params: missing key", pset(lambda p: {k: v for k, v in p.items()
                                                         if k != keys[0]})),
                  ("params: extra key", pset(lambda p: {**p, "bogus": p[keys[0]]})),
                  ("params: not a dict", pset(lambda p: list(p.values()))),
                  (f"params[{keys[0]}]: int64",
                   pset(lambda p: {**p, keys[0]: p[keys[0]].astype(np.int64)})),
                  (f"params[{keys[0]}]: list",
                   pset(lambda p: {**p, keys[0]: p[keys[0]].tolist()}))]
        for k in keys:
            cases.append((f"params[{k}]: one row more",
                          pset(lambda p, k=k: {**p, k: _grow(p[k])})))
    else:
        for k, v in _inputs(entry).items():
            if k in entry.time_inputs or k == sn or v is None:
                continue
            cases += [(f"{k}: one row more", set_(k, _grow)),
                      (f"{k}: int64", set_(k, lambda a: a.astype(np.int64)))]
    return cases


def _forward_case_ids():
    return [(n, b, label) for n, b in ENTRY_BACKENDS
            for label, _ in _forward_cases(ENTRIES[n])]


def _first_method(entry, backend):
    return next(m for m, b in entry.pairs if b == backend)


@pytest.mark.parametrize("name, backend, case", _forward_case_ids())
def test_bad_forward_input_is_refused(name, backend, case):
    _need(backend)
    entry = ENTRIES[name]
    change = dict(_forward_cases(entry))[case]
    method = _first_method(entry, backend)
    inputs = change(_inputs(entry, method=method))
    with pytest.raises((ValueError, TypeError), match=MESSAGE):
        _fwd(entry, inputs, method, backend)


BAD_CHUNKS = [-1, 0, 2.5, "4", True]


@pytest.mark.parametrize("chunk_size", BAD_CHUNKS, ids=repr)
@pytest.mark.parametrize("name, backend", ENTRY_BACKENDS)
def test_bad_chunk_size_is_refused(name, backend, chunk_size):
    """Refused even by methods that do not use it (a typo must not pass silently)."""
    _need(backend)
    entry = ENTRIES[name]
    if "chunk_size" not in inspect.signature(entry.module.forward).parameters:
        pytest.skip(f"{name}.forward takes no chunk_size")
    method = _first_method(entry, backend)
    kw = {**_kw(entry, method, backend), "chunk_size": chunk_size}
    with pytest.raises((ValueError, TypeError), match=MESSAGE):
        registry.run_forward(entry, _inputs(entry, method=method), **kw)


@pytest.mark.parametrize("name, backend", ENTRY_BACKENDS)
def test_unknown_method_and_backend_are_refused(name, backend):
    _need(backend)
    entry = ENTRIES[name]
    inputs = _inputs(entry)
    with pytest.raises(ValueError, match=r"(?s)method.*expected.*got 'no-such-method'"):
        registry.run_forward(entry, inputs, **{**entry.forward_kwargs, "backend": backend},
                             method="no-such-method")
    with pytest.raises(ValueError, match=r"(?s)backend.*expected.*got 'tpu'"):
        registry.run_forward(entry, inputs, **entry.forward_kwargs, backend="tpu")
    with pytest.raises(TypeError, match=r"(?s)backend.*expected.*got int"):
        registry.run_forward(entry, inputs, **entry.forward_kwargs, backend=3)


def _foreign(entry):
    """Another entry (another module) of the same kind, for a foreign cache."""
    return next(e for e in ENTRIES.values() if e.kind == entry.kind
                and e.module_path != entry.module_path and e.build is None)


def _backward_cases(entry):
    """``(label, f(inputs, out, state, cache, dout, dstate) -> call args)``."""
    real_out = True  # refined per call
    del real_out

    def to_list(a):
        return a.tolist()

    cases = [
        ("dout: time T-1", lambda i, o, s, c, do, ds: (i, c, do[:, 1:], ds)),
        ("dout: one axis more", lambda i, o, s, c, do, ds: (i, c, do[..., None], ds)),
        ("dout: int64", lambda i, o, s, c, do, ds: (i, c, do.real.astype(np.int64), ds)),
        ("dout: bool", lambda i, o, s, c, do, ds: (i, c, do.real > 0, ds)),
        ("dout: list", lambda i, o, s, c, do, ds: (i, c, to_list(do), ds)),
        ("dstate: batch B+1", lambda i, o, s, c, do, ds: (i, c, do, _map(_grow, ds))),
        ("dstate: wrong structure", lambda i, o, s, c, do, ds:
            (i, c, do, ds[0] if isinstance(ds, tuple) else (ds, ds))),
        ("dstate: int64", lambda i, o, s, c, do, ds:
            (i, c, do, _map(lambda a: a.real.astype(np.int64), ds))),
        ("cache: a dict", lambda i, o, s, c, do, ds: (i, {}, do, ds)),
        ("cache: None", lambda i, o, s, c, do, ds: (i, None, do, ds)),
        ("cache: another entry's", lambda i, o, s, c, do, ds:
            (i, _fwd(_foreign(entry), _inputs(_foreign(entry)))[2], do, ds)),
    ]
    if not np.iscomplexobj(_inputs(entry)[entry.time_inputs[0]]):
        cases.append(("dout: complex for a real output",
                      lambda i, o, s, c, do, ds: (i, c, do * 1j, ds)))
    if entry.kind == "cell":
        def other_params(i, o, s, c, do, ds):
            d = entry.size("small")
            grown = {k: v * 2 for k, v in d.items() if k not in ("B", "T")}
            return ({**i, "params": _inputs(entry, **grown)["params"]}, c, do, ds)
        cases.append(("params: not the forward's", other_params))
    return cases


def _backward_case_ids():
    return [(n, b, label) for n, b in ENTRY_BACKENDS
            for label, _ in _backward_cases(ENTRIES[n])]


@pytest.mark.parametrize("name, backend, case", _backward_case_ids())
def test_bad_backward_input_is_refused(name, backend, case):
    _need(backend)
    entry = ENTRIES[name]
    change = dict(_backward_cases(entry))[case]
    method = _first_method(entry, backend)
    inputs = _inputs(entry, method=method)
    out, state, cache = _fwd(entry, inputs, method, backend)
    dout, dstate = _upstream(np.random.default_rng(1), _host(out), _host(state))
    args = change(inputs, out, state, cache, dout, dstate)
    with pytest.raises((ValueError, TypeError), match=MESSAGE):
        _bwd(entry, *args)


@pytest.mark.parametrize("name, backend", ENTRY_BACKENDS)
def test_check_finite_names_the_array_and_the_first_bad_index(name, backend):
    """With ``minirec.check_finite`` on, a NaN input or upstream gradient is a
    ``ValueError`` naming the array and the index; off, it propagates."""
    import minirec

    _need(backend)
    entry = ENTRIES[name]
    method = _first_method(entry, backend)
    inputs = _inputs(entry, method=method, T=9)
    n = entry.time_inputs[0]
    bad = inputs[n].copy()
    bad[(1, 4) + (0,) * (bad.ndim - 2)] = np.nan
    with minirec.check_finite():
        out, state, cache = _fwd(entry, inputs, method, backend)  # finite: runs
        dout, dstate = _upstream(np.random.default_rng(1), _host(out), _host(state))
        with pytest.raises(ValueError, match=rf"{n}: expected finite values, got nan at index "
                                             rf"\(1, 4"):
            _fwd(entry, {**inputs, n: bad}, method, backend)
        dout_bad = dout.copy()
        dout_bad[(0, 2) + (0,) * (dout.ndim - 2)] = np.inf
        with pytest.raises(ValueError, match=r"expected finite values, got inf at index \(0, 2"):
            _bwd(entry, inputs, cache, dout_bad, dstate)
    with np.errstate(all="ignore"):
        _fwd(entry, {**inputs, n: bad}, method, backend)  # off again: no error


def test_check_finite_is_off_by_default_and_restored():
    import minirec

    assert not minirec.check_finite.enabled()
    with minirec.check_finite():
        assert minirec.check_finite.enabled()
        with minirec.check_finite(False):
            assert not minirec.check_finite.enabled()
        assert minirec.check_finite.enabled()
    assert not minirec.check_finite.enabled()
