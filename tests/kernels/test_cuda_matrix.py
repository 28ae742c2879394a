"""CUDA kernels of the matrix-state family (gla.cu, delta_rule.cu, mlstm.cu) equal the
NumPy definitions.

On the CPU through the emulator (``cuda-emulated``), through the engines' own
dispatch (``minirec.ops.<engine>.run(..., backend="cuda-emulated")``) against
``backend="numpy"``, method ``recurrent``: T = 1 and T = 37 with checkpoints
every 16 steps (a last chunk of 5), K = 5, V = 7 (one block of 8 threads, one
idle) and K = 40, V = 36 (two slices of 32 columns, 28 idle threads), every gate
kind, β at 0 and 2, float64 and float32. Then ThreadSanitizer on all three
families and, marked ``gpu``, the same through CuPy. The compile checks
(nvcc, NVRTC) are test_cuda_compile.py's.
"""

import numpy as np
import pytest

from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda import delta_rule as cuda_delta
from minirec.kernels.cuda import gla as cuda_gla
from minirec.kernels.cuda import mlstm as cuda_mlstm
from minirec.ops import delta_rule, gla, mlstm
from tests.conftest import TOL, assert_close
from tests.kernels.cuda_helpers import cupy_or_skip, needs_compiler

SMALL, WIDE = (2, 37, 2, 5, 7), (1, 37, 1, 40, 36)  # (B, T, H, K, V)
ENGINES = {"gla": gla, "delta_rule": delta_rule, "mlstm": mlstm}


