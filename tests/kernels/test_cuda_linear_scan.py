"""CUDA linear-scan kernels (linear_scan.cu) equal the NumPy definition.

On the CPU through the emulator (``cuda-emulated``): several blocks, idle tail
threads, T not a multiple of the chunk, T = 1, every dtype, real gates with
complex inputs. Then the sanitizers on the real kernel and, marked ``gpu``, the
same through CuPy. The compile checks of every family are test_cuda_compile.py.
"""

import numpy as np
import pytest

from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda import linear_scan as ls
from minirec.scan import linear
from tests.conftest import TOL, assert_close
from tests.kernels.cuda_helpers import cupy_or_skip, needs_compiler

DTYPES = [np.float64, np.float32, np.complex128, np.complex64]
ALL_NAMES = [name for dtype in DTYPES for name in ls.kernel_names(dtype)]

# (shape, method, chunk_size) and the geometry each one exercises
CASES = [
    ((2, 37, 3), "recurrent", None),      # 6 lanes: one block of 32, 26 idle tail threads
    ((2, 5, 150), "recurrent", None),     # 300 lanes: two blocks of 256, 212 idle
    ((2, 333, 2, 3), "chunked", 200),     # 2 chunks (200 + 133) of 64 threads x 4 steps:
                                          # two warps, 14 and 30 idle threads
    ((1, 300, 1), "chunked", None),       # one chunk of 300: 3 warps, 96 x 4 > 300
    ((2, 50, 3), "chunked", 7),           # 8 chunks, the last of 1 step; 1 warp, 25+ idle
    ((3, 1, 2), "chunked", None),         # T = 1
]
CASE_IDS = [f"{m}-{'x'.join(map(str, s))}-c{c}" for s, m, c in CASES]


