"""Numba kernels of the matrix-state family (minirec/kernels/numba/gla.py:
recurrent, chunk; delta_rule.py: recurrent, chunk; mlstm.py: recurrent)
against the NumPy definitions, through the engines'
dispatch (``run(..., backend="numba")`` / ``run_backward``): outputs, final
state and every gradient, float64 ≤ 1e-10 and float32 ≤ 1e-4 relative RMS
(tests/conftest.py's ``TOL``), T ∈ {1, 37, 100} with chunk_size 16 (T not a
multiple), K = 5 ≠ V = 7, gates None / scalar / per key / exactly 0 / −20 per
step, RWKV's bonus, β at 0 and 2, read-only and broadcast inputs."""

import numpy as np
import pytest

from minirec.ops import delta_rule, gla, mlstm
from tests.conftest import TOL, assert_close

pytest.importorskip("numba")

B, H, K, V = 2, 3, 5, 7
CHUNK = 16
SCALE = 0.4


def _randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _gate(rng, kind, T, dtype, strength=1.0):
    """Log decays ≤ 0: ``None``, scalar ``(B, T, H)`` or per key ``(B, T, H, K)``."""
    if kind is None:
        return None
    shape = (B, T, H) if kind == "scalar" else (B, T, H, K)
    return (-strength * rng.uniform(0.0, 1.0, shape)).astype(dtype)


def _gla_inputs(rng, T, dtype, gate, bonus, strength=1.0):
    return dict(q=_randn(rng, (B, T, H, K), dtype), k=_randn(rng, (B, T, H, K), dtype),
                v=_randn(rng, (B, T, H, V), dtype), g=_gate(rng, gate, T, dtype, strength),
                u=_randn(rng, (H, K), dtype) if bonus else None,
                initial_state=_randn(rng, (B, H, K, V), dtype))


def _delta_inputs(rng, T, dtype, gated, beta):
    k = _randn(rng, (B, T, H, K), dtype)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)   # DeltaNet's L2-normalised keys
    b = rng.uniform(0.0, 2.0, (B, T, H)) if beta is None else np.full((B, T, H), beta)
    return dict(q=_randn(rng, (B, T, H, K), dtype), k=k, v=_randn(rng, (B, T, H, V), dtype),
                g=_gate(rng, "scalar", T, dtype) if gated else None, beta=b.astype(dtype),
                initial_state=_randn(rng, (B, H, K, V), dtype))


def _mlstm_inputs(rng, T, dtype, f_scale=1.0, zero_state=False):
    state = ((np.zeros((B, H, K, V), dtype), np.zeros((B, H, K), dtype), np.zeros((B, H), dtype))
             if zero_state else
             (_randn(rng, (B, H, K, V), dtype), _randn(rng, (B, H, K), dtype),
              _randn(rng, (B, H), dtype)))
    return dict(q=_randn(rng, (B, T, H, K), dtype), k=_randn(rng, (B, T, H, K), dtype),
                v=_randn(rng, (B, T, H, V), dtype), i=3 * _randn(rng, (B, T, H), dtype),
                f=(f_scale * _randn(rng, (B, T, H), dtype) + 1).astype(dtype),
                initial_state=state)


def _parts(x):
    return x if isinstance(x, tuple) else (x,)


def _run(engine, x, method, backend, chunk_size=CHUNK):
    args = [x[name] for name in x if name != "initial_state"]
    return engine.run(*args, x["initial_state"], scale=SCALE, method=method,
                      chunk_size=chunk_size, backend=backend)


def _upstream(rng, o, state):
    return (_randn(rng, o.shape, o.dtype),
            tuple(_randn(rng, s.shape, s.dtype) for s in _parts(state)))


