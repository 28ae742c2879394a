"""The CUDA emulator (minirec/kernels/cuda/emulation) and the build around it.

Tiny kernels, each checking one piece of CUDA semantics the family kernels rely
on: thread and block indices, __syncthreads with static __shared__ memory,
warp shuffles, dynamic shared memory, tail threads leaving early; then the
launch checks, the disk cache, the compile checks and the sanitizers.
Emulated threads are slow (one host thread per CUDA thread), so shapes are small.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from minirec.kernels.cuda import _build

pytestmark = pytest.mark.skipif(_build.host_compiler() is None,
                                reason="no C++20 compiler ($CXX or g++) for cuda-emulated")

KERNELS = r"""
#include "common.h"

// y[i] = x[the mirror of i inside its block], through static shared memory
__global__ void block_reverse(const float* x, float* y, long long n) {
    __shared__ float s[64];
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    s[threadIdx.x] = i < n ? x[i] : -1.0f;
    __syncthreads();
    if (i < n) y[i] = s[blockDim.x - 1 - threadIdx.x];
}

// every thread writes threadIdx, blockIdx, blockDim, gridDim at its global linear index
__global__ void who_am_i(long long* out) {
    const long long block =
        blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * (long long)blockIdx.z);
    const long long thread =
        threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * (long long)threadIdx.z);
    long long* o = out + 12 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
    const unsigned v[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y,
                            blockIdx.z, blockDim.x, blockDim.y, blockDim.z, gridDim.x,
                            gridDim.y, gridDim.z};
    for (int k = 0; k < 12; ++k) o[k] = v[k];
}

// out (8, blockDim.x): the eight shuffles below of v = 1.5 * threadIdx.x
template <class F>
__global__ void shuffles(F* out) {
    const int t = threadIdx.x, n = blockDim.x;
    const F v = F(t) * F(1.5);
    const unsigned all = 0xffffffffu;
    out[0 * n + t] = __shfl_up_sync(all, v, 3);
    out[1 * n + t] = __shfl_down_sync(all, v, 5);
    out[2 * n + t] = __shfl_xor_sync(all, v, 6);
    out[3 * n + t] = __shfl_sync(all, v, 7);
    out[4 * n + t] = __shfl_up_sync(all, v, 2, 8);
    out[5 * n + t] = __shfl_down_sync(all, v, 3, 16);
    out[6 * n + t] = __shfl_xor_sync(all, v, 9, 8);
    out[7 * n + t] = __shfl_sync(all, v, 5, 16);
}

// sums[b] = sum of block b's slice of x, a tree reduction in dynamic shared memory
__global__ void block_sums(const double* x, double* sums, long long n) {
    MINIREC_DYNAMIC_SHARED(double, buf);
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : 0.0;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
        if (threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) sums[blockIdx.x] = buf[0];
}

// the tail threads return before the __syncthreads the others meet at
__global__ void early_exit(const float* x, float* y, long long n) {
    __shared__ float s[128];
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    s[threadIdx.x] = 2.0f * x[i];
    __syncthreads();
    y[i] = s[threadIdx.x] + 1.0f;
}