def _randn(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def make(rng, shape, dtype):
    """Gates inside the unit disc (the state neither explodes nor vanishes), b, h0."""
    a = rng.uniform(0.5, 1.0, shape) * rng.choice([-1.0, 1.0], shape)
    if np.dtype(dtype).kind == "c":
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
    return a.astype(dtype), _randn(rng, shape, dtype), _randn(rng, shape[:1] + shape[2:], dtype)


def reference(rng, a, b, h0):
    """The definition's h, random dh and dstate, and its gradients."""
    h, h_T, cache = linear.forward(a, b, h0)
    dh, dstate = _randn(rng, h.shape, h.dtype), _randn(rng, h_T.shape, h.dtype)
    return h, dh, dstate, linear.backward(cache, dh, dstate)


def scan(a, b, h0, method, chunk_size):
    h, h_T, kernel = ls.forward(a, b, h0, method=method, chunk_size=chunk_size)
    assert kernel is None
    np.testing.assert_array_equal(h_T, h[:, -1])
    return h


def scan_grads(a, h, h0, dh, dstate, method, chunk_size):
    return ls.backward(a, h, h0, None, dh, dstate, method=method, chunk_size=chunk_size)


# ---------------------------------------------------------------------------
# emulated kernels against the definition
# ---------------------------------------------------------------------------

@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, method, chunk_size", CASES, ids=CASE_IDS)
def test_emulated_forward_matches_definition(rng, dtype, shape, method, chunk_size):
    a, b, h0 = make(rng, shape, dtype)
    ref, _, _ = linear.forward(a, b, h0)
    h = scan(a, b, h0, method, chunk_size)
    assert h.dtype == ref.dtype and h.shape == ref.shape
    assert_close(h, ref, TOL[np.dtype(dtype)], f"{method} h")


@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, method, chunk_size", CASES, ids=CASE_IDS)
def test_emulated_backward_matches_definition(rng, dtype, shape, method, chunk_size):
    a, b, h0 = make(rng, shape, dtype)
    h, dh, dstate, expected = reference(rng, a, b, h0)
    grads = scan_grads(a, h, h0, dh, dstate, method, chunk_size)
    assert set(grads) == set(expected)
    for name, e in expected.items():
        assert grads[name].shape == e.shape, name
        assert_close(grads[name], e, TOL[np.dtype(dtype)], f"{method} d{name}")


@needs_compiler
@pytest.mark.parametrize("method, chunk_size", [("recurrent", None), ("chunked", 16)])
def test_real_gates_with_complex_inputs(rng, method, chunk_size):
    a, _, _ = make(rng, (2, 40, 3), np.float64)
    b = _randn(rng, a.shape, np.complex128)
    h0 = _randn(rng, (2, 3), np.complex128)
    h, dh, dstate, expected = reference(rng, a, b, h0)
    assert_close(scan(a, b, h0, method, chunk_size), h, 1e-10, "h")
    grads = scan_grads(a, h, h0, dh, dstate, method, chunk_size)
    assert grads["a"].dtype == np.complex128  # the definition takes the real part of da
    assert_close(grads["a"].real, expected["a"], 1e-10, "da")
    assert_close(grads["b"], expected["b"], 1e-10, "db")
    assert_close(grads["initial_state"], expected["initial_state"], 1e-10, "dh0")


@needs_compiler
def test_inputs_are_not_mutated_and_may_be_views(rng):
    a, b, _ = make(rng, (2, 3, 40), np.float64)
    a, b = a.transpose(0, 2, 1), b.transpose(0, 2, 1)  # (2, 40, 3), not contiguous
    h0 = _randn(rng, (2, 3), np.float64)
    h, dh, dstate, expected = reference(rng, a, b, h0)
    arrays = (a, b, h0, dh, dstate)
    copies = [x.copy() for x in arrays]
    for x in arrays:
        x.flags.writeable = False
    out = scan(a, b, h0, "chunked", 16)
    grads = scan_grads(a, h, h0, dh, dstate, "chunked", 16)
    assert_close(out, h, 1e-10, "h")
    for name, e in expected.items():
        assert_close(grads[name], e, 1e-10, name)
    for x, c in zip(arrays, copies):
        np.testing.assert_array_equal(x, c)


@needs_compiler
def test_missing_upstream_gradients_are_zeros(rng):
    a, b, h0 = make(rng, (2, 9, 3), np.float64)
    h = scan(a, b, h0, "recurrent", None)
    for g in scan_grads(a, h, h0, None, None, "recurrent", None).values():
        np.testing.assert_array_equal(g, 0)


def test_numpy_arrays_with_backend_cupy_are_refused(rng):
    a, b, h0 = make(rng, (1, 4, 2), np.float64)
    with pytest.raises(TypeError, match=r"a: expected a CuPy array for backend='cupy'"):
        ls.forward(a, b, h0, method="recurrent", chunk_size=None, backend="cupy")


def test_unknown_method_is_refused(rng):
    a, b, h0 = make(rng, (1, 4, 2), np.float64)
    with pytest.raises(ValueError, match=r"method: the CUDA linear scan has kernels for"):
        ls.forward(a, b, h0, method="blelloch", chunk_size=None)


# ---------------------------------------------------------------------------
# launch plans (no kernel runs)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("T, chunk_size, expected", [
    (333, 200, (200, 2, 64, 4)),
    (300, None, (300, 1, 96, 4)),
    (50, 7, (7, 8, 32, 1)),
    (10**6, None, (1024, 977, 256, 4)),
    (10**8, None, (1526, 65531, 256, 6)),  # chunks stay under the grid's y limit
])
def test_chunk_geometry(T, chunk_size, expected):
    L, chunks, threads, items = ls.chunk_geometry(T, chunk_size)
    assert (L, chunks, threads, items) == expected
    assert threads % _launch.WARP == 0 and threads * items >= L and chunks * L >= T


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ls.METHODS)
def test_plans_launch_only_compiled_kernels_within_cuda_limits(dtype, method):
    B, T, R = 2, 3000, 5
    arr = lambda *shape: np.zeros(shape, dtype)
    plans = [
        ls.plan_forward(method, arr(B, T, R), arr(B, T, R), arr(B, R), arr(B, T, R), 512, np),
        ls.plan_backward(method, arr(B, T, R), arr(B, T, R), arr(B, R), arr(B, T, R),
                         arr(B, R), arr(B, T, R), arr(B, T, R), arr(B, R), 512, np),
    ]
    for launch in (launch for plan in plans for launch in plan):
        assert launch.kernel in ls.kernel_names(dtype)
        assert np.prod(launch.block) <= _launch.MAX_THREADS
        assert launch.block[0] % _launch.WARP == 0
        assert all(g <= _launch.MAX_GRID_YZ for g in launch.grid[1:])
        for x in launch.args:  # arrays, or scalars with an explicit C type
            assert isinstance(x, np.ndarray) or isinstance(x, np.int64)


