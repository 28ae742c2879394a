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

What each step returns is checked as it comes back, so a step pair with a
mistake fails at the step that made it, naming the function: the number of
values returned, ``state_next`` and ``dstate_prev`` shaped like the state,
``dx_t`` shaped like ``x_t``, and ``dparams`` with exactly the keys and shapes
of ``params`` (a missing key is an error, not a zero gradient).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from minirec import _validate as V

State = Any  # an array (B, H) or a tuple of arrays


class SequenceCache(NamedTuple):
    """What :func:`sequence_backward` needs from :func:`sequence_forward`.

    Fields:
        steps: the step caches ``[cache_0, …, cache_{T-1}]``, in time order.
        state0: the state the loop started from (array or tuple of arrays).
        y_like: zeros shaped like one output ``y_t (B, H)`` (the ``dy_t`` of
            the separate-output form when ``dy`` is ``None``).
        x_t_shape: the shape of one input step ``x_t (B, D)``.
        param_shapes: ``{name: shape}`` of the params the forward ran with.
        separate_output: the form of step pair that made the cache.
    """

    steps: list
    state0: State
    y_like: np.ndarray
    x_t_shape: tuple[int, ...]
    param_shapes: dict
    separate_output: bool


def _is_tuple(s) -> bool:
    return isinstance(s, (tuple, list))


def _output(state):
    return state[0] if _is_tuple(state) else state


def _add_to_output(dstate, dy_t):
    if _is_tuple(dstate):
        return (dstate[0] + dy_t,) + tuple(dstate[1:])
    return dstate + dy_t


def _zeros_like_state(state):
    if _is_tuple(state):
        return tuple(np.zeros_like(s) for s in state)
    return np.zeros_like(state)


# ---------------------------------------------------------------------------
# checks of what the user's step functions return: in full at the first step
# (and at every step while minirec.check_finite is on), then only the shapes,
# a few tuple comparisons per step; a mismatch gets the full check's message
# ---------------------------------------------------------------------------

def _full_check(t_first: bool) -> bool:
    return t_first or V.check_finite.enabled()


def _shapes_match(value, like) -> bool:
    """``value`` has the structure and shapes of ``like`` (array or tuple of arrays)."""
    if _is_tuple(like):
        return (_is_tuple(value) and len(value) == len(like)
                and all(getattr(v, "shape", None) == s.shape for v, s in zip(value, like)))
    return not _is_tuple(value) and getattr(value, "shape", None) == like.shape


def _describe(value) -> str:
    """How a returned value looks, for messages: 'a tuple of 2 values', …"""
    if _is_tuple(value):
        return f"a {type(value).__name__} of {len(value)} values"
    if hasattr(value, "shape"):
        return f"an array of shape {tuple(value.shape)}"
    return "None" if value is None else f"a {type(value).__name__}"


def _state_layout(state) -> str:
    """'an array (2, 4)' or 'a tuple of 2 arrays (2, 4), (2, 4)'."""
    if _is_tuple(state):
        shapes = ", ".join(str(tuple(s.shape)) for s in state)
        return f"a tuple of {len(state)} arrays {shapes}"
    return f"an array {tuple(state.shape)}"


def _same_layout(value, like) -> bool:
    """``value`` is structured like the state ``like`` (array, or tuple of as many)."""
    if _is_tuple(like):
        return _is_tuple(value) and len(value) == len(like)
    return not _is_tuple(value) and hasattr(value, "shape")


def _check_like_state(name: str, value, like, like_name: str) -> None:
    """Every array of ``value`` is a float/complex array shaped like ``like``'s
    (real or complex either way: a complex recurrence may start from a real state)."""
    if _is_tuple(like):
        for i, (v, s) in enumerate(zip(value, like)):
            V.array(f"{name}[{i}]", v)
            V.same_shape(f"{name}[{i}]", v, f"{like_name}[{i}]", s)
    else:
        V.array(name, value)
        V.same_shape(name, value, like_name, like)


def _check_state0(state0) -> None:
    if state0 is None:
        raise ValueError("state0: expected the initial state (an array or a tuple of arrays), "
                         "got None; sequence_forward does not make one (make_cell's "
                         "zero_state does)")
    if _is_tuple(state0):
        for i, s in enumerate(state0):
            V.array(f"state0[{i}]", s)
    else:
        V.array("state0", state0)


