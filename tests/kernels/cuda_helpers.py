"""What every CUDA kernel test shares: the skip marks for a missing host
compiler and for a missing CuPy/GPU, the emulator's agreement with a registry
entry, the sanitizer runs' checks, and the GPU-against-definition checks."""

import numpy as np
import pytest

from minirec import registry
from minirec.kernels.cuda import _build
from tests.conftest import TOL, assert_close

needs_compiler = pytest.mark.skipif(_build.host_compiler() is None,
                                    reason="no C++20 compiler ($CXX or g++) for cuda-emulated")


def cupy_or_skip():
    """The ``cupy`` module, or a skip that says whether CuPy or the GPU is missing."""
    cupy = pytest.importorskip("cupy", reason="CuPy not installed (pip install 'minirec[gpu]')")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy without a driver or device
        pytest.skip(f"CuPy installed, no usable GPU ({type(exc).__name__}: {exc})")
    if count < 1:
        pytest.skip("CuPy installed, no GPU")
    return cupy


def bad_agreement(name, dtype, **dims):
    """The errors of registry entry ``name`` on ``cuda-emulated`` against the
    definition (``size("small", **dims)``) above the dtype's tolerance (float64
    1e-10, float32 1e-4 relative RMS); empty when all agree."""
    entry = registry.get(name)
    errors = registry.agreement(entry, "recurrent", "cuda-emulated", dtype=np.dtype(dtype),
                                size=entry.size("small", **dims))
    tol = TOL[np.dtype(dtype)]
    return {k: v for k, v in errors.items() if not v <= tol}


def assert_sanitizer_clean(proc, n_lines):
    """A sanitized run (``_build.run_sanitized``) reported nothing, exited 0 and
    printed ``n_lines`` lines whose last number (an agreement) is ≤ 1e-10."""
    assert "Sanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == n_lines
    for line in lines:  # and the answers are right
        assert float(line.split()[-1]) <= 1e-10, line


def leaves(prefix, x):
    """``{name: array}`` of a nested dict/tuple, the arrays left where they are."""
    if isinstance(x, dict):
        return {k: v for n, e in x.items() for k, v in leaves(f"{prefix}.{n}", e).items()}
    if isinstance(x, (tuple, list)):
        return {k: v for i, e in enumerate(x) for k, v in leaves(f"{prefix}[{i}]", e).items()}
    return {prefix: x}


def to_gpu(cupy, x):
    """``x`` (arrays in nested dicts/tuples, ``None`` kept) with every array on the GPU."""
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: to_gpu(cupy, v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(to_gpu(cupy, v) for v in x)
    return cupy.asarray(x)


def check_gpu_matches_definition(name, dtype, dims, with_state, forward, backward,
                                 **forward_kwargs):
    """Entry ``name``'s inputs (``size("small", **dims)``, ``state0=None`` unless
    ``with_state``) as CuPy arrays through ``forward(gpu_inputs) -> (out, state,
    cache)`` and ``backward(gpu_inputs, cache, dy) -> grads`` (``dstate=None``):
    CuPy arrays of the dtype out, equal to the float64 definition
    (``registry.run_forward(entry, inputs, **forward_kwargs)``) within the tolerance."""
    cupy = cupy_or_skip()
    entry = registry.get(name)
    rng = np.random.default_rng(0)
    inputs = entry.make_inputs(rng, np.dtype(dtype), entry.size("small", **dims))
    if not with_state:
        inputs["state0"] = None
    ref_inputs = registry._to64(inputs)
    ref_out, ref_state, ref_cache = registry.run_forward(entry, ref_inputs, **forward_kwargs)
    dy = rng.standard_normal(ref_out.shape)
    ref = registry.run_backward(entry, ref_inputs, ref_cache, dy, None)
    gpu_inputs = to_gpu(cupy, inputs)
    out, state, cache = forward(gpu_inputs)
    assert isinstance(out, cupy.ndarray)
    tol = TOL[np.dtype(dtype)]
    assert_close(out.get(), ref_out, tol, "y")
    for k, v in leaves("state", ref_state).items():
        assert_close(leaves("state", state)[k].get(), v, tol, k)
    grads = backward(gpu_inputs, cache, cupy.asarray(dy.astype(dtype)))
    got = leaves("", grads)
    for k, v in leaves("", ref).items():
        assert isinstance(got[k], cupy.ndarray), k
        assert got[k].dtype == np.dtype(dtype), k
        assert_close(got[k].get(), v, tol, f"d{k}")


def check_gpu_and_emulator_agree(name, dims, **forward_kwargs):
    """Entry ``name``'s float64 forward (``size("small", **dims)``) on ``cupy``
    equals ``cuda-emulated`` to 1e-12: the same kernels and plans on both."""
    cupy = cupy_or_skip()
    entry = registry.get(name)
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, entry.size("small", **dims))
    emulated, _, _ = registry.run_forward(entry, inputs, **forward_kwargs,
                                          backend="cuda-emulated")
    gpu, _, _ = registry.run_forward(entry, to_gpu(cupy, inputs), **forward_kwargs,
                                     backend="cupy")
    assert_close(gpu.get(), emulated, 1e-12, "y")
