"""The GLA engine's definition: the recurrence as a loop over time, with BPTT.

Dimension key: B batch, T time, H heads, K key/query size, V value size.
``q, k (B, T, H, K)``, ``v (B, T, H, V)``, state ``S (B, H, K, V)`` (K-first),
per-step log decay ``g``: ``None`` (no decay), ``(B, T, H)`` (one scalar per
head, multiplying the whole ``S``) or ``(B, T, H, K)`` (one per key row of
``S``); ``a_t = e^{g_t}``. ``u``: ``None`` (GLA mode) or ``(H, K)`` (RWKV-6's
bonus). Per batch row and head:

    GLA mode (u is None):
        S_t = Diag(a_t) S_{t−1} + k_t v_t^T
        o_t = scale · S_t^T q_t
    RWKV mode (u given):
        o_t = scale · (S_{t−1} + Diag(u) k_t v_t^T)^T q_t
            = scale · S_{t−1}^T q_t + scale · (q_t · (u ⊙ k_t)) v_t
        S_t = Diag(a_t) S_{t−1} + k_t v_t^T

Backward (BPTT). ``dS`` is ∂L/∂S_t, starting from ``dstate`` at t = T−1 and
flowing back through the decay; ``do_t`` = ∂L/∂o_t:

    GLA mode, step t (reverse order):
        dS    += scale · q_t do_t^T               (o_t reads S_t)
        dq_t   = scale · S_t do_t
        dk_t   = dS v_t
        dv_t   = dS^T k_t
        dg_t   = Σ_V dS ⊙ (a_t S_{t−1})            (per key; Σ_K Σ_V for a scalar g)
        dS    ← a_t dS                             (now ∂L/∂S_{t−1})
    RWKV mode, step t (reverse order; dS already holds all of ∂L/∂S_t):
        c_t    = scale · (v_t · do_t)
        dq_t   = scale · S_{t−1} do_t + c_t (u ⊙ k_t)
        dk_t   = dS v_t + c_t (u ⊙ q_t)
        dv_t   = dS^T k_t + scale · (q_t · (u ⊙ k_t)) do_t
        du    += c_t (q_t ⊙ k_t)                   (summed over B and T)
        dg_t   = Σ_V dS ⊙ (a_t S_{t−1})
        dS    ← a_t dS + scale · q_t do_t^T        (o_t reads S_{t−1})
    d initial_state = dS after step 0.

Memory: the backward needs every ``S_{t−1}``. Instead of keeping all T states
(``B·T·H·K·V`` numbers: 2 GB at T = 4096, H = 4, K = V = 128 in float32) the
forward keeps one state every :data:`SEGMENT` steps (a checkpoint) and the
backward recomputes the states of one segment at a time, with the same
operations as the forward, so they are bitwise the states the forward had.

``g`` is handled in one shape ``(B, T, H, K')`` with ``K' = K`` (per key) or
``K' = 1`` (scalar per head, and ``g = None`` as zeros: ``e^0 = 1`` exactly,
so no decay is no rounding either); :func:`key_gate` and :func:`gate_grad`
convert, and the other forms use them too.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# steps between two stored states: the backward recomputes at most this many
# states at once (memory B·H·K·V·SEGMENT instead of B·H·K·V·T)
SEGMENT = 64


def key_gate(g: np.ndarray | None, q: np.ndarray) -> np.ndarray:
    """The log decay in the engine's one shape ``(B, T, H, K')``: ``None`` →
    zeros ``(B, T, H, 1)``, ``(B, T, H)`` → ``(B, T, H, 1)`` (a view),
    ``(B, T, H, K)`` as it is."""
    if g is None:
        return np.zeros(q.shape[:3] + (1,), q.dtype)
    return g[..., None] if g.ndim == 3 else g


def gate_grad(dg: np.ndarray, g: np.ndarray | None) -> np.ndarray | None:
    """Back from :func:`key_gate`'s shape to ``g``'s: ``None`` for ``g = None``."""
    if g is None:
        return None
    return dg[..., 0] if g.ndim == 3 else dg


def reduce_gate(x: np.ndarray, width: int) -> np.ndarray:
    """Sum ``x (..., K)`` to the gate's width ``K'`` (``K' = 1``: over K, kept)."""
    return x if width != 1 or x.shape[-1] == 1 else x.sum(axis=-1, keepdims=True)


class RecurrentCache(NamedTuple):
    """What :func:`backward` needs: the inputs ``q, k, v``, ``g4 (B, T, H, K')``
    (:func:`key_gate`), ``g`` as given (for the shape of its gradient), ``u``,
    ``scale``, and ``checkpoints (B, ⌈T/SEGMENT⌉, H, K, V)``: the state before
    steps 0, SEGMENT, 2·SEGMENT, … (``checkpoints[:, 0]`` is the initial state)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    g4: np.ndarray
    g: np.ndarray | None
    u: np.ndarray | None
    scale: float
    checkpoints: np.ndarray


def _read(q_t: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``S^T q`` per batch row and head: ``q_t (B, H, K)``, ``S (B, H, K, V)`` → ``(B, H, V)``."""
    return np.matmul(q_t[:, :, None, :], S)[:, :, 0]


def _step(S: np.ndarray, a_t: np.ndarray, k_t: np.ndarray, v_t: np.ndarray) -> np.ndarray:
    """``S_t = Diag(a_t) S_{t−1} + k_t v_t^T`` (``a_t (B, H, K')``)."""
    return a_t[..., None] * S + k_t[..., :, None] * v_t[..., None, :]


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None,
            u: np.ndarray | None, initial_state: np.ndarray, scale: float
            ) -> tuple[np.ndarray, np.ndarray, RecurrentCache]:
    """Run the recurrence (module docstring) step by step.

    Returns ``o (B, T, H, V)``, ``S_T (B, H, K, V)`` and the cache."""
    B, T, H, _ = q.shape
    g4 = key_gate(g, q)
    o = np.empty(v.shape, np.result_type(q, v))
    checkpoints = []
    S = initial_state
    for t in range(T):
        if t % SEGMENT == 0:
            checkpoints.append(S)
        if u is not None:  # RWKV: read S_{t−1} plus the bonus of the current token
            bonus = np.sum(q[:, t] * u * k[:, t], axis=-1)           # (B, H)
            o[:, t] = scale * (_read(q[:, t], S) + bonus[..., None] * v[:, t])
        S = _step(S, np.exp(g4[:, t]), k[:, t], v[:, t])
        if u is None:      # GLA: read S_t
            o[:, t] = scale * _read(q[:, t], S)
    cache = RecurrentCache(q, k, v, g4, g, u, scale, np.stack(checkpoints, axis=1))
    return o, S.copy() if S is initial_state else S, cache