def make(rng, engine, shape, dtype, *, gate=None, rwkv=False, beta=None):
    """The engine's positional arrays (initial state included) for ``shape``."""
    B, T, H, K, V = shape
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    q, k, v = r(B, T, H, K), r(B, T, H, K), r(B, T, H, V)
    if engine == "gla":
        g = {None: None, "head": -rng.uniform(0, 1, (B, T, H)),
             "key": -rng.uniform(0, 1, (B, T, H, K))}[gate]
        g = None if g is None else g.astype(dtype)
        return q, k, v, g, r(H, K) if rwkv else None, r(B, H, K, V)
    if engine == "delta_rule":
        k = (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(dtype)
        g = None if gate is None else (-rng.uniform(0, 1, (B, T, H))).astype(dtype)
        b = rng.uniform(0, 2, (B, T, H)) if beta is None else np.full((B, T, H), float(beta))
        return q, k, v, g, b.astype(dtype), r(B, H, K, V)
    i, f = r(B, T, H), r(B, T, H) + 2
    return q, k, v, i, f, (r(B, H, K, V), r(B, H, K), r(B, H))


def upstream(rng, o, state):
    """Random ``do`` and ``dstate`` like the outputs."""
    r = lambda x: rng.standard_normal(x.shape).astype(x.dtype)  # noqa: E731
    return r(o), tuple(r(s) for s in state) if isinstance(state, tuple) else r(state)


def leaves(x):
    return list(x) if isinstance(x, tuple) else [x]


def check_engine(rng, engine, arrays, dtype, chunk_size=16):
    """Forward and every gradient of ``backend="cuda-emulated"`` against ``"numpy"``."""
    mod, tol = ENGINES[engine], TOL[np.dtype(dtype)]
    o, S, cache = mod.run(*arrays, scale=0.7, method="recurrent", chunk_size=chunk_size,
                          backend="numpy")
    do, dstate = upstream(rng, o, S)
    expected = mod.run_backward(cache, do, dstate)
    o2, S2, cache2 = mod.run(*arrays, scale=0.7, method="recurrent", chunk_size=chunk_size,
                             backend="cuda-emulated")
    grads = mod.run_backward(cache2, do, dstate)
    assert o2.dtype == o.dtype and o2.shape == o.shape
    assert_close(o2, o, tol, "o")
    for got, want in zip(leaves(S2), leaves(S), strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert_close(got, want, tol, "final state")
    assert set(grads) == set(expected)
    for name, want in expected.items():
        if want is None:
            assert grads[name] is None, name
            continue
        for got, w in zip(leaves(grads[name]), leaves(want), strict=True):
            assert got.shape == w.shape and got.dtype == w.dtype, name
            assert_close(got, w, tol, f"d{name}")


# ---------------------------------------------------------------------------
# emulated kernels against the definitions
# ---------------------------------------------------------------------------

GLA_CASES = [(gate, rwkv) for gate in (None, "head", "key") for rwkv in (False, True)]


@needs_compiler
@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("gate, rwkv", GLA_CASES,
                         ids=[f"g-{g}-{'rwkv' if r else 'gla'}" for g, r in GLA_CASES])
def test_gla_matches_definition(rng, T, gate, rwkv):
    shape = (2, T, 2, 5, 7)
    check_engine(rng, "gla", make(rng, "gla", shape, np.float64, gate=gate, rwkv=rwkv),
                 np.float64)


DELTA_CASES = [(gate, beta) for gate in (None, "head") for beta in (None, 0, 2)]


@needs_compiler
@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("gate, beta", DELTA_CASES,
                         ids=[f"g-{g}-beta-{b}" for g, b in DELTA_CASES])
def test_delta_rule_matches_definition(rng, T, gate, beta):
    shape = (2, T, 2, 5, 7)
    check_engine(rng, "delta_rule", make(rng, "delta_rule", shape, np.float64, gate=gate,
                                         beta=beta), np.float64)


@needs_compiler
@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("i_shift", [-5.0, 0.0, 5.0])  # the stabiliser's two branches
def test_mlstm_matches_definition(rng, T, i_shift):
    q, k, v, i, f, state = make(rng, "mlstm", (2, T, 2, 5, 7), np.float64)
    check_engine(rng, "mlstm", (q, k, v, i + i_shift, f, state), np.float64)


WIDE_CASES = [("gla", {"gate": "key", "rwkv": True}), ("gla", {"gate": "head"}),
              ("delta_rule", {"gate": "head"}), ("delta_rule", {"beta": 2}), ("mlstm", {})]


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("engine, options", WIDE_CASES,
                         ids=[f"{e}-{'-'.join(map(str, o.values()))}" for e, o in WIDE_CASES])
def test_several_slices_and_float32(rng, engine, options, dtype):
    # V = 36: two blocks of 32 columns per head, 28 idle threads; K = 40 > 32 rows
    check_engine(rng, engine, make(rng, engine, WIDE, dtype, **options), dtype)


@needs_compiler
def test_chunk_size_does_not_change_the_answer(rng):
    arrays = make(rng, "delta_rule", (1, 37, 2, 5, 7), np.float64, gate="head")
    outs = [cuda_delta.forward(*arrays, scale=0.5, chunk_size=c) for c in (1, 16, 37, 100)]
    grads = [cuda_delta.backward(kc, np.ones_like(o), np.ones_like(S)) for o, S, kc in outs]
    for (o, S, _), g in zip(outs[1:], grads[1:]):
        np.testing.assert_array_equal(o, outs[0][0])  # checkpoints replay bitwise
        np.testing.assert_array_equal(S, outs[0][1])
        for name in g:
            np.testing.assert_array_equal(g[name], grads[0][name])


@needs_compiler
def test_inputs_are_not_mutated_and_may_be_views(rng):
    B, T, H, K, V = 2, 9, 2, 5, 7
    q, k, v, _, u, S0 = make(rng, "gla", (B, T, H, K, V), np.float64, rwkv=True)
    g = np.broadcast_to(np.log(np.float64(0.9)), (B, T, H))  # retention's constant gate
    q = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # strided
    arrays = (q, k, v, g, u, S0)
    o, S, cache = gla.run(*arrays, scale=0.5, method="recurrent", chunk_size=4,
                          backend="numpy")
    do, dstate = upstream(rng, o, S)
    expected = gla.run_backward(cache, do, dstate)
    copies = [x.copy() for x in (*arrays, do, dstate)]
    for x in (q, k, v, u, S0, do, dstate):
        x.flags.writeable = False
    o2, S2, kc = cuda_gla.forward(*arrays, scale=0.5, chunk_size=4)
    grads = cuda_gla.backward(kc, do, dstate)
    assert_close(o2, o, 1e-10, "o")
    assert_close(S2, S, 1e-10, "S")
    for name, want in expected.items():
        assert_close(grads[name], want, 1e-10, name)
    for x, c in zip((*arrays, do, dstate), copies):
        np.testing.assert_array_equal(x, c)


@needs_compiler
@pytest.mark.parametrize("engine", list(ENGINES))
def test_nan_in_q_stays_where_the_definition_puts_it(rng, engine):
    q, *rest = make(rng, engine, (2, 7, 2, 5, 7), np.float64, gate="head")
    q = q.copy()
    q[1, 3, 0, 2] = np.nan
    mod = ENGINES[engine]
    want, _, _ = mod.run(q, *rest, scale=0.7, method="recurrent", chunk_size=4,
                         backend="numpy")
    got, _, _ = mod.run(q, *rest, scale=0.7, method="recurrent", chunk_size=4,
                        backend="cuda-emulated")
    assert np.isnan(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


# ---------------------------------------------------------------------------
# refusals and launch plans (no kernel runs)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("K, V, name", [(257, 7, "key size K"), (5, 300, "value size V")])
def test_head_sizes_beyond_256_are_refused(rng, K, V, name):
    q, k, v, g, beta, S0 = make(rng, "delta_rule", (1, 2, 1, K, V), np.float32)
    with pytest.raises(ValueError, match=rf"{name} of at most 256 .* got {max(K, V)}"):
        cuda_delta.forward(q, k, v, g, beta, S0, scale=1.0, method="recurrent",
                           chunk_size=16)


def test_other_methods_and_bad_chunks_are_refused(rng):
    arrays = make(rng, "mlstm", (1, 3, 1, 2, 2), np.float64)
    with pytest.raises(ValueError, match=r"method: the CUDA mLSTM kernels implement"):
        cuda_mlstm.forward(*arrays, scale=1.0, method="chunk", chunk_size=16)
    with pytest.raises(ValueError, match=r"chunk_size: expected a positive int, got 0"):
        cuda_mlstm.forward(*arrays, scale=1.0, method="recurrent", chunk_size=0)


def test_numpy_arrays_with_backend_cupy_are_refused(rng):
    arrays = make(rng, "gla", (1, 3, 1, 2, 2), np.float64, gate="key")
    with pytest.raises(TypeError, match=r"q: expected a CuPy array for backend='cupy'"):
        cuda_gla.forward(*arrays, scale=1.0, backend="cupy")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("K, V", [(256, 256), (5, 7), (40, 36), (1, 1)])
def test_plans_fit_cuda_limits(dtype, K, V):
    B, T, H = 2, 50, 3
    z = lambda *s: np.zeros(s, dtype)  # noqa: E731
    gkc = cuda_gla.KernelCache("cuda-emulated", z(B, T, H, K), z(B, T, H, K), z(B, T, H, V),
                               z(B, T, H, K), (B, T, H, K), None, {}, 1.0, 16,
                               z(B * H, 4, K, V))
    dkc = cuda_delta.KernelCache("cuda-emulated", z(B, T, H, K), z(B, T, H, K),
                                 z(B, T, H, V), z(B, T, H), z(B, T, H), True, {}, 1.0, 16,
                                 z(B * H, 4, K, V))
    mkc = cuda_mlstm.KernelCache("cuda-emulated", z(B, T, H, K), z(B, T, H, K),
                                 z(B, T, H, V), z(B, T, H), z(B, T, H), z(B * H),
                                 z(B, H, K), {}, 1.0, z(B, T, H, V), *(z(B * H, T),) * 3,
                                 z(B * H, T, K), z(B * H, T), z(B * H, T), 16,
                                 z(B * H, 4, K, V))
    S, st, do, m = z(B, H, K, V), z(B, H, K), z(B, T, H, V), z(B * H)
    plans = [
        cuda_gla.plan_forward(gkc, S, do, S), cuda_gla.plan_backward(gkc, do, S, np)[0],
        cuda_delta.plan_forward(dkc, S, do, S), cuda_delta.plan_backward(dkc, do, S, np)[0],
        cuda_mlstm.plan_forward(mkc, S, S, st),
        *cuda_mlstm.plan_backward(mkc, do, z(B * H, T), S, st, m, np)[:2],
    ]
    names = {n for mod in (cuda_gla, cuda_delta, cuda_mlstm) for n in mod.kernel_names(dtype)}
    for launch in (launch for plan in plans for launch in plan):
        assert launch.kernel in names
        assert np.prod(launch.block) <= min(_launch.MAX_THREADS, 64)
        assert launch.shared_mem <= cuda_gla.SHARED_LIMIT
        assert launch.grid[0] <= _launch.MAX_GRID_X
        for x in launch.args:  # arrays, or scalars with an explicit C type
            assert isinstance(x, (np.ndarray, np.generic)), type(x)


def test_columns_per_block():
    assert cuda_gla.columns(7, lambda VB: 0) == (8, 1, 0)
    assert cuda_gla.columns(36, lambda VB: 0) == (32, 2, 0)
    # K = 256 in double: the backward's shared rows shrink the block to fit 48 KiB
    VB, nblk, shared = cuda_gla.columns(256, cuda_gla.shared_backward(256, True, 8))
    assert shared <= cuda_gla.SHARED_LIMIT < cuda_gla.shared_backward(256, True, 8)(2 * VB)
    assert VB * nblk == 256


# ---------------------------------------------------------------------------
# ThreadSanitizer on the real kernels (a fresh interpreter with the runtime preloaded)
# ---------------------------------------------------------------------------

SANITIZED_RUN = """
import numpy as np
from minirec.ops import delta_rule, gla, mlstm
rng = np.random.default_rng(0)
B, T, H, K, V = 1, 11, 1, 3, 36   # two slices of 32 columns, 28 idle threads; 3 chunks of 4
r = lambda *s: rng.standard_normal(s)
cases = {
    "gla": (gla, (r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), -r(B, T, H, K) ** 2, r(H, K),
                  r(B, H, K, V))),
    "delta_rule": (delta_rule, (r(B, T, H, K), r(B, T, H, K) / 3, r(B, T, H, V),
                                -r(B, T, H) ** 2, rng.uniform(0, 2, (B, T, H)),
                                r(B, H, K, V))),
    "mlstm": (mlstm, (r(B, T, H, K), r(B, T, H, K), r(B, T, H, V), r(B, T, H), r(B, T, H),
                      (r(B, H, K, V), r(B, H, K), r(B, H)))),
}
leaves = lambda x: list(x) if isinstance(x, tuple) else [x]
for name, (mod, arrays) in cases.items():
    errs = []
    outs = {}
    for backend in ("numpy", "cuda-emulated"):
        o, S, c = mod.run(*arrays, scale=0.5, method="recurrent", chunk_size=4, backend=backend)
        do = np.ones_like(o)
        dS = tuple(np.ones_like(x) for x in S) if isinstance(S, tuple) else np.ones_like(S)
        outs[backend] = [o, *leaves(S)] + [x for v in mod.run_backward(c, do, dS).values()
                                           if v is not None for x in leaves(v)]
    for a, b in zip(outs["numpy"], outs["cuda-emulated"], strict=True):
        errs.append(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)))
    print(name, *errs)
"""


@needs_compiler
def test_thread_sanitizer_is_clean_on_the_matrix_kernels():
    proc = _build.run_sanitized("thread", SANITIZED_RUN)
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines] == list(ENGINES)
    for line in lines:  # and the answers are right
        assert all(float(err) < 1e-12 for err in line.split()[1:]), line


@needs_compiler
def test_thread_sanitizer_reports_a_removed_syncthreads(tmp_path):
    text = (_build.KERNEL_DIR / cuda_gla.SOURCE).read_text()
    variant = text.replace("__syncthreads();", "/* __syncthreads() removed */", 1)
    assert variant.count("__syncthreads();") == text.count("__syncthreads();") - 1
    path = tmp_path / "gla_nosync.cu"
    path.write_text(variant)
    patch = f"from minirec.kernels.cuda import gla as k; k.SOURCE = {str(path)!r}"
    code = SANITIZED_RUN.replace("from minirec.ops import delta_rule, gla, mlstm",
                                 "from minirec.ops import delta_rule, gla, mlstm\n" + patch)
    proc = _build.run_sanitized("thread", code)
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr
    assert "gla_nosync.cu" in proc.stderr
    assert proc.returncode == 66


# ---------------------------------------------------------------------------
# on a GPU, through CuPy (pytest -m gpu)
# ---------------------------------------------------------------------------

GPU_CASES = [("gla", {"gate": "key"}), ("gla", {"gate": "head", "rwkv": True}),
             ("gla", {}), ("delta_rule", {"gate": "head"}), ("delta_rule", {"beta": 2}),
             ("mlstm", {})]
GPU_IDS = [f"{e}-{'-'.join(map(str, o.values()))}" for e, o in GPU_CASES]


def _to(cupy, x):
    if x is None:
        return None
    return tuple(cupy.asarray(y) for y in x) if isinstance(x, tuple) else cupy.asarray(x)


def _get(x):
    return tuple(y.get() for y in x) if isinstance(x, tuple) else x.get()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 300, 3, 64, 64), (1, 70, 2, 130, 100), (3, 1, 2, 5, 7)],
                         ids=["64x64", "130x100", "T1"])
