"""`minirec bench` runs end to end on a tiny selection and writes its report.
(No timing is asserted anywhere: benchmarks are not tests.)"""

import json

from minirec import cli


def test_bench_writes_results_and_plot(tmp_path):
    rc = cli.main(["bench", "scan.linear", "rnn", "--sizes", "small", "--repeats", "2",
                   "--budget", "0.2", "--no-torch", "--no-targets", "--out", str(tmp_path)])
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
