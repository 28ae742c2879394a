"""CUDA selective-scan kernels (selective_scan.cu) equal the NumPy definition.

What the contract tests (tests/test_contract.py, which run both registry
entries on ``cuda-emulated``) do not reach: geometries with several channel
groups per batch row, idle tail channels, idle state lanes (N not a power of
2), 2, 4 and 8 states per lane (N > 32), several checkpoint chunks with T not
a multiple of the chunk, every subset of the optional arrays and Δ without
softplus; the launch plans against CUDA's limits; the sanitizers; and, marked
``gpu``, the same kernels, the definition and the Mamba block through CuPy.
The compile checks of every family are test_cuda_compile.py.
"""

import numpy as np
import pytest

from minirec import registry
from minirec.cells import mamba
from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda import selective_scan as kern
from minirec.ops import selective_scan as ss
from tests.conftest import TOL, assert_close
from tests.kernels.cuda_helpers import cupy_or_skip, needs_compiler

OPTIONAL = ("D", "z", "delta_bias", "initial_state")
GRAD_ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")

# (B, T, D, N, chunk) and the geometry each exercises (threads = G·P, see kern.geometry)
CASES = [
    (2, 37, 3, 4, None),   # P=4: one 32-thread block per row, 5 of its 8 channels idle; 1 chunk
    (2, 23, 40, 5, 6),     # P=8 (3 idle lanes per channel), G=32: 2 groups per row, the second
                           # with 24 idle channels; 4 chunks, the last of 5 steps
    (1, 9, 3, 40, 4),      # N=40: R=2 states per lane, a warp per channel; 3 chunks
    (1, 6, 2, 70, 4),      # R=4
    (1, 5, 2, 130, None),  # R=8, 32 threads per block
    (3, 1, 5, 3, None),    # T = 1
]
CASE_IDS = ["B{}-T{}-D{}-N{}-c{}".format(*c) for c in CASES]


def make(rng, B, T, D, N, dtype=np.float64, optional=OPTIONAL, softplus=True):
    """The registry's inputs with only the optional arrays in ``optional``;
    without softplus, Δ = delta (+ bias) is kept positive."""
    x = registry.get("selective_scan").make_inputs(rng, dtype, "small", B=B, T=T, D=D, N=N)
    if not softplus:
        x["delta"] = np.abs(x["delta"]) + dtype(0.1)
        x["delta_bias"] = np.abs(x["delta_bias"])
    return {k: (v if k not in OPTIONAL or k in optional else None) for k, v in x.items()}


def upstream(rng, x):
    """Random dy (B, T, D) and dstate (B, D, N) in the inputs' dtype."""
    B, T, D = x["u"].shape
    dtype = x["u"].dtype
    return (rng.standard_normal((B, T, D)).astype(dtype),
            rng.standard_normal((B, D, x["A"].shape[1])).astype(dtype))


def definition(x, softplus, dy, dstate):
    y, h_T, cache = ss.forward(**x, delta_softplus=softplus)
    return y, h_T, ss.backward(cache, dy, dstate)


