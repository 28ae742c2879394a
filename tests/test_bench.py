"""`minirec bench` runs end to end on a tiny selection and writes its report.
(No timing is asserted anywhere: benchmarks are not tests.)"""

import json

from minirec import cli


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
    path = bench.write_report(tmp_path, {"python": "x"}, {"copy_GBps": 10.0}, rows, [], "cmd",
                              sweep_rows=rows, analysis=(tmp_path / "analysis.md").read_text())
    text = path.read_text()
    assert "## Time against T" in text and "hand-written text" in text
    assert (tmp_path / "time_vs_T.png").stat().st_size > 0
