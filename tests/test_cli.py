"""The `minirec` command: list, check (passes, fails, unknown names, backends that
cannot run), argument validation and help, tour and its training demo."""

import argparse
import dataclasses
import inspect
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from minirec import _backend, bench, cli, demo, registry
from minirec.scan import linear


def test_list_prints_every_entry(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["name", "kind", "methods", "backends:", "methods",
                                           "run", "dtypes"]
    for name, entry in registry.ENTRIES.items():
        row = next(line for line in out.splitlines() if line.split()[:1] == [name])
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


def _no_backend(name):
    """A stand-in for `_backend.available` under which `name` is not installed."""
    real = _backend.available

    def available(backend, *, raise_error=False):
        if backend != name:
            return real(backend, raise_error=raise_error)
        if raise_error:
            raise ImportError(f"{name} is not installed")
        return False
    return available


def test_check_with_a_backend_no_entry_has_or_that_is_missing_exits_2(monkeypatch, capsys):
    """`minirec check rnn --backend cupy` on a machine without CuPy used to print
    "nothing to check" and exit 0: a check the user asked for that cannot run."""
    monkeypatch.setattr(_backend, "available", _no_backend("cupy"))
    assert cli.main(["check", "rnn", "--backend", "cupy"]) == 2
    captured = capsys.readouterr()
    assert "'cupy'" in captured.err, captured.err
    assert "passed" not in captured.out and "nothing to check" not in captured.out


def test_check_with_a_requested_backend_that_is_not_installed_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(_backend, "available", _no_backend("numba"))
    assert cli.main(["check", "scan.linear", "--backend", "numpy", "--backend", "numba"]) == 2
    captured = capsys.readouterr()
    assert "'numba' cannot run here" in captured.err and "not installed" in captured.err
    assert "passed" not in captured.out  # nothing ran: no partial success reported


def test_check_with_a_backend_no_selected_entry_has_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(_backend, "available", lambda backend, *, raise_error=False: True)
    entry = dataclasses.replace(registry.get("scan.linear"), name="numpy.only",
                                module_path="fake.numpy_only")
    monkeypatch.setitem(sys.modules, "fake.numpy_only", types.SimpleNamespace(
        METHODS=("recurrent",), BACKENDS=("numpy",)))
    monkeypatch.setitem(registry.ENTRIES, "numpy.only", entry)
    assert cli.main(["check", "numpy.only", "--backend", "numba"]) == 2
    err = capsys.readouterr().err
    assert "expected one of the selected entries' backends ('numpy',), got 'numba'" in err


def test_check_where_every_backend_is_skipped_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(_backend, "available", _no_backend("numba"))
    entry = dataclasses.replace(registry.get("scan.linear"), name="numba.only",
                                module_path="fake.numba_only")
    monkeypatch.setitem(sys.modules, "fake.numba_only", types.SimpleNamespace(
        METHODS=("recurrent",), BACKENDS=("numba",)))
    monkeypatch.setitem(registry.ENTRIES, "numba.only", entry)
    assert cli.main(["check", "numba.only"]) == 2
    captured = capsys.readouterr()
    assert "skipped backend 'numba'" in captured.out
    assert "nothing can be checked" in captured.err


def test_check_over_an_available_requested_backend_still_runs(capsys):
    assert cli.main(["check", "scan.linear", "--backend", "numpy", "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert f"{len(linear.METHODS)}/{len(linear.METHODS)} passed" in out


def test_backend_choices_come_from_the_backend_module(monkeypatch):
    monkeypatch.setattr(_backend, "BACKENDS", _backend.BACKENDS + ("future",))
    args = cli.build_parser().parse_args(["check", "--backend", "future"])
    assert args.backend == ["future"]


@pytest.mark.parametrize("argv, message", [
    (["check", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["check", "--backend", "gpu"], "argument --backend: invalid choice: 'gpu'"),
    (["tour", "--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
    (["tour", "--steps", "2.5"], "argument --steps: expected a positive integer, got '2.5'"),
    (["tour", "--T", "-3"], "argument --T: expected a positive integer, got '-3'"),
    (["tour", "--hidden", "x"], "argument --hidden: expected a positive integer, got 'x'"),
    (["tour", "--seed", "-1"], "argument --seed: expected an integer ≥ 0, got '-1'"),
    (["tour", "--seconds", "0"], "argument --seconds: expected a finite number > 0, got '0'"),
    (["tour", "--seconds", "nan"], "argument --seconds: expected a finite number > 0"),
    (["tour", "--seconds", "inf"], "argument --seconds: expected a finite number > 0"),
    (["tour", "--out", "."], "argument --out: expected a file path, got '.' (a folder)"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _parsers():
    """(title, parser) for `minirec`, each of its sub-commands and `minirec bench`."""
    root = cli.build_parser()
    yield "minirec", root
    for action in root._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, parser in action.choices.items():
                yield f"minirec {name}", parser
    yield "minirec bench (own parser)", bench.build_parser()


def test_every_option_states_its_default():
    seen = 0
    for title, parser in _parsers():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                   argparse._SubParsersAction)):
                continue
            seen += 1
            assert action.help and "default" in action.help, (title, action.dest)
    assert seen >= 15  # list 1, check 3, tour 6, bench 9


def test_nothing_a_user_sees_mentions_the_issue_tracker():
    tracker = re.compile(r"\bissues?\s*(\d+|N)\b|targets of issue", re.IGNORECASE)
    for title, parser in _parsers():
        assert not tracker.search(parser.format_help()), title
    for module in (cli, bench, demo):
        found = tracker.findall(inspect.getsource(module))
        assert not found, (module.__name__, found)


def test_train_parity_returns_a_loss_history_and_saves_the_plot(tmp_path):
    result = demo.train_parity(seconds=60.0, max_steps=15, T=6, batch=8, hidden=8,
                               progress=False)
    assert result.steps == len(result.losses) == 15
    assert all(np.isfinite(result.losses))
    assert 0.0 <= result.accuracy <= 1.0 and 0.0 <= result.last_accuracy <= 1.0
    path = demo.save_loss_plot(result.losses, tmp_path / "sub" / "loss.png")
    assert path == (tmp_path / "sub" / "loss.png").resolve()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("arg", ["max_steps", "T", "batch", "hidden"])
def test_train_parity_rejects_a_non_positive_size(arg):
    with pytest.raises(ValueError, match=f"{arg}: expected a positive integer, got 0"):
        demo.train_parity(**{arg: 0}, progress=False)


def test_the_cli_holds_no_training_code():
    """The training demo lives in minirec.demo; the CLI only parses and prints."""
    for name in ("train_parity", "save_loss_plot", "_parity_model", "_split", "TrainResult"):
        assert not hasattr(cli, name), name


def _only_scan_linear(monkeypatch):
    monkeypatch.setattr(registry, "ENTRIES", {"scan.linear": registry.get("scan.linear")})


def test_tour_checks_then_trains_and_saves_the_loss_curve(monkeypatch, capsys, tmp_path):
    _only_scan_linear(monkeypatch)  # a full check of every entry takes minutes
    out = tmp_path / "plots" / "loss.png"
    rc = cli.main(["tour", "--seconds", "60", "--steps", "4", "--T", "4", "--hidden", "4",
                   "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    tasks = cli.plan_checks([registry.get("scan.linear")])[0]
    n = len(cli.tour_plan(tasks)[0])  # the tour leaves the emulator and most numba out
    assert n >= 5 and f"{n}/{n} checks passed" in text
    if any(t[2] == "cuda-emulated" for t in tasks):
        assert "not in the tour: 2 cuda-emulated checks" in text
        assert "cuda-emulated" not in text.split("not in the tour")[1].split("\n", 1)[1]
    assert "4 steps in" in text and f"loss curve saved to {out.resolve()}" in text
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_importing_the_cli_imports_neither_numba_nor_matplotlib():
    code = ("import sys, minirec.cli; "
            "print(sorted(m for m in ('numba', 'matplotlib', 'tqdm', 'cupy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_tour_checks_every_entry_on_numpy_and_a_numba_kernel_of_each_kind():
    tasks = cli.plan_checks(cli.select_entries(None))[0]
    kept, notes = cli.tour_plan(tasks)
    numpy_pairs = {(e.name, m) for e, m, b in tasks if b == "numpy"}
    assert numpy_pairs == {(e.name, m) for e, m, b in kept if b == "numpy"}
    numba = {(e.name, m) for e, m, b in kept if b == "numba"}
    if any(b == "numba" for _, _, b in tasks):
        assert numba == {(n, m) for n, ms in cli.TOUR_NUMBA.items() for m in ms}
        assert any("minirec check --backend numba" in n for n in notes)
    assert not any(b == "cuda-emulated" for _, _, b in kept)
