"""`minirec bench` runs end to end on a tiny selection and writes its report;
bad options and empty selections stop it before it measures or writes anything.
(No timing is asserted anywhere: benchmarks are not tests.)"""

import dataclasses
import json
import sys
import types

import numpy as np
import pytest

from minirec import _backend, bench, cli, registry
from minirec.kernels.cuda import _build
from minirec.scan import linear


def test_bench_writes_results_and_plot(tmp_path):
    rc = cli.main(["bench", "scan.linear", "rnn", "--sizes", "small", "--repeats", "2",
                   "--budget", "0.2", "--no-torch", "--no-targets", "--no-sweep",
                   "--out", str(tmp_path)])
    assert rc == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## Machine" in text and "copy_GBps" in text
    data = json.loads((tmp_path / "results.json").read_text())
    combos = {(r["name"], r["method"], r["backend"]) for r in data["rows"]}
    assert ("scan.linear", "blelloch", "numpy") in combos
    assert ("rnn", "recurrent", "numba") in combos
    assert (tmp_path / "efficiency.png").stat().st_size > 0
    for r in data["rows"]:
        assert r["fwd_s"] > 0 and r["fwd_bwd_s"] > 0


def test_time_against_T_sweep_is_tabled_and_plotted(tmp_path, monkeypatch):
    from minirec import bench

    monkeypatch.setattr(bench, "SWEEP_TS", (8, 16))
    monkeypatch.setattr(bench, "SWEEPS", (("scan.linear", 1, 4, 4),))
    rows = bench.t_sweep(repeats=2, budget_s=0.1)
    assert {r["dims"][1] for r in rows} == {8, 16}
    assert {(r["method"], r["backend"]) for r in rows} >= {("recurrent", "numpy"),
                                                           ("blelloch", "numpy")}
    (tmp_path / "analysis.md").write_text("## Analysis\n\nhand-written text\n")
    target = {"what": "scan.linear numba forward", "shape": "(1, 8, 4)", "measured": 2e-3,
              "reference": 1e-3, "ratio": 2.0, "target": "≤ 1.2× bound", "met": False,
              "note": ""}
    path = bench.write_report(tmp_path, {"python": "x"}, {"copy_GBps": 10.0}, rows, [], "cmd",
                              targets=[target], sweep_rows=rows,
                              analysis=(tmp_path / "analysis.md").read_text())
    text = path.read_text()
    assert "## Time against T" in text and "hand-written text" in text
    assert "## Performance targets" in text and "| scan.linear numba forward |" in text
    assert "issue" not in text.lower()  # no tracker wording in the report
    assert (tmp_path / "time_vs_T.png").stat().st_size > 0


@pytest.fixture
def measuring_is_an_error(monkeypatch):
    """Fail if the bench starts measuring: validation must come first."""
    def machine_limits(*args, **kwargs):
        raise AssertionError("machine_limits ran")
    monkeypatch.setattr(bench, "machine_limits", machine_limits)


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "bogus"],
     "argument --sizes: expected comma-separated sizes from small, medium, long, got 'bogus'"),
    (["--sizes", "small,"], "argument --sizes: expected comma-separated sizes"),
    (["--dtype", "bogus"], "argument --dtype: invalid choice: 'bogus'"),
    (["nosuchentry"], "got 'nosuchentry'"),
    (["--repeats", "0"], "argument --repeats: expected a positive integer, got '0'"),
    (["--budget", "-1"], "argument --budget: expected a finite number > 0, got '-1'"),
    (["--backend", "numba,gpu"], "argument --backend: expected comma-separated backends from "
                                 "numpy, numba, cupy, cuda-emulated, got 'numba,gpu'"),
])
def test_bad_options_exit_2_with_a_message(argv, message, capsys, measuring_is_an_error):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_out_that_is_a_file_exits_2(tmp_path, capsys, measuring_is_an_error):
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--out", str(tmp_path / "f")])
    assert exc.value.code == 2
    assert "argument --out: expected a folder" in capsys.readouterr().err


