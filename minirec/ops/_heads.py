"""Argument checks shared by the multi-head matrix-state ops (linear attention,
retention, GLA, RWKV-6, the delta rules, mLSTM, SSD).

Dimension key: B batch, T time, H heads, K key/query size, V value size.
Every op takes ``q, k (B, T, H, K)``, ``v (B, T, H, V)`` (or its own names
for them), per-step gates ``(B, T, H)`` or ``(B, T, H, K)``, and a K-first
matrix state ``S (B, H, K, V)`` (DESIGN §3). These helpers check such
arguments through :mod:`minirec._validate`, so every op refuses bad input with
the same messages.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minirec import _backend
from minirec import _validate as V

METHODS = ("recurrent", "parallel", "chunk")
QK = ("B", "T", "H", "K")
VV = ("B", "T", "H", "V")
GATE = ("B", "T", "H")
STATE = ("B", "H", "K", "V")
# the ops' default chunk length (FlashLinearAttention's too): C² scores per chunk
# stay in L2 while the matmuls are large enough for BLAS to run near its peak
DEFAULT_CHUNK_SIZE = 64


def check_call(what: str, method: Any, backend: Any, chunk_size: Any, backends: tuple,
               backend_methods: dict, methods: tuple = METHODS) -> int:
    """Check ``method``, ``backend`` (and that it runs ``method``) and
    ``chunk_size`` (a positive int, checked even where the method ignores it;
    ``None`` means :data:`DEFAULT_CHUNK_SIZE`); return ``chunk_size``."""
    V.choice("method", method, methods)
    _backend.resolve(backend, backends, what=what, method=method,
                     backend_methods=backend_methods)
    chunk_size = V.positive_int("chunk_size", chunk_size, allow_none=True)
    return DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size


def time_array(s: V.Shapes, name: str, x: Any, spec: tuple) -> Any:
    """A real float array of shape ``spec`` (names bound in ``s``)."""
    V.array(name, x, ndim=len(spec), allow_complex=False)
    s.check(name, x, spec)
    return x


def qkv(q: Any, k: Any, v: Any, *, names: tuple[str, str, str] = ("q", "k", "v"),
        s: V.Shapes | None = None) -> V.Shapes:
    """Check ``q, k (B, T, H, K)`` and ``v (B, T, H, V)`` (real floats, ``T ≥ 1``)
    and return the bound :class:`~minirec._validate.Shapes`."""
    s = V.Shapes() if s is None else s
    time_array(s, names[0], q, QK)
    time_array(s, names[1], k, QK)
    time_array(s, names[2], v, VV)
    V.time_steps(names[0], q)
    return s


def scale(value: Any, K: int) -> float:
    """``scale``: ``None`` means ``K ** -0.5``; otherwise a positive finite number."""
    if value is None:
        return float(K) ** -0.5
    return V.positive_float("scale", value)


def state(s: V.Shapes, name: str, x: Any, spec: tuple, dtype: Any, like: Any) -> Any:
    """One part of an initial state: ``None`` → zeros ``spec`` (on ``like``'s
    device), else a real float array of that shape; cast to ``dtype`` is refused
    (mixed precisions are a ``TypeError`` through :func:`~minirec._validate.common_dtype`)."""
    shape = tuple(s[d] if isinstance(d, str) else d for d in spec)
    if x is None:
        return _backend.xp_of(like).zeros(shape, dtype)
    time_array(s, name, x, spec)
    V.common_dtype(**{name: x, "q": like})
    return x


def state_tuple(name: str, x: Any, n: int) -> tuple:
    """``None`` → ``(None,) * n``; a tuple/list of ``n`` parts → a tuple; else a
    ``TypeError`` saying the structure expected."""
    if x is None:
        return (None,) * n
    if not isinstance(x, (tuple, list)) or len(x) != n:
        got = (f"a {type(x).__name__} of length {len(x)}" if isinstance(x, (tuple, list))
               else type(x).__name__)
        raise TypeError(f"{name}: expected a tuple of {n} arrays, got {got}")
    return tuple(x)


def dtype_of(**arrays: Any) -> np.dtype:
    """The common (real) dtype of the given arrays (``None`` entries skipped)."""
    return V.common_dtype(**arrays)


def inputs(q: Any, k: Any, v: Any, scale_arg: Any, gates: tuple = (), *,
           names: tuple[str, str, str] = ("q", "k", "v")) -> tuple[V.Shapes, np.dtype, float]:
    """A forward's checks of ``q, k (B, T, H, K)``, ``v (B, T, H, V)`` (:func:`qkv`),
    its other arrays ``gates``, ``(name, array, spec)`` triples such as
    ``("g", g, GATE)`` (:func:`time_array`), their common dtype and the scale
    ``scale_arg`` (:func:`scale`); return the bound shapes, the dtype and the scale."""
    s = qkv(q, k, v, names=names)
    for name, x, spec in gates:
        time_array(s, name, x, spec)
    dtype = dtype_of(**dict(zip(names, (q, k, v))), **{name: x for name, x, _ in gates})
    return s, dtype, scale(scale_arg, s["K"])


def grads_in(what: str, cache: Any, cls: type, dout: Any, dstate: Any, *,
             out: str = "o") -> tuple[Any, Any, Any]:
    """A backward's checks: ``cache`` a ``cls`` (from the forward), the upstream
    gradient ``d<out>`` against ``cache.<out>_like`` and ``dstate`` against
    ``cache.state_like`` (``None``, or ``None`` parts, filled with zeros);
    return ``(cache, dout, dstate)``."""
    c = V.cache(what, cache, cls)
    dout = V.grad_like(f"d{out}", dout, getattr(c, f"{out}_like"), out, fill=True)
    dstate = V.grad_state("dstate", dstate, c.state_like, fill=True)
    return c, dout, dstate