# ---------------------------------------------------------------------------
# sanitizers on the real kernel (fresh interpreters with the runtime preloaded)
# ---------------------------------------------------------------------------

SANITIZED_RUN = """
import numpy as np
from pathlib import Path
from minirec.kernels.cuda import linear_scan as ls
from minirec.scan import linear
ls.SOURCE = {source!r}
rng = np.random.default_rng(0)
a = rng.uniform(-1, 1, (1, 170, 2))
b, dh = rng.standard_normal(a.shape), rng.standard_normal(a.shape)
h0, dstate = rng.standard_normal((1, 2)), rng.standard_normal((1, 2))
ref, _, cache = linear.forward(a, b, h0)
g = linear.backward(cache, dh, dstate)
for method in ("chunked", "recurrent"):  # chunks of 160: 2 chunks, 64 threads (2 warps)
    h, _, _ = ls.forward(a, b, h0, method=method, chunk_size=160)
    grads = ls.backward(a, h, h0, None, dh, dstate, method=method, chunk_size=160)
    print(method, float(np.abs(h - ref).max()),
          *(float(np.abs(grads[k] - g[k]).max()) for k in g))
"""


@needs_compiler
def test_thread_sanitizer_is_clean_on_the_scan_kernels():
    proc = _build.run_sanitized("thread", SANITIZED_RUN.format(source=ls.SOURCE))
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in proc.stdout.splitlines():  # and the answers are right
        assert all(float(err) < 1e-12 for err in line.split()[1:]), line


@needs_compiler
def test_thread_sanitizer_reports_a_removed_syncthreads(tmp_path):
    text = (_build.KERNEL_DIR / ls.SOURCE).read_text()
    variant = text.replace("__syncthreads();", "/* __syncthreads() removed */", 1)
    assert variant.count("__syncthreads();") == text.count("__syncthreads();") - 1
    path = tmp_path / "linear_scan_nosync.cu"
    path.write_text(variant)
    proc = _build.run_sanitized("thread", SANITIZED_RUN.format(source=str(path)))
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr
    assert "linear_scan_nosync.cu" in proc.stderr
    assert proc.returncode == 66


@needs_compiler
def test_address_sanitizer_is_clean_on_the_scan_kernels():
    proc = _build.run_sanitized("address", SANITIZED_RUN.format(source=ls.SOURCE))
    assert "AddressSanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---------------------------------------------------------------------------
# on a GPU, through CuPy (pytest -m gpu)
# ---------------------------------------------------------------------------



GPU_CASES = [((3, 1000, 5, 7), "recurrent", None), ((3, 1000, 5, 7), "chunked", None),
             ((2, 5000, 3), "chunked", 700), ((4, 1, 6), "chunked", None)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, method, chunk_size", GPU_CASES,
                         ids=[f"{m}-{'x'.join(map(str, s))}-c{c}" for s, m, c in GPU_CASES])
def test_gpu_matches_definition(rng, dtype, shape, method, chunk_size):
    cupy = cupy_or_skip()
    a, b, h0 = make(rng, shape, dtype)
    h, dh, dstate, expected = reference(rng, a, b, h0)
    a_, b_, h0_, dh_, dstate_ = (cupy.asarray(x) for x in (a, b, h0, dh, dstate))
    out = scan(a_, b_, h0_, method, chunk_size)
    assert isinstance(out, cupy.ndarray)
    assert_close(out.get(), h, TOL[np.dtype(dtype)], "h")
    grads = scan_grads(a_, out, h0_, dh_, dstate_, method, chunk_size)
    for name, e in expected.items():
        assert isinstance(grads[name], cupy.ndarray)
        assert_close(grads[name].get(), e, TOL[np.dtype(dtype)], f"d{name}")


@pytest.mark.gpu
@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method, chunk_size", [("recurrent", None), ("chunked", 64)])
def test_gpu_and_emulator_round_alike(rng, dtype, method, chunk_size):
    # --fmad=false / -ffp-contract=off and explicit fma: the same operations in the same order
    cupy = cupy_or_skip()
    a, b, h0 = make(rng, (2, 300, 3), dtype)
    gpu = scan(cupy.asarray(a), cupy.asarray(b), cupy.asarray(h0), method, chunk_size)
    np.testing.assert_array_equal(gpu.get(), scan(a, b, h0, method, chunk_size))
