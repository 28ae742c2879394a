"""CUDA LN-LSTM kernels (ln_lstm.cu) equal the NumPy definition.

What tests/test_contract.py (which runs every registry case on
``cuda-emulated``) does not see: rows longer than a block (units and gate
entries strided over the threads), block reductions over several warps with
idle lanes, fewer units than a warp, one fused kernel per step, the launch
plans at GPU sizes, float kernels with no double arithmetic, and the
sanitizers (a missing barrier of the block reduction is a reported race).
Then, marked ``gpu``, the same through CuPy. Emulated threads are slow: small
shapes.
"""

import re

import numpy as np
import pytest

from minirec import registry
from minirec.cells import ln_lstm
from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda import ln_lstm as cuda_ln_lstm
from tests.conftest import TOL, assert_close
from tests.kernels.cuda_helpers import (
    assert_sanitizer_clean,
    bad_agreement,
    check_gpu_and_emulator_agree,
    cupy_or_skip,
    needs_compiler,
    to_gpu,
)

DTYPES = [np.float64, np.float32]
ENTRY = registry.get("ln_lstm")


# ---------------------------------------------------------------------------
# emulated kernels against the definition
# ---------------------------------------------------------------------------

@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_longer_than_a_block(dtype):
    """H = 300: the step kernels' 256 threads own one or two units each, the gate rows
    (4H = 1200) are strided five deep over the threads, 8 warps reduce."""
    bad = bad_agreement("ln_lstm", dtype, B=2, T=3, D=4, H=300)
    assert not bad, f"relative RMS above {TOL[np.dtype(dtype)]:.0e}: {bad}"


@needs_compiler
@pytest.mark.parametrize("B, T, D, H", [(3, 5, 3, 40), (1, 7, 2, 5)])
def test_partial_warps(B, T, D, H):
    """H = 40: two warps, 24 idle lanes in the step kernels' reductions; H = 5: one
    warp with 27 idle lanes (and 4H = 20 for the gate rows)."""
    bad = bad_agreement("ln_lstm", np.float64, B=B, T=T, D=D, H=H)
    assert not bad, f"relative RMS above 1e-10: {bad}"


@needs_compiler
def test_one_fused_kernel_per_step_and_direction(monkeypatch):
    """Forward: the input side's layer norm once, then ONE kernel per step (after the
    step's GEMM); backward: ONE kernel per step, then the input side's LN backward."""
    launched = []
    run = _launch.run
    monkeypatch.setattr(_launch, "run", lambda m, launch: (launched.append(launch), run(m, launch)))
    inputs = ENTRY.make_inputs(np.random.default_rng(0), np.float64, ENTRY.size("small", T=6))
    out, state, cache = registry.run_forward(ENTRY, inputs, backend="cuda-emulated")
    forward = [launch.kernel for launch in launched]
    registry.run_backward(ENTRY, inputs, cache, out, state)
    backward = [launch.kernel for launch in launched[len(forward):]]
    assert forward == ["ln_lstm_layer_norm_rows<double>"] + ["ln_lstm_forward_step<double>"] * 6
    assert backward == ["ln_lstm_backward_step<double>"] * 6 + [
        "ln_lstm_layer_norm_backward_rows<double>"]
    steps = [launch for launch in launched if "step" in launch.kernel]
    t_args = [launch.args[-2] if launch.kernel.startswith("ln_lstm_forward") else launch.args[-1]
              for launch in steps]
    assert t_args == [*range(6), *range(5, -1, -1)]


def test_numpy_arrays_with_backend_cupy_are_refused():
    params = ln_lstm.init_params(np.random.default_rng(0), 2, 3)
    x, h0 = np.zeros((1, 2, 2)), np.zeros((1, 3))
    with pytest.raises(TypeError, match=r"expected a CuPy array for backend='cupy'"):
        cuda_ln_lstm.forward(params, x, (h0, h0), 1e-5, backend="cupy")


