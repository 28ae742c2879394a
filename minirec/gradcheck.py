"""Numerical checks of a forward/backward pair, usable on your own code.

Both checkers compare a hand-written backward with central differences of the
scalar

    L = Σ Re(conj(R_out) ⊙ out) + Σ Re(conj(R_state) ⊙ final_state)

for random upstream gradients ``R_out`` and ``R_state`` (so the final state's
gradient path is checked too). The gradient of ``L`` with respect to every
input, parameter and the initial state is estimated element by element,

    ∂L/∂x_i ≈ (L(x + ε e_i) − L(x − ε e_i)) / 2ε     (and i·∂L/∂Im x_i for complex x),

all in float64/complex128, and compared with the backward's answer by the
relative error

    err = max|num − ana| / max(1e-8, max|num| + max|ana|).

A check passes when at least one array was checked and every error is below
``tol`` (default 1e-6). Central differences have truncation error O(ε²) and
rounding error O(1e-16/ε); with ε = 1e-6 the errors of a correct backward are
typically 1e-9 to 1e-11.

``check_op(op, inputs, **kwargs)`` needs an object with
``forward(**inputs, **kwargs) -> (out, final_state, cache)`` and
``backward(cache, d_out, d_final_state) -> dict``; ``check_cell(cell, params,
x, state0, **kwargs)`` needs ``forward(params, x, state0, **kwargs) -> (y,
state, cache)`` and ``backward(params, cache, dy, dstate) -> dict``. Modules of
minirec have both; :mod:`minirec.bptt` makes them from your step functions.

Every array handed to a checker is differentiated, so it must be floating or
complex; anything else the forward needs (integer indices, masks, flags) goes
in as a keyword argument, which is passed to ``forward`` unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minirec import _validate as V

DEFAULT_TOL = 1e-6
DEFAULT_EPS = 1e-6


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a − b| / max(1e-8, max|a| + max|b|)`` — the project's gradient error."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.size == 0:
        return 0.0
    num = float(np.max(np.abs(a - b)))
    den = max(1e-8, float(np.max(np.abs(a))) + float(np.max(np.abs(b))))
    return num / den


@dataclass
class GradcheckReport:
    """Result of a gradient check.

    ``errors`` maps each checked name (``"x"``, ``"W_hh"``, ``"initial_state"``,
    ``"state0[1]"`` for the second array of a tuple state) to its relative error;
    ``passed`` is True when at least one array was checked and every error is
    below ``tol``; ``missing`` lists names the backward did not return (a
    failure). A report with nothing checked has not passed.
    """

    errors: dict[str, float] = field(default_factory=dict)
    tol: float = DEFAULT_TOL
    missing: list[str] = field(default_factory=list)
    title: str = "gradcheck"

    @property
    def passed(self) -> bool:
        return (bool(self.errors) and not self.missing
                and all(e < self.tol for e in self.errors.values()))

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        width = max([len(k) for k in self.errors] + [len(k) for k in self.missing] + [4])
        lines = [f"{self.title}: {'PASSED' if self.passed else 'FAILED'} (tol {self.tol:.0e})"]
        if not self.errors and not self.missing:
            lines[0] += ": nothing was checked"
        for k, e in self.errors.items():
            mark = "ok" if e < self.tol else "FAIL"
            lines.append(f"  {k:<{width}}  {e:9.2e}  {mark}")
        for k in self.missing:
            lines.append(f"  {k:<{width}}  missing from backward's result  FAIL")
        return "\n".join(lines)

    __repr__ = __str__


def _check_options(eps: Any, tol: Any, max_elements: Any) -> None:
    V.positive_float("eps", eps)
    V.positive_float("tol", tol)
    V.positive_int("max_elements", max_elements, allow_none=True)


def _check_differentiable(arrays: Mapping[str, Any], skip: tuple[str, ...], where: str,
                          how: str) -> None:
    """Every array to check is floating or complex (a ``TypeError`` otherwise: an
    integer array has no central difference and used to be passed over silently)."""
    for name, value in arrays.items():
        if name in skip or value is None:
            continue
        for label, arr, _ in _leaves(name, value):
            if not (np.issubdtype(arr.dtype, np.floating) or np.iscomplexobj(arr)):
                raise TypeError(f"{where}: {label}: expected a floating or complex array to "
                                f"differentiate, got dtype {arr.dtype}; {how}")


def _merge_forward_kwargs(forward_kwargs: dict, forward_options: Any) -> dict:
    """``**forward_kwargs`` and the ``forward_options`` dict in one: the dict carries
    keywords whose names the checker takes itself (``eps``, ``tol``, ``seed``, …)."""
    if forward_options is None:
        return forward_kwargs
    if not isinstance(forward_options, Mapping):
        raise TypeError(f"forward_options: expected a dict of keyword arguments for forward, "
                        f"got {type(forward_options).__name__}")
    both = sorted(set(forward_kwargs) & set(forward_options))
    if both:
        raise ValueError(f"forward_options: expected names not also given as keyword "
                         f"arguments, got {both} twice")
    return {**forward_kwargs, **forward_options}


def _as_tuple(s):
    if s is None:
        return ()
    return tuple(s) if isinstance(s, (tuple, list)) else (s,)


def _to64(x):
    if x is None:
        return None
    if isinstance(x, (tuple, list)):
        return type(x)(_to64(v) for v in x)
    x = np.asarray(x)
    # C-ordered copies: the checker perturbs entries through x.reshape(-1), which
    # must be a view, and must never write into the caller's array
    if np.iscomplexobj(x):
        return np.array(x, dtype=np.complex128, order="C", copy=True)
    if np.issubdtype(x.dtype, np.floating):
        return np.array(x, dtype=np.float64, order="C", copy=True)
    return x


def _like(rng, x):
    r = rng.standard_normal(x.shape)
    if np.iscomplexobj(x):
        r = r + 1j * rng.standard_normal(x.shape)
    return r


def _pairing(outs, ups) -> float:
    return float(sum(np.sum((np.conj(u) * o).real) for o, u in zip(outs, ups)))


def _leaves(name: str, value) -> list[tuple[str, Any, tuple]]:
    """(label, array, path) for an array or a tuple of arrays."""
    if isinstance(value, (tuple, list)):
        return [(f"{name}[{i}]", v, (i,)) for i, v in enumerate(value) if v is not None]
    return [(name, value, ())]


def _numerical(loss: Callable[[], float], x: np.ndarray, eps: float,
               indices: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of ``loss`` w.r.t. the entries of ``x`` (modified in place
    and restored). Returns the flat indices checked and the gradient there."""
    flat = x.reshape(-1)
    idx = np.arange(flat.size) if indices is None else indices
    grad = np.zeros(idx.size, dtype=x.dtype)
    for n, i in enumerate(idx):
        orig = flat[i]
        steps = [1.0, 1j] if np.iscomplexobj(x) else [1.0]
        for step in steps:
            flat[i] = orig + eps * step
            lp = loss()
            flat[i] = orig - eps * step
            lm = loss()
            flat[i] = orig
            grad[n] += step * (lp - lm) / (2 * eps)
    return idx, grad


