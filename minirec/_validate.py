"""The one place for argument checks and their messages.

Every op, scan and cell calls these helpers so that bad input fails the same
way everywhere: a ``TypeError`` for a wrong type or dtype, a ``ValueError`` for
a wrong shape, value, method or backend, each message naming the argument, what
was expected and what was given.

Shapes are written as tuples of names, e.g. ``("B", "T", "D")``; names bind
on first use inside one :class:`Shapes` instance, so ``x (B, T, D)`` and
``h0 (B, H)`` share ``B`` and a mismatch is reported with both shapes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from minirec._backend import xp_of

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_OPTIONS = {"check_finite": os.environ.get("MINIREC_CHECK_FINITE", "") not in ("", "0")}
COMPLEX_DTYPES = (np.dtype(np.complex64), np.dtype(np.complex128))
SUPPORTED_DTYPES = FLOAT_DTYPES + COMPLEX_DTYPES


def complex_dtype(dtype: Any) -> np.dtype:
    """The complex dtype of the same precision: float32 → complex64, float64 →
    complex128 (complex dtypes are returned as they are)."""
    return np.result_type(dtype, np.complex64)


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")


def array(name: str, x: Any, *, allow_complex: bool = True, ndim: int | None = None,
          min_ndim: int | None = None, allow_neg_inf: bool = False):
    """Check that ``x`` is a floating (or complex) array and return it unchanged.

    Accepts NumPy arrays and any array with ``shape``/``dtype`` (CuPy).
    Python lists and integer arrays are rejected with a ``TypeError``: silently
    casting them would hide a caller's mistake (an int array of gates, say).
    With :class:`check_finite` on, NaN/inf are refused (``−inf`` too, unless
    ``allow_neg_inf``: a running max of an empty prefix, a log gate of 0).
    """
    if not _is_array(x):
        raise TypeError(f"{name}: expected an ndarray, got {type(x).__name__}"
                        + (" (convert it with np.asarray)" if isinstance(x, (list, tuple)) else ""))
    dt = np.dtype(x.dtype)
    allowed = SUPPORTED_DTYPES if allow_complex else FLOAT_DTYPES
    if dt not in allowed:
        raise TypeError(
            f"{name}: expected dtype in {[str(d) for d in allowed]}, got {dt}"
        )
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(
            f"{name}: expected at least {min_ndim} dimensions, got shape {tuple(x.shape)}"
        )
    if _OPTIONS["check_finite"]:
        finite(name, x, allow_neg_inf=allow_neg_inf)
    return x


class check_finite:
    """The library's one switch for the NaN/inf check of every array argument.

    Off by default (NaN and inf then propagate causally, the same way in every
    method and backend). On, every array a forward or backward receives
    (inputs, parameters, initial states, upstream gradients) is checked and the
    first non-finite entry is reported::

        minirec.check_finite(True)            # on from now on
        with minirec.check_finite():          # on inside the block only
            rnn.forward(params, x)            # ValueError: x: expected finite
                                              # values, got nan at index (0, 3, 1)

    The environment variable ``MINIREC_CHECK_FINITE=1`` turns it on at import.
    """

    def __init__(self, enabled: bool = True) -> None:
        self._previous = _OPTIONS["check_finite"]
        _OPTIONS["check_finite"] = bool(enabled)

    def __enter__(self) -> check_finite:
        return self

    def __exit__(self, *exc: Any) -> None:
        _OPTIONS["check_finite"] = self._previous

    @staticmethod
    def enabled() -> bool:
        """Whether the check is on."""
        return _OPTIONS["check_finite"]


class Shapes:
    """Bind symbolic dimension names across several arrays and report mismatches.

    >>> s = Shapes()
    >>> s.check("x", np.zeros((2, 5, 3)), ("B", "T", "D"))
    >>> s.check("h0", np.zeros((2, 4)), ("B", "H"))
    >>> s["H"]
    4
    """

    def __init__(self, **known: int) -> None:
        self.dims: dict[str, int] = dict(known)
        self.where: dict[str, str] = {k: "given" for k in known}

    def __getitem__(self, key: str) -> int:
        return self.dims[key]

    def check(self, name: str, x: Any, spec: Sequence[str | int]) -> None:
        shape = tuple(x.shape)
        if len(shape) != len(spec):
            raise ValueError(
                f"{name}: expected shape {self._fmt(spec)} ({len(spec)}-d), got {shape}"
            )
        for i, (want, got) in enumerate(zip(spec, shape)):
            if isinstance(want, int):
                if got != want:
                    raise ValueError(
                        f"{name}: expected shape {self._fmt(spec)}, got {shape} "
                        f"(axis {i} must be {want})"
                    )
                continue
            if want in self.dims:
                if self.dims[want] != got:
                    raise ValueError(
                        f"{name}: expected shape {self._fmt(spec)}, got {shape}: "
                        f"{want}={got} disagrees with {want}={self.dims[want]} "
                        f"from {self.where[want]}"
                    )
            else:
                self.dims[want] = got
                self.where[want] = name

    def _fmt(self, spec: Sequence[str | int]) -> str:
        parts = []
        for s in spec:
            if isinstance(s, str) and s in self.dims:
                parts.append(f"{s}={self.dims[s]}")
            else:
                parts.append(str(s))
        return "(" + ", ".join(parts) + ")"


def same_shape(name: str, x: Any, like_name: str, like: Any) -> None:
    """Raise ``ValueError`` unless ``x.shape == like.shape``."""
    if tuple(x.shape) != tuple(like.shape):
        raise ValueError(
            f"{name}: expected shape {tuple(like.shape)} (the shape of {like_name}), "
            f"got {tuple(x.shape)}"
        )


def common_dtype(**arrays: Any) -> np.dtype:
    """The dtype the computation runs in: the inputs' common type.

    Real and complex may mix (a real gate with a complex input gives complex),
    but precisions may not: float32 with float64 is a ``TypeError``, since
    silently promoting would double the memory of a float32 run.
    """
    present = {k: np.dtype(v.dtype) for k, v in arrays.items() if v is not None}
    if not present:
        raise ValueError("no arrays given")
    precisions = {dt.itemsize // (2 if dt.kind == "c" else 1) for dt in present.values()}
    if len(precisions) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in present.items())
        raise TypeError(f"mixed precisions: expected all float32/complex64 or all "
                        f"float64/complex128, got {listing}")
    return np.result_type(*present.values())


def choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
    return value


def positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """Check a positive integer argument such as ``chunk_size``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    """Check a finite number ``> 0`` (a tolerance, a step size) and return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a positive finite number, got "
                        f"{type(value).__name__} {value!r}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def finite(name: str, x: Any, *, allow_neg_inf: bool = False) -> None:
    """Raise ``ValueError`` naming the first NaN/inf entry of ``x`` (its index and
    value) and how many there are (``−inf`` passes with ``allow_neg_inf``)."""
    ok = np.isfinite(x)
    if allow_neg_inf:
        ok = ok | (x == -np.inf)
    if hasattr(ok, "get") and not isinstance(ok, np.ndarray):  # CuPy: look on the host
        ok = ok.get()
        x = x.get()
    if not np.all(ok):
        bad = np.argwhere(~np.asarray(ok))
        first = tuple(int(i) for i in bad[0])
        raise ValueError(f"{name}: expected finite values, got {np.asarray(x)[first]} at index "
                         f"{first} ({len(bad)} non-finite entries; minirec.check_finite is on)")


def time_steps(name: str, x: Any) -> int:
    """``T = x.shape[1]``; a ``ValueError`` unless ``T ≥ 1`` (time is axis 1)."""
    if x.ndim < 2 or x.shape[1] < 1:
        raise ValueError(f"{name}: expected T >= 1 along axis 1 (time), got shape "
                         f"{tuple(x.shape)}")
    return int(x.shape[1])


def zeros_view(like: Any, shape: tuple | None = None, dtype: Any = None) -> Any:
    """A read-only array of zeros that holds one element of memory: shaped and
    typed like ``like`` (or ``shape``/``dtype``), on ``like``'s device (NumPy or
    CuPy). Caches keep these to check upstream gradients against (the
    ``y_like``/``state_like`` fields) without keeping the outputs alive."""
    xp = xp_of(like)
    return xp.broadcast_to(xp.zeros((), like.dtype if dtype is None else dtype),
                           like.shape if shape is None else shape)


def grad_like(name: str, g: Any, like: Any, like_name: str, *, fill: bool = False) -> Any:
    """Check an upstream gradient against the output ``like`` it belongs to.

    ``g`` is ``None`` or a float/complex array of ``like``'s shape; a complex
    gradient of a real output is refused (its imaginary part would be dropped
    silently). Either precision is accepted. With ``fill=True`` the result is
    ready for a kernel: ``None`` becomes zeros, and the array is cast to
    ``like``'s dtype (a new array when a cast is needed; never written to).
    """
    if g is None:
        return xp_of(like).zeros(like.shape, like.dtype) if fill else None
    array(name, g)
    same_shape(name, g, like_name, like)
    if np.dtype(g.dtype).kind == "c" and np.dtype(like.dtype).kind != "c":
        raise TypeError(f"{name}: expected a real gradient ({like_name} is {like.dtype}), "
                        f"got {g.dtype}")
    if fill:
        return g.astype(like.dtype, copy=False)
    return g


def grad_state(name: str, dstate: Any, state: Any, *, fill: bool = False) -> Any:
    """Check the gradient of a returned final state against that state.

    ``state`` is an array or a tuple of arrays (``(h, c)``); ``dstate`` is
    ``None`` or the same structure, each part ``None`` or an array of that
    part's shape (checked by :func:`grad_like`). With ``fill=True`` every
    ``None`` becomes zeros and parts are cast to the state's dtypes.
    """
    if not isinstance(state, (tuple, list)):
        if isinstance(dstate, (tuple, list)):
            raise TypeError(f"{name}: expected an array of shape {tuple(state.shape)} (the "
                            f"state's), got a {type(dstate).__name__} of length {len(dstate)}")
        return grad_like(name, dstate, state, "the state", fill=fill)
    if dstate is None:
        return tuple(xp_of(s).zeros(s.shape, s.dtype) for s in state) if fill else None
    if not isinstance(dstate, (tuple, list)) or len(dstate) != len(state):
        shapes = ", ".join(str(tuple(s.shape)) for s in state)
        got = (f"a {type(dstate).__name__} of length {len(dstate)}"
               if isinstance(dstate, (tuple, list)) else type(dstate).__name__)
        raise TypeError(f"{name}: expected a tuple of {len(state)} arrays ({shapes}, the "
                        f"state's structure), got {got}")
    return tuple(grad_like(f"{name}[{i}]", d, s, f"state[{i}]", fill=fill)
                 for i, (d, s) in enumerate(zip(dstate, state)))


def cache(where: str, c: Any, cls: type) -> Any:
    """Check that ``c`` is a cache made by ``where``'s forward (an instance of
    its cache class ``cls``), not a cache of another op or a hand-made dict."""
    if not isinstance(c, cls):
        got = type(c).__name__
        if isinstance(c, tuple) and hasattr(c, "_fields"):
            got += f" (from {type(c).__module__})"
        raise TypeError(f"{where}: cache: expected the cache returned by {where}'s forward "
                        f"({cls.__name__}), got {got}")
    return c


def params_match(where: str, p: Any, shapes: dict[str, tuple]) -> None:
    """Check that ``p`` has the keys and shapes of the parameters a forward ran
    with (``shapes`` = ``{name: shape}`` recorded in its cache)."""
    if not isinstance(p, dict):
        raise TypeError(f"{where}: params: expected a dict, got {type(p).__name__}")
    missing = [k for k in shapes if k not in p]
    extra = [k for k in p if k not in shapes]
    if missing or extra:
        raise ValueError(f"{where}: params: expected the keys of the forward's params "
                         f"{sorted(shapes)}, got {sorted(p)} (missing {missing}, "
                         f"unexpected {extra})")
    for k, shape in shapes.items():
        array(f"{where}: params[{k!r}]", p[k])
        if tuple(p[k].shape) != tuple(shape):
            raise ValueError(f"{where}: params[{k!r}]: expected shape {tuple(shape)} (as in the "
                             f"forward that made this cache), got {tuple(p[k].shape)}")


def param_shapes(p: dict) -> dict[str, tuple]:
    """``{name: shape}`` of a parameter dict, for a cache (see :func:`params_match`)."""
    return {k: tuple(v.shape) for k, v in p.items()}


def params(where: str, p: Any, spec: dict[str, Sequence[str | int]], shapes: Shapes) -> None:
    """Check a parameter dict: exactly the keys of ``spec``, each a float array of
    the named shape (dimension names bound in ``shapes``)."""
    if not isinstance(p, dict):
        raise TypeError(f"{where}: params: expected a dict, got {type(p).__name__}")
    missing = [k for k in spec if k not in p]
    extra = [k for k in p if k not in spec]
    if missing or extra:
        raise ValueError(
            f"{where}: params: expected keys {sorted(spec)}, got {sorted(p)} "
            f"(missing {missing}, unexpected {extra})"
        )
    for k, s in spec.items():
        array(f"{where}: {k}", p[k])
        shapes.check(f"{where}: {k}", p[k], s)


def state(name: str, s: Any, expected_shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Check one state array against its expected shape (dtype precision must match)."""
    array(name, s)
    if tuple(s.shape) != tuple(expected_shape):
        raise ValueError(f"{name}: expected shape {tuple(expected_shape)}, got {tuple(s.shape)}")
    common_dtype(**{name: s, "x": np.empty(0, dtype)})


