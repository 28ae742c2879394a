"""The ``minirec`` command: ``list``, ``check``, ``tour``.

``minirec list``
    every registry entry (name, kind, methods, backends, dtypes, recurrence);
    ``--markdown`` prints the feature table that README.md and the docs show
    (:func:`feature_table_markdown`, the one function that writes it).
``minirec check [NAME ...]``
    for each entry × method × backend: the float64 gradient check
    (:func:`minirec.registry.gradcheck`, relative error < 1e-6) and the
    agreement with the float64 recurrent definition
    (:func:`minirec.registry.agreement`, relative RMS ≤ 1e-10 in float64,
    ≤ 1e-4 in float32); one row each with the worst error and PASS/FAIL.
    Exit status 1 when anything fails, 2 for an unknown NAME.
``minirec tour``
    ``check`` over everything with a progress bar, then a small LSTM trained
    on streaming parity for a few seconds (:func:`train_parity`), its loss
    curve saved as a PNG (:func:`save_loss_plot`).

Importing this module is cheap: Numba, tqdm and matplotlib are imported only
by the commands that use them.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minirec import registry

#: Agreement thresholds (relative RMS against the float64 recurrent definition),
#: by precision; complex128 counts as float64 and complex64 as float32.
AGREEMENT_TOL = {"float64": 1e-10, "float32": 1e-4}
#: Gradient-check threshold (relative error, float64), DESIGN §6.
GRADCHECK_TOL = 1e-6
PRECISIONS = ("float64", "float32")
_PRECISION_OF = {"float64": "float64", "complex128": "float64",
                 "float32": "float32", "complex64": "float32"}


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------

def _dtype_names(entry: registry.Entry) -> list[str]:
    return [np.dtype(d).name for d in entry.dtypes]


def _format_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(map(str, r)) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(header), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def list_table(entries: Iterable[registry.Entry] | None = None) -> str:
    """The registry as a plain-text table: name, kind, methods, backends, dtypes, summary."""
    entries = list(registry.ENTRIES.values()) if entries is None else list(entries)
    rows = [(e.name, e.kind, ", ".join(e.methods), ", ".join(e.backends),
             ", ".join(_dtype_names(e)), e.summary) for e in entries]
    return _format_table(("name", "kind", "methods", "backends", "dtypes", "summary"), rows)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def feature_table_markdown(entries: Iterable[registry.Entry] | None = None) -> str:
    """The feature table of README.md and the docs, generated from the registry.

    One row per registry entry: its name (what ``minirec check NAME`` takes),
    kind, the recurrence it computes, its methods (the first, ``recurrent``,
    is the definition), backends and dtypes. README.md holds this text between
    ``<!-- features:start -->`` and ``<!-- features:end -->``; a test fails when
    it is stale (regenerate with ``minirec list --markdown``).

    Args:
        entries: the entries to list; default every entry of
            :data:`minirec.registry.ENTRIES`, in registration order.

    Returns:
        A GitHub-flavoured Markdown table, without a trailing newline.
    """
    entries = list(registry.ENTRIES.values()) if entries is None else list(entries)
    lines = ["| name | kind | recurrence | methods | backends | dtypes |",
             "|---|---|---|---|---|---|"]
    for e in entries:
        cells = [f"`{e.name}`", e.kind, f"`{e.summary}`",
                 ", ".join(f"`{m}`" for m in e.methods),
                 ", ".join(e.backends), ", ".join(_dtype_names(e))]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------

@dataclass
class CheckRow:
    """The result of checking one entry × method × backend.

    Attributes:
        name: registry entry name.
        method: the method checked.
        backend: the backend checked.
        gradcheck: worst relative error of the float64 gradient check
            (``None`` if it raised).
        agreement: precision (``"float64"``/``"float32"``) → worst relative
            RMS difference from the float64 recurrent definition over the
            outputs, final state and every gradient.
        error: the exception text when a check raised (a failure).
    """

    name: str
    method: str
    backend: str
    gradcheck: float | None = None
    gradcheck_passed: bool = False
    agreement: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def passed(self) -> bool:
        """True when the gradient check and every agreement are within tolerance."""
        if self.error is not None or not self.gradcheck_passed:
            return False
        return all(v <= AGREEMENT_TOL[p] for p, v in self.agreement.items())


def select_entries(names: Sequence[str] | None) -> list[registry.Entry]:
    """Registry entries matching ``names`` (exact names or glob patterns like ``scan.*``).

    Args:
        names: names or patterns; empty or ``None`` selects every entry.

    Returns:
        The matching entries, in registry order, each once.

    Raises:
        ValueError: a name or pattern that matches no entry (the message lists
            the known names).
    """
    if not names:
        return list(registry.ENTRIES.values())
    chosen: list[str] = []
    for pat in names:
        hits = [n for n in registry.ENTRIES if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ValueError(f"unknown registry entry {pat!r}; known entries: "
                             f"{', '.join(registry.ENTRIES)}")
        chosen += [h for h in hits if h not in chosen]
    return [registry.ENTRIES[n] for n in registry.ENTRIES if n in chosen]


def plan_checks(entries: Sequence[registry.Entry], backends: Sequence[str] | None = None
                ) -> tuple[list[tuple[registry.Entry, str, str]], list[str]]:
    """The (entry, method, backend) triples to check, and notes on skipped backends.

    Each entry contributes its supported ``(method, backend)`` pairs
    (:attr:`minirec.registry.Entry.pairs`: NumPy runs every method, a kernel
    backend the methods it implements). A backend whose package is not
    installed (or CuPy without a GPU) is skipped, with a note saying so.

    Args:
        entries: registry entries.
        backends: restrict to these backends (default: every backend each
            entry declares).

    Returns:
        ``(tasks, notes)``.
    """
    from minirec import _backend

    usable: dict[str, bool] = {}
    notes: list[str] = []
    tasks = []
    for e in entries:
        for m, b in e.pairs:
            if backends and b not in backends:
                continue
            if b not in usable:
                try:
                    usable[b] = _backend.available(b, raise_error=True)
                except ImportError as exc:
                    usable[b] = False
                    notes.append(f"skipped backend {b!r}: {exc}")
            if usable[b]:
                tasks.append((e, m, b))
    return tasks, notes


def check_one(entry: registry.Entry, method: str, backend: str,
              precisions: Sequence[str] = PRECISIONS) -> CheckRow:
    """Gradient check and agreement of one entry × method × backend.

    Args:
        entry: the registry entry.
        method: one of ``entry.methods``.
        backend: one of ``entry.backends``.
        precisions: which of ``"float64"``, ``"float32"`` to test agreement in
            (each with every dtype of the entry of that precision).

    Returns:
        A :class:`CheckRow`; an exception in a check is caught and recorded as
        a failure.
    """
    row = CheckRow(entry.name, method, backend)
    try:
        report = registry.gradcheck(entry, method, backend)
        row.gradcheck = max(report.errors.values(), default=float("nan"))
        row.gradcheck_passed = report.passed and bool(report.errors)
        if report.missing:
            row.error = f"backward did not return {report.missing}"
        for dt in entry.dtypes:
            prec = _PRECISION_OF[np.dtype(dt).name]
            if prec not in precisions:
                continue
            errs = registry.agreement(entry, method, backend, dtype=dt)
            worst = max(errs.values(), default=0.0)
            if not np.isfinite(worst):
                worst = float("inf")
            row.agreement[prec] = max(row.agreement.get(prec, 0.0), worst)
    except Exception as exc:  # a crash is a failed check, reported in the row
        row.error = f"{type(exc).__name__}: {exc}"
    return row


def _fmt(v: float | None, ok: bool) -> str:
    if v is None:
        return "-"
    return f"{v:.1e}" + ("" if ok else " !")


def _row_cells(row: CheckRow, precisions: Sequence[str]) -> list[str]:
    cells = [row.name, row.method, row.backend,
             _fmt(row.gradcheck, row.gradcheck_passed)]
    for p in precisions:
        v = row.agreement.get(p)
        cells.append(_fmt(v, v is None or v <= AGREEMENT_TOL[p]))
    cells.append("PASS" if row.passed else "FAIL")
    return cells


def check_header(precisions: Sequence[str] = PRECISIONS) -> list[str]:
    """Column titles of the ``check`` table."""
    return (["name", "method", "backend", "gradcheck"]
            + [f"vs def {p}" for p in precisions] + ["result"])


def check_table(rows: Sequence[CheckRow], precisions: Sequence[str] = PRECISIONS) -> str:
    """The ``check`` results as a plain-text table, failures' messages below it."""
    text = _format_table(check_header(precisions), [_row_cells(r, precisions) for r in rows])
    errors = [f"  {r.name} {r.method}/{r.backend}: {r.error}" for r in rows if r.error]
    if errors:
        text += "\nerrors:\n" + "\n".join(errors)
    return text