// y[i] = 1 for i < bound: one element past the end of y when bound = n + 1
__global__ void fill(float* y, long long bound) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < bound) y[i] = 1.0f;
}
"""
NAMES = ("block_reverse", "who_am_i", "shuffles<float>", "shuffles<double>", "block_sums",
         "early_exit", "fill")


@pytest.fixture(scope="module")
def kernels_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cu") / "emulator_test_kernels.cu"
    path.write_text(KERNELS)
    return path


@pytest.fixture(scope="module")
def mod(kernels_file):
    return _build.load(kernels_file, NAMES, "cuda-emulated")


def expected_block_reverse(x, block):
    n = x.size
    y = np.empty_like(x)
    for i in range(n):
        b, t = divmod(i, block)
        j = b * block + block - 1 - t
        y[i] = x[j] if j < n else -1.0
    return y


# ---------------------------------------------------------------------------
# CUDA semantics
# ---------------------------------------------------------------------------

def test_static_shared_memory_is_per_block_and_synchronised(mod, rng):
    n, block = 150, 64  # three blocks, the last one with 42 idle threads
    x = rng.standard_normal(n).astype(np.float32)
    y = np.zeros(n, np.float32)
    mod.get_function("block_reverse")((3,), (block,), (x, y, np.int64(n)))
    np.testing.assert_array_equal(y, expected_block_reverse(x, block))


def test_thread_and_block_indices_in_three_dimensions(mod):
    block, grid = (4, 3, 2), (2, 3, 1)
    nthreads = np.prod(block) * np.prod(grid)
    out = np.full((nthreads, 12), -1, np.int64)
    mod.get_function("who_am_i")(grid, block, (out,))
    rows = []
    for bz in range(grid[2]):
        for by in range(grid[1]):
            for bx in range(grid[0]):
                for tz in range(block[2]):
                    for ty in range(block[1]):
                        for tx in range(block[0]):
                            rows.append((tx, ty, tz, bx, by, bz, *block, *grid))
    np.testing.assert_array_equal(out, np.array(rows))


def expected_shuffles(v):
    t = np.arange(v.size)
    lane, base = t % 32, t - t % 32
    xor9 = lane ^ 9  # a later group of 8 lanes gives the thread its own value back
    return np.stack([
        np.where(lane >= 3, v[t - 3], v),
        np.where(lane + 5 < 32, v[np.minimum(t + 5, v.size - 1)], v),
        v[base + (lane ^ 6)],
        v[base + 7],
        np.where(lane % 8 >= 2, v[t - 2], v),
        np.where(lane % 16 + 3 < 16, v[np.minimum(t + 3, v.size - 1)], v),
        np.where(xor9 // 8 > lane // 8, v, v[base + xor9 % 32]),
        v[base + lane // 16 * 16 + 5],
    ])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_warp_shuffles_follow_cuda(mod, dtype):
    n = 64  # two warps: lanes never read across a warp
    out = np.zeros((8, n), dtype)
    name = f"shuffles<{_build.ctype(dtype)}>"
    mod.get_function(name)((1,), (n,), (out,))
    np.testing.assert_array_equal(out, expected_shuffles(np.arange(n, dtype=dtype) * 1.5))


def test_dynamic_shared_memory(mod, rng):
    n, block = 200, 64
    x = rng.standard_normal(n)
    sums = np.zeros(4)
    mod.get_function("block_sums")((4,), (block,), (x, sums, np.int64(n)),
                                   shared_mem=block * 8)
    expected = [x[k * block:(k + 1) * block].sum() for k in range(4)]
    np.testing.assert_allclose(sums, expected, rtol=1e-12)


def test_threads_that_return_early_do_not_hold_up_a_barrier(mod, rng):
    n = 100  # block of 128: 28 threads return before __syncthreads
    x = rng.standard_normal(n).astype(np.float32)
    y = np.zeros(n, np.float32)
    mod.get_function("early_exit")((1,), (128,), (x, y, np.int64(n)))
    np.testing.assert_array_equal(y, 2 * x + 1)


# ---------------------------------------------------------------------------
# launch checks: what a GPU would get wrong silently is refused here
# ---------------------------------------------------------------------------

def test_scalar_of_the_wrong_size_is_refused(mod):
    y = np.zeros(8, np.float32)
    with pytest.raises(TypeError,
                       match=r"argument 1: expected a 8-byte scalar .* got a 4-byte int32"):
        mod.get_function("fill")((1,), (32,), (y, np.int32(8)))


def test_array_for_a_scalar_is_refused(mod):
    y = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match=r"argument 1: expected a 8-byte scalar .* got an array"):
        mod.get_function("fill")((1,), (32,), (y, y))


def test_python_scalar_is_refused(mod):
    y = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match=r"argument 1: expected a NumPy array or a NumPy scalar"):
        mod.get_function("fill")((1,), (32,), (y, 8))


def test_wrong_number_of_arguments_is_refused(mod):
    y = np.zeros(8, np.float32)
    with pytest.raises(RuntimeError, match="number of arguments"):
        mod.get_function("fill")((1,), (32,), (y,))


def test_non_contiguous_array_is_refused(mod):
    y = np.zeros(16, np.float32)[::2]
    with pytest.raises(ValueError, match="argument 0: expected a C-contiguous array"):
        mod.get_function("fill")((1,), (32,), (y, np.int64(8)))


@pytest.mark.parametrize("grid, block, shared_mem, message", [
    ((1,), (1025,), 0, "block: expected 1..1024 threads"),
    ((1,), (32, 32, 2), 0, "block: expected 1..1024 threads"),
    ((0,), (32,), 0, "grid: expected positive sizes"),
    ((1, 65536), (32,), 0, "grid: expected positive sizes"),
    ((1,), (32,), 49 * 1024, "shared_mem: expected at most 48 KiB"),
])
def test_launch_limits_are_cuda_s(mod, grid, block, shared_mem, message):
    y = np.zeros(8, np.float32)
    with pytest.raises(RuntimeError, match=message):
        mod.get_function("fill")(grid, block, (y, np.int64(0)), shared_mem=shared_mem)


def test_unknown_kernel_name_is_refused(mod):
    with pytest.raises(ValueError, match=r"kernel: expected one of .* got 'nope'"):
        mod.get_function("nope")


# ---------------------------------------------------------------------------
# build: disk cache, compile errors, nvcc and NVRTC
# ---------------------------------------------------------------------------

def test_emulated_build_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIREC_CACHE", str(tmp_path))
    compiles = []
    real = _build._compile
    monkeypatch.setattr(_build, "_compile", lambda cmd: compiles.append(cmd) or real(cmd))
    text = (_build.source("common.h")
            + "\n__global__ void one(float* y) { y[threadIdx.x] = 1.0f; }\n")
    first = _build.build_emulated(text, ["one"])
    again = _build.build_emulated(text, ["one"])  # as a new process would: from disk
    assert len(compiles) == 1
    assert again == first and first.parent == tmp_path / "cuda-emulated"
    y = np.zeros(32, np.float32)
    _build.EmulatedModule(again, ["one"]).get_function("one")((1,), (32,), (y,))
    np.testing.assert_array_equal(y, 1)
    changed = _build.build_emulated(text + "// edited\n", ["one"])
    assert changed != first and len(compiles) == 2


def test_compile_error_shows_the_compiler_output(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIREC_CACHE", str(tmp_path))
    text = "__global__ void broken(float* y) { y[0] = undefined_name; }\n"
    with pytest.raises(RuntimeError, match="(?s)could not compile.*<source>:1:.*undefined_name"):
        _build.build_emulated(text, ["broken"])


@pytest.mark.skipif(_build.nvcc() is None, reason="nvcc (CUDA toolkit) not installed")
def test_the_kernels_above_are_valid_cuda(kernels_file):
    report, log = _build.nvcc_check(kernels_file, NAMES, "sm_80")
    assert len(report) == len(NAMES), log


@pytest.mark.skipif(_build.nvcc() is None, reason="nvcc (CUDA toolkit) not installed")
def test_nvcc_refuses_a_warning(tmp_path):
    path = tmp_path / "warns.cu"
    path.write_text("__global__ void warns(float* y) { int unused = 3; y[0] = 1.0f; }\n")
    with pytest.raises(RuntimeError, match="unused"):
        _build.nvcc_check(path, ["warns"], "sm_80")


@pytest.mark.skipif(_build.nvrtc_library() is None,
                    reason='libnvrtc not installed (pip install "nvidia-cuda-nvrtc==13.0.*")')
def test_nvrtc_reports_a_compile_error(tmp_path):
    path = tmp_path / "broken.cu"
    path.write_text("__global__ void broken(float* y) { y[0] = undefined_name; }\n")
    with pytest.raises(RuntimeError, match="undefined_name"):
        _build.nvrtc_compile(path, ["broken"], "sm_90")


# ---------------------------------------------------------------------------
# sanitizers and imports (fresh interpreters)
# ---------------------------------------------------------------------------

RUN = """
import sys
import numpy as np
from minirec.kernels.cuda import _build
mod = _build.load({path!r}, {names!r}, "cuda-emulated")
{body}
print("finished")
"""


def _script(path, names, body):
    return RUN.format(path=str(path), names=list(names), body=textwrap.dedent(body))


@pytest.mark.parametrize("bound, clean", [(1000, True), (1001, False)])
def test_address_sanitizer_catches_an_out_of_bounds_write(kernels_file, bound, clean):
    body = f"""
    y = np.zeros(1000, np.float32)
    mod.get_function("fill")((4,), (256,), (y, np.int64({bound})))
    """
    proc = _build.run_sanitized("address", _script(kernels_file, ["fill"], body))
    if clean:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "AddressSanitizer" not in proc.stderr
    else:
        assert proc.returncode != 0
        assert "ERROR: AddressSanitizer: heap-buffer-overflow" in proc.stderr
        assert "WRITE of size 4" in proc.stderr


def test_thread_sanitizer_reports_a_missing_syncthreads(tmp_path):
    racy = tmp_path / "racy.cu"
    racy.write_text(KERNELS.replace("    __syncthreads();\n    if (i < n) y[i]",
                                    "    if (i < n) y[i]"))
    assert racy.read_text() != KERNELS
    body = """
    x = np.arange(64, dtype=np.float32)
    y = np.zeros(64, np.float32)
    mod.get_function("block_reverse")((1,), (64,), (x, y, np.int64(64)))
    """
    proc = _build.run_sanitized("thread", _script(racy, ["block_reverse"], body))
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr
    assert "racy.cu" in proc.stderr  # the report points into the kernel source
    assert proc.returncode == 66


def test_thread_sanitizer_is_clean_with_syncthreads(kernels_file):
    body = """
    x = np.arange(64, dtype=np.float32)
    y = np.zeros(64, np.float32)
    mod.get_function("block_reverse")((1,), (64,), (x, y, np.int64(64)))
    out = np.zeros((8, 64), np.float32)
    mod.get_function("shuffles<float>")((1,), (64,), (out,))
    """
    proc = _build.run_sanitized("thread", _script(kernels_file, ["block_reverse",
                                                                  "shuffles<float>"], body))
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0 and "finished" in proc.stdout


def test_import_minirec_does_not_import_cupy():
    code = ("import sys, minirec, minirec.kernels.cuda.linear_scan, minirec.kernels.cuda._build;"
            "print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'minirec\[gpu\]'.*cupy-cuda12x"):
        _build.import_cupy()
