"""CUDA matrix-scan kernels (matrix_scan.cu) equal the NumPy definition.

On the CPU through the emulator (``cuda-emulated``): several blocks, idle tail
threads, threads owning two state entries, d = 1, T = 1, every dtype, real
matrices with complex inputs, missing upstream gradients, non-contiguous
inputs. Then the sanitizers (ThreadSanitizer clean, and reporting a removed
``__syncthreads`` of the double-buffered state; AddressSanitizer clean) and,
marked ``gpu``, the same through CuPy. The compile checks of every family are
test_cuda_compile.py.
"""

import numpy as np
import pytest

from minirec import registry
from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda import matrix_scan as mk
from minirec.scan import matrix
from tests.conftest import TOL, assert_close
from tests.kernels.cuda_helpers import cupy_or_skip, needs_compiler

ENTRY = registry.get("scan.matrix")
DTYPES = [np.float64, np.float32, np.complex128, np.complex64]
EMU = "cuda-emulated"

# (B, T, d) and the geometry each one exercises
CASES = [
    (3, 7, 37),   # 3 blocks of 64 threads: 27 idle; d > one warp
    (2, 6, 3),    # 2 blocks of 32 threads, 29 idle
    (2, 1, 4),    # T = 1
    (3, 5, 1),    # d = 1
]
CASE_IDS = ["x".join(map(str, c)) for c in CASES]


def _inputs(rng, dtype, B, T, d):
    """``(A, b, h0)`` from the registry (``‖A_t‖ ≤ 1``)."""
    x = ENTRY.make_inputs(rng, dtype, "small", B=B, T=T, D=d)
    return x["A"], x["b"], x["initial_state"]


def _randn(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def _compare(rng, A, b, h0, tol, *, dh=True, dstate=True):
    """The definition with backend="cuda-emulated" against backend="numpy"."""
    ref, ref_T, ref_c = matrix.forward(A, b, h0)
    h, h_T, c = matrix.forward(A, b, h0, backend=EMU)
    assert h.dtype == ref.dtype and h.shape == ref.shape
    assert_close(h, ref, tol, "h")
    np.testing.assert_array_equal(h_T, h[:, -1])
    dh = _randn(rng, h.shape, h.dtype) if dh else None
    dstate = _randn(rng, h_T.shape, h.dtype) if dstate else None
    ref_g, g = matrix.backward(ref_c, dh, dstate), matrix.backward(c, dh, dstate)
    assert set(g) == set(ref_g)
    for k in ref_g:
        assert g[k].dtype == ref_g[k].dtype and g[k].shape == ref_g[k].shape, k
        assert_close(g[k], ref_g[k], tol, f"d{k}")
    return h, g


# ---------------------------------------------------------------------------
# emulated kernels against the definition
# ---------------------------------------------------------------------------

@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, T, d", CASES, ids=CASE_IDS)
def test_emulated_matches_definition(rng, dtype, B, T, d):
    _compare(rng, *_inputs(rng, dtype, B, T, d), TOL[np.dtype(dtype)])


@needs_compiler
@pytest.mark.parametrize("dtype", [np.float64, np.complex64])
def test_threads_owning_two_state_entries(rng, monkeypatch, dtype):
    # blocks of 32 threads for d = 45: threads 0..12 own entries i and i + 32
    monkeypatch.setattr(mk, "MAX_BLOCK", 32)
    assert mk.block_geometry(2, 45, 8)[1] == (32,)
    _compare(rng, *_inputs(rng, dtype, 2, 6, 45), TOL[np.dtype(dtype)])


@needs_compiler
def test_real_matrices_with_complex_inputs(rng):
    A, _, _ = _inputs(rng, np.float64, 2, 9, 5)
    _, b, h0 = _inputs(rng, np.complex128, 2, 9, 5)
    _, g = _compare(rng, A, b, h0, 1e-10)
    assert g["A"].dtype == np.float64  # ∂L/∂A of a real A is real


@needs_compiler
@pytest.mark.parametrize("dh, dstate", [(True, False), (False, True), (False, False)])
def test_missing_upstream_gradients_are_zeros(rng, dh, dstate):
    _, g = _compare(rng, *_inputs(rng, np.float64, 2, 5, 4), 1e-10, dh=dh, dstate=dstate)
    if not (dh or dstate):
        for k, x in g.items():
            np.testing.assert_array_equal(x, 0, err_msg=k)


@needs_compiler
def test_no_initial_state_is_zeros(rng):
    A, b, _ = _inputs(rng, np.complex128, 2, 5, 4)
    _compare(rng, A, b, None, 1e-10)


@needs_compiler
def test_kernel_module_on_views(rng):
    # non-contiguous inputs through the kernel module itself (its signature is numba's)
    A, b, h0 = _inputs(rng, np.float64, 2, 6, 4)
    A_t = np.ascontiguousarray(np.swapaxes(A, -1, -2)).swapaxes(-1, -2)
    b_t = np.ascontiguousarray(b.transpose(2, 0, 1)).transpose(1, 2, 0)
    assert not A_t.flags.c_contiguous and not b_t.flags.c_contiguous
    ref, _, ref_c = matrix.forward(A, b, h0)
    h, _, kernel = mk.forward(A_t, b_t, h0, method="recurrent")
    assert kernel is None
    assert_close(h, ref, 1e-10, "h")
    dh = _randn(rng, h.shape, h.dtype)
    ref_g = matrix.backward(ref_c, dh, None)
    g = mk.backward(A_t, h, h0, None, dh.T.copy().T, None, method="recurrent")
    for k in ref_g:
        assert_close(g[k], ref_g[k], 1e-10, f"d{k}")


def test_only_the_recurrent_method_has_kernels(rng):
    A, b, h0 = _inputs(rng, np.float64, 1, 3, 2)
    with pytest.raises(ValueError, match=r"method: the CUDA matrix scan has kernels for "
                                         r"\('recurrent',\), got 'blelloch'"):
        mk.forward(A, b, h0, method="blelloch")
    with pytest.raises(ValueError, match=r"backend='cuda-emulated' supports \('recurrent',\), "
                                         r"got 'blelloch'"):
        matrix.forward(A, b, h0, method="blelloch", backend=EMU)


# ---------------------------------------------------------------------------
# launch plans (no kernel runs)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("B, d, itemsize, expected", [
    (3, 37, 8, ((3,), (64,), 592)),
    (1, 1, 16, ((1,), (32,), 32)),
    (2, 3000, 4, ((2,), (1024,), 24000)),
    (5, 1536, 16, ((5,), (1024,), 49152)),
])
def test_block_geometry(B, d, itemsize, expected):
    assert mk.block_geometry(B, d, itemsize) == expected