def kernels(x, softplus, dy, dstate, chunk=None, backend=None):
    args = [x[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    y, h_T, kc = kern.forward(*args, softplus, x["initial_state"], chunk=chunk, backend=backend)
    return y, h_T, kern.backward(kc, dy, dstate)


def assert_same(got, ref, tol):
    (y, h_T, g), (ry, rh_T, rg) = got, ref
    assert y.dtype == ry.dtype and h_T.dtype == rh_T.dtype
    assert_close(y, ry, tol, "y")
    assert_close(h_T, rh_T, tol, "h_T")
    assert list(g) == [k for k in GRAD_ORDER if k in rg]  # the definition's keys, in its order
    for k in rg:
        assert g[k].shape == rg[k].shape and g[k].dtype == rg[k].dtype, k
        assert_close(g[k], rg[k], tol, k)


# ---------------------------------------------------------------------------
# emulated kernels against the definition
# ---------------------------------------------------------------------------

@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B, T, D, N, chunk", CASES, ids=CASE_IDS)
def test_emulated_equals_definition(rng, dtype, B, T, D, N, chunk):
    x = make(rng, B, T, D, N, dtype)
    dy, dstate = upstream(rng, x)
    assert_same(kernels(x, True, dy, dstate, chunk), definition(x, True, dy, dstate),
                TOL[np.dtype(dtype)])


@needs_compiler
@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("optional", [(), ("D",), ("z",), ("delta_bias",), ("initial_state",)],
                         ids=lambda o: "+".join(o) or "none")
def test_emulated_optional_arrays_and_softplus(rng, optional, softplus):
    x = make(rng, 2, 13, 5, 6, optional=optional, softplus=softplus)
    dy, dstate = upstream(rng, x)
    assert_same(kernels(x, softplus, dy, dstate, chunk=5), definition(x, softplus, dy, dstate),
                1e-10)


@needs_compiler
def test_emulated_through_the_definition_and_mamba(rng):
    """The seam: ``backend="cuda-emulated"`` reaches these kernels from the op
    and from the Mamba block, here with 40 inner channels (two channel groups)
    and the default chunk (T = 37 in 4 chunks in float64)."""
    x = make(rng, 2, 37, 40, 5)
    dy, dstate = upstream(rng, x)
    y, h_T, cache = ss.forward(**x, delta_softplus=True, backend="cuda-emulated")
    assert isinstance(cache.kernel, kern.KernelCache) and cache.kernel.geometry.groups == 2
    assert cache.kernel.geometry.chunks == 4
    assert_same((y, h_T, ss.backward(cache, dy, dstate)), definition(x, True, dy, dstate), 1e-10)

    params = mamba.init_params(rng, 20, 5)               # I = 40 inner channels
    xm = rng.standard_normal((2, 11, 20))
    state0 = (rng.standard_normal((2, 40, 3)), rng.standard_normal((2, 40, 5)))
    ref_y, ref_state, ref_cache = mamba.forward(params, xm, state0)
    y, state, c = mamba.forward(params, xm, state0, backend="cuda-emulated")
    assert_close(y, ref_y, 1e-10, "mamba y")
    for got, ref in zip(state, ref_state):
        assert_close(got, ref, 1e-10, "mamba state")
    dy = rng.standard_normal(y.shape)
    ref_g = mamba.backward(params, ref_cache, dy)
    g = mamba.backward(params, c, dy)
    for k in params:
        assert_close(g[k], ref_g[k], 1e-10, f"mamba d{k}")
    assert_close(g["x"], ref_g["x"], 1e-10, "mamba dx")


@needs_compiler
@pytest.mark.parametrize("where", ["u", "delta", "z", "dy"])
def test_non_finite_entries_match_the_definition_with_idle_lanes(rng, where):
    """A NaN (an inf for delta, whose softplus is then inf) at one (b, t, d): the
    outputs' and gradients' non-finite entries are the definition's, on a
    geometry with idle state lanes (N = 5 on 8 lanes) and idle channels (40
    channels in 2 groups of 32) that must not spread it."""
    x = make(rng, 2, 13, 40, 5)
    dy, dstate = upstream(rng, x)
    if where == "dy":
        dy[0, 6, 33] = np.nan
    else:
        x[where] = x[where].copy()
        x[where][0, 6, 33] = np.inf if where == "delta" else np.nan
    with np.errstate(all="ignore"):
        ref = definition(x, True, dy, dstate)
        got = kernels(x, True, dy, dstate, chunk=4)
    pairs = [("y", got[0], ref[0]), ("h_T", got[1], ref[1])]
    pairs += [(f"d{k}", got[2][k], ref[2][k]) for k in ref[2]]
    assert not all(np.all(np.isfinite(g)) for _, g, _ in pairs), "the NaN disappeared"
    for name, g, r in pairs:
        np.testing.assert_array_equal(~np.isfinite(g), ~np.isfinite(r), err_msg=name)
        ok = np.isfinite(r)
        assert_close(g[ok], r[ok], 1e-10, name)


@needs_compiler
def test_missing_upstream_gradients_are_zeros(rng):
    x = make(rng, 2, 9, 3, 4)
    y, h_T, kc = kern.forward(*(x[k] for k in ("u", "delta", "A", "B", "C", "D", "z",
                                                "delta_bias")), True, x["initial_state"])
    for name, g in kern.backward(kc, None, None).items():
        np.testing.assert_array_equal(g, 0, err_msg=name)


@needs_compiler
def test_inputs_are_not_mutated_and_may_be_views(rng):
    x = make(rng, 2, 11, 6, 3)
    # non-contiguous views of the same values
    x = {k: (None if v is None else np.moveaxis(np.moveaxis(v, -1, 0).copy(), 0, -1))
         for k, v in x.items()}
    dy, dstate = upstream(rng, x)
    ref = definition(x, True, dy, dstate)
    arrays = [v for v in (*x.values(), dy, dstate) if v is not None]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False
    assert_same(kernels(x, True, dy, dstate, chunk=4), ref, 1e-10)
    for a, c in zip(arrays, copies):
        np.testing.assert_array_equal(a, c)


@needs_compiler
def test_no_channels_gives_empty_outputs_and_zero_sums(rng):
    x = make(rng, 2, 7, 0, 3)
    dy, dstate = upstream(rng, x)
    assert_same(kernels(x, True, dy, dstate), definition(x, True, dy, dstate), 1e-10)


def test_numpy_arrays_with_backend_cupy_are_refused(rng):
    x = make(rng, 1, 4, 2, 3)
    with pytest.raises(TypeError, match=r"u: expected a CuPy array for backend='cupy'"):
        kernels(x, True, None, None, backend="cupy")


def test_too_many_states_and_too_long_chunks_are_refused():
    with pytest.raises(ValueError, match=r"A: .*expected at most 256 states.*got N = 257"):
        kern.geometry(10, 4, 257, np.float32)
    with pytest.raises(ValueError, match=r"chunk: expected 1 to \d+ steps.*got 1000"):
        kern.geometry(5000, 64, 16, np.float64, chunk=1000)


# ---------------------------------------------------------------------------
# launch plans (no kernel runs)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("N, expected", [(1, (1, 1)), (3, (1, 4)), (16, (1, 16)), (32, (1, 32)),
                                         (33, (2, 32)), (64, (2, 32)), (65, (4, 32)),
                                         (200, (8, 32)), (256, (8, 32))])
