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
   process (sharing a process with OpenBLAS distorts both), when installed.

6. forward+backward time against T (64 … 16384) for every method and backend
   of ``scan.linear`` (B·D = 32, where chunking over time is meant to pay) and
   ``rnn``.

It writes ``RESULTS.md`` (with ``analysis.md`` from ``--out`` appended, the
hand-written reading of the numbers), ``results.json`` and PNG plots to
``--out`` (default ``benchmarks/``).
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
from collections.abc import Callable
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
    """Time one entry × method × backend × size; returns a result row."""
    from minirec import registry

    rng = np.random.default_rng(0)
    inputs = entry.make_inputs(rng, dtype, dims, method=method)
    kw = registry._method_kwargs(entry, method, backend)
    if "chunk_size" in kw:
        kw["chunk_size"] = None  # the module's default chunk length
    t0 = time.perf_counter()
    out, state, cache = registry.run_forward(entry, inputs, **kw)
    first = time.perf_counter() - t0
    d_out = np.ones_like(out)
    d_state = (tuple(np.zeros_like(s) for s in state) if isinstance(state, tuple)
               else np.zeros_like(state))
    registry.run_backward(entry, inputs, cache, d_out, d_state)

    def fwd():
        return registry.run_forward(entry, inputs, **kw)

    def fwd_bwd():
        _, _, c = registry.run_forward(entry, inputs, **kw)
        return registry.run_backward(entry, inputs, c, d_out, d_state)

    t_f = _median_time(fwd, repeats, budget_s)
    t_fb = _median_time(fwd_bwd, repeats, budget_s)
    moved = _nbytes(inputs) + _nbytes(out) + _nbytes(state)
    return {"name": entry.name, "method": method, "backend": backend, "dims": list(dims),
            "dtype": np.dtype(dtype).name, "first_call_s": first, "fwd_s": t_f,
            "fwd_bwd_s": t_fb, "fwd_GBps": moved / t_f / 1e9}


# ---------------------------------------------------------------------------
# time against T
# ---------------------------------------------------------------------------

SWEEP_TS = (64, 256, 1024, 4096, 16384)
# (entry, B, D, H): scan.linear with little independent work (B·D = 32), where the
# chunked scan's prange over chunks is meant to pay; rnn with a small hidden size
SWEEPS = (("scan.linear", 1, 32, 32), ("rnn", 4, 32, 32))


def t_sweep(repeats: int, budget_s: float, dtype=np.float32) -> list[dict]:
    """Forward+backward time against T for every (method, backend) of the sweep
    entries, at fixed B and D (the rows of :func:`bench_case` with ``sweep=True``)."""
    from minirec import _backend, registry

    rows = []
    for name, B, D, H in SWEEPS:
        entry = registry.get(name)
        for m, b in entry.pairs:
            if not _backend.available(b):
                continue
            for T in SWEEP_TS:
                if b == "numpy" and m == "recurrent" and T > 4096 and entry.kind == "cell":
                    continue  # minutes of Python loop; the trend is clear by then
                row = bench_case(entry, m, b, (B, T, D, H), dtype, repeats, budget_s)
                row["sweep"] = True
                rows.append(row)
    return rows


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
    n = a.size
    bw = limits["copy_GBps"] * 1e9
    rows = []
    for what, t, nbytes, target in (("scan.linear numba forward", t_f, 12, 1.2),
                                     ("scan.linear numba backward", t_b, 20, 1.5)):
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
torch.set_num_threads(cfg["threads"])
out = []
for case in cfg["cases"]:
    B, T, D, H = case["dims"]
    dt = getattr(torch, case["dtype"])
    x = torch.randn(B, T, D, dtype=dt, requires_grad=True)
    kind = case["kind"]
    if kind in ("rnn", "lstm", "gru"):
        mod = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](
            D, H, batch_first=True).to(dt)
        fwd = lambda: mod(x)[0]
    elif kind == "scan.linear":
        a = torch.rand(B, T, D, dtype=dt)
        def fwd():
            h = torch.zeros(B, D, dtype=dt); hs = []
            for t in range(T):
                h = a[:, t] * h + x[:, t]; hs.append(h)
            return torch.stack(hs, 1)
    else:
        continue
    def fb():
        y = fwd(); y.sum().backward()
    res = {}
    for label, fn in (("fwd_s", fwd), ("fwd_bwd_s", fb)):
        with torch.no_grad() if label == "fwd_s" else torch.enable_grad():
            fn()
            ts = []
            for _ in range(case["repeats"]):
                t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
        res[label] = float(np.median(ts))
    out.append({**case, **res, "torch": torch.__version__})