def test_nothing_to_time_exits_nonzero_and_keeps_results(tmp_path, monkeypatch, capsys,
                                                         measuring_is_an_error):
    f64_only = dataclasses.replace(registry.get("scan.linear"), name="f64.only",
                                   dtypes=(np.dtype(np.float64),))
    monkeypatch.setitem(registry.ENTRIES, "f64.only", f64_only)
    (tmp_path / "RESULTS.md").write_text("the previous results\n")
    rc = cli.main(["bench", "f64.only", "--dtype", "float32", "--no-torch", "--no-sweep",
                   "--no-targets", "--out", str(tmp_path)])
    assert rc == 2
    assert (tmp_path / "RESULTS.md").read_text() == "the previous results\n"
    assert not (tmp_path / "results.json").exists()
    err = capsys.readouterr().err
    assert "nothing to time" in err and "got 'float32'" in err and "f64.only: float64" in err


# ---------------------------------------------------------------------------
# --backend, cuda-emulated and the GPU (none of these tests needs a GPU)
# ---------------------------------------------------------------------------

def _no_gpu_cupy():
    """A stand-in for CuPy installed on a machine without a GPU."""
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    return types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=no_device)))


@pytest.mark.parametrize("cupy_module, message", [
    (None, "needs CuPy, which is not installed: pip install 'minirec[gpu]'"),
    (_no_gpu_cupy(), "CuPy is installed but cannot use a CUDA GPU (RuntimeError: "
                     "cudaErrorNoDevice"),
], ids=["cupy-missing", "no-gpu"])
def test_backend_cupy_without_a_gpu_exits_2_and_says_why(cupy_module, message, tmp_path,
                                                         monkeypatch, capsys,
                                                         measuring_is_an_error):
    monkeypatch.setitem(sys.modules, "cupy", cupy_module)  # None: `import cupy` fails
    (tmp_path / "RESULTS.md").write_text("the previous results\n")
    rc = cli.main(["bench", "scan.linear", "--backend", "cupy", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "minirec bench: --backend: backend 'cupy' cannot run here" in err
    assert message in err and "was not written" in err and "Traceback" not in err
    assert (tmp_path / "RESULTS.md").read_text() == "the previous results\n"


def test_cuda_emulated_is_not_timed_by_default_and_the_bench_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    jobs, notes = bench.plan_jobs([registry.get("scan.linear")], None, [(1, 4, 2, 2)],
                                  np.float32)
    assert {b for _, _, b, _ in jobs} == {"numpy", "numba"}
    assert bench.EMULATED_NOTE in notes and "not for speed" in bench.EMULATED_NOTE
    assert any(n.startswith("skipped backend 'cupy': ") for n in notes)  # its own note


@pytest.mark.parametrize("backends", [["numba"], ["numpy", "numba"]])
def test_backend_option_restricts_the_timed_backends(backends):
    jobs, notes = bench.plan_jobs([registry.get("scan.linear"), registry.get("rnn")], backends,
                                  [(1, 4, 2, 2), (2, 8, 2, 2)], np.float32)
    assert {b for _, _, b, _ in jobs} == set(backends)
    assert len(jobs) == 2 * sum(len([p for p in e.pairs if p[1] in backends])
                                for e in (registry.get("scan.linear"), registry.get("rnn")))
    assert notes == []


@pytest.mark.skipif(_build.host_compiler() is None, reason="no C++20 compiler for cuda-emulated")
def test_cuda_emulated_is_timed_when_asked_for():
    jobs, notes = bench.plan_jobs([registry.get("scan.linear")], ["cuda-emulated"],
                                  [(1, 4, 2, 2)], np.float32)
    assert [(m, b) for _, m, b, _ in jobs] == [("recurrent", "cuda-emulated"),
                                               ("chunked", "cuda-emulated")]
    assert notes == []


def test_a_restricted_run_times_only_those_backends(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "machine_limits", lambda: {"copy_GBps": 10.0})
    (tmp_path / "analysis.md").write_text("## Analysis\n\nabout the full run\n")
    rc = cli.main(["bench", "scan.linear", "--backend", "numpy", "--sizes", "small",
                   "--repeats", "1", "--budget", "0.05", "--no-torch", "--no-targets",
                   "--no-sweep", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == {"numpy"}
    assert {r["method"] for r in rows} == set(linear.METHODS)
    assert "about the full run" not in (tmp_path / "RESULTS.md").read_text()
    assert "cuda-emulated" not in capsys.readouterr().out  # asked for numpy only: no note


def test_cupy_cases_use_the_cuda_event_timer():
    assert bench.timer_for("cupy") is bench._cuda_event_time
    for backend in ("numpy", "numba", "cuda-emulated"):
        assert bench.timer_for(backend) is bench._median_time


class _NumpyAsCupy:
    """NumPy dressed as CuPy, for running the bench's GPU code paths on the CPU."""

    def __getattr__(self, name):
        return getattr(np, name)

    def get_default_memory_pool(self):
        return types.SimpleNamespace(free_all_blocks=lambda: None)


@pytest.fixture
def fake_gpu(monkeypatch):
    """Run backend="cupy" cases on the CPU: CuPy is NumPy, the cupy backend runs the
    NumPy definition, and the CUDA-event timer calls the function once, records the
    call and says 1 ms. The host timer must not be used."""
    calls = []

    def cuda_event_time(fn, repeats, budget_s):
        fn()
        calls.append((repeats, budget_s))
        return 1e-3

    def host_timer(*args, **kwargs):
        raise AssertionError("a cupy case was timed with the host clock")

    def on_numpy(run):
        def wrapped(entry, inputs, *args, **kw):
            if kw.get("backend") == "cupy":
                kw["backend"] = "numpy"
            return run(entry, inputs, *args, **kw)
        return wrapped

    available = _backend.available
    monkeypatch.setattr(_backend, "available", lambda b, raise_error=False: b == "cupy" or
                        available(b, raise_error=raise_error))
    monkeypatch.setattr(bench, "_cupy", _NumpyAsCupy)
    monkeypatch.setattr(bench, "_synchronize", lambda: None)
    monkeypatch.setattr(bench, "_cuda_event_time", cuda_event_time)
    monkeypatch.setattr(bench, "_median_time", host_timer)
    monkeypatch.setattr(registry, "run_forward", on_numpy(registry.run_forward))
    return calls


def test_bench_case_times_cupy_cases_with_cuda_events(fake_gpu):
    row = bench.bench_case(registry.get("scan.linear"), "chunked", "cupy", (2, 16, 3, 3),
                           np.float32, repeats=4, budget_s=0.5)
    assert fake_gpu == [(4, 0.5), (4, 0.5)]  # forward, forward+backward
    assert row["timer"] == "CUDA events" and row["fwd_s"] == row["fwd_bwd_s"] == 1e-3
    assert row["backend"] == "cupy" and row["fwd_GBps"] > 0


def test_backend_cupy_run_writes_the_gpu_section(fake_gpu, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "machine_limits", lambda: {"copy_GBps": 10.0})
    monkeypatch.setattr(bench, "gpu_limits",
                        lambda: ({"gpu_copy_GBps": 100.0}, {"gpu": "Fake GPU 9000"}))
    monkeypatch.setattr(bench, "BENCH_SIZES", {"small": (2, 8, 3, 3)})
    monkeypatch.setattr(bench, "GPU_SIZES", {"scan.linear": (1, 20, 4, 4)})
    monkeypatch.setattr(bench, "GPU_SCAN_TARGET_SHAPE", (1, 20, 4))
    torch_cases = []

    def torch_worker(cases, device="cpu", threads=1):
        torch_cases.append((device, cases))
        return [], "torch.cuda.is_available() is False"
    monkeypatch.setattr(bench, "run_torch_worker", torch_worker)
    (tmp_path / "analysis.md").write_text("about the CPU run\n")

    rc = cli.main(["bench", "scan.linear", "rnn", "--backend", "cupy", "--repeats", "2",
                   "--budget", "0.1", "--no-sweep", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert {(r["name"], r["backend"], r["timer"]) for r in data["rows"]} == {
        ("scan.linear", "cupy", "CUDA events"), ("rnn", "cupy", "CUDA events")}
    assert {(r["name"], tuple(r["dims"])) for r in data["rows"]} == {  # GPU_SIZES: scan only
        ("scan.linear", (2, 8, 3, 3)), ("scan.linear", (1, 20, 4, 4)), ("rnn", (2, 8, 3, 3))}
    assert [n["dims"] for n in data["gpu"]["naive"]] == [[2, 8, 3, 3], [1, 20, 4, 4]]
    assert [t["what"] for t in data["targets"]] == [
        "scan.linear cupy recurrent forward", "scan.linear cupy recurrent backward",
        "scan.linear cupy chunked forward", "scan.linear cupy chunked backward"]
    assert [(d, [(c["kind"], c["dims"]) for c in cases]) for d, cases in torch_cases] == [
        ("cuda", [("scan.linear", [2, 8, 3, 3]), ("scan.linear", [1, 20, 4, 4]),
                  ("rnn", [2, 8, 3, 3])])]  # and no CPU comparison for a GPU-only run
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## GPU: Fake GPU 9000" in text and "measured gpu_copy_GBps: 100.0" in text
    assert "| naive CuPy fwd |" in text and "| scan.linear | (2, 8, 3, 3) | float32 |" in text
    assert "PyTorch CUDA was not timed: torch.cuda.is_available() is False" in text
    assert "PyTorch was not installed" not in text and "about the CPU run" not in text
    assert "| scan.linear cupy chunked forward |" in text
    assert not (tmp_path / "efficiency.png").exists()  # the CPU plot: no CPU rows


def test_cuda_event_time_is_the_median_of_cupyx_gpu_times(monkeypatch):
    seen = {}

    def benchmark(fn, n_repeat, n_warmup, max_duration):
        seen.update(n_repeat=n_repeat, n_warmup=n_warmup, max_duration=max_duration)
        fn()
        return types.SimpleNamespace(gpu_times=np.array([[3e-3, 1e-3, 2e-3]]),
                                     cpu_times=np.array([9.0, 9.0, 9.0]))
    monkeypatch.setitem(sys.modules, "cupyx", types.ModuleType("cupyx"))
    monkeypatch.setitem(sys.modules, "cupyx.profiler",
                        types.SimpleNamespace(benchmark=benchmark))
    ran = []
    assert bench._cuda_event_time(lambda: ran.append(1), repeats=2, budget_s=0.7) == 2e-3
    assert ran == [1] and seen == {"n_repeat": 3, "n_warmup": 1, "max_duration": 0.7}


@pytest.mark.parametrize("time_s, met", [(2.0, False), (1.2, True)])
def test_bandwidth_row_reads_time_against_the_copy_bandwidth(time_s, met):
    row = bench.bandwidth_row("scan", (1, 2, 3), time_s, nbytes=100 * 10**9, copy_GBps=100.0,
                              min_fraction=0.8)
    assert row["reference"] == pytest.approx(1.0)  # 100 GB at 100 GB/s
    assert row["ratio"] == pytest.approx(time_s) and row["met"] is met
    assert row["target"] == "≥ 80% of copy BW"
    assert f"{100 / time_s:.0f} GB/s = {1 / time_s:.0%} of the measured 100 GB/s" in row["note"]


def test_naive_loops_equal_the_definition(rng):
    a = rng.uniform(-1, 1, (2, 9, 3))
    b, dh = rng.standard_normal(a.shape), rng.standard_normal(a.shape)
    h0, dstate = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    h_ref, _, cache = linear.forward(a, b, h0)
    g = linear.backward(cache, dh, dstate)
    h = bench.naive_linear_scan_forward(np, a, b, h0)
    da, db, dh0 = bench.naive_linear_scan_backward(np, a, h, h0, dh, dstate)
    for name, x, ref in (("h", h, h_ref), ("da", da, g["a"]), ("db", db, g["b"]),
                         ("dh0", dh0, g["initial_state"])):
        assert registry.rel_rms(x, ref) <= 1e-12, name


def test_torch_worker_times_on_the_cpu():
    pytest.importorskip("torch")
    rows, reason = bench.run_torch_worker(
        [{"kind": "scan.linear", "dims": [1, 4, 2, 2], "dtype": "float32", "repeats": 1}],
        "cpu", threads=1)
    assert reason is None and len(rows) == 1
    assert rows[0]["device"] == "cpu" and rows[0]["fwd_s"] > 0 and rows[0]["fwd_bwd_s"] > 0


def test_torch_worker_without_cuda_says_why():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the worker would time, not refuse")
    rows, reason = bench.run_torch_worker(
        [{"kind": "scan.linear", "dims": [1, 4, 2, 2], "dtype": "float32", "repeats": 1}],
        "cuda")
    assert rows == [] and "torch.cuda.is_available() is False" in reason


def test_report_without_matplotlib_keeps_the_tables(tmp_path, monkeypatch):
    # a lent GPU machine may have CuPy and PyTorch but no matplotlib
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    row = {"name": "scan.linear", "method": "recurrent", "backend": "numpy",
           "dims": [1, 8, 4, 4], "dtype": "float32", "first_call_s": 1e-3, "fwd_s": 1e-3,
           "fwd_bwd_s": 2e-3, "fwd_GBps": 1.0, "timer": "wall clock"}
    path = bench.write_report(tmp_path, {"python": "x"}, {"copy_GBps": 10.0}, [row], [], "cmd",
                              sweep_rows=[{**row, "sweep": True}])
    text = path.read_text()
    assert "| scan.linear | recurrent | numpy | (1, 8, 4, 4) |" in text
    assert "## Time against T" in text and "![" not in text
    assert list(tmp_path.glob("*.png")) == []


def test_chunk_flops_counts_the_four_matmuls():
    # T = 100, C = 64: two chunks, each 2C²(K+V) + 4CKV
    assert bench.chunk_flops(100, 64, 3, 5) == 2 * (2 * 64 * 64 * 8 + 4 * 64 * 15)


def test_matrix_targets_rows_name_the_best_method(monkeypatch):
    """At a tiny shape (no time is asserted): one speed-up row per entry and
    backend, its best method named, and a GFLOP/s row per chunk backend."""
    monkeypatch.setattr(bench, "MATRIX_TARGET_SHAPES", [(1, 8, 1, 4)])
    monkeypatch.setattr(bench, "MATRIX_TARGET_ENTRIES", ("simple_gla",))
    rows = bench.matrix_targets({"gemm_float32_GFLOPs": 100.0}, 1, 0.01,
                                backends=("cuda-emulated",))
    speed = [r for r in rows if "best method" in r["what"]]
    assert len(speed) == 1 and "(recurrent)" in speed[0]["what"]
    assert speed[0]["ratio"] == speed[0]["reference"] / speed[0]["measured"]
    flops = [r for r in rows if "GFLOP/s" in r["what"]]
    assert [r["what"].split()[2].rstrip(":") for r in flops] == ["numpy"]


def test_newton_targets_report_iterations(monkeypatch):
    """At a tiny shape (no time is asserted): a row per cell and backend naming
    the iterations Newton took, and the multi-head row."""
    monkeypatch.setattr(bench, "NEWTON_TARGET", {"B": 1, "T": 16, "D": 3, "H": 4})
    monkeypatch.setattr(bench, "NEWTON_BACKENDS", ("numpy",))
    monkeypatch.setattr(bench, "MULTIHEAD_TARGET", {"B": 1, "T": 4, "D": 4, "H": 4, "NH": 2})
    rows = bench.newton_targets(1, 0.01)
    newton = [r for r in rows if "newton" in r["what"]]
    assert [r["what"].split()[0] for r in newton] == ["gru", "gru_diagonal"]
    assert all(r["note"].endswith("Newton iterations to tol 1e-10")
               and int(r["note"].split()[0]) >= 1 for r in newton)
    assert any(r["what"].startswith("lstm_multihead") for r in rows)


# ---------------------------------------------------------------------------
# scaling: the LSTM against H and B, the diagonal cells against T
# ---------------------------------------------------------------------------

TINY_LSTM = {"lstm_H": [(2, 4, 3, 3), (2, 4, 6, 6)], "lstm_B": [(1, 4, 6, 6), (2, 4, 6, 6)]}
# fake times: the NumPy definition 10× and numba's chunked method 0.5× numba's recurrent one
FAKE_FACTOR = {("recurrent", "numpy"): 10.0, ("chunked", "numba"): 0.5}


@pytest.fixture
def tiny_scaling(monkeypatch):
    """Tiny sweeps whose cases are not timed: ``bench_case`` returns a row with a fake
    forward time of 1 µs per element of (B, T, D, H) (× :data:`FAKE_FACTOR`),
    forward+backward 3× that, and records its calls; the PyTorch worker says 2×
    numba's time. Returns the list of calls."""
    monkeypatch.setattr(bench, "SCALING_LSTM", TINY_LSTM)
    monkeypatch.setattr(bench, "DIAGONAL_TS", (8, 16))
    monkeypatch.setattr(bench, "DIAGONAL_BDH", (1, 2, 2))
    calls = []

    def bench_case(entry, method, backend, dims, dtype, repeats, budget_s):
        calls.append((entry.name, method, backend, tuple(dims)))
        fwd = 1e-6 * float(np.prod(dims)) * FAKE_FACTOR.get((method, backend), 1.0)
        return {"name": entry.name, "method": method, "backend": backend, "dims": list(dims),
                "dtype": np.dtype(dtype).name, "first_call_s": fwd, "fwd_s": fwd,
                "fwd_bwd_s": 3 * fwd, "fwd_GBps": 1.0, "timer": "wall clock"}

    def torch_worker(cases, device="cpu", threads=1):
        calls.append(("torch", device, tuple(tuple(c["dims"]) for c in cases)))
        return [{**c, "fwd_s": 2e-6 * float(np.prod(c["dims"])),
                 "fwd_bwd_s": 6e-6 * float(np.prod(c["dims"])), "torch": "fake",
                 "device": device} for c in cases], None

    monkeypatch.setattr(bench, "bench_case", bench_case)
    monkeypatch.setattr(bench, "run_torch_worker", torch_worker)
    return calls


LIMITS = {"copy_GBps": 10.0, "gemm_float32_GFLOPs": 0.1}


def test_lstm_gflops_is_the_documented_formula():
    # forward 2·B·T·4H·(D+H) = 2·2·3·28·12; forward+backward counted as 3× it
    assert bench.lstm_gemm_flops(B=2, T=3, D=5, H=7) == 2 * 2 * 3 * 4 * 7 * (5 + 7) == 4032
    assert "2·B·T·4H·(D+H)" in bench.lstm_gemm_flops.__doc__
    assert bench.lstm_gflops((2, 3, 5, 7), 0.5) == pytest.approx(3 * 4032 / 0.5 / 1e9)


def test_lstm_scaling_rows_carry_gflops_and_the_peak_fraction(tiny_scaling):
    rows = bench.scaling_sweeps(1, 0.01, np.float32, LIMITS, backends=("numba",),
                                names=["lstm"])
    for kind, shapes in TINY_LSTM.items():
        for backend in ("numba", "torch"):
            mine = [r for r in rows if r["scaling"] == kind and r["backend"] == backend]
            assert [tuple(r["dims"]) for r in mine] == shapes, (kind, backend)
            for r in mine:
                assert r["GFLOPs"] == pytest.approx(
                    3 * bench.lstm_gemm_flops(*r["dims"]) / r["fwd_bwd_s"] / 1e9)
                assert r["peak_fraction"] == pytest.approx(r["GFLOPs"] / 0.1)
    # (2, 4, 6, 6) is in both sweeps: timed once, by numba and by the one torch worker
    assert [c for c in tiny_scaling if c[0] == "lstm"] == [
        ("lstm", "recurrent", "numba", d) for d in [(2, 4, 3, 3), (2, 4, 6, 6), (1, 4, 6, 6)]]
    assert [c for c in tiny_scaling if c[0] == "torch"] == [
        ("torch", "cpu", ((2, 4, 3, 3), (2, 4, 6, 6), (1, 4, 6, 6)))]


def test_lstm_scaling_without_a_measured_peak_or_torch(tiny_scaling):
    rows = bench.scaling_sweeps(1, 0.01, np.float32, {"copy_GBps": 1.0}, backends=("numba",),
                                names=["lstm"], torch=False)
    assert {r["backend"] for r in rows} == {"numba"}
    assert all(r["peak_fraction"] is None and r["GFLOPs"] > 0 for r in rows)
    assert not any(c[0] == "torch" for c in tiny_scaling)


def test_diagonal_sweep_times_numba_methods_and_the_definition(tiny_scaling):
    rows = bench.scaling_sweeps(1, 0.01, np.float32, LIMITS, backends=("numpy", "numba"),
                                names=bench.DIAGONAL_CELLS)
    assert {r["scaling"] for r in rows} == {"diagonal_T"}
    for name in bench.DIAGONAL_CELLS:
        entry = registry.get(name)
        wanted = {(m, b) for m, b in entry.pairs if b == "numba"} | {("recurrent", "numpy")}
        mine = [r for r in rows if r["name"] == name]
        assert {(r["method"], r["backend"]) for r in mine} == wanted, name
        assert {(r["dims"][0], r["dims"][2], r["dims"][3]) for r in mine} == {(1, 2, 2)}
        assert sorted({r["dims"][1] for r in mine}) == [8, 16]


def test_diagonal_speedup_is_numpy_over_the_fastest_numba_method(tiny_scaling):
    rows = bench.scaling_sweeps(1, 0.01, np.float32, LIMITS, backends=("numpy", "numba"),
                                names=["mingru", "aaren"])
    speed = bench.diagonal_speedups(rows)
    assert set(speed) == {(n, T) for n in ("mingru", "aaren") for T in (8, 16)}
    # mingru has a chunked numba method (0.5×): 10 / 0.5; aaren only the recurrent one
    assert speed["mingru", 16]["numba"]["method"] == "chunked"
    assert speed["mingru", 16]["speedup"] == pytest.approx(20.0)
    assert speed["aaren", 8]["numba"]["method"] == "recurrent"
    assert speed["aaren", 8]["speedup"] == pytest.approx(10.0)


@pytest.mark.parametrize("names, backends, lstm, cells", [
    (None, ("numpy", "numba"), True, bench.DIAGONAL_CELLS),
    (["lstm"], ("numpy", "numba"), True, ()),
    (["mingru", "rnn", "scan.linear"], ("numpy", "numba"), False, ("mingru",)),
    (["lstm", "hgrn"], ("numba",), True, ("hgrn",)),
    (["lstm", "hgrn"], ("numpy",), False, ("hgrn",)),  # the LSTM sweeps are numba's
], ids=["all", "lstm-only", "one-cell", "numba-only", "numpy-only"])
def test_scaling_runs_for_the_selected_entries_and_backends(names, backends, lstm, cells,
                                                            tiny_scaling):
    rows = bench.scaling_sweeps(1, 0.01, np.float32, LIMITS, backends=backends, names=names)
    assert any(r["name"] == "lstm" for r in rows) is lstm
    assert {r["name"] for r in rows if r["scaling"] == "diagonal_T"} == set(cells)
    assert {r["backend"] for r in rows if r["scaling"] == "diagonal_T"} == (
        set(backends) if cells else set())


def test_numpy_definition_above_its_largest_T_is_not_timed_and_the_report_says_so(
        tiny_scaling, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "DIAGONAL_NUMPY_MAX_T", 8)
    rows = bench.scaling_sweeps(1, 0.01, np.float32, LIMITS, backends=("numpy", "numba"),
                                names=["hgrn"])
    assert sorted(r["dims"][1] for r in rows if r["backend"] == "numpy") == [8]
    text = bench.write_report(tmp_path, {"python": "x"}, LIMITS, [], [], "cmd",
                              scaling_rows=rows).read_text()
    assert "| hgrn | numpy (definition) | 0.96 ms | not timed |" in text
    assert "| hgrn | numba speed-up | 20.0× | — |" in text
    assert "The NumPy definition was not timed above T=8" in text


def test_scaling_report_writes_the_tables_and_three_plots(tiny_scaling, tmp_path):
    rows = bench.scaling_sweeps(1, 0.01, np.float32, LIMITS, backends=("numpy", "numba"),
                                names=["lstm", "mingru", "ssm"])
    path = bench.write_report(tmp_path, {"python": "x"}, LIMITS, [], [], "cmd",
                              scaling_rows=rows)
    text = path.read_text()
    assert "## Scaling: the LSTM against H and B" in text
    assert "measured in this run, 0.1 GFLOP/s" in text
    # (2, 4, 3, 3): 2·2·4·(4·3)·6 = 1152 flops forward; 3·1152 in 3·72 µs = 0.016 GFLOP/s,
    # 16% of 0.1; torch (fake) takes twice as long
    assert ("| (2, 4, 3, 3) | 0.072 ms | 0.216 ms | 0.016 | 16% | 0.432 ms | 0.008 | 8% "
            "| 0.50× |") in text
    assert "### LSTM against H" in text and "### LSTM against B" in text
    assert "## Scaling: the diagonal cells against T" in text
    # mingru (1, T, 2, 2): chunked numba 0.5 µs per element, 3× for fwd+bwd
    assert "| mingru | numba | 0.048 ms (chunked) | 0.096 ms (chunked) |" in text
    assert "| mingru | numpy (definition) | 0.96 ms | 1.92 ms |" in text
    assert "| mingru | numba speed-up | 20.0× | 20.0× |" in text
    assert "| ssm | numba speed-up | 20.0× | 20.0× |" in text
    for png in ("lstm_vs_H.png", "lstm_vs_B.png", "diagonal_vs_T.png"):
        assert f"]({png})" in text
        assert (tmp_path / png).stat().st_size > 0
    assert "issue" not in text.lower()
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["scaling"]) == len(rows)


def test_scaling_report_without_matplotlib_keeps_the_tables(tiny_scaling, tmp_path,
                                                            monkeypatch):
    rows = bench.scaling_sweeps(1, 0.01, np.float32, LIMITS, names=["lstm", "hgrn"],
                                backends=("numpy", "numba"), torch=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    text = bench.write_report(tmp_path, {"python": "x"}, LIMITS, [], [], "cmd",
                              scaling_rows=rows).read_text()
    assert "### LSTM against H" in text and "| hgrn | numba speed-up |" in text
    assert "torch.nn.LSTM was not timed" in text
    assert "![" not in text and list(tmp_path.glob("*.png")) == []


@pytest.mark.parametrize("argv, scaled", [
    (["mingru"], {"mingru"}),
    (["lstm"], {"lstm"}),
    (["lstm", "hgrn", "--no-torch"], {"lstm", "hgrn"}),
    (["mingru", "--no-scaling"], set()),
    (["mingru", "--no-sweep"], set()),
    (["mingru", "--backend", "numpy"], set()),  # numba not timed: no scaling
], ids=["cell", "lstm", "both-no-torch", "no-scaling", "no-sweep", "numpy-only"])
def test_bench_runs_the_scaling_sweeps_of_the_selection(argv, scaled, tiny_scaling, tmp_path,
                                                        monkeypatch):
    monkeypatch.setattr(bench, "machine_limits", lambda: dict(LIMITS))
    monkeypatch.setattr(bench, "SWEEP_TS", (8,))
    rc = cli.main(["bench", *argv, "--sizes", "small", "--repeats", "1", "--budget", "0.01",
                   "--no-targets", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.loads((tmp_path / "results.json").read_text())["scaling"]
    assert {r["name"] for r in rows} == scaled
    torch_rows = [r for r in rows if r["backend"] == "torch"]
    assert bool(torch_rows) is ("lstm" in scaled and "--no-torch" not in argv)
    text = (tmp_path / "RESULTS.md").read_text()
    assert ("## Scaling: the LSTM against H and B" in text) is ("lstm" in scaled)
    assert ("## Scaling: the diagonal cells against T" in text) is bool(scaled - {"lstm"})


def test_scaling_sweeps_time_for_real_at_tiny_shapes(monkeypatch):
    """The real bench_case at tiny shapes (no time is asserted): every row has
    positive times and the LSTM rows their GFLOP/s."""
    monkeypatch.setattr(bench, "SCALING_LSTM", {"lstm_H": [(1, 4, 3, 3)], "lstm_B": []})
    monkeypatch.setattr(bench, "DIAGONAL_TS", (4,))
    monkeypatch.setattr(bench, "DIAGONAL_BDH", (1, 2, 2))
    rows = bench.scaling_sweeps(1, 0.01, np.float32, LIMITS, backends=("numpy", "numba"),
                                names=["lstm", "mingru"], torch=False)
    assert {(r["scaling"], r["name"], r["backend"]) for r in rows} == {
        ("lstm_H", "lstm", "numba"), ("diagonal_T", "mingru", "numba"),
        ("diagonal_T", "mingru", "numpy")}
    assert all(r["fwd_s"] > 0 and r["fwd_bwd_s"] > 0 for r in rows)
    assert all(r["GFLOPs"] > 0 for r in rows if r["name"] == "lstm")


def test_quadratic_parallel_forms_are_not_planned_at_long_T():
    """plan_jobs leaves 'parallel' out above PARALLEL_MAX_T (GLA's (T, T, K) scores at
    T = 4096 ran the benchmark machine out of memory) and says so in a note."""
    from minirec import registry
    e = registry.get("simple_gla")
    sizes = [(2, bench.PARALLEL_MAX_T, 8, 8), (2, 2 * bench.PARALLEL_MAX_T, 8, 8)]
    jobs, notes = bench.plan_jobs([e], ["numpy"], sizes, np.float32)
    Ts = {(m, d[1]) for _, m, _, d in jobs}
    assert ("parallel", bench.PARALLEL_MAX_T) in Ts
    assert ("parallel", 2 * bench.PARALLEL_MAX_T) not in Ts
    assert ("chunk", 2 * bench.PARALLEL_MAX_T) in Ts
    assert any("not timed above T = 1024" in n and "simple_gla/numpy" in n for n in notes)