def _pick(rng, size: int, max_elements: int | None):
    if max_elements is None or size <= max_elements:
        return None
    return np.sort(rng.choice(size, size=max_elements, replace=False))


def _run_check(title, run, arrays: dict, grads_fn, *, rng, eps, tol, max_elements, skip):
    """Shared engine. ``arrays``: name -> array or tuple of arrays (float64 copies
    that ``run`` reads). ``run()`` -> (outputs tuple, final-state tuple, cache).
    ``grads_fn(cache, R_out, R_state)`` -> dict of analytic gradients."""
    outs, states, cache = run()
    R_out = tuple(_like(rng, o) for o in outs)
    R_state = tuple(_like(rng, s) for s in states)
    analytic = grads_fn(cache, R_out, R_state)
    if not isinstance(analytic, Mapping):
        raise TypeError(f"{title}: backward: expected a dict of gradients keyed by input "
                        f"name, got {type(analytic).__name__}")

    def loss() -> float:
        o, s, _ = run()
        return _pairing(o, R_out) + _pairing(s, R_state)

    report = GradcheckReport(tol=tol, title=title)
    for name, value in arrays.items():
        if name in skip or value is None:
            continue
        if name not in analytic or analytic[name] is None:
            report.missing.append(name)
            continue
        for label, arr, path in _leaves(name, value):
            ana = analytic[name]
            for p in path:
                ana = ana[p]
            ana = np.asarray(ana)
            if ana.shape != arr.shape:
                report.missing.append(f"{label} (shape {ana.shape}, expected {arr.shape})")
                continue
            idx, num = _numerical(loss, arr, eps, _pick(rng, arr.size, max_elements))
            report.errors[label] = rel_error(num, ana.reshape(-1)[idx])
    return report


