"""The one place that resolves ``backend="numpy" | "numba" | "cupy"``.

The NumPy reference never imports a kernel module itself: it asks
:func:`kernels` for one by family name, and this module imports
``minirec.kernels.numba.<family>`` or ``minirec.kernels.cuda.<family>`` on first
use. ``import minirec`` therefore imports neither Numba nor CuPy, and compiles
nothing. When a backend's package is missing the error says what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType

BACKENDS = ("numpy", "numba", "cupy")

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
    """Whether ``backend``'s package imports (CuPy also needs a usable GPU)."""
    if backend == "numpy":
        return True
    try:
        mod = importlib.import_module(_PACKAGE[backend])
        if backend == "cupy":
            mod.cuda.runtime.getDeviceCount()
    except Exception as exc:  # ImportError, or CuPy without a driver/GPU
        if raise_error:
            raise ImportError(
                f"backend={backend!r} needs the {_PACKAGE[backend]!r} package and it could "
                f"not be used ({type(exc).__name__}: {exc}). Install it with: "
                f"{_INSTALL_HINT[backend]}"
            ) from exc
        return False
    return True


def kernels(family: str, backend: str) -> ModuleType:
    """Import and return the kernel module of ``family`` for ``backend``.

    ``kernels("linear_scan", "numba")`` is ``minirec.kernels.numba.linear_scan``.
    """
    if backend == "numpy":
        raise ValueError("the numpy backend is the reference; it has no kernel module")
    sub = {"numba": "numba", "cupy": "cuda"}[backend]
    available(backend, raise_error=True)
    return importlib.import_module(f"minirec.kernels.{sub}.{family}")


def xp_of(x) -> ModuleType:
    """``numpy`` for NumPy arrays, ``cupy`` for CuPy arrays."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return importlib.import_module("cupy")
    return importlib.import_module("numpy")