def test_states_per_lane_and_lanes_per_channel(N, expected):
    geo = kern.geometry(100, 1536, N, np.float32)
    assert (geo.R, geo.P) == expected
    assert geo.P * geo.R >= N and geo.R in kern.STATES_PER_LANE


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("D", [1, 3, 40, 1536])
@pytest.mark.parametrize("N", [1, 5, 16, 33, 100, 256])
def test_plans_launch_only_compiled_kernels_within_cuda_limits(dtype, D, N):
    B, T = 2, 3000
    x = {k: np.zeros(s, dtype) for k, s in {"u": (B, T, D), "delta": (B, T, D), "A": (D, N),
                                             "B": (B, T, N), "C": (B, T, N)}.items()}
    geo = kern.geometry(T, D, N, dtype)
    one = np.zeros(1, dtype)
    kc = kern.KernelCache(**x, D=one, z=one, delta_bias=one,
                          checkpoints=np.zeros((B, geo.chunks, D, N), dtype), has_D=False,
                          has_z=False, has_delta_bias=False, delta_softplus=True, geometry=geo,
                          backend="cuda-emulated")
    shapes = {"u": (B, T, D), "delta": (B, T, D), "A": (D, N), "B": (B, T, N), "C": (B, T, N),
              "initial_state": (B, D, N)}
    grads = {k: np.zeros(s, dtype) for k, s in shapes.items()}
    parts = {"A": np.zeros((B, D, N), dtype), "B": np.zeros((geo.groups, B, T, N), dtype),
             "C": np.zeros((geo.groups, B, T, N), dtype), "D": np.zeros((B, D), dtype),
             "delta_bias": np.zeros((B, D), dtype)}
    plans = kern.plan_forward(kc, grads["initial_state"], x["u"], grads["initial_state"])
    plans += kern.plan_backward(kc, x["u"], grads["initial_state"], grads, parts)
    itemsize = np.dtype(dtype).itemsize  # the longest chunk the shared memory allows
    assert geo.L == min(T, kern.MAX_CHUNK) or (
        kern.shared_backward(geo._replace(L=geo.L + 1), N, itemsize) > kern.SHARED_BUDGET)
    for launch in plans:
        assert launch.kernel in kern.kernel_names(dtype)
        assert launch.block[0] % _launch.WARP == 0 and launch.block[0] <= 256  # launch bounds
        assert launch.shared_mem <= kern.SHARED_BUDGET
        assert launch.grid[0] <= _launch.MAX_GRID_X
        for a in launch.args:  # arrays, or scalars with an explicit C type
            assert isinstance(a, (np.ndarray, np.int64, np.int32)), type(a)
    fwd, bwd = plans[0], plans[1]
    assert fwd.grid == bwd.grid == (B * geo.groups,)
    assert geo.groups * geo.G >= D > (geo.groups - 1) * geo.G  # every channel, once


