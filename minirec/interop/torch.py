"""PyTorch's ``torch.nn.RNN``, ``LSTM`` and ``GRU`` weights in and out of minirec.

minirec's cells ``rnn``, ``lstm`` and ``gru`` compute what PyTorch's modules
compute, with PyTorch's shapes and gate order (LSTM ``i, f, g, o``; GRU
``r, z, n``) under the paper's names. Only the keys differ. For layer ``k``
(torch's suffix ``_reverse`` is minirec's ``rev.`` direction):

    PyTorch key                shape         minirec name
    weight_ih_l{k}[_reverse]   (G·H, D_k)    W_ih
    weight_hh_l{k}[_reverse]   (G·H, H)      W_hh
    bias_ih_l{k}[_reverse]     (G·H,)        b_ih
    bias_hh_l{k}[_reverse]     (G·H,)        b_hh

    G = 1 (RNN), 4 (LSTM), 3 (GRU);  D_0 = D, D_k = dirs·H for k ≥ 1.

The prefix of a minirec key says where the cell sits in the composition
(``minirec.cells.compose``) that computes what the torch module computes:

    torch.nn.LSTM(D, H, ...)    minirec cell                 weight_ih_l0
    (one layer)                 lstm                         W_ih
    bidirectional=True          bidirectional(lstm)          fwd.W_ih
    num_layers=L                stack([lstm] * L)            l0.W_ih
    both                        stack([bidirectional(lstm)] * L)
                                                             l0.fwd.W_ih

so ``weight_hh_l1_reverse`` of a two-layer bidirectional module is
``"l1.rev.W_hh"``. The same holds for ``RNN`` (with ``rnn``; its
``nonlinearity`` is a keyword of ``rnn.forward``) and ``GRU`` (with ``gru``).

**States.** PyTorch's ``h_0``/``h_n`` are ``(L·dirs, B, H)`` arrays (and
``c_0``/``c_n`` for an LSTM); minirec's state is the cell's own (``h``, or
``(h, c)``) for one cell, and a flat tuple for a composition: layer 0 first,
forward before reverse (the order of torch's first axis), ``h, c`` per LSTM
cell. ``state_from_torch`` and ``state_to_torch`` convert.

**Inputs.** minirec is batch-first: ``x (B, T, D)``. A module made with
``batch_first=False`` (PyTorch's default) reads ``(T, B, D)``; its weights are
the same, give minirec ``x.transpose(1, 0, 2)``.

**Not supported** (a ``ValueError`` naming the option): ``proj_size > 0``
(``weight_hr_l*``), ``bias=False`` (minirec's cells always have ``b_ih`` and
``b_hh``), ``dropout > 0`` between layers of a module in training mode
(``compose.stack`` has no dropout; after ``module.eval()`` the module computes
what minirec computes), the single-step ``torch.nn.RNNCell``/``LSTMCell``/
``GRUCell`` (pass their ``state_dict`` with the keys suffixed ``_l0``), and
dtypes other than float32/float64.

PyTorch is imported only by ``to_torch`` (which builds a module);
``from_torch`` reads a module or a state dict of tensors or NumPy arrays,
``to_state_dict`` writes NumPy arrays under PyTorch's keys.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from minirec import _validate as V
from minirec.cells import compose, gru, lstm, rnn

NAMES = ("W_ih", "W_hh", "b_ih", "b_hh")
TORCH_NAMES = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
MODES = {1: "RNN", 4: "LSTM", 3: "GRU"}  # gates per cell G → torch.nn class
CELLS = {"RNN": rnn, "LSTM": lstm, "GRU": gru}

_LAYER = r"(?P<layer>0|[1-9][0-9]*)"
_MINIREC_KEY = re.compile(rf"(?:l{_LAYER}\.)?(?:(?P<dir>fwd|rev)\.)?(?P<name>W_ih|W_hh|b_ih|b_hh)")
_TORCH_KEY = re.compile(rf"(?P<kind>weight|bias)_(?P<io>ih|hh)_l{_LAYER}(?P<rev>_reverse)?")
_PROJECTION_KEY = re.compile(r"weight_hr_l[0-9]+(_reverse)?")


class Imported(NamedTuple):
    """What ``from_torch`` returns; unpacks as ``cell, params, options``.

    Fields:
        cell: the minirec cell that computes what the torch module computes:
            ``rnn``, ``lstm`` or ``gru`` (modules) for one layer in one
            direction, else ``compose.bidirectional(cell)``,
            ``compose.stack([cell] * L)`` or
            ``compose.stack([compose.bidirectional(cell)] * L)``.
        params: flat dict of NumPy arrays under minirec's keys (copies: training
            on one side leaves the other alone).
        options: keyword arguments for ``cell.forward`` (and for
            ``to_torch``): ``{"nonlinearity": "tanh" | "relu"}`` for an
            RNN, ``{}`` for an LSTM or GRU.
    """

    cell: Any
    params: dict
    options: dict


class _Layout(NamedTuple):
    """The torch module a set of weights belongs to."""

    mode: str             # "RNN", "LSTM" or "GRU"
    num_layers: int
    bidirectional: bool
    input_size: int
    hidden_size: int
    dtype: np.dtype
    stacked: bool         # minirec keys carry "l<k>." (a compose.stack)

    @property
    def single(self) -> bool:
        """One bare cell: minirec keys without prefixes."""
        return not (self.stacked or self.bidirectional)

    def slots(self) -> list[tuple[int, str]]:
        """``(layer, direction)`` in PyTorch's order: l0, l0_reverse, l1, …"""
        dirs = ("fwd", "rev") if self.bidirectional else ("fwd",)
        return [(k, d) for k in range(self.num_layers) for d in dirs]


