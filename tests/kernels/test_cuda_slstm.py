"""CUDA sLSTM kernels (slstm.cu) equal the NumPy definition.

What tests/test_contract.py (which runs every registry case on
``cuda-emulated``) does not see: several (batch row, head) blocks with idle
tail threads, head sizes that are no multiple of a warp, a head wider than the
block (threads own several units), R read from global memory where it does not
fit in shared memory, one persistent kernel per direction, float kernels with
no double arithmetic, the launch geometry, and the sanitizers. Then, marked
``gpu``, the same through CuPy. Emulated threads are slow: small shapes.
"""

import re

import numpy as np
import pytest

from minirec import registry
from minirec.cells import slstm
from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda import slstm as cuda_slstm
from tests.conftest import TOL, assert_close
from tests.kernels.cuda_helpers import (
    assert_sanitizer_clean,
    bad_agreement,
    check_gpu_and_emulator_agree,
    check_gpu_matches_definition,
    needs_compiler,
)

DTYPES = [np.float64, np.float32]


# ---------------------------------------------------------------------------
# emulated kernels against the definition
# ---------------------------------------------------------------------------

@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, T, D, H, NH", [
    (2, 7, 3, 15, 3),   # 6 blocks of one warp, dh = 5: 27 idle threads each
    (1, 3, 2, 80, 2),   # dh = 40: two warps, 24 idle; float64 R (51 KiB) read from global
    (1, 2, 2, 260, 1),  # dh = 260 > 256 threads: threads 0-3 own two units each
])
def test_blocks_heads_and_idle_threads(B, T, D, H, NH, dtype):
    bad = bad_agreement("slstm", dtype, B=B, T=T, D=D, H=H, NH=NH)
    assert not bad, f"relative RMS above {TOL[np.dtype(dtype)]:.0e}: {bad}"


@needs_compiler
def test_from_the_zero_state():
    """state0 = None: the first-step branch (n0 = 0) in the kernel, forward and back."""
    rng = np.random.default_rng(0)
    params, x, _ = registry.get("slstm").make_inputs(rng, np.float64, "small",
                                                     T=6, H=6, NH=3).values()
    y_r, st_r, c_r = slstm.forward(params, x)
    y, st, c = slstm.forward(params, x, backend="cuda-emulated")
    dy = rng.standard_normal(y.shape)
    g_r, g = slstm.backward(params, c_r, dy), slstm.backward(params, c, dy)
    assert_close(y, y_r, 1e-10, "y")
    for k, v in registry._flatten("", g_r).items():
        assert_close(registry._flatten("", g)[k], v, 1e-10, f"d{k}")


@needs_compiler
def test_one_persistent_kernel_per_direction(monkeypatch):
    """The whole time loop is one launch each way (T = 6), one block per (row, head)."""
    launched = []
    run = _launch.run
    monkeypatch.setattr(_launch, "run", lambda m, launch: (launched.append(launch), run(m, launch)))
    entry = registry.get("slstm")
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, entry.size("small", T=6))
    out, state, cache = registry.run_forward(entry, inputs, backend="cuda-emulated")
    registry.run_backward(entry, inputs, cache, out, state)
    assert [launch.kernel for launch in launched] == ["slstm_forward<double>",
                                                      "slstm_backward<double>"]
    assert all(launch.grid == (2 * 2,) for launch in launched)  # B · NH


def test_numpy_arrays_with_backend_cupy_are_refused():
    params = slstm.init_params(np.random.default_rng(0), 2, 4, num_heads=2)
    x, s = np.zeros((1, 2, 2)), np.zeros((1, 4))
    with pytest.raises(TypeError, match=r"expected a CuPy array for backend='cupy'"):
        cuda_slstm.forward(params, x, (s, s, s, s), backend="cupy")


# ---------------------------------------------------------------------------
# launch geometry and plans (no kernel runs)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dh, itemsize, R_shared", [
    (8, 8, 1), (32, 8, 1), (38, 8, 1), (39, 8, 0), (54, 4, 1), (55, 4, 0), (768, 8, 0)])
def test_R_lives_in_shared_memory_when_it_fits(dh, itemsize, R_shared):
    """4·dh² values of R plus the 8·dh step buffers within 48 KiB: R in shared
    memory; otherwise only the buffers (R from global memory)."""
    grid, block, shared, flag = cuda_slstm.block_geometry(3, 2, dh, itemsize)
    assert grid == (6,) and flag == R_shared
    assert shared == (8 * dh + 4 * dh * dh * R_shared) * itemsize <= 48 * 1024
    assert block[0] % _launch.WARP == 0 and dh <= block[0] or block[0] == cuda_slstm.MAX_BLOCK


