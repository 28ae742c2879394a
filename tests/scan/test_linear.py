"""scan.linear: golden values and what is particular to the diagonal scan.

The contract test (tests/test_contract.py) checks every method and backend
against the definition (float64, float32, complex), gradients, split-resume,
T = 1/2/13, B = 0, read-only inputs and the bad-input tables; this file keeps
the golden values, chunk sizes other than the registry's, several trailing
axes, complex gradients, and the ``log_a`` form of the coefficients.
"""

import numpy as np
import pytest

from minirec import gradcheck, registry
from minirec.scan import linear
from tests.conftest import assert_close

ENTRY = registry.get("scan.linear")


def _inputs(rng, dtype=np.float64, method=None, **dims):
    """``(a, b, h0)`` from the registry (``a > 0`` for ``method="log"``)."""
    d = ENTRY.make_inputs(rng, dtype, "small", method, **dims)
    return d["a"], d["b"], d["initial_state"]


def _log_gates(rng, shape, dtype=np.float64):
    """``log a``: real log gates in (−1.5, 0]; complex ones with a phase in (−π, π)."""
    log_a = -rng.uniform(0.0, 1.5, shape)
    if np.dtype(dtype).kind == "c":
        log_a = log_a + 1j * rng.uniform(-np.pi, np.pi, shape)
    return log_a.astype(dtype)


def _upstream(rng, h):
    g = rng.standard_normal(h.shape)
    if np.iscomplexobj(h):
        g = g + 1j * rng.standard_normal(h.shape)
    return g.astype(h.dtype)


# ---------------------------------------------------------------------------
# golden values and the definition
# ---------------------------------------------------------------------------

def test_golden_values():
    """linspace inputs; the expected numbers were worked out by hand from the loop:
    a = 0.5 everywhere, b_t = t + 1, h0 = 1 → h = 1.5, 2.75, 4.375, 6.1875."""
    a = np.full((1, 4, 1), 0.5)
    b = np.linspace(1.0, 4.0, 4).reshape(1, 4, 1)
    expected = np.array([1.5, 2.75, 4.375, 6.1875]).reshape(1, 4, 1)
    for method in linear.METHODS:
        h, _, _ = linear.forward(a, b, np.ones((1, 1)), method=method, chunk_size=3)
        np.testing.assert_allclose(h, expected, rtol=1e-14, err_msg=method)


def test_definition_is_the_loop_over_any_trailing_shape(rng):
    a = rng.uniform(-1.0, 1.0, (2, 9, 4, 2))
    b = rng.standard_normal((2, 9, 4, 2))
    h0 = rng.standard_normal((2, 4, 2))
    h, h_T, _ = linear.forward(a, b, h0)
    state = h0.copy()
    for t in range(9):
        state = a[:, t] * state + b[:, t]
        np.testing.assert_allclose(h[:, t], state, rtol=0, atol=0)
    np.testing.assert_array_equal(h_T, state)


def test_gates_at_exactly_one_give_a_cumulative_sum(rng):
    """g = 0 in log space means a = 1: h is the running sum of b (plus h0)."""
    b = rng.standard_normal((2, 17, 3))
    h0 = rng.standard_normal((2, 3))
    for method in linear.METHODS:
        h, _, _ = linear.forward(np.ones_like(b), b, h0, method=method, chunk_size=5)
        assert_close(h, h0[:, None] + np.cumsum(b, axis=1), 1e-12, method)
        h, _, _ = linear.forward(None, b, h0, log_a=np.zeros_like(b), method=method,
                                 chunk_size=5)
        assert_close(h, h0[:, None] + np.cumsum(b, axis=1), 1e-12, f"{method}, log_a")