# ---------------------------------------------------------------------------
# keys
# ---------------------------------------------------------------------------

def _torch_key(k: int, d: str, name: str) -> str:
    return f"{TORCH_NAMES[name]}_l{k}" + ("_reverse" if d == "rev" else "")


def _minirec_key(k: int, d: str, name: str, stacked: bool, bidirectional: bool) -> str:
    return (f"l{k}." if stacked else "") + (f"{d}." if bidirectional else "") + name


def _cell(layout: _Layout) -> Any:
    """The minirec cell or composition for ``layout``."""
    cell = CELLS[layout.mode]
    unit = compose.bidirectional(cell) if layout.bidirectional else cell
    return compose.stack([unit] * layout.num_layers) if layout.stacked else unit


def _name(layout: _Layout) -> str:
    """``"lstm"``, ``"stack(bidirectional(gru), bidirectional(gru))"``, …"""
    return str(_cell(layout).__name__).rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------
# arrays and checks
# ---------------------------------------------------------------------------

def _numpy(name: str, v: Any) -> np.ndarray:
    """A float32/float64 NumPy copy of a torch tensor, or of a NumPy/CuPy array."""
    if hasattr(v, "detach") and hasattr(v, "requires_grad"):  # a torch.Tensor
        if str(v.dtype) not in ("torch.float32", "torch.float64"):
            raise TypeError(f"{name}: expected a torch.float32 or torch.float64 tensor, got "
                            f"{v.dtype} (convert the module with .double() or .float())")
        return v.detach().cpu().resolve_neg().numpy().copy()
    V.array(name, v, allow_complex=False)
    if hasattr(v, "get") and not isinstance(v, np.ndarray):  # CuPy: to the host
        return np.asarray(v.get())
    return np.array(v, copy=True)