@pytest.mark.parametrize("engine, options", GPU_CASES, ids=GPU_IDS)
def test_gpu_matches_definition(rng, engine, options, shape, dtype):
    cupy = cupy_or_skip()
    mod, tol = ENGINES[engine], TOL[np.dtype(dtype)]
    arrays = make(rng, engine, shape, dtype, **options)
    o, S, cache = mod.run(*arrays, scale=0.3, method="recurrent", chunk_size=64,
                          backend="numpy")
    do, dstate = upstream(rng, o, S)
    expected = mod.run_backward(cache, do, dstate)
    o2, S2, cache2 = mod.run(*(_to(cupy, x) for x in arrays), scale=0.3, method="recurrent",
                             chunk_size=64, backend="cupy")
    assert isinstance(o2, cupy.ndarray)
    assert_close(o2.get(), o, tol, "o")
    for got, want in zip(leaves(_get(S2)), leaves(S), strict=True):
        assert_close(got, want, tol, "state")
    grads = mod.run_backward(cache2, cupy.asarray(do), _to(cupy, dstate))
    for name, want in expected.items():
        if want is None:
            assert grads[name] is None
            continue
        for got, w in zip(leaves(_get(grads[name])), leaves(want), strict=True):
            assert_close(got, w, tol, f"d{name}")


