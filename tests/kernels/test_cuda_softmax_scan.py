"""CUDA softmax-scan kernels (softmax_scan.cu) equal the NumPy definition.

On the CPU through the emulator (``cuda-emulated``): several blocks with spare
warps, idle lanes (V not a multiple of 32, V > 32), T = 1, a value size whose
shared memory leaves fewer warps per block; then what the contract tests
(tests/test_contract.py) do not reach — the empty prefix, no output gradient,
a partial final-state gradient, −inf scores, ties of the running max, scores of
±1e3, a NaN score followed by larger ones. Then ThreadSanitizer on the kernels
and, marked ``gpu``, the same through CuPy (also Aaren with CuPy parameters).
The compile checks of every family are test_cuda_compile.py.
"""

import numpy as np
import pytest

from minirec import registry
from minirec.cells import aaren
from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda import softmax_scan as sk
from minirec.ops import softmax_scan
from tests.conftest import TOL, assert_close
from tests.kernels.cuda_helpers import cupy_or_skip, needs_compiler

DTYPES = [np.float64, np.float32]
EMU = "cuda-emulated"

# (B, T, H, V) and the geometry each one exercises
CASES = [
    (3, 37, 3, 5),    # 9 rows: 3 blocks of 4 warps, 3 spare warps; 27 idle lanes per warp
    (2, 11, 1, 40),   # 2 rows: one block of 2 warps; two groups of values, 24 idle lanes
    (1, 1, 2, 33),    # T = 1
]
CASE_IDS = ["x".join(map(str, c)) for c in CASES]


def _inputs(rng, B, T, H, Vd, dtype, state=True, scale=1.0):
    """The registry's inputs (scores ~ N(0, 4), a finite state), scores times ``scale``."""
    x = registry.get("softmax_scan").make_inputs(rng, dtype, "small", B=B, T=T, heads=H, V=Vd)
    return (scale * x["s"]).astype(dtype), x["v"], x["initial_state"] if state else None


def _upstream(rng, o, state):
    return (rng.standard_normal(o.shape).astype(o.dtype),
            tuple(rng.standard_normal(x.shape).astype(o.dtype) for x in state))


def _compare(rng, s, v, init, do_none=False):
    """The definition with backend="cuda-emulated" against backend="numpy": outputs,
    final state and every gradient (non-finite entries must match exactly)."""
    tol = TOL[np.dtype(s.dtype)]
    with np.errstate(all="ignore"):
        ref_o, ref_st, ref_c = softmax_scan.forward(s, v, initial_state=init)
        o, st, c = softmax_scan.forward(s, v, initial_state=init, backend=EMU)
        do, dst = _upstream(rng, ref_o, ref_st)
        do = None if do_none else do
        ref_g = softmax_scan.backward(ref_c, do, dst)
        g = softmax_scan.backward(c, do, dst)
    got = {"o": o, "m": st[0], "u": st[1], "w": st[2], "ds": g["s"], "dv": g["v"],
           **{f"d{n}0": x for n, x in zip("muw", g["initial_state"])}}
    ref = {"o": ref_o, "m": ref_st[0], "u": ref_st[1], "w": ref_st[2], "ds": ref_g["s"],
           "dv": ref_g["v"], **{f"d{n}0": x for n, x in zip("muw", ref_g["initial_state"])}}
    for name, r in ref.items():
        assert got[name].dtype == r.dtype and got[name].shape == r.shape, name
        finite = np.isfinite(r)
        np.testing.assert_array_equal(np.isfinite(got[name]), finite, err_msg=name)
        np.testing.assert_array_equal(got[name][~finite], r[~finite], err_msg=name)  # ±inf
        if np.any(finite):
            assert_close(got[name][finite], r[finite], tol, name)
    return got


# ---------------------------------------------------------------------------
# emulated kernels against the definition
# ---------------------------------------------------------------------------

