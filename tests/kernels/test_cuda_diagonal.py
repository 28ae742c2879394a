"""The diagonal cells' fused CUDA kernels (diagonal.cu) equal the NumPy definitions.

tests/test_contract.py runs every case of mingru, mingru_neg, minlstm, hgrn,
lru, ssm and ssm_bilinear on ``cuda-emulated`` at its small sizes (one block).
Here, through the cells on the emulator: several blocks with idle tail threads,
T not a multiple of the chunk, the default chunk, S4D's two channel layouts
(N ≤ 32: several channels per warp, sums by shuffles; N > 32: one block per
channel, sums through shared memory); then the launch plans, refusals, the
sanitizers and, marked ``gpu``, the same cells through CuPy. The compile checks
are test_cuda_compile.py (it finds diagonal.py by its SOURCE).
"""

import numpy as np
import pytest

from minirec import registry
from minirec.cells import mingru, minlstm, ssm
from minirec.kernels.cuda import _build, _launch, diagonal
from minirec.kernels.cuda import mingru as kmingru
from tests.conftest import TOL, assert_close
from tests.kernels.cuda_helpers import cupy_or_skip, needs_compiler

F64, F32 = np.dtype(np.float64), np.dtype(np.float32)
GATED = {"B": 2, "T": 37, "D": 3, "H": 150}  # 300 lanes: 2 blocks of 256, 212 threads idle
# entry -> named dimensions (the registry's makers read the ones they need)
SIZES = {
    "mingru": GATED, "mingru_neg": GATED, "minlstm": GATED,
    "hgrn": {"B": 2, "T": 37, "D": 150, "H": 1},
    "lru": {"B": 2, "T": 37, "D": 3, "N": 150},
    "ssm": {"B": 2, "T": 37, "D": 20, "N": 3},          # 4 threads a channel, 32 a block of
                                                        # 128: 2 blocks, 96 threads idle
    "ssm_bilinear": {"B": 2, "T": 37, "D": 3, "N": 40},  # a block of 64 per channel, 24 idle
}


# ---------------------------------------------------------------------------
# the cells on the emulator against their NumPy definitions
# ---------------------------------------------------------------------------

@needs_compiler
@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("method", diagonal.METHODS)
@pytest.mark.parametrize("name", SIZES)
def test_cells_match_the_definition_over_several_blocks(name, method, dtype):
    # chunked: the registry's chunk of 4 steps, 10 chunks with a last one of 1 step
    errors = registry.agreement(registry.get(name), method, "cuda-emulated", dtype=dtype,
                                size=SIZES[name])
    bad = {k: v for k, v in errors.items() if not v <= TOL[dtype]}
    assert not bad, f"relative RMS above {TOL[dtype]:.0e}: {bad}"


@needs_compiler
@pytest.mark.parametrize("N", [1, 32, 33])
def test_ssm_channel_layouts(N):
    # one thread a channel; a channel filling a warp; one warp and one lane (two warps)
    size = {"B": 2, "T": 11, "D": 2, "N": N}
    for method in diagonal.METHODS:
        errors = registry.agreement(registry.get("ssm"), method, "cuda-emulated", size=size)
        assert max(errors.values()) <= 1e-10, (method, errors)


@needs_compiler
def test_default_chunk_is_the_square_root_of_T(rng):
    # T = 37: chunks of 7 steps (the NumPy method's default), the last of 2
    assert diagonal.chunks("chunked", 37, None) == (7, 6)
    params = mingru.init_params(rng, 3, 5)
    x, h0 = rng.standard_normal((2, 37, 3)), rng.standard_normal((2, 5))
    y, h_T, cache = mingru.forward(params, x, h0)
    dy, dstate = rng.standard_normal(y.shape), rng.standard_normal(h_T.shape)
    expected = mingru.backward(params, cache, dy, dstate)
    y2, h_T2, cache2 = mingru.forward(params, x, h0, method="chunked", backend="cuda-emulated")
    assert cache2.core.kernel.chunk_size is None
    assert_close(y2, y, 1e-10, "y")
    grads = mingru.backward(params, cache2, dy, dstate)
    for k, v in expected.items():
        assert_close(grads[k], v, 1e-10, k)


@needs_compiler
def test_minlstm_kernel_forms_the_write_gate_logit_itself(rng):
    # the fused kernel forms s = softplus(−k_f) − softplus(−k_i) itself
    params = minlstm.init_params(rng, 3, 4)
    x = rng.standard_normal((2, 9, 3))
    _, _, cache = minlstm.forward(params, x, backend="cuda-emulated")
    kernel = cache.core.kernel
    np.testing.assert_array_equal(kernel.k_f, cache.k_f)
    np.testing.assert_array_equal(kernel.k_i, cache.k_i)
    assert not hasattr(kernel, "s")


