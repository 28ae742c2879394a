"""Compile minirec's CUDA C sources: for CuPy, for the CPU emulator, and for checks.

* :func:`load` returns a module with ``get_function(name)(grid, block, args,
  shared_mem=0)``: a ``cupy.RawModule`` for ``backend="cupy"`` (NVRTC, through
  CuPy, on first use) or an :class:`EmulatedModule` for
  ``backend="cuda-emulated"``: the same source compiled by the host C++
  compiler (``$CXX``, default ``g++``; C++20) after
  ``emulation/cuda_emulation.h``, with one ``extern "C"`` entry per kernel,
  loaded through ctypes. Emulated builds are cached on disk under
  ``$MINIREC_CACHE/cuda-emulated`` (default ``~/.cache/minirec``), keyed by a
  hash of the compiler, the flags and the whole translation unit (source,
  included headers, emulation header, kernel names), so each source and dtype
  compiles once per machine; modules are kept per process.
* :func:`nvcc_check` and :func:`nvrtc_compile` compile a source for a GPU
  architecture without a GPU (warnings as errors; nvcc also reports registers
  and spills), for the tests.

Both compilers round the same way: ``--fmad=false`` on the GPU and
``-ffp-contract=off`` on the CPU, so only the source's explicit ``fmaf``/``fma``
fuse. ``MINIREC_EMULATOR_SANITIZE=thread`` (or ``address``) builds the emulated
kernels with ThreadSanitizer (AddressSanitizer); the process must then be
started with the sanitizer's runtime preloaded (``LD_PRELOAD=$(g++
-print-file-name=libtsan.so)``), as the tests do. CuPy is imported only by
:func:`import_cupy`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from minirec.kernels.cuda import _launch

KERNEL_DIR = Path(__file__).resolve().parent
EMULATION_HEADER = KERNEL_DIR / "emulation" / "cuda_emulation.h"

# C++17 for NVRTC/nvcc; no contraction of a*b+c into fma beyond the source's own
CUDA_OPTIONS = ("--std=c++17", "--fmad=false")
HOST_FLAGS = ("-std=c++20", "-O2", "-fPIC", "-shared", "-pthread", "-ffp-contract=off",
              "-fno-fast-math")
SANITIZERS = {
    "thread": ("-fsanitize=thread", "-O1", "-g"),
    "address": ("-fsanitize=address", "-fno-omit-frame-pointer", "-O1", "-g"),
}
# the C++ type of each dtype in every .cu (cfloat/cdouble: common.h's complex struct)
CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
          np.dtype(np.complex64): "cfloat", np.dtype(np.complex128): "cdouble"}

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$", re.M)
_MODULES: dict[tuple, Any] = {}


def ctype(dtype: Any) -> str:
    """The kernels' C++ type name of ``dtype`` (``float32`` → ``"float"``)."""
    dtype = np.dtype(dtype)
    if dtype not in CTYPES:
        raise TypeError(f"dtype: expected one of {[str(d) for d in CTYPES]}, got {dtype}")
    return CTYPES[dtype]


# ---------------------------------------------------------------------------
# source text
# ---------------------------------------------------------------------------

def _source_path(name: str | os.PathLike) -> Path:
    path = Path(name)
    if not path.is_absolute() and path.parent == Path("."):
        path = KERNEL_DIR / path
    if not path.is_file():
        raise FileNotFoundError(f"CUDA source: expected a file, got {str(path)!r}")
    return path