def check_op(op: Any, inputs: Mapping[str, Any], *, seed: int = 0, eps: float = DEFAULT_EPS,
             tol: float = DEFAULT_TOL, max_elements: int | None = None,
             skip: tuple[str, ...] = (), forward_options: Mapping[str, Any] | None = None,
             **forward_kwargs) -> GradcheckReport:
    """Check ``op.backward`` against central differences of ``op.forward``.

    Args:
        op: a module or object with ``forward`` and ``backward`` (DESIGN §4 op API).
        inputs: the forward's array arguments by name, e.g.
            ``{"a": a, "b": b, "initial_state": h0}``. Converted to float64
            copies; the caller's arrays are not touched. An ``initial_state``
            of ``None`` is checked as zeros of the final state's shape.
        seed: for the random upstream gradients (and the sampled entries).
        eps: finite-difference step.
        tol: pass threshold on the relative error.
        max_elements: check at most this many random entries per array, at
            least 1 (``None``: all of them).
        skip: input names not to check (passed to ``forward`` but not
            differentiated); a single name may be given as a string.
        **forward_kwargs: passed to ``forward`` unchanged and not checked
            (``method``, ``chunk_size``, integer indices, masks, …).
        forward_options: a dict of more keyword arguments for ``forward``, for a
            name this function takes itself: ``forward_options={"eps": 1e-3}``
            gives the layer-normalised LSTM its layer norms' ``eps`` while
            ``eps=`` stays the finite-difference step.

    Returns:
        A :class:`GradcheckReport` with one error per input array (the
        ``initial_state`` included).

    Raises:
        TypeError: an input not in ``skip`` is not floating or complex (an
            integer, bool or object array): pass it as a keyword argument.
        ValueError: ``eps`` or ``tol`` not a positive finite number,
            ``max_elements < 1``, a name in ``skip`` that is not an input.
    """
    _check_options(eps, tol, max_elements)
    forward_kwargs = _merge_forward_kwargs(forward_kwargs, forward_options)
    if not isinstance(inputs, Mapping):
        raise TypeError(f"inputs: expected a dict of the forward's array arguments by name, "
                        f"got {type(inputs).__name__}")
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    unknown = [k for k in skip if k not in inputs]
    if unknown:
        raise ValueError(f"skip: expected names of inputs {list(inputs)}, got {unknown}")
    rng = np.random.default_rng(seed)
    arrays = {k: _to64(v) for k, v in inputs.items()}
    _check_differentiable(arrays, skip, "check_op",
                          "pass non-differentiable arguments as keyword arguments, "
                          "check_op(op, inputs, name=value), which go to forward unchanged "
                          "(or name the input in skip)")

    def run():
        out, state, cache = op.forward(**arrays, **forward_kwargs)
        return _as_tuple(out), _as_tuple(state), cache

    if "initial_state" in arrays and arrays["initial_state"] is None:
        _, states, _ = run()
        zeros = tuple(np.zeros_like(s) for s in states)
        arrays["initial_state"] = zeros[0] if len(zeros) == 1 else zeros

    def grads(cache, R_out, R_state):
        out, state, _ = op.forward(**arrays, **forward_kwargs)
        d_out = R_out[0] if not isinstance(out, (tuple, list)) else R_out
        if state is None:  # a stateless op
            d_state = None
        else:
            d_state = R_state[0] if not isinstance(state, (tuple, list)) else R_state
        return op.backward(cache, d_out, d_state)

    title = f"check_op({getattr(op, '__name__', type(op).__name__)})"
    return _run_check(title, run, arrays, grads, rng=rng, eps=eps, tol=tol,
                      max_elements=max_elements, skip=skip)


