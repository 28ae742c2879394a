"""Launch plans: one description of a kernel launch, run by CuPy or by the emulator.

A :class:`Launch` is what ``cupy.RawKernel.__call__`` takes: the kernel's name
expression, ``grid`` and ``block`` (up to three ints each), the dynamic shared
memory in bytes and the argument tuple (arrays, and scalars wrapped in NumPy
types so that their C type is explicit: ``np.int64`` is ``long long``). The
family launchers (``linear_scan.py``, ...) compute their plans with the helpers
here, once, for both backends; :func:`run` hands a plan to a module from
:mod:`minirec.kernels.cuda._build` (a ``cupy.RawModule`` or its emulated twin,
which takes the same call), so the launch logic that runs on a GPU is the one
the CPU tests exercise.
"""

from __future__ import annotations

import ctypes
from typing import Any, NamedTuple

import numpy as np

WARP = 32            # threads per warp on every NVIDIA GPU so far
MAX_THREADS = 1024   # threads per block (CUDA limit, all compute capabilities)
MAX_GRID_YZ = 65535  # blocks along grid y and z (CUDA limit)
MAX_GRID_X = 2**31 - 1


class Launch(NamedTuple):
    """One kernel launch: ``kernel`` (a name expression such as
    ``"linear_scan_forward_recurrent<float>"``), ``grid``, ``block``,
    ``shared_mem`` (dynamic, bytes) and ``args``."""

    kernel: str
    grid: tuple[int, ...]
    block: tuple[int, ...]
    shared_mem: int
    args: tuple


def ceil_div(n: int, d: int) -> int:
    """⌈n / d⌉ for non-negative ``n`` and positive ``d``."""
    return -(-int(n) // int(d))


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ≥ ``n``."""
    return ceil_div(n, multiple) * multiple


def one_thread_per_item(n: int, threads: int = 256) -> tuple[tuple[int], tuple[int]]:
    """``(grid, block)`` for ``n`` independent items: a ceil-div grid whose last
    block's tail threads fail the kernel's bounds guard. ``threads`` is rounded
    to whole warps and shrunk for small ``n`` (no block of 256 for 3 items)."""
    if n < 1:
        raise ValueError(f"n: expected at least one item to launch for, got {n}")
    block = min(round_up(threads, WARP), round_up(n, WARP))
    grid = ceil_div(n, block)
    if grid > MAX_GRID_X:
        raise ValueError(f"n: expected at most {MAX_GRID_X * block} items, got {n}")
    return (grid,), (block,)


def run(module: Any, launch: Launch) -> None:
    """Launch ``launch`` on ``module`` (``cupy.RawModule`` or ``_build.EmulatedModule``)."""
    kernel = module.get_function(launch.kernel)
    kernel(launch.grid, launch.block, launch.args, shared_mem=launch.shared_mem)


# ---------------------------------------------------------------------------
# the emulator's side of a call: arguments as the driver API takes them
# (an array of pointers to the values), checked against the kernel's signature
# ---------------------------------------------------------------------------

_ERRORS = {
    1: "the number of arguments does not match the kernel's parameters",
    2: "block: expected 1..1024 threads (x, y <= 1024, z <= 64)",
    3: "grid: expected positive sizes, y and z <= 65535",
    4: "shared_mem: expected at most 48 KiB of dynamic shared memory",
    5: "the emulator could not start one host thread per CUDA thread",
}


def _dims(name: str, dims: Any) -> tuple[int, int, int]:
    dims = (dims,) if isinstance(dims, (int, np.integer)) else tuple(dims)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) for d in dims):
        raise TypeError(f"{name}: expected 1 to 3 ints, got {dims!r}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))


def emulated_call(fn: Any, kernel: str, grid: Any, block: Any, args: tuple,
                  shared_mem: int = 0) -> None:
    """Call the ctypes entry ``fn`` of ``kernel`` like ``cupy.RawKernel.__call__``.

    Arrays must be C-contiguous NumPy arrays (their data pointer is passed);
    scalars must be NumPy scalars (their bytes are passed). The emulator checks
    the count, kinds and sizes against the kernel's C++ signature and reports a
    mismatch here, before a GPU would read garbage.
    """
    values, sizes, keep = [], [], []
    for k, x in enumerate(args):
        if isinstance(x, np.ndarray):
            if not x.flags.c_contiguous:
                raise ValueError(f"{kernel}: argument {k}: expected a C-contiguous array, "
                                 f"got strides {x.strides}")
            holder = ctypes.c_void_p(x.ctypes.data)
            sizes.append(0)
        elif isinstance(x, np.generic):
            holder = np.array(x)
            sizes.append(holder.itemsize)
        else:
            raise TypeError(f"{kernel}: argument {k}: expected a NumPy array or a NumPy "
                            f"scalar (np.int64(...), np.float32(...)), got {type(x).__name__}")
        keep.append(holder)
        values.append(ctypes.addressof(holder) if isinstance(holder, ctypes.c_void_p)
                      else holder.ctypes.data)
    n = len(values)
    g = (ctypes.c_uint * 3)(*_dims("grid", grid))
    b = (ctypes.c_uint * 3)(*_dims("block", block))
    ptrs = (ctypes.c_void_p * max(n, 1))(*values)
    size_arr = (ctypes.c_longlong * max(n, 1))(*sizes)
    code = fn(g, b, ctypes.c_size_t(int(shared_mem)), ptrs, size_arr, ctypes.c_int(n))
    if code >= 100:  # argument k has the wrong kind or size; code // 1000 = expected bytes
        expected, k = divmod(code, 1000)
        k -= 100
        want = "a pointer (an array)" if expected == 0 else f"a {expected}-byte scalar"
        got = ("an array" if sizes[k] == 0
               else f"a {sizes[k]}-byte {np.asarray(args[k]).dtype} scalar")
        raise TypeError(f"{kernel}: argument {k}: expected {want} (the kernel's parameter), "
                        f"got {got}")
    if code:
        raise RuntimeError(f"{kernel}: launch failed: {_ERRORS.get(code, code)} "
                           f"(grid {tuple(g)}, block {tuple(b)}, shared_mem {shared_mem}, "
                           f"{n} arguments)")


BACKENDS = ("cupy", "cuda-emulated")


def _is_cupy(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def backend_and_xp(backend: str | None, **arrays: Any) -> tuple[str, Any]:
    """The CUDA backend the ``arrays`` belong to and its array module.

    CuPy arrays run on the GPU (``"cupy"``, module ``cupy``), NumPy arrays in
    the emulator (``"cuda-emulated"``, module ``numpy``); ``backend`` forces
    one, and an array of the other kind is a ``TypeError`` that says how to
    move it. ``None`` entries are ignored.
    """
    kinds = {name: "cupy" if _is_cupy(x) else "cuda-emulated"
             for name, x in arrays.items() if x is not None}
    if backend is None:
        backend = "cupy" if "cupy" in kinds.values() else "cuda-emulated"
    elif backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    for name, kind in kinds.items():
        if kind != backend:
            want = "a CuPy array" if backend == "cupy" else "a NumPy array"
            move = "cupy.asarray" if backend == "cupy" else ".get()"
            raise TypeError(f"{name}: expected {want} for backend={backend!r} (move it with "
                            f"{move}), got {type(arrays[name]).__module__}."
                            f"{type(arrays[name]).__name__}")
    if backend == "cupy":
        from minirec.kernels.cuda import _build
        return backend, _build.import_cupy()
    return backend, np