def source(name: str | os.PathLike) -> str:
    """The text of ``name`` (a file of this package, or a path) with its quoted
    ``#include``s of local headers inlined once each (looked up next to the
    file, then in this package), with ``#line`` markers so that compiler and
    sanitizer messages name the original files. One self-contained text is
    what CuPy hashes for its own cache and what NVRTC compiles without
    include paths. ``#line`` names files without their folder, so the text
    (and the emulator's cache key) does not depend on where they live."""
    seen: set[Path] = set()

    def expand(path: Path) -> str:
        text = _PRAGMA_ONCE.sub("", path.read_text())
        out, last = [f'#line 1 "{path.name}"\n'], 0
        for m in _INCLUDE.finditer(text):
            found = next((d / m.group(1) for d in (path.parent, KERNEL_DIR)
                          if (d / m.group(1)).is_file()), None)
            if found is None:  # a system or CUDA header: left to the compiler
                continue
            found = found.resolve()
            out.append(text[last:m.start()])
            if found not in seen:
                seen.add(found)
                out.append(expand(found))
                line = text.count("\n", 0, m.end()) + 2
                out.append(f'\n#line {line} "{path.name}"')
            last = m.end()
        out.append(text[last:])
        return "".join(out)

    return expand(_source_path(name).resolve())


# ---------------------------------------------------------------------------
# the emulator: host compiler, disk cache, ctypes
# ---------------------------------------------------------------------------

