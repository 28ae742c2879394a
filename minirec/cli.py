"""The ``minirec`` command: ``list``, ``check``, ``tour``, ``train``, ``bench``.

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
    Exit status 1 when anything fails; 2 for an unknown NAME, or a
    ``--backend`` that cannot run here or that no selected entry has.
``minirec tour``
    ``check`` over everything with a progress bar, then a small LSTM trained
    on streaming parity for a few seconds, its loss curve saved as a PNG
    (:func:`minirec.demo.train_parity`, :func:`minirec.demo.save_loss_plot`).
``minirec train``
    a character language model (LSTM or minGRU) trained with truncated BPTT
    on CPython's help texts, with a progress bar; prints the held-out
    perplexity and a sample (:func:`minirec.lm.train`).
``minirec bench``
    the benchmarks (:mod:`minirec.bench`, which parses its own options).

This module only parses arguments and prints; the work is done by
:mod:`minirec.registry`, :mod:`minirec.demo`, :mod:`minirec.lm` and :mod:`minirec.bench`.
Bad arguments are rejected by the parser (a message naming the option, and
exit status 2) before anything runs.

Importing this module is cheap: Numba, tqdm and matplotlib are imported only
by the commands that use them.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minirec import _backend, registry
from minirec import _validate as V

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


def _backend_groups(entry: registry.Entry) -> list[tuple[list[str], list[str] | None]]:
    """``entry``'s backends grouped by the methods they run, from :attr:`registry.Entry.pairs`.

    Returns:
        ``[(backends, methods), ...]`` in the order of ``entry.backends``;
        ``methods`` is ``None`` where the backends run every method of the entry.
    """
    runs: dict[str, list[str]] = {b: [] for b in entry.backends}
    for m, b in entry.pairs:
        runs[b].append(m)
    groups: dict[tuple[str, ...], list[str]] = {}
    for b, ms in runs.items():
        if ms:
            groups.setdefault(tuple(ms), []).append(b)
    every = tuple(entry.methods)
    return [(bs, None if ms == every else list(ms)) for ms, bs in groups.items()]


def _backends_text(entry: registry.Entry, code: Callable[[str], str] = str) -> list[str]:
    """One ``"numba, cupy: recurrent, chunked"`` string per group of :func:`_backend_groups`."""
    return [f"{', '.join(code(b) for b in bs)}: "
            + ("all" if ms is None else ", ".join(code(m) for m in ms))
            for bs, ms in _backend_groups(entry)]


#: Column widths of ``minirec list``'s wrapped columns (methods, backends, dtypes),
#: chosen so that the table fits 100 columns with the longest names.
_LIST_WRAP = (26, 27, 17)


def list_table(entries: Iterable[registry.Entry] | None = None, *, wide: bool = False,
               width: int = 100) -> str:
    """The registry as a plain-text table (``minirec list``).

    Columns: name, kind, methods (the first, ``recurrent``, is the definition),
    the methods each backend runs (``numpy: all``; backends that run the same
    methods share a line, from :attr:`minirec.registry.Entry.pairs`) and dtypes;
    under each row, the recurrence the entry computes.

    Args:
        entries: the entries to list (default: every registry entry).
        wide: one line per entry, nothing wrapped, the recurrence in a last
            column (about 200 characters wide).
        width: the most characters a line may have when not ``wide``.

    Returns:
        The table, without a trailing newline.
    """
    import textwrap

    entries = list(registry.ENTRIES.values()) if entries is None else list(entries)
    if wide:
        rows = [(e.name, e.kind, ", ".join(e.methods), "; ".join(_backends_text(e)),
                 ", ".join(_dtype_names(e)), e.summary) for e in entries]
        return _format_table(("name", "kind", "methods", "backends: methods run", "dtypes",
                              "recurrence"), rows)

    header = ("name", "kind", "methods", "backends: methods run", "dtypes")
    w_name = max([len(header[0])] + [len(e.name) for e in entries])
    w_kind = max([len(header[1])] + [len(e.kind) for e in entries])
    budget = width - w_name - w_kind - 2 * (len(header) - 1)
    caps = list(_LIST_WRAP)
    scale = min(1.0, budget / sum(caps))
    caps = [max(12, int(c * scale)) for c in caps]

    def wrap(text: str, w: int) -> list[str]:
        return textwrap.wrap(text, w, break_long_words=False, break_on_hyphens=False) or [""]

    cells_of = []
    for e in entries:
        backends = [ln for group in _backends_text(e)
                    for ln in textwrap.wrap(group, caps[1], subsequent_indent="  ",
                                            break_long_words=False, break_on_hyphens=False)]
        cells_of.append([[e.name], [e.kind], wrap(", ".join(e.methods), caps[0]), backends,
                         wrap(", ".join(_dtype_names(e)), caps[2])])
    widths = [max([len(h)] + [len(ln) for cells in cells_of for ln in cells[i]])
              for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    out = [line(header), line(["-" * w for w in widths])]
    indent = " " * (widths[0] + 2)
    for e, cells in zip(entries, cells_of):
        height = max(len(c) for c in cells)
        for k in range(height):
            out.append(line([c[k] if k < len(c) else "" for c in cells]))
        out += textwrap.wrap(e.summary, width, initial_indent=indent,
                             subsequent_indent=indent + "  ", break_long_words=False)
    out += textwrap.wrap("Under each row: the recurrence it computes. 'all': the backend "
                         "runs every method of the entry. `minirec list --wide`: one line "
                         "per entry.", width)
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def feature_table_markdown(entries: Iterable[registry.Entry] | None = None) -> str:
    """The feature table of README.md and the docs, generated from the registry.

    One row per registry entry: its name (what ``minirec check NAME`` takes),
    kind, the recurrence it computes, its methods (the first, ``recurrent``,
    is the definition), which of them each backend runs (from
    :attr:`minirec.registry.Entry.pairs`: ``all``, or the list; backends that
    run the same methods share a line) and dtypes. README.md holds this text
    between ``<!-- features:start -->`` and ``<!-- features:end -->``; a test
    fails when it is stale (regenerate with ``minirec list --markdown``).

    Args:
        entries: the entries to list; default every entry of
            :data:`minirec.registry.ENTRIES`, in registration order.

    Returns:
        A GitHub-flavoured Markdown table, without a trailing newline. A ``|``
        inside a cell is written ``\\|`` (GitHub's escape, also inside code).
    """
    entries = list(registry.ENTRIES.values()) if entries is None else list(entries)
    lines = ["| name | kind | recurrence | methods | backends: methods they run | dtypes |",
             "|---|---|---|---|---|---|"]
    for e in entries:
        cells = [f"`{e.name}`", e.kind, f"`{e.summary}`",
                 ", ".join(f"`{m}`" for m in e.methods),
                 "<br>".join(_backends_text(e, code=lambda m: f"`{m}`")),
                 ", ".join(_dtype_names(e))]
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
            raise ValueError(f"NAME: expected a registry entry or a glob pattern matching "
                             f"one (see `minirec list`: {', '.join(registry.ENTRIES)}), "
                             f"got {pat!r}")
        chosen += [h for h in hits if h not in chosen]
    return [registry.ENTRIES[n] for n in registry.ENTRIES if n in chosen]


def plan_checks(entries: Sequence[registry.Entry], backends: Sequence[str] | None = None
                ) -> tuple[list[tuple[registry.Entry, str, str]], list[str]]:
    """The (entry, method, backend) triples to check, and notes on skipped backends.

    Each entry contributes its supported ``(method, backend)`` pairs
    (:attr:`minirec.registry.Entry.pairs`: NumPy runs every method, a kernel
    backend the methods it implements). Without ``backends``, a backend whose
    package is not installed (or CuPy without a GPU) is skipped, with a note
    saying so. A backend the caller names in ``backends`` is never skipped
    silently: it must be known, declared by at least one of ``entries`` and
    usable here.

    Args:
        entries: registry entries.
        backends: restrict to these backends (default: every backend each
            entry declares).

    Returns:
        ``(tasks, notes)``.

    Raises:
        ValueError: a requested backend is unknown, no entry has it, or its
            package (or device) is missing; the message says which and why.
    """
    usable: dict[str, bool] = {}
    notes: list[str] = []

    def probe(b: str) -> str | None:  # None when usable, else the reason
        try:
            usable[b] = _backend.available(b, raise_error=True)
        except ImportError as exc:
            usable[b] = False
            return str(exc)
        return None if usable[b] else f"backend={b!r} is not available"

    for b in dict.fromkeys(backends or ()):
        if b not in _backend.BACKENDS:
            raise ValueError(f"backend: expected one of {_backend.BACKENDS}, got {b!r}")
        if not any(b in e.backends for e in entries):
            have = tuple(dict.fromkeys(x for e in entries for x in e.backends))
            raise ValueError(f"backend: expected one of the selected entries' backends "
                             f"{have}, got {b!r}")
        reason = probe(b)
        if reason is not None:
            raise ValueError(f"backend {b!r} cannot run here: {reason}")
    tasks = []
    for e in entries:
        for m, b in e.pairs:
            if backends and b not in backends:
                continue
            if b not in usable:
                reason = probe(b)
                if reason is not None:
                    notes.append(f"skipped backend {b!r}: {reason}")
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
    print(feature_table_markdown() if args.markdown else list_table(wide=args.wide))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        entries = select_entries(args.names)
    except ValueError as exc:
        print(f"minirec check: {exc}", file=sys.stderr)
        return 2
    precisions = _precisions(args.dtype)
    try:
        tasks, notes = plan_checks(entries, args.backend)
    except ValueError as exc:
        print(f"minirec check: {exc}", file=sys.stderr)
        return 2
    for n in notes:
        print(n)
    if not tasks:  # every backend of every selected entry is missing: not a success
        print("minirec check: nothing can be checked here (every backend of the selected "
              "entries was skipped, see above)", file=sys.stderr)
        return 2
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
# tour: check everything, then the training demo of minirec.demo
# ---------------------------------------------------------------------------

# The numba kernels the tour compiles and checks, one per kernel family that its
# users meet first (compiling every numba kernel from an empty cache takes minutes
# on 2 cores; `minirec check --backend numba` checks them all)
# (the LSTM's kernels took 27 s to compile cold, the RNN's, the same mechanisms
# with one gate, 12 s; the chunked scan 6 s more: the tour would pass a minute;
# the diagonal cell is the LRU since minGRU's kernel, one for minGRU, minLSTM and
# HGRN, grew with its vectorised gate loops: cold tour 70 s with it, 54 s with the LRU)
TOUR_NUMBA = {"scan.linear": ("recurrent",), "rnn": ("recurrent",), "lru": ("recurrent",)}


def tour_plan(tasks: Sequence[tuple[registry.Entry, str, str]]
              ) -> tuple[list[tuple[registry.Entry, str, str]], list[str]]:
    """The tour's share of ``tasks``: every NumPy check, the numba checks of
    :data:`TOUR_NUMBA`, and the CuPy checks; notes saying what is left out and
    which command checks it."""
    kept, numba_left, emulated = [], 0, 0
    for t in tasks:
        e, m, b = t
        if b == "cuda-emulated":
            emulated += 1
        elif b == "numba" and m not in TOUR_NUMBA.get(e.name, ()):
            numba_left += 1
        else:
            kept.append(t)
    notes = []
    if numba_left:
        notes.append(f"not in the tour: {numba_left} more numba checks (every entry and method "
                     "compiled takes minutes the first time; run them with: minirec check "
                     "--backend numba)")
    # cuda-emulated runs CUDA C on the CPU, one thread per CUDA thread: for tests,
    # teaching and debugging, and building it first takes minutes
    if emulated:
        notes.append(f"not in the tour: {emulated} cuda-emulated checks (CUDA C run on "
                     "the CPU, slow; run them with: minirec check --backend cuda-emulated)")
    return kept, notes


def _cmd_tour(args: argparse.Namespace) -> int:
    print("minirec tour, 1/2: checking every registry entry (gradients in float64, every "
          "method against the recurrent definition; on NumPy, and a kernel of each kind "
          "on numba)")
    tasks, notes = plan_checks(select_entries(None))
    tasks, more = tour_plan(tasks)
    notes += more
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
    from minirec import demo

    result = demo.train_parity(seconds=args.seconds, max_steps=args.steps, T=args.T,
                               hidden=args.hidden, seed=args.seed)
    print(f"{result.steps} steps in {result.seconds:.1f} s; loss {result.losses[0]:.3f} → "
          f"{np.mean(result.losses[-10:]):.3f} (chance: ln 2 = {np.log(2):.3f})")
    print(f"held-out accuracy: {result.accuracy:.3f} over all positions, "
          f"{result.last_accuracy:.3f} at the last one (chance: 0.5)")
    path = demo.save_loss_plot(result.losses, args.out)
    print(f"loss curve saved to {path}")
    if failed:
        print(f"{len(failed)} check(s) FAILED; see the table above", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------
# train: a character language model (minirec.lm)
# ---------------------------------------------------------------------------

def _text_file_arg(text: str) -> Path:
    """An option's text as an existing file to read a corpus from."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"expected an existing text file, got {text!r}"
                                         + (" (a folder)" if path.is_dir() else ""))
    return path