@needs_compiler
@pytest.mark.parametrize("state", [True, False], ids=["state", "empty-prefix"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, T, H, Vd", CASES, ids=CASE_IDS)
def test_emulated_matches_definition(rng, B, T, H, Vd, dtype, state):
    s, v, init = _inputs(rng, B, T, H, Vd, dtype, state)
    _compare(rng, s, v, init)


@needs_compiler
def test_large_value_size_leaves_fewer_warps_per_block(rng):
    # V = 1600 doubles: 12.8 KB of dw per warp, 3 warps per block; 50 values per lane
    s, v, init = _inputs(rng, 1, 3, 5, 1600, np.float64)
    assert sk.backward_rows_per_block(1600, 8) == 3
    _compare(rng, s, v, init)


@needs_compiler
def test_kernel_module_on_views(rng):
    # non-contiguous inputs through the kernel module itself (its signature is numba's)
    s, v, (m0, u0, w0) = _inputs(rng, 2, 9, 3, 4, np.float64)
    s_t = np.ascontiguousarray(s.transpose(0, 2, 1)).transpose(0, 2, 1)
    v_t = np.ascontiguousarray(v.transpose(3, 0, 1, 2)).transpose(1, 2, 3, 0)
    assert not s_t.flags.c_contiguous and not v_t.flags.c_contiguous
    ref_o, ref_st, ref_c = softmax_scan.forward(s, v, initial_state=(m0, u0, w0))
    o, st, states = sk.forward(s_t, v_t, (m0, u0, w0))
    assert_close(o, ref_o, 1e-10, "o")
    do, dst = _upstream(rng, o, st)
    ref_g = softmax_scan.backward(ref_c, do, dst)
    g = sk.backward(s_t, v_t, (m0, u0, w0), states, do, dst)
    assert_close(g["s"], ref_g["s"], 1e-10, "ds")
    assert_close(g["v"], ref_g["v"], 1e-10, "dv")


@needs_compiler
def test_without_output_gradient(rng):
    s, v, init = _inputs(rng, 2, 11, 3, 4, np.float64)
    _compare(rng, s, v, init, do_none=True)


@needs_compiler
def test_partial_final_state_gradient(rng):
    s, v, init = _inputs(rng, 2, 9, 3, 4, np.float64)
    _, _, ref_c = softmax_scan.forward(s, v, initial_state=init)
    _, _, c = softmax_scan.forward(s, v, initial_state=init, backend=EMU)
    dm = rng.standard_normal((2, 3))
    ref_g = softmax_scan.backward(ref_c, None, (dm, None, None))
    g = softmax_scan.backward(c, None, (dm, None, None))
    assert np.any(g["s"] != 0)  # the final max's gradient reaches one score per (b, h)
    assert_close(g["s"], ref_g["s"], 1e-10, "ds")
    for a, b in zip(g["initial_state"], ref_g["initial_state"]):
        assert_close(a, b, 1e-10, "dinitial_state")


@needs_compiler
def test_empty_prefix_gives_exactly_zero_initial_state_gradient(rng):
    s, v, _ = _inputs(rng, 2, 6, 3, 4, np.float64, state=False)
    got = _compare(rng, s, v, None)
    for name in ("dm0", "du0", "dw0"):
        assert np.all(got[name] == 0), name


@needs_compiler
@pytest.mark.parametrize("with_state", [False, True])
def test_minus_inf_scores_match_and_give_no_nan(rng, with_state):
    s, v, init = _inputs(rng, 2, 10, 3, 4, np.float64, state=with_state)
    s[:, :3, 0] = -np.inf      # a leading run of −inf (from the empty prefix: a plain mean)
    s[:, 5, :] = -np.inf       # a masked token after finite scores
    s[0, :, 2] = -np.inf       # a whole row of −inf
    got = _compare(rng, s, v, init)
    assert all(np.all(np.isfinite(got[k])) for k in ("o", "u", "w", "ds", "dv"))
    assert not np.any(got["dv"][:, 5, :2]) and not np.any(got["ds"][:, 5, :2])


@needs_compiler
def test_tied_scores_route_the_max_gradient_like_the_definition(rng):
    s, v, init = _inputs(rng, 2, 15, 3, 4, np.float64)
    s = rng.integers(-1, 2, s.shape).astype(np.float64)  # many ties with the running max
    init = (np.ones((2, 3)), init[1], init[2])             # ties with the initial state too
    _compare(rng, s, v, init)


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
def test_scores_of_a_thousand(rng, dtype):
    s, v, init = _inputs(rng, 2, 12, 3, 4, dtype, scale=500.0)
    got = _compare(rng, s, v, init)
    assert np.all(np.isfinite(got["o"]))


@needs_compiler
def test_a_nan_score_stays_in_the_running_max(rng):
    # after a NaN the scores grow: a max that forgot the NaN would give finite outputs again
    s, v, init = _inputs(rng, 2, 8, 2, 3, np.float64)
    s[0, 2, 1] = np.nan
    s[0, 3:, 1] = 50.0 + np.arange(5)
    got = _compare(rng, s, v, init)
    assert np.all(np.isnan(got["o"][0, 2:, 1])) and np.isnan(got["m"][0, 1])
    assert np.all(np.isfinite(got["o"][0, :, 0])) and np.all(np.isfinite(got["o"][1]))


# ---------------------------------------------------------------------------
# launch plans (no kernel runs)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("V, itemsize, expected", [
    (0, 8, 4), (5, 8, 4), (1536, 8, 4), (1600, 8, 3), (6144, 8, 1), (12288, 4, 1)])
