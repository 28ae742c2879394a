"""A small LSTM trained on streaming parity: the demo that ``minirec tour`` runs.

Dimension key: B batch, T time, H hidden size.

The input is a bit stream ``x (B, T, 1)``; the target at step ``t`` is
``y_t = x_0 ⊕ x_1 ⊕ … ⊕ x_t`` (:func:`minirec.tasks.parity`), so the network
has to flip one bit of memory at every 1 it reads. The model and its loss::

    h      = LSTM(x)                 h (B, T, H)       minirec.cells.lstm
    logits = h W^T + b               logits (B, T, 2)  minirec.nn.linear
    L      = mean_{b,t} CE(softmax(logits_{b,t}), y_{b,t})     y (B, T) int

Backward, by hand, in the reverse order::

    dlogits      = ∂L/∂logits                      (loss.softmax_cross_entropy)
    dh, dW, db   = linear.backward(..., dlogits)
    dparams_lstm = lstm.backward(..., dh)

then the gradients are clipped by global norm and Adam takes a step
(:mod:`minirec.nn.optim`). A model without memory cannot beat ``ln 2`` nats.

Parameters live in one flat dict with ``"lstm."`` and ``"out."`` prefixes, so
that one Adam state and one clipping norm cover both layers.

Nothing heavy is imported with this module: the LSTM, tqdm and matplotlib are
imported by the functions that use them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minirec import _validate as V


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
    """The entries of ``flat`` under ``prefix + "."``, with the prefix removed."""
    return {k[len(prefix) + 1:]: v for k, v in flat.items() if k.startswith(prefix + ".")}


def _parity_model(params: dict[str, np.ndarray], x: np.ndarray
                  ) -> tuple[np.ndarray, tuple[Any, Any]]:
    """Logits ``(B, T, 2)`` of the LSTM + linear read-out on ``x (B, T, 1)``, and
    the caches ``(lstm_cache, linear_cache)`` that the backward passes need."""
    from minirec.cells import lstm
    from minirec.nn import linear

    h, _, lstm_cache = lstm.forward(_split(params, "lstm"), x)
    logits, lin_cache = linear.forward(_split(params, "out"), h)
    return logits, (lstm_cache, lin_cache)


def train_parity(*, seconds: float = 8.0, max_steps: int = 3000, T: int = 16,
                 batch: int = 32, hidden: int = 16, lr: float = 1e-2, clip: float = 1.0,
                 target_loss: float | None = 0.01, seed: int = 0,
                 progress: bool = True) -> TrainResult:
    """Train an LSTM with a linear read-out on streaming parity.

    The model is ``logits_t = W · LSTM(x)_t + b`` on bits ``x (batch, T, 1)``
    (:mod:`minirec.cells.lstm`, :mod:`minirec.nn.linear`), trained with softmax
    cross-entropy averaged over every position, Adam, and gradient clipping by
    global norm (see the module docstring for the equations).

    Args:
        seconds: stop after this much wall-clock time ...
        max_steps: ... or after this many steps ...
        target_loss: ... or once the mean loss of the last 20 steps is below
            this (``None``: never), whichever comes first. At least one step
            is always taken.
        T: sequence length.
        batch: sequences per step (a fresh batch each step).
        hidden: LSTM hidden size H.
        lr: Adam learning rate.
        clip: maximum global gradient norm.
        seed: seeds the initial parameters and the data (the held-out
            sequences use ``seed + 1``).
        progress: show a tqdm progress bar with the current loss.

    Returns:
        A :class:`TrainResult` with the loss history and the held-out accuracy
        over 512 fresh sequences.

    Raises:
        ValueError: ``max_steps``, ``T``, ``batch`` or ``hidden`` is not a
            positive integer.
    """
    from minirec import tasks
    from minirec.cells import lstm
    from minirec.nn import linear, loss, optim

    for name, value in (("max_steps", max_steps), ("T", T), ("batch", batch),
                        ("hidden", hidden)):
        V.positive_int(name, value)
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
        dh, g_out = linear.backward(_split(params, "out"), lin_cache, dlogits)
        g_lstm = lstm.backward(_split(params, "lstm"), lstm_cache, dh)
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

    The curve is drawn per step, with a running mean over ``len(losses) // 20``
    steps once there are at least 10, and the chance level ``ln 2``.

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
