"""Every CUDA kernel of every family compiles for the GPU architectures we
target, without a GPU: nvcc (sm_80, sm_90, warnings as errors, no register
spills, no stack) and NVRTC 13.0 (what ``cupy.RawModule`` uses, with a 13.0
driver). A family module in ``minirec/kernels/cuda/`` joins by having
``SOURCE``, ``DTYPES`` and ``kernel_names(dtype)``.
"""

import importlib
import pkgutil

import pytest

import minirec.kernels.cuda as cuda_pkg
from minirec.kernels.cuda import _build


def _families():
    out = []
    for info in pkgutil.iter_modules(cuda_pkg.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"minirec.kernels.cuda.{info.name}")
        if all(hasattr(mod, a) for a in ("SOURCE", "DTYPES", "kernel_names")):
            out.append(info.name)
    return out


FAMILIES = _families()


def _names(family):
    mod = importlib.import_module(f"minirec.kernels.cuda.{family}")
    return mod.SOURCE, [n for d in mod.DTYPES for n in mod.kernel_names(d)]


def test_the_linear_scan_family_is_found():
    assert "linear_scan" in FAMILIES


@pytest.mark.skipif(_build.nvcc() is None, reason="nvcc (CUDA toolkit) not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("family", FAMILIES)
def test_nvcc_compiles_every_kernel_without_warnings_or_spills(family, arch):
    source, names = _names(family)
    report, log = _build.nvcc_check(source, names, arch)  # -Werror all-warnings
    assert len(report) == len(names), log
    for kernel, r in report.items():
        assert r.spill_store_bytes == 0 and r.spill_load_bytes == 0, (kernel, r)
        assert r.stack_bytes == 0, (kernel, r)


@pytest.mark.skipif(_build.nvrtc_library() is None,
                    reason='libnvrtc not installed (pip install "nvidia-cuda-nvrtc==13.0.*")')
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("family", FAMILIES)
def test_nvrtc_compiles_every_kernel_without_warnings_or_spills(family, arch):
    source, names = _names(family)
    result = _build.nvrtc_compile(source, names, arch, ("--ptxas-options=-v",))
    assert result.version[0] >= 13
    # NVRTC has no -Werror: any log line that is not ptxas's -v report is a warning
    assert [line for line in result.log.splitlines() if not line.startswith("ptxas")] == []
    report = _build.parse_ptxas(result.log)
    assert set(report) == set(result.lowered.values())
    assert all(r.spill_store_bytes == r.spill_load_bytes == 0 for r in report.values())
    assert result.binary[:4] == b"\x7fELF"  # a cubin