def _layout(where: str, arrays: dict, label, bidirectional: bool,
            stacked: bool) -> _Layout:
    """Check the weights of one torch RNN/LSTM/GRU module and say which it is.

    ``arrays`` maps ``(layer, direction, name)`` to an array, ``label(k, d, name)``
    is the user's key for messages. Every layer 0 … L−1 must have the four
    weights in every direction, with the shapes of the module docstring.
    """
    layers = sorted({k for k, _, _ in arrays})
    L = len(layers)
    if layers != list(range(L)):
        raise ValueError(f"{where}: expected layers 0 … {max(layers)} without gaps, got layers "
                         f"{layers}")
    dirs = ("fwd", "rev") if bidirectional else ("fwd",)
    missing = [label(k, d, n) for k in range(L) for d in dirs for n in NAMES
               if (k, d, n) not in arrays]
    if missing:
        raise ValueError(f"{where}: expected the four weights (W_ih, W_hh, b_ih, b_hh) of "
                         f"every layer and direction, got no {missing}")
    for (k, d, n), a in arrays.items():
        V.array(label(k, d, n), a, allow_complex=False)
    dtype = V.common_dtype(**{label(k, d, n): a for (k, d, n), a in arrays.items()})

    W_hh = arrays[(0, "fwd", "W_hh")]
    shape = tuple(W_hh.shape)
    if (len(shape) != 2 or shape[1] < 1 or shape[0] % shape[1]
            or shape[0] // shape[1] not in MODES):
        raise ValueError(f"{label(0, 'fwd', 'W_hh')}: expected shape (G·H, H) with G = 1 "
                         f"(RNN), 4 (LSTM) or 3 (GRU), got {shape}")
    H = shape[1]
    G = shape[0] // H
    gh = "H" if G == 1 else f"{G}H"
    shapes = V.Shapes(**{"H": H, gh: G * H, "2H": 2 * H})
    upper = "2H" if bidirectional else "H"  # a layer k ≥ 1 reads the layer below's output
    for k, d in [(k, d) for k in range(L) for d in dirs]:
        spec = {"W_ih": (gh, "D" if k == 0 else upper), "W_hh": (gh, "H"),
                "b_ih": (gh,), "b_hh": (gh,)}
        for n in NAMES:
            shapes.check(label(k, d, n), arrays[(k, d, n)], spec[n])
    return _Layout(MODES[G], L, bidirectional, shapes["D"], H, dtype, stacked)


def _parse_params(where: str, params: Any) -> tuple[dict, _Layout]:
    """minirec params → ``{(layer, direction, name): array}`` and their layout."""
    if not isinstance(params, Mapping):
        raise TypeError(f"{where}: params: expected a dict of arrays, got "
                        f"{type(params).__name__}")
    arrays, bad, layered, directed = {}, [], set(), set()
    for key, a in params.items():
        m = _MINIREC_KEY.fullmatch(key) if isinstance(key, str) else None
        if m is None:
            bad.append(key)
            continue
        layered.add(m["layer"] is not None)
        directed.add(m["dir"] is not None)
        arrays[(int(m["layer"] or 0), m["dir"] or "fwd", m["name"])] = a
    if bad or not arrays:
        raise ValueError(
            f"{where}: params: expected the keys W_ih, W_hh, b_ih, b_hh of minirec's rnn, "
            "lstm or gru, alone (one cell) or prefixed 'l<k>.' (compose.stack), "
            "'fwd.'/'rev.' (compose.bidirectional) or both ('l<k>.fwd.'), got "
            + (f"unexpected keys {bad}" if bad else "an empty dict"))
    for flags, what in ((layered, "a layer prefix 'l<k>.'"),
                        (directed, "a direction prefix 'fwd.'/'rev.'")):
        if len(flags) > 1:
            raise ValueError(f"{where}: params: expected {what} on every key or on none, "
                             f"got keys {sorted(params)}")
    stacked, bidirectional = True in layered, True in directed
    label = lambda k, d, n: f"{where}: params[{_minirec_key(k, d, n, stacked, bidirectional)!r}]"
    return arrays, _layout(where, arrays, label, bidirectional, stacked)


def _parse_state_dict(where: str, state_dict: Mapping, prefix: str) -> tuple[dict, _Layout]:
    """PyTorch keys → ``{(layer, direction, name): NumPy copy}`` and their layout."""
    arrays, bad = {}, []
    for key, v in state_dict.items():
        if not (isinstance(key, str) and key.startswith(prefix)):
            if not prefix:
                bad.append(key)
            continue
        m = _TORCH_KEY.fullmatch(key[len(prefix):])
        if m is None:
            bad.append(key)
            continue
        name = ("W_" if m["kind"] == "weight" else "b_") + m["io"]
        arrays[(int(m["layer"]), "rev" if m["rev"] else "fwd", name)] = _numpy(
            f"{where}: state_dict[{key!r}]", v)
    proj = [k for k in bad if isinstance(k, str) and _PROJECTION_KEY.fullmatch(k[len(prefix):])]
    if proj:
        raise ValueError(f"{where}: proj_size > 0 is not supported: expected an LSTM without "
                         f"projection (proj_size=0), got projection weights {proj}")
    if bad or not arrays:
        got = f"unexpected keys {bad}" if bad else f"keys {list(state_dict)[:8]}"
        raise ValueError(f"{where}: state_dict: expected the keys of torch.nn.RNN/LSTM/GRU "
                         "(weight_ih_l<k>, weight_hh_l<k>, bias_ih_l<k>, bias_hh_l<k>, each "
                         "possibly suffixed _reverse)"
                         + (f" after the prefix {prefix!r}" if prefix else "") + f", got {got}")
    if not any(n.startswith("b_") for _, _, n in arrays):
        raise ValueError(f"{where}: bias=False is not supported: expected bias_ih_l<k> and "
                         "bias_hh_l<k> (minirec's cells always have both biases; zeros would "
                         "give the same outputs but would be trained), got weights only")
    bidirectional = any(d == "rev" for _, d, _ in arrays)
    label = lambda k, d, n: f"{where}: state_dict[{prefix + _torch_key(k, d, n)!r}]"
    layout = _layout(where, arrays, label, bidirectional, stacked=False)
    return arrays, layout._replace(stacked=layout.num_layers > 1)


def _module_state_dict(where: str, module: Any) -> tuple[Mapping, str, str | None]:
    """Check that ``module`` is a supported torch RNN/LSTM/GRU; return its state
    dict, its mode and its nonlinearity (``None`` for LSTM/GRU)."""
    torch = sys.modules.get("torch")  # a torch module exists only if torch is imported
    if torch is None or not isinstance(module, torch.nn.Module):
        raise TypeError(f"{where}: expected a torch.nn.RNN, LSTM or GRU module or a state dict "
                        "(a mapping from PyTorch's keys to tensors or arrays), got "
                        f"{type(module).__name__}")
    name = type(module).__name__
    if isinstance(module, torch.nn.RNNCellBase):
        raise ValueError(f"{where}: {name} (one time step) is not supported: expected "
                         "torch.nn.RNN, LSTM or GRU; its weights are those of a one-layer "
                         "module: from_torch({k + '_l0': v for k, v in "
                         "cell.state_dict().items()})")
    modes = {"RNN_TANH": "RNN", "RNN_RELU": "RNN", "LSTM": "LSTM", "GRU": "GRU"}
    if not isinstance(module, torch.nn.RNNBase) or module.mode not in modes:
        raise TypeError(f"{where}: expected a torch.nn.RNN, LSTM or GRU module, got {name}")
    if module.proj_size:
        raise ValueError(f"{where}: proj_size={module.proj_size} is not supported: expected an "
                         "LSTM without projection (proj_size=0; minirec's lstm has no "
                         "weight_hr)")
    if not module.bias:
        raise ValueError(f"{where}: bias=False is not supported: expected bias=True "
                         "(minirec's cells always have b_ih and b_hh; zeros would give the "
                         "same outputs but would be trained)")
    if module.dropout > 0 and module.num_layers > 1 and module.training:
        raise ValueError(f"{where}: dropout={module.dropout} between layers in training mode "
                         "is not supported: expected dropout=0 or a module in eval mode "
                         "(compose.stack has no dropout; after module.eval() the module "
                         "computes what minirec computes)")
    nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}.get(module.mode)
    return module.state_dict(), modes[module.mode], nonlinearity


