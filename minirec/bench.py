"""Benchmarks: every registry entry × (method, backend) against this machine's limits.

``minirec bench`` (and ``make bench``, which unsets ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` for this command only) runs, in one process:

1. the machine's limits, measured in the same run: streaming copy bandwidth
   (GB/s, ``np.copyto`` of a 256 MiB array: 2 bytes moved per byte copied) and
   float32/float64 GEMM throughput (GFLOP/s, ``2n³`` flops for ``n = 1024``);
2. for each registry entry, each supported ``(method, backend)`` and each size,
   the median wall time of forward and of forward+backward after a warm-up
   call (which also compiles Numba kernels; the first call's time is reported);
3. achieved GB/s (bytes of all inputs and outputs read or written once — a
   lower bound on the traffic) and its fraction of the copy bandwidth;
4. ratios against the recurrent NumPy definition in the same run;
5. PyTorch CPU at the same shapes and thread count, timed in a separate
   process (sharing a process with OpenBLAS distorts both), when installed;
6. forward+backward time against T (64 … 16384) for every method and backend
   of ``scan.linear`` (B·D = 32, where chunking over time is meant to pay),
   ``rnn`` and ``simple_gla``;
7. scaling, when numba is timed: the LSTM's numba forward+backward against the
   hidden size H and the batch size B (GEMM-bound: achieved GFLOP/s against
   the GEMM throughput measured in 1.) next to ``torch.nn.LSTM``, and the diagonal
   cells (minGRU, minLSTM, HGRN, LRU, S4D, Mamba, Aaren) on numba and as the
   NumPy definition against T, with numba's speed-up per T.

``--backend`` restricts which backends are timed. ``backend="cupy"`` cases
(``minirec bench --backend cupy``; CuPy is imported only then) are timed with
CUDA events (``cupyx.profiler.benchmark``) and read against the GPU's
device-to-device copy bandwidth, measured in the same run; the scans are also
timed as a naive CuPy loop over T (a Python loop of elementwise ops, what one
writes without a kernel) and, in a separate process, as the same loop in
PyTorch CUDA where ``torch.cuda`` is available. The report names the GPU.
``cuda-emulated`` (CUDA C run on the CPU, one host thread per CUDA thread) is
a teaching and test backend, not a fast one: it is skipped unless asked for.

It writes ``RESULTS.md`` (with ``analysis.md`` from ``--out`` appended, the
hand-written reading of the numbers, unless ``--backend`` restricted the run),
``results.json`` and PNG plots to ``--out`` (default ``benchmarks/``).
Timings are never asserted anywhere in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np

# (B, T, D, H) per size name; D is the channel/input size, H the hidden/state size
BENCH_SIZES = {
    "small": (4, 64, 32, 32),
    "medium": (8, 512, 64, 64),
    "long": (2, 4096, 32, 32),
}


def _median_time(fn: Callable[[], object], repeats: int, budget_s: float) -> float:
    times = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > deadline and len(times) >= 3:
            break
    return float(np.median(times))


# ---------------------------------------------------------------------------
# the GPU (backend="cupy"): CuPy is imported only by these functions
# ---------------------------------------------------------------------------

def _cupy():
    """CuPy with a usable GPU, imported on first use; an ``ImportError`` that says
    what to install (or that no GPU is visible) otherwise."""
    from minirec.kernels.cuda import _build
    return _build.import_cupy()


def _synchronize() -> None:
    """Wait until the GPU has finished the work queued so far."""
    _cupy().cuda.Device().synchronize()


def _cuda_event_time(fn: Callable[[], object], repeats: int, budget_s: float) -> float:
    """Median GPU time of ``fn()`` in seconds: CUDA events recorded before and after
    each call (``cupyx.profiler.benchmark``), after one untimed warm-up call, for
    ``repeats`` calls (at least 3) or until ``budget_s`` seconds have passed."""
    from cupyx.profiler import benchmark

    result = benchmark(fn, n_repeat=max(int(repeats), 3), n_warmup=1, max_duration=budget_s)
    return float(np.median(np.asarray(result.gpu_times)[0]))


def timer_for(backend: str) -> Callable[[Callable[[], object], int, float], float]:
    """The timing function for ``backend``'s cases: CUDA events for ``"cupy"`` (a
    host clock would time the launches, not the kernels), the median wall time of
    :func:`_median_time` otherwise. Both take ``(fn, repeats, budget_s)``."""
    return _cuda_event_time if backend == "cupy" else _median_time


def _to_device(x):
    """``x`` (an array, or dicts/tuples/lists of them) copied to the GPU."""
    if isinstance(x, dict):
        return {k: _to_device(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_to_device(v) for v in x)
    return _cupy().asarray(x) if isinstance(x, np.ndarray) else x


def gpu_limits(repeats: int = 20) -> tuple[dict, dict]:
    """The GPU's device-to-device copy bandwidth measured now, and what the GPU is.

    Returns ``({"gpu_copy_GBps": ...}, info)``: ``cupy.copyto`` of up to 1 GiB
    (at most a quarter of the free memory), 2 bytes moved per byte copied, timed
    with CUDA events; ``info`` has the GPU's name, compute capability and
    memory, and the CuPy and CUDA runtime/driver versions.
    """
    cupy = _cupy()
    runtime = cupy.cuda.runtime
    device = cupy.cuda.Device()
    props = runtime.getDeviceProperties(device.id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    free, total = runtime.memGetInfo()
    n_bytes = int(min(2**30, free // 4)) // 4 * 4
    src = cupy.ones(n_bytes // 4, cupy.float32)
    dst = cupy.empty_like(src)
    t = _cuda_event_time(lambda: cupy.copyto(dst, src), repeats, 10.0)
    info = {"gpu": name, "gpu_compute_capability": f"{props['major']}.{props['minor']}",
            "gpu_memory_GiB": round(total / 2**30, 1), "cupy": cupy.__version__,
            "cuda_runtime": runtime.runtimeGetVersion(),
            "cuda_driver": runtime.driverGetVersion()}
    return {"gpu_copy_GBps": 2 * n_bytes / t / 1e9}, info


def machine_limits(repeats: int = 5) -> dict:
    """Copy bandwidth (GB/s) and GEMM throughput (GFLOP/s) measured now."""
    n_bytes = 256 * 2**20
    src = np.ones(n_bytes // 4, np.float32)
    dst = np.empty_like(src)
    t = _median_time(lambda: np.copyto(dst, src), repeats, 10)
    limits = {"copy_GBps": 2 * n_bytes / t / 1e9}
    n = 1024
    for dtype in (np.float32, np.float64):
        a = np.random.default_rng(0).standard_normal((n, n)).astype(dtype)
        a @ a
        t = _median_time(lambda a=a: a @ a, repeats, 10)
        limits[f"gemm_{np.dtype(dtype).name}_GFLOPs"] = 2 * n**3 / t / 1e9
    return limits


def environment() -> dict:
    """Versions, CPU count, BLAS kernel (threadpoolctl) and the OpenBLAS variables."""
    env = {"python": platform.python_version(), "numpy": np.__version__,
           "machine": platform.machine(), "cpus": os.cpu_count(),
           "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
           "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE", "(unset)")}
    try:
        import numba
        env["numba"] = numba.__version__
        env["numba_threads"] = numba.config.NUMBA_NUM_THREADS
    except ImportError:
        env["numba"] = "not installed"
    try:
        from threadpoolctl import threadpool_info
        env["blas"] = [f"{i.get('internal_api')} {i.get('version')} "
                       f"{i.get('architecture', '')} threads={i.get('num_threads')}"
                       for i in threadpool_info() if i.get("user_api") == "blas"]
    except ImportError:
        env["blas"] = ["threadpoolctl not installed"]
    return env


def _nbytes(x) -> int:
    if x is None:
        return 0
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v) for v in x)
    return int(getattr(x, "nbytes", 0))


def bench_case(entry, method: str, backend: str, dims: tuple, dtype, repeats: int,
               budget_s: float) -> dict:
    """Time one entry × method × backend × size; returns a result row.

    ``backend="cupy"`` cases run on CuPy copies of the inputs and are timed by
    :func:`timer_for` (CUDA events); the first call (which compiles the kernels
    through NVRTC) is timed to the end of its GPU work.
    """
    from minirec import registry

    rng = np.random.default_rng(0)
    inputs = entry.make_inputs(rng, dtype, dims, method=method)
    on_gpu = backend == "cupy"
    if on_gpu:
        inputs = _to_device(inputs)
    xp = _cupy() if on_gpu else np
    kw = registry._method_kwargs(entry, method, backend)
    if "chunk_size" in kw:
        kw["chunk_size"] = None  # the module's default chunk length
    t0 = time.perf_counter()
    out, state, cache = registry.run_forward(entry, inputs, **kw)
    if on_gpu:
        _synchronize()
    first = time.perf_counter() - t0
    d_out = xp.ones_like(out)
    d_state = (tuple(xp.zeros_like(s) for s in state) if isinstance(state, tuple)
               else xp.zeros_like(state))
    registry.run_backward(entry, inputs, cache, d_out, d_state)

    def fwd():
        return registry.run_forward(entry, inputs, **kw)

    def fwd_bwd():
        _, _, c = registry.run_forward(entry, inputs, **kw)
        return registry.run_backward(entry, inputs, c, d_out, d_state)

    timer = timer_for(backend)
    t_f = timer(fwd, repeats, budget_s)
    t_fb = timer(fwd_bwd, repeats, budget_s)
    moved = _nbytes(inputs) + _nbytes(out) + _nbytes(state)
    dims = list(dims.values()) if isinstance(dims, dict) else list(dims)
    return {"name": entry.name, "method": method, "backend": backend, "dims": dims,
            "dtype": np.dtype(dtype).name, "first_call_s": first, "fwd_s": t_f,
            "fwd_bwd_s": t_fb, "fwd_GBps": moved / t_f / 1e9,
            "timer": "CUDA events" if on_gpu else "wall clock"}


# ---------------------------------------------------------------------------
# time against T
# ---------------------------------------------------------------------------

SWEEP_TS = (64, 256, 1024, 4096, 16384)
# (entry, B, D, H): scan.linear with little independent work (B·D = 32), where the
# chunked scan's prange over chunks is meant to pay; rnn with a small hidden size
SWEEPS = (("scan.linear", 1, 32, 32), ("rnn", 4, 32, 32),
          # simple GLA with 4 heads of K = V = 64: where the chunk form overtakes the loop
          ("simple_gla", 2, 256, 64))


def t_sweep(repeats: int, budget_s: float, dtype=np.float32,
            backends: Collection[str] | None = None) -> list[dict]:
    """Forward+backward time against T for every (method, backend) of the sweep
    entries, at fixed B and D (the rows of :func:`bench_case` with ``sweep=True``).

    ``backends``: the backends to time (default: every one available here but
    ``cuda-emulated``, as :func:`plan_jobs` chooses)."""
    from minirec import _backend, registry

    rows = []
    for name, B, D, H in SWEEPS:
        entry = registry.get(name)
        for m, b in entry.pairs:
            wanted = (b in backends if backends is not None
                      else b not in NOT_TIMED_BY_DEFAULT and _backend.available(b))
            if not wanted:
                continue
            for T in SWEEP_TS:
                if b == "numpy" and m == "recurrent" and T > 4096 and entry.kind == "cell":
                    continue  # minutes of Python loop; the trend is clear by then
                if m == "parallel" and T > 4096:
                    continue  # the quadratic form's (T, T) scores: gigabytes by then
                if m == "newton" and T > 4096:
                    continue  # (B, T, H, H) Jacobians per iteration; the trend is clear
                row = bench_case(entry, m, b, (B, T, D, H), dtype, repeats, budget_s)
                row["sweep"] = True
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# scaling: the LSTM against H and B (GEMM-bound), the diagonal cells against T
# ---------------------------------------------------------------------------

# (B, T, D, H) per LSTM sweep: the hidden size at B = 8, T = 256, D = H; the batch
# size at T = 256, D = H = 256
SCALING_LSTM = {"lstm_H": [(8, 256, H, H) for H in (64, 128, 256, 512, 1024)],
                "lstm_B": [(B, 256, 256, 256) for B in (1, 2, 4, 8, 16, 32, 64)]}
# the x axis of each LSTM sweep: its index in (B, T, D, H) and its name
SCALING_AXIS = {"lstm_H": (3, "H"), "lstm_B": (0, "B")}
# cells and ops whose state is updated elementwise (diagonal recurrences), timed
# against T at (B, D, H) = (8, 32, 32), the registry's generic (B, T, D, H) dims
DIAGONAL_CELLS = ("mingru", "minlstm", "hgrn", "lru", "ssm", "mamba", "aaren")
DIAGONAL_TS = (64, 256, 1024, 4096)
DIAGONAL_BDH = (8, 32, 32)
# the NumPy definition is timed up to this T; measured: the slowest of them (ssm)
# takes about 1.2 s per forward+backward at T = 1024 on a 2-core machine, about 5 s
# at T = 4096, seconds and not minutes, so every T is timed
DIAGONAL_NUMPY_MAX_T = 4096


def lstm_gemm_flops(B: int, T: int, D: int, H: int) -> int:
    """GEMM flops of one LSTM forward over ``x (B, T, D)`` with hidden size H.

    Each step multiplies ``[x_t, h_{t-1}] (B, D+H)`` by the four gates' stacked
    ``[W_ih, W_hh]^T (D+H, 4H)``: ``2·B·T·4H·(D+H)`` flops over the sequence (the
    elementwise gate work is not counted). The backward does two such products
    per step (the gradients of ``x_t, h_{t-1}`` and of the weights), about twice
    the forward, so the bench counts forward+backward as ``3 ·`` this flop count
    wherever it reports LSTM GFLOP/s (:func:`lstm_gflops`).
    """
    return 2 * B * T * 4 * H * (D + H)


def lstm_gflops(dims: Sequence[int], fwd_bwd_s: float) -> float:
    """Achieved GFLOP/s of an LSTM forward+backward at ``dims = (B, T, D, H)`` that
    took ``fwd_bwd_s`` seconds: ``3 · lstm_gemm_flops(B, T, D, H) / fwd_bwd_s / 1e9``."""
    return 3 * lstm_gemm_flops(*dims) / fwd_bwd_s / 1e9


def _with_gemm_rate(row: dict, peak: float | None) -> dict:
    """``row`` with its forward+backward ``GFLOPs`` and their ``peak_fraction`` of the
    measured GEMM throughput ``peak`` (None when not measured)."""
    gflops = lstm_gflops(row["dims"], row["fwd_bwd_s"])
    return {**row, "GFLOPs": gflops, "peak_fraction": gflops / peak if peak else None}


def scaling_sweeps(repeats: int, budget_s: float, dtype=np.float32, limits: dict | None = None,
                   backends: Collection[str] | None = None,
                   names: Collection[str] | None = None, torch: bool = True) -> list[dict]:
    """Forward+backward time of the LSTM against H and B, and of the diagonal cells
    against T; rows of :func:`bench_case` with ``"scaling"`` set to the sweep.

    - ``"lstm_H"``, ``"lstm_B"``: ``lstm`` numba ``recurrent`` at each shape of
      :data:`SCALING_LSTM`, and ``torch.nn.LSTM`` at the same shapes (rows with
      ``backend="torch"``, timed by :func:`run_torch_worker` in its own process
      with this machine's thread count) when ``torch``; each row also has
      ``"GFLOPs"`` (:func:`lstm_gflops`) and ``"peak_fraction"``, its fraction of
      ``limits["gemm_<dtype>_GFLOPs"]`` (None without it).
    - ``"diagonal_T"``: each of :data:`DIAGONAL_CELLS`, at ``(B, T, D, H)`` with
      ``(B, D, H) =`` :data:`DIAGONAL_BDH` and T in :data:`DIAGONAL_TS`: every
      numba method the registry lists (the report keeps the fastest per T) and
      the NumPy definition (``recurrent``, up to :data:`DIAGONAL_NUMPY_MAX_T`).

    Args:
        limits: the run's :func:`machine_limits`.
        backends: the backends timed in this run: the LSTM sweeps need
            ``"numba"``; the diagonal one times numba and numpy where listed
            (default: those of the two available here).
        names: the selected entries: the LSTM sweeps run when ``"lstm"`` is one
            of them, the diagonal sweep for those of :data:`DIAGONAL_CELLS` that
            are (default: all).
        torch: time ``torch.nn.LSTM`` too (skipped with a printed note when
            PyTorch is missing or its worker fails).
    """
    from minirec import _backend, registry

    dtype = np.dtype(dtype)
    if backends is None:
        backends = [b for b in ("numpy", "numba") if _backend.available(b)]
    peak = (limits or {}).get(f"gemm_{dtype.name}_GFLOPs")
    rows = []
    lstm = registry.get("lstm")
    if (names is None or "lstm" in names) and "numba" in backends and dtype in lstm.dtypes:
        timed = {}  # a shape in both sweeps is timed once
        for kind, shapes in SCALING_LSTM.items():
            for dims in map(tuple, shapes):
                if dims not in timed:
                    timed[dims] = bench_case(lstm, "recurrent", "numba", dims, dtype, repeats,
                                             budget_s)
                rows.append(_with_gemm_rate({**timed[dims], "scaling": kind}, peak))
        if torch:
            cases = [{"kind": "lstm", "dims": list(d), "dtype": dtype.name, "repeats": repeats}
                     for d in timed]
            torch_rows, reason = run_torch_worker(cases, "cpu", threads=os.cpu_count() or 1)
            if reason:
                print(f"note: torch.nn.LSTM not timed against H and B: {reason}")
            by_dims = {tuple(t["dims"]): t for t in torch_rows}
            for kind, shapes in SCALING_LSTM.items():
                for dims in map(tuple, shapes):
                    if dims in by_dims:
                        t = by_dims[dims]
                        rows.append(_with_gemm_rate(
                            {"name": "lstm", "method": "torch.nn.LSTM", "backend": "torch",
                             "dims": list(dims), "dtype": dtype.name, "fwd_s": t["fwd_s"],
                             "fwd_bwd_s": t["fwd_bwd_s"], "timer": "wall clock",
                             "torch": t.get("torch"), "scaling": kind}, peak))
    B, D, H = DIAGONAL_BDH
    for name in DIAGONAL_CELLS:
        entry = registry.get(name)
        if (names is not None and name not in names) or dtype not in entry.dtypes:
            continue
        for m, b in entry.pairs:
            if b not in backends or not (b == "numba" or (m, b) == ("recurrent", "numpy")):
                continue
            for T in DIAGONAL_TS:
                if b == "numpy" and T > DIAGONAL_NUMPY_MAX_T:
                    continue  # the report says it was not timed
                reps = max(3, repeats // 2) if b == "numpy" else repeats
                row = bench_case(entry, m, b, (B, T, D, H), dtype, reps, budget_s)
                rows.append({**row, "scaling": "diagonal_T"})
    return rows


def diagonal_speedups(rows: Sequence[dict]) -> dict[tuple[str, int], dict]:
    """The diagonal sweep per ``(cell, T)``: ``{"numba": the fastest numba row (by
    forward+backward), "numpy": the NumPy definition's row, "speedup": NumPy's
    forward+backward time over numba's}``; a missing row and its speed-up are None."""
    out: dict[tuple[str, int], dict] = {}
    for r in rows:
        if r.get("scaling") != "diagonal_T":
            continue
        slot = out.setdefault((r["name"], r["dims"][1]),
                              {"numba": None, "numpy": None, "speedup": None})
        if r["backend"] == "numba" and (slot["numba"] is None
                                        or r["fwd_bwd_s"] < slot["numba"]["fwd_bwd_s"]):
            slot["numba"] = r
        elif r["backend"] == "numpy" and r["method"] == "recurrent":
            slot["numpy"] = r
    for slot in out.values():
        if slot["numba"] and slot["numpy"]:
            slot["speedup"] = slot["numpy"]["fwd_bwd_s"] / slot["numba"]["fwd_bwd_s"]
    return out


# ---------------------------------------------------------------------------
# performance targets, each at the shape it is stated for
# ---------------------------------------------------------------------------

# (B, T, H) for the classic cells; D = H
CELL_TARGET_SHAPES = [(8, 256, 256), (32, 128, 512), (8, 1024, 128), (8, 512, 64)]
SCAN_TARGET_SHAPE = (8, 4096, 1024)
SELECTIVE_TARGET_SHAPE = (4, 2048, 256, 16)  # (B, T, D, N)


def scan_bandwidth_target(limits: dict, repeats: int, budget_s: float) -> list[dict]:
    """``scan.linear`` numba forward/backward against the bandwidth bound:
    12 bytes/element forward (read a, b; write h) and 20 backward (read a, h,
    dh; write da, db), in float32, divided by the measured copy bandwidth."""
    from minirec.scan import linear

    B, T, R = SCAN_TARGET_SHAPE
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (B, T, R)).astype(np.float32)
    b = rng.standard_normal((B, T, R)).astype(np.float32)
    dh = np.ones_like(b)
    h, _, cache = linear.forward(a, b, backend="numba")
    linear.backward(cache, dh)
    t_f = _median_time(lambda: linear.forward(a, b, backend="numba"), repeats, budget_s)
    t_b = _median_time(lambda: linear.backward(cache, dh), repeats, budget_s)
    # the same through the API with reused buffers (out=): no fresh pages to fault in
    h_buf, da_buf, db_buf = np.empty_like(b), np.empty_like(a), np.empty_like(b)
    _, _, cache_out = linear.forward(a, b, backend="numba", out=h_buf)
    linear.backward(cache_out, dh, out={"a": da_buf, "b": db_buf})
    t_f_out = _median_time(lambda: linear.forward(a, b, backend="numba", out=h_buf), repeats,
                           budget_s)
    _, _, cache_out = linear.forward(a, b, backend="numba", out=h_buf)
    t_b_out = _median_time(lambda: linear.backward(cache_out, dh,
                                                   out={"a": da_buf, "b": db_buf}),
                           repeats, budget_s)
    n = a.size
    bw = limits["copy_GBps"] * 1e9
    rows = []
    for what, t, nbytes, target in (("scan.linear numba forward", t_f, 12, 1.2),
                                     ("scan.linear numba backward", t_b, 20, 1.5),
                                     ("scan.linear numba forward, out=", t_f_out, 12, 1.2),
                                     ("scan.linear numba backward, out=", t_b_out, 20, 1.5)):
        bound = nbytes * n / bw
        rows.append({"what": what, "shape": str(SCAN_TARGET_SHAPE), "measured": t,
                     "reference": bound, "ratio": t / bound, "target": f"≤ {target}× bound",
                     "met": t / bound <= target,
                     "note": f"bound = {nbytes} B/element ÷ {limits['copy_GBps']:.1f} GB/s"})
    return rows


def speedup_targets(repeats: int, budget_s: float) -> list[dict]:
    """numba vs the NumPy definition: selective scan at (4, 2048, 256, 16) and every
    numba sequential kernel at a small-channel size (D = H = 32), forward+backward."""
    from minirec import _backend, registry

    rows = []
    cases = [("selective_scan", SELECTIVE_TARGET_SHAPE, "≥ 20× faster")]
    cases += [(n, (8, 512, 32, 32), "≥ 20× faster (D ≤ 64)") for n, e in registry.ENTRIES.items()
              if ("recurrent", "numba") in e.pairs and n != "selective_scan"]
    if not _backend.available("numba"):
        return rows
    for name, dims, target in cases:
        entry = registry.get(name)
        if np.dtype(np.float32) not in entry.dtypes:
            continue
        ref = bench_case(entry, "recurrent", "numpy", dims, np.float32, max(3, repeats // 2),
                         budget_s)
        fast = bench_case(entry, "recurrent", "numba", dims, np.float32, repeats, budget_s)
        ratio = ref["fwd_bwd_s"] / fast["fwd_bwd_s"]
        rows.append({"what": f"{name} numba vs NumPy definition (fwd+bwd)", "shape": str(dims),
                     "measured": fast["fwd_bwd_s"], "reference": ref["fwd_bwd_s"],
                     "ratio": ratio, "target": target, "met": ratio >= 20, "note": ""})
    return rows


# the matrix-state ops' targets: (B, T, H, K = V), float32
MATRIX_TARGET_SHAPES = [(2, 4096, 4, 64), (2, 4096, 4, 128)]
MATRIX_TARGET_ENTRIES = ("simple_gla", "gla", "delta_rule", "mlstm")


def chunk_flops(T: int, C: int, K: int, V: int) -> float:
    """Matmul flops of one (batch, head) of the scalar-gate chunk form's forward:
    per chunk of C steps the scores ``Q K^T`` (2C²K, of which the causal half is
    used), ``A V`` (2C²V), the inter-chunk read ``Q S`` (2CKV) and the state
    update ``K^T V`` (2CKV); the backward is about twice this."""
    n = -(-T // C)
    return n * (2 * C * C * (K + V) + 4 * C * K * V)


def matrix_targets(limits: dict, repeats: int, budget_s: float,
                   backends: Collection[str] = ("numba",)) -> list[dict]:
    """The matrix-state ops' targets: each backend's best method against the NumPy
    recurrent definition (forward+backward) at :data:`MATRIX_TARGET_SHAPES`, and
    the chunk form's achieved GFLOP/s (forward, matmul flops of
    :func:`chunk_flops`) against the measured float32 GEMM throughput."""
    from minirec import registry

    rows = []
    for B, T, H, K in MATRIX_TARGET_SHAPES:
        for name in MATRIX_TARGET_ENTRIES:
            entry = registry.get(name)
            dims = dict(zip(entry.dim_names, (B, T, H, K, K)))
            ref = bench_case(entry, "recurrent", "numpy", dims, np.float32,
                             max(2, repeats // 2), budget_s)
            for b in backends:
                fast = [bench_case(entry, m, bb, dims, np.float32, repeats, budget_s)
                        for m, bb in entry.pairs if bb == b]
                if not fast:
                    continue
                best = min(fast, key=lambda r: r["fwd_bwd_s"])
                ratio = ref["fwd_bwd_s"] / best["fwd_bwd_s"]
                rows.append({"what": f"{name} {b} best method ({best['method']}) vs NumPy "
                                     f"definition (fwd+bwd)",
                             "shape": f"(B={B}, T={T}, H={H}, K=V={K})",
                             "measured": best["fwd_bwd_s"], "reference": ref["fwd_bwd_s"],
                             "ratio": ratio, "target": "≥ 20× faster", "met": ratio >= 20,
                             "note": ", ".join(f"{r['method']} {_fmt_t(r['fwd_bwd_s'])}"
                                               for r in fast)})
        entry = registry.get("simple_gla")
        dims = dict(zip(entry.dim_names, (B, T, H, K, K)))
        C = 64  # the ops' default chunk_size
        flops = B * H * chunk_flops(T, C, K, K)
        peak = limits["gemm_float32_GFLOPs"]
        for b in ("numpy",) + tuple(backends):
            if ("chunk", b) not in entry.pairs:
                continue
            r = bench_case(entry, "chunk", b, dims, np.float32, repeats, budget_s)
            gflops = flops / r["fwd_s"] / 1e9
            rows.append({"what": f"simple_gla chunk {b}: forward GFLOP/s vs GEMM peak",
                         "shape": f"(B={B}, T={T}, H={H}, K=V={K}), C={C}",
                         "measured": r["fwd_s"], "reference": flops / (peak * 1e9),
                         "ratio": r["fwd_s"] * peak * 1e9 / flops, "target": "reported",
                         "met": True,
                         "note": f"{gflops:.1f} GFLOP/s = {100 * gflops / peak:.0f}% of the "
                                 f"measured {peak:.0f} GFLOP/s float32 GEMM"})
    return rows


# Newton's iterations for a GRU at T = 4096 (float64, tol 1e-10), and
# the multi-head LSTM against the single-head one at the same total hidden size
NEWTON_TARGET = {"B": 2, "T": 4096, "D": 16, "H": 64}
NEWTON_BACKENDS = ("numpy", "numba")
MULTIHEAD_TARGET = {"B": 8, "T": 256, "D": 256, "H": 256, "NH": 4}


def newton_targets(repeats: int, budget_s: float) -> list[dict]:
    """Newton (``method="newton"``) against the loop (``recurrent``) for the GRU
    and ParaRNN's diagonal GRU at :data:`NEWTON_TARGET`, float64 with
    ``tol=1e-10``: iterations to converge and forward+backward time on each of
    :data:`NEWTON_BACKENDS` (the scans run there); and the multi-head LSTM's
    forward+backward on numba against the single-head LSTM's."""
    from minirec import _backend, registry

    rows = []
    for name in ("gru", "gru_diagonal"):
        entry = registry.get(name)
        for b in NEWTON_BACKENDS:
            if not _backend.available(b) or ("newton", b) not in entry.pairs:
                continue
            inputs = entry.make_inputs(np.random.default_rng(0), np.float64, NEWTON_TARGET,
                                       method="newton")
            kw = {**entry.forward_kwargs, "backend": b}
            _, _, cache = registry.run_forward(entry, inputs, method="newton",
                                               newton_options={"tol": 1e-10}, **kw)
            iters = cache.newton.iterations
            newton = bench_case(entry, "newton", b, NEWTON_TARGET, np.float64,
                                max(2, repeats // 2), budget_s)
            loop_b = b if ("recurrent", b) in entry.pairs else "numpy"
            loop = bench_case(entry, "recurrent", loop_b, NEWTON_TARGET, np.float64,
                              max(2, repeats // 2), budget_s)
            rows.append({"what": f"{name} newton ({b} scans) vs recurrent ({loop_b}), "
                                 "fwd+bwd, float64",
                         "shape": str(tuple(NEWTON_TARGET.values())),
                         "measured": newton["fwd_bwd_s"], "reference": loop["fwd_bwd_s"],
                         "ratio": newton["fwd_bwd_s"] / loop["fwd_bwd_s"],
                         "target": "reported", "met": True,
                         "note": f"{iters} Newton iterations to tol 1e-10"})
    single, multi = registry.get("lstm"), registry.get("lstm_multihead")
    if _backend.available("numba"):
        dims = {k: v for k, v in MULTIHEAD_TARGET.items() if k != "NH"}
        ref = bench_case(single, "recurrent", "numba", dims, np.float32, repeats, budget_s)
        mh = bench_case(multi, "recurrent", "numba", MULTIHEAD_TARGET, np.float32, repeats,
                        budget_s)
        ratio = mh["fwd_bwd_s"] / ref["fwd_bwd_s"]
        rows.append({"what": "lstm_multihead numba vs lstm numba (fwd+bwd, same total H)",
                     "shape": str(tuple(MULTIHEAD_TARGET.values())),
                     "measured": mh["fwd_bwd_s"], "reference": ref["fwd_bwd_s"],
                     "ratio": ratio, "target": "≤ 1.0×", "met": ratio <= 1.0, "note": ""})
    return rows


# the GPU targets' shape, (B, T, D) float32; cupy cases of these entries are also timed
# at it (as (B, T, D, H)) when --sizes is not given
GPU_SCAN_TARGET_SHAPE = (8, 4096, 4096)
GPU_SIZES = {"scan.linear": GPU_SCAN_TARGET_SHAPE + (GPU_SCAN_TARGET_SHAPE[2],)}


def bandwidth_row(what: str, shape: tuple, seconds: float, nbytes: int, copy_GBps: float,
                  min_fraction: float) -> dict:
    """A performance-target row: ``nbytes`` moved in ``seconds`` against the copy
    bandwidth ``copy_GBps``, met when the achieved fraction is ≥ ``min_fraction``.
    ``reference`` is the time the bytes take at the copy bandwidth (the bound)."""
    bound = nbytes / (copy_GBps * 1e9)
    achieved = nbytes / seconds / 1e9
    return {"what": what, "shape": str(tuple(shape)), "measured": seconds, "reference": bound,
            "ratio": seconds / bound, "target": f"≥ {min_fraction:.0%} of copy BW",
            "met": achieved >= min_fraction * copy_GBps,
            "note": f"{achieved:.0f} GB/s = {achieved / copy_GBps:.0%} of the measured "
                    f"{copy_GBps:.0f} GB/s"}


def gpu_scan_bandwidth_target(copy_GBps: float, repeats: int, budget_s: float) -> list[dict]:
    """``scan.linear`` on the GPU (every cupy method) at :data:`GPU_SCAN_TARGET_SHAPE`,
    float32, against the GPU's copy bandwidth: forward 12 bytes/element (read a,
    b; write h), ≥ 80%; backward 20 (read a, h, dh; write da, db), ≥ 70%. CUDA
    events; the backward is timed alone, from one forward's cache."""
    from minirec import registry

    cupy = _cupy()
    entry = registry.get("scan.linear")
    B, T, R = GPU_SCAN_TARGET_SHAPE
    rng = np.random.default_rng(0)
    inputs = {"a": cupy.asarray(2 * rng.random((B, T, R), dtype=np.float32) - 1),
              "b": cupy.asarray(rng.standard_normal((B, T, R), dtype=np.float32)),
              "initial_state": cupy.asarray(rng.standard_normal((B, R), dtype=np.float32))}
    n = B * T * R
    rows = []
    for method in entry.module.BACKEND_METHODS["cupy"]:
        kw = {"method": method, "backend": "cupy"}
        out, state, cache = registry.run_forward(entry, inputs, **kw)
        dh, dstate = cupy.ones_like(out), cupy.zeros_like(state)
        registry.run_backward(entry, inputs, cache, dh, dstate)
        t_f = _cuda_event_time(lambda kw=kw: registry.run_forward(entry, inputs, **kw),
                               repeats, budget_s)
        t_b = _cuda_event_time(
            lambda c=cache, d=dh, s=dstate: registry.run_backward(entry, inputs, c, d, s),
            repeats, budget_s)
        rows.append(bandwidth_row(f"scan.linear cupy {method} forward", GPU_SCAN_TARGET_SHAPE,
                                  t_f, 12 * n, copy_GBps, 0.8))
        rows.append(bandwidth_row(f"scan.linear cupy {method} backward", GPU_SCAN_TARGET_SHAPE,
                                  t_b, 20 * n, copy_GBps, 0.7))
        del out, state, cache, dh, dstate
    return rows


def naive_linear_scan_forward(xp, a, b, h0):
    """``h_t = a_t ⊙ h_{t-1} + b_t`` as a Python loop over T of elementwise ops on
    ``xp`` arrays (NumPy or CuPy): what one writes without a kernel (on a GPU, a
    few kernel launches per step). ``a, b (B, T, ...)``, ``h0 (B, ...)``; real."""
    h = xp.empty_like(b)
    state = h0
    for t in range(b.shape[1]):
        state = a[:, t] * state + b[:, t]
        h[:, t] = state
    return h


def naive_linear_scan_backward(xp, a, h, h0, dh, dstate):
    """``(da, db, dh0)`` of :func:`naive_linear_scan_forward` by the reverse loop
    ``g_{T-1} = dh_{T-1} + dstate``, ``g_t = dh_t + a_{t+1} g_{t+1}``; ``db = g``,
    ``da_t = g_t h_{t-1}``, ``dh0 = a_0 g_0`` (real inputs)."""
    T = h.shape[1]
    da, db = xp.empty_like(h), xp.empty_like(h)
    g = dstate
    for t in range(T - 1, -1, -1):
        g = dh[:, t] + (g if t == T - 1 else a[:, t + 1] * g)
        db[:, t] = g
        da[:, t] = g * (h[:, t - 1] if t > 0 else h0)
    return da, db, a[:, 0] * g


def _naive_linear_scan(xp, inputs):
    a, b, h0 = inputs["a"], inputs["b"], inputs["initial_state"]
    dh, dstate = xp.ones_like(b), xp.zeros_like(h0)  # as bench_case's upstream gradients
    fwd = lambda: naive_linear_scan_forward(xp, a, b, h0)
    fwd_bwd = lambda: naive_linear_scan_backward(xp, a, fwd(), h0, dh, dstate)
    return fwd, fwd_bwd


# entry name -> (xp, inputs) -> (forward, forward+backward) callables
NAIVE_LOOPS = {"scan.linear": _naive_linear_scan}


def naive_cupy_times(rows: Sequence[dict], repeats: int, budget_s: float) -> list[dict]:
    """The naive CuPy loop over T (:data:`NAIVE_LOOPS`) at the entry, size and
    dtype of every cupy row that has one, timed with CUDA events."""
    from minirec import registry

    xp = _cupy()
    out, seen = [], set()
    for r in rows:
        key = (r["name"], tuple(r["dims"]), r["dtype"])
        if r["backend"] != "cupy" or r["name"] not in NAIVE_LOOPS or key in seen:
            continue
        seen.add(key)
        entry = registry.get(r["name"])
        inputs = _to_device(entry.make_inputs(np.random.default_rng(0), r["dtype"],
                                              tuple(r["dims"]), method="recurrent"))
        fwd, fwd_bwd = NAIVE_LOOPS[r["name"]](xp, inputs)
        out.append({"name": r["name"], "dims": list(r["dims"]), "dtype": r["dtype"],
                    "naive_fwd_s": _cuda_event_time(fwd, repeats, budget_s),
                    "naive_fwd_bwd_s": _cuda_event_time(fwd_bwd, repeats, budget_s)})
    return out


_COMPILE_WORKER = r"""
import json, time
import numpy as np
t0 = time.perf_counter()
import minirec
from minirec import registry
t_import = time.perf_counter() - t0
out = {"import_s": t_import, "entries": {}}
for name, e in registry.ENTRIES.items():
    pairs = [m for m, b in e.pairs if b == "numba"]
    if not pairs:
        continue
    t0 = time.perf_counter()
    for m in pairs:
        for dt in (np.float32, np.float64):
            if dt not in e.dtypes:
                continue
            inp = e.make_inputs(np.random.default_rng(0), dt, "small", method=m)
            kw = registry._method_kwargs(e, m, "numba")
            y, s, c = registry.run_forward(e, inp, **kw)
            ds = tuple(np.zeros_like(v) for v in s) if isinstance(s, tuple) else np.zeros_like(s)
            registry.run_backward(e, inp, c, np.ones_like(y), ds)
    out["entries"][name] = time.perf_counter() - t0
print(json.dumps(out))
"""


def compile_times() -> dict:
    """First-call times of every numba (entry, method, dtype), forward and backward,
    in fresh processes: once with an empty on-disk cache (compilation) and once
    with it filled (the cached load)."""
    import tempfile

    result = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        for label in ("compile", "cached"):
            proc = subprocess.run([sys.executable, "-c", _COMPILE_WORKER], capture_output=True,
                                  text=True, env=env, timeout=1800)
            if proc.returncode != 0:
                result[label] = {"error": proc.stderr.strip().splitlines()[-1:]}
                continue
            result[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------
# PyTorch, in its own process
# ---------------------------------------------------------------------------

_TORCH_WORKER = r"""
import json, sys, time
import numpy as np
import torch
cfg = json.loads(sys.argv[1])
device = cfg.get("device", "cpu")
if device == "cuda":
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": f"torch {torch.__version__}: torch.cuda.is_available() "
                                     "is False"}))
        sys.exit(0)
    extra = {"gpu": torch.cuda.get_device_name(0)}
else:
    torch.set_num_threads(cfg["threads"])
    extra = {}


def timed(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        if device == "cuda":  # CUDA events around the call, as cupyx.profiler.benchmark
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record(); fn(); end.record(); end.synchronize()
            ts.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


out = []
for case in cfg["cases"]:
    B, T, D, H = case["dims"]
    dt = getattr(torch, case["dtype"])
    x = torch.randn(B, T, D, dtype=dt, device=device, requires_grad=True)
    kind = case["kind"]
    if kind in ("rnn", "lstm", "gru"):
        mod = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](
            D, H, batch_first=True).to(device=device, dtype=dt)
        fwd = lambda: mod(x)[0]
    elif kind == "scan.linear":
        a = torch.rand(B, T, D, dtype=dt, device=device)
        def fwd():
            h = torch.zeros(B, D, dtype=dt, device=device); hs = []
            for t in range(T):
                h = a[:, t] * h + x[:, t]; hs.append(h)
            return torch.stack(hs, 1)
    else:
        continue
    def fb():
        y = fwd(); y.sum().backward()
    res = {}
    with torch.no_grad():
        res["fwd_s"] = timed(fwd, case["repeats"])
    res["fwd_bwd_s"] = timed(fb, case["repeats"])
    out.append({**case, **res, "torch": torch.__version__, "device": device, **extra})
print(json.dumps(out))
"""


def run_torch_worker(cases: list[dict], device: str = "cpu", threads: int = 1
                     ) -> tuple[list[dict], str | None]:
    """Time ``cases`` (``{"kind", "dims", "dtype", "repeats"}``) in PyTorch in a child
    process (sharing a process with OpenBLAS, or with CuPy's memory pool, distorts
    both), on ``device`` (``"cpu"`` with ``threads`` threads, wall clock; or
    ``"cuda"``, CUDA events). Returns ``(rows, None)``, or ``([], reason)`` when
    PyTorch (or its CUDA) is missing or the worker failed."""
    cfg = json.dumps({"device": device, "threads": threads, "cases": cases})
    try:
        proc = subprocess.run([sys.executable, "-c", _TORCH_WORKER, cfg], capture_output=True,
                              text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], f"{type(exc).__name__}: {exc}"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return [], lines[-1] if lines else f"the worker exited with {proc.returncode}"
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    if isinstance(data, dict):
        return [], data["skipped"]
    return data, None


def torch_times(cases: list[dict], threads: int) -> list[dict]:
    """Run the PyTorch CPU worker in a child process; ``[]`` when torch is missing."""
    return run_torch_worker(cases, "cpu", threads)[0]


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def _fmt_t(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def write_report(out_dir: Path, env: dict, limits: dict, rows: list[dict], torch_rows: list[dict],
                 command: str, targets: list[dict] | None = None,
                 compile_info: dict | None = None, sweep_rows: list[dict] | None = None,
                 analysis: str | None = None, notes: Sequence[str] | None = None,
                 gpu: dict | None = None, scaling_rows: list[dict] | None = None) -> Path:
    """Write ``RESULTS.md`` and plots into ``out_dir``; returns the markdown path.

    ``notes``: what was skipped and why (printed under the machine). ``gpu``:
    ``{"naive": naive_cupy_times(...), "torch": rows, "torch_skipped": reason}``
    for a run with cupy cases (``limits`` then has ``gpu_copy_GBps`` and ``env``
    the GPU's name). ``scaling_rows``: :func:`scaling_sweeps`' rows, tabled and
    plotted (``lstm_vs_H.png``, ``lstm_vs_B.png``, ``diagonal_vs_T.png``).
    Without matplotlib the tables are written and the plots left out.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # a bare machine (a lent GPU): the tables without the plots
        plt = None

    out_dir.mkdir(parents=True, exist_ok=True)
    ref = {(r["name"], tuple(r["dims"]), r["dtype"]): r for r in rows
           if r["method"] == "recurrent" and r["backend"] == "numpy"}
    lines = ["# minirec benchmark results", "",
             f"Command: `{command}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
             "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += [f"- measured {k}: {v:.1f}" for k, v in limits.items()]
    if notes:
        lines += ["", "Not timed in this run:", ""] + [f"- {n}" for n in notes]
    on_gpu = any(r["backend"] == "cupy" for r in rows)
    lines += ["", "## Every entry × method × backend", "",
              "Times are medians after a warm-up call (the first call, which compiles "
              "Numba kernels, is in its own column). `GB/s` counts every input and "
              "output once; `vs def` is the NumPy recurrent definition's time over "
              "this row's (forward + backward)."
              + (" `cupy` rows are GPU times from CUDA events (`cupyx.profiler.benchmark`; "
                 "their first call includes the NVRTC compile) and their `% copy BW` is "
                 "of the GPU's measured copy bandwidth." if on_gpu else ""), "",
              "| entry | method | backend | (B, T, D, H) | dtype | first call | fwd | fwd+bwd "
              "| GB/s (fwd) | % copy BW | vs def |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = ref.get((r["name"], tuple(r["dims"]), r["dtype"]))
        speed = f"{base['fwd_bwd_s'] / r['fwd_bwd_s']:.2f}×" if base else "—"
        bandwidth = limits["gpu_copy_GBps" if r["backend"] == "cupy" else "copy_GBps"]
        lines.append(
            f"| {r['name']} | {r['method']} | {r['backend']} | {tuple(r['dims'])} | {r['dtype']} "
            f"| {_fmt_t(r['first_call_s'])} | {_fmt_t(r['fwd_s'])} | {_fmt_t(r['fwd_bwd_s'])} "
            f"| {r['fwd_GBps']:.2f} | {100 * r['fwd_GBps'] / bandwidth:.0f}% "
            f"| {speed} |")
    if gpu is not None:
        lines += _gpu_section(env, limits, rows, gpu)
    if targets:
        lines += ["", "## Performance targets", "",
                  "| what | shape | measured | reference | ratio | target | met |",
                  "|---|---|---|---|---|---|---|"]
        for t in targets:
            lines.append(f"| {t['what']} | {t['shape']} | {_fmt_t(t['measured'])} | "
                         f"{_fmt_t(t['reference'])} | {t['ratio']:.2f}× | {t['target']} | "
                         f"{'yes' if t['met'] else '**no**'} |"
                         + (f" {t['note']}" if t.get("note") else ""))
    if compile_info:
        lines += ["", "## Numba compile time and cached load", "",
                  "Every numba (entry, method, dtype) called once forward and backward in a "
                  "fresh process, first with an empty on-disk cache, then with it filled.", "",
                  "| entry | first call, compiling | first call, cached |", "|---|---|---|"]
        comp = compile_info.get("compile", {}).get("entries", {})
        cached = compile_info.get("cached", {}).get("entries", {})
        for name in comp:
            c = cached.get(name, float("nan"))
            lines.append(f"| {name} | {comp[name]:.2f} s | {c:.2f} s |")
        if comp:
            lines.append(f"| **all** | {sum(comp.values()):.2f} s | "
                         f"{sum(cached.values()):.2f} s |")
        for label in ("compile", "cached"):
            if "error" in compile_info.get(label, {}):
                lines.append(f"\n{label} run failed: {compile_info[label]['error']}")
    if torch_rows:
        lines += ["", "## PyTorch CPU (separate process, same thread count)", "",
                  "| what | (B, T, D, H) | dtype | torch fwd | torch fwd+bwd | best minirec "
                  "fwd+bwd | minirec / torch |", "|---|---|---|---|---|---|---|"]
        for tr in torch_rows:
            mine = [r for r in rows if r["name"] == tr["kind"] and tuple(r["dims"]) ==
                    tuple(tr["dims"]) and r["dtype"] == tr["dtype"] and r["backend"] != "cupy"]
            best = min((r["fwd_bwd_s"] for r in mine), default=float("nan"))
            lines.append(f"| {tr['kind']} | {tuple(tr['dims'])} | {tr['dtype']} "
                         f"| {_fmt_t(tr['fwd_s'])} | {_fmt_t(tr['fwd_bwd_s'])} | "
                         f"{_fmt_t(best)} | {best / tr['fwd_bwd_s']:.2f}× |")
    elif any(r["backend"] != "cupy" for r in rows):
        lines += ["", "PyTorch was not installed (or failed to run): no comparison."]
    # plot: achieved bandwidth of every CPU method at the medium size (none for a GPU-only run)
    names = sorted({r["name"] for r in rows if r["backend"] != "cupy"})
    if names and plt is not None:
        fig, axes = plt.subplots(1, 1, figsize=(8, 5))
        for name in names:
            for r in rows:
                if (r["name"] == name and r["dims"] == list(BENCH_SIZES.get("medium", ()))
                        and r["backend"] != "cupy"):
                    axes.bar(f"{name}\n{r['method']}/{r['backend']}", r["fwd_GBps"],
                             color="C0")
        axes.axhline(limits["copy_GBps"], color="k", ls="--", label="copy bandwidth")
        axes.set_ylabel("achieved GB/s (forward, medium size, CPU backends)")
        axes.tick_params(axis="x", labelrotation=90, labelsize=6)
        axes.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "efficiency.png", dpi=120)
        plt.close(fig)
        lines += ["", "![achieved bandwidth](efficiency.png)", ""]
    sweep = [r for r in sweep_rows or []]
    if sweep:
        names = sorted({r["name"] for r in sweep})
        if plt is not None:
            fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5),
                                     squeeze=False)
            for ax, name in zip(axes[0], names):
                mine = [r for r in sweep if r["name"] == name]
                for key in sorted({(r["method"], r["backend"]) for r in mine}):
                    pts = sorted((r["dims"][1], r["fwd_bwd_s"]) for r in mine
                                 if (r["method"], r["backend"]) == key)
                    ax.loglog(*zip(*pts), "o-", label=f"{key[0]} / {key[1]}")
                B, _, D, _ = mine[0]["dims"]
                ax.set_title(f"{name}: forward+backward, B={B}, D={D}, {mine[0]['dtype']}")
                ax.set_xlabel("T")
                ax.set_ylabel("seconds")
                ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out_dir / "time_vs_T.png", dpi=120)
            plt.close(fig)
        lines += ["## Time against T", "", "| entry | method | backend | "
                  + " | ".join(f"T={T}" for T in SWEEP_TS) + " |",
                  "|---|---|---|" + "---|" * len(SWEEP_TS)]
        for name in names:
            for key in sorted({(r["method"], r["backend"]) for r in sweep if r["name"] == name}):
                by_T = {r["dims"][1]: r["fwd_bwd_s"] for r in sweep
                        if r["name"] == name and (r["method"], r["backend"]) == key}
                lines.append(f"| {name} | {key[0]} | {key[1]} | "
                             + " | ".join(_fmt_t(by_T[T]) if T in by_T else "—"
                                          for T in SWEEP_TS) + " |")
        lines += ["", "![time against T](time_vs_T.png)", ""] if plt is not None else [""]
    if scaling_rows:
        lines += _scaling_section(out_dir, plt, limits, scaling_rows)
    if analysis:
        lines += ["", analysis.rstrip(), ""]
    path = out_dir / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(
        {"env": env, "limits": limits, "rows": rows, "torch": torch_rows,
         "targets": targets, "compile": compile_info, "sweep": sweep_rows,
         "scaling": scaling_rows, "notes": list(notes or []), "gpu": gpu}, indent=1,
        default=str))
    return path


def _pct(fraction: float | None) -> str:
    return "—" if fraction is None else f"{100 * fraction:.0f}%"


def _ticks_at(ax, values: Sequence[int]) -> None:
    """Label a log x axis at the swept values themselves (64, 256, ...), no minor ticks."""
    from matplotlib.ticker import NullLocator

    ax.set_xticks(list(values), [str(v) for v in values])
    ax.xaxis.set_minor_locator(NullLocator())


def _scaling_section(out_dir: Path, plt, limits: dict, rows: list[dict]) -> list[str]:
    """The report's scaling section: a table and a plot per LSTM sweep (time and
    GFLOP/s against H or B, numba and torch, with the measured GEMM throughput) and
    the diagonal cells against T (time, numba's speed-up over the NumPy definition,
    and forward GB/s against the measured copy bandwidth). ``plt``: matplotlib's
    pyplot, or None (the tables only)."""
    lines = []
    lstm = [r for r in rows if r["scaling"] in SCALING_AXIS]
    if lstm:
        dtype = lstm[0]["dtype"]
        peak = limits.get(f"gemm_{dtype}_GFLOPs")
        lines += ["", "## Scaling: the LSTM against H and B", "",
                  "Forward+backward of `lstm` (numba `recurrent`) and of `torch.nn.LSTM` "
                  "(PyTorch CPU in a separate process, this machine's thread count), "
                  f"{dtype}. GFLOP/s counts the gate GEMMs: 2·B·T·4H·(D+H) flops forward, "
                  "the backward counted as twice that, so 3·2·B·T·4H·(D+H) per "
                  "forward+backward; `% peak` is of the "
                  + (f"{dtype} GEMM throughput measured in this run, {peak:.1f} GFLOP/s."
                     if peak else f"{dtype} GEMM throughput (not measured in this run).")]
        if not any(r["backend"] == "torch" for r in lstm):
            lines += ["", "torch.nn.LSTM was not timed (--no-torch, PyTorch not installed, "
                          "or its worker failed)."]
        for kind, (axis, label) in SCALING_AXIS.items():
            mine = [r for r in lstm if r["scaling"] == kind]
            if not mine:
                continue
            numba = {tuple(r["dims"]): r for r in mine if r["backend"] == "numba"}
            torch = {tuple(r["dims"]): r for r in mine if r["backend"] == "torch"}
            lines += ["", f"### LSTM against {label}", "",
                      "| (B, T, D, H) | numba fwd | numba fwd+bwd | numba GFLOP/s | % peak "
                      "| torch fwd+bwd | torch GFLOP/s | % peak | numba / torch |",
                      "|---" * 9 + "|"]
            for dims, r in numba.items():
                t = torch.get(dims)
                lines.append(
                    f"| {dims} | {_fmt_t(r['fwd_s'])} | {_fmt_t(r['fwd_bwd_s'])} "
                    f"| {r['GFLOPs']:.3g} | {_pct(r['peak_fraction'])} | "
                    + (f"{_fmt_t(t['fwd_bwd_s'])} | {t['GFLOPs']:.3g} | "
                       f"{_pct(t['peak_fraction'])} | {r['fwd_bwd_s'] / t['fwd_bwd_s']:.2f}× |"
                       if t else "— | — | — | — |"))
            if plt is None:
                continue
            fig, (ax_t, ax_g) = plt.subplots(1, 2, figsize=(11, 4.5))
            for backend, by_dims in (("numba", numba), ("torch", torch)):
                pts = sorted((d[axis], r["fwd_bwd_s"], r["GFLOPs"]) for d, r in by_dims.items())
                if pts:
                    x, t_s, g = zip(*pts)
                    what = "lstm numba" if backend == "numba" else "torch.nn.LSTM"
                    ax_t.loglog(x, t_s, "o-", label=what)
                    ax_g.semilogx(x, g, "o-", label=what)
            if peak:
                ax_g.axhline(peak, color="k", ls="--", label=f"measured {dtype} GEMM")
            fixed = [f"{n}={v}" for n, v in zip("BTDH", mine[0]["dims"]) if n != label]
            if label == "H":  # D follows H in this sweep
                fixed = fixed[:2] + ["D=H"]
            ax_t.set_title(f"LSTM forward+backward against {label} ({', '.join(fixed)}, "
                           f"{dtype})")
            ax_t.set_xlabel(label)
            ax_t.set_ylabel("seconds")
            ax_g.set_title("achieved GFLOP/s (gate GEMMs, 3·2·B·T·4H·(D+H))")
            ax_g.set_xlabel(label)
            ax_g.set_ylabel("GFLOP/s")
            ax_g.set_ylim(bottom=0)
            for ax in (ax_t, ax_g):
                ax.legend(fontsize=8)
                _ticks_at(ax, sorted({d[axis] for d in numba} | {d[axis] for d in torch}))
            fig.tight_layout()
            fig.savefig(out_dir / f"lstm_vs_{label}.png", dpi=120)
            plt.close(fig)
            lines += ["", f"![LSTM against {label}](lstm_vs_{label}.png)"]
    diag = diagonal_speedups(rows)
    if diag:
        cells = list(dict.fromkeys(name for name, _ in diag))
        Ts = sorted({T for _, T in diag})
        first = next(r for r in rows if r["scaling"] == "diagonal_T")
        B, _, D, H = first["dims"]
        lines += ["", "## Scaling: the diagonal cells against T", "",
                  f"Forward+backward at B={B}, D={D}, H={H} (each entry's generic dims), "
                  f"{first['dtype']}: the fastest numba method at each T (named), the NumPy "
                  "definition (`recurrent`), and numba's speed-up over it.", "",
                  "| entry | backend | " + " | ".join(f"T={T}" for T in Ts) + " |",
                  "|---|---|" + "---|" * len(Ts)]
        skipped = False
        for name in cells:
            slots = [diag.get((name, T)) for T in Ts]
            numba = [s["numba"] if s else None for s in slots]
            numpy = [s["numpy"] if s else None for s in slots]
            if any(numba):
                lines.append(f"| {name} | numba | " + " | ".join(
                    f"{_fmt_t(r['fwd_bwd_s'])} ({r['method']})" if r else "—"
                    for r in numba) + " |")
            if any(numpy):
                cols = []
                for T, r in zip(Ts, numpy):
                    skipped |= r is None and T > DIAGONAL_NUMPY_MAX_T
                    cols.append(_fmt_t(r["fwd_bwd_s"]) if r else
                                "not timed" if T > DIAGONAL_NUMPY_MAX_T else "—")
                lines.append(f"| {name} | numpy (definition) | " + " | ".join(cols) + " |")
            if any(s and s["speedup"] for s in slots):
                lines.append(f"| {name} | numba speed-up | " + " | ".join(
                    f"{s['speedup']:.1f}×" if s and s["speedup"] else "—" for s in slots) + " |")
        if skipped:
            lines += ["", f"The NumPy definition was not timed above T={DIAGONAL_NUMPY_MAX_T}: "
                          "its Python loop over T takes minutes there."]
        if plt is not None:
            fig, (ax_t, ax_g) = plt.subplots(1, 2, figsize=(15, 5), layout="constrained")
            for i, name in enumerate(cells):
                for backend, style in (("numba", "o-"), ("numpy", "s--")):
                    pts = sorted((T, diag[name, T][backend]) for T in Ts
                                 if (name, T) in diag and diag[name, T][backend])
                    if not pts:
                        continue
                    x = [T for T, _ in pts]
                    what = f"{name} {backend}" + (" (definition)" if backend == "numpy" else "")
                    ax_t.loglog(x, [r["fwd_bwd_s"] for _, r in pts], style, color=f"C{i}",
                                label=what)
                    ax_g.loglog(x, [r["fwd_GBps"] for _, r in pts], style, color=f"C{i}",
                                label=what)
            fig.legend(*ax_t.get_legend_handles_labels(), loc="outside right upper",
                       fontsize=7)
            if "copy_GBps" in limits:
                ax_g.axhline(limits["copy_GBps"], color="k", ls=":", label="measured copy BW")
                ax_g.legend(handles=ax_g.get_lines()[-1:], fontsize=7)
            ax_t.set_title(f"diagonal cells: forward+backward, B={B}, D={D}, H={H}, "
                           f"{first['dtype']}")
            ax_t.set_ylabel("seconds")
            ax_g.set_title("achieved GB/s (forward, inputs and outputs once)")
            ax_g.set_ylabel("GB/s")
            for ax in (ax_t, ax_g):
                ax.set_xlabel("T")
                _ticks_at(ax, Ts)
            fig.savefig(out_dir / "diagonal_vs_T.png", dpi=120)
            plt.close(fig)
            lines += ["", "![diagonal cells against T](diagonal_vs_T.png)"]
    return lines + [""]


def _gpu_section(env: dict, limits: dict, rows: list[dict], gpu: dict) -> list[str]:
    """The report's GPU section: the GPU, its bandwidth, and minirec's cupy rows against
    the naive CuPy loop and PyTorch CUDA at the same sizes."""
    lines = ["", f"## GPU: {env.get('gpu', 'unknown')}", "",
             f"Measured device-to-device copy bandwidth: {limits['gpu_copy_GBps']:.0f} GB/s "
             "(`cupy.copyto` of up to 1 GiB, 2 bytes moved per byte copied, CUDA events). "
             "GPU times are medians of CUDA-event times. The naive CuPy loop is a Python "
             "loop over T of elementwise CuPy ops (what one writes without a kernel); "
             "PyTorch CUDA runs the same loop under autograd (cuDNN for RNN/LSTM/GRU) in "
             "a separate process. `best minirec` is the fastest cupy method at that size.",
             "", "| entry | (B, T, D, H) | dtype | best minirec fwd | best minirec fwd+bwd "
             "| naive CuPy fwd | naive CuPy fwd+bwd | naive / minirec | torch CUDA fwd "
             "| torch CUDA fwd+bwd | minirec / torch |", "|---" * 11 + "|"]
    naive = {(n["name"], tuple(n["dims"]), n["dtype"]): n for n in gpu.get("naive", [])}
    torch_rows = {(t["kind"], tuple(t["dims"]), t["dtype"]): t for t in gpu.get("torch", [])}
    keys = dict.fromkeys((r["name"], tuple(r["dims"]), r["dtype"]) for r in rows
                         if r["backend"] == "cupy")
    for key in keys:
        mine = [r for r in rows if r["backend"] == "cupy"
                and (r["name"], tuple(r["dims"]), r["dtype"]) == key]
        f = min(r["fwd_s"] for r in mine)
        fb = min(r["fwd_bwd_s"] for r in mine)
        n, t = naive.get(key), torch_rows.get(key)
        cells = [key[0], str(key[1]), key[2], _fmt_t(f), _fmt_t(fb)]
        cells += ([_fmt_t(n["naive_fwd_s"]), _fmt_t(n["naive_fwd_bwd_s"]),
                   f"{n['naive_fwd_bwd_s'] / fb:.1f}×"] if n else ["—"] * 3)
        cells += ([_fmt_t(t["fwd_s"]), _fmt_t(t["fwd_bwd_s"]), f"{fb / t['fwd_bwd_s']:.2f}×"]
                  if t else ["—"] * 3)
        lines.append("| " + " | ".join(cells) + " |")
    if gpu.get("torch_skipped"):
        lines += ["", f"PyTorch CUDA was not timed: {gpu['torch_skipped']}."]
    return lines


def build_parser() -> argparse.ArgumentParser:
    """The ``minirec bench`` argument parser; every option's help states its default."""
    from minirec.cli import folder_path_arg, positive_float_arg, positive_int_arg

    p = argparse.ArgumentParser(
        prog="minirec bench", description=__doc__.splitlines()[0],
        epilog="Exit status 2 (and RESULTS.md left as it was) when the selection has "
               "nothing to time or a --backend asked for cannot run here (CuPy not "
               "installed, no GPU).")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="registry entries (see `minirec list`) or glob patterns such as "
                        "'scan.*' (default: every entry)")
    p.add_argument("--sizes", type=_size_names, default=None,
                   help="comma-separated sizes, each (B, T, D, H): "
                        + ", ".join(f"{k} {v}" for k, v in BENCH_SIZES.items())
                        + " (default: all of them; cupy cases of "
                        + ", ".join(f"{k} also at {v}" for k, v in GPU_SIZES.items()) + ")")
    p.add_argument("--backend", type=_backend_names, action="append", metavar="BACKEND[,...]",
                   help="time only these backends (comma-separated or repeated): "
                        "numpy, numba, cupy (CUDA-event timing, read against the GPU's "
                        "measured copy bandwidth) or cuda-emulated; each must be usable here "
                        "(default: every backend available here except cuda-emulated, which "
                        "runs CUDA C on the CPU for tests and teaching, not for speed)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of every timed case (default: %(default)s)")
    p.add_argument("--repeats", type=positive_int_arg, default=7,
                   help="timed calls per case; the median is reported (default: %(default)s)")
    p.add_argument("--budget", type=positive_float_arg, default=3.0,
                   help="seconds per timing at most, once 3 calls are done "
                        "(default: %(default)s)")
    p.add_argument("--out", type=folder_path_arg, default="benchmarks",
                   help="folder for RESULTS.md, results.json and the plots; its analysis.md, "
                        "if any, is appended to RESULTS.md unless --backend restricts the "
                        "run (default: %(default)s)")
    p.add_argument("--no-torch", action="store_true",
                   help="skip the PyTorch comparisons, CPU and CUDA (default: run them when "
                        "PyTorch is installed, CUDA when cupy cases are timed)")
    p.add_argument("--no-sweep", action="store_true",
                   help="skip every sweep: the time-against-T sweep and the scaling sweeps "
                        "of --no-scaling (default: run them)")
    p.add_argument("--no-scaling", action="store_true",
                   help="skip the scaling sweeps: LSTM time against H and B (numba and "
                        "torch.nn.LSTM) and the diagonal cells against T (numba and the NumPy "
                        "definition); they run when numba is timed, the LSTM ones when lstm "
                        "is selected, the diagonal one for the selected diagonal cells "
                        "(default: run them)")
    p.add_argument("--no-targets", action="store_true",
                   help="skip the performance targets (scan bandwidth, numba speed-ups, "
                        "classic cells vs PyTorch at their stated shapes; on a GPU the scan "
                        "against its copy bandwidth) and the compile-time runs (default: "
                        "run those of the backends timed)")
    return p


def _size_names(text: str) -> list[str]:
    """``--sizes``: comma-separated names of :data:`BENCH_SIZES`, each once, in order."""
    names = [s.strip() for s in text.split(",")]
    bad = [s for s in names if s not in BENCH_SIZES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sizes from {', '.join(BENCH_SIZES)}, got {text!r}")
    return list(dict.fromkeys(names))


def _backend_names(text: str) -> list[str]:
    """``--backend``: comma-separated names of :data:`minirec._backend.BACKENDS`."""
    from minirec._backend import BACKENDS

    names = [s.strip() for s in text.split(",")]
    if not all(n in BACKENDS for n in names):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated backends from {', '.join(BACKENDS)}, got {text!r}")
    return names


# timed only when --backend names it: CUDA C run on the CPU, one host thread per CUDA
# thread (minirec/kernels/cuda/emulation), for tests and teaching
NOT_TIMED_BY_DEFAULT = ("cuda-emulated",)
# the longest T at which a quadratic "parallel" form is timed by plan_jobs
PARALLEL_MAX_T = 1024
EMULATED_NOTE = ("backend 'cuda-emulated' is not timed by default: it runs the CUDA kernels "
                 "on the CPU, one host thread per CUDA thread, for tests and teaching, not "
                 "for speed (ask for it with --backend cuda-emulated)")


def plan_jobs(entries: Sequence, backends: Sequence[str] | None, sizes: Sequence[tuple],
              dtype, gpu_sizes: dict | None = None) -> tuple[list[tuple], list[str]]:
    """The cases to time, ``[(entry, method, backend, dims)]``, and notes on what is not.

    Args:
        entries: registry entries.
        backends: the backends asked for with ``--backend``; each must be known,
            a backend of a selected entry and usable here. None: every backend
            available here (skipping, with a note, those whose package or device is
            missing) except those of :data:`NOT_TIMED_BY_DEFAULT`.
        sizes: ``(B, T, D, H)`` tuples.
        dtype: the dtype of every case; entries without it get no case.
        gpu_sizes: entry name → an extra ``(B, T, D, H)`` for its cupy cases.

    Raises:
        ValueError: a requested backend cannot be timed (the message says why:
            for cupy, what to install, or that no GPU is visible).
    """
    from minirec.cli import plan_checks

    tasks, notes = plan_checks(entries, backends)
    if backends is None:
        skipped = [b for b in NOT_TIMED_BY_DEFAULT if any(b in e.backends for e in entries)]
        notes = [n for n in notes if not n.startswith(tuple(f"skipped backend {b!r}"
                                                              for b in skipped))]
        notes += [EMULATED_NOTE for b in skipped if b == "cuda-emulated"]
        tasks = [t for t in tasks if t[2] not in NOT_TIMED_BY_DEFAULT]
    jobs, quadratic = [], []
    for e, m, b in tasks:
        if np.dtype(dtype) not in e.dtypes:
            continue
        extra = [gpu_sizes[e.name]] if b == "cupy" and e.name in (gpu_sizes or {}) else []
        for d in dict.fromkeys([*map(tuple, sizes), *extra]):
            if m == "parallel" and d[1] > PARALLEL_MAX_T:
                quadratic.append(f"{e.name}/{b} at {d}")
                continue
            jobs.append((e, m, b, tuple(d)))
    if quadratic:
        notes.append(f"the quadratic 'parallel' forms are not timed above T = {PARALLEL_MAX_T} "
                     f"(their (T, T) scores, (T, T, K) with per-key gates, take gigabytes: GLA's "
                     f"at T = 4096 ran this 23 GiB machine out of memory): "
                     + "; ".join(quadratic))
    return jobs, notes


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``minirec bench``.

    Returns:
        0 when the report was written; 2 when the selection has no case to
        time or a ``--backend`` asked for cannot run here (CuPy not installed,
        no GPU, ...): nothing is then measured and nothing is written. Bad
        options exit 2 through argparse's ``SystemExit``.
    """
    from minirec import registry
    from minirec.cli import select_entries

    p = build_parser()
    args = p.parse_args(argv)
    try:
        entries = select_entries(args.names)
    except ValueError as exc:
        p.error(str(exc))
    names = [e.name for e in entries]
    sizes = [BENCH_SIZES[s] for s in (args.sizes or BENCH_SIZES)]
    dtype = np.dtype(args.dtype)
    backends = (None if args.backend is None
                else list(dict.fromkeys(b for group in args.backend for b in group)))
    try:
        jobs, notes = plan_jobs(entries, backends, sizes, dtype,
                                gpu_sizes=GPU_SIZES if args.sizes is None else None)
    except ValueError as exc:
        print(f"minirec bench: --backend: {str(exc).rstrip('.')}; "
              f"{args.out / 'RESULTS.md'} was not written", file=sys.stderr)
        return 2
    if not jobs:
        have = "; ".join(f"{e.name}: {', '.join(np.dtype(d).name for d in e.dtypes)}"
                         for e in entries)
        print(f"minirec bench: nothing to time: --dtype: expected a dtype that a selected "
              f"entry runs on a backend available here ({have}), got {dtype.name!r}; "
              f"{args.out / 'RESULTS.md'} was not written", file=sys.stderr)
        return 2
    for n in notes:
        print(f"note: {n}")
    timed = {b for _, _, b, _ in jobs}

    try:
        from tqdm.auto import tqdm
    except ImportError:  # a bare machine (a lent GPU): no progress bar
        def tqdm(jobs, **kwargs):
            return jobs

    env = environment()
    limits = machine_limits()
    if "cupy" in timed:
        print("GPU: name and device-to-device copy bandwidth ...")
        gpu_limit, gpu_info = gpu_limits()
        limits.update(gpu_limit)
        env.update(gpu_info)
    rows = []
    for entry, m, b, dims in tqdm(jobs, desc="bench", unit="case"):
        rows.append(bench_case(entry, m, b, dims, dtype, args.repeats, args.budget))
    targets, compile_info = [], {}
    if not args.no_targets and "numba" in timed:
        print("performance targets: scan bandwidth, numba speed-ups, classic cells vs "
              "PyTorch ...")
        targets = scan_bandwidth_target(limits, args.repeats, args.budget)
        targets += speedup_targets(args.repeats, args.budget)
        print("matrix-state ops: numba against the definition, chunk GFLOP/s ...")
        targets += matrix_targets(limits, args.repeats, args.budget)
        print("Newton iterations and time; multi-head LSTM ...")
        targets += newton_targets(args.repeats, args.budget)
        for (B, T, H) in CELL_TARGET_SHAPES:
            for n in ("rnn", "gru", "lstm"):
                rows.append(bench_case(registry.get(n), "recurrent", "numba", (B, T, H, H),
                                       dtype, args.repeats, args.budget))
        print("numba compile and cached-load times (two fresh processes) ...")
        compile_info = compile_times()
    if not args.no_targets and "cupy" in timed:
        print(f"GPU target: scan.linear at {GPU_SCAN_TARGET_SHAPE} float32 against the copy "
              "bandwidth ...")
        targets += gpu_scan_bandwidth_target(limits["gpu_copy_GBps"], args.repeats,
                                             args.budget)
    torch_rows = []
    torch_kinds = ("rnn", "lstm", "gru", "scan.linear")
    if not args.no_torch and timed - {"cupy"}:
        shapes = sizes + ([(B, T, H, H) for B, T, H in CELL_TARGET_SHAPES]
                          if not args.no_targets and "numba" in timed else [])
        cases = [{"kind": n, "dims": list(d), "dtype": dtype.name, "repeats": args.repeats}
                 for n in names if n in torch_kinds for d in shapes]
        torch_rows = torch_times(cases, threads=os.cpu_count() or 1)
        for tr in torch_rows:  # the cells' targets: LSTM ≤ 1.0× torch, GRU/RNN ≥ 2× faster
            if tr["kind"] in ("rnn", "gru", "lstm") and tuple(tr["dims"][:3]) in {
                    s for s in CELL_TARGET_SHAPES}:
                mine = [r for r in rows if r["name"] == tr["kind"] and r["backend"] == "numba"
                        and tuple(r["dims"]) == tuple(tr["dims"])]
                if mine:
                    ratio = mine[0]["fwd_bwd_s"] / tr["fwd_bwd_s"]
                    lstm = tr["kind"] == "lstm"
                    targets.append({
                        "what": f"{tr['kind']} numba vs torch.nn.{tr['kind'].upper()} (fwd+bwd)",
                        "shape": str(tuple(tr["dims"][:3])), "measured": mine[0]["fwd_bwd_s"],
                        "reference": tr["fwd_bwd_s"], "ratio": ratio,
                        "target": "≤ 1.0× torch" if lstm else "≤ 0.5× torch (2× faster)",
                        "met": ratio <= (1.0 if lstm else 0.5), "note": ""})
    gpu = None
    if "cupy" in timed:
        print("GPU: the naive CuPy loop over T, PyTorch CUDA ...")
        gpu = {"naive": naive_cupy_times(rows, args.repeats, args.budget), "torch": [],
               "torch_skipped": "--no-torch" if args.no_torch else None}
        if not args.no_torch:
            cases = [{"kind": n, "dims": list(dims), "dtype": dtype.name,
                      "repeats": args.repeats}
                     for n, dims in dict.fromkeys((r["name"], tuple(r["dims"])) for r in rows
                                                  if r["backend"] == "cupy")
                     if n in torch_kinds]
            _cupy().get_default_memory_pool().free_all_blocks()  # room for the worker
            gpu["torch"], gpu["torch_skipped"] = run_torch_worker(cases, "cuda")
    sweep_rows = []
    if not args.no_sweep:
        print("time against T ...")
        sweep_rows = t_sweep(args.repeats, args.budget, dtype, backends=timed)
    scaling_rows = []
    if not (args.no_sweep or args.no_scaling) and "numba" in timed:
        print("scaling: the LSTM against H and B, the diagonal cells against T ...")
        scaling_rows = scaling_sweeps(args.repeats, args.budget, dtype, limits, backends=timed,
                                      names=names, torch=not args.no_torch)
    analysis_file = Path(args.out) / "analysis.md"
    analysis = (analysis_file.read_text() if analysis_file.exists() and backends is None
                else None)
    path = write_report(Path(args.out), env, limits, rows, torch_rows,
                        "minirec bench " + " ".join(argv if argv is not None else sys.argv[2:]),
                        targets, compile_info, sweep_rows, analysis, notes=notes, gpu=gpu,
                        scaling_rows=scaling_rows)
    print(f"wrote {path}")
    return 0
