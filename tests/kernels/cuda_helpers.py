"""What every CUDA kernel test shares: the skip marks for a missing host
compiler and for a missing CuPy/GPU."""

import pytest

from minirec.kernels.cuda import _build

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