def host_compiler() -> str | None:
    """Path of the C++20 compiler the emulator uses (``$CXX`` or ``g++``), or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


@functools.cache
def _compiler_id(cxx: str) -> str:
    proc = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return f"{cxx}\n{proc.stdout.splitlines()[0] if proc.stdout else ''}"


def cache_dir() -> Path:
    """Where emulated builds are kept: ``$MINIREC_CACHE/cuda-emulated``
    (default ``~/.cache/minirec/cuda-emulated``)."""
    root = os.environ.get("MINIREC_CACHE") or Path.home() / ".cache" / "minirec"
    return Path(root) / "cuda-emulated"


def emulator_translation_unit(text: str, names: Sequence[str]) -> str:
    """The C++ the host compiler sees: the emulation header, the kernel source,
    and ``extern "C" int minirec_launch_<k>(...)`` for the k-th name expression
    (it instantiates the template, as NVRTC's name expressions do)."""
    entries = "".join(
        f'extern "C" int minirec_launch_{k}(const unsigned* grid, const unsigned* block, '
        f"std::size_t shared_mem, void** args, const long long* sizes, int nargs) {{\n"
        f"    return emu::launch(&{name}, grid, block, shared_mem, args, sizes, nargs);\n}}\n"
        for k, name in enumerate(names))
    header = _PRAGMA_ONCE.sub("", EMULATION_HEADER.read_text())
    start = "" if text.startswith("#line") else '#line 1 "<source>"\n'
    return (f'#line 1 "{EMULATION_HEADER.name}"\n{header}\n{start}{text}\n'
            f'#line 1 "<minirec emulator entries>"\n{entries}')


def _compile(cmd: list[str]) -> subprocess.CompletedProcess:
    # a sanitizer runtime preloaded into this process is not for the compiler
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def build_emulated(text: str, names: Sequence[str], *, sanitize: str | None = None) -> Path:
    """Compile ``text`` (a source from :func:`source`) for the emulator, or
    return the cached shared library. ``sanitize``: None, ``"thread"`` or
    ``"address"``."""
    if sanitize not in (None, *SANITIZERS):
        raise ValueError(f"sanitize: expected None or one of {tuple(SANITIZERS)}, got {sanitize!r}")
    cxx = host_compiler()
    if cxx is None:
        raise ImportError("backend='cuda-emulated' needs a C++20 compiler (g++ >= 11 or "
                          f"clang++ >= 16); none found as {os.environ.get('CXX', 'g++')!r}. "
                          "Install one (apt install g++) or set CXX.")
    flags = HOST_FLAGS + SANITIZERS.get(sanitize, ())
    tu = emulator_translation_unit(text, names)
    key = hashlib.sha256("\0".join([_compiler_id(cxx), " ".join(flags), tu]).encode())
    out = cache_dir() / f"{key.hexdigest()[:32]}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        cpp = Path(tmp) / "kernels.cpp"
        cpp.write_text(tu)
        so = Path(tmp) / "kernels.so"
        proc = _compile([cxx, *flags, str(cpp), "-o", str(so)])
        if proc.returncode != 0:
            raise RuntimeError(f"cuda-emulated: {Path(cxx).name} could not compile the kernels "
                               f"({', '.join(names)}):\n{proc.stderr[-6000:]}")
        os.replace(so, out)  # atomic: a concurrent process sees the whole file or none
    return out


def run_sanitized(sanitize: str, code: str, *, timeout: float = 600,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a fresh interpreter whose emulated kernels are
    built with ``sanitize`` (``"thread"`` or ``"address"``), the sanitizer's
    runtime preloaded (it must be loaded before Python). Returns the finished
    process: a ThreadSanitizer report ("WARNING: ThreadSanitizer: data race")
    or an AddressSanitizer one ("ERROR: AddressSanitizer") is in its stderr,
    and the exit status is then non-zero (66)."""
    if sanitize not in SANITIZERS:
        raise ValueError(f"sanitize: expected one of {tuple(SANITIZERS)}, got {sanitize!r}")
    cxx = host_compiler()
    if cxx is None:
        raise FileNotFoundError("a C++ compiler: expected $CXX or g++ on PATH, got none")
    lib = {"thread": "libtsan.so", "address": "libasan.so"}[sanitize]
    runtime = subprocess.run([cxx, f"-print-file-name={lib}"], capture_output=True,
                             text=True).stdout.strip()
    if not Path(runtime).is_file():
        raise FileNotFoundError(f"{lib}: expected the sanitizer runtime of {cxx}, got {runtime!r}")
    full_env = {**os.environ, **(env or {}), "LD_PRELOAD": runtime,
                "MINIREC_EMULATOR_SANITIZE": sanitize,
                "TSAN_OPTIONS": "exitcode=66 halt_on_error=0",
                "ASAN_OPTIONS": "exitcode=66 detect_leaks=0"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


class EmulatedKernel:
    """One kernel of an :class:`EmulatedModule`, called like ``cupy.RawKernel``."""

    def __init__(self, fn: Any, name: str) -> None:
        self._fn, self.name = fn, name

    def __call__(self, grid: Any, block: Any, args: tuple, *, shared_mem: int = 0) -> None:
        _launch.emulated_call(self._fn, self.name, grid, block, tuple(args), shared_mem)


class EmulatedModule:
    """The emulated twin of ``cupy.RawModule``: ``get_function(name)`` for each
    name expression the library was built with."""

    def __init__(self, path: Path, names: Sequence[str]) -> None:
        self.path, self.names = path, tuple(names)
        self._lib = ctypes.CDLL(str(path))
        self._kernels = {}
        for k, name in enumerate(self.names):
            fn = getattr(self._lib, f"minirec_launch_{k}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                           ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                           ctypes.POINTER(ctypes.c_longlong), ctypes.c_int]
            self._kernels[name] = EmulatedKernel(fn, name)

    def get_function(self, name: str) -> EmulatedKernel:
        if name not in self._kernels:
            raise ValueError(f"kernel: expected one of {self.names}, got {name!r}")
        return self._kernels[name]


# ---------------------------------------------------------------------------
# CuPy
# ---------------------------------------------------------------------------

def import_cupy() -> Any:
    """Import CuPy and check that it sees a GPU; each failure says what to do."""
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            "backend='cupy' needs CuPy, which is not installed: pip install 'minirec[gpu]' "
            "(cupy-cuda13x, for a CUDA 13 driver; for CUDA 12 install cupy-cuda12x). "
            "backend='cuda-emulated' runs the same kernels on the CPU."
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
        problem = "" if count > 0 else "it reports 0 devices"
    except Exception as exc:  # CUDARuntimeError: no driver, no device
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise ImportError(
            f"backend='cupy': CuPy is installed but cannot use a CUDA GPU ({problem}). "
            "Check the NVIDIA driver (nvidia-smi); backend='cuda-emulated' runs the same "
            "kernels on the CPU."
        )
    return cupy


def load(source_name: str | os.PathLike, names: Sequence[str], backend: str, *,
         sanitize: str | None = None) -> Any:
    """The compiled kernels ``names`` (name expressions) of ``source_name`` for
    ``backend`` (``"cupy"`` or ``"cuda-emulated"``), built once per process.
    ``sanitize`` defaults to ``$MINIREC_EMULATOR_SANITIZE`` (emulator only)."""
    names = tuple(names)
    if backend == "cuda-emulated" and sanitize is None:
        sanitize = os.environ.get("MINIREC_EMULATOR_SANITIZE") or None
    key = (str(_source_path(source_name)), names, backend, sanitize)
    if key not in _MODULES:
        text = source(source_name)
        if backend == "cupy":
            cupy = import_cupy()
            _MODULES[key] = cupy.RawModule(code=text, options=CUDA_OPTIONS,
                                           name_expressions=list(names))
        elif backend == "cuda-emulated":
            _MODULES[key] = EmulatedModule(build_emulated(text, names, sanitize=sanitize),
                                           names)
        else:
            raise ValueError(f"backend: expected 'cupy' or 'cuda-emulated', got {backend!r}")
    return _MODULES[key]


# ---------------------------------------------------------------------------
# compile checks without a GPU: nvcc and NVRTC
# ---------------------------------------------------------------------------

def nvcc() -> str | None:
    """Path of ``nvcc`` (on PATH, or ``$CUDA_HOME/bin``), or None."""
    found = shutil.which("nvcc")
    if found is None:
        home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
        candidate = Path(home) / "bin" / "nvcc"
        found = str(candidate) if candidate.is_file() else None
    return found


def _instantiations(names: Sequence[str]) -> str:
    # taking each kernel's address instantiates it, as name expressions do for NVRTC
    refs = ", ".join(f"(const void*)&{name}" for name in names)
    return ("\nextern const void* const minirec_kernels[];\n"
            f"const void* const minirec_kernels[] = {{{refs}}};\n")


class PtxasReport(NamedTuple):
    """What ``ptxas -v`` says about one kernel (a mangled name)."""

    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int


_PTXAS_FUNCTION = re.compile(r"Function properties for (\S+)\s*\n[^\n]*?(\d+) bytes stack frame, "
                             r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(log: str) -> dict[str, PtxasReport]:
    """``{mangled kernel name: PtxasReport}`` from ``-Xptxas -v`` output."""
    frames = {m.group(1): tuple(int(g) for g in m.groups()[1:])
              for m in _PTXAS_FUNCTION.finditer(log)}
    out = {}
    for block in re.split(r"(?=ptxas info\s*: Compiling entry function)", log):
        m = re.search(r"Compiling entry function '(\S+)'", block)
        regs = re.search(r"Used (\d+) registers", block)
        if m and regs:
            stack, stores, loads = frames.get(m.group(1), (0, 0, 0))
            out[m.group(1)] = PtxasReport(int(regs.group(1)), stack, stores, loads)
    return out


def nvcc_check(source_name: str | os.PathLike, names: Sequence[str], arch: str = "sm_80"
               ) -> tuple[dict[str, PtxasReport], str]:
    """Compile ``names`` of ``source_name`` to a cubin for ``arch`` with nvcc,
    every warning an error (``-Werror all-warnings``), and return ptxas's
    per-kernel report and the full log. Raises ``RuntimeError`` with the log
    when the compile fails, ``FileNotFoundError`` when nvcc is absent."""
    exe = nvcc()
    if exe is None:
        raise FileNotFoundError("nvcc: expected the CUDA toolkit's nvcc on PATH or in "
                                "$CUDA_HOME/bin, got none")
    with tempfile.TemporaryDirectory() as tmp:
        cu = Path(tmp) / "check.cu"
        cu.write_text(source(source_name) + _instantiations(names))
        cmd = [exe, f"-arch={arch}", "-cubin", *CUDA_OPTIONS, "-Werror", "all-warnings",
               "-Xptxas", "-v", "-o", str(Path(tmp) / "check.cubin"), str(cu)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc -arch={arch} failed on {source_name}:\n{log[-6000:]}")
    return parse_ptxas(log), log


def nvrtc_library() -> ctypes.CDLL | None:
    """libnvrtc 13 from the ``nvidia-cuda-nvrtc==13.0.*`` wheel (``nvidia/cu13/lib``),
    or ``$MINIREC_NVRTC`` (a path to a libnvrtc.so); None when neither exists."""
    candidates = [os.environ.get("MINIREC_NVRTC", "")]
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(str(Path(root) / "cu13" / "lib" / "libnvrtc.so.13"))
    for path in candidates:
        if path and Path(path).is_file():
            # libnvrtc dlopens its builtins by soname: load them first from the same folder
            for builtins in sorted(Path(path).parent.glob("libnvrtc-builtins.so.*")):
                if ".alt." not in builtins.name:
                    ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(path)
    return None


class NvrtcResult(NamedTuple):
    """``log`` (empty when clean), ``lowered`` (name expression → mangled name),
    ``binary`` (cubin for ``sm_XX``, PTX for ``compute_XX``), ``version``."""

    log: str
    lowered: dict[str, str]
    binary: bytes
    version: tuple[int, int]


def nvrtc_compile(source_name: str | os.PathLike, names: Sequence[str], arch: str = "sm_90",
                  options: Sequence[str] = ()) -> NvrtcResult:
    """Compile ``names`` of ``source_name`` with NVRTC (no GPU needed) for
    ``arch``: ``sm_XX`` gives a cubin, ``compute_XX`` PTX. Raises
    ``RuntimeError`` with NVRTC's log on failure, ``FileNotFoundError`` when
    libnvrtc is absent (``pip install "nvidia-cuda-nvrtc==13.0.*"``)."""
    lib = nvrtc_library()
    if lib is None:
        raise FileNotFoundError('libnvrtc: expected the wheel "nvidia-cuda-nvrtc==13.0.*" '
                                "(or $MINIREC_NVRTC), got none")
    vp = ctypes.c_void_p
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(result: int, what: str) -> None:
        if result != 0:
            raise RuntimeError(f"NVRTC {what}: {lib.nvrtcGetErrorString(result).decode()}")

    major, minor = ctypes.c_int(), ctypes.c_int()
    check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    prog = vp()
    text = source(source_name).encode()
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), text, str(source_name).encode(), 0, None,
                                 None), "nvrtcCreateProgram")
    try:
        for name in names:
            check(lib.nvrtcAddNameExpression(prog, name.encode()), f"name expression {name}")
        opts = [o.encode() for o in (*CUDA_OPTIONS, f"--gpu-architecture={arch}", *options)]
        result = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "log size")
        buf = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetProgramLog(prog, buf), "log")
        log = buf.value.decode(errors="replace").strip()
        if result != 0:
            raise RuntimeError(f"NVRTC {major.value}.{minor.value} --gpu-architecture={arch} "
                               f"failed on {source_name}:\n{log[-6000:]}")
        lowered = {}
        for name in names:
            ptr = ctypes.c_char_p()
            check(lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(ptr)), name)
            lowered[name] = ptr.value.decode()
        kind = "CUBIN" if arch.startswith("sm_") else "PTX"
        check(getattr(lib, f"nvrtcGet{kind}Size")(prog, ctypes.byref(size)), f"{kind} size")
        binary = ctypes.create_string_buffer(size.value)
        check(getattr(lib, f"nvrtcGet{kind}")(prog, binary), kind)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return NvrtcResult(log, lowered, binary.raw, (major.value, minor.value))
