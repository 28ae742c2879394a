"""The `minirec` command: list, check (passes, fails, unknown names), tour's training."""

import dataclasses
import subprocess
import sys
import types

import numpy as np
import pytest

from minirec import cli, registry
from minirec.scan import linear


def test_list_prints_every_entry(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["name", "kind", "methods", "backends", "dtypes",
                                           "summary"]
    for name, entry in registry.ENTRIES.items():
        row = next(line for line in out.splitlines() if line.split()[0] == name)
        assert entry.kind in row and entry.methods[0] in row, row


def test_list_markdown_is_the_feature_table(capsys):
    assert cli.main(["list", "--markdown"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == cli.feature_table_markdown()
    lines = out.splitlines()
    assert lines[0].startswith("| name |") and len(lines) == 2 + len(registry.ENTRIES)
    assert all(line.count(" | ") == 5 for line in lines[2:]), "six cells per row"


def test_check_scan_linear_passes_with_one_row_per_method(capsys):
    assert cli.main(["check", "--backend", "numpy", "scan.linear", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("scan.linear ")]
    assert [(r[1], r[2]) for r in rows] == [(m, "numpy") for m in linear.METHODS]
    assert all(r[-1] == "PASS" for r in rows), out
    assert float(rows[0][3]) < 1e-6  # the gradcheck column: a real number, small


def _broken_scan_module():
    """scan.linear with a backward whose gradient of b is 0.1 % too large."""
    def backward(cache, dh, dh_T=None):
        grads = linear.backward(cache, dh, dh_T)
        return {**grads, "b": grads["b"] * 1.001}
    return types.SimpleNamespace(forward=linear.forward, backward=backward,
                                 METHODS=("recurrent",), BACKENDS=("numpy",))


def test_check_fails_on_a_broken_entry(monkeypatch, capsys):
    good = registry.get("scan.linear")
    broken = dataclasses.replace(good, name="broken.scan", module_path="fake.broken")
    monkeypatch.setitem(sys.modules, "fake.broken", _broken_scan_module())
    monkeypatch.setitem(registry.ENTRIES, "broken.scan", broken)
    assert cli.main(["check", "broken.scan", "--dtype", "float64"]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("broken.scan "))
    assert row.split()[-1] == "FAIL" and "!" in row, row
    assert "0/1 passed" in out


def test_check_reports_a_crashing_entry_as_failed(monkeypatch, capsys):
    def forward(*args, **kwargs):
        raise RuntimeError("kaboom")
    mod = types.SimpleNamespace(forward=forward, backward=linear.backward,
                                METHODS=("recurrent",), BACKENDS=("numpy",))
    crashing = dataclasses.replace(registry.get("scan.linear"), name="crash",
                                   module_path="fake.crash")
    monkeypatch.setitem(sys.modules, "fake.crash", mod)
    monkeypatch.setitem(registry.ENTRIES, "crash", crashing)
    assert cli.main(["check", "crash"]) == 1
    assert "RuntimeError: kaboom" in capsys.readouterr().out


def test_check_unknown_name_exits_2_and_lists_the_names(capsys):
    assert cli.main(["check", "no_such_cell"]) == 2
    err = capsys.readouterr().err
    assert "no_such_cell" in err and "scan.linear" in err


def test_check_accepts_glob_patterns():
    names = [e.name for e in cli.select_entries(["scan.*"])]
    assert names and all(n.startswith("scan.") for n in names)
    assert "scan.linear" in names


def test_missing_backend_is_skipped_with_a_note(monkeypatch):
    from minirec import _backend

    def unavailable(backend, *, raise_error=False):
        if backend == "numpy":
            return True
        raise ImportError(f"{backend} is not installed")
    monkeypatch.setattr(_backend, "available", unavailable)
    entry = dataclasses.replace(registry.get("scan.linear"), name="two.backends",
                                module_path="fake.two")
    mod = types.SimpleNamespace(METHODS=("recurrent",), BACKENDS=("numpy", "numba"))
    monkeypatch.setitem(sys.modules, "fake.two", mod)
    tasks, notes = cli.plan_checks([entry])
    assert [(m, b) for _, m, b in tasks] == [("recurrent", "numpy")]
    assert len(notes) == 1 and "numba" in notes[0] and "not installed" in notes[0]


def test_plan_follows_backend_methods_and_the_backend_filter(monkeypatch):
    from minirec import _backend

    monkeypatch.setattr(_backend, "available", lambda backend, *, raise_error=False: True)
    entry = dataclasses.replace(registry.get("scan.linear"), name="kernel.entry",
                                module_path="fake.kernel")
    mod = types.SimpleNamespace(METHODS=("recurrent", "blelloch"), BACKENDS=("numpy", "numba"),
                                BACKEND_METHODS={"numba": ("recurrent",)})
    monkeypatch.setitem(sys.modules, "fake.kernel", mod)
    tasks, notes = cli.plan_checks([entry])
    assert [(m, b) for _, m, b in tasks] == [("recurrent", "numpy"), ("blelloch", "numpy"),
                                             ("recurrent", "numba")]
    tasks, _ = cli.plan_checks([entry], backends=["numba"])
    assert [(m, b) for _, m, b in tasks] == [("recurrent", "numba")]
    assert notes == []


def test_bad_arguments_exit_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--dtype", "float16"])
    assert exc.value.code == 2


def test_train_parity_returns_a_loss_history_and_saves_the_plot(tmp_path):
    result = cli.train_parity(seconds=60.0, max_steps=15, T=6, batch=8, hidden=8,
                              progress=False)
    assert result.steps == len(result.losses) == 15
    assert all(np.isfinite(result.losses))
    assert 0.0 <= result.accuracy <= 1.0 and 0.0 <= result.last_accuracy <= 1.0
    path = cli.save_loss_plot(result.losses, tmp_path / "sub" / "loss.png")
    assert path == (tmp_path / "sub" / "loss.png").resolve()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_the_cli_imports_neither_numba_nor_matplotlib():
    code = ("import sys, minirec.cli; "
            "print(sorted(m for m in ('numba', 'matplotlib', 'tqdm', 'cupy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