def _compare(engine, x, method, rng, tol=None, noise=(), chunk_size=CHUNK):
    """Numba ``method`` vs the NumPy recurrent definition: forward and every
    gradient; the gradients named in ``noise`` (``"name[part]"``) are zero up to
    rounding in exact arithmetic: both must be below 1e-12 in absolute value."""
    ref_o, ref_S, ref_c = _run(engine, x, "recurrent", "numpy")
    o, S, c = _run(engine, x, method, "numba", chunk_size)
    do, dS = _upstream(rng, ref_o, ref_S)
    dS = dS if isinstance(ref_S, tuple) else dS[0]
    ref_g = engine.run_backward(ref_c, do, dS)
    g = engine.run_backward(c, do, dS)
    dtype = np.dtype(ref_o.dtype)
    tol = TOL[dtype] if tol is None else tol
    assert o.dtype == dtype and np.all(np.isfinite(o))
    assert_close(o, ref_o, tol, "o")
    for n, (a, b) in enumerate(zip(_parts(S), _parts(ref_S))):
        assert a.dtype == dtype
        assert_close(a, b, tol, f"state[{n}]")
    assert g.keys() == ref_g.keys()
    for name in ref_g:
        if ref_g[name] is None:
            assert g[name] is None, name
            continue
        for n, (a, b) in enumerate(zip(_parts(g[name]), _parts(ref_g[name]))):
            assert a.dtype == dtype and a.shape == b.shape, name
            assert np.all(np.isfinite(a)), name
            if f"{name}[{n}]" in noise:
                assert np.max(np.abs(a)) <= 1e-12 and np.max(np.abs(b)) <= 1e-12, name
            else:
                assert_close(a, b, tol, f"d{name}[{n}]")
    return o, S, g


# ---------------------------------------------------------------------------
# GLA engine: recurrent and chunk
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["recurrent", "chunk"])
@pytest.mark.parametrize("gate", [None, "scalar", "key"])
@pytest.mark.parametrize("bonus", [False, True])
@pytest.mark.parametrize("T", [1, 37, 100])
def test_gla_equals_definition_float64(method, gate, bonus, T, rng):
    _compare(gla, _gla_inputs(rng, T, np.float64, gate, bonus), method, rng)


@pytest.mark.parametrize("method", ["recurrent", "chunk"])
@pytest.mark.parametrize("gate", [None, "scalar", "key"])
@pytest.mark.parametrize("bonus", [False, True])
def test_gla_equals_definition_float32(method, gate, bonus, rng):
    _compare(gla, _gla_inputs(rng, 37, np.float32, gate, bonus), method, rng)


@pytest.mark.parametrize("gate", ["scalar", "key"])
@pytest.mark.parametrize("bonus", [False, True])
@pytest.mark.parametrize("chunk_size", [8, 40, 64])
def test_gla_chunk_sizes(gate, bonus, chunk_size, rng):
    """Chunks longer than the per-key form's sub-blocks of 16 (40: a partial
    sub-block; 64 = 4 sub-blocks) and shorter ones, T = 100 not a multiple."""
    _compare(gla, _gla_inputs(rng, 100, np.float64, gate, bonus), "chunk", rng,
             chunk_size=chunk_size)


@pytest.mark.parametrize("method", ["recurrent", "chunk"])
@pytest.mark.parametrize("gate", ["scalar", "key"])
def test_gla_gates_exactly_zero(method, gate, rng):
    x = _gla_inputs(rng, 37, np.float64, gate, bonus=False)
    x["g"] = np.zeros_like(x["g"])
    _compare(gla, x, method, rng)


@pytest.mark.parametrize("method", ["recurrent", "chunk"])
@pytest.mark.parametrize("gate", ["scalar", "key"])
@pytest.mark.parametrize("bonus", [False, True])
@pytest.mark.parametrize("strength", [20.0, 200.0])
def test_gla_float32_strong_decay_stays_finite_and_accurate(method, gate, bonus, strength, rng):
    """Log decays down to −20 (−200) per step at T = 256: the chunk form's
    cumulative gates reach −5000, yet only exponents ≤ 0 are formed."""
    x = _gla_inputs(rng, 256, np.float32, gate, bonus, strength=strength)
    _compare(gla, x, method, rng, chunk_size=64)