def _legend(precisions: Sequence[str]) -> str:
    tols = ", ".join(f"{p} ≤ {AGREEMENT_TOL[p]:.0e}" for p in precisions)
    return (f"gradcheck: worst float64 relative error (< {GRADCHECK_TOL:.0e}); "
            f"vs def: worst relative RMS from the float64 recurrent definition ({tols}); "
            "'!' marks a value over its threshold")


def run_checks(tasks: Sequence[tuple[registry.Entry, str, str]],
               precisions: Sequence[str] = PRECISIONS, *, progress: bool = False,
               on_row: Callable[[CheckRow], None] | None = None) -> list[CheckRow]:
    """Run :func:`check_one` over ``tasks``.

    Args:
        tasks: (entry, method, backend) triples, e.g. from :func:`plan_checks`.
        precisions: see :func:`check_one`.
        progress: show a tqdm progress bar.
        on_row: called with each row as soon as it is done.

    Returns:
        One :class:`CheckRow` per task, in order.
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(tasks), desc="check", unit="check", file=sys.stdout)
    rows = []
    for e, m, b in tasks:
        if bar is not None:
            bar.set_postfix_str(f"{e.name} {m}/{b}", refresh=False)
        rows.append(check_one(e, m, b, precisions))
        if on_row is not None:
            on_row(rows[-1])
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return rows


def _precisions(choice: str) -> tuple[str, ...]:
    return PRECISIONS if choice == "all" else (choice,)


def _cmd_list(args: argparse.Namespace) -> int:
    print(feature_table_markdown() if args.markdown else list_table())
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        entries = select_entries(args.names)
    except ValueError as exc:
        print(f"minirec check: {exc}", file=sys.stderr)
        return 2
    precisions = _precisions(args.dtype)
    tasks, notes = plan_checks(entries, args.backend)
    for n in notes:
        print(n)
    if not tasks:
        print("nothing to check")
        return 0
    header = check_header(precisions)
    widths = [max(len(h), 10) for h in header]
    widths[0] = max([len(header[0])] + [len(e.name) for e, _, _ in tasks])
    widths[1] = max([len(header[1])] + [len(m) for _, m, _ in tasks])
    widths[2] = max([len(header[2])] + [len(b) for _, _, b in tasks])
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    print(line(header))
    print(line(["-" * w for w in widths]), flush=True)
    rows = run_checks(tasks, precisions,
                      on_row=lambda r: print(line(_row_cells(r, precisions)), flush=True))
    failed = [r for r in rows if not r.passed]
    for r in failed:
        if r.error:
            print(f"error: {r.name} {r.method}/{r.backend}: {r.error}")
    print(_legend(precisions))
    print(f"{len(rows) - len(failed)}/{len(rows)} passed" + (f", {len(failed)} FAILED"
                                                            if failed else ""))
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# tour: train a small LSTM on streaming parity
# ---------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What :func:`train_parity` returns.

    Attributes:
        losses: training loss (mean cross-entropy per position) at every step.
        accuracy: accuracy over every position of held-out sequences.
        last_accuracy: accuracy at the last position only (the parity of the
            whole sequence, the hardest target).
        steps: optimisation steps taken.
        seconds: wall-clock time spent training.
    """

    losses: list[float]
    accuracy: float
    last_accuracy: float
    steps: int
    seconds: float


