"""The fused numba kernels of the diagonal cells (minirec/kernels/numba/diagonal.py
and its wrappers mingru, minlstm, hgrn, lru, ssm, aaren): the cases that are
about the kernels' own blocking, not the contract's (tests/test_contract.py
runs every entry at its small and medium sizes): T = 1, T and D not multiples
of the kernels' blocks (S4D's LANES channels and CHECKPOINT steps, the chunk
length), chunk lengths of 1 and longer than T, read-only inputs, float32 kept
inside the kernels, the same result on one thread and on several, and the
inline activations against minirec._math.

Agreement thresholds (DESIGN §6): float64 ≤ 1e-10 relative RMS against the
float64 recurrent NumPy definition, float32 ≤ 1e-4.
"""

import numpy as np
import pytest

from minirec import _math, registry

pytest.importorskip("numba")

from minirec.kernels.numba import diagonal  # noqa: E402

CELLS = ("mingru", "mingru_neg", "minlstm", "hgrn", "lru", "ssm", "ssm_bilinear", "aaren")


def _rel_rms(a, b):
    a, b = np.asarray(a), np.asarray(b)
    den = np.sqrt(np.mean(np.abs(b) ** 2))
    return float(np.sqrt(np.mean(np.abs(a - b) ** 2)) / max(den, 1e-30))


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    if isinstance(tree, (tuple, list)):
        out = {}
        for i, v in enumerate(tree):
            out.update(_flat(v, f"{prefix}{i}."))
        return out
    return {prefix: tree}


def _run(entry, inputs, method, backend, chunk_size=None, seed=1):
    kw = registry._method_kwargs(entry, method, backend)
    if chunk_size is not None:
        kw["chunk_size"] = chunk_size
    out, state, cache = registry.run_forward(entry, inputs, **kw)
    rng = np.random.default_rng(seed)

    def draw(like):
        g = rng.standard_normal(like.shape)
        if like.dtype.kind == "c":
            g = g + 1j * rng.standard_normal(like.shape)
        return g.astype(like.dtype)

    dout = draw(out)
    dstate = tuple(map(draw, state)) if isinstance(state, tuple) else draw(state)
    grads = registry.run_backward(entry, inputs, cache, dout, dstate)
    return {"out": out, "state": state, "grads": grads}


def _agree(name, method="recurrent", chunk_size=None, dtype=np.float64, tol=1e-10, **dims):
    entry = registry.get(name)
    inputs = entry.make_inputs(np.random.default_rng(0), dtype, "small", method, **dims)
    got = _flat(_run(entry, inputs, method, "numba", chunk_size))
    ref64 = registry._to64(inputs)
    ref = _flat(_run(entry, ref64, "recurrent", "numpy"))
    for k, r in ref.items():
        err = _rel_rms(got[k], r)
        assert err <= tol, f"{name} {method} chunk_size={chunk_size} {k}: rel RMS {err:.2e}"
    return got


@pytest.mark.parametrize("name", CELLS)
def test_one_step(name):
    """T = 1: one step, no chunking, the forward's last state is its only state."""
    _agree(name, T=1)


@pytest.mark.parametrize("name", [n for n in CELLS if n != "aaren"])
@pytest.mark.parametrize("chunk_size", [1, 3, 16, 40])
def test_chunked_at_odd_chunk_lengths(name, chunk_size):
    """T = 37 (a prime: no chunk length divides it; more than two S4D checkpoint
    blocks of 16 and a remainder); chunks of 1 step, of 3, of one checkpoint block,
    and longer than T (one chunk)."""
    _agree(name, "chunked", chunk_size, T=37)


@pytest.mark.parametrize("D", [1, 17, 33])
@pytest.mark.parametrize("method", ["recurrent", "chunked"])
def test_ssm_channels_not_a_multiple_of_the_lane_block(D, method):
    """S4D runs blocks of LANES channels; other D are padded with zero channels
    and cut back (the padding must not leak into y, dx or the sums)."""
    assert D % diagonal.LANES
    _agree("ssm", method, 5 if method == "chunked" else None, T=19, D=D)


@pytest.mark.parametrize("name", CELLS)
def test_float32_is_computed_and_returned_in_float32(name):
    """float32 inputs: every output and gradient float32, and within 1e-4 of the
    float64 definition."""
    got = _agree(name, dtype=np.float32, tol=1e-4, T=21)
    for k, v in got.items():
        assert np.asarray(v).dtype in (np.float32, np.complex64), f"{k}: {np.asarray(v).dtype}"