print(json.dumps(out))
"""


def torch_times(cases: list[dict], threads: int) -> list[dict]:
    """Run the PyTorch worker in a child process; ``[]`` when torch is missing."""
    cfg = json.dumps({"threads": threads, "cases": cases})
    try:
        proc = subprocess.run([sys.executable, "-c", _TORCH_WORKER, cfg], capture_output=True,
                              text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if proc.returncode != 0:
        return []
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def _fmt_t(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def write_report(out_dir: Path, env: dict, limits: dict, rows: list[dict], torch_rows: list[dict],
                 command: str, targets: list[dict] | None = None,
                 compile_info: dict | None = None, sweep_rows: list[dict] | None = None,
                 analysis: str | None = None) -> Path:
    """Write ``RESULTS.md`` and plots into ``out_dir``; returns the markdown path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    ref = {(r["name"], tuple(r["dims"]), r["dtype"]): r for r in rows
           if r["method"] == "recurrent" and r["backend"] == "numpy"}
    lines = ["# minirec benchmark results", "",
             f"Command: `{command}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
             "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    lines += [f"- measured {k}: {v:.1f}" for k, v in limits.items()]
    lines += ["", "## Every entry × method × backend", "",
              "Times are medians after a warm-up call (the first call, which compiles "
              "Numba kernels, is in its own column). `GB/s` counts every input and "
              "output once; `vs def` is the NumPy recurrent definition's time over "
              "this row's (forward + backward).", "",
              "| entry | method | backend | (B, T, D, H) | dtype | first call | fwd | fwd+bwd "
              "| GB/s (fwd) | % copy BW | vs def |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = ref.get((r["name"], tuple(r["dims"]), r["dtype"]))
        speed = base["fwd_bwd_s"] / r["fwd_bwd_s"] if base else float("nan")
        lines.append(
            f"| {r['name']} | {r['method']} | {r['backend']} | {tuple(r['dims'])} | {r['dtype']} "
            f"| {_fmt_t(r['first_call_s'])} | {_fmt_t(r['fwd_s'])} | {_fmt_t(r['fwd_bwd_s'])} "
            f"| {r['fwd_GBps']:.2f} | {100 * r['fwd_GBps'] / limits['copy_GBps']:.0f}% "
            f"| {speed:.2f}× |")
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
                    tuple(tr["dims"]) and r["dtype"] == tr["dtype"]]
            best = min((r["fwd_bwd_s"] for r in mine), default=float("nan"))
            lines.append(f"| {tr['kind']} | {tuple(tr['dims'])} | {tr['dtype']} "
                         f"| {_fmt_t(tr['fwd_s'])} | {_fmt_t(tr['fwd_bwd_s'])} | "
                         f"{_fmt_t(best)} | {best / tr['fwd_bwd_s']:.2f}× |")
    else:
        lines += ["", "PyTorch was not installed (or failed to run): no comparison."]
    # plot: forward time against T for every method of each entry (medium vs long sizes)
    names = sorted({r["name"] for r in rows})
    fig, axes = plt.subplots(1, 1, figsize=(8, 5))
    for name in names:
        for r in rows:
            if r["name"] == name and r["dims"] == list(BENCH_SIZES["medium"]):
                axes.bar(f"{name}\n{r['method']}/{r['backend']}", r["fwd_GBps"], color="C0")
    axes.axhline(limits["copy_GBps"], color="k", ls="--", label="copy bandwidth")
    axes.set_ylabel("achieved GB/s (forward, medium size)")
    axes.tick_params(axis="x", labelrotation=90, labelsize=6)
    axes.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "efficiency.png", dpi=120)
    plt.close(fig)
    lines += ["", "![achieved bandwidth](efficiency.png)", ""]
    sweep = [r for r in sweep_rows or []]
    if sweep:
        names = sorted({r["name"] for r in sweep})
        fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
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
        lines += ["", "![time against T](time_vs_T.png)", ""]
    if analysis:
        lines += ["", analysis.rstrip(), ""]
    path = out_dir / "RESULTS.md"
    path.write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(
        {"env": env, "limits": limits, "rows": rows, "torch": torch_rows,
         "targets": targets, "compile": compile_info, "sweep": sweep_rows}, indent=1,
        default=str))
    return path


