"""The delta engine's definition: the (gated) delta rule as a loop over time.

Dimension key: B batch, T time, H heads, K key size, V value size.
``q, k (B, T, H, K)``, ``v (B, T, H, V)``, ``beta (B, T, H)``, ``g`` ``None``
or ``(B, T, H)`` (log decay, multiplier ``a_t = e^{g_t}``), state
``S (B, H, K, V)`` K-first. Per batch row and head, at every step t:

    a_t  = e^{g_t}                       (a_t = 1 when g is None)
    Sp   = a_t S_{t−1}                   decay first (DESIGN §3) ...
    u_t  = v_t − Sp^T k_t                ... then the error against the decayed state
    S_t  = Sp + β_t k_t u_t^T            = a_t (I − β_t k_t k_t^T) S_{t−1} + β_t k_t v_t^T
    o_t  = scale · S_t^T q_t

Backward (BPTT). ``dS`` is ∂L/∂S_t, starting from ``dstate`` at t = T−1 and
flowing to t − 1; at step t, going back through each line above:

    dS   += scale · q_t do_t^T           dq_t = scale · S_t do_t        (o_t)
    dβ_t  = k_t^T dS u_t                 dk_t = β_t dS u_t              (S_t)
    du    = β_t dS^T k_t                 dSp  = dS
    dv_t  = du                           dk_t −= Sp du                  (u_t)
    dSp  −= k_t du^T
    dg_t  = Σ dSp ⊙ Sp                   dS_{t−1} = a_t dSp             (Sp = a_t S_{t−1})

and ``d initial_state`` is the ``dS`` left after step 0. The cache keeps the
state before every step (``S_prev (B, T, H, K, V)``); the backward rebuilds
``Sp``, ``u_t`` and ``S_t`` from it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class RecurrentCache(NamedTuple):
    """What :func:`backward` needs: the inputs ``q, k, v, g, beta`` (``g`` may be
    ``None``), ``scale``, and ``S_prev (B, T, H, K, V)``, the state before every
    step (``S_prev[:, 0]`` is the initial state)."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    g: np.ndarray | None
    beta: np.ndarray
    scale: float
    S_prev: np.ndarray


def _step(S, q_t, k_t, v_t, a_t, beta_t, scale):
    """One step from ``S_{t−1} (B, H, K, V)``; returns ``(Sp, u, S_t, o_t)``."""
    Sp = S if a_t is None else a_t[..., None, None] * S
    u = v_t - np.einsum("bhkv,bhk->bhv", Sp, k_t)
    S_t = Sp + beta_t[..., None, None] * (k_t[..., :, None] * u[..., None, :])
    o_t = scale * np.einsum("bhkv,bhk->bhv", S_t, q_t)
    return Sp, u, S_t, o_t


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray | None,
            beta: np.ndarray, initial_state: np.ndarray, scale: float
            ) -> tuple[np.ndarray, np.ndarray, RecurrentCache]:
    """Run the recurrence of the module docstring over time (inputs already checked).

    Returns ``o (B, T, H, V)``, the final state ``S_T (B, H, K, V)`` and the
    :class:`RecurrentCache`.
    """
    B, T, H, K = q.shape
    Vd = v.shape[-1]
    dtype = q.dtype
    o = np.empty((B, T, H, Vd), dtype)
    S_prev = np.empty((B, T, H, K, Vd), dtype)
    a = None if g is None else np.exp(g)
    S = initial_state
    for t in range(T):
        S_prev[:, t] = S
        _, _, S, o[:, t] = _step(S, q[:, t], k[:, t], v[:, t], None if a is None else a[:, t],
                                 beta[:, t], scale)
    return o, S.copy(), RecurrentCache(q, k, v, g, beta, scale, S_prev)


def backward(cache: RecurrentCache, do: np.ndarray, dstate: np.ndarray) -> dict:
    """BPTT through :func:`forward` (equations in the module docstring).

    ``do (B, T, H, V)`` and ``dstate (B, H, K, V)`` are arrays of the forward's
    dtype. Returns ``{"q", "k", "v", "g", "beta", "initial_state"}`` (``g``
    ``None`` when the forward's ``g`` was ``None``).
    """
    q, k, v, g, beta, scale, S_prev = cache
    T = q.shape[1]
    a = None if g is None else np.exp(g)
    dq = np.empty(q.shape, q.dtype)
    dk = np.empty(k.shape, k.dtype)
    dv = np.empty(v.shape, v.dtype)
    dbeta = np.empty(beta.shape, beta.dtype)
    dg = None if g is None else np.empty(g.shape, g.dtype)
    dS = dstate
    for t in reversed(range(T)):
        q_t, k_t, b_t = q[:, t], k[:, t], beta[:, t]
        a_t = None if a is None else a[:, t]
        Sp, u, S_t, _ = _step(S_prev[:, t], q_t, k_t, v[:, t], a_t, b_t, scale)
        # o_t = scale · S_t^T q_t
        dq[:, t] = scale * np.einsum("bhkv,bhv->bhk", S_t, do[:, t])
        dS = dS + scale * (q_t[..., :, None] * do[:, t][..., None, :])
        # S_t = Sp + β_t k_t u_t^T
        dS_u = np.einsum("bhkv,bhv->bhk", dS, u)            # dS u_t
        dbeta[:, t] = np.einsum("bhk,bhk->bh", k_t, dS_u)
        du = b_t[..., None] * np.einsum("bhkv,bhk->bhv", dS, k_t)
        # u_t = v_t − Sp^T k_t
        dv[:, t] = du
        dk[:, t] = b_t[..., None] * dS_u - np.einsum("bhkv,bhv->bhk", Sp, du)
        dSp = dS - k_t[..., :, None] * du[..., None, :]
        # Sp = a_t S_{t−1}
        if a_t is None:
            dS = dSp
        else:
            dg[:, t] = np.einsum("bhkv,bhkv->bh", dSp, Sp)
            dS = a_t[..., None, None] * dSp
    return {"q": dq, "k": dk, "v": dv, "g": dg, "beta": dbeta, "initial_state": dS}