def test_a_state_beyond_shared_memory_is_refused():
    with pytest.raises(ValueError, match=r"A: expected a state size d of at most 1536 .*got 1537"):
        mk.block_geometry(1, 1537, 16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plans_launch_only_compiled_kernels_within_cuda_limits(dtype):
    B, T, d = 3, 4, 100
    z = lambda *shape: np.zeros(shape, dtype)
    plans = [mk.plan_forward(z(B, T, d, d), z(B, T, d), z(B, d), z(B, T, d)),
             mk.plan_backward(z(B, T, d, d), z(B, T, d), z(B, d), z(B, T, d), z(B, d),
                              z(B, T, d, d), z(B, T, d), z(B, d))]
    for launch in (launch for plan in plans for launch in plan):
        assert launch.kernel in mk.kernel_names(dtype)
        assert launch.grid == (B,)
        assert launch.block[0] % _launch.WARP == 0 and launch.block[0] <= _launch.MAX_THREADS
        assert launch.shared_mem == 2 * d * np.dtype(dtype).itemsize <= mk.SHARED_LIMIT
        for x in launch.args:  # arrays, or scalars with an explicit C type
            assert isinstance(x, (np.ndarray, np.int64))


# ---------------------------------------------------------------------------
# sanitizers on the real kernels (fresh interpreters with the runtime preloaded)
# ---------------------------------------------------------------------------

SANITIZED_RUN = """
import numpy as np
from minirec import registry
from minirec.kernels.cuda import matrix_scan as mk
from minirec.scan import matrix
mk.SOURCE = {source!r}
rng = np.random.default_rng(0)
x = registry.get("scan.matrix").make_inputs(rng, np.float64, "small", B=2, T=5, D=37)
A, b, h0 = x["A"], x["b"], x["initial_state"]
ref, _, cache = matrix.forward(A, b, h0)
dh, dstate = rng.standard_normal(ref.shape), rng.standard_normal(h0.shape)
g = matrix.backward(cache, dh, dstate)
h, _, _ = mk.forward(A, b, h0, method="recurrent")   # 2 blocks of 64 threads, 27 idle
grads = mk.backward(A, h, h0, None, dh, dstate, method="recurrent")
print(float(np.abs(h - ref).max()), *(float(np.abs(grads[k] - g[k]).max()) for k in g))
"""


@needs_compiler
@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_sanitizers_are_clean_on_the_matrix_scan_kernels(sanitizer):
    proc = _build.run_sanitized(sanitizer, SANITIZED_RUN.format(source=mk.SOURCE))
    assert "Sanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [float(e) for e in proc.stdout.split()]
    assert len(errors) == 4 and max(errors) < 1e-12, proc.stdout  # and the answers are right


@needs_compiler
def test_thread_sanitizer_reports_the_removed_barrier_of_the_double_buffer(tmp_path):
    # without the per-step __syncthreads of the forward, a thread reads h_{t-1}[j] from
    # shared memory while thread j writes h_t[j] (or h_{t+1}[j]) into the same buffers
    text = (_build.KERNEL_DIR / mk.SOURCE).read_text()
    barrier = "__syncthreads();  // h_t complete before step t + 1 reads it"
    assert text.count(barrier) == 1
    path = tmp_path / "matrix_scan_nosync.cu"
    path.write_text(text.replace(barrier, "/* barrier removed */"))
    proc = _build.run_sanitized("thread", SANITIZED_RUN.format(source=str(path)))
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr
    assert "matrix_scan_nosync.cu" in proc.stderr
    assert proc.returncode == 66


# ---------------------------------------------------------------------------
# on a GPU, through CuPy (pytest -m gpu)
# ---------------------------------------------------------------------------

GPU_CASES = [(4, 500, 64), (3, 200, 200), (1, 6, 1100), (5, 1, 3)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, T, d", GPU_CASES, ids=["x".join(map(str, c)) for c in GPU_CASES])
def test_gpu_matches_definition(rng, dtype, B, T, d):
    cupy = cupy_or_skip()
    A, b, h0 = _inputs(rng, dtype, B, T, d)
    ref, ref_T, ref_c = matrix.forward(A, b, h0)
    dh, dstate = _randn(rng, ref.shape, dtype), _randn(rng, ref_T.shape, dtype)
    ref_g = matrix.backward(ref_c, dh, dstate)
    h, h_T, c = matrix.forward(cupy.asarray(A), cupy.asarray(b), cupy.asarray(h0),
                               backend="cupy")
    assert isinstance(h, cupy.ndarray) and isinstance(h_T, cupy.ndarray)
    g = matrix.backward(c, cupy.asarray(dh), cupy.asarray(dstate))
    tol = TOL[np.dtype(dtype)]
    assert_close(h.get(), ref, tol, "h")
    for k in ref_g:
        assert isinstance(g[k], cupy.ndarray), k
        assert g[k].dtype == ref_g[k].dtype, k
        assert_close(g[k].get(), ref_g[k], tol, f"d{k}")


@pytest.mark.gpu
def test_gpu_without_initial_state_or_upstream_gradients(rng):
    cupy = cupy_or_skip()
    A, _, _ = _inputs(rng, np.float64, 2, 30, 8)
    _, b, _ = _inputs(rng, np.complex128, 2, 30, 8)  # real A, complex b
    ref, _, ref_c = matrix.forward(A, b)
    h, _, c = matrix.forward(cupy.asarray(A), cupy.asarray(b), backend="cupy")
    assert_close(h.get(), ref, 1e-10, "h")
    dh = _randn(rng, ref.shape, ref.dtype)
    ref_g, g = matrix.backward(ref_c, dh), matrix.backward(c, cupy.asarray(dh))
    assert g["A"].dtype == np.float64
    for k in ref_g:
        assert_close(g[k].get(), ref_g[k], 1e-10, f"d{k}")


@pytest.mark.gpu
@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_and_emulator_round_alike(rng, dtype):
    # --fmad=false / -ffp-contract=off and explicit fma: the same operations in the same order
    cupy = cupy_or_skip()
    A, b, h0 = _inputs(rng, dtype, 2, 40, 37)
    h_gpu, _, _ = mk.forward(cupy.asarray(A), cupy.asarray(b), cupy.asarray(h0),
                             method="recurrent")
    h_emu, _, _ = mk.forward(A, b, h0, method="recurrent")
    np.testing.assert_array_equal(h_gpu.get(), h_emu)
    dh = _randn(rng, h_emu.shape, h_emu.dtype)
    g_gpu = mk.backward(cupy.asarray(A), h_gpu, cupy.asarray(h0), None, cupy.asarray(dh),
                        None, method="recurrent")
    g_emu = mk.backward(A, h_emu, h0, None, dh, None, method="recurrent")
    for k in g_emu:
        np.testing.assert_array_equal(g_gpu[k].get(), g_emu[k], err_msg=k)