@pytest.mark.parametrize("gate", ["scalar", "key"])
@pytest.mark.parametrize("bonus", [False, True])
def test_gla_float32_chunk_is_as_accurate_as_the_recurrence(gate, bonus, rng):
    """Decays up to −200 per step: cumulative gates reach −6000 in a chunk of 64;
    their differences must not lose float32 precision (eps·|G| ≈ 4e-4 in the
    exponent would make ``dg`` 1e-4 off). Against the float64 definition."""
    x = _gla_inputs(rng, 256, np.float32, gate, bonus, strength=200.0)
    x64 = {n: None if a is None else a.astype(np.float64) for n, a in x.items()}
    ref_o, ref_S, ref_c = _run(gla, x64, "recurrent", "numpy")
    do, dS = _upstream(rng, ref_o, ref_S)
    ref_g = gla.run_backward(ref_c, do, dS[0])
    o, S, c = _run(gla, x, "chunk", "numba", chunk_size=64)
    g = gla.run_backward(c, do.astype(np.float32), dS[0].astype(np.float32))
    assert_close(o, ref_o, 1e-5, "o")
    assert_close(S, ref_S, 1e-5, "state")
    for name in ("q", "k", "v", "g", "initial_state") + (("u",) if bonus else ()):
        assert_close(g[name], ref_g[name], 1e-5, "d" + name)


def test_gla_broadcast_and_read_only_inputs(rng):
    """Retention's constant gates arrive as an ``np.broadcast_to`` view; callers'
    arrays may be read-only. Both work, and nothing is written to them."""
    x = _gla_inputs(rng, 37, np.float64, "scalar", bonus=False)
    dense = dict(x)
    x["g"] = np.broadcast_to(np.log(0.9) * np.ones(H), (B, 37, H))
    dense["g"] = np.ascontiguousarray(x["g"])
    x["q"] = np.asfortranarray(x["q"])                       # non-contiguous
    for a in (x["k"], x["v"], x["initial_state"]):
        a.flags.writeable = False
    copies = {n: a.copy() for n, a in x.items() if a is not None}
    for method in ("recurrent", "chunk"):
        o, S, c = _run(gla, x, method, "numba")
        ref_o, ref_S, _ = _run(gla, dense, method, "numba")
        np.testing.assert_array_equal(o, ref_o)
        np.testing.assert_array_equal(S, ref_S)
        gla.run_backward(c, np.ones_like(o), np.ones_like(S))
    for n, a in copies.items():
        np.testing.assert_array_equal(x[n], a, err_msg=n)


@pytest.mark.parametrize("method", ["recurrent", "chunk"])
def test_gla_split_resume(method, rng):
    """Two calls with the returned state equal one call."""
    x = _gla_inputs(rng, 50, np.float64, "key", bonus=True)
    o, S, _ = _run(gla, x, method, "numba")
    first = {n: (a[:, :21] if n in "qkvg" else a) for n, a in x.items()}
    second = {n: (a[:, 21:] if n in "qkvg" else a) for n, a in x.items()}
    o1, S1, _ = _run(gla, first, method, "numba")
    second["initial_state"] = S1
    o2, S2, _ = _run(gla, second, method, "numba")
    assert_close(np.concatenate([o1, o2], axis=1), o, 1e-12, "o")
    assert_close(S2, S, 1e-12, "state")