def backward(cache: RecurrentCache, do: np.ndarray, dstate: np.ndarray) -> dict:
    """BPTT through :func:`forward` (equations in the module docstring), one
    segment of :data:`SEGMENT` steps at a time, last segment first.

    Returns ``{"q", "k", "v", "g", "u", "initial_state"}`` (``g``/``u`` ``None``
    when they were ``None``)."""
    q, k, v, g4, u, scale = cache.q, cache.k, cache.v, cache.g4, cache.u, cache.scale
    T = q.shape[1]
    width = g4.shape[-1]
    dq, dk, dv = np.empty(q.shape, q.dtype), np.empty(k.shape, k.dtype), np.empty(v.shape, v.dtype)
    dg4 = np.empty(g4.shape, g4.dtype)
    du = None if u is None else np.zeros(u.shape, u.dtype)
    dS = dstate
    for n in reversed(range(cache.checkpoints.shape[1])):
        start, stop = n * SEGMENT, min(T, (n + 1) * SEGMENT)
        # recompute S_{start−1}, …, S_{stop−1} exactly as the forward did
        states = [cache.checkpoints[:, n]]
        for t in range(start, stop):
            states.append(_step(states[-1], np.exp(g4[:, t]), k[:, t], v[:, t]))
        for t in reversed(range(start, stop)):
            S_prev, S_t = states[t - start], states[t - start + 1]
            q_t, k_t, v_t, do_t = q[:, t], k[:, t], v[:, t], do[:, t]
            a_t = np.exp(g4[:, t])
            read = scale * q_t[..., :, None] * do_t[..., None, :]   # scale · q_t do_t^T
            if u is None:
                dS = dS + read
                dq[:, t] = scale * np.matmul(S_t, do_t[..., None])[..., 0]
            else:
                c_t = scale * np.sum(v_t * do_t, axis=-1)[..., None]   # (B, H, 1)
                dq[:, t] = scale * np.matmul(S_prev, do_t[..., None])[..., 0] + c_t * u * k_t
            dk[:, t] = np.matmul(dS, v_t[..., None])[..., 0]
            dv[:, t] = np.matmul(k_t[..., None, :], dS)[..., 0, :]
            dg4[:, t] = reduce_gate(np.sum(dS * (a_t[..., None] * S_prev), axis=-1), width)
            dS = a_t[..., None] * dS
            if u is not None:
                dk[:, t] += c_t * u * q_t
                bonus = scale * np.sum(q_t * u * k_t, axis=-1)         # (B, H)
                dv[:, t] += bonus[..., None] * do_t
                du += np.sum(c_t * q_t * k_t, axis=0)
                dS = dS + read
    return {"q": dq, "k": dk, "v": dv, "g": gate_grad(dg4, cache.g), "u": du,
            "initial_state": dS if dS is not dstate else dS.copy()}