# ---------------------------------------------------------------------------
# sanitizers on the real kernels (fresh interpreters with the runtime preloaded)
# ---------------------------------------------------------------------------

SANITIZED_RUN = """
import numpy as np
from minirec import registry
from minirec.kernels.cuda import selective_scan as kern
from minirec.ops import selective_scan as ss
kern.SOURCE = {source!r}
rng = np.random.default_rng(0)
names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# 40 channels of N = 5 (2 groups, idle lanes and channels), then N = 40 (2 states per lane)
for B, T, D, N, chunk in ((1, 11, 40, 5, 4), (1, 7, 2, 40, 3)):
    x = registry.get("selective_scan").make_inputs(rng, np.float64, "small", B=B, T=T, D=D, N=N)
    y, h_T, cache = ss.forward(**x, delta_softplus=True)
    dy, dstate = rng.standard_normal(y.shape), rng.standard_normal(h_T.shape)
    ref = ss.backward(cache, dy, dstate)
    y2, h2, kc = kern.forward(*(x[k] for k in names), True, x["initial_state"], chunk=chunk)
    g = kern.backward(kc, dy, dstate)
    print(N, float(np.abs(y2 - y).max()), float(np.abs(h2 - h_T).max()),
          *(float(np.abs(g[k] - ref[k]).max()) for k in ref))
"""


@needs_compiler
@pytest.mark.parametrize("sanitize", ["thread", "address"])
def test_sanitizers_are_clean_on_the_kernels(sanitize):
    proc = _build.run_sanitized(sanitize, SANITIZED_RUN.format(source=kern.SOURCE))
    assert "Sanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    for line in lines:  # and the answers are right
        assert all(float(err) < 1e-11 for err in line.split()[1:]), line


@needs_compiler
def test_thread_sanitizer_reports_the_removed_barrier_of_the_channel_sums(tmp_path):
    # the backward's one barrier per step, between the warps' dB/dC sums and their readers
    text = (_build.KERNEL_DIR / kern.SOURCE).read_text()
    barrier = "            __syncthreads();\n            // a bank is written again"
    assert text.count(barrier) == 1
    path = tmp_path / "selective_scan_nosync.cu"
    path.write_text(text.replace(barrier, "            // a bank is written again"))
    proc = _build.run_sanitized("thread", SANITIZED_RUN.format(source=str(path)))
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr
    assert "selective_scan_nosync.cu" in proc.stderr
    assert proc.returncode == 66


# ---------------------------------------------------------------------------
# on a GPU, through CuPy (pytest -m gpu)
# ---------------------------------------------------------------------------



def to_gpu(cupy, x):
    return {k: None if v is None else cupy.asarray(v) for k, v in x.items()}


GPU_CASES = [(2, 300, 1536, 16, None), (3, 301, 77, 5, 50), (2, 100, 24, 64, None),
             (1, 50, 3, 256, None), (4, 1, 8, 16, None)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B, T, D, N, chunk", GPU_CASES,
                         ids=["B{}-T{}-D{}-N{}-c{}".format(*c) for c in GPU_CASES])
def test_gpu_equals_definition(rng, dtype, B, T, D, N, chunk):
    cupy = cupy_or_skip()
    x = make(rng, B, T, D, N, dtype)
    dy, dstate = upstream(rng, x)
    ref = definition(x, True, dy, dstate)
    y, h_T, g = kernels(to_gpu(cupy, x), True, cupy.asarray(dy), cupy.asarray(dstate), chunk)
    assert all(isinstance(a, cupy.ndarray) for a in (y, h_T, *g.values()))
    assert_same((y.get(), h_T.get(), {k: v.get() for k, v in g.items()}), ref,
                TOL[np.dtype(dtype)])