# ---------------------------------------------------------------------------
# methods against the definition where the contract test does not reach
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", linear.METHODS)
@pytest.mark.parametrize("T", [64, 100])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_long_T_default_and_uneven_chunks_trailing_axes(method, T, dtype, rng):
    """Chunk sizes that do not divide T (and the default ⌈√T⌉), two trailing axes."""
    a, b, h0 = (x.reshape(x.shape[:-1] + (3, 2)) for x in _inputs(rng, dtype, method, T=T, D=6))
    ref, ref_T, ref_cache = linear.forward(a, b, h0)
    dh, dstate = _upstream(rng, ref), _upstream(rng, ref_T)
    ref_g = linear.backward(ref_cache, dh, dstate)
    for chunk in (None, 3, 8):
        h, h_T, cache = linear.forward(a, b, h0, method=method, chunk_size=chunk)
        g = linear.backward(cache, dh, dstate)
        assert_close(h, ref, 1e-10, "h")
        assert_close(h_T, ref_T, 1e-10, "h_T")
        for k in ref_g:
            assert g[k].dtype == ref_g[k].dtype, k
            assert_close(g[k], ref_g[k], 1e-10, f"d{k}")


@pytest.mark.parametrize("method", linear.METHODS)
def test_gradcheck_complex(method, rng):
    """The contract gradchecks float64; complex a, b, h0 here (∂L/∂Re + i ∂L/∂Im)."""
    a, b, h0 = _inputs(rng, np.complex128, method, T=6)
    report = gradcheck.check_op(linear, {"a": a, "b": b, "initial_state": h0},
                                method=method, chunk_size=4)
    assert report.passed, str(report)  # relative error < 1e-6 in float64


def test_real_gates_with_complex_inputs_give_real_da(rng):
    a, _, _ = _inputs(rng, np.float64)
    _, b, h0 = _inputs(rng, np.complex128)
    h, h_T, cache = linear.forward(a, b, h0)
    g = linear.backward(cache, _upstream(rng, h), _upstream(rng, h_T))
    assert g["a"].dtype == np.float64 and g["b"].dtype == np.complex128
    report = gradcheck.check_op(linear, {"a": a, "b": b, "initial_state": h0},
                                method="blelloch")
    assert report.passed, str(report)


# ---------------------------------------------------------------------------
# the log method, and log_a (issue 7, defect 3)
# ---------------------------------------------------------------------------

def test_log_method_handles_tiny_gates_without_overflow():
    a = np.full((1, 200, 1), 1e-3)
    b = np.ones((1, 200, 1))
    h, _, _ = linear.forward(a, b, method="log")
    ref, _, _ = linear.forward(a, b)
    assert np.all(np.isfinite(h))
    assert_close(h, ref, 1e-10)


def test_log_method_refuses_nonpositive_gates_and_says_to_pass_log_a(rng):
    a, b, _ = _inputs(rng, method="log")
    a[0, 2, 0] = -0.5
    with pytest.raises(ValueError, match=r"(?s)a: method='log' expected a > 0.*got min\(a\) = "
                                         r"-0.5.*log_a="):
        linear.forward(a, b, method="log")