def test_recurrent_backward_does_not_depend_on_the_checkpoint_distance(rng):
    """The backward recomputes states from checkpoints with the forward's own
    operations, so the distance between checkpoints changes nothing, bitwise;
    the cache keeps ⌈T/chunk_size⌉ states, not T."""
    x = _gla_inputs(rng, 37, np.float64, "key", bonus=True)
    results = []
    for chunk_size in (1, 5, 16, 64):
        o, S, c = _run(gla, x, "recurrent", "numba", chunk_size=chunk_size)
        assert c.form.states.shape == (B, H, -(-37 // chunk_size), K, V)
        g = gla.run_backward(c, np.ones_like(o), np.ones_like(S))
        results.append((o, S, g))
    for o, S, g in results[1:]:
        np.testing.assert_array_equal(o, results[0][0])
        np.testing.assert_array_equal(S, results[0][1])
        for name in ("q", "k", "v", "g", "u", "initial_state"):
            np.testing.assert_array_equal(g[name], results[0][2][name], err_msg=name)


# ---------------------------------------------------------------------------
# delta engine
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["recurrent", "chunk"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("beta", [None, 0.0, 2.0])
@pytest.mark.parametrize("T", [1, 37, 100])
def test_delta_rule_equals_definition(method, dtype, gated, beta, T, rng):
    _compare(delta_rule, _delta_inputs(rng, T, dtype, gated, beta), method, rng)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("chunk_size", [8, 64])
def test_delta_rule_chunk_sizes(gated, chunk_size, rng):
    _compare(delta_rule, _delta_inputs(rng, 100, np.float64, gated, None), "chunk", rng,
             chunk_size=chunk_size)


@pytest.mark.parametrize("method", ["recurrent", "chunk"])
@pytest.mark.parametrize("strength", [20.0, 200.0])
def test_delta_rule_strong_decay_float32(method, strength, rng):
    """Log decays down to −20 (−200) per step at T = 256, chunks of 64."""
    x = _delta_inputs(rng, 256, np.float32, gated=True, beta=None)
    x["g"] = (strength * x["g"]).astype(np.float32)
    _compare(delta_rule, x, method, rng, chunk_size=64)


@pytest.mark.parametrize("beta", [None, 2.0])
def test_delta_rule_float32_chunk_is_as_accurate_as_the_recurrence(beta, rng):
    """Decays up to −200 per step, β up to 2, chunks of 64: float32 within 1e-5
    of the float64 definition (the float32 recurrence is ~1e-7 off)."""
    x = _delta_inputs(rng, 256, np.float32, gated=True, beta=beta)
    x["g"] = (200 * x["g"]).astype(np.float32)
    x64 = {n: None if a is None else a.astype(np.float64) for n, a in x.items()}
    ref_o, ref_S, ref_c = _run(delta_rule, x64, "recurrent", "numpy")
    do, dS = _upstream(rng, ref_o, ref_S)
    ref_g = delta_rule.run_backward(ref_c, do, dS[0])
    o, S, c = _run(delta_rule, x, "chunk", "numba", chunk_size=64)
    g = delta_rule.run_backward(c, do.astype(np.float32), dS[0].astype(np.float32))
    assert_close(o, ref_o, 1e-5, "o")
    assert_close(S, ref_S, 1e-5, "state")
    for name in ("q", "k", "v", "g", "beta", "initial_state"):
        assert_close(g[name], ref_g[name], 1e-5, "d" + name)


def test_delta_rule_broadcast_and_read_only_inputs(rng):
    x = _delta_inputs(rng, 20, np.float64, gated=True, beta=1.0)
    dense = dict(x)
    x["beta"] = np.broadcast_to(np.float64(1.0), (B, 20, H))
    x["q"].flags.writeable = False
    for method in ("recurrent", "chunk"):
        o, S, _ = _run(delta_rule, x, method, "numba")
        ref_o, ref_S, _ = _run(delta_rule, dense, method, "numba")
        np.testing.assert_array_equal(o, ref_o)
        np.testing.assert_array_equal(S, ref_S)


# ---------------------------------------------------------------------------
# mLSTM
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T", [1, 37, 100])
@pytest.mark.parametrize("f_scale", [1.0, 20.0])
def test_mlstm_equals_definition(dtype, T, f_scale, rng):
    """``f_scale = 20``: forget pre-activations of ±20 (log σ(f) down to −20)."""
    _compare(mlstm, _mlstm_inputs(rng, T, dtype, f_scale), "recurrent", rng)


def test_mlstm_from_the_empty_state(rng):
    """``m_0 = 0`` and zero ``C_0, n_0``: the normaliser's floor ``e^{−m}`` is
    the larger branch at first. ``∂L/∂m_0`` is 0 in exact arithmetic here (the
    outputs do not depend on the stabiliser, and the input gate wins the first
    max, as ``i = 3·N(0, 1) > log σ(f)`` for these inputs): both are rounding."""
    x = _mlstm_inputs(rng, 37, np.float64, zero_state=True)
    x["i"] = np.abs(x["i"])
    _compare(mlstm, x, "recurrent", rng, noise=("initial_state[2]",))


def test_mlstm_broadcast_and_read_only_inputs(rng):
    x = _mlstm_inputs(rng, 20, np.float64)
    dense = dict(x)
    x["f"] = np.broadcast_to(np.float64(3.0), (B, 20, H))
    dense["f"] = np.full((B, 20, H), 3.0)
    x["q"] = np.asfortranarray(x["q"])
    x["k"].flags.writeable = False
    o, S, _ = _run(mlstm, x, "recurrent", "numba")
    ref_o, ref_S, _ = _run(mlstm, dense, "recurrent", "numba")
    np.testing.assert_array_equal(o, ref_o)
    for a, b in zip(S, ref_S):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# all three: missing upstream gradients, NaN, arguments
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("engine,method", [(gla, "recurrent"), (gla, "chunk"),
                                           (delta_rule, "recurrent"), (delta_rule, "chunk"),
                                           (mlstm, "recurrent")])
def test_kernel_backward_takes_none_for_zero_upstream_gradients(engine, method, rng):
    """The kernel modules' ``backward(cache, None, None)`` (and ``dstate`` alone)
    equal explicit zeros."""
    from minirec import _backend

    x = {gla: lambda: _gla_inputs(rng, 21, np.float64, "key", bonus=True),
         delta_rule: lambda: _delta_inputs(rng, 21, np.float64, True, None),
         mlstm: lambda: _mlstm_inputs(rng, 21, np.float64)}[engine]()
    o, S, c = _run(engine, x, method, "numba")
    module = _backend.kernels(engine.__name__.split(".")[-1], "numba")
    dS = _upstream(rng, o, S)[1]
    dS = dS if isinstance(S, tuple) else dS[0]
    zero_o = np.zeros_like(o)
    zero_S = tuple(np.zeros_like(s) for s in S) if isinstance(S, tuple) else np.zeros_like(S)
    for do, dstate, ref_do, ref_dstate in ((None, dS, zero_o, dS), (None, None, zero_o, zero_S)):
        got = module.backward(c[-1], do, dstate)   # the engine cache's kernel cache
        want = engine.run_backward(c, ref_do, ref_dstate)
        for name in want:
            for a, b in zip(_parts(got[name]), _parts(want[name])):
                np.testing.assert_array_equal(a, b, err_msg=name)

@pytest.mark.parametrize("engine,method", [(gla, "recurrent"), (gla, "chunk"),
                                           (delta_rule, "recurrent"), (delta_rule, "chunk"),
                                           (mlstm, "recurrent")])
def test_nan_in_q_stays_causal(engine, method, rng):
    """A NaN in ``q`` at step 20 of batch row 0: earlier outputs and the other
    batch row stay finite, as in the definition."""
    x = {gla: lambda: _gla_inputs(rng, 37, np.float64, "key", bonus=False),
         delta_rule: lambda: _delta_inputs(rng, 37, np.float64, True, None),
         mlstm: lambda: _mlstm_inputs(rng, 37, np.float64)}[engine]()
    x["q"][0, 20, 1, 2] = np.nan
    o, _, _ = _run(engine, x, method, "numba")
    ref_o, _, _ = _run(engine, x, "recurrent", "numpy")
    np.testing.assert_array_equal(np.isfinite(o), np.isfinite(ref_o))
    assert np.all(np.isfinite(o[0, :20])) and np.all(np.isfinite(o[1]))


@pytest.mark.parametrize("engine,method", [(gla, "parallel"), (delta_rule, "parallel"),
                                           (mlstm, "chunk")])
def test_unsupported_method_is_refused(engine, method, rng):
    x = {gla: lambda: _gla_inputs(rng, 3, np.float64, None, False),
         delta_rule: lambda: _delta_inputs(rng, 3, np.float64, False, None),
         mlstm: lambda: _mlstm_inputs(rng, 3, np.float64)}[engine]()
    with pytest.raises(ValueError, match=f"method: expected .*got '{method}'"):
        _run(engine, x, method, "numba")
