"""CUDA C kernels, run by CuPy on a GPU or by the emulator on the CPU.

One ``.cu`` per family (``linear_scan.cu``, ...) with templated kernels for
float, double and, where the family is complex, ``cfloat``/``cdouble``
(``common.h``); one Python launcher per family (``linear_scan.py``) with the
definition's arguments, whose launch plans serve both backends:

``backend="cupy"``           ``cupy.RawModule`` (NVRTC), CuPy arrays in and out.
``backend="cuda-emulated"``  the same source compiled by the host C++ compiler
                             against ``emulation/cuda_emulation.h`` (one
                             ``std::thread`` per CUDA thread) and called through
                             ctypes: slow, for tests, teaching and debugging;
                             NumPy arrays in and out.

``_build`` compiles and caches, ``_launch`` describes and runs launches.
Importing this package imports neither CuPy nor a compiler; both are reached
on first use.
"""