def build_parser() -> argparse.ArgumentParser:
    """The ``minirec bench`` argument parser; every option's help states its default."""
    from minirec.cli import folder_path_arg, positive_float_arg, positive_int_arg

    p = argparse.ArgumentParser(
        prog="minirec bench", description=__doc__.splitlines()[0],
        epilog="Exit status 2 (and RESULTS.md left as it was) when the selection has "
               "nothing to time.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="registry entries (see `minirec list`) or glob patterns such as "
                        "'scan.*' (default: every entry)")
    p.add_argument("--sizes", type=_size_names, default=",".join(BENCH_SIZES),
                   help="comma-separated sizes, each (B, T, D, H): "
                        + ", ".join(f"{k} {v}" for k, v in BENCH_SIZES.items())
                        + " (default: %(default)s)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of every timed case (default: %(default)s)")
    p.add_argument("--repeats", type=positive_int_arg, default=7,
                   help="timed calls per case; the median is reported (default: %(default)s)")
    p.add_argument("--budget", type=positive_float_arg, default=3.0,
                   help="seconds per timing at most, once 3 calls are done "
                        "(default: %(default)s)")
    p.add_argument("--out", type=folder_path_arg, default="benchmarks",
                   help="folder for RESULTS.md, results.json and the plots; its analysis.md, "
                        "if any, is appended to RESULTS.md (default: %(default)s)")
    p.add_argument("--no-torch", action="store_true",
                   help="skip the PyTorch comparison (default: run it when PyTorch is "
                        "installed)")
    p.add_argument("--no-sweep", action="store_true",
                   help="skip the time-against-T sweep (default: run it)")
    p.add_argument("--no-targets", action="store_true",
                   help="skip the performance targets (scan bandwidth, numba speed-ups, "
                        "classic cells vs PyTorch at their stated shapes) and the "
                        "compile-time runs (default: run them when Numba is installed)")
    return p


def _size_names(text: str) -> list[str]:
    """``--sizes``: comma-separated names of :data:`BENCH_SIZES`, each once, in order."""
    names = [s.strip() for s in text.split(",")]
    bad = [s for s in names if s not in BENCH_SIZES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated sizes from {', '.join(BENCH_SIZES)}, got {text!r}")
    return list(dict.fromkeys(names))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``minirec bench``.

    Returns:
        0 when the report was written; 2 when the selection has no case to
        time (nothing is measured and nothing is written). Bad options exit 2
        through argparse's ``SystemExit``.
    """
    from minirec import _backend, registry
    from minirec.cli import select_entries

    p = build_parser()
    args = p.parse_args(argv)
    try:
        entries = select_entries(args.names)
    except ValueError as exc:
        p.error(str(exc))
    names = [e.name for e in entries]
    sizes = [BENCH_SIZES[s] for s in args.sizes]
    dtype = np.dtype(args.dtype)
    jobs = [(e, m, b, dims) for e in entries if dtype in e.dtypes for m, b in e.pairs
            if _backend.available(b) for dims in sizes]
    if not jobs:
        have = "; ".join(f"{e.name}: {', '.join(np.dtype(d).name for d in e.dtypes)}"
                         for e in entries)
        print(f"minirec bench: nothing to time: --dtype: expected a dtype that a selected "
              f"entry runs on a backend available here ({have}), got {dtype.name!r}; "
              f"{args.out / 'RESULTS.md'} was not written", file=sys.stderr)
        return 2

    from tqdm.auto import tqdm

    env = environment()
    limits = machine_limits()
    rows = []
    for entry, m, b, dims in tqdm(jobs, desc="bench", unit="case"):
        rows.append(bench_case(entry, m, b, dims, dtype, args.repeats, args.budget))
    targets, compile_info = [], {}
    if not args.no_targets and _backend.available("numba"):
        print("performance targets: scan bandwidth, numba speed-ups, classic cells vs "
              "PyTorch ...")
        targets = scan_bandwidth_target(limits, args.repeats, args.budget)
        targets += speedup_targets(args.repeats, args.budget)
        for (B, T, H) in CELL_TARGET_SHAPES:
            for n in ("rnn", "gru", "lstm"):
                rows.append(bench_case(registry.get(n), "recurrent", "numba", (B, T, H, H),
                                       dtype, args.repeats, args.budget))
        print("numba compile and cached-load times (two fresh processes) ...")
        compile_info = compile_times()
    torch_rows = []
    if not args.no_torch:
        shapes = sizes + ([(B, T, H, H) for B, T, H in CELL_TARGET_SHAPES]
                          if not args.no_targets else [])
        cases = [{"kind": n, "dims": list(d), "dtype": dtype.name, "repeats": args.repeats}
                 for n in names if n in ("rnn", "lstm", "gru", "scan.linear") for d in shapes]
        torch_rows = torch_times(cases, threads=os.cpu_count() or 1)
        for tr in torch_rows:  # the cells' targets: LSTM ≤ 1.5× torch, GRU/RNN ≥ 2× faster
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
                        "target": "≤ 1.5× torch" if lstm else "≤ 0.5× torch (2× faster)",
                        "met": ratio <= (1.5 if lstm else 0.5), "note": ""})
    sweep_rows = []
    if not args.no_sweep:
        print("time against T ...")
        sweep_rows = t_sweep(args.repeats, args.budget, dtype)
    analysis_file = Path(args.out) / "analysis.md"
    analysis = analysis_file.read_text() if analysis_file.exists() else None
    path = write_report(Path(args.out), env, limits, rows, torch_rows,
                        "minirec bench " + " ".join(argv if argv is not None else sys.argv[2:]),
                        targets, compile_info, sweep_rows, analysis)
    print(f"wrote {path}")
    return 0
