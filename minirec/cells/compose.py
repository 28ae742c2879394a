"""Stacked and bidirectional cells, built from any cell with the DESIGN §4 API.

Dimension key: B batch, T time, D input size, H hidden size, L layers.

``stack(cells)`` feeds each layer's output sequence to the next layer (layer 0
reads ``x``), like ``torch.nn.LSTM(num_layers=L)``:

    y^0 = x,   y^{l+1}, s_T^l = cell_l(y^l, s_0^l)   for l = 0 … L−1,   y = y^L

``bidirectional(cell)`` runs one copy of the cell forward in time and another
over the time-reversed sequence, and concatenates them on the feature axis,
like ``torch.nn.LSTM(bidirectional=True)``:

    y^→, s^→ = cell_fwd(x, s_0^→)
    ỹ, s^←   = cell_rev(flip_t(x), s_0^←)
    y        = concat(y^→, flip_t(ỹ))                 (B, T, H_fwd + H_rev)

so ``y[:, t, H:]`` has seen ``x[:, t:]`` and ``s^←`` is the reverse direction's
state after reading ``x[:, 0]`` last (PyTorch's ``h_n`` for that direction).
``stack([bidirectional(lstm)] * L)`` is ``torch.nn.LSTM(num_layers=L,
bidirectional=True)``.

Backward (``dy`` from above, ``ds`` for the final states):

    stack:          dy^L = dy;  dy^l, ds_0^l, dθ_l = cell_l.backward(dy^{l+1}, ds_T^l),
                    l = L−1 … 0;  dx = dy^0
    bidirectional:  dx = dx^→ + flip_t(dx̃),  where dx^→ comes back from
                    dy[..., :H_fwd] and dx̃ from flip_t(dy[..., H_fwd:])

**Parameters** are one flat dict with prefixed keys, so that
:func:`minirec.gradcheck.check_cell` and optimisers see plain arrays:
``"l0.W_ih", "l0.W_hh", …, "l1.W_ih", …`` for a stack, ``"fwd.W_ih", …,
"rev.W_ih", …`` for the two directions, and both nested for a stack of
bidirectional layers (``"l1.rev.W_hh"``).

**States** are one flat tuple of arrays: the inner cells' states in order
(layer 0 first; forward direction before reverse), each cell's state
flattened (an array is one entry, an LSTM's ``(h, c)`` two). For example
``stack([lstm, lstm])`` has state ``(h_l0, c_l0, h_l1, c_l1)`` and
``bidirectional(gru)`` has ``(h_fwd, h_rev)``. PyTorch's ``h_n`` of shape
``(L·dirs, B, H)`` is ``np.stack(state[0::2])`` for LSTMs and
``np.stack(state)`` for RNNs/GRUs. ``state0=None`` means zeros; the gradient
of the final state may be ``None`` or a tuple with ``None`` entries.

Keyword arguments of ``forward`` (``method``, ``chunk_size``, ``backend``,
``nonlinearity``, …) go to every inner cell unchanged; ``method``,
``chunk_size`` and ``backend`` are checked by the wrapper first (and passed on
only when given). A wrapper's ``METHODS`` and ``BACKENDS`` are those shared by
all its cells.

To split a given ``state0`` among the cells the wrapper asks each cell's
``zero_state(params, batch_size, dtype)`` for its structure; a cell without one
is run for a single step with ``state0=None`` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V

Cell = Any  # a module or object with the DESIGN §4 cell API


# ---------------------------------------------------------------------------
# helpers shared by the two wrappers
# ---------------------------------------------------------------------------

def _name(cell: Cell) -> str:
    return str(getattr(cell, "__name__", type(cell).__name__)).rsplit(".", 1)[-1]


def _common(cells: Sequence[Cell], attr: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """The entries of ``cell.<attr>`` shared by all cells, in the first cell's order."""
    lists = [tuple(getattr(c, attr, default)) for c in cells]
    shared = tuple(m for m in lists[0] if all(m in other for other in lists[1:]))
    if not shared:
        raise ValueError(f"compose: the cells share no {attr}: got {lists}")
    return shared


def _output_size(cell: Cell, hidden_size: int) -> int:
    """Feature size of ``cell``'s output: ``cell.output_size(H)`` if it has one, else H."""
    f = getattr(cell, "output_size", None)
    return int(f(hidden_size)) if callable(f) else hidden_size


