"""The one place that resolves ``backend="numpy" | "numba" | "cupy" | "cuda-emulated"``.

The NumPy reference never imports a kernel module itself: it asks
:func:`kernels` for one by family name, and this module imports
``minirec.kernels.numba.<family>`` or ``minirec.kernels.cuda.<family>`` on first
use. ``import minirec`` therefore imports neither Numba nor CuPy, and compiles
nothing. When a backend's package (or device, or compiler) is missing the
error says what to install.

``cupy`` and ``cuda-emulated`` share one kernel module per family (the same
CUDA C source: launched by CuPy on a GPU, or compiled by the host C++ compiler
against minirec's emulation header and run on the CPU); :func:`kernels` hands
the definition that module with the backend bound, so the definition's call
is the same one line for every backend.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable
from types import ModuleType

BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
CUDA_BACKENDS = ("cupy", "cuda-emulated")

_INSTALL_HINT = {
    "numba": "pip install numba",
    "cupy": "pip install 'minirec[gpu]'  (cupy-cuda13x, needs an NVIDIA GPU and driver)",
}
_PACKAGE = {"numba": "numba", "cupy": "cupy"}


def resolve(backend: str, supported: Iterable[str], *, what: str = "this function",
            method: str | None = None, backend_methods: dict | None = None) -> str:
    """Validate ``backend`` against the backends ``what`` supports and return it.

    With ``method`` and ``backend_methods`` (a module's ``BACKEND_METHODS``) it
    also checks that the backend has a kernel for that method
    (:func:`check_method`).

    Raises ``ValueError`` for an unknown or unsupported backend, ``ImportError``
    (with the pip command to run) when its package is not installed.
    """
    supported = tuple(supported)
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a string, one of {BACKENDS}, got "
                        f"{type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend not in supported:
        raise ValueError(
            f"backend: {what} supports {supported}, got {backend!r}"
        )
    if method is not None and backend_methods is not None:
        check_method(method, backend, backend_methods, what=what)
    if backend != "numpy":
        available(backend, raise_error=True)
    return backend


def check_method(method: str, backend: str, backend_methods: dict, *,
                 what: str = "this function") -> None:
    """Raise ``ValueError`` if ``backend`` has no kernel for ``method``.

    ``backend_methods`` maps a backend to the methods it implements (a module's
    ``BACKEND_METHODS``); backends not in it (NumPy) implement every method.
    """
    if backend in backend_methods and method not in backend_methods[backend]:
        raise ValueError(
            f"method: {what} with backend={backend!r} supports {backend_methods[backend]}, "
            f"got {method!r}"
        )


def available(backend: str, *, raise_error: bool = False) -> bool:
    """Whether ``backend`` can run here: its package imports (CuPy also needs a
    usable GPU; ``cuda-emulated`` needs a C++20 host compiler)."""
    if backend == "numpy":
        return True
    try:
        if backend in CUDA_BACKENDS:
            from minirec.kernels.cuda import _build
            if backend == "cupy":
                _build.import_cupy()
            elif _build.host_compiler() is None:
                raise ImportError("backend='cuda-emulated' needs a C++20 host compiler (g++ "
                                  "or clang++ on PATH, or $CXX): e.g. apt-get install g++")
        else:
            importlib.import_module(_PACKAGE[backend])
    except ImportError as exc:
        if raise_error:
            if backend in CUDA_BACKENDS:
                raise
            raise ImportError(
                f"backend={backend!r} needs the {_PACKAGE[backend]!r} package and it could "
                f"not be used ({type(exc).__name__}: {exc}). Install it with: "
                f"{_INSTALL_HINT[backend]}"
            ) from exc
        return False
    return True


class _Bound:
    """A CUDA kernel module with its backend fixed (``cupy`` or ``cuda-emulated``)."""

    def __init__(self, module: ModuleType, backend: str) -> None:
        self.module, self.backend = module, backend

    def forward(self, *args, **kwargs):
        """The module's ``forward`` with ``backend=`` bound."""
        return self.module.forward(*args, backend=self.backend, **kwargs)

    def backward(self, *args, **kwargs):
        """The module's ``backward`` with ``backend=`` bound."""
        return self.module.backward(*args, backend=self.backend, **kwargs)


def kernels(family: str, backend: str) -> ModuleType | _Bound:
    """The kernel module of ``family`` for ``backend``, imported on first use.

    ``kernels("linear_scan", "numba")`` is ``minirec.kernels.numba.linear_scan``;
    for ``"cupy"`` and ``"cuda-emulated"`` it is ``minirec.kernels.cuda.<family>``
    with that backend bound to its ``forward``/``backward``.
    """
    if backend == "numpy":
        raise ValueError("the numpy backend is the reference; it has no kernel module")
    available(backend, raise_error=True)
    if backend in CUDA_BACKENDS:
        return _Bound(importlib.import_module(f"minirec.kernels.cuda.{family}"), backend)
    return importlib.import_module(f"minirec.kernels.{backend}.{family}")


def blas_policy(backend: str):
    """A context for the BLAS calls a cell makes around ``backend``'s kernels:
    for ``"numba"`` they run on one thread (:func:`minirec.kernels.numba._blas.blas_single_thread`),
    so that OpenBLAS's spinning workers do not compete with Numba's threads for the
    same cores between the kernels (measured, the Mamba block at (8, 512, 32, 32)
    float32 on 2 cores: forward+backward 63 ms with threaded BLAS, 36 ms on one
    thread); as is for every other backend."""
    if backend == "numba":
        from minirec.kernels.numba._blas import blas_single_thread
        return blas_single_thread()
    return contextlib.nullcontext()


def xp_of(x) -> ModuleType:
    """``numpy`` for NumPy arrays, ``cupy`` for CuPy arrays."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return importlib.import_module("cupy")
    return importlib.import_module("numpy")