def _fraction_arg(text: str) -> float:
    """An option's text as a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _cmd_train(args: argparse.Namespace) -> int:
    from minirec import lm, tasks

    try:
        if args.text is None:
            source, text = "CPython's help texts (pydoc_data.topics)", None
        else:
            source, text = str(args.text), args.text.read_text(encoding="utf-8")
        corpus = tasks.char_corpus(text, valid_fraction=args.valid_fraction)
    except (ValueError, TypeError, OSError, ModuleNotFoundError) as exc:
        print(f"minirec train: {exc}", file=sys.stderr)
        return 2
    n_train, n_valid = len(corpus.train), len(corpus.valid)
    print(f"corpus: {source}, {n_train + n_valid} characters ({n_train} for training, "
          f"{n_valid} held out), vocabulary of {corpus.vocab_size} characters")
    print(f"model: {args.layers} × {args.cell} (hidden {args.hidden}), embedding {args.embed}, "
          f"{args.dtype}; truncated BPTT over {args.batch} streams in windows of "
          f"{args.T} characters, state carried; {args.steps} Adam steps (lr {args.lr:g}, "
          f"clip {args.clip:g})")
    try:
        result = lm.train(corpus, cell=args.cell, hidden=args.hidden, embed=args.embed,
                          layers=args.layers, batch=args.batch, T=args.T, steps=args.steps,
                          lr=args.lr, clip=args.clip, seed=args.seed,
                          sample_length=args.sample_length, temperature=args.temperature,
                          prime=args.prime, dtype=np.dtype(args.dtype), progress=True)
    except (ValueError, TypeError) as exc:  # options the corpus cannot satisfy
        print(f"minirec train: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"minirec train: training diverged: {exc}", file=sys.stderr)
        return 1
    k = min(10, len(result.losses))
    ppl = result.valid_perplexity
    print(f"{args.steps} steps in {result.seconds:.1f} s ({args.steps / result.windows:.2f} "
          f"passes over the training text); training loss {np.mean(result.losses[:k]):.3f} → "
          f"{np.mean(result.losses[-k:]):.3f} nats per character (mean of {k} steps)")
    print(f"held-out perplexity: {ppl:.2f} ({np.log2(ppl):.2f} bits per character; "
          f"a uniform guess scores {corpus.vocab_size})")
    print(f"sample (temperature {args.temperature:g}, after {args.prime!r}):")
    print(result.snapshots[-1][2])
    return 0


# ---------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------
# argparse `type=` functions: the parser calls them on the option's text and
# reports an ArgumentTypeError as "argument --steps: expected ..., got ...",
# exit status 2, before any work starts. minirec.bench uses them too.

def positive_int_arg(text: str) -> int:
    """An option's text as an integer ≥ 1 (``argparse.ArgumentTypeError`` otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def nonnegative_int_arg(text: str) -> int:
    """An option's text as an integer ≥ 0 (``argparse.ArgumentTypeError`` otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return value


def positive_float_arg(text: str) -> float:
    """An option's text as a finite number > 0 (``argparse.ArgumentTypeError`` otherwise)."""
    try:
        return V.positive_float("value", float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}") from None