def _split(flat: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) + 1:]: v for k, v in flat.items() if k.startswith(prefix + ".")}


def _parity_model(params: dict[str, np.ndarray], x: np.ndarray):
    """Logits (B, T, 2) of the LSTM + linear read-out, and what backward needs."""
    from minirec.cells import lstm
    from minirec.nn import linear

    y, _, lstm_cache = lstm.forward(_split(params, "lstm"), x)
    logits, lin_cache = linear.forward(_split(params, "out"), y)
    return logits, (lstm_cache, lin_cache)


def train_parity(*, seconds: float = 8.0, max_steps: int = 3000, T: int = 16,
                 batch: int = 32, hidden: int = 16, lr: float = 1e-2, clip: float = 1.0,
                 target_loss: float | None = 0.01, seed: int = 0,
                 progress: bool = True) -> TrainResult:
    """Train an LSTM with a linear read-out on streaming parity.

    The input is a bit stream ``x (B, T, 1)``; the target at step ``t`` is the
    parity of ``x_0 … x_t`` (:func:`minirec.tasks.parity`), so the network has
    to flip a bit of memory at every 1 it reads. The model is
    ``logits_t = W · LSTM(x)_t + b`` (:mod:`minirec.cells.lstm`,
    :mod:`minirec.nn.linear`), trained with softmax cross-entropy averaged over
    every position, Adam, and gradient clipping by global norm.

    Args:
        seconds: stop after this much wall-clock time ...
        max_steps: ... or after this many steps ...
        target_loss: ... or once the mean loss of the last 20 steps is below
            this (``None``: never), whichever comes first.
        T: sequence length.
        batch: sequences per step (a fresh batch each step).
        hidden: LSTM hidden size.
        lr: Adam learning rate.
        clip: maximum global gradient norm.
        seed: seeds the initial parameters and the data.
        progress: show a tqdm progress bar with the current loss.

    Returns:
        A :class:`TrainResult` with the loss history and the held-out accuracy.
    """
    from minirec import tasks
    from minirec.cells import lstm
    from minirec.nn import linear, loss, optim

    rng = np.random.default_rng(seed)
    params = {f"lstm.{k}": v for k, v in lstm.init_params(rng, 1, hidden).items()}
    params.update({f"out.{k}": v for k, v in linear.init(rng, hidden, 2).items()})
    state = optim.adam_init(params)

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=max_steps, desc="train LSTM on parity", unit="step", file=sys.stdout)
    losses: list[float] = []
    start = time.perf_counter()
    while len(losses) < max_steps and (not losses or time.perf_counter() - start < seconds):
        x, y = tasks.parity(rng, batch, T)
        x = np.asarray(x, dtype=np.float64)
        logits, (lstm_cache, lin_cache) = _parity_model(params, x)
        value, dlogits = loss.softmax_cross_entropy(logits, y)
        dy, g_out = linear.backward(_split(params, "out"), lin_cache, dlogits)
        g_lstm = lstm.backward(_split(params, "lstm"), lstm_cache, dy)
        grads = {f"lstm.{k}": g_lstm[k] for k in _split(params, "lstm")}
        grads.update({f"out.{k}": g_out[k] for k in _split(params, "out")})
        grads, _ = optim.clip_by_global_norm(grads, clip)
        params, state = optim.adam_update(params, grads, state, lr=lr)
        losses.append(float(value))
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        if target_loss is not None and len(losses) >= 20 and np.mean(losses[-20:]) < target_loss:
            break
    elapsed = time.perf_counter() - start
    if bar is not None:
        bar.close()

    x, y = tasks.parity(np.random.default_rng(seed + 1), 512, T)
    logits, _ = _parity_model(params, np.asarray(x, dtype=np.float64))
    pred = np.argmax(logits, axis=-1)
    return TrainResult(losses=losses, accuracy=float(np.mean(pred == y)),
                       last_accuracy=float(np.mean(pred[:, -1] == y[:, -1])),
                       steps=len(losses), seconds=elapsed)


