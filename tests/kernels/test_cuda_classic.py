"""CUDA RNN/LSTM/GRU step kernels (classic.cu) equal the NumPy definitions.

What tests/test_contract.py (which runs every registry case on
``cuda-emulated``) does not see: several blocks with idle tail threads, a gate
layout whose hidden size is no multiple of a warp, one fused kernel per step,
relu's non-finite gradients, float kernels with no double arithmetic, the
launch plans at GPU sizes, and the sanitizers. Then, marked ``gpu``, the same
through CuPy. Emulated threads are slow: small shapes.
"""

import re

import numpy as np
import pytest

from minirec import registry
from minirec.cells import rnn
from minirec.kernels.cuda import _build, _launch, classic
from minirec.kernels.cuda import gru as cuda_gru
from minirec.kernels.cuda import lstm as cuda_lstm
from minirec.kernels.cuda import rnn as cuda_rnn
from tests.conftest import TOL
from tests.kernels.cuda_helpers import (
    assert_sanitizer_clean,
    bad_agreement,
    check_gpu_and_emulator_agree,
    check_gpu_matches_definition,
    needs_compiler,
)

CELLS = ["rnn", "rnn_relu", "lstm", "gru"]
FAMILY = {"rnn": "rnn", "rnn_relu": "rnn", "lstm": "lstm", "gru": "gru"}
DTYPES = [np.float64, np.float32]


# ---------------------------------------------------------------------------
# emulated kernels against the definition
# ---------------------------------------------------------------------------

@needs_compiler
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CELLS)
def test_several_blocks_and_idle_tail_threads(name, dtype):
    """B·H = 3·90 = 270 lanes: two blocks of 256 threads, 242 of them idle; H = 90 is
    no multiple of a warp, so the gates' blocks (offsets q·H) straddle warps."""
    bad = bad_agreement(name, dtype, B=3, T=4, D=5, H=90)
    assert not bad, f"relative RMS above {TOL[np.dtype(dtype)]:.0e}: {bad}"


@needs_compiler
@pytest.mark.parametrize("name", CELLS)
def test_fewer_lanes_than_a_warp(name):
    """B·H = 1·5: one warp, 27 idle threads; T = 7."""
    bad = bad_agreement(name, np.float64, B=1, T=7, D=2, H=5)
    assert not bad, f"relative RMS above 1e-10: {bad}"


@needs_compiler
@pytest.mark.parametrize("name", CELLS)
def test_one_fused_kernel_per_step_and_direction(name, monkeypatch):
    """The design of the issue: per step one GEMM and ONE gate kernel, forward and
    backward (T = 6 steps: 6 launches each way, the cell's own kernels)."""
    launched = []
    run = _launch.run
    monkeypatch.setattr(_launch, "run", lambda m, launch: (launched.append(launch), run(m, launch)))
    entry = registry.get(name)
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, entry.size("small", T=6))
    out, state, cache = registry.run_forward(entry, inputs, **entry.forward_kwargs,
                                             backend="cuda-emulated")
    forward = [launch.kernel for launch in launched]
    registry.run_backward(entry, inputs, cache, out, state)
    backward = [launch.kernel for launch in launched[len(forward):]]
    relu = str(entry.forward_kwargs.get("nonlinearity") == "relu").lower()
    suffix = f"<double, {relu}>" if FAMILY[name] == "rnn" else "<double>"
    assert forward == [f"{FAMILY[name]}_forward_step{suffix}"] * 6
    assert backward == [f"{FAMILY[name]}_backward_step{suffix}"] * 6
    assert [launch.args[-1] for launch in launched] == [*range(6), *range(5, -1, -1)]