def file_path_arg(text: str) -> Path:
    """An option's text as a path to write a file to: not an existing folder."""
    path = Path(text).expanduser()
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file path, got {text!r}"
                                         + (" (a folder)" if text else ""))
    return path


def folder_path_arg(text: str) -> Path:
    """An option's text as a folder to write into: not an existing file."""
    path = Path(text).expanduser()
    if not text or (path.exists() and not path.is_dir()):
        raise argparse.ArgumentTypeError(f"expected a folder, got {text!r}"
                                         + (" (an existing file)" if text else ""))
    return path


def build_parser() -> argparse.ArgumentParser:
    """The ``minirec`` argument parser (sub-commands ``list``, ``check``, ``tour``, ``train``,
    ``bench``).

    Every option's help states its default; ``--backend`` offers the backends
    of :data:`minirec._backend.BACKENDS`.
    """
    from minirec import __version__

    p = argparse.ArgumentParser(
        prog="minirec",
        description="minirec: recurrent networks with hand-derived backward passes, "
                    "parallel scans and kernels, each checked against its definition.")
    p.add_argument("--version", action="version", version=f"minirec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pl = sub.add_parser("list", help="list every scan, cell and op in the registry",
                        description="List every scan, cell and op in the registry.")
    fmt = pl.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true",
                     help="print the README/docs feature table (Markdown) instead of the "
                          "plain-text table (default: plain text)")
    fmt.add_argument("--wide", action="store_true",
                     help="one line per entry, nothing wrapped (about 200 columns; default: "
                          "wrapped to 100 columns, the recurrence under each row)")
    pl.set_defaults(func=_cmd_list)

    pc = sub.add_parser(
        "check", help="gradient-check entries and compare every method/backend "
                      "with the recurrent definition",
        description="For each entry × method × backend: the float64 gradient check "
                    f"(relative error < {GRADCHECK_TOL:.0e}) and the agreement with the "
                    f"float64 recurrent definition (relative RMS ≤ {AGREEMENT_TOL['float64']:.0e}"
                    f" in float64, ≤ {AGREEMENT_TOL['float32']:.0e} in float32). Exit status "
                    "1 if anything fails, 2 if a NAME is unknown or a requested --backend "
                    "cannot run here or is not a backend of any selected entry.")
    pc.add_argument("names", nargs="*", metavar="NAME",
                    help="registry entries (see `minirec list`) or glob patterns such as "
                         "'scan.*' (default: every entry)")
    pc.add_argument("--dtype", choices=("float64", "float32", "all"), default="all",
                    help="precision of the agreement checks (complex128/complex64 count as "
                         "float64/float32) (default: %(default)s)")
    pc.add_argument("--backend", action="append", choices=_backend.BACKENDS,
                    help="only this backend; repeat for several. A backend asked for here "
                         "must be installed and usable (default: every backend of each "
                         "entry, skipping with a note those whose package or device is "
                         "missing)")
    pc.set_defaults(func=_cmd_check)

    pt = sub.add_parser(
        "tour", help="check everything, then train a small LSTM on parity and save its "
                     "loss curve",
        description="Run `minirec check` over every entry, then train a small LSTM on "
                    "streaming parity (minirec.demo) and save its loss curve as a PNG. "
                    "Training stops at the time budget, the step budget or a loss below "
                    "0.01, whichever comes first. Exit status 1 if a check fails.")
    pt.add_argument("--seconds", type=positive_float_arg, default=8.0,
                    help="training time budget in seconds (default: %(default)s)")
    pt.add_argument("--steps", type=positive_int_arg, default=3000,
                    help="training step budget (default: %(default)s)")
    pt.add_argument("--T", type=positive_int_arg, default=16,
                    help="sequence length (default: %(default)s)")
    pt.add_argument("--hidden", type=positive_int_arg, default=16,
                    help="LSTM hidden size (default: %(default)s)")
    pt.add_argument("--seed", type=nonnegative_int_arg, default=0,
                    help="seed of the initial weights and of the data (default: %(default)s)")
    pt.add_argument("--out", type=file_path_arg, default="minirec_tour_loss.png",
                    help="where to save the loss curve, a PNG; parent folders are created "
                         "(default: ./%(default)s)")
    pt.set_defaults(func=_cmd_tour)

    # the defaults are minirec.lm.train's (a test keeps them equal); not imported here,
    # so that `minirec --help` stays cheap
    pr = sub.add_parser(
        "train", help="train a character language model (LSTM or minGRU) with truncated "
                      "BPTT; print its held-out perplexity and a sample",
        description="Train a character language model (minirec.lm: embedding → stacked "
                    "LSTM or minGRU cells → linear read-out) on CPython's help texts "
                    "(pydoc_data.topics, present wherever Python is; or --text FILE), "
                    "with truncated BPTT (the state carried across windows), Adam and "
                    "gradient clipping, then print the perplexity on the held-out end of "
                    "the text and a sample. Exit status 2 for options the corpus cannot "
                    "satisfy (e.g. --batch × --T longer than the held-out text).")
    pr.add_argument("--cell", choices=("lstm", "mingru"), default="lstm",
                    help="the recurrent cell (default: %(default)s)")
    pr.add_argument("--layers", type=positive_int_arg, default=1,
                    help="number of stacked cells (default: %(default)s)")
    pr.add_argument("--hidden", type=positive_int_arg, default=128,
                    help="hidden size of every cell (default: %(default)s)")
    pr.add_argument("--embed", type=positive_int_arg, default=32,
                    help="character embedding size (default: %(default)s)")
    pr.add_argument("--batch", type=positive_int_arg, default=32,
                    help="parallel streams the text is cut into (default: %(default)s)")
    pr.add_argument("--T", type=positive_int_arg, default=64,
                    help="window length in characters: how far back gradients reach "
                         "(default: %(default)s)")
    pr.add_argument("--steps", type=positive_int_arg, default=500,
                    help="Adam steps, one window each (default: %(default)s)")
    pr.add_argument("--lr", type=positive_float_arg, default=1e-2,
                    help="Adam's learning rate (default: %(default)s)")
    pr.add_argument("--clip", type=positive_float_arg, default=1.0,
                    help="global gradient-norm limit (default: %(default)s)")
    pr.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="precision of the parameters and of training (default: %(default)s)")
    pr.add_argument("--seed", type=nonnegative_int_arg, default=0,
                    help="seed of the initial weights and of the sample (default: %(default)s)")
    pr.add_argument("--text", type=_text_file_arg, default=None, metavar="FILE",
                    help="train on this UTF-8 text file instead (default: CPython's help "
                         "texts)")
    pr.add_argument("--valid-fraction", type=_fraction_arg, default=0.1,
                    help="share of the text, at its end, held out for the perplexity "
                         "(default: %(default)s)")
    pr.add_argument("--temperature", type=positive_float_arg, default=0.8,
                    help="sampling temperature τ: p = softmax(logits / τ) "
                         "(default: %(default)s)")
    pr.add_argument("--sample-length", type=nonnegative_int_arg, default=300,
                    help="characters to sample after training (default: %(default)s)")
    pr.add_argument("--prime", default="\n",
                    help="text the model reads before sampling (default: a newline)")
    pr.set_defaults(func=_cmd_train)

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
