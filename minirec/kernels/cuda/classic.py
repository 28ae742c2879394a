"""Launch plans and GEMMs of the classic cells (Elman RNN, LSTM, GRU) in CUDA (classic.cu).

Tested against ``minirec.cells.rnn``/``lstm``/``gru`` with ``backend="numpy"``
(tests/kernels/test_cuda_classic.py, tests/test_contract.py): on the CPU
through the emulator, on a GPU through CuPy (``pytest -m gpu``). The cells
reach these through the wrappers :mod:`minirec.kernels.cuda.rnn`, ``lstm``
and ``gru`` (the definitions' signatures and return structures), as the Numba
wrappers use :mod:`minirec.kernels.numba.classic`. The work is split as the
cells' structure suggests (``G`` = gates · H):

* ``gi = x W_ih^T + b`` for all T: one GEMM before the loop (:func:`project`;
  NumPy's BLAS on ``cuda-emulated``, cuBLAS through CuPy on ``cupy``).
* per step ``t``: the GEMM ``gh = h_{t-1} W_hh^T`` (an array ``matmul`` into a
  reused ``(B, G)`` buffer), then ONE fused gate kernel (``*_forward_step``):
  nonlinearities, state update, post-activation gates for the backward.
* backward, per step in reverse: ONE fused gate-backward kernel
  (``*_backward_step``: ``∂L/∂h_t`` → the pre-activation gradient ``da_t``),
  then the GEMM ``da_t W_hh`` (``∂L/∂h_{t-1}``'s recurrent part).
* ``dW_ih, dW_hh, db_ih, db_hh, dx``: GEMMs over all T after the loop
  (:func:`dense_grads`).

Each step kernel runs one thread per ``(b, j)`` (``B·H`` threads, a ceil-div
grid of whole warps); its launch is a :class:`~minirec.kernels.cuda._launch.Launch`
from :func:`step_launch`, the same plan for both backends. The arrays choose
the backend (CuPy arrays: ``cupy``; NumPy arrays: ``cuda-emulated``). This
module imports nothing from minirec outside ``minirec.kernels``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minirec.kernels.cuda import _build, _launch
from minirec.kernels.cuda._launch import Launch

SOURCE = "classic.cu"
BACKENDS = _launch.BACKENDS
# the dtypes the kernels are instantiated for (name_expressions; the compile checks)
DTYPES = (np.float64, np.float32)
CELLS = ("rnn", "lstm", "gru")


def kernel_names(dtype: Any, cell: str | None = None) -> tuple[str, ...]:
    """The name expressions of classic.cu's kernels for ``dtype`` (those of
    ``cell`` only, when given: ``"rnn"``, ``"lstm"`` or ``"gru"``)."""
    F = _build.ctype(dtype)
    names = {
        "rnn": tuple(f"rnn_{d}_step<{F}, {relu}>" for d in ("forward", "backward")
                     for relu in ("false", "true")),
        "lstm": (f"lstm_forward_step<{F}>", f"lstm_backward_step<{F}>"),
        "gru": (f"gru_forward_step<{F}>", f"gru_backward_step<{F}>"),
    }
    if cell is None:
        return sum(names.values(), ())
    if cell not in names:
        raise ValueError(f"cell: expected one of {CELLS}, got {cell!r}")
    return names[cell]


def step_launch(kernel: str, arrays: tuple, B: int, T: int, H: int, t: int) -> Launch:
    """The launch of one step kernel: one thread per ``(b, j)``, ``B·H`` threads
    in a ceil-div grid (the last block's tail threads idle), arguments
    ``(*arrays, B, T, H, t)`` (every step kernel of classic.cu ends so)."""
    grid, block = _launch.one_thread_per_item(B * H)
    i64 = np.int64
    return Launch(kernel, grid, block, 0, (*arrays, i64(B), i64(T), i64(H), i64(t)))


# ---------------------------------------------------------------------------
# plumbing shared by the wrappers
# ---------------------------------------------------------------------------



def compute_dtype(*arrays: Any) -> np.dtype:
    """The common dtype of ``arrays`` (from their dtypes: works for CuPy arrays)."""
    return np.result_type(*(a.dtype for a in arrays))


def contiguous(xp: Any, a: Any, dtype: Any) -> Any:
    """``a`` in ``dtype``, C-contiguous (``a`` itself when it already is)."""
    return xp.ascontiguousarray(a.astype(dtype, copy=False))


def fresh(xp: Any, a: Any, dtype: Any) -> Any:
    """A new C-contiguous copy of ``a`` in ``dtype``: a buffer a kernel may overwrite."""
    return xp.array(a, dtype=dtype, order="C", copy=True)


def load(dtype: Any, backend: str) -> Any:
    """classic.cu's kernels for ``dtype``, compiled once per process and backend."""
    return _build.load(SOURCE, kernel_names(dtype), backend)