def _step_forward_result(out, state, y0, t: int, separate_output: bool):
    """``(y_t, state_next, cache_t)`` from what ``step_forward`` returned at step
    t, given the state it was called with and ``y0`` (``y_t`` at t=0, or None)."""
    n = 3 if separate_output else 2
    if not _full_check(t == 0) and _is_tuple(out) and len(out) == n:
        y_t, state_next, cache_t = out if separate_output else (_output(out[0]), *out)
        if _shapes_match(state_next, state) and getattr(y_t, "shape", None) == y0.shape:
            return y_t, state_next, cache_t
    want = "(y_t, state_next, cache_t)" if separate_output else "(state_next, cache_t)"
    if not _is_tuple(out) or len(out) != n:
        hint = ("; did it return only the state?"
                if not separate_output and _same_layout(out, state) else "")
        raise TypeError(f"step_forward: expected it to return {want}, got {_describe(out)} "
                        f"at t={t}{hint}")
    y_t, state_next, cache_t = out if separate_output else (None, *out)
    if not _same_layout(state_next, state):
        raise TypeError(f"step_forward: expected it to return {want} with state_next like "
                        f"the state it was given ({_state_layout(state)}), got state_next = "
                        f"{_describe(state_next)} at t={t}")
    _check_like_state(f"step_forward's state_next (t={t})", state_next, state, "state")
    if not separate_output:
        y_t = _output(state_next)
    V.array(f"step_forward's y_t (t={t})", y_t, min_ndim=1)  # (B, …)
    if y0 is not None:
        V.same_shape(f"step_forward's y_t (t={t})", y_t, "y_t at t=0", y0)
    return y_t, state_next, cache_t


def _check_dy(dy, cache: SequenceCache) -> None:
    """``dy`` is ``None`` or shaped like ``y``: ``(B, T, …)`` around one ``y_t``."""
    y_t = cache.y_like
    # a read-only view with the shape and dtype of y (B, T, …), no copy
    y = np.broadcast_to(y_t[:, None], (y_t.shape[0], len(cache.steps)) + y_t.shape[1:])
    V.grad_like("dy", dy, y, "y")


def _dstate_or_zeros(dstate, state0):
    """The gradient of the final state, checked against the state; ``None``
    (or a ``None`` entry of a tuple) means zeros."""
    dstate = V.grad_state("dstate", dstate, state0)
    if dstate is None:
        return _zeros_like_state(state0)
    if not _is_tuple(state0):
        return dstate
    return tuple(np.zeros_like(s) if d is None else d for d, s in zip(dstate, state0))


def _step_backward_result(out, t: int, params: Mapping, cache: SequenceCache):
    """``(dx_t, dstate_prev, dparams)`` from what ``step_backward`` returned at step t."""
    if not _full_check(t == len(cache.steps) - 1) and _is_tuple(out) and len(out) == 3:
        dx_t, dstate_prev, dparams = out
        if (getattr(dx_t, "shape", None) == cache.x_t_shape
                and _shapes_match(dstate_prev, cache.state0)
                and isinstance(dparams, Mapping) and dparams.keys() == params.keys()
                and all(getattr(g, "shape", None) == params[k].shape
                        for k, g in dparams.items())):
            return dx_t, dstate_prev, dparams
    if not _is_tuple(out) or len(out) != 3:
        raise TypeError(f"step_backward: expected it to return (dx_t, dstate_prev, dparams), "
                        f"got {_describe(out)} at t={t}")
    dx_t, dstate_prev, dparams = out
    name = f"step_backward's dx_t (t={t})"
    V.array(name, dx_t)
    V.Shapes().check(name, dx_t, cache.x_t_shape)  # the shape of x_t
    if not _same_layout(dstate_prev, cache.state0):
        raise TypeError(f"step_backward's dstate_prev (t={t}): expected "
                        f"{_state_layout(cache.state0)} like the state, "
                        f"got {_describe(dstate_prev)}")
    _check_like_state(f"step_backward's dstate_prev (t={t})", dstate_prev, cache.state0,
                      "state")
    if not isinstance(dparams, Mapping):
        raise TypeError(f"step_backward's dparams (t={t}): expected a dict with the keys of "
                        f"params, got {_describe(dparams)}")
    if dparams.keys() != params.keys():
        missing = [k for k in params if k not in dparams]
        unexpected = [k for k in dparams if k not in params]
        raise ValueError(f"step_backward's dparams (t={t}): expected the keys of params "
                         f"{list(params)}, got {list(dparams)} (missing {missing}, "
                         f"unexpected {unexpected})")
    for k, g in dparams.items():  # shaped like the parameter, real for a real one
        V.grad_like(f"step_backward's dparams[{k!r}] (t={t})", g, params[k], f"params[{k!r}]")
    return dx_t, dstate_prev, dparams


# ---------------------------------------------------------------------------
# the two loops
# ---------------------------------------------------------------------------