def cell_inputs(where: str, p: Any, spec: dict[str, Sequence[str | int]], x: Any,
                state0: Any = None, state_spec: Any = ("B", "H"), *,
                complex_state: bool = False,
                state_names: Sequence[str] | None = None) -> tuple[np.dtype, Shapes]:
    """The checks every cell's ``forward`` makes, in one place.

    ``p``: real parameters with exactly the keys of ``spec`` (named shapes);
    ``x``: real ``(B, T, D)`` with ``T ≥ 1``; ``state0``: ``None``, an array of
    named shape ``state_spec``, or — when ``state_spec`` is a list of specs — a
    tuple of such arrays (``[("B", "H"), ("B", "H")]`` for the LSTM's ``(h, c)``).
    ``complex_state`` allows a complex state (LRU, S4D); ``state_names`` names
    the parts of a tuple state in messages (``("h0", "c0")``).

    Returns the computation dtype (the common dtype of ``x`` and ``p``) and the
    bound :class:`Shapes` (``shapes["H"]`` etc.).
    """
    shapes = Shapes()
    params(where, p, spec, shapes)
    for k, v in p.items():
        array(f"{where}: {k}", v, allow_complex=False)
    array("x", x, ndim=3, allow_complex=False)
    shapes.check("x", x, ("B", "T", "D"))
    time_steps("x", x)
    dtype = common_dtype(x=x, **p)
    if state0 is not None:
        specs = state_spec if isinstance(state_spec, list) else [state_spec]
        parts = state0 if isinstance(state_spec, list) else [state0]
        if isinstance(state_spec, list) and (not isinstance(state0, (tuple, list))
                                             or len(state0) != len(specs)):
            what = f"({', '.join(state_names)}) " if state_names else ""
            raise TypeError(f"{where}: state0: expected a tuple {what}of {len(specs)} arrays "
                            f"{', '.join(shapes._fmt(sp) for sp in specs)}, "
                            f"got {type(state0).__name__}"
                            + (f" of length {len(state0)}"
                               if isinstance(state0, (tuple, list)) else ""))
        for i, (part, sp) in enumerate(zip(parts, specs)):
            name = f"state0[{i}]" if isinstance(state_spec, list) else "state0"
            if state_names and isinstance(state_spec, list):
                name += f" ({state_names[i]})"
            array(name, part, allow_complex=complex_state)
            shapes.check(name, part, sp)
            common_dtype(**{name: part, "x": x})
    return dtype, shapes