def _nonlinearity(where: str, mode: str, nonlinearity: str | None) -> str | None:
    """The RNN's nonlinearity (``"tanh"`` when not given); ``None`` for LSTM/GRU."""
    if mode != "RNN":
        if nonlinearity is not None:
            raise ValueError(f"{where}: nonlinearity: expected None (only torch.nn.RNN has "
                             f"one; these are {mode} weights), got {nonlinearity!r}")
        return None
    if nonlinearity is None:
        return "tanh"
    return V.choice("nonlinearity", nonlinearity, rnn.NONLINEARITIES)


def _import_torch(where: str):
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{where} needs PyTorch, which could not be imported ({e}): install it with "
            "`pip install torch` (or `pip install 'minirec[oracle]'`). Without it, "
            "to_state_dict gives the same weights under PyTorch's keys as NumPy arrays."
        ) from e
    return torch


# ---------------------------------------------------------------------------
# the public functions
# ---------------------------------------------------------------------------

def from_torch(module_or_state_dict: Any, *, nonlinearity: str | None = None,
               prefix: str = "") -> Imported:
    """A torch ``RNN``/``LSTM``/``GRU`` (or its state dict) as a minirec cell and params.

    Keys map as in the module docstring (``weight_hh_l1_reverse`` →
    ``"l1.rev.W_hh"``); arrays are copied unchanged (same shapes, same gate
    order, same dtype). Needs no PyTorch when given NumPy arrays.

    Args:
        module_or_state_dict: a ``torch.nn.RNN``, ``LSTM`` or ``GRU`` (any
            ``num_layers``, ``bidirectional``, ``batch_first``; see the module
            docstring for what is not supported), or a mapping from PyTorch's
            keys (``weight_ih_l0``, …, ``bias_hh_l1_reverse``) to tensors or
            NumPy arrays, such as ``module.state_dict()``. Which of RNN, LSTM
            and GRU it is follows from the shapes (``W_hh (G·H, H)``).
        nonlinearity: ``"tanh"`` or ``"relu"``, for an RNN's state dict (which
            does not record it; default ``"tanh"``, PyTorch's). For a module it
            may be left out (its own is used) and must agree if given.
        prefix: for a state dict: read only the keys that start with it
            (``"encoder.rnn."`` in a whole model's state dict) and drop it.

    Returns:
        ``Imported(cell, params, options)``: run ``cell.forward(params, x,
        state0, **options)`` with ``x (B, T, D)`` batch-first; the states
        convert with ``state_from_torch`` / ``state_to_torch``.

    Raises:
        TypeError: not a torch RNN/LSTM/GRU module nor a mapping; a tensor of
            another dtype than float32/float64.
        ValueError: an unsupported option (``proj_size``, ``bias=False``,
            training-mode dropout, a ``*Cell`` module), unknown or missing
            keys, shapes that do not fit together.

    Examples:
        >>> import numpy as np, torch
        >>> from minirec.interop.torch import from_torch, to_torch, state_to_torch
        >>> m = torch.nn.LSTM(5, 4, num_layers=2, bidirectional=True,
        ...                   batch_first=True, dtype=torch.float64)
        >>> net, params, options = from_torch(m)
        >>> net
        stack(bidirectional(lstm), bidirectional(lstm))
        >>> params["l1.rev.W_hh"].shape     # m.weight_hh_l1_reverse, copied
        (16, 4)
        >>> x = np.random.default_rng(0).standard_normal((3, 7, 5))   # (B, T, D)
        >>> y, state, cache = net.forward(params, x, **options)
        >>> y_t, (h_n, c_n) = m(torch.from_numpy(x))
        >>> float(np.abs(y - y_t.detach().numpy()).max()) < 1e-12
        True
        >>> h, c = state_to_torch(state, params)     # like h_n, c_n
        >>> h.shape                                  # (L·dirs, B, H)
        (4, 3, 4)
        >>> m2 = to_torch(params, **options)         # a torch.nn.LSTM again
    """
    where = "from_torch"
    if not isinstance(prefix, str):
        raise TypeError(f"{where}: prefix: expected a str, got {type(prefix).__name__}")
    if isinstance(module_or_state_dict, Mapping):
        arrays, layout = _parse_state_dict(where, module_or_state_dict, prefix)
    else:
        if prefix:
            raise ValueError(f"{where}: prefix: expected '' for a module (its state dict keys "
                             f"have no prefix), got {prefix!r}")
        state_dict, mode, own = _module_state_dict(where, module_or_state_dict)
        if nonlinearity is not None and own is not None and nonlinearity != own:
            raise ValueError(f"{where}: nonlinearity: expected {own!r} (the module's) or None, "
                             f"got {nonlinearity!r}")
        nonlinearity = own if nonlinearity is None else nonlinearity
        arrays, layout = _parse_state_dict(where, state_dict, "")
        if layout.mode != mode:  # a subclass that changed its weights' shapes
            raise ValueError(f"{where}: expected the weights of a torch.nn.{mode}, got weight "
                             f"shapes of a {layout.mode}")
    nl = _nonlinearity(where, layout.mode, nonlinearity)
    params = {_minirec_key(k, d, n, layout.stacked, layout.bidirectional): arrays[(k, d, n)]
              for k, d in layout.slots() for n in NAMES}
    return Imported(_cell(layout), params, {} if nl is None else {"nonlinearity": nl})