# ---------------------------------------------------------------------------
# launch plans (no kernel runs)
# ---------------------------------------------------------------------------

def _plans(dtype, B, T, H):
    z = lambda *shape: np.zeros(shape, dtype)  # noqa: E731
    G = 4 * H
    p = {k: z(G) for k in ("alpha_hh", "beta_hh")} | {k: z(H) for k in ("alpha_c", "beta_c")}
    cache = cuda_ln_lstm.Cache(z(B, T, 3), z(B, T, H), z(B, T, H), z(B, H), z(B, H),
                               z(B, T, G), z(B, T, G), z(B, T), z(B, T, G), z(B, T),
                               z(B, T, H), z(B, T))
    t = T - 1
    return {
        "rows": cuda_ln_lstm.plan_layer_norm_rows(z(B, T, G), z(B, T, G), z(B, T), 1e-5),
        "backward_rows": cuda_ln_lstm.plan_layer_norm_backward_rows(
            z(B, T, G), z(B, T, G), z(B, T), z(G), z(B, T, G)),
        "forward_step": cuda_ln_lstm.plan_forward_step(
            z(B, T, G), z(B, G), p, z(B, H), z(B, T, H), z(B, T, H), z(B, T, G), z(B, T, G),
            z(B, T), z(B, T, H), z(B, T), z(B, H), t, 1e-5),
        "backward_step": cuda_ln_lstm.plan_backward_step(
            cache, p, z(B, T, H), z(B, H), z(B, H), z(B, T, H), z(B, T, G), z(B, T, G), z(B, G),
            t),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, T, H", [(32, 8, 1024), (3, 5, 90), (1, 1, 1)])
def test_plans_one_block_per_row_of_whole_warps(dtype, B, T, H):
    plans = _plans(dtype, B, T, H)
    for name, launch in plans.items():
        assert launch.kernel in cuda_ln_lstm.kernel_names(dtype), name
        block = launch.block[0]
        assert block % _launch.WARP == 0 and block <= cuda_ln_lstm.MAX_BLOCK, name
        for x in launch.args:  # arrays, or scalars with an explicit C type
            assert isinstance(x, (np.ndarray, np.int64, np.dtype(dtype).type)), (name, type(x))
    assert plans["rows"].grid == plans["backward_rows"].grid == (B * T,)
    assert plans["forward_step"].grid == plans["backward_step"].grid == (B,)
    # no more warps than a row needs: the step kernels' rows are the H units
    assert plans["forward_step"].block[0] == min(256, -(-H // 32) * 32)
    assert plans["rows"].block[0] == min(256, -(-4 * H // 32) * 32)
    assert plans["forward_step"].args[-1] == np.dtype(dtype).type(1e-5)  # eps in F


@pytest.mark.skipif(_build.nvrtc_library() is None,
                    reason='libnvrtc not installed (pip install "nvidia-cuda-nvrtc==13.0.*")')
def test_float_kernels_compute_in_float():
    """The PTX of the float kernels has no double arithmetic: a double literal
    or ``sqrt`` instead of ``sqrtf`` would put .f64 instructions there."""
    names = cuda_ln_lstm.kernel_names(np.float32)
    ptx = _build.nvrtc_compile(cuda_ln_lstm.SOURCE, names,
                               "compute_90").binary.decode(errors="replace")
    assert ptx.count(".entry") == len(names)
    assert not re.findall(r"\.f64\b", ptx), "double arithmetic in a float kernel"


# ---------------------------------------------------------------------------
# sanitizers on the real kernels (fresh interpreters with the runtime preloaded)
# ---------------------------------------------------------------------------

SANITIZED_RUN = """
import numpy as np
from minirec import registry
from minirec.kernels.cuda import ln_lstm
ln_lstm.SOURCE = {source!r}
entry = registry.get("ln_lstm")  # H = 40: two warps reduce, 24 idle lanes
errors = registry.agreement(entry, "recurrent", "cuda-emulated",
                            size=entry.size("small", B=2, T=3, D=3, H=40))
print(max(errors.values()))
"""


@needs_compiler
@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_sanitizers_are_clean(sanitizer):
    proc = _build.run_sanitized(sanitizer, SANITIZED_RUN.format(source=cuda_ln_lstm.SOURCE))
    assert_sanitizer_clean(proc, 1)


@needs_compiler
def test_thread_sanitizer_catches_a_missing_barrier_in_the_block_sum(tmp_path):
    """Without block_sum's first __syncthreads, threads read the other warps' sums in
    ``partial`` while those warps' lane 0 may still be writing them: a data race (and
    a wrong mean). (The emulator's barriers share the C++ library's waiter mutexes,
    which order a race across a later barrier call for TSan; only a race with no
    barrier call in between is reported reliably, as this one.)"""
    text = (_build.KERNEL_DIR / cuda_ln_lstm.SOURCE).read_text()
    barrier = "    __syncthreads();  // every warp's sum is in\n"
    assert text.count(barrier) == 1
    path = tmp_path / "ln_lstm_racy.cu"
    path.write_text(text.replace(barrier, ""))
    proc = _build.run_sanitized("thread", SANITIZED_RUN.format(source=str(path)))
    assert "WARNING: ThreadSanitizer: data race" in proc.stderr
    assert "ln_lstm_racy.cu" in proc.stderr
    assert proc.returncode != 0


# ---------------------------------------------------------------------------
# on a GPU, through CuPy (pytest -m gpu)
# ---------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_state", [True, False], ids=["state0", "no-state0"])
def test_gpu_matches_definition(with_state, dtype):
    """CuPy arrays in, CuPy arrays out, through the cell: B = 4 blocks per step,
    H = 300 (rows strided over 256 threads), T = 33, eps = 1e-3; ``state0=None``
    makes the cell build its zeros on the GPU, ``dstate=None`` its zero upstream
    gradient."""
    cupy = cupy_or_skip()
    rng = np.random.default_rng(0)
    inputs = ENTRY.make_inputs(rng, np.dtype(dtype), ENTRY.size("small", B=4, T=33, D=24, H=300))
    if not with_state:
        inputs["state0"] = None
    ref_inputs = registry._to64(inputs)
    params, x, s0 = ref_inputs["params"], ref_inputs["x"], ref_inputs["state0"]
    ref_y, ref_state, ref_cache = ln_lstm.forward(params, x, s0, eps=1e-3)
    dy = rng.standard_normal(ref_y.shape)
    ref = ln_lstm.backward(params, ref_cache, dy)
    g = to_gpu(cupy, inputs)
    y, state, cache = ln_lstm.forward(g["params"], g["x"], g["state0"], eps=1e-3, backend="cupy")
    assert isinstance(y, cupy.ndarray)
    tol = TOL[np.dtype(dtype)]
    assert_close(y.get(), ref_y, tol, "y")
    for n in range(2):
        assert_close(state[n].get(), ref_state[n], tol, f"state[{n}]")
    grads = ln_lstm.backward(g["params"], cache, cupy.asarray(dy.astype(dtype)))
    for k in (*params, "x"):
        assert isinstance(grads[k], cupy.ndarray) and grads[k].dtype == np.dtype(dtype), k
        assert_close(grads[k].get(), ref[k], tol, f"d{k}")
    for n in range(2):
        assert_close(grads["state0"][n].get(), ref["state0"][n], tol, f"dstate0[{n}]")


@pytest.mark.gpu
@needs_compiler
def test_gpu_and_emulator_agree():
    """The same kernels and plans on both backends; only libm (tanh, exp) and the
    GEMMs' summation order differ, far below the float64 tolerance."""
    check_gpu_and_emulator_agree("ln_lstm", {"B": 2, "T": 9, "D": 4, "H": 40})