def sequence_forward(step_forward: Callable, params: dict, x: np.ndarray, state0: State,
                     separate_output: bool = False, **step_kwargs
                     ) -> tuple[np.ndarray, State, SequenceCache]:
    """Loop ``step_forward`` over axis 1 of ``x (B, T, D)`` from ``state0``.

    Returns ``y (B, T, H)`` (the ``h`` part of every state, or the step's own
    output with ``separate_output``), the final state, and the
    :class:`SequenceCache` for :func:`sequence_backward`.

    Raises ``TypeError``/``ValueError`` naming ``step_forward`` when a step
    returns the wrong number of values or a state shaped unlike ``state0``.
    """
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
    V.array("x", x, ndim=3)
    V.time_steps("x", x)
    _check_state0(state0)
    state = state0
    ys, caches = [], []
    for t in range(x.shape[1]):
        out = step_forward(params, x[:, t], state, **step_kwargs)
        y_t, state, cache_t = _step_forward_result(out, state, ys[0] if ys else None, t,
                                                   separate_output)
        ys.append(y_t)
        caches.append(cache_t)
    y = np.stack(ys, axis=1)
    return y, state, SequenceCache(steps=caches, state0=state0, y_like=np.zeros_like(ys[0]),
                                   x_t_shape=(x.shape[0],) + tuple(x.shape[2:]),
                                   param_shapes={k: np.shape(v) for k, v in params.items()},
                                   separate_output=separate_output)


def sequence_backward(step_backward: Callable, params: dict, cache: SequenceCache,
                      dy: np.ndarray | None, dstate: State | None = None,
                      separate_output: bool = False) -> dict[str, Any]:
    """BPTT over the cache of :func:`sequence_forward`.

    Args:
        step_backward: ``(dstate_next, cache_t) -> (dx_t, dstate_prev, dparams)``
            (``(dy_t, dstate_next, cache_t) -> …`` with ``separate_output``).
        params: the parameter dict (its keys name the returned gradients).
        cache: the :class:`SequenceCache` from :func:`sequence_forward`.
        dy: ``(B, T, H)`` ∂L/∂y, or ``None`` for zeros.
        dstate: gradient of the final state (same structure; ``None``, or a
            ``None`` entry of a tuple, for zeros).

    Returns:
        ``{**dparams, "x": dx (B, T, D), "state0": dstate0}``.

    Raises ``TypeError``/``ValueError`` naming ``step_backward`` when a step
    returns the wrong number of values, a ``dx_t`` unlike ``x_t``, a
    ``dstate_prev`` unlike the state, or ``dparams`` whose keys or shapes are
    not those of ``params``.
    """
    if not isinstance(cache, SequenceCache):
        raise TypeError(f"cache: expected the cache returned by sequence_forward, "
                        f"got {type(cache).__name__}")
    if cache.separate_output != separate_output:
        raise ValueError(f"cache: expected a cache of sequence_forward(separate_output="
                         f"{separate_output}), got one made with separate_output="
                         f"{cache.separate_output}")
    V.params_match("sequence_backward", params, cache.param_shapes)
    steps = cache.steps
    T = len(steps)
    _check_dy(dy, cache)
    ds = _dstate_or_zeros(dstate, cache.state0)
    dxs = [None] * T
    dparams = {k: np.zeros_like(v) for k, v in params.items()}
    for t in reversed(range(T)):
        if separate_output:
            dy_t = np.zeros_like(cache.y_like) if dy is None else dy[:, t]
            out = step_backward(dy_t, ds, steps[t])
        else:
            if dy is not None:
                ds = _add_to_output(ds, dy[:, t])
            out = step_backward(ds, steps[t])
        dx_t, ds, dp = _step_backward_result(out, t, params, cache)
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
                raise ValueError(f"state0: expected an initial state, got None: "
                                 f"{self.__name__} was made without zero_state; pass state0, "
                                 f"or give make_cell a zero_state(params, batch_size, dtype)")
            V.array("x", x, ndim=3)
            state0 = self.zero_state(params, x.shape[0], x.dtype)
        return sequence_forward(self.step_forward, params, x, state0,
                                separate_output=self.separate_output, **step_kwargs)

    def backward(self, params: dict, cache: SequenceCache, dy: np.ndarray | None,
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
    for arg, f in (("step_forward", step_forward), ("step_backward", step_backward)):
        if not callable(f):
            raise TypeError(f"{arg}: expected a function, got {type(f).__name__}")
    if zero_state is not None and not callable(zero_state):
        raise TypeError(f"zero_state: expected a function or None, got {type(zero_state).__name__}")
    return BpttCell(step_forward, step_backward, zero_state, name, separate_output)