def test_too_wide_a_head_is_refused():
    with pytest.raises(ValueError, match=r"R: expected a head size dh of at most 768 .*got 769"):
        cuda_slstm.block_geometry(1, 1, 769, 8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plans_launch_compiled_kernels(dtype):
    B, T, NH, dh = 4, 5, 3, 7
    H = NH * dh
    z = lambda *shape: np.zeros(shape, dtype)  # noqa: E731
    s0 = tuple(z(B, H) for _ in range(4))
    fwd = cuda_slstm.plan_forward(z(B, T, 4 * H), z(NH, 4, dh, dh), s0,
                                  *(z(B, T, H) for _ in range(4)))
    bwd = cuda_slstm.plan_backward(z(B, T, 4 * H), z(NH, 4, dh, dh), s0,
                                   *(z(B, T, H) for _ in range(4)), z(B, T, H),
                                   z(B, T, 4 * H), s0)
    for launch in (fwd, bwd):
        assert launch.kernel in cuda_slstm.kernel_names(dtype)
        assert launch.grid == (B * NH,) and launch.block == (32,)
        assert launch.args[-4:] == (T, NH, dh, 1)
        for x in launch.args:
            assert isinstance(x, (np.ndarray, np.int64))
    assert len(fwd.args) == 14 and len(bwd.args) == 19  # the kernels' parameter counts


@pytest.mark.skipif(_build.nvrtc_library() is None,
                    reason='libnvrtc not installed (pip install "nvidia-cuda-nvrtc==13.0.*")')
def test_float_kernels_compute_in_float():
    """The PTX of the float kernels has no double arithmetic (a double literal or
    ``exp`` instead of ``expf`` would put .f64 instructions there)."""
    names = cuda_slstm.kernel_names(np.float32)
    ptx = _build.nvrtc_compile(cuda_slstm.SOURCE, names, "compute_90").binary.decode(
        errors="replace")
    assert ptx.count(".entry") == len(names)
    assert not re.findall(r"\.f64\b", ptx), "double arithmetic in a float kernel"


# ---------------------------------------------------------------------------
# sanitizers on the real kernels (fresh interpreters with the runtime preloaded)
# ---------------------------------------------------------------------------

SANITIZED_RUN = """
import numpy as np
from minirec import registry
from minirec.kernels.cuda import slstm
slstm.SOURCE = {source!r}
entry = registry.get("slstm")
# dh = 20 (R in shared memory) and dh = 40 (float64 R from global memory): idle threads
for dims in ({{"B": 2, "T": 3, "D": 3, "H": 40, "NH": 2}}, {{"B": 1, "T": 2, "D": 2, "H": 40,
                                                            "NH": 1}}):
    errors = registry.agreement(entry, "recurrent", "cuda-emulated", size=entry.size(dims))
    print(dims["H"] // dims["NH"], max(errors.values()))
"""


@needs_compiler
@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_sanitizers_are_clean(sanitizer):
    proc = _build.run_sanitized(sanitizer, SANITIZED_RUN.format(source=cuda_slstm.SOURCE))
    assert_sanitizer_clean(proc, 2)


@needs_compiler
def test_thread_sanitizer_catches_a_missing_barrier(tmp_path):
    """Without the forward's per-step ``__syncthreads`` a thread reads h_{t-1} of the
    head while another writes it: the barrier is what orders the steps."""
    text = (_build.KERNEL_DIR / cuda_slstm.SOURCE).read_text()
    barrier = "        __syncthreads();  // h_t complete before step t + 1 reads it\n"
    assert text.count(barrier) == 1
    path = tmp_path / "slstm_unsynced.cu"
    path.write_text(text.replace(barrier, ""))
    proc = _build.run_sanitized("thread", SANITIZED_RUN.format(source=str(path)))
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr


# ---------------------------------------------------------------------------
# on a GPU, through CuPy (pytest -m gpu)
# ---------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_state", [True, False], ids=["state0", "no-state0"])
@pytest.mark.parametrize("H, NH", [(256, 4), (160, 2)])  # dh = 64: R shared (f32) / global
def test_gpu_matches_definition(H, NH, with_state, dtype):
    """CuPy arrays in, CuPy arrays out, through the cell: B = 5, T = 33;
    ``state0=None`` makes the cell build its zeros on the GPU, ``dstate=None``
    its zero upstream gradient."""
    check_gpu_matches_definition(
        "slstm", dtype, {"B": 5, "T": 33, "D": 24, "H": H, "NH": NH}, with_state,
        lambda g: slstm.forward(g["params"], g["x"], g["state0"], backend="cupy"),
        lambda g, cache, dy: slstm.backward(g["params"], cache, dy, None))


@pytest.mark.gpu
@needs_compiler
def test_gpu_and_emulator_agree():
    """The same kernels and plans on both backends; only libm (tanh, exp, log1p)
    and the GEMMs' summation order differ, far below the float64 tolerance."""
    check_gpu_and_emulator_agree("slstm", {"B": 2, "T": 9, "D": 4, "H": 40, "NH": 2})