def _flat(state) -> tuple:
    return tuple(state) if isinstance(state, (tuple, list)) else (state,)


def _unflat(entries: Sequence, is_tuple: bool):
    return tuple(entries) if is_tuple else entries[0]


def _sub(params: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def _check_keys(where: str, params: Any, prefixes: Sequence[str]) -> None:
    if not isinstance(params, dict):
        raise TypeError(f"{where}: params: expected a dict, got {type(params).__name__}")
    extra = sorted(k for k in params if not any(k.startswith(p) for p in prefixes))
    if extra:
        raise ValueError(f"{where}: params: expected keys starting with {tuple(prefixes)}, "
                         f"got unexpected keys {extra}")


def _options(where: str, methods: tuple, backends: tuple, method: str | None,
             chunk_size: int | None, backend: str | None, kw: dict) -> dict:
    """Check the options every cell takes and return the keyword arguments for
    the inner cells (the options given, and ``kw`` unchanged)."""
    if method is not None:
        V.choice("method", method, methods)
    V.positive_int("chunk_size", chunk_size, allow_none=True)
    if backend is not None:
        _backend.resolve(backend, backends, what=where)
    given = {"method": method, "chunk_size": chunk_size, "backend": backend}
    return {**kw, **{k: v for k, v in given.items() if v is not None}}


def _state_entries(name: str, state) -> tuple | None:
    if state is None:
        return None
    if not isinstance(state, (tuple, list)):
        raise TypeError(f"{name}: expected a flat tuple of state arrays (see "
                        f"minirec.cells.compose), got {type(state).__name__}")
    return tuple(state)


def _layout(cell: Cell, params: dict, x: np.ndarray, kw: dict) -> tuple[int, bool]:
    """``(number of arrays, is a tuple)`` of ``cell``'s state."""
    # a wrapper's zero_state needs every inner cell to have one; the probe does not
    wrapper = isinstance(cell, (Stack, Bidirectional))
    zero_state = None if wrapper else getattr(cell, "zero_state", None)
    s = None
    if callable(zero_state):
        try:
            s = zero_state(params, 1, x.dtype)
        except (KeyError, IndexError, AttributeError, TypeError, ValueError):
            s = None  # bad params: the probe below lets the cell's own checks say what
    if s is None:  # one step from the default state shows the structure
        _, s, _ = cell.forward(params, x[:1, :1], None, **kw)
    return (len(s), True) if isinstance(s, (tuple, list)) else (1, False)


def _take(name: str, entries: tuple | None, pos: int, layout: tuple[int, bool], who: str):
    """The state of one inner cell: ``entries[pos : pos + n]``, unflattened."""
    if entries is None:
        return None
    n, is_tuple = layout
    if pos + n > len(entries):
        raise ValueError(f"{name}: {who} needs entries {pos}..{pos + n - 1} of the flat state "
                         f"tuple, got a tuple of {len(entries)} arrays")
    return _unflat(entries[pos:pos + n], is_tuple)


def _count(name: str, entries: tuple | None, used: int) -> None:
    if entries is not None and len(entries) != used:
        raise ValueError(f"{name}: expected a flat tuple of {used} state arrays, "
                         f"got {len(entries)}")


class InnerCache(NamedTuple):
    """One inner cell's part of a wrapper's cache."""

    cache: Any                # the inner cell's own cache
    layout: tuple[int, bool]  # its state: (number of arrays, is a tuple)
    pos: int                  # where its arrays start in the flat state tuple
    size: int                 # feature size of its output


class ComposedCache(NamedTuple):
    """What :meth:`Stack.backward` / :meth:`Bidirectional.backward` need from
    their forward.

    Fields:
        wrapper: the wrapper's name (``"stack(lstm, lstm)"``): a cache made by
            another wrapper is refused.
        inner: one :class:`InnerCache` per layer (stack) or direction
            (bidirectional), in order.
        y_like: zeros shaped and typed like ``y`` (a read-only view that holds
            no memory): what ``dy`` is checked against.
        state_like: the same for every array of the flat final state.
        param_shapes: ``{name: shape}`` of the flat params the forward ran with.
    """

    wrapper: str
    inner: tuple
    y_like: Any
    state_like: tuple
    param_shapes: dict




def _make_cache(wrapper: str, inner: list, y, final: tuple, params: dict) -> ComposedCache:
    return ComposedCache(wrapper, tuple(inner), V.zeros_view(y),
                         tuple(V.zeros_view(s) for s in final), V.param_shapes(params))


def _check_backward(where: str, params: Any, cache: Any, dy, dstate):
    """The checks of both wrappers' ``backward``; returns ``dstate``'s entries
    (a flat tuple, or ``None``)."""
    V.cache(where, cache, ComposedCache)
    if cache.wrapper != where:
        raise TypeError(f"{where}: cache: expected the cache returned by {where}'s forward, "
                        f"got one returned by {cache.wrapper}'s")
    V.params_match(where, params, cache.param_shapes)
    V.grad_like("dy", dy, cache.y_like, "y")
    return V.grad_state("dstate", dstate, cache.state_like)


def _call(where: str, fn: Callable, *args, **kw):
    """Call an inner cell, prefixing its error messages with where it sits."""
    try:
        return fn(*args, **kw)
    except (ValueError, TypeError) as e:
        cls = TypeError if isinstance(e, TypeError) else ValueError
        raise cls(f"{where}: {e}") from e


def _init(cell: Cell, rng, input_size: int, hidden_size: int, dtype, prefix: str) -> dict:
    init = getattr(cell, "init_params", None)
    if not callable(init):
        raise TypeError(f"compose: {_name(cell)} has no init_params(rng, input_size, "
                        f"hidden_size, dtype); build its params yourself (keys '{prefix}<name>')")
    return {prefix + k: v for k, v in init(rng, input_size, hidden_size, dtype=dtype).items()}


def _zero_state(cells_and_params, batch_size: int, dtype) -> tuple:
    out: tuple = ()
    for cell, p in cells_and_params:
        zero_state = getattr(cell, "zero_state", None)
        if not callable(zero_state):
            raise ValueError(f"compose: {_name(cell)} has no zero_state(params, batch_size, "
                             "dtype); pass state0 explicitly")
        out += _flat(zero_state(p, batch_size, dtype))
    return out


# ---------------------------------------------------------------------------
# stack
# ---------------------------------------------------------------------------

class Stack:
    """Layers run one after another in depth; see :func:`stack`."""

    def __init__(self, cells: Sequence[Cell]) -> None:
        cells = tuple(cells)
        if not cells:
            raise ValueError("stack: expected at least one cell, got an empty list")
        self.cells = cells
        self.METHODS = _common(cells, "METHODS", ("recurrent",))
        self.BACKENDS = _common(cells, "BACKENDS", ("numpy",))
        self.__name__ = f"stack({', '.join(_name(c) for c in cells)})"
        self.prefixes = tuple(f"l{k}." for k in range(len(cells)))

    def __repr__(self) -> str:
        return self.__name__

    def output_size(self, hidden_size: int) -> int:
        """Feature size of ``y``: the last layer's output size."""
        return _output_size(self.cells[-1], hidden_size)

    def init_params(self, rng: np.random.Generator, input_size: int, hidden_size: int,
                    dtype=np.float64) -> dict[str, np.ndarray]:
        """Each layer's ``init_params``, keys prefixed ``"l<k>."``; layer 0 reads
        ``input_size`` features, layer k > 0 the output size of layer k − 1."""
        params, d = {}, input_size
        for prefix, cell in zip(self.prefixes, self.cells):
            params.update(_init(cell, rng, d, hidden_size, dtype, prefix))
            d = _output_size(cell, hidden_size)
        return params

    def zero_state(self, params: dict, batch_size: int, dtype=None) -> tuple:
        """Zeros for every layer's state, as one flat tuple."""
        return _zero_state([(c, _sub(params, p)) for p, c in zip(self.prefixes, self.cells)],
                           batch_size, dtype)

    def forward(self, params: dict, x: np.ndarray, state0: tuple | None = None, *,
                method: str | None = None, chunk_size: int | None = None,
                backend: str | None = None, **kw) -> tuple[np.ndarray, tuple, ComposedCache]:
        """Run the layers over ``x (B, T, D)``.

        Args:
            params: flat dict with keys ``"l<k>.<name>"``.
            x: ``(B, T, D)``.
            state0: flat tuple of every layer's initial state, or ``None`` (zeros).
            method: checked, then passed to every layer (when given; otherwise
                each layer's default).
            chunk_size: the same.
            backend: the same.
            **kw: passed to every layer's ``forward`` (``nonlinearity``, …).

        Returns:
            ``y (B, T, H_out)`` of the last layer, the flat tuple of final
            states, and the cache for :meth:`backward`.
        """
        kw = _options(self.__name__, self.METHODS, self.BACKENDS, method, chunk_size,
                      backend, kw)
        _check_keys(self.__name__, params, self.prefixes)
        V.array("x", x, ndim=3)
        V.time_steps("x", x)
        entries = _state_entries("state0", state0)
        inp, pos, inner, final = x, 0, [], ()
        for k, (prefix, cell) in enumerate(zip(self.prefixes, self.cells)):
            where = f"{self.__name__} layer {k} (params '{prefix}*')"
            p = _sub(params, prefix)
            layout = _call(where, _layout, cell, p, inp, kw) if entries is not None else None
            s0 = _take("state0", entries, pos, layout, f"layer {k}")
            inp, s, cache = _call(where, cell.forward, p, inp, s0, **kw)
            layout = (len(s), True) if isinstance(s, (tuple, list)) else (1, False)
            inner.append(InnerCache(cache, layout, len(final), inp.shape[-1]))
            pos += layout[0]
            final += _flat(s)
        _count("state0", entries, pos)
        return inp, final, _make_cache(self.__name__, inner, inp, final, params)

    def backward(self, params: dict, cache: ComposedCache, dy: np.ndarray | None,
                 dstate: tuple | None = None) -> dict:
        """Back through the layers, last first.

        ``dy`` like ``y`` or ``None``; ``dstate`` a flat tuple like the final
        state (``None`` entries mean zeros) or ``None``. Returns every
        ``"l<k>.<name>"`` gradient, ``"x" (B, T, D)`` and ``"state0"`` (flat
        tuple like the state).
        """
        entries = _check_backward(self.__name__, params, cache, dy, dstate)
        grads: dict = {}
        dstate0: list = [()] * len(cache.inner)
        d = dy
        for k in reversed(range(len(cache.inner))):
            inner, prefix = cache.inner[k], self.prefixes[k]
            g = dict(_call(f"{self.__name__} layer {k} (params '{prefix}*')",
                           self.cells[k].backward, _sub(params, prefix), inner.cache, d,
                           _take("dstate", entries, inner.pos, inner.layout, f"layer {k}")))
            d = g.pop("x")
            dstate0[k] = _flat(g.pop("state0"))
            grads.update({prefix + name: v for name, v in g.items()})
        grads["x"] = d
        grads["state0"] = sum(dstate0, ())
        return grads


def stack(cells: Sequence[Cell]) -> Stack:
    """Stack cells in depth: layer k's output sequence is layer k+1's input.

    ``cells`` are modules or objects with the DESIGN §4 cell API (another
    wrapper included), e.g. ``stack([lstm, lstm])`` for PyTorch's
    ``nn.LSTM(num_layers=2)`` or ``stack([bidirectional(gru)] * 3)``.
    The result has ``init_params``, ``zero_state``, ``forward``, ``backward``,
    ``METHODS``, ``BACKENDS``; parameter keys are ``"l<k>.<name>"``, the state
    a flat tuple (module docstring).
    """
    return Stack(cells)


# ---------------------------------------------------------------------------
# bidirectional
# ---------------------------------------------------------------------------

class Bidirectional:
    """A cell run forward and backward in time; see :func:`bidirectional`."""

    prefixes = ("fwd.", "rev.")

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.METHODS = _common([cell], "METHODS", ("recurrent",))
        self.BACKENDS = _common([cell], "BACKENDS", ("numpy",))
        self.__name__ = f"bidirectional({_name(cell)})"

    def __repr__(self) -> str:
        return self.__name__

    def output_size(self, hidden_size: int) -> int:
        """Feature size of ``y``: twice the cell's."""
        return 2 * _output_size(self.cell, hidden_size)

    def init_params(self, rng: np.random.Generator, input_size: int, hidden_size: int,
                    dtype=np.float64) -> dict[str, np.ndarray]:
        """The cell's ``init_params`` twice, keys prefixed ``"fwd."`` and ``"rev."``."""
        params = {}
        for prefix in self.prefixes:
            params.update(_init(self.cell, rng, input_size, hidden_size, dtype, prefix))
        return params

    def zero_state(self, params: dict, batch_size: int, dtype=None) -> tuple:
        """Zeros for both directions' states, as one flat tuple."""
        return _zero_state([(self.cell, _sub(params, p)) for p in self.prefixes],
                           batch_size, dtype)

    def forward(self, params: dict, x: np.ndarray, state0: tuple | None = None, *,
                method: str | None = None, chunk_size: int | None = None,
                backend: str | None = None, **kw) -> tuple[np.ndarray, tuple, ComposedCache]:
        """Run both directions over ``x (B, T, D)``.

        Args:
            params: flat dict with keys ``"fwd.<name>"`` and ``"rev.<name>"``.
            x: ``(B, T, D)``.
            state0: flat tuple (forward direction's state, then reverse's) or
                ``None`` (zeros).
            method: checked, then passed to both directions (when given;
                otherwise the cell's default).
            chunk_size: the same.
            backend: the same.
            **kw: passed to both directions' ``forward``.

        Returns:
            ``y (B, T, H_fwd + H_rev)`` = concat(forward outputs, reverse outputs
            put back in time order), the flat tuple of final states (the
            reverse one after reading ``x[:, 0]``), and the cache.
        """
        kw = _options(self.__name__, self.METHODS, self.BACKENDS, method, chunk_size,
                      backend, kw)
        _check_keys(self.__name__, params, self.prefixes)
        V.array("x", x, ndim=3)
        V.time_steps("x", x)
        xp = _backend.xp_of(x)
        entries = _state_entries("state0", state0)
        inputs = (x, xp.ascontiguousarray(x[:, ::-1]))
        pos, inner, ys, final = 0, [], [], ()
        for prefix, inp in zip(self.prefixes, inputs):
            where = f"{self.__name__} {prefix[:-1]} direction (params '{prefix}*')"
            p = _sub(params, prefix)
            layout = _call(where, _layout, self.cell, p, inp, kw) if entries is not None else None
            s0 = _take("state0", entries, pos, layout, f"the {prefix[:-1]} direction")
            y, s, cache = _call(where, self.cell.forward, p, inp, s0, **kw)
            layout = (len(s), True) if isinstance(s, (tuple, list)) else (1, False)
            inner.append(InnerCache(cache, layout, len(final), y.shape[-1]))
            ys.append(y)
            pos += layout[0]
            final += _flat(s)
        _count("state0", entries, pos)
        y = xp.concatenate([ys[0], ys[1][:, ::-1]], axis=-1)
        return y, final, _make_cache(self.__name__, inner, y, final, params)

    def backward(self, params: dict, cache: ComposedCache, dy: np.ndarray | None,
                 dstate: tuple | None = None) -> dict:
        """Back through both directions.

        ``dy`` like ``y`` or ``None``; ``dstate`` a flat tuple like the final
        state (``None`` entries mean zeros) or ``None``. Returns every
        ``"fwd.<name>"``/``"rev.<name>"`` gradient, ``"x" (B, T, D)`` and
        ``"state0"`` (flat tuple like the state).
        """
        entries = _check_backward(self.__name__, params, cache, dy, dstate)
        dys: tuple = (None, None)
        if dy is not None:
            xp = _backend.xp_of(dy)
            H = cache.inner[0].size
            dys = (dy[..., :H], xp.ascontiguousarray(dy[:, ::-1, H:]))
        grads: dict = {}
        dxs, dstate0 = [], ()
        for prefix, inner, d in zip(self.prefixes, cache.inner, dys):
            g = dict(_call(f"{self.__name__} {prefix[:-1]} direction (params '{prefix}*')",
                           self.cell.backward, _sub(params, prefix), inner.cache, d,
                           _take("dstate", entries, inner.pos, inner.layout, prefix[:-1])))
            dxs.append(g.pop("x"))
            dstate0 += _flat(g.pop("state0"))
            grads.update({prefix + name: v for name, v in g.items()})
        grads["x"] = dxs[0] + dxs[1][:, ::-1]
        grads["state0"] = dstate0
        return grads


def bidirectional(cell: Cell) -> Bidirectional:
    """Run ``cell`` forward in time and (with its own parameters) backward in time.

    ``bidirectional(lstm)`` is PyTorch's ``nn.LSTM(bidirectional=True)``: the
    output concatenates both directions on the feature axis, parameter keys are
    ``"fwd.<name>"`` and ``"rev.<name>"``, the state is a flat tuple (forward
    direction's arrays first). Works for any cell with the DESIGN §4 API.
    """
    return Bidirectional(cell)
