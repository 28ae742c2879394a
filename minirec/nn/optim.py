"""Adam and global-norm gradient clipping as pure functions (optax's style).

Parameters and gradients are dicts of arrays (nested dicts, lists and tuples
of arrays work too, e.g. ``{"cell": lstm_params, "head": linear_params}``);
``grads`` must have exactly the structure of ``params``. Nothing is modified
in place: every function returns new containers and new arrays.

Adam (Kingma & Ba 2015, Algorithm 1), at step ``t = 1, 2, …`` for every
parameter ``p`` with gradient ``g``::

    m  ← b1 m + (1 − b1) g
    v  ← b2 v + (1 − b2) g²
    m̂  = m / (1 − b1^t)            v̂ = v / (1 − b2^t)
    p  ← p − lr m̂ / (√v̂ + eps)

Clipping by the global norm (Pascanu et al. 2013)::

    n = √(Σ_p ‖g_p‖²);   g ← g · max_norm / n   if n > max_norm
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from minirec import _validate as V

Tree = Any  # an array, or a dict / list / tuple of trees


def _map(fn: Callable, *trees: Tree, path: str = "params") -> Tree:
    """Apply ``fn(path, *leaves)`` to matching leaves; the trees must share structure."""
    first = trees[0]
    if isinstance(first, dict):
        for other in trees[1:]:
            if not isinstance(other, dict) or set(other) != set(first):
                got = sorted(other) if isinstance(other, dict) else type(other).__name__
                missing = sorted(set(first) - set(other)) if isinstance(other, dict) else []
                extra = sorted(set(other) - set(first)) if isinstance(other, dict) else []
                raise ValueError(
                    f"{path}: expected keys {sorted(first)}, got {got} "
                    f"(missing {missing}, unexpected {extra}); pass only the parameters' "
                    "gradients, e.g. {k: grads[k] for k in params}"
                )
        return {k: _map(fn, *(t[k] for t in trees), path=f"{path}[{k!r}]") for k in first}
    if isinstance(first, (list, tuple)):
        for other in trees[1:]:
            if not isinstance(other, (list, tuple)) or len(other) != len(first):
                raise ValueError(f"{path}: expected a sequence of length {len(first)}, "
                                 f"got {type(other).__name__}")
        return type(first)(_map(fn, *(t[i] for t in trees), path=f"{path}[{i}]")
                           for i in range(len(first)))
    return fn(path, *trees)


def _leaves(tree: Tree) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    _map(lambda path, x: out.append(x), tree)
    return out


def _check_leaf(path: str, p, *others) -> None:
    V.array(path, p, allow_complex=False)
    for g in others:
        V.array(path, g, allow_complex=False)
        V.same_shape(path, g, path.replace("grads", "params", 1), p)


def adam_init(params: Tree) -> dict:
    """Adam's state: ``{"step": 0, "m": zeros like params, "v": zeros like params}``."""
    def zeros(path, p):
        V.array(path, p, allow_complex=False)
        return np.zeros_like(p)
    return {"step": 0, "m": _map(zeros, params), "v": _map(zeros, params)}


def adam_update(params: Tree, grads: Tree, state: dict, lr: float = 1e-3, b1: float = 0.9,
                b2: float = 0.999, eps: float = 1e-8) -> tuple[Tree, dict]:
    """One Adam step; returns ``(new_params, new_state)`` and modifies nothing.

    Args:
        params: the parameters (dict of arrays, possibly nested).
        grads: their gradients, with exactly the same keys and shapes.
        state: from :func:`adam_init` or a previous :func:`adam_update`.
        lr: step size.
        b1: decay rate of the first moment.
        b2: decay rate of the second moment.
        eps: denominator guard.
    """
    _map(_check_leaf, params, grads, path="grads")
    t = int(state["step"]) + 1
    m = _map(lambda _, m, g: b1 * m + (1 - b1) * g, state["m"], grads, path="state['m']")
    v = _map(lambda _, v, g: b2 * v + (1 - b2) * (g * g), state["v"], grads, path="state['v']")
    c1 = 1.0 - b1 ** t
    c2 = 1.0 - b2 ** t

    def step(_, p, m, v):
        upd = lr * (m / c1) / (np.sqrt(v / c2) + eps)
        return (p - upd).astype(p.dtype, copy=False)

    new_params = _map(step, params, m, v)
    m = _map(lambda _, m, p: m.astype(p.dtype, copy=False), m, params)
    v = _map(lambda _, v, p: v.astype(p.dtype, copy=False), v, params)
    return new_params, {"step": t, "m": m, "v": v}


def global_norm(grads: Tree) -> float:
    """``√(Σ_p ‖g_p‖²)`` over every array of ``grads`` (accumulated in float64)."""
    return float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64)))
                             for g in _leaves(grads))))


def clip_by_global_norm(grads: Tree, max_norm: float) -> tuple[Tree, float]:
    """Scale all gradients by ``max_norm / n`` when their global norm ``n`` exceeds it.

    Returns ``(clipped_grads, n)`` with ``n`` the norm *before* clipping (log it:
    spikes in ``n`` are exploding gradients). Gradients under the limit come
    back unchanged (as new containers holding the same values).
    """
    if not (isinstance(max_norm, (int, float, np.floating, np.integer))
            and not isinstance(max_norm, bool) and max_norm > 0):
        raise ValueError(f"max_norm: expected a positive number, got {max_norm!r}")
    _map(lambda path, g: V.array(path, g, allow_complex=False), grads, path="grads")
    n = global_norm(grads)
    if n > max_norm:
        scale = max_norm / n
        return _map(lambda _, g: g * g.dtype.type(scale), grads), n
    return _map(lambda _, g: g.copy(), grads), n