def test_kernel_buffers_keep_float32():
    """The gated kernels' kept states and gate values, and S4D's checkpoints,
    are float32 for float32 inputs (no float64 promotion inside)."""
    rng = np.random.default_rng(0)
    p, q, v = (rng.standard_normal((2, 9, 5)).astype(np.float32) for _ in range(3))
    h0 = rng.standard_normal((2, 5)).astype(np.float32)
    for gate in diagonal.GATES:
        inputs, h, aux = diagonal.gated_scan_forward(gate, p, q, v, h0, False, "recurrent", None)
        assert h.dtype == aux.dtype == np.float32, gate
        dp, dq, dv, dh0 = diagonal.gated_scan_backward(gate, inputs, h, aux, v, h0, False,
                                                       "chunked", 4)
        assert dp.dtype == dv.dtype == dh0.dtype == np.float32, gate
    from minirec.cells import ssm
    from minirec.kernels.numba import ssm as kssm
    params = ssm.init_params(rng, 3, 4, dtype=np.float32)
    Abar, Bbar = ssm.discretize(params)
    C = params["C_re"] + 1j * params["C_im"]
    x = rng.standard_normal((2, 7, 3)).astype(np.float32)
    y, h_T, cache = kssm.forward(Abar.astype(np.complex64), Bbar.astype(np.complex64),
                                 C.astype(np.complex64), params["D"], x,
                                 np.zeros((2, 3, 4), np.complex64))
    assert y.dtype == np.float32 and h_T.dtype == np.complex64
    assert cache.checkpoints.dtype == cache.cf.dtype == np.float32


@pytest.mark.parametrize("name", CELLS)
def test_read_only_inputs(name):
    """Read-only arrays (which Numba would compile a second specialisation for)
    are accepted, give the same result as writeable ones, and are not written."""
    entry = registry.get(name)
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, "small", "recurrent", T=6)
    ref = _flat(_run(entry, inputs, "recurrent", "numba"))
    frozen = {k: v for k, v in inputs.items()}
    for a in _flat(frozen).values():
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    got = _flat(_run(entry, frozen, "recurrent", "numba"))
    for k in ref:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


@pytest.mark.parametrize("name", ["mingru", "lru", "ssm", "aaren"])
def test_one_thread_and_many_threads_agree(name, monkeypatch):
    """Below PARALLEL_WORK the kernels run on the calling thread; forcing the
    parallel path gives the same values (the jobs are independent rows)."""
    entry = registry.get(name)
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, "small", "chunked", B=3,
                               T=23)
    method = "recurrent" if name == "aaren" else "chunked"
    one = _flat(_run(entry, inputs, method, "numba", None if name == "aaren" else 5))
    monkeypatch.setattr(diagonal, "PARALLEL_WORK", 0)
    many = _flat(_run(entry, inputs, method, "numba", None if name == "aaren" else 5))
    for k in one:
        np.testing.assert_array_equal(many[k], one[k], err_msg=k)


def test_threads_restores_the_thread_count():
    import numba
    before = numba.get_num_threads()
    with diagonal.threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gate_activations_match_minirec_math(dtype):
    """The gates' σ(x), σ(−x), softplus(x) (kernels/numba/_math: vectorising in
    float32) and log1p(e^{−|x|}) within a few ulps of minirec._math / NumPy, NaN in
    → NaN out, ±inf and huge arguments handled."""
    from numba import njit

    from minirec.kernels.numba import _math as NM

    @njit
    def gates(x, out):
        for i in range(x.size):
            out[0, i] = NM.sigmoid(x[i])
            out[1, i] = NM.sigmoid(-x[i])
            out[2, i] = NM.softplus(x[i])
            out[3, i] = NM.log1p_unit(NM.exp(-abs(x[i])))

    x = np.concatenate([np.linspace(-40, 40, 801), [0.0, -0.0, 1e-30, -1e-30, 1e-8, 90.0,
                                                   -90.0, np.inf, -np.inf, np.nan]]).astype(dtype)
    out = np.empty((4, x.size), dtype)
    with np.errstate(all="ignore"):
        gates(x, out)
        want = [_math.sigmoid(x), _math.sigmoid(-x), _math.softplus(x),
                np.log1p(np.exp(-np.abs(x)))]
    eps = np.finfo(dtype).eps
    for i, w in enumerate(want):
        np.testing.assert_array_equal(np.isnan(out[i]), np.isnan(w), err_msg=f"row {i}")
        ok = ~np.isnan(w)
        # atol: below the smallest normal number (σ(−90) in float32) SciPy gives 0
        np.testing.assert_allclose(out[i][ok], w[ok], rtol=8 * eps, atol=np.finfo(dtype).tiny,
                                   err_msg=f"row {i}")
    assert out.dtype == dtype


def test_chunk_powers():
    a = np.array([0.9 + 0.3j, -0.5 + 0.1j, 1.0 + 0j])
    for L, T in [(1, 1), (3, 10), (4, 8), (16, 37), (40, 37)]:
        got = diagonal.chunk_powers(a, L, T)
        n = -(-T // L)
        lens = [min(L, T - c * L) for c in range(n)]
        want = np.stack([a ** m for m in lens])
        np.testing.assert_allclose(got, want, rtol=1e-14)