def to_state_dict(params: dict) -> dict[str, np.ndarray]:
    """minirec params under PyTorch's keys, in PyTorch's order; no PyTorch needed.

    ``params`` are those of ``rnn``, ``lstm`` or ``gru``, of
    ``compose.bidirectional(cell)``, ``compose.stack([cell] * L)`` or
    ``compose.stack([compose.bidirectional(cell)] * L)`` (keys ``W_ih``,
    ``fwd.W_ih``, ``l0.W_ih``, ``l0.fwd.W_ih``, …; module docstring). The same
    function maps a backward's parameter gradients (``nn.param_grads``) to
    the names of torch's ``.grad`` attributes.

    Returns:
        ``{"weight_ih_l0": (G·H, D), "weight_hh_l0": …, …}``, NumPy copies. To
        load them: ``module.load_state_dict({k: torch.from_numpy(v) for k, v
        in sd.items()})``, or build the module with ``to_torch``.
    """
    arrays, layout = _parse_params("to_state_dict", params)
    return {_torch_key(k, d, n): _numpy(_torch_key(k, d, n), arrays[(k, d, n)])
            for k, d in layout.slots() for n in NAMES}


def to_torch(params: dict, *, nonlinearity: str | None = None, batch_first: bool = True):
    """Build the ``torch.nn.RNN``/``LSTM``/``GRU`` that computes what minirec computes.

    The module's class, ``input_size``, ``hidden_size``, ``num_layers``,
    ``bidirectional`` and dtype (float32/float64) follow from ``params`` (the
    keys and shapes of ``to_state_dict``); ``bias=True``, ``dropout=0``,
    on the CPU; its weights are copies of ``params``.

    Args:
        params: minirec params of ``rnn``/``lstm``/``gru`` or their
            compositions (see ``to_state_dict``).
        nonlinearity: ``"tanh"`` (default) or ``"relu"`` for an RNN, what its
            ``forward`` ran with; ``None`` for an LSTM/GRU. ``to_torch(params,
            **options)`` with the ``options`` of ``from_torch`` does this.
        batch_first: the module's ``batch_first``; ``True`` (default) reads
            ``(B, T, D)`` as minirec does.

    Returns:
        A ``torch.nn.RNN``, ``torch.nn.LSTM`` or ``torch.nn.GRU`` in training mode.

    Raises:
        ImportError: PyTorch is not installed (``to_state_dict`` needs no
            PyTorch).
    """
    where = "to_torch"
    torch = _import_torch(where)
    if not isinstance(batch_first, bool):
        raise TypeError(f"{where}: batch_first: expected True or False, got {batch_first!r}")
    arrays, layout = _parse_params(where, params)
    nl = _nonlinearity(where, layout.mode, nonlinearity)
    dtype = torch.float64 if layout.dtype == np.float64 else torch.float32
    module = getattr(torch.nn, layout.mode)(
        layout.input_size, layout.hidden_size, num_layers=layout.num_layers, bias=True,
        batch_first=batch_first, dropout=0.0, bidirectional=layout.bidirectional,
        dtype=dtype, **({} if nl is None else {"nonlinearity": nl}))
    module.load_state_dict({_torch_key(k, d, n): torch.from_numpy(
        _numpy(_torch_key(k, d, n), arrays[(k, d, n)])) for k, d in layout.slots() for n in NAMES})
    return module


