"""CUDA multi-head RNN/GRU/LSTM kernels (multihead.cu) equal the NumPy definition.

What tests/test_contract.py (which runs every registry case on
``cuda-emulated``) does not see: several (batch row, head) blocks with idle
tail threads, head sizes that are no multiple of a warp, a head wider than the
block (threads own several units), a head's W_hh block read from global memory
where it does not fit in shared memory, the relu RNN, one persistent kernel per
direction, float kernels with no double arithmetic, the launch geometry, and
the sanitizers. Then, marked ``gpu``, the same through CuPy. Emulated threads
are slow: small shapes.
"""

import re

import numpy as np
import pytest

from minirec import registry
from minirec.cells import gru, lstm, rnn
from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda import multihead as cuda_mh
from tests.conftest import TOL, assert_close
from tests.kernels.cuda_helpers import (
    assert_sanitizer_clean,
    bad_agreement,
    check_gpu_and_emulator_agree,
    check_gpu_matches_definition,
    needs_compiler,
)

DTYPES = [np.float64, np.float32]
ENTRIES = ["rnn_multihead", "gru_multihead", "lstm_multihead"]
MODULES = {"rnn": rnn, "gru": gru, "lstm": lstm}


# ---------------------------------------------------------------------------
# emulated kernels against the definition
# ---------------------------------------------------------------------------

@needs_compiler
@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_blocks_heads_and_idle_threads(name, dtype):
    """6 blocks of one warp, dh = 5: 27 idle threads each; T = 7."""
    bad = bad_agreement(name, dtype, B=2, T=7, D=3, H=15, NH=3)
    assert not bad, f"relative RMS above {TOL[np.dtype(dtype)]:.0e}: {bad}"


@needs_compiler
@pytest.mark.parametrize("name, H, NH", [
    ("lstm_multihead", 80, 2),  # dh = 40: two warps, 24 idle; the float64 block (51 KiB) global
    ("gru_multihead", 84, 1),   # dh = 84: float64 block 165 KiB, read from global memory
    ("rnn_multihead", 260, 1),  # dh = 260 > 256 threads: threads 0-3 own two units each
])
def test_wide_heads_and_blocks_from_global_memory(name, H, NH):
    entry = registry.get(name)
    _, _, _, W_shared = cuda_mh.block_geometry(1, NH, H // NH,
                                               cuda_mh.GATES[name.split("_")[0]], 8)
    assert W_shared == 0  # all three: the block from global memory
    bad = bad_agreement(name, np.float64, B=1, T=3, D=2, H=H, NH=NH)
    assert not bad, f"{entry.name}: relative RMS above 1e-10: {bad}"


@needs_compiler
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_from_the_zero_state(cell):
    """state0 = None and dstate = None: the cell's zeros, forward and back."""
    rng = np.random.default_rng(0)
    mod = MODULES[cell]
    params = mod.init_params(rng, 3, 6, num_heads=3)
    x = rng.standard_normal((2, 5, 3))
    y_r, _, c_r = mod.forward(params, x)
    y, _, c = mod.forward(params, x, backend="cuda-emulated")
    dy = rng.standard_normal(y.shape)
    g_r, g = mod.backward(params, c_r, dy), mod.backward(params, c, dy)
    assert_close(y, y_r, 1e-10, "y")
    for k, v in registry._flatten("", g_r).items():
        assert_close(registry._flatten("", g)[k], v, 1e-10, f"d{k}")


@needs_compiler
def test_relu_keeps_the_definitions_nan_pattern():
    """relu(NaN) = NaN forward; the backward's [h > 0] is a selection (NaN stays NaN)."""
    rng = np.random.default_rng(0)
    params = rnn.init_params(rng, 3, 6, num_heads=2)
    x = rng.standard_normal((2, 6, 3))
    x[0, 2, 1] = np.nan
    with np.errstate(invalid="ignore"):
        y_r, _, c_r = rnn.forward(params, x, nonlinearity="relu")
        y, _, c = rnn.forward(params, x, nonlinearity="relu", backend="cuda-emulated")
        dy = rng.standard_normal(y.shape)
        dy[1, 4, 0] = np.inf
        g_r, g = rnn.backward(params, c_r, dy), rnn.backward(params, c, dy)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y_r))
    fin = np.isfinite(y_r)
    assert_close(y[fin], y_r[fin], 1e-10, "y")
    for k, v in registry._flatten("", g_r).items():
        np.testing.assert_array_equal(np.isfinite(registry._flatten("", g)[k]), np.isfinite(v),
                                      err_msg=k)