@needs_compiler
def test_relu_gradient_is_nan_where_an_infinite_dy_meets_h_zero():
    """relu's backward is dy ⊙ [h > 0]: an infinite upstream gradient where h = 0
    gives inf · 0 = NaN in the definition, and must in the kernel (g − g there, not
    0: the W_ih rows of the units with h_0 = 0 would then come out finite)."""
    rng = np.random.default_rng(0)
    params = rnn.init_params(rng, 3, 8)
    x = 3 * rng.standard_normal((1, 5, 3))
    dy = rng.standard_normal((1, 5, 8))
    dy[:, 0] = np.inf  # the first step: nothing earlier mixes the units through W_hh
    grads = {}
    for backend in ("numpy", "cuda-emulated"):
        y, _, cache = rnn.forward(params, x, nonlinearity="relu", backend=backend)
        assert (y[0, 0] == 0).any() and (y[0, 0] > 0).any()
        with np.errstate(all="ignore"):
            grads[backend] = rnn.backward(params, cache, dy)
    assert np.isnan(grads["numpy"]["W_ih"][y[0, 0] == 0]).all()
    for k, v in grads["numpy"].items():
        np.testing.assert_array_equal(~np.isfinite(grads["cuda-emulated"][k]), ~np.isfinite(v),
                                      err_msg=k)


def test_numpy_arrays_with_backend_cupy_are_refused():
    params = rnn.init_params(np.random.default_rng(0), 2, 3)
    x, h0 = np.zeros((1, 2, 2)), np.zeros((1, 3))
    with pytest.raises(TypeError, match=r"expected a CuPy array for backend='cupy'"):
        cuda_rnn.forward(params, x, h0, backend="cupy")


# ---------------------------------------------------------------------------
# launch plans (no kernel runs), at the size of the LSTM target
# ---------------------------------------------------------------------------