# ---------------------------------------------------------------------------
# launch plans (no kernel runs) and refusals
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("T, chunk_size, expected", [
    (37, None, (7, 6)), (37, 4, (4, 10)), (37, 100, (37, 1)), (1, None, (1, 1)),
    (10**8, 16, (1526, 65531)),  # chunks stay under the grid's y limit
])
def test_chunks(T, chunk_size, expected):
    assert diagonal.chunks("chunked", T, chunk_size) == expected
    assert diagonal.chunks("recurrent", T, chunk_size) == (T, 1)


@pytest.mark.parametrize("N, P", [(1, 1), (3, 4), (32, 32), (33, 64), (1024, 1024)])
def test_group_width(N, P):
    assert diagonal.group_width(N) == P


def test_more_than_1024_modes_are_refused(rng):
    params = ssm.init_params(rng, 1, 1025)
    with pytest.raises(ValueError, match=r"N: expected at most 1024 .* got N=1025"):
        ssm.forward(params, rng.standard_normal((1, 3, 1)), backend="cuda-emulated")


def _plans(dtype, method):
    B, T, R, N = 2, 3000, 5, 40
    z = lambda *shape: np.zeros(shape, dtype)  # noqa: E731
    c = lambda *shape: np.zeros(shape, np.result_type(dtype, np.complex64))  # noqa: E731
    n = diagonal.chunks(method, T, 512)[1]
    plans = []
    for gate in diagonal.GATES:
        t = z(B, T, R)
        plans += [diagonal.plan_gated_forward(gate, t, t, t, z(B, R), t, True, method, 512, np),
                  diagonal.plan_gated_backward(gate, t, t, t, t, z(B, R), t, z(B, R), t, t, t,
                                               z(B, R), False, method, 512, np)]
    t = c(B, T, R)
    plans += [diagonal.plan_lru_forward(c(R), z(R), t, c(B, R), t, method, 512, np),
              diagonal.plan_lru_backward(c(R), z(R), t, t, c(B, R), t, c(B, R), t, c(B, n, R),
                                         z(B, n, R), c(B, R), method, 512, np)]
    for modes in (3, N):
        h, dn = c(B, T, R, modes), c(R, modes)
        plans += [diagonal.plan_ssm_forward(dn, dn, dn, z(R), z(B, T, R), c(B, R, modes), h,
                                            z(B, T, R), method, 512, np),
                  diagonal.plan_ssm_backward(dn, dn, dn, z(R), z(B, T, R), h, c(B, R, modes),
                                             z(B, T, R), c(B, R, modes), z(B, T, R),
                                             c(B, n, R, modes), c(B, n, R, modes),
                                             c(B, n, R, modes), c(B, R, modes), method, 512, np)]
    return plans


@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("method", diagonal.METHODS)
def test_plans_launch_only_compiled_kernels_within_cuda_limits(dtype, method):
    names = diagonal.kernel_names(dtype)
    launches = [launch for plan in _plans(dtype, method) for launch in plan]
    assert len(launches) == 12 * (3 if method == "chunked" else 1)
    for launch in launches:
        assert launch.kernel in names
        assert np.prod(launch.block) <= _launch.MAX_THREADS
        assert launch.block[0] % _launch.WARP == 0
        assert all(g <= _launch.MAX_GRID_YZ for g in launch.grid[1:])
        for x in launch.args:  # arrays, or scalars with an explicit C type
            assert isinstance(x, (np.ndarray, np.int64, np.int32)), (launch.kernel, type(x))


@pytest.mark.parametrize("name, method", [("mingru", "log"), ("mingru", "blelloch"),
                                          ("hgrn", "hillis_steele"), ("ssm", "conv")])
def test_methods_without_cuda_kernels_are_refused(rng, name, method):
    entry = registry.get(name)
    inputs = entry.make_inputs(rng, F64, "small", method)
    with pytest.raises(ValueError, match=rf"(?s)method.*supports.*got '{method}'"):
        registry.run_forward(entry, inputs, **{**entry.forward_kwargs, "method": method,
                                               "backend": "cuda-emulated"})


def test_the_kernel_modules_refuse_other_methods_and_arrays(rng):
    s, h0 = rng.standard_normal((1, 4, 2)), rng.standard_normal((1, 2))
    with pytest.raises(ValueError, match=r"method: expected one of \('recurrent', 'chunked'\)"):
        kmingru.forward(s, s, h0, method="blelloch", backend="cuda-emulated")
    with pytest.raises(TypeError, match=r"s: expected a CuPy array for backend='cupy'"):
        kmingru.forward(s, s, h0, backend="cupy")


# ---------------------------------------------------------------------------
# sanitizers on the real kernels (fresh interpreters with the runtime preloaded)
# ---------------------------------------------------------------------------

SANITIZED_RUN = """
from minirec import registry
from minirec.kernels.cuda import diagonal
diagonal.SOURCE = {source!r}
for name, size in {cases!r}:
    for method in ("recurrent", "chunked"):  # chunked: 4 steps a chunk, 3 chunks
        errors = registry.agreement(registry.get(name), method, "cuda-emulated", size=size)
        print(name, method, max(errors.values()))
"""
SMALL = {"B": 1, "T": 9, "D": 2, "H": 40, "N": 40}
SANITIZED_CASES = [(n, SMALL) for n in ("mingru", "minlstm", "hgrn", "lru", "ssm")] + [
    ("ssm_bilinear", {"B": 1, "T": 9, "D": 3, "N": 3})]


