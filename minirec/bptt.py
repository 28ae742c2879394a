"""Backpropagation through time from one step's forward and backward.

Write a cell as two functions over one time step,

    state_next, cache_t = step_forward(params, x_t, state)          x_t (B, D)
    dx_t, dstate_prev, dparams = step_backward(dstate_next, cache_t)

where ``state`` is an array ``h (B, H)`` or a tuple of arrays whose first entry
is the output ``h`` (``(h, c)`` for an LSTM). :func:`sequence_forward` loops the
step over time and :func:`sequence_backward` runs BPTT:

    forward:   s_t = step(s_{t-1}, x_t),  y_t = h part of s_t
    backward:  ds_t = (dy_t + dh_{t+1→t}, dc_{t+1→t}, …)   for t = T-1 … 0
               dx_t, ds_{t-1}, dθ_t = step_backward(ds_t, cache_t)
               dθ = Σ_t dθ_t,  dstate0 = ds_{-1}

with ``ds_{T-1}`` starting from the gradient of the returned final state.
:func:`make_cell` packs a step pair into an object with the DESIGN §4 cell API
(``forward``/``backward``) that :func:`minirec.gradcheck.check_cell` accepts.
minirec's own classic cells (RNN, LSTM, GRU) are written this way.

Cells whose output is a read-out of the state rather than part of it (LRU,
S4D, Mamba, Aaren) use the *separate-output* form, ``separate_output=True``:

    y_t, state_next, cache_t = step_forward(params, x_t, state)
    dx_t, dstate_prev, dparams = step_backward(dy_t, dstate_next, cache_t)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from minirec import _validate as V

State = Any  # an array (B, H) or a tuple of arrays


def _is_tuple(s) -> bool:
    return isinstance(s, (tuple, list))


def _output(state):
    return state[0] if _is_tuple(state) else state


def _add_to_output(dstate, dy_t):
    if _is_tuple(dstate):
        return (dstate[0] + dy_t,) + tuple(dstate[1:])
    return dstate + dy_t


def _leaves(state):
    return list(state) if _is_tuple(state) else [state]


def _zeros_like_state(state):
    if _is_tuple(state):
        return tuple(np.zeros_like(s) for s in state)
    return np.zeros_like(state)


def sequence_forward(step_forward: Callable, params: dict, x: np.ndarray, state0: State,
                     separate_output: bool = False, **step_kwargs
                     ) -> tuple[np.ndarray, State, dict]:
    """Loop ``step_forward`` over axis 1 of ``x (B, T, D)``.

    Returns ``y (B, T, H)`` (the ``h`` part of every state, or the step's own
    output with ``separate_output``), the final state, and a cache
    ``{"steps": [cache_t, …], "state0": state0}``.
    """
    V.array("x", x, ndim=3)
    if x.shape[1] < 1:
        raise ValueError(f"x: expected T >= 1 along axis 1, got shape {x.shape}")
    state = state0
    ys, caches = [], []
    for t in range(x.shape[1]):
        if separate_output:
            y_t, state, cache_t = step_forward(params, x[:, t], state, **step_kwargs)
        else:
            state, cache_t = step_forward(params, x[:, t], state, **step_kwargs)
            y_t = _output(state)
        ys.append(y_t)
        caches.append(cache_t)
    y = np.stack(ys, axis=1)
    return y, state, {"steps": caches, "state0": state0, "y_like": np.zeros_like(ys[0])}


def sequence_backward(step_backward: Callable, params: dict, cache: dict, dy: np.ndarray | None,
                      dstate: State | None = None, separate_output: bool = False
                      ) -> dict[str, Any]:
    """BPTT over the cache of :func:`sequence_forward`.

    Args:
        step_backward: ``(dstate_next, cache_t) -> (dx_t, dstate_prev, dparams)``.
        params: the parameter dict (its keys name the returned gradients).
        cache: from :func:`sequence_forward`.
        dy: ``(B, T, H)`` ∂L/∂y, or ``None`` for zeros.
        dstate: gradient of the final state (same structure), or ``None``.

    Returns:
        ``{**dparams, "x": dx (B, T, D), "state0": dstate0}``.
    """
    steps = cache["steps"]
    state0 = cache["state0"]
    T = len(steps)
    ds = _zeros_like_state(state0) if dstate is None else dstate
    if dy is not None and not separate_output:
        h_shape = _output(state0).shape
        if dy.ndim != 3 or dy.shape[1] != T or dy.shape[::2] != h_shape:
            raise ValueError(f"dy: expected shape {(h_shape[0], T, h_shape[1])} (B, T, H), "
                             f"got {dy.shape}")
    if dstate is not None:
        for i, (d, s) in enumerate(zip(_leaves(dstate), _leaves(state0))):
            if d is not None and tuple(d.shape) != tuple(s.shape):
                raise ValueError(f"dstate[{i}]: expected shape {tuple(s.shape)} (the state's), "
                                 f"got {tuple(d.shape)}")
    dxs = [None] * T
    dparams = {k: np.zeros_like(v) for k, v in params.items()}
    for t in reversed(range(T)):
        if separate_output:
            dy_t = np.zeros_like(cache["y_like"]) if dy is None else dy[:, t]
            dx_t, ds, dp = step_backward(dy_t, ds, steps[t])
        else:
            if dy is not None:
                ds = _add_to_output(ds, dy[:, t])
            dx_t, ds, dp = step_backward(ds, steps[t])
        dxs[t] = dx_t
        for k, v in dp.items():
            dparams[k] += v
    grads = dict(dparams)
    grads["x"] = np.stack(dxs, axis=1)
    grads["state0"] = ds
    return grads


@dataclass
class BpttCell:
    """A cell with the DESIGN §4 API built from a step pair; see :func:`make_cell`."""

    step_forward: Callable
    step_backward: Callable
    zero_state: Callable | None = None
    __name__: str = "bptt_cell"
    separate_output: bool = False

    def forward(self, params: dict, x: np.ndarray, state0: State = None, **step_kwargs):
        """``(y (B, T, H), final_state, cache)``; ``state0=None`` asks ``zero_state``."""
        if state0 is None:
            if self.zero_state is None:
                raise ValueError("state0: this cell has no zero_state; pass state0 explicitly")
            state0 = self.zero_state(params, x.shape[0], x.dtype)
        return sequence_forward(self.step_forward, params, x, state0,
                                separate_output=self.separate_output, **step_kwargs)

    def backward(self, params: dict, cache: dict, dy: np.ndarray | None,
                 dstate: State | None = None) -> dict:
        """Every parameter's gradient plus ``"x"`` and ``"state0"``."""
        return sequence_backward(self.step_backward, params, cache, dy, dstate,
                                 separate_output=self.separate_output)


def make_cell(step_forward: Callable, step_backward: Callable,
              zero_state: Callable | None = None, name: str = "bptt_cell",
              separate_output: bool = False) -> BpttCell:
    """Turn a user's step pair into a sequence cell.

    Args:
        step_forward: ``(params, x_t (B, D), state) -> (state_next, cache_t)``.
        step_backward: ``(dstate_next, cache_t) -> (dx_t, dstate_prev, dparams)``.
        zero_state: optional ``(params, batch_size, dtype) -> state`` used when
            ``forward`` is called with ``state0=None``.
        name: shown in gradcheck reports.
        separate_output: the step pair has the separate-output form
            (``(y_t, state, cache_t)`` / ``step_backward(dy_t, dstate, cache_t)``).

    Example::

        cell = make_cell(my_step, my_step_backward)
        print(gradcheck.check_cell(cell, params, x, h0))
    """
    return BpttCell(step_forward, step_backward, zero_state, name, separate_output)