def test_saturated_log_gates_run_with_log_a():
    """Defect 3: g = −120 in float32 underflows exp(g) to 0, which the log method
    refused ("needs a > 0 … got min(a) = 0.0"); passed as log_a it runs: the
    state forgets everything at each step, h_t = x_t."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    g = np.full(x.shape, -120, np.float32)
    with pytest.raises(ValueError, match="log_a"):
        linear.forward(np.exp(g), x, method="log")
    h, h_T, cache = linear.forward(None, x, log_a=g, method="log")
    assert h.dtype == np.float32
    np.testing.assert_allclose(h, x, rtol=0, atol=1e-4)  # float32 log-space rounding
    grads = linear.backward(cache, np.ones_like(h), np.ones_like(h_T))
    assert set(grads) == {"log_a", "b", "initial_state"}
    assert all(np.all(np.isfinite(v)) and v.dtype == np.float32 for v in grads.values())
    # db_t = g_t = 1 + a_{t+1} g_{t+1} = 1, and 2 at the end (dh + dstate)
    want = np.ones_like(h)
    want[:, -1] = 2
    np.testing.assert_allclose(grads["b"], want, rtol=1e-6)


@pytest.mark.parametrize("method", linear.METHODS)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_log_a_equals_a_and_its_gradient_is_da_times_conj_a(method, dtype, rng):
    _, b, h0 = _inputs(rng, dtype, T=9)
    log_a = _log_gates(rng, b.shape, dtype)
    a = np.exp(log_a)
    ref, ref_T, ref_cache = linear.forward(a, b, h0, method=method, chunk_size=4)
    h, h_T, cache = linear.forward(None, b, h0, log_a=log_a, method=method, chunk_size=4)
    assert_close(h, ref, 1e-12, "h")
    assert_close(h_T, ref_T, 1e-12, "h_T")
    dh, dstate = _upstream(rng, h), _upstream(rng, h_T)
    ref_g = linear.backward(ref_cache, dh, dstate)
    g = linear.backward(cache, dh, dstate)
    assert set(g) == {"log_a", "b", "initial_state"}
    assert g["log_a"].dtype == log_a.dtype
    assert_close(g["log_a"], ref_g["a"] * np.conj(a), 1e-12, "dlog_a")  # a = e^{log a}
    for k in ("b", "initial_state"):
        assert_close(g[k], ref_g[k], 1e-12, f"d{k}")


@pytest.mark.parametrize("method", linear.METHODS)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_gradcheck_log_a(method, dtype, rng):
    _, b, h0 = _inputs(rng, dtype, T=7)
    log_a = _log_gates(rng, b.shape, dtype)
    report = gradcheck.check_op(linear, {"log_a": log_a, "b": b, "initial_state": h0},
                                a=None, method=method, chunk_size=3)
    assert report.passed, str(report)  # relative error < 1e-6 in float64


def test_log_a_with_the_state_reset_runs_except_in_log_space(rng):
    """log_a = −inf is a = 0 (a reset): every method but log runs it; log refuses it."""
    _, b, h0 = _inputs(rng)
    log_a = _log_gates(rng, b.shape)
    log_a[:, 2] = -np.inf
    h, _, _ = linear.forward(None, b, h0, log_a=log_a, method="blelloch")
    assert_close(h[:, 2], b[:, 2], 1e-15, "h at the reset")
    with pytest.raises(ValueError, match=r"(?s)log_a: method='log' expected log_a > -inf.*"
                                         r"got -inf at index \(0, 2, 0\)"):
        linear.forward(None, b, h0, log_a=log_a, method="log")


@pytest.mark.parametrize("a_given, log_a_given, word", [(False, False, "neither"),
                                                        (True, True, "both")])
def test_a_and_log_a_are_exclusive(a_given, log_a_given, word, rng):
    a, b, _ = _inputs(rng)
    with pytest.raises(TypeError, match=f"expected .* exactly one of a and log_a, got {word}"):
        linear.forward(a if a_given else None, b, log_a=np.log(np.abs(a)) if log_a_given else None)


def test_log_a_is_validated_under_its_own_name(rng):
    _, b, _ = _inputs(rng)
    with pytest.raises(ValueError, match=r"b: expected shape \(2, 4, 3\) \(the shape of log_a\)"):
        linear.forward(None, b, log_a=np.zeros((2, 4, 3)))
    with pytest.raises(TypeError, match="log_a: expected dtype"):
        linear.forward(None, b, log_a=np.zeros(b.shape, np.int64))


# ---------------------------------------------------------------------------
# upstream gradients (issue 7, defect 4)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", linear.BACKENDS)
def test_complex_gradient_of_a_real_output_is_refused(backend, rng):
    """Defect 4: ``linear.backward(cache, h * 1j)`` returned zeros."""
    pytest.importorskip(backend)
    a, b, h0 = _inputs(rng, method="log")  # a > 0: every method runs
    for method in linear.BACKEND_METHODS.get(backend, linear.METHODS):
        h, h_T, cache = linear.forward(a, b, h0, method=method, backend=backend)
        with pytest.raises(TypeError, match=r"dh: expected a real gradient .* got complex128"):
            linear.backward(cache, h * 1j)
        with pytest.raises(TypeError, match=r"dstate: expected a real gradient .* got complex"):
            linear.backward(cache, h, h_T * 1j)


def test_complex_dstate_of_a_complex_state_is_taken_with_a_real_initial_state(rng):
    """Real a and h0 with complex b: h_T is complex, so dstate may be (it was refused
    when checked against h0's dtype)."""
    a, _, h0 = _inputs(rng)
    _, b, _ = _inputs(rng, np.complex128)
    h, h_T, cache = linear.forward(a, b, h0)
    dstate = _upstream(rng, h_T)
    g = linear.backward(cache, None, dstate)
    ref = linear.backward(cache, np.zeros_like(h), np.zeros_like(h_T))
    assert g["initial_state"].dtype == np.float64
    assert not np.allclose(g["b"], ref["b"])
    np.testing.assert_allclose(g["b"][:, -1], dstate, rtol=1e-15)


# ---------------------------------------------------------------------------
# caches (issue 7, defect 8)
# ---------------------------------------------------------------------------

def test_a_dict_or_another_scans_cache_is_refused(rng):
    """Defect 8: ``linear.backward(a_dict, h)`` failed with a KeyError/AttributeError."""
    a, b, h0 = _inputs(rng)
    h, _, _ = linear.forward(a, b, h0)
    A = a[..., :, None] * np.eye(3)
    _, _, matrix_cache = registry.get("scan.matrix").module.forward(A, b, h0)
    for cache in ({"a": a, "h": h}, matrix_cache):
        with pytest.raises(TypeError, match=r"cache: expected the cache returned by "
                                            r"scan.linear.s forward \(LinearScanCache\), got"):
            linear.backward(cache, h)


# ---------------------------------------------------------------------------
# out= buffers (issue 10: the API at the kernel's speed)
# ---------------------------------------------------------------------------

def _backend_methods():
    """(backend, method) pairs runnable here: NumPy's every method, numba's kernels."""
    pairs = [("numpy", m) for m in linear.METHODS]
    try:
        import numba  # noqa: F401
    except ImportError:
        return pairs
    return pairs + [("numba", m) for m in linear.BACKEND_METHODS["numba"]]


@pytest.mark.parametrize("backend, method", _backend_methods())
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_out_buffers_receive_exactly_what_new_arrays_would(backend, method, dtype, rng):
    a, b, h0 = _inputs(rng, dtype, method=method, T=13)
    h, h_T, cache = linear.forward(a, b, h0, method=method, chunk_size=4, backend=backend)
    dh, dstate = _upstream(rng, h), _upstream(rng, h_T)
    ref = linear.backward(cache, dh, dstate)
    h_buf = np.full_like(h, np.nan)
    h2, h_T2, cache2 = linear.forward(a, b, h0, method=method, chunk_size=4, backend=backend,
                                      out=h_buf)
    assert h2 is h_buf
    np.testing.assert_array_equal(h2, h)
    np.testing.assert_array_equal(h_T2, h_T)
    bufs = {k: np.full_like(v, np.nan) for k, v in ref.items()}
    g = linear.backward(cache2, dh, dstate, out=dict(bufs))
    for k in ref:
        assert g[k] is bufs[k], k
        np.testing.assert_array_equal(g[k], ref[k])


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_out_buffers_with_log_a_and_real_gates_of_complex_inputs(backend, rng):
    """``log_a``'s gradient (da scaled by a) and a real ``a`` with complex ``b``
    (complex da, real part returned) land in their buffers too."""
    pytest.importorskip(backend)
    _, b, h0 = _inputs(rng, np.complex128)
    cases = [(None, {"log_a": _log_gates(rng, b.shape)}),
             (rng.uniform(-1, 1, b.shape), {})]
    for a, kw in cases:
        h, _, cache = linear.forward(a, b, h0, backend=backend, **kw)
        dh = _upstream(rng, h)
        ref = linear.backward(cache, dh)
        h2, _, cache2 = linear.forward(a, b, h0, backend=backend, out=np.empty_like(h), **kw)
        bufs = {k: np.empty_like(v) for k, v in ref.items()}
        g = linear.backward(cache2, dh, out=dict(bufs))
        for k in ref:
            assert g[k] is bufs[k] and g[k].dtype == ref[k].dtype, k
            np.testing.assert_array_equal(g[k], ref[k])


def test_a_partial_out_dict_fills_only_its_keys(rng):
    a, b, h0 = _inputs(rng)
    h, _, cache = linear.forward(a, b, h0)
    db = np.empty_like(b)
    g = linear.backward(cache, np.ones_like(h), out={"b": db})
    assert g["b"] is db and g["a"] is not db
    np.testing.assert_array_equal(g["b"], linear.backward(cache, np.ones_like(h))["b"])


def test_a_wrong_out_is_refused_naming_it(rng):
    a, b, h0 = _inputs(rng, T=9)
    ro = np.empty_like(b)
    ro.flags.writeable = False
    wrong = [(TypeError, r"out: expected an ndarray, got list", [[0.0]]),
             (TypeError, r"out: expected dtype float64 \(that of h\), got float32",
              np.empty(b.shape, np.float32)),
             (ValueError, r"out: expected shape \(2, 9, 3\) \(that of h\), got \(2, 9, 4\)",
              np.empty((2, 9, 4))),
             (ValueError, r"out: expected a C-contiguous array, got strides",
              np.empty(b.shape[::-1]).T),
             (ValueError, r"out: expected a writeable array, got a read-only one", ro),
             (ValueError, r"out: expected an array that shares no memory with b, got one",
              b)]
    for error, message, out in wrong:
        with pytest.raises(error, match=message):
            linear.forward(a, b, h0, out=out)
    whole = np.empty((2 * 9 * 3 + 6,))      # h0 placed inside the buffer given as out
    h0_inside = whole[:6].reshape(2, 3)
    h0_inside[...] = h0
    with pytest.raises(ValueError, match=r"out: expected an array that shares no memory "
                                         r"with initial_state"):
        linear.forward(a, b, h0_inside, out=whole[:54].reshape(b.shape))


def test_a_wrong_gradient_out_is_refused_naming_it(rng):
    a, b, h0 = _inputs(rng, T=9)
    h, _, cache = linear.forward(a, b, h0)
    dh = np.ones_like(h)
    buf = np.empty_like(h)
    wrong = [(TypeError, r"out: expected a dict of arrays keyed by some of \('a', 'b', "
                         r"'initial_state'\), got ndarray", buf),
             (ValueError, r"out: expected keys among \('a', 'b', 'initial_state'\), "
                          r"got 'log_a'", {"log_a": buf}),
             (ValueError, r"out\['initial_state'\]: expected shape \(2, 3\) \(that of the "
                          r"gradient of initial_state\), got \(2, 9, 3\)",
              {"initial_state": buf}),
             (ValueError, r"out\['b'\]: expected an array that shares no memory with dh",
              {"b": dh}),
             (ValueError, r"out\['a'\]: expected an array that shares no memory with h,",
              {"a": h}),
             (ValueError, r"out\['b'\]: expected an array that shares no memory with "
                          r"out\['a'\]", {"a": buf, "b": buf})]
    for error, message, out in wrong:
        with pytest.raises(error, match=message):
            linear.backward(cache, dh, out=out)
    np.testing.assert_array_equal(dh, 1.0)   # refused before anything was written


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_cache_whose_out_buffer_was_written_again_is_refused(backend, rng):
    """Reusing the forward's buffer before the backward would silently give the
    gradients of other states; the stale cache is refused, the fresh one runs."""
    pytest.importorskip(backend)
    a, b, h0 = _inputs(rng)
    buf = np.empty_like(b)
    _, _, first = linear.forward(a, b, h0, backend=backend, out=buf)
    h, _, second = linear.forward(a, 2 * b, h0, backend=backend, out=buf)
    with pytest.raises(ValueError, match=r"cache: expected the states h that the forward "
                                         r"wrote into its out buffer, got a cache whose out "
                                         r"buffer has been written into since"):
        linear.backward(first, np.ones_like(h))
    ref = linear.backward(linear.forward(a, 2 * b, h0)[2], np.ones_like(h))
    assert_close(linear.backward(second, np.ones_like(h))["a"], ref["a"], 1e-12)