def save_loss_plot(losses: Sequence[float], path: str | Path, *,
                   title: str = "LSTM on streaming parity") -> Path:
    """Save the loss curve as a PNG (matplotlib's Agg canvas; no window opens).

    Args:
        losses: loss per training step.
        path: where to write the PNG; parent folders are created.
        title: the plot's title.

    Returns:
        The absolute path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=1, alpha=0.5, label="loss per step")
    if len(losses) >= 10:
        k = max(1, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=2, label=f"mean of {k} steps")
    ax.axhline(np.log(2), color="gray", ls="--", lw=1, label="chance (ln 2)")
    ax.set(xlabel="step", ylabel="cross-entropy (nats)", title=title)
    ax.legend()
    fig.savefig(path, dpi=100)
    return path


def _cmd_tour(args: argparse.Namespace) -> int:
    print("minirec tour, 1/2: checking every registry entry (gradients in float64, "
          "every method and backend against the recurrent definition)")
    tasks, notes = plan_checks(select_entries(None))
    for n in notes:
        print(n)
    rows = run_checks(tasks, PRECISIONS, progress=True)
    print(check_table(rows, PRECISIONS))
    print(_legend(PRECISIONS))
    failed = [r for r in rows if not r.passed]
    print(f"{len(rows) - len(failed)}/{len(rows)} checks passed"
          + (f", {len(failed)} FAILED" if failed else ""))

    print(f"\nminirec tour, 2/2: training an LSTM (hidden {args.hidden}) on streaming parity, "
          f"T = {args.T}, for up to {args.seconds:g} s or {args.steps} steps "
          "(stopping early once the loss is below 0.01)")
    result = train_parity(seconds=args.seconds, max_steps=args.steps, T=args.T,
                          hidden=args.hidden, seed=args.seed)
    print(f"{result.steps} steps in {result.seconds:.1f} s; loss {result.losses[0]:.3f} → "
          f"{np.mean(result.losses[-10:]):.3f} (chance: ln 2 = {np.log(2):.3f})")
    print(f"held-out accuracy: {result.accuracy:.3f} over all positions, "
          f"{result.last_accuracy:.3f} at the last one (chance: 0.5)")
    path = save_loss_plot(result.losses, args.out)
    print(f"loss curve saved to {path}")
    if failed:
        print(f"{len(failed)} check(s) FAILED; see the table above", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``minirec`` argument parser (sub-commands ``list``, ``check``, ``tour``, ``bench``)."""
    from minirec import __version__

    p = argparse.ArgumentParser(
        prog="minirec",
        description="minirec: recurrent networks with hand-derived backward passes, "
                    "parallel scans and kernels, each checked against its definition.")
    p.add_argument("--version", action="version", version=f"minirec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pl = sub.add_parser("list", help="list every scan, cell and op in the registry")
    pl.add_argument("--markdown", action="store_true",
                    help="print the README/docs feature table (Markdown)")
    pl.set_defaults(func=_cmd_list)

    pc = sub.add_parser(
        "check", help="gradient-check entries and compare every method/backend "
                      "with the recurrent definition",
        description="For each entry × method × backend: the float64 gradient check "
                    f"(relative error < {GRADCHECK_TOL:.0e}) and the agreement with the "
                    "float64 recurrent definition (relative RMS ≤ 1e-10 in float64, "
                    "≤ 1e-4 in float32). Exit status 1 if anything fails.")
    pc.add_argument("names", nargs="*", metavar="NAME",
                    help="registry entries (see `minirec list`) or glob patterns such as "
                         "'scan.*'; default: all")
    pc.add_argument("--dtype", choices=("float64", "float32", "all"), default="all",
                    help="precision of the agreement checks (complex128/complex64 count as "
                         "float64/float32); default: all")
    pc.add_argument("--backend", action="append", choices=("numpy", "numba", "cupy"),
                    help="only this backend (repeat for several; default: every backend, "
                         "skipping those whose package is missing)")
    pc.set_defaults(func=_cmd_check)

    pt = sub.add_parser("tour", help="check everything, then train a small LSTM on parity "
                                     "and save its loss curve")
    pt.add_argument("--seconds", type=float, default=8.0,
                    help="training time budget in seconds (default 8)")
    pt.add_argument("--steps", type=int, default=3000,
                    help="training step budget (default 3000); stops at whichever comes first")
    pt.add_argument("--T", type=int, default=16, help="sequence length (default 16)")
    pt.add_argument("--hidden", type=int, default=16, help="LSTM hidden size (default 16)")
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--out", default="minirec_tour_loss.png",
                    help="where to save the loss curve (default ./minirec_tour_loss.png)")
    pt.set_defaults(func=_cmd_tour)

    # `minirec bench ...` is handed to minirec.bench.main before parsing (its own
    # options); this entry is here so that `minirec --help` lists it
    sub.add_parser("bench", help="time every entry × method × backend against this "
                                 "machine's limits; writes benchmarks/RESULTS.md "
                                 "(see `minirec bench --help`)", add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``minirec`` command line.

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 a check failed, 2 a usage error
        (argparse's own usage errors exit 2 through ``SystemExit``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from minirec import bench
        return bench.main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