def state_from_torch(hx: Any, params: dict) -> Any:
    """PyTorch's initial state as the ``state0`` of the minirec cell of ``params``.

    Args:
        hx: ``h_0 (L·dirs, B, H)`` for an RNN/GRU, the tuple ``(h_0, c_0)``
            for an LSTM (tensors or NumPy arrays), or ``None`` (zeros on both
            sides).
        params: the minirec params of the cell (what ``from_torch``
            returned, or your own; see ``to_state_dict``).

    Returns:
        One cell: ``h_0[0]`` (LSTM: ``(h_0[0], c_0[0])``). A composition: the
        flat tuple ``(h_0[0], h_0[1], …)`` (LSTM: ``(h_0[0], c_0[0], h_0[1],
        c_0[1], …)``), ordered like torch's first axis (layer-major, forward
        direction first). NumPy copies, each ``(B, H)``.
    """
    where = "state_from_torch"
    _, layout = _parse_params(where, params)
    if hx is None:
        return None
    is_lstm = layout.mode == "LSTM"
    if is_lstm and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
        raise TypeError(f"{where}: hx: expected the tuple (h_0, c_0) of an LSTM, got "
                        f"{type(hx).__name__}" + (f" of length {len(hx)}"
                                                  if isinstance(hx, (tuple, list)) else ""))
    if not is_lstm and isinstance(hx, (tuple, list)):
        raise TypeError(f"{where}: hx: expected one array h_0 (L·dirs, B, H) "
                        f"(torch.nn.{layout.mode} has no c_0), got a {type(hx).__name__}")
    names = ("h_0", "c_0") if is_lstm else ("h_0",)
    parts = [_numpy(f"{where}: {n}", a) for n, a in zip(names, hx if is_lstm else (hx,))]
    n_cells = len(layout.slots())
    shapes = V.Shapes(**{"L·dirs": n_cells, "H": layout.hidden_size})
    for n, a in zip(names, parts):
        shapes.check(f"{where}: {n}", a, ("L·dirs", "B", "H"))
    cells = [tuple(p[j] for p in parts) for j in range(n_cells)]  # (h,) or (h, c) per cell
    if layout.single:
        return cells[0] if is_lstm else cells[0][0]
    return tuple(a for c in cells for a in c)