def _sanitized(sanitize, source=diagonal.SOURCE, cases=SANITIZED_CASES):
    return _build.run_sanitized(sanitize, SANITIZED_RUN.format(source=str(source), cases=cases))


@needs_compiler
def test_thread_sanitizer_is_clean_on_the_diagonal_kernels():
    proc = _sanitized("thread")
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 * len(SANITIZED_CASES)
    for line in lines:  # and the answers are right
        assert float(line.split()[-1]) < 1e-10, line


@needs_compiler
def test_thread_sanitizer_reports_the_read_out_sum_without_its_syncthreads(tmp_path):
    # S4D with N > 32 sums each step's read-out across warps through shared memory
    text = (_build.KERNEL_DIR / diagonal.SOURCE).read_text()
    assert text.count("__syncthreads();") == 1
    path = tmp_path / "diagonal_nosync.cu"
    path.write_text(text.replace("__syncthreads();", "/* __syncthreads() removed */"))
    proc = _sanitized("thread", path, [("ssm", {"B": 1, "T": 5, "D": 1, "N": 40})])
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr
    assert "diagonal_nosync.cu" in proc.stderr
    assert proc.returncode == 66


@needs_compiler
def test_address_sanitizer_is_clean_on_the_diagonal_kernels():
    # the idle threads of every layout read and write nothing out of bounds
    proc = _sanitized("address")
    assert "AddressSanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]


# ---------------------------------------------------------------------------
# on a GPU, through CuPy (pytest -m gpu)
# ---------------------------------------------------------------------------

GPU_GATED = {"B": 8, "T": 1000, "D": 32, "H": 512}
GPU_SIZES = {
    "mingru": GPU_GATED, "mingru_neg": GPU_GATED, "minlstm": GPU_GATED,
    "hgrn": {"B": 8, "T": 1000, "D": 512, "H": 1},
    "lru": {"B": 8, "T": 1000, "D": 32, "N": 256},
    "ssm": {"B": 4, "T": 500, "D": 64, "N": 16},
    "ssm_bilinear": {"B": 4, "T": 500, "D": 16, "N": 64},
}


def _to(xp_asarray, x):
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: _to(xp_asarray, v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to(xp_asarray, v) for v in x)
    return xp_asarray(x)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [F64, F32], ids=str)
@pytest.mark.parametrize("method", diagonal.METHODS)
@pytest.mark.parametrize("name", SIZES)
def test_gpu_cells_match_the_definition(name, method, dtype):
    cupy = cupy_or_skip()
    entry = registry.get(name)
    rng = np.random.default_rng(0)
    inputs = entry.make_inputs(rng, dtype, GPU_SIZES[name], method)
    ref_kw = registry._method_kwargs(entry, "recurrent", "numpy")
    out_r, st_r, cache_r = registry.run_forward(entry, inputs, **ref_kw)
    dout = rng.standard_normal(out_r.shape).astype(out_r.dtype)
    dstate = (rng.standard_normal(st_r.shape) + (1j if st_r.dtype.kind == "c" else 0)
              * rng.standard_normal(st_r.shape)).astype(st_r.dtype)
    expected = registry.run_backward(entry, inputs, cache_r, dout, dstate)
    gpu = _to(cupy.asarray, inputs)
    kw = registry._method_kwargs(entry, method, "cupy")
    out, st, cache = registry.run_forward(entry, gpu, **kw)
    assert isinstance(out, cupy.ndarray) and isinstance(st, cupy.ndarray)
    assert_close(out.get(), out_r, TOL[dtype], "out")
    assert_close(st.get(), st_r, TOL[dtype], "state")
    grads = registry.run_backward(entry, gpu, cache, cupy.asarray(dout), cupy.asarray(dstate))
    for k, v in expected.items():
        assert isinstance(grads[k], cupy.ndarray), k
        assert_close(grads[k].get(), v, TOL[dtype], f"d{k}")


@pytest.mark.gpu
@pytest.mark.parametrize("method", diagonal.METHODS)
def test_gpu_long_sequence_few_lanes(method):
    # B·H = 8 lanes, T = 20000: the chunked method's case (⌈√T⌉ = 142 steps a chunk)
    cupy = cupy_or_skip()
    entry = registry.get("mingru")
    rng = np.random.default_rng(1)
    inputs = entry.make_inputs(rng, F64, {"B": 1, "T": 20000, "D": 4, "H": 8}, method)
    y_r, h_r, _ = registry.run_forward(entry, inputs, method="recurrent", backend="numpy")
    gpu = _to(cupy.asarray, inputs)
    y, h, _ = registry.run_forward(entry, gpu, method=method, backend="cupy")
    assert_close(y.get(), y_r, 1e-10, "y")
    assert_close(h.get(), h_r, 1e-10, "h_T")