@needs_compiler
@pytest.mark.parametrize("cell, G", [("rnn", 1), ("gru", 3), ("lstm", 4)])
def test_one_persistent_kernel_per_direction(cell, G, monkeypatch):
    """The whole time loop is one launch each way (T = 6), one block per (row, head)."""
    launched = []
    run = _launch.run
    monkeypatch.setattr(_launch, "run", lambda m, launch: (launched.append(launch), run(m, launch)))
    entry = registry.get(f"{cell}_multihead")
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, entry.size("small", T=6))
    out, state, cache = registry.run_forward(entry, inputs, backend="cuda-emulated")
    registry.run_backward(entry, inputs, cache, out, state)
    relu = ", false" if cell == "rnn" else ""
    assert [launch.kernel for launch in launched] == [f"multihead_{cell}_forward<double{relu}>",
                                                      f"multihead_{cell}_backward<double{relu}>"]
    assert all(launch.grid == (2 * 2,) for launch in launched)  # B · NH


def test_numpy_arrays_with_backend_cupy_are_refused():
    params = lstm.init_params(np.random.default_rng(0), 2, 4, num_heads=2)
    x, s = np.zeros((1, 2, 2)), np.zeros((1, 4))
    with pytest.raises(TypeError, match=r"expected a CuPy array for backend='cupy'"):
        cuda_mh.forward(params, x, (s, s), cell="lstm", backend="cupy")


def test_an_unknown_cell_is_refused():
    params = gru.init_params(np.random.default_rng(0), 2, 4, num_heads=2)
    with pytest.raises(ValueError, match=r"cell: expected one of \('rnn', 'gru', 'lstm'\), "
                                         r"got 'mlstm'"):
        cuda_mh.forward(params, np.zeros((1, 2, 2)), np.zeros((1, 4)), cell="mlstm")


# ---------------------------------------------------------------------------
# launch geometry and plans (no kernel runs)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("gates, dh, itemsize, W_shared", [
    (4, 8, 8, 1), (4, 38, 8, 1), (4, 39, 8, 0), (4, 54, 4, 1), (4, 55, 4, 0),
    (3, 44, 8, 1), (3, 45, 8, 0), (1, 77, 8, 1), (1, 78, 8, 0), (4, 768, 8, 0)])
def test_a_heads_block_lives_in_shared_memory_when_it_fits(gates, dh, itemsize, W_shared):
    """G·dh² values of W_hh plus the 2·G·dh step buffers within 48 KiB: the block in
    shared memory; otherwise only the buffers (the block from global memory)."""
    grid, block, shared, flag = cuda_mh.block_geometry(3, 2, dh, gates, itemsize)
    assert grid == (6,) and flag == W_shared
    assert shared == (2 * gates * dh + gates * dh * dh * W_shared) * itemsize <= 48 * 1024
    assert block[0] % _launch.WARP == 0 and (dh <= block[0] or block[0] == cuda_mh.MAX_BLOCK)