def test_backward_rows_per_block(V, itemsize, expected):
    assert sk.backward_rows_per_block(V, itemsize) == expected


def test_a_value_size_beyond_shared_memory_is_refused():
    with pytest.raises(ValueError, match=r"v: expected a value size V of at most 6144 .*got 6145"):
        sk.backward_rows_per_block(6145, 8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, Vd", [(3, 3, 5), (1, 1, 2000), (5, 7, 64)])
def test_plans_launch_only_compiled_kernels_within_cuda_limits(dtype, B, H, Vd):
    T = 4
    z = lambda *shape: np.zeros(shape, dtype)
    plans = [
        sk.plan_forward(z(B, T, H), z(B, T, H, Vd), z(B, H), z(B, H), z(B, H, Vd),
                        z(B, T, H), z(B, T, H), z(B, T, H, Vd), z(B, T, H, Vd)),
        sk.plan_backward(z(B, T, H), z(B, T, H, Vd), z(B, H), z(B, H), z(B, H, Vd),
                         z(B, T, H), z(B, T, H), z(B, T, H, Vd), z(B, T, H, Vd), True,
                         z(B, H), z(B, H), z(B, H, Vd), z(B, T, H), z(B, T, H, Vd),
                         z(B, H), z(B, H), z(B, H, Vd)),
    ]
    for launch in (launch for plan in plans for launch in plan):
        assert launch.kernel in sk.kernel_names(dtype)
        warps = launch.block[0] // _launch.WARP
        assert launch.block[0] % _launch.WARP == 0 and launch.block[0] <= _launch.MAX_THREADS
        assert launch.grid[0] * warps >= B * H > (launch.grid[0] - 1) * warps  # one warp a row
        assert launch.shared_mem <= sk.SHARED_LIMIT
        for x in launch.args:  # arrays, or scalars with an explicit C type
            assert isinstance(x, (np.ndarray, np.int64, np.int32))


def test_complex_dtypes_have_no_kernels():
    with pytest.raises(TypeError, match=r"dtype: the softmax scan is real, expected .*got "
                                        r"complex128"):
        sk.kernel_names(np.complex128)


# ---------------------------------------------------------------------------
# ThreadSanitizer on the kernels (a fresh interpreter with the runtime preloaded)
# ---------------------------------------------------------------------------

SANITIZED_RUN = """
import numpy as np
from minirec import registry
from minirec.kernels.cuda import softmax_scan as sk
from minirec.ops import softmax_scan
rng = np.random.default_rng(0)
x = registry.get("softmax_scan").make_inputs(rng, np.float64, "small", B=3, T=6, heads=2, V=37)
s, v, init = x["s"], x["v"], x["initial_state"]
ref_o, ref_st, ref_c = softmax_scan.forward(s, v, initial_state=init)
do = rng.standard_normal(ref_o.shape)
dst = tuple(rng.standard_normal(a.shape) for a in ref_st)
ref_g = softmax_scan.backward(ref_c, do, dst)
o, st, states = sk.forward(s, v, init)   # 6 rows: 2 blocks of 4 warps, 2 spare
g = sk.backward(s, v, init, states, do, dst)
print(float(np.abs(o - ref_o).max()), float(np.abs(g["s"] - ref_g["s"]).max()),
      float(np.abs(g["v"] - ref_g["v"]).max()),
      *(float(np.abs(a - b).max()) for a, b in zip(g["initial_state"], ref_g["initial_state"])))
"""


@needs_compiler
def test_thread_sanitizer_is_clean_on_the_softmax_scan_kernels():
    proc = _build.run_sanitized("thread", SANITIZED_RUN)
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [float(e) for e in proc.stdout.split()]
    assert len(errors) == 6 and max(errors) < 1e-12, proc.stdout  # and the answers are right


# ---------------------------------------------------------------------------
# on a GPU, through CuPy (pytest -m gpu)
# ---------------------------------------------------------------------------

GPU_CASES = [(4, 1000, 8, 64), (3, 257, 5, 33), (2, 1, 3, 7), (1, 40, 2, 3000)]


@pytest.mark.gpu
@pytest.mark.parametrize("state", [True, False], ids=["state", "empty-prefix"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, T, H, Vd", GPU_CASES, ids=["x".join(map(str, c)) for c in GPU_CASES])
def test_gpu_matches_definition(rng, B, T, H, Vd, dtype, state):
    cupy = cupy_or_skip()
    s, v, init = _inputs(rng, B, T, H, Vd, dtype, state)
    ref_o, ref_st, ref_c = softmax_scan.forward(s, v, initial_state=init)
    do, dst = _upstream(rng, ref_o, ref_st)
    ref_g = softmax_scan.backward(ref_c, do, dst)
    gpu = lambda x: None if x is None else (tuple(cupy.asarray(a) for a in x)
                                            if isinstance(x, tuple) else cupy.asarray(x))
    o, st, c = softmax_scan.forward(gpu(s), gpu(v), initial_state=gpu(init), backend="cupy")
    assert isinstance(o, cupy.ndarray) and all(isinstance(a, cupy.ndarray) for a in st)
    g = softmax_scan.backward(c, gpu(do), gpu(dst))
    tol = TOL[np.dtype(dtype)]
    assert_close(o.get(), ref_o, tol, "o")
    np.testing.assert_array_equal(st[0].get(), ref_st[0])  # the max is exact
    for name, a, b in [("u", st[1], ref_st[1]), ("w", st[2], ref_st[2]), ("ds", g["s"], ref_g["s"]),
                       ("dv", g["v"], ref_g["v"]),
                       *((f"d{n}0", a, b) for n, a, b in zip("muw", g["initial_state"],
                                                             ref_g["initial_state"]))]:
        assert isinstance(a, cupy.ndarray), name
        assert_close(a.get(), b, tol, name)  # (absolute for the empty prefix's zeros)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_aaren_with_cupy_parameters(rng, dtype):
    cupy = cupy_or_skip()
    entry = registry.get("aaren")
    x = entry.make_inputs(rng, dtype, "medium")
    params, xs, state0 = x["params"], x["x"], x["state0"]
    y_r, st_r, c_r = aaren.forward(params, xs, state0)
    dy = rng.standard_normal(y_r.shape).astype(dtype)
    g_r = aaren.backward(params, c_r, dy)
    p_gpu = {k: cupy.asarray(a) for k, a in params.items()}
    y0, _, _ = aaren.forward(p_gpu, cupy.asarray(xs), None, backend="cupy")  # empty prefix
    assert_close(y0.get(), aaren.forward(params, xs, None)[0], TOL[np.dtype(dtype)], "y0")
    y, st, c = aaren.forward(p_gpu, cupy.asarray(xs), tuple(cupy.asarray(a) for a in state0),
                             backend="cupy")
    g = aaren.backward(p_gpu, c, cupy.asarray(dy))
    assert_close(y.get(), y_r, TOL[np.dtype(dtype)], "y")
    assert_close(st[2].get(), st_r[2], TOL[np.dtype(dtype)], "w_T")
    for k in ("q", "W_k", "W_v", "W_o", "b_o", "x"):
        assert isinstance(g[k], cupy.ndarray), k
        assert_close(g[k].get(), g_r[k], TOL[np.dtype(dtype)], f"d{k}")


@pytest.mark.gpu
@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_and_emulator_agree(rng, dtype):
    # the same operations in the same order; only exp (CUDA's vs the host's libm) and
    # nothing else may differ, by an ulp or so
    cupy = cupy_or_skip()
    s, v, init = _inputs(rng, 3, 200, 3, 37, dtype)
    o_gpu, _, _ = sk.forward(cupy.asarray(s), cupy.asarray(v), tuple(cupy.asarray(a) for a in init))
    o_emu, _, _ = sk.forward(s, v, init)
    assert_close(o_gpu.get(), o_emu, 1e-13 if dtype == np.float64 else 1e-5, "o")
