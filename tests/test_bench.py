"""`minirec bench` runs end to end on a tiny selection and writes its report;
bad options and empty selections stop it before it measures or writes anything.
(No timing is asserted anywhere: benchmarks are not tests.)"""

import dataclasses
import json

import numpy as np
import pytest

from minirec import bench, cli, registry


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
