"""Generic parallel prefix scan for any associative operator.

Given elements ``x_0, x_1, …, x_{T-1}`` along ``axis`` and an associative
``combine(earlier, later)``, :func:`scan` returns the inclusive prefixes

    y_t = x_0 ∘ x_1 ∘ … ∘ x_t,        where  p ∘ q = combine(p, q).

It equals this loop (the definition), for any length T ≥ 1::

    y = [x_0]
    for t in range(1, T):
        y.append(combine(y[-1], x_t))

An element is a tuple of arrays that share the scan axis (e.g. ``(a, b)`` for
the affine operator); ``combine`` receives and returns such tuples, each array
holding a *slab* of positions along ``axis`` — it must be written elementwise
over that axis, as in ``jax.lax.associative_scan``.

Two parallel algorithms, each a loop over ``O(log T)`` vectorised levels:

``hillis_steele``  (Hillis & Steele 1986): at level d, every position t ≥ 2^d
    takes ``combine(y[t − 2^d], y[t])``. Depth ⌈log2 T⌉, work O(T log T).

``blelloch``  (Blelloch 1990, work-efficient): an up-sweep builds partial
    sums on a binary tree (``y[t] ← combine(y[t − s/2], y[t])`` for
    t = s−1, 2s−1, …), then a down-sweep fills the positions in between
    (``y[t + s/2] ← combine(y[t], y[t + s/2])``). This is the inclusive form
    of Blelloch's sweep, which needs no identity element, so it works for any
    associative operator and any T. Depth 2⌈log2 T⌉, work < 2T.

``reverse=True`` scans from the end (``y_t = x_t ∘ … ∘ x_{T-1}`` in flipped
order): it equals flipping along ``axis``, scanning, and flipping back, so
``combine``'s ``earlier`` argument is the element nearer the end of the sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ALGORITHMS = ("blelloch", "hillis_steele", "sequential")

Elems = tuple  # a tuple of arrays sharing the scan axis


def _take(x: np.ndarray, axis: int, sl: slice) -> np.ndarray:
    index = [slice(None)] * x.ndim
    index[axis] = sl
    return x[tuple(index)]


def _put(x: np.ndarray, axis: int, sl: slice, value: np.ndarray) -> None:
    index = [slice(None)] * x.ndim
    index[axis] = sl
    x[tuple(index)] = value


def scan(combine: Callable[[Elems, Elems], Elems], elems: Sequence[np.ndarray] | np.ndarray,
         axis: int = 1, reverse: bool = False, *, algorithm: str = "blelloch",
         ) -> tuple[np.ndarray, ...] | np.ndarray:
    """Inclusive scan of ``elems`` along ``axis`` with ``combine(earlier, later)``.

    Args:
        combine: associative operator on tuples of arrays (slabs along ``axis``).
        elems: an array or a tuple/list of arrays with equal length along ``axis``.
        axis: the scan axis (time is axis 1 in minirec).
        reverse: scan from the end of the sequence.
        algorithm: ``"blelloch"`` (work-efficient), ``"hillis_steele"``, or
            ``"sequential"`` (the definition's loop, for testing).

    Returns:
        The prefixes, in the same structure as ``elems`` (new arrays; the
        inputs are never written to).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")
    single = isinstance(elems, np.ndarray)
    xs = [elems] if single else list(elems)
    if not xs:
        raise ValueError("elems: expected at least one array, got none")
    ndim = xs[0].ndim
    ax = axis if axis >= 0 else axis + ndim
    if not 0 <= ax < ndim:
        raise ValueError(f"axis: expected an axis of a {ndim}-d array, got {axis}")
    n = xs[0].shape[ax]
    for i, x in enumerate(xs):
        if x.ndim <= ax or x.shape[ax] != n:
            raise ValueError(
                f"elems[{i}]: expected length {n} along axis {axis}, got shape {x.shape}"
            )
    if n == 0:
        raise ValueError(f"elems: expected length >= 1 along axis {axis}, got 0")

    def wrapped(p, q):
        out = combine(tuple(p), tuple(q))
        out = (out,) if isinstance(out, np.ndarray) else tuple(out)
        if len(out) != len(xs):
            raise ValueError(
                f"combine: expected a tuple of {len(xs)} arrays, got {len(out)}"
            )
        return out

    if reverse:
        xs = [np.flip(x, axis=ax) for x in xs]
    ys = [np.array(x, copy=True) for x in xs]  # never write into the caller's arrays

    if algorithm == "sequential":
        for t in range(1, n):
            prev = tuple(_take(y, ax, slice(t - 1, t)) for y in ys)
            cur = tuple(_take(y, ax, slice(t, t + 1)) for y in ys)
            for y, v in zip(ys, wrapped(prev, cur)):
                _put(y, ax, slice(t, t + 1), v)
    elif algorithm == "hillis_steele":
        d = 1
        while d < n:
            left = tuple(_take(y, ax, slice(0, n - d)) for y in ys)
            right = tuple(_take(y, ax, slice(d, n)) for y in ys)
            new = wrapped(left, right)  # computed from the old level before writing
            for y, v in zip(ys, new):
                _put(y, ax, slice(d, n), v)
            d *= 2
    else:  # blelloch: up-sweep then down-sweep
        s = 2
        while s <= n:
            half = s // 2
            count = len(range(s - 1, n, s))
            left = slice(half - 1, half - 1 + (count - 1) * s + 1, s)
            right = slice(s - 1, s - 1 + (count - 1) * s + 1, s)
            new = wrapped(tuple(_take(y, ax, left) for y in ys),
                          tuple(_take(y, ax, right) for y in ys))
            for y, v in zip(ys, new):
                _put(y, ax, right, v)
            s *= 2
        s //= 2
        while s >= 2:
            half = s // 2
            count = len(range(s - 1 + half, n, s))
            if count:
                left = slice(s - 1, s - 1 + (count - 1) * s + 1, s)
                right = slice(s - 1 + half, s - 1 + half + (count - 1) * s + 1, s)
                new = wrapped(tuple(_take(y, ax, left) for y in ys),
                              tuple(_take(y, ax, right) for y in ys))
                for y, v in zip(ys, new):
                    _put(y, ax, right, v)
            s //= 2

    if reverse:
        ys = [np.ascontiguousarray(np.flip(y, axis=ax)) for y in ys]
    return ys[0] if single else tuple(ys)