def check_cell(cell: Any, params: Mapping[str, np.ndarray], x: np.ndarray, state0: Any = None,
               *, seed: int = 0, eps: float = DEFAULT_EPS, tol: float = DEFAULT_TOL,
               max_elements: int | None = None,
               forward_options: Mapping[str, Any] | None = None,
               **forward_kwargs) -> GradcheckReport:
    """Check ``cell.backward`` for every parameter, ``x`` and ``state0``.

    Args:
        cell: a module or object with ``forward(params, x, state0, **kw) ->
            (y, state, cache)`` and ``backward(params, cache, dy, dstate) ->
            dict`` (DESIGN §4 cell API, or :func:`minirec.bptt.make_cell`).
        params: the parameter dict; every key is checked.
        x: ``(B, T, D)`` input.
        state0: initial state (array or tuple of arrays); ``None`` is checked
            as the cell's ``zero_state(params, B, float64)`` when it has one;
            a cell without the attribute runs ``forward`` with ``None`` and is
            checked from zeros shaped like the final state; a cell whose
            ``zero_state`` is ``None`` (``bptt.make_cell`` without one) needs
            ``state0`` (a ``ValueError`` otherwise).
        seed: as in :func:`check_op`.
        eps: as in :func:`check_op`.
        tol: as in :func:`check_op`.
        max_elements: as in :func:`check_op`.
        **forward_kwargs: passed to ``forward`` unchanged and not checked.
        forward_options: a dict of more keyword arguments for ``forward``, for a
            name this function takes itself: ``forward_options={"eps": 1e-3}``
            gives the layer-normalised LSTM its layer norms' ``eps`` while
            ``eps=`` stays the finite-difference step.

    Returns:
        A :class:`GradcheckReport` over every key of ``params``, ``"x"`` and
        ``"state0"``.

    Raises:
        TypeError: a parameter, ``x`` or ``state0`` is not floating or complex.
        ValueError: as in :func:`check_op`; ``state0=None`` for a cell without
            ``zero_state``.
    """
    _check_options(eps, tol, max_elements)
    forward_kwargs = _merge_forward_kwargs(forward_kwargs, forward_options)
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
    title = f"check_cell({getattr(cell, '__name__', type(cell).__name__)})"
    rng = np.random.default_rng(seed)
    params64 = {k: _to64(v) for k, v in params.items()}
    x64 = _to64(x)
    holder = {"state0": _to64(state0)}
    how = ("check_cell differentiates every parameter, x and state0; pass "
           "non-differentiable arguments as keyword arguments, which go to forward unchanged")
    _check_differentiable({**params64, "x": x64, "state0": holder["state0"]}, (), "check_cell",
                          how)
    V.array("x", x64)

    def run():
        y, state, cache = cell.forward(params64, x64, holder["state0"], **forward_kwargs)
        return _as_tuple(y), _as_tuple(state), cache

    zero_state = getattr(cell, "zero_state", None)
    if holder["state0"] is None and callable(zero_state):
        # the cell's own empty state (for Aaren that is m = −inf, not 0)
        holder["state0"] = _to64(zero_state(params64, x64.shape[0], x64.dtype))
    elif holder["state0"] is None and hasattr(cell, "zero_state"):
        raise ValueError(f"state0: expected an initial state, got None: {title} needs state0 "
                         f"because the cell has no zero_state (pass state0, or give "
                         f"bptt.make_cell a zero_state(params, batch_size, dtype))")
    if holder["state0"] is None:
        _, states, _ = run()
        zeros = tuple(np.zeros_like(s) for s in states)
        holder["state0"] = zeros[0] if len(zeros) == 1 else zeros

    def grads(cache, R_out, R_state):
        _, state, _ = cell.forward(params64, x64, holder["state0"], **forward_kwargs)
        d_state = R_state if isinstance(state, (tuple, list)) else R_state[0]
        return cell.backward(params64, cache, R_out[0], d_state)

    arrays = dict(params64)
    arrays["x"] = x64
    arrays["state0"] = holder["state0"]
    return _run_check(title, run, arrays, grads, rng=rng, eps=eps, tol=tol,
                      max_elements=max_elements, skip=())