def _plans(dtype, B, T, H):
    z = lambda *shape: np.zeros(shape, dtype)  # noqa: E731
    t = T - 1
    return [
        cuda_rnn.plan_forward_step(z(B, T, H), z(B, H), z(B, T, H), z(B, H), t, False),
        cuda_rnn.plan_backward_step(z(B, T, H), z(B, T, H), z(B, H), z(B, T, H), z(B, H), t,
                                    True),
        cuda_lstm.plan_forward_step(z(B, T, 4 * H), z(B, 4 * H), z(B, H), z(B, T, H),
                                    z(B, T, H), z(B, T, 4 * H), z(B, H), t),
        cuda_lstm.plan_backward_step(z(B, T, H), z(B, H), z(B, T, 4 * H), z(B, T, H), z(B, H),
                                     z(B, H), z(B, T, 4 * H), z(B, 4 * H), t),
        cuda_gru.plan_forward_step(z(B, T, 3 * H), z(B, 3 * H), z(3 * H), z(B, H), z(B, T, H),
                                   z(B, T, 4 * H), z(B, H), t),
        cuda_gru.plan_backward_step(z(B, T, H), z(B, H), z(B, T, 4 * H), z(B, T, H), z(B, H),
                                    z(B, H), z(B, T, 3 * H), z(B, T, 3 * H), z(B, 3 * H), t),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, T, H", [(32, 512, 1024), (3, 5, 90), (1, 1, 1)])
def test_plans_launch_compiled_kernels_one_thread_per_unit(dtype, B, T, H):
    for launch in _plans(dtype, B, T, H):
        assert launch.kernel in classic.kernel_names(dtype)
        assert launch.block[0] % _launch.WARP == 0 and launch.block[0] <= _launch.MAX_THREADS
        threads = launch.grid[0] * launch.block[0]
        assert B * H <= threads < B * H + launch.block[0]  # a ceil-div grid
        assert launch.args[-4:] == (B, T, H, T - 1)
        for x in launch.args:  # arrays, or scalars with an explicit C type
            assert isinstance(x, (np.ndarray, np.int64))


def test_kernel_names_by_cell():
    assert classic.kernel_names(np.float32, "lstm") == ("lstm_forward_step<float>",
                                                        "lstm_backward_step<float>")
    every = classic.kernel_names(np.float64)
    assert set(every) == {n for c in classic.CELLS for n in classic.kernel_names(np.float64, c)}
    with pytest.raises(ValueError, match=r"cell: expected one of .*got 'elman'"):
        classic.kernel_names(np.float64, "elman")


@pytest.mark.skipif(_build.nvrtc_library() is None,
                    reason='libnvrtc not installed (pip install "nvidia-cuda-nvrtc==13.0.*")')
def test_float_kernels_compute_in_float():
    """The PTX of the float kernels has no double arithmetic: a double literal
    (``1.0 - z``) or ``exp`` instead of ``expf`` would put .f64 instructions there."""
    names = classic.kernel_names(np.float32)
    ptx = _build.nvrtc_compile(classic.SOURCE, names, "compute_90").binary.decode(errors="replace")
    assert ptx.count(".entry") == len(names)
    assert not re.findall(r"\.f64\b", ptx), "double arithmetic in a float kernel"


# ---------------------------------------------------------------------------
# sanitizers on the real kernels (fresh interpreters with the runtime preloaded)
# ---------------------------------------------------------------------------

SANITIZED_RUN = """
import numpy as np
from minirec import registry
from minirec.kernels.cuda import classic
classic.SOURCE = {source!r}
for name in ("rnn", "rnn_relu", "lstm", "gru"):  # B·H = 2·20: two warps, 24 idle threads
    entry = registry.get(name)
    errors = registry.agreement(entry, "recurrent", "cuda-emulated",
                                size=entry.size("small", B=2, T=3, D=3, H=20))
    print(name, max(errors.values()))
"""


@needs_compiler
@pytest.mark.parametrize("sanitizer", ["thread", "address"])
def test_sanitizers_are_clean_on_the_step_kernels(sanitizer):
    proc = _build.run_sanitized(sanitizer, SANITIZED_RUN.format(source=classic.SOURCE))
    assert_sanitizer_clean(proc, 4)


@needs_compiler
def test_address_sanitizer_catches_a_missing_bounds_guard(tmp_path):
    """Without `if (!lane_index(...)) return;` the idle tail threads write past the
    arrays' ends: the guard is what keeps the ceil-div grid in bounds."""
    text = (_build.KERNEL_DIR / classic.SOURCE).read_text()
    guard = "    if (!lane_index(B * H, lane)) return;\n"
    variant = text.replace(guard, "    lane_index(B * H, lane);  // guard removed\n")
    assert text.count(guard) == 6 and guard not in variant
    path = tmp_path / "classic_unguarded.cu"
    path.write_text(variant)
    proc = _build.run_sanitized("address", SANITIZED_RUN.format(source=str(path)))
    assert "ERROR: AddressSanitizer" in proc.stderr
    assert "classic_unguarded.cu" in proc.stderr
    assert proc.returncode != 0


# ---------------------------------------------------------------------------
# on a GPU, through CuPy (pytest -m gpu)
# ---------------------------------------------------------------------------



GPU_ENTRIES = [*CELLS, "lstm_stack2", "gru_bidirectional"]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_state", [True, False], ids=["state0", "no-state0"])
@pytest.mark.parametrize("name", GPU_ENTRIES)
def test_gpu_matches_definition(name, with_state, dtype):
    """CuPy arrays in, CuPy arrays out, through the cell (and the compose
    wrappers): B·H = 4·300 over 5 blocks, T = 33; ``state0=None`` makes the cell
    build its zeros on the GPU, ``dstate=None`` its zero upstream gradient."""
    entry = registry.get(name)
    check_gpu_matches_definition(
        name, dtype, {"B": 4, "T": 33, "D": 24, "H": 300}, with_state,
        lambda g: registry.run_forward(entry, g, **entry.forward_kwargs, backend="cupy"),
        lambda g, cache, dy: registry.run_backward(entry, g, cache, dy, None),
        **entry.forward_kwargs)


@pytest.mark.gpu
@needs_compiler
@pytest.mark.parametrize("name", CELLS)
def test_gpu_and_emulator_agree(name):
    """The same kernels and plans on both backends; only libm (tanh, exp) and the
    GEMMs' summation order differ, far below the float64 tolerance."""
    check_gpu_and_emulator_agree(name, {"B": 2, "T": 9, "D": 4, "H": 40},
                                 **registry.get(name).forward_kwargs)
