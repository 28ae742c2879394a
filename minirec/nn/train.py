"""A small generic training loop: Adam, optional clipping, a tqdm progress bar.

You write one function, ``loss_and_grads(params, step) -> (loss, grads)``,
that draws a batch (use ``step`` or your own generator), runs the forward and
the hand backward, and returns the scalar loss and the gradients with the keys
of ``params``. :func:`fit` does the rest::

    state = adam_init(params)
    for step in range(n_steps):
        loss, grads = loss_and_grads(params, step)
        grads, norm = clip_by_global_norm(grads, clip)      # when clip is set
        params, state = adam_update(params, grads, state, lr=lr(step))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tqdm import tqdm

from minirec import _validate as V
from minirec.nn import optim


def param_grads(grads: dict, params: dict) -> dict:
    """The parameter gradients out of a cell's backward result.

    A cell's ``backward`` returns every parameter's gradient together with
    ``"x"`` and ``"state0"``; an optimizer wants exactly the structure of
    ``params``. This picks those keys (nested dicts included) and refuses a
    result that lacks one::

        grads = lstm.backward(params, cache, dy)
        params, state = adam_update(params, param_grads(grads, params), state)
    """
    if not isinstance(grads, dict) or not isinstance(params, dict):
        raise TypeError(f"param_grads: expected two dicts (grads, params), got "
                        f"{type(grads).__name__}, {type(params).__name__}")
    missing = sorted(k for k in params if k not in grads)
    if missing:
        raise ValueError(f"param_grads: expected a gradient for every parameter "
                         f"{sorted(params)}, got none for {missing}")
    return {k: param_grads(grads[k], v) if isinstance(v, dict) else grads[k]
            for k, v in params.items()}


def fit(loss_and_grads: Callable[..., tuple[float, Any]], params: Any, n_steps: int, *,
        lr: float | Callable[[int], float] = 1e-3, clip: float | None = None,
        log_every: int = 10, progress: bool = True,
        rng: np.random.Generator | int | None = None,
        desc: str = "training") -> tuple[Any, dict[str, list]]:
    """Train ``params`` with Adam for ``n_steps`` steps.

    Args:
        loss_and_grads: ``(params, step) -> (loss, grads)``, or
            ``(params, step, rng) -> (loss, grads)`` when ``rng`` is given.
            ``grads`` has exactly the structure of ``params``.
        params: dict of arrays (nested dicts allowed); not modified.
        n_steps: number of updates.
        lr: Adam's step size, or a schedule ``step -> lr``.
        clip: clip the gradients to this global norm (``None``: no clipping).
        log_every: refresh the bar's loss (the mean over the last ``log_every``
            steps) every this many steps.
        progress: show the tqdm bar.
        rng: a seed or ``np.random.Generator``; when given, one generator is
            made from it and passed to every ``loss_and_grads`` call, so a
            single seed fixes the whole stream of batches.
        desc: the bar's label.

    Returns:
        ``(params, history)`` — the trained parameters and
        ``{"loss": [...], "grad_norm": [...], "lr": [...]}`` with one entry
        per step (``grad_norm`` is the global norm before clipping).

    Raises:
        FloatingPointError: when a loss or gradient norm is NaN or inf (the
            message gives the step; lower ``lr`` or set ``clip``).
    """
    n_steps = V.positive_int("n_steps", n_steps)
    log_every = V.positive_int("log_every", log_every)
    if clip is not None and not clip > 0:
        raise ValueError(f"clip: expected a positive number or None, got {clip!r}")
    schedule = lr if callable(lr) else (lambda step: lr)
    gen = None if rng is None else np.random.default_rng(rng)
    state = optim.adam_init(params)
    history: dict[str, list] = {"loss": [], "grad_norm": [], "lr": []}
    bar = tqdm(range(n_steps), desc=desc, disable=not progress)
    for step in bar:
        if gen is None:
            loss, grads = loss_and_grads(params, step)
        else:
            loss, grads = loss_and_grads(params, step, gen)
        loss = float(loss)
        if clip is not None:
            grads, norm = optim.clip_by_global_norm(grads, clip)
        else:
            norm = optim.global_norm(grads)
        if not (np.isfinite(loss) and np.isfinite(norm)):
            bar.close()
            raise FloatingPointError(
                f"step {step}: loss = {loss}, gradient norm = {norm}; "
                "lower lr or set clip="
            )
        step_lr = float(schedule(step))
        params, state = optim.adam_update(params, grads, state, lr=step_lr)
        history["loss"].append(loss)
        history["grad_norm"].append(norm)
        history["lr"].append(step_lr)
        if (step + 1) % log_every == 0 or step + 1 == n_steps:
            bar.set_postfix(loss=f"{np.mean(history['loss'][-log_every:]):.4g}", refresh=False)
    bar.close()
    return params, history
