"""Every scan, cell and op of minirec, listed once.

An :class:`Entry` names a module and knows how to make example inputs for it;
the module itself declares ``METHODS`` and ``BACKENDS``, so nothing is listed
twice. Tests, the ``minirec`` CLI, the README/docs feature table and the
benchmarks all iterate :data:`ENTRIES`.

Two helpers give every entry one calling convention:

* :func:`run_forward` / :func:`run_backward` call an op (``forward(**inputs)``)
  or a cell (``forward(params, x, state0)``) alike;
* :func:`agreement` runs a method/backend and the float64 recurrent NumPy
  definition on the same inputs and upstream gradients and returns the
  relative RMS difference of every output and gradient;
  :func:`gradcheck` runs :mod:`minirec.gradcheck` on the entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

from minirec import gradcheck as _gc

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
C64, C128 = np.dtype(np.complex64), np.dtype(np.complex128)

# Named dimensions: "small" for gradient checks (every entry of every array is
# perturbed), "medium" for agreement tests (T = 37 is prime: never a multiple
# of a chunk size). B is the batch axis (0) and T the time axis (1) of every
# input an entry lists in ``time_inputs``, and of its outputs.
SIZES = {"small": {"B": 2, "T": 5, "D": 3, "H": 4},
         "medium": {"B": 3, "T": 37, "D": 8, "H": 16}}


def dims(size: str | tuple, table: dict | None = None) -> tuple[int, int, int, int]:
    """``(B, T, D, H)`` for a size name (looked up in ``table``, default
    :data:`SIZES`) or an explicit 4-tuple (the benchmarks pass their own)."""
    if isinstance(size, (tuple, list)):
        if len(size) != 4:
            raise ValueError(f"size: expected a name or (B, T, D, H), got {size!r}")
        return tuple(int(v) for v in size)
    table = SIZES if table is None else table
    if size not in table:
        raise ValueError(f"size: expected one of {sorted(table)} or (B, T, D, H), got {size!r}")
    t = table[size]
    return tuple(t.values())[:4] if isinstance(t, dict) else tuple(t)


@dataclass(frozen=True)
class Entry:
    """One registry row.

    Attributes:
        name: unique, as used by ``minirec check NAME``.
        kind: ``"scan"``, ``"cell"`` or ``"op"``.
        module_path: the module with ``forward``/``backward``/``METHODS``/``BACKENDS``.
        summary: the recurrence in one line.
        maker: ``(rng, dtype, d, method) -> dict`` with ``d`` the named
            dimensions (``{"B": 2, "T": 5, ...}``); for ops the forward's array
            arguments by name, for cells ``{"params", "x", "state0"}``. Call it
            through :meth:`Entry.make_inputs`, which resolves ``d``.
        dtypes: dtypes the entry supports.
        forward_kwargs: fixed keyword arguments (e.g. ``nonlinearity="relu"``).
        chunk_size: used by checks for methods that take one.
        excluded_methods: methods of the module that this entry's
            ``forward_kwargs`` rule out (e.g. ``log`` with negative eigenvalues).
        build: for entries whose "module" is an object made at run time (the
            :mod:`minirec.cells.compose` wrappers): a factory returning it;
            ``module_path`` then names the module that defines it.
        dim_names: the names of the four dimensions an explicit
            ``(·, ·, ·, ·)`` size gives, in order (the benchmarks' tuples).
        sizes: ``{"small": {...}, "medium": {...}}`` named dimensions; by
            default :data:`SIZES` with its values renamed to ``dim_names``.
        time_inputs: the inputs with batch axis 0 and time axis 1 (``("x",)``
            for cells). The initial state has batch axis 0 in every part; the
            output has batch axis 0 and time axis 1. This is what makes
            split-resume, ``T = 1`` and ``B = 0`` generic (the contract tests).
        empty_state: the fill value of each part of the state that
            ``initial_state=None`` stands for, where it is not zeros (the
            softmax scans' empty prefix ``(−inf, 0, 0)``).
        causal: whether output ``t`` depends on inputs up to ``t`` only (not a
            bidirectional wrapper): split-resume and the NaN-causality checks
            apply.
        matmul_methods: methods that compute with dense matrix products over
            time (the masked quadratic and chunkwise forms). A NaN times a
            masked-out zero is NaN (IEEE 754), so where the definition's
            gradient stays finite theirs may not; the contract checks that
            their outputs keep the definition's non-finite pattern and that
            their gradients' non-finite entries include the definition's.
        generic: for entries whose named dimensions are not ``(B, T, D, H)``:
            maps the benchmarks' generic ``(B, T, D, H)`` tuple to them (e.g.
            ``D // H`` heads of size ``H``), so that every entry is timed at
            the same sizes.
    """

    name: str
    kind: str
    module_path: str
    summary: str
    maker: Callable[..., dict]
    dtypes: tuple = (F32, F64)
    forward_kwargs: dict = field(default_factory=dict)
    chunk_size: int | None = 4
    excluded_methods: tuple = ()
    build: Callable[[], Any] | None = None
    dim_names: tuple = ("B", "T", "D", "H")
    sizes: dict | None = None
    time_inputs: tuple = ("x",)
    empty_state: tuple | None = None
    causal: bool = True
    matmul_methods: tuple = ()
    generic: Callable[[tuple], dict] | None = None

    @property
    def state_name(self) -> str:
        """``"state0"`` for cells, ``"initial_state"`` for scans and ops."""
        return "state0" if self.kind == "cell" else "initial_state"

    def size(self, size: str | tuple | dict = "small", **overrides: int) -> dict[str, int]:
        """Named dimensions for a size name, an explicit tuple (``dim_names``
        order) or a dict, with ``overrides`` (``T=1``, ``B=0``) applied."""
        table = self.sizes or {k: dict(zip(self.dim_names, v.values())) for k, v in SIZES.items()}
        if isinstance(size, dict):
            d = dict(size)
        elif isinstance(size, (tuple, list)):
            if len(size) == len(self.dim_names):
                d = dict(table["small"])
                d.update(zip(self.dim_names, (int(v) for v in size)))
            elif self.generic is not None and len(size) == 4:
                d = self.generic(tuple(int(v) for v in size))
            else:
                raise ValueError(f"size: expected a name or a tuple {self.dim_names}, "
                                 f"got {size!r}")
        elif size in table:
            d = dict(table[size])
        else:
            raise ValueError(f"size: expected one of {sorted(table)}, a tuple {self.dim_names} "
                             f"or a dict, got {size!r}")
        unknown = sorted(set(overrides) - set(d))
        if unknown:
            raise ValueError(f"size: {self.name} has dimensions {sorted(d)}, got {unknown}")
        d.update(overrides)
        return d

    def make_inputs(self, rng: np.random.Generator, dtype, size: str | tuple | dict = "small",
                    method: str | None = None, **overrides: int) -> dict:
        """Example inputs in ``dtype`` (see :meth:`size` for ``size``/``overrides``)."""
        return self.maker(rng, np.dtype(dtype), self.size(size, **overrides), method)

    @property
    def module(self) -> ModuleType | Any:
        if self.build is not None:
            return self.build()
        return importlib.import_module(self.module_path)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.module.METHODS if m not in self.excluded_methods)

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self.module.BACKENDS)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Every supported ``(method, backend)``: NumPy runs every method; another
        backend runs the methods its module lists in ``BACKEND_METHODS``
        (all of them when the module has no such map)."""
        limits = getattr(self.module, "BACKEND_METHODS", {})
        return tuple((m, b) for b in self.backends for m in self.methods
                     if b not in limits or m in limits[b])


# ---------------------------------------------------------------------------
# input makers
# ---------------------------------------------------------------------------

def _randn(rng, shape, dtype):
    dtype = np.dtype(dtype)
    x = rng.standard_normal(shape)
    if dtype.kind == "c":
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def _linear_scan_inputs(rng, dtype, d, method=None):
    B, T, D = d["B"], d["T"], d["D"]
    shape = (B, T, D)
    if method == "log":  # the log-space scan needs a > 0
        a = rng.uniform(0.3, 1.0, shape)
    else:  # negative eigenvalues included
        a = rng.uniform(-1.0, 1.0, shape)
    if dtype.kind == "c":
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
    return {"a": a.astype(dtype), "b": _randn(rng, shape, dtype),
            "initial_state": _randn(rng, (B, D), dtype)}


def _cell_inputs(module_path, state="h"):
    def make(rng, dtype, d, method=None):
        B, T, D, H = d["B"], d["T"], d["D"], d["H"]
        mod = importlib.import_module(module_path)
        params = mod.init_params(rng, D, H, dtype=dtype)
        x = _randn(rng, (B, T, D), dtype)
        if state == "hc":
            state0 = (_randn(rng, (B, H), dtype), _randn(rng, (B, H), dtype))
        else:
            state0 = _randn(rng, (B, H), dtype)
        return {"params": params, "x": x, "state0": state0}
    return make


# ---------------------------------------------------------------------------
# the entries
# ---------------------------------------------------------------------------

ENTRIES: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    """Add ``entry``; a name may be registered once."""
    if entry.name in ENTRIES:
        raise ValueError(f"registry: {entry.name!r} is already registered")
    ENTRIES[entry.name] = entry
    return entry


# --- scans -----------------------------------------------------------------
register(Entry("scan.linear", "scan", "minirec.scan.linear",
               "h_t = a_t ⊙ h_{t-1} + b_t", _linear_scan_inputs,
               dtypes=(F32, F64, C64, C128), time_inputs=("a", "b")))

# --- classic cells -----------------------------------------------------------
register(Entry("rnn", "cell", "minirec.cells.rnn",
               "h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)",
               _cell_inputs("minirec.cells.rnn")))
register(Entry("rnn_relu", "cell", "minirec.cells.rnn",
               "h_t = relu(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)",
               _cell_inputs("minirec.cells.rnn"), forward_kwargs={"nonlinearity": "relu"}))

# --- lstm, gru, compose (stack / bidirectional) ---
register(Entry("lstm", "cell", "minirec.cells.lstm",
               "c_t = f ⊙ c_{t-1} + i ⊙ g, h_t = o ⊙ tanh(c_t) (gates i, f, g, o)",
               _cell_inputs("minirec.cells.lstm", state="hc")))
register(Entry("gru", "cell", "minirec.cells.gru",
               "h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}, n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))",
               _cell_inputs("minirec.cells.gru")))


def _composed_inputs(build):
    def make(rng, dtype, d, method=None):
        B, T, D, H = d["B"], d["T"], d["D"], d["H"]
        net = build()
        params = net.init_params(rng, D, H, dtype=dtype)
        state0 = tuple(_randn(rng, s.shape, dtype) for s in net.zero_state(params, B, dtype))
        return {"params": params, "x": _randn(rng, (B, T, D), dtype), "state0": state0}
    return make


def _lstm_stack2():
    from minirec.cells import compose, lstm
    return compose.stack([lstm, lstm])


def _gru_bidirectional():
    from minirec.cells import compose, gru
    return compose.bidirectional(gru)


register(Entry("lstm_stack2", "cell", "minirec.cells.compose",
                        "stack([lstm, lstm]): layer 0's outputs are layer 1's inputs",
                        _composed_inputs(_lstm_stack2), build=_lstm_stack2))
register(Entry("gru_bidirectional", "cell", "minirec.cells.compose",
                        "bidirectional(gru): y_t = [h→_t | h←_t], reverse run on flip_t(x)",
                        _composed_inputs(_gru_bidirectional), build=_gru_bidirectional,
                        causal=False))

# --- scan.matrix ---
def _matrix_scan_inputs(rng, dtype, dd, method=None):
    """A_t = s_t Q_t with Q_t random orthogonal (unitary if complex), s_t ~ U(0.5, 1):
    spectral norm ≤ 1, so long products neither overflow nor all vanish."""
    B, T, d = dd["B"], dd["T"], dd["D"]
    Z = rng.standard_normal((B, T, d, d))
    if dtype.kind == "c":
        Z = Z + 1j * rng.standard_normal((B, T, d, d))
    Q, R = np.linalg.qr(Z)
    Q = Q * np.sign(np.diagonal(R, axis1=-2, axis2=-1).real)[..., None, :]
    A = Q * rng.uniform(0.5, 1.0, (B, T, 1, 1))
    return {"A": A.astype(dtype), "b": _randn(rng, (B, T, d), dtype),
            "initial_state": _randn(rng, (B, d), dtype)}


register(Entry("scan.matrix", "scan", "minirec.scan.matrix",
               "h_t = A_t h_{t-1} + b_t", _matrix_scan_inputs,
               dtypes=(F32, F64, C64, C128), time_inputs=("A", "b")))

# --- mingru, minlstm ---
register(Entry("mingru", "cell", "minirec.cells.mingru",
               "h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t, z_t = σ(W_z x_t + b_z)",
               _cell_inputs("minirec.cells.mingru")))
register(Entry(
    "mingru_neg", "cell", "minirec.cells.mingru",
    "minGRU with negative eigenvalues: h_t = (1 − 2z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t "
    "(no log method: it needs a > 0)",
    _cell_inputs("minirec.cells.mingru"), forward_kwargs={"negative_eigenvalues": True},
    excluded_methods=("log",)))
register(Entry("minlstm", "cell", "minirec.cells.minlstm",
               "h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ h̃_t, f' = f/(f+i), i' = i/(f+i)",
               _cell_inputs("minirec.cells.minlstm")))

# --- hgrn ---
def _hgrn_inputs(rng, dtype, d, method=None):
    """g ~ −U(0, 1.5) with the first step's gates exactly 0 (a = 1, log a = 0)."""
    B, T, D = d["B"], d["T"], d["D"]
    g = -rng.uniform(0.0, 1.5, (B, T, D))
    g[:, 0] = 0.0
    return {"x": _randn(rng, (B, T, D), dtype), "g": g.astype(dtype),
            "initial_state": _randn(rng, (B, D), dtype)}


register(Entry("hgrn", "op", "minirec.ops.hgrn", "h_t = exp(g_t) ⊙ h_{t-1} + x_t",
               _hgrn_inputs, time_inputs=("x", "g")))

# --- lru, ssm ---
def _lru_inputs(rng, dtype, d, method=None):
    from minirec.cells import lru
    B, T, D, N = d["B"], d["T"], d["D"], d["N"]
    # |λ| on [0.3, 1): the log method takes log λ (any λ ≠ 0 works; this keeps margin)
    params = lru.init_params(rng, D, N, dtype=dtype, r_min=0.3)
    return {"params": params, "x": _randn(rng, (B, T, D), dtype),
            "state0": _randn(rng, (B, N), np.result_type(dtype, np.complex64))}


def _ssm_inputs(rng, dtype, d, method=None):
    from minirec.cells import ssm
    B, T, D, N = d["B"], d["T"], d["D"], d["N"]
    params = ssm.init_params(rng, D, N, dtype=dtype)
    for k in ("B_re", "B_im"):  # S4D's B = 1 is too special for a check
        params[k] = params[k] + (0.1 * rng.standard_normal(params[k].shape)).astype(dtype)
    return {"params": params, "x": _randn(rng, (B, T, D), dtype),
            "state0": _randn(rng, (B, D, N), np.result_type(dtype, np.complex64))}


register(Entry("lru", "cell", "minirec.cells.lru",
               "h_t = λ ⊙ h_{t-1} + γ ⊙ (B x_t), y_t = Re(C h_t) + D ⊙ x_t", _lru_inputs,
               dim_names=("B", "T", "D", "N")))
register(Entry("ssm", "cell", "minirec.cells.ssm",
               "S4D, zoh: h_t = Ā ⊙ h_{t-1} + B̄ x_t, y_t = 2 Re(Σ_n C h_t) + D x_t",
               _ssm_inputs, dim_names=("B", "T", "D", "N")))
register(Entry("ssm_bilinear", "cell", "minirec.cells.ssm",
               "S4D, bilinear: h_t = Ā ⊙ h_{t-1} + B̄ x_t, y_t = 2 Re(Σ_n C h_t) + D x_t",
               _ssm_inputs, forward_kwargs={"discretization": "bilinear"},
               dim_names=("B", "T", "D", "N")))

# --- selective_scan, mamba ---
def _selective_scan_inputs(rng, dtype, d, method=None):
    """Every optional array given (D, z, delta_bias, initial_state); A ∈ [−2, −0.5]
    and Δ = softplus(delta + delta_bias) = O(1), so exp(Δ A) stays well above 0."""
    B, T, D, N = d["B"], d["T"], d["D"], d["N"]
    return {"u": _randn(rng, (B, T, D), dtype),
            "delta": (0.5 * rng.standard_normal((B, T, D))).astype(dtype),
            "A": (-rng.uniform(0.5, 2.0, (D, N))).astype(dtype),
            "B": _randn(rng, (B, T, N), dtype), "C": _randn(rng, (B, T, N), dtype),
            "D": _randn(rng, (D,), dtype), "z": _randn(rng, (B, T, D), dtype),
            "delta_bias": rng.uniform(-1.0, 1.0, D).astype(dtype),
            "initial_state": _randn(rng, (B, D, N), dtype)}


def _mamba_inputs(rng, dtype, d, method=None):
    """Mamba's init with dt_proj_bias ~ U(−1, 1) (Δ = O(1), so every gradient is
    O(1) for the check), random A_log and D; a random (conv_state, ssm_state)."""
    from minirec.cells import mamba
    B, T, M, N = d["B"], d["T"], d["M"], d["N"]
    p = mamba.init_params(rng, M, N, dtype=np.float64)
    I, K = p["conv1d_weight"].shape
    p["dt_proj_bias"] = rng.uniform(-1.0, 1.0, I)
    p["A_log"] = np.log(rng.uniform(0.5, 4.0, (I, N)))
    p["D"] = rng.standard_normal(I)
    params = {k: v.astype(dtype) for k, v in p.items()}
    state0 = (_randn(rng, (B, I, K - 1), dtype), _randn(rng, (B, I, N), dtype))
    return {"params": params, "x": _randn(rng, (B, T, M), dtype), "state0": state0}


register(Entry("selective_scan", "op", "minirec.ops.selective_scan",
               "h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t; y_t = (C_t·h_t + D u_t) ⊙ silu(z_t)",
               _selective_scan_inputs, forward_kwargs={"delta_softplus": True},
               dim_names=("B", "T", "D", "N"), time_inputs=("u", "delta", "B", "C", "z")))
register(Entry("mamba", "cell", "minirec.cells.mamba",
               "Mamba-1 block: in_proj, causal conv1d, SiLU, selective scan, SiLU(z) gate, "
               "out_proj", _mamba_inputs, dim_names=("B", "T", "M", "N"),
               sizes={"small": {"B": 2, "T": 5, "M": 4, "N": 3},
                      "medium": {"B": 3, "T": 37, "M": 8, "N": 8}}))

# --- softmax_scan, aaren ---
def _softmax_triple(rng, B, heads, Vd, dtype):
    """A finite (m, u, w) state with u > 0: agreement compares states by relative
    RMS, which the empty prefix's m = −inf would make NaN (tested in tests/ops)."""
    return (_randn(rng, (B, heads), dtype), rng.uniform(0.5, 2.0, (B, heads)).astype(dtype),
            _randn(rng, (B, heads, Vd), dtype))


def _softmax_scan_inputs(rng, dtype, d, method=None):
    """``heads`` heads (2); scores ~ N(0, 4), so the running max moves and the
    initial state's m is the overall max for some (b, h)."""
    B, T, V, nh = d["B"], d["T"], d["V"], d["heads"]
    return {"s": (2 * _randn(rng, (B, T, nh), dtype)).astype(dtype),
            "v": _randn(rng, (B, T, nh, V), dtype),
            "initial_state": _softmax_triple(rng, B, nh, V, dtype)}


def _aaren_inputs(rng, dtype, d, method=None):
    from minirec.cells import aaren
    B, T, D, H, nh = d["B"], d["T"], d["D"], d["H"], d["heads"]
    params = aaren.init_params(rng, D, H, num_heads=nh, dtype=dtype)
    return {"params": params, "x": _randn(rng, (B, T, D), dtype),
            "state0": _softmax_triple(rng, B, nh, H // nh, dtype)}


register(Entry("softmax_scan", "op", "minirec.ops.softmax_scan",
               "o_t = Σ_{i≤t} e^{s_i} v_i / Σ_{i≤t} e^{s_i}, state (max, denominator, numerator)",
               _softmax_scan_inputs, dim_names=("B", "T", "V", "H"), time_inputs=("s", "v"),
               sizes={"small": {"B": 2, "T": 5, "V": 3, "H": 4, "heads": 2},
                      "medium": {"B": 3, "T": 37, "V": 8, "H": 16, "heads": 2}},
               empty_state=(-np.inf, 0.0, 0.0)))
register(Entry("aaren", "cell", "minirec.cells.aaren",
               "Aaren: s_t = q·(W_k x_t)/√K, o_t = softmax_scan(s, W_v x), y_t = W_o o_t + b_o",
               _aaren_inputs,
               sizes={"small": {"B": 2, "T": 5, "D": 3, "H": 4, "heads": 2},
                      "medium": {"B": 3, "T": 37, "D": 8, "H": 16, "heads": 2}},
               empty_state=(-np.inf, 0.0, 0.0)))

# --- the matrix-state family (ops/gla, ops/delta_rule, ops/mlstm and the ops on them) ---
# K ≠ V and neither a power of two, so that a transposed state or a swapped axis fails.
_HEAD_SIZES = {"small": {"B": 2, "T": 5, "H": 2, "K": 3, "V": 4},
               "medium": {"B": 3, "T": 37, "H": 2, "K": 5, "V": 7}}
# the matmul forms: a NaN times a masked zero is NaN, so their gradients may be
# non-finite where the definition's are not (their outputs keep its pattern)
_MATMUL_METHODS = ("parallel", "chunk")


def _log_gate(rng, shape, dtype):
    """Log gates ~ −U(0, 1.5) with the first step's exactly 0 (multiplier 1)."""
    g = -rng.uniform(0.0, 1.5, shape)
    g[:, 0] = 0.0
    return g.astype(dtype)


def _heads_inputs(gate=None, bonus=False, names=("q", "k", "v"), positive=False,
                  state="S"):
    """q, k (B, T, H, K), v (B, T, H, V), an optional log gate named ``gate[0]``
    of shape ``gate[1]`` ("H": (B, T, H), "HK": (B, T, H, K)), RWKV's bonus
    ``u (H, K)``, and a random initial state (``"S"``, or ``"Sz"`` for the
    normalised linear attention's (S, z), with positive q, k, z so that the
    normaliser q·z stays away from 0)."""
    def make(rng, dtype, d, method=None):
        B, T, H, K, Vd = d["B"], d["T"], d["H"], d["K"], d["V"]
        if positive:
            q, k = (rng.uniform(0.2, 1.0, (B, T, H, K)).astype(dtype) for _ in range(2))
        else:
            q, k = (_randn(rng, (B, T, H, K), dtype) for _ in range(2))
        out = {names[0]: q, names[1]: k, names[2]: _randn(rng, (B, T, H, Vd), dtype)}
        if gate is not None:
            gname, gshape = gate
            out[gname] = _log_gate(rng, (B, T, H) + ((K,) if gshape == "HK" else ()), dtype)
        if bonus:
            out["u"] = _randn(rng, (H, K), dtype)
        S = _randn(rng, (B, H, K, Vd), dtype)
        if state == "Sz":
            out["initial_state"] = (S, rng.uniform(0.5, 1.5, (B, H, K)).astype(dtype))
        else:
            out["initial_state"] = S
        return out
    return make


def _delta_inputs(gated):
    """Unit-norm keys (the delta rule's transition I − β k k^T is then a
    contraction for β ∈ [0, 2]); β ~ U(0, 2) with β = 0 and β = 2 exactly at
    the first two steps; a log gate as the other ops (gated rule only)."""
    def make(rng, dtype, d, method=None):
        B, T, H, K, Vd = d["B"], d["T"], d["H"], d["K"], d["V"]
        k = rng.standard_normal((B, T, H, K))
        k /= np.linalg.norm(k, axis=-1, keepdims=True)
        beta = rng.uniform(0.0, 2.0, (B, T, H))
        beta[:, 0] = 0.0
        if T > 1:
            beta[:, 1] = 2.0
        out = {"q": _randn(rng, (B, T, H, K), dtype), "k": k.astype(dtype),
               "v": _randn(rng, (B, T, H, Vd), dtype)}
        if gated:
            out["g"] = _log_gate(rng, (B, T, H), dtype)
        out["beta"] = beta.astype(dtype)
        out["initial_state"] = _randn(rng, (B, H, K, Vd), dtype)
        return out
    return make


def _mlstm_inputs(rng, dtype, d, method=None):
    """Pre-activation gates i ~ N(0, 1), f ~ N(2, 1) (forget gates near 0.9);
    a random state (C, n, m) with m ~ N(0, 1)."""
    B, T, H, K, Vd = d["B"], d["T"], d["H"], d["K"], d["V"]
    return {"q": _randn(rng, (B, T, H, K), dtype), "k": _randn(rng, (B, T, H, K), dtype),
            "v": _randn(rng, (B, T, H, Vd), dtype), "i": _randn(rng, (B, T, H), dtype),
            "f": (2.0 + rng.standard_normal((B, T, H))).astype(dtype),
            "initial_state": (_randn(rng, (B, H, K, Vd), dtype), _randn(rng, (B, H, K), dtype),
                              _randn(rng, (B, H), dtype))}


def _ssd_inputs(rng, dtype, d, method=None):
    """Mamba-2's SSD: dt ~ U(0.1, 1) (already positive), A ~ −U(0.5, 2) per head."""
    B, T, H, N, P = d["B"], d["T"], d["H"], d["N"], d["P"]
    return {"x": _randn(rng, (B, T, H, P), dtype),
            "dt": rng.uniform(0.1, 1.0, (B, T, H)).astype(dtype),
            "A": (-rng.uniform(0.5, 2.0, H)).astype(dtype),
            "B": _randn(rng, (B, T, H, N), dtype), "C": _randn(rng, (B, T, H, N), dtype),
            "D": _randn(rng, (H,), dtype), "initial_state": _randn(rng, (B, H, N, P), dtype)}


def _heads_generic(names):
    """The benchmarks' ``(B, T, D, H)`` as ``D // H`` heads of key and value
    size ``H`` (``names``: this entry's names for batch, time, heads, key, value)."""
    def generic(size):
        B, T, D, H = size
        return dict(zip(names, (B, T, max(1, D // H), H, H)))
    return generic


def _heads_entry(name, module, summary, maker, time_inputs, **kw):
    kw.setdefault("dim_names", ("B", "T", "H", "K", "V"))
    kw.setdefault("sizes", _HEAD_SIZES)
    kw.setdefault("generic", _heads_generic(kw["dim_names"]))
    register(Entry(name, "op", module, summary, maker, time_inputs=time_inputs,
                   matmul_methods=_MATMUL_METHODS, **kw))


_heads_entry("linear_attention", "minirec.ops.linear_attention",
             "S_t = S_{t-1} + k_t v_t^T, o_t = scale S_t^T q_t", _heads_inputs(),
             ("q", "k", "v"))
_heads_entry("linear_attention_normalized", "minirec.ops.linear_attention",
             "linear attention with normaliser z_t = z_{t-1} + k_t: o_t = S_t^T q_t / (q_t·z_t)",
             _heads_inputs(positive=True, state="Sz"), ("q", "k", "v"),
             forward_kwargs={"normalize": True})
_heads_entry("retention", "minirec.ops.retention",
             "RetNet: S_t = γ_h S_{t-1} + k_t v_t^T, γ_h = 1 − 2^{−5−h}", _heads_inputs(),
             ("q", "k", "v"))
_heads_entry("simple_gla", "minirec.ops.simple_gla",
             "S_t = e^{g_t} S_{t-1} + k_t v_t^T (one gate per head)",
             _heads_inputs(gate=("g", "H")), ("q", "k", "v", "g"))
_heads_entry("gla", "minirec.ops.gla", "S_t = Diag(e^{g_t}) S_{t-1} + k_t v_t^T",
             _heads_inputs(gate=("g", "HK")), ("q", "k", "v", "g"))
_heads_entry("rwkv6", "minirec.ops.rwkv6",
             "o_t = (S_{t-1} + Diag(u) k_t v_t^T)^T r_t, S_t = Diag(e^{w_t}) S_{t-1} + k_t v_t^T",
             _heads_inputs(gate=("w", "HK"), bonus=True, names=("r", "k", "v")),
             ("r", "k", "v", "w"))
_heads_entry("delta_rule", "minirec.ops.delta_rule",
             "DeltaNet: S_t = S_{t-1} + β_t k_t (v_t − S_{t-1}^T k_t)^T", _delta_inputs(False),
             ("q", "k", "v", "beta"))

_heads_entry("gated_delta_rule", "minirec.ops.gated_delta_rule",
             "S' = e^{g_t} S_{t-1}, S_t = S' + β_t k_t (v_t − S'^T k_t)^T", _delta_inputs(True),
             ("q", "k", "v", "g", "beta"))
_heads_entry("mlstm", "minirec.ops.mlstm",
             "xLSTM: C_t = f' C_{t-1} + i' k_t v_t^T, n_t likewise, "
             "h_t = C_t^T q / max(|n_t·q|, e^{-m_t})",
             _mlstm_inputs, ("q", "k", "v", "i", "f"))
# C plays the query's part: the NaN probe goes there (see matmul_methods)
_heads_entry("ssd", "minirec.ops.ssd",
             "Mamba-2 SSD: h_t = e^{dt_t A} h_{t-1} + dt_t B_t x_t^T, y_t = h_t^T C_t + D x_t",
             _ssd_inputs, ("C", "x", "dt", "B"), dim_names=("B", "T", "H", "N", "P"),
             sizes={"small": {"B": 2, "T": 5, "H": 2, "N": 3, "P": 4},
                    "medium": {"B": 3, "T": 37, "H": 2, "N": 5, "P": 7}})

# --- ln_lstm (issue 12) ---
def _ln_lstm_inputs(rng, dtype, d, method=None):
    """The cell's init (PyTorch-like weights), with the layer norms' gains drawn
    around 1 and their biases around 0 (init's exact 1 and 0 would hide a gain
    or bias applied in the wrong place); a random state (h0, c0)."""
    from minirec.cells import ln_lstm
    B, T, D, H = d["B"], d["T"], d["D"], d["H"]
    params = ln_lstm.init_params(rng, D, H, dtype=np.float64)
    for k in ("alpha_ih", "alpha_hh", "alpha_c"):
        params[k] = params[k] + rng.uniform(-0.3, 0.3, params[k].shape)
    for k in ("beta_ih", "beta_hh", "beta_c"):
        params[k] = params[k] + rng.uniform(-0.2, 0.2, params[k].shape)
    return {"params": {k: v.astype(dtype) for k, v in params.items()},
            "x": _randn(rng, (B, T, D), dtype),
            "state0": (_randn(rng, (B, H), dtype), _randn(rng, (B, H), dtype))}


register(Entry("ln_lstm", "cell", "minirec.cells.ln_lstm",
               "LSTM with a = LN(W_hh h_{t-1}) + LN(W_ih x_t) + b, h_t = o ⊙ tanh(LN(c_t))",
               _ln_lstm_inputs))

# --- slstm (issue 12) ---
def _slstm_inputs(rng, dtype, d, method=None):
    """The cell's init with ``num_heads = NH``; a random state (h0, c0, n0, m0) with
    the normaliser n0 ~ U(0.5, 2) (a state the cell can reach: n ≥ 1 after a
    step; n0 = 0 would select the first-step branch) and m0 ~ N(0, 1), so that
    both branches of m_t = max(a_i, m_{t-1} + log σ(a_f)) are taken."""
    from minirec.cells import slstm
    B, T, D, H, NH = d["B"], d["T"], d["D"], d["H"], d["NH"]
    params = slstm.init_params(rng, D, H, dtype=dtype, num_heads=NH)
    state0 = (_randn(rng, (B, H), dtype), _randn(rng, (B, H), dtype),
              rng.uniform(0.5, 2.0, (B, H)).astype(dtype), _randn(rng, (B, H), dtype))
    return {"params": params, "x": _randn(rng, (B, T, D), dtype), "state0": state0}


register(Entry("slstm", "cell", "minirec.cells.slstm",
               "sLSTM: m_t = max(a_i, m + log σ(a_f)), c_t = f c + i z, n_t = f n + i, "
               "h_t = o c_t / n_t (exp gates, block-diagonal R per head)",
               _slstm_inputs, dim_names=("B", "T", "D", "H", "NH"),
               sizes={"small": {"B": 2, "T": 5, "D": 3, "H": 4, "NH": 2},
                      "medium": {"B": 3, "T": 37, "D": 8, "H": 16, "NH": 4}},
               generic=lambda s: {"B": s[0], "T": s[1], "D": s[2], "H": s[3],
                                  "NH": 4 if s[3] % 4 == 0 else 1}))

# --- gru_diagonal, lstm_diagonal: ParaRNN (issue 12) ---
def _diagonal_cell_inputs(module_path, state="h"):
    """The cell's inputs with a diagonal W_hh (``init_params(..., diagonal=True)``)."""
    def make(rng, dtype, d, method=None):
        B, T, D, H = d["B"], d["T"], d["D"], d["H"]
        mod = importlib.import_module(module_path)
        params = mod.init_params(rng, D, H, dtype=dtype, diagonal=True)
        parts = 2 if state == "hc" else 1
        state0 = tuple(_randn(rng, (B, H), dtype) for _ in range(parts))
        return {"params": params, "x": _randn(rng, (B, T, D), dtype),
                "state0": state0 if parts > 1 else state0[0]}
    return make


def _gru_diagonal():
    from minirec.cells import gru
    return gru.DIAGONAL


def _lstm_diagonal():
    from minirec.cells import lstm
    return lstm.DIAGONAL


register(Entry("gru_diagonal", "cell", "minirec.cells.gru",
               "ParaRNN GRU: diagonal W_hh (3H,), gh = w ⊙ h_{t-1} + b_hh per gate; "
               "Newton is a diagonal scan",
               _diagonal_cell_inputs("minirec.cells.gru"), build=_gru_diagonal))
register(Entry("lstm_diagonal", "cell", "minirec.cells.lstm",
               "ParaRNN LSTM: diagonal W_hh (4H,), a = … + w ⊙ h_{t-1}; "
               "Newton is a scan of 2×2 blocks per unit (h_j, c_j)",
               _diagonal_cell_inputs("minirec.cells.lstm", state="hc"), build=_lstm_diagonal))

# --- rnn_multihead, gru_multihead, lstm_multihead: FlashRNN's heads (issue 12) ---
def _multihead_cell_inputs(module_path, state="h"):
    """The cell's inputs with ``W_hh`` as NH blocks (``init_params(..., num_heads=NH)``)."""
    def make(rng, dtype, d, method=None):
        B, T, D, H, NH = d["B"], d["T"], d["D"], d["H"], d["NH"]
        mod = importlib.import_module(module_path)
        params = mod.init_params(rng, D, H, dtype=dtype, num_heads=NH)
        parts = 2 if state == "hc" else 1
        state0 = tuple(_randn(rng, (B, H), dtype) for _ in range(parts))
        return {"params": params, "x": _randn(rng, (B, T, D), dtype),
                "state0": state0 if parts > 1 else state0[0]}
    return make


def _multihead_entry(name, module_path, summary, state="h"):
    return Entry(name, "cell", module_path, summary, _multihead_cell_inputs(module_path, state),
                 dim_names=("B", "T", "D", "H", "NH"),
                 sizes={"small": {"B": 2, "T": 5, "D": 3, "H": 4, "NH": 2},
                        "medium": {"B": 3, "T": 37, "D": 8, "H": 16, "NH": 4}},
                 generic=lambda s: {"B": s[0], "T": s[1], "D": s[2], "H": s[3],
                                    "NH": 4 if s[3] % 4 == 0 else 1})


register(_multihead_entry("rnn_multihead", "minirec.cells.rnn",
                          "multi-head RNN (FlashRNN): block-diagonal W_hh, one (dh, dh) block "
                          "per head"))
register(_multihead_entry("gru_multihead", "minirec.cells.gru",
                          "multi-head GRU (FlashRNN): block-diagonal W_hh (NH, 3dh, dh), the "
                          "gates r, z, n of a head see only its own h"))
register(_multihead_entry("lstm_multihead", "minirec.cells.lstm",
                          "multi-head LSTM (FlashRNN): block-diagonal W_hh (NH, 4dh, dh), the "
                          "gates i, f, g, o of a head see only its own h", state="hc"))

# ---------------------------------------------------------------------------
# one calling convention for every entry
# ---------------------------------------------------------------------------

def get(name: str) -> Entry:
    """The entry called ``name`` (``ValueError`` listing the names if unknown)."""
    if name not in ENTRIES:
        raise ValueError(f"unknown registry entry {name!r}; expected one of {sorted(ENTRIES)}")
    return ENTRIES[name]


def _method_kwargs(entry: Entry, method: str, backend: str) -> dict:
    kw = dict(entry.forward_kwargs)
    kw.update(method=method, backend=backend)
    if method not in ("recurrent",) and entry.chunk_size is not None:
        import inspect
        if "chunk_size" in inspect.signature(entry.module.forward).parameters:
            kw["chunk_size"] = entry.chunk_size
    return kw


def _map_arrays(f, x):
    """``f`` on every NumPy/CuPy array inside dicts, tuples and lists; other
    leaves (numbers, strings, a list of floats) are kept as they are."""
    if isinstance(x, dict):
        return {k: _map_arrays(f, v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_map_arrays(f, v) for v in x)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f(x)
    return x


def to_device(x: Any, backend: str) -> Any:
    """``x`` with every NumPy array moved to where ``backend`` computes:
    CuPy arrays for ``"cupy"``, unchanged otherwise."""
    if backend != "cupy":
        return x
    import cupy
    return _map_arrays(lambda a: cupy.asarray(a) if isinstance(a, np.ndarray) else a, x)


def to_host(x: Any) -> Any:
    """``x`` with every CuPy array copied back to NumPy."""
    return _map_arrays(_to_host, x)


class OnDevice:
    """An entry's module seen from the host: NumPy arrays in and out, run on
    ``backend``'s device (CuPy for ``"cupy"``). The registry's checks (and
    :mod:`minirec.gradcheck`) build and compare NumPy arrays; this moves them."""

    def __init__(self, module: Any, backend: str) -> None:
        self.module, self.backend = module, backend

    def forward(self, *args, **kwargs):
        """The module's ``forward`` on device copies; ``(out, state)`` back on the host."""
        out, state, cache = self.module.forward(*to_device(args, self.backend),
                                                **to_device(kwargs, self.backend))
        return to_host(out), to_host(state), cache

    def backward(self, *args, **kwargs):
        """The module's ``backward`` on device copies; the gradients back on the host."""
        return to_host(self.module.backward(*to_device(args, self.backend),
                                            **to_device(kwargs, self.backend)))


def _module(entry: Entry, backend: str | None) -> Any:
    return OnDevice(entry.module, backend) if backend == "cupy" else entry.module


def run_forward(entry: Entry, inputs: dict, **kwargs) -> tuple[Any, Any, Any]:
    """``entry.module.forward`` on ``inputs`` → ``(out, final_state, cache)``
    (NumPy in and out; with ``backend="cupy"`` the arrays travel to the GPU)."""
    mod = _module(entry, kwargs.get("backend"))
    if entry.kind == "cell":
        return mod.forward(inputs["params"], inputs["x"], inputs.get("state0"), **kwargs)
    return mod.forward(**inputs, **kwargs)


def _holds_cupy(x: Any, depth: int = 4) -> bool:
    """Whether a cache holds a CuPy array (searched ``depth`` levels deep)."""
    if type(x).__module__.startswith("cupy"):
        return True
    if depth == 0:
        return False
    if isinstance(x, dict):
        return any(_holds_cupy(v, depth - 1) for v in x.values())
    if isinstance(x, (tuple, list)):
        return any(_holds_cupy(v, depth - 1) for v in x)
    return False


def run_backward(entry: Entry, inputs: dict, cache: Any, d_out: Any, d_state: Any) -> dict:
    """``entry.module.backward`` → gradient dict (cells: params keys, ``x``, ``state0``);
    NumPy in and out, on the device the cache was made on."""
    on_gpu = getattr(cache, "backend", None) == "cupy" or _holds_cupy(cache)
    mod = _module(entry, "cupy" if on_gpu else None)
    if entry.kind == "cell":
        return mod.backward(inputs["params"], cache, d_out, d_state)
    return mod.backward(cache, d_out, d_state)


def _cast(x, dtype_map):
    if x is None:
        return None
    if isinstance(x, dict):
        return {k: _cast(v, dtype_map) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_cast(v, dtype_map) for v in x)
    x = np.asarray(x)
    return x.astype(dtype_map(x.dtype)) if x.dtype.kind in "fc" else x


def _to64(x):
    return _cast(x, lambda d: C128 if d.kind == "c" else F64)


def _flatten(prefix: str, x) -> dict[str, np.ndarray]:
    if x is None:
        return {}
    if isinstance(x, dict):
        out = {}
        for k, v in x.items():
            out.update(_flatten(f"{prefix}{k}" if not prefix else f"{prefix}.{k}", v))
        return out
    if isinstance(x, (tuple, list)):
        out = {}
        for i, v in enumerate(x):
            out.update(_flatten(f"{prefix}[{i}]", v))
        return out
    return {prefix: np.asarray(_to_host(x))}


def rel_rms(x: np.ndarray, ref: np.ndarray) -> float:
    """``sqrt(mean|x − ref|²) / sqrt(mean|ref|²)`` (absolute when ``ref`` is 0)."""
    x = np.asarray(x, dtype=np.result_type(x, np.float64))
    ref = np.asarray(ref, dtype=np.result_type(ref, np.float64))
    if x.shape != ref.shape:
        raise ValueError(f"rel_rms: shapes differ: {x.shape} vs {ref.shape}")
    if ref.size == 0:
        return 0.0
    num = np.sqrt(np.mean(np.abs(x - ref) ** 2))
    den = np.sqrt(np.mean(np.abs(ref) ** 2))
    return float(num / den) if den > 0 else float(num)


def agreement(entry: Entry, method: str, backend: str = "numpy", dtype=F64,
              size: str = "medium", seed: int = 0) -> dict[str, float]:
    """Relative RMS difference between ``method``/``backend`` in ``dtype`` and the
    float64 recurrent NumPy definition, for the outputs, the final state and every
    gradient (random upstream gradients, the same for both).

    Returns ``{"out": e, "state": e, "d<name>": e, …}``.
    """
    rng = np.random.default_rng(seed)
    inputs = entry.make_inputs(rng, dtype, size, method=method)
    ref_inputs = _to64(inputs)
    ref_kw = _method_kwargs(entry, "recurrent", "numpy")
    out_r, st_r, cache_r = run_forward(entry, ref_inputs, **ref_kw)
    d_out = _gc._like(rng, out_r)
    d_state = (tuple(_gc._like(rng, s) for s in st_r) if isinstance(st_r, (tuple, list))
               else _gc._like(rng, st_r))
    g_r = run_backward(entry, ref_inputs, cache_r, d_out, d_state)

    def like_input(u):  # upstream gradients in the run's own precision
        single = np.dtype(dtype) in (F32, C64)
        return _cast(u, lambda d: (C64 if d.kind == "c" else F32) if single else d)

    kw = _method_kwargs(entry, method, backend)
    out, st, cache = run_forward(entry, inputs, **kw)
    g = run_backward(entry, inputs, cache, like_input(d_out), like_input(d_state))
    errors = {}
    for label, a, b in (("out", out, out_r), ("state", st, st_r)):
        for k, v in _flatten(label, a).items():
            errors[k] = rel_rms(v, _flatten(label, b)[k])
    ref_flat = _flatten("", g_r)
    for k, v in _flatten("", g).items():
        if k in ref_flat:
            errors["d" + k] = rel_rms(_to_host(v), ref_flat[k])
    missing = sorted(set(ref_flat) - set(_flatten("", g)))
    if missing:
        raise ValueError(f"{entry.name} {method}/{backend}: backward did not return {missing}")
    return errors


def _to_host(x):
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else x


def gradcheck(entry: Entry, method: str = "recurrent", backend: str = "numpy", seed: int = 0,
              **kwargs) -> _gc.GradcheckReport:
    """Float64 central-difference check of ``entry`` with its "small" inputs."""
    rng = np.random.default_rng(seed)
    inputs = entry.make_inputs(rng, np.complex128 if C128 in entry.dtypes
                               and F64 not in entry.dtypes else F64, "small", method=method)
    kw = _method_kwargs(entry, method, backend)
    if entry.kind == "cell":
        return _gc.check_cell(_module(entry, backend), inputs["params"], inputs["x"],
                              inputs.get("state0"), seed=seed, **kw, **kwargs)
    return _gc.check_op(_module(entry, backend), inputs, seed=seed, **kw, **kwargs)