@pytest.mark.gpu
@needs_compiler
@pytest.mark.parametrize("engine, options", GPU_CASES, ids=GPU_IDS)
def test_gpu_and_emulator_round_alike(rng, engine, options):
    # --fmad=false / -ffp-contract=off and explicit fma: the kernels do the same operations in
    # the same order. Without exp (no gate, no mLSTM) the forward is bitwise the same; CUDA's
    # exp and the array module's reductions (the wrappers' sums) may differ in the last bit.
    cupy = cupy_or_skip()
    mod = ENGINES[engine]
    arrays = make(rng, engine, (1, 20, 2, 9, 40), np.float64, **options)
    outs = []
    for backend, conv in (("cupy", lambda x: _to(cupy, x)), ("cuda-emulated", lambda x: x)):
        o, S, c = mod.run(*(conv(x) for x in arrays), scale=0.3, method="recurrent",
                          chunk_size=8, backend=backend)
        dS = tuple(x * 0 + 1 for x in S) if isinstance(S, tuple) else S * 0 + 1
        grads = mod.run_backward(c, o * 0 + 1, dS)
        flat = [o, *leaves(S)] + [x for v in grads.values() if v is not None
                                  for x in leaves(v)]
        outs.append([x.get() if backend == "cupy" else x for x in flat])
    exp_free = engine != "mlstm" and "gate" not in options and "rwkv" not in options
    if exp_free:
        np.testing.assert_array_equal(outs[0][0], outs[1][0])  # o
        np.testing.assert_array_equal(outs[0][1], outs[1][1])  # final state
    for gpu, emulated in zip(*outs, strict=True):
        assert_close(gpu, emulated, 1e-13, "gpu vs emulated")