@pytest.mark.gpu
@pytest.mark.parametrize("optional", [(), OPTIONAL], ids=["none", "all"])
def test_gpu_through_the_definition(rng, optional):
    """``backend="cupy"`` from the op: CuPy arrays in and out, ``dy``/``dstate``
    of ``None`` filled with zeros on the GPU."""
    cupy = cupy_or_skip()
    x = make(rng, 2, 200, 48, 16, optional=optional)
    dy, dstate = upstream(rng, x)
    xg = to_gpu(cupy, x)
    y, h_T, cache = ss.forward(**xg, delta_softplus=True, backend="cupy")
    assert isinstance(y, cupy.ndarray) and isinstance(h_T, cupy.ndarray)
    got = ss.backward(cache, cupy.asarray(dy), cupy.asarray(dstate))
    assert_same((y.get(), h_T.get(), {k: v.get() for k, v in got.items()}),
                definition(x, True, dy, dstate), 1e-10)
    y, h_T, cache = ss.forward(**xg, delta_softplus=True, backend="cupy")
    zero = ss.backward(cache, None, None)
    assert all(isinstance(v, cupy.ndarray) and not v.any() for v in zero.values())


@pytest.mark.gpu
@pytest.mark.parametrize("with_state", [True, False])
def test_gpu_mamba_block(rng, with_state):
    """The whole block with ``backend="cupy"``: its projections, conv and
    activations run as CuPy array code around the kernel, and match the NumPy
    definition (``state0=None`` allocates its zeros on the GPU)."""
    cupy = cupy_or_skip()
    params = mamba.init_params(rng, 32, 16)             # I = 64 inner channels
    x = rng.standard_normal((2, 150, 32))
    state0 = ((rng.standard_normal((2, 64, 3)), rng.standard_normal((2, 64, 16)))
              if with_state else None)
    ref_y, ref_state, ref_cache = mamba.forward(params, x, state0)
    dy = rng.standard_normal(ref_y.shape)
    dstate = (rng.standard_normal((2, 64, 3)), rng.standard_normal((2, 64, 16)))
    ref_g = mamba.backward(params, ref_cache, dy, dstate)
    p_gpu = {k: cupy.asarray(v) for k, v in params.items()}
    s_gpu = None if state0 is None else tuple(cupy.asarray(s) for s in state0)
    y, state, cache = mamba.forward(p_gpu, cupy.asarray(x), s_gpu, backend="cupy")
    assert isinstance(y, cupy.ndarray) and all(isinstance(s, cupy.ndarray) for s in state)
    assert_close(y.get(), ref_y, 1e-10, "y")
    for got, ref in zip(state, ref_state):
        assert_close(got.get(), ref, 1e-10, "state")
    g = mamba.backward(p_gpu, cache, cupy.asarray(dy), tuple(cupy.asarray(d) for d in dstate))
    for k in params:
        assert isinstance(g[k], cupy.ndarray)
        assert_close(g[k].get(), ref_g[k], 1e-10, f"d{k}")
    assert_close(g["x"].get(), ref_g["x"], 1e-10, "dx")
    for got, ref in zip(g["state0"], ref_g["state0"]):
        assert_close(got.get(), ref, 1e-10, "dstate0")


@pytest.mark.gpu
@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gpu_and_emulator_agree_and_the_gpu_repeats_itself(rng, dtype):
    # the same operations in the same order (explicit fma, --fmad=false / -ffp-contract=off,
    # no atomics); only exp/log1p may differ in the last bit (CUDA's vs the C library's)
    cupy = cupy_or_skip()
    x = make(rng, 2, 60, 40, 5, dtype)
    dy, dstate = upstream(rng, x)
    emulated = kernels(x, True, dy, dstate, chunk=16)
    xg, dyg, dsg = to_gpu(cupy, x), cupy.asarray(dy), cupy.asarray(dstate)
    first = kernels(xg, True, dyg, dsg, chunk=16)
    second = kernels(xg, True, dyg, dsg, chunk=16)
    tol = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 1e-5}[np.dtype(dtype)]
    assert_same((first[0].get(), first[1].get(), {k: v.get() for k, v in first[2].items()}),
                emulated, tol)
    for a, b in zip((*first[:2], *first[2].values()), (*second[:2], *second[2].values())):
        np.testing.assert_array_equal(a.get(), b.get())