def state_to_torch(state: Any, params: dict) -> Any:
    """A minirec state (final state, or its gradient) as PyTorch's ``h_n`` (``h_n, c_n``).

    Args:
        state: the state of the minirec cell of ``params``, as its ``forward``
            returns it (or a ``"state0"`` gradient from its ``backward``):
            ``h`` or ``(h, c)`` for one cell, the flat tuple for a composition
            (see ``state_from_torch``); ``None`` gives ``None``.
        params: the cell's minirec params.

    Returns:
        ``h_n (L·dirs, B, H)`` for an RNN/GRU, ``(h_n, c_n)`` for an LSTM, as
        NumPy arrays.
    """
    where = "state_to_torch"
    _, layout = _parse_params(where, params)
    if state is None:
        return None
    is_lstm = layout.mode == "LSTM"
    per_cell = 2 if is_lstm else 1
    n = per_cell * len(layout.slots())
    is_tuple = is_lstm or not layout.single
    if is_tuple != isinstance(state, (tuple, list)) or (is_tuple and len(state) != n):
        want = (f"a tuple of {n} arrays" if is_tuple else "one array (B, H)")
        got = (f"a {type(state).__name__} of length {len(state)}"
               if isinstance(state, (tuple, list)) else type(state).__name__)
        raise TypeError(f"{where}: state: expected {want} (the state of "
                        f"{_name(layout)}), got {got}")
    entries = tuple(state) if is_tuple else (state,)
    shapes = V.Shapes(H=layout.hidden_size)
    arrays = []
    for i, a in enumerate(entries):
        name = f"{where}: state[{i}]" if is_tuple else f"{where}: state"
        arrays.append(_numpy(name, a))
        shapes.check(name, arrays[-1], ("B", "H"))
    h = np.stack(arrays[0::per_cell])
    return (h, np.stack(arrays[1::2])) if is_lstm else h