def test_too_wide_a_head_is_refused():
    with pytest.raises(ValueError, match=r"W_hh: expected a head size dh of at most 768 .*"
                                         r"got 769"):
        cuda_mh.block_geometry(1, 1, 769, 4, 8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plans_launch_compiled_kernels(dtype):
    B, T, NH, dh = 4, 5, 3, 7
    H = NH * dh
    z = lambda *shape: np.zeros(shape, dtype)  # noqa: E731
    F = _build.ctype(dtype)
    plans = {  # kernel: its array arguments (then T, NH, dh, W_shared)
        f"multihead_rnn_forward<{F}, true>": (z(B, T, H), z(NH, 1, dh, dh), z(B, H), z(B, T, H)),
        f"multihead_rnn_backward<{F}, false>": (z(B, T, H), z(NH, dh, dh), z(B, T, H),
                                                z(B, T, H), z(B, H)),
        f"multihead_gru_forward<{F}>": (z(B, T, 3 * H), z(NH, 3, dh, dh), z(3 * H), z(B, H),
                                        z(B, T, H), z(B, T, 4 * H)),
        f"multihead_gru_backward<{F}>": (z(B, T, H), z(B, H), z(B, T, 4 * H), z(NH, 3 * dh, dh),
                                         z(B, T, H), z(B, T, 3 * H), z(B, T, 3 * H), z(B, H)),
        f"multihead_lstm_forward<{F}>": (z(B, T, 4 * H), z(NH, 4, dh, dh), z(B, H), z(B, H),
                                         z(B, T, H), z(B, T, H), z(B, T, 4 * H)),
        f"multihead_lstm_backward<{F}>": (z(B, T, H), z(B, H), z(B, T, 4 * H),
                                          z(NH, 4 * dh, dh), z(B, T, H), z(B, T, 4 * H),
                                          z(B, H), z(B, H)),
    }
    for kernel, arrays in plans.items():
        G = {"rnn": 1, "gru": 3, "lstm": 4}[kernel.split("_")[1]]
        launch = cuda_mh.plan(kernel, arrays, B, T, NH, dh, G)
        assert launch.kernel in cuda_mh.kernel_names(dtype)
        assert launch.grid == (B * NH,) and launch.block == (32,)
        assert launch.args[-4:] == (T, NH, dh, 1)
        assert all(isinstance(a, (np.ndarray, np.int64)) for a in launch.args)


@pytest.mark.skipif(_build.nvrtc_library() is None,
                    reason='libnvrtc not installed (pip install "nvidia-cuda-nvrtc==13.0.*")')
def test_float_kernels_compute_in_float():
    """The PTX of the float kernels has no double arithmetic (a double literal or
    ``tanh`` instead of ``tanhf`` would put .f64 instructions there)."""
    names = cuda_mh.kernel_names(np.float32)
    ptx = _build.nvrtc_compile(cuda_mh.SOURCE, names, "compute_90").binary.decode(
        errors="replace")
    assert ptx.count(".entry") == len(names)
    assert not re.findall(r"\.f64\b", ptx), "double arithmetic in a float kernel"


# ---------------------------------------------------------------------------
# sanitizers on the real kernels (fresh interpreters with the runtime preloaded)
# ---------------------------------------------------------------------------

SANITIZED_RUN = """
import numpy as np
from minirec import registry
from minirec.kernels.cuda import multihead
multihead.SOURCE = {source!r}
# dh = 10 (the block in shared memory) and dh = 40 (the float64 LSTM block from global memory),
# idle threads in both
for name, dims in (("lstm_multihead", {{"B": 2, "T": 3, "D": 3, "H": 20, "NH": 2}}),
                   ("lstm_multihead", {{"B": 1, "T": 2, "D": 2, "H": 40, "NH": 1}}),
                   ("gru_multihead", {{"B": 2, "T": 3, "D": 3, "H": 20, "NH": 2}}),
                   ("rnn_multihead", {{"B": 2, "T": 3, "D": 3, "H": 20, "NH": 2}})):
    entry = registry.get(name)
    errors = registry.agreement(entry, "recurrent", "cuda-emulated", size=entry.size(dims))
    print(name, max(errors.values()))
"""


@needs_compiler
@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_sanitizers_are_clean(sanitizer):
    proc = _build.run_sanitized(sanitizer, SANITIZED_RUN.format(source=cuda_mh.SOURCE))
    assert_sanitizer_clean(proc, 4)


@needs_compiler
def test_thread_sanitizer_catches_a_missing_barrier(tmp_path):
    """Without the LSTM backward's per-step ``__syncthreads`` a thread reads the head's
    da_t while another writes it: the barrier is what orders the two phases."""
    text = (_build.KERNEL_DIR / cuda_mh.SOURCE).read_text()
    start = text.index("__global__ void multihead_lstm_backward")
    barrier = ("        __syncthreads();  // the head's da_t is in (the other buffer is the next "
               "step's)\n")
    assert text[start:].count(barrier) == 1
    path = tmp_path / "multihead_unsynced.cu"
    path.write_text(text[:start] + text[start:].replace(barrier, ""))
    proc = _build.run_sanitized("thread", SANITIZED_RUN.format(source=str(path)))
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr


# ---------------------------------------------------------------------------
# on a GPU, through CuPy (pytest -m gpu)
# ---------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_state", [True, False], ids=["state0", "no-state0"])
@pytest.mark.parametrize("method", ["recurrent", "newton"])
@pytest.mark.parametrize("name", ENTRIES)
def test_gpu_matches_definition(name, method, with_state, dtype):
    """CuPy arrays in, CuPy arrays out, through the cell: B = 5, T = 33, H = 256,
    NH = 4 (dh = 64: the float32 RNN block in shared memory, the others global);
    ``state0=None`` makes the cell build its zeros on the GPU, ``dstate=None``
    its zero upstream gradient."""
    mod = registry.get(name).module
    check_gpu_matches_definition(
        name, dtype, {"B": 5, "T": 33, "D": 24, "H": 256, "NH": 4}, with_state,
        lambda g: mod.forward(g["params"], g["x"], g["state0"], method=method, backend="cupy"),
        lambda g, cache, dy: mod.backward(g["params"], cache, dy, None))


@pytest.mark.gpu
@needs_compiler
@pytest.mark.parametrize("name", ENTRIES)
def test_gpu_and_emulator_agree(name):
    """The same kernels and plans on both backends; only libm (tanh, exp) and the
    GEMMs' summation order differ, far below the float64 tolerance."""
    check_gpu_and_emulator_agree(name, {"B": 2, "T": 9, "D": 4, "H": 40, "NH": 2})
