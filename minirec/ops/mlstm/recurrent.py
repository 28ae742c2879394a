"""mLSTM, the definition: the xLSTM recurrence as a loop over time, with BPTT.

Beck et al. 2024, "xLSTM: Extended Long Short-Term Memory", the mLSTM cell
(matrix memory, exponential input gate, normaliser and stabiliser). Dimension
key: B batch, T time, H heads, K key/query size, V value size; inputs
``q, k (B, T, H, K)``, ``v (B, T, H, V)``, gate pre-activations ``i, f (B, T, H)``;
state ``C (B, H, K, V)`` (K-first), ``n (B, H, K)``, ``m (B, H)``. One step,
per batch row and head (:func:`step_forward`):

    lf_t = log σ(f_t)                                    log forget gate ≤ 0
    m_t  = max(lf_t + m_{t−1}, i_t)                       stabiliser
    a_t  = e^{lf_t + m_{t−1} − m_t},  b_t = e^{i_t − m_t}  (both exponents ≤ 0)
    C_t  = a_t C_{t−1} + b_t k_t v_t^T
    n_t  = a_t n_{t−1} + b_t k_t
    q̃_t  = scale · q_t
    d_t  = n_t · q̃_t,   den_t = max(|d_t|, e^{−m_t})
    h_t  = C_t^T q̃_t / den_t

``C_t = e^{−m_t} C̄_t`` and ``n_t = e^{−m_t} n̄_t`` with the unstabilised
``C̄_t = e^{lf_t} C̄_{t−1} + e^{i_t} k_t v_t^T``, so ``h_t = C̄_t^T q̃_t /
max(|n̄_t · q̃_t|, 1)`` does not depend on the stabiliser at all; ``m`` only
keeps the exponents ≤ 0. ``e^{−m_t}`` is the one exponential of a possibly
positive number: it overflows to ``inf`` only where ``m_t < −88`` (float32,
``−709`` float64), where ``h_t`` is below the smallest float anyway, and
``inf`` then gives ``h_t = 0`` and zero gradients, its limit.

Backward of one step (:func:`step_backward`). ``(dC, dn, dm)`` = ∂L/∂(C_t,
n_t, m_t) flowing back from t+1 (or ``dstate``), ``dh`` = ∂L/∂h_t:

    dnum = dh / den_t                      (num = C_t^T q̃_t;  ∂L/∂num)
    hd   = Σ_V dh ⊙ h_t                    (−den · ∂L/∂den)
    through den = max(|d|, e^{−m}) — ties take the |d| branch:
      |d_t| ≥ e^{−m_t}:  dd = −hd / d_t            (∂den/∂d = sign d, den = |d|)
      otherwise:         dm += hd                  (∂den/∂m = −e^{−m} = −den)
    dC += q̃_t dnum^T,   dn += dd q̃_t
    dq  = scale · (C_t dnum + dd n_t)
    through C_t = a C_{t−1} + b k v^T and n_t = a n_{t−1} + b k:
      da = Σ dC ⊙ C_{t−1} + dn · n_{t−1}     db = k_t^T dC v_t + dn · k_t
      dk = b (dC v_t + dn)                   dv = b dC^T k_t
      dC_{t−1} = a dC                        dn_{t−1} = a dn
    through a = e^{lf + m_{t−1} − m_t} and b = e^{i − m_t}:
      dlf = a da,   dm_{t−1} = a da,   di = b db
      dm̄  = dm − a da − b db                (all of ∂L/∂m_t)
    through m_t = max(lf_t + m_{t−1}, i_t) — a subgradient; ties take the
    forget branch (the earlier argument, as in ``np.maximum``'s first):
      lf_t + m_{t−1} ≥ i_t:  dlf += dm̄,  dm_{t−1} += dm̄
      otherwise:             di += dm̄
    df = dlf · σ(−f)                        ((log σ)'(f) = 1 − σ(f) = σ(−f))

Because ``h_t`` does not depend on the stabiliser, every ``dm̄`` that comes
from the outputs cancels in total; what is left is the gradient of the
returned final ``m`` (``dstate``'s third part), carried back through the maxes.

Memory: the cache holds the state after every step (``C (B, T+1, H, K, V)``):
this is the reference, written for reading, not for long sequences.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec._math import log_sigmoid, sigmoid

State = tuple  # (C (B, H, K, V), n (B, H, K), m (B, H))


class MLSTMStepCache(NamedTuple):
    """What :func:`step_backward` needs from one :func:`step_forward`:
    ``qs = scale·q_t (B, H, K)``, ``k_t (B, H, K)``, ``v_t (B, H, V)``,
    ``i_t, f_t, lf_t = log σ(f_t) (B, H)``, the state before the step
    ``C_prev, n_prev, m_prev`` and after it ``C, n, m``, the output ``h (B, H, V)``,
    ``d = n·qs`` and ``den (B, H)``."""

    qs: np.ndarray
    k_t: np.ndarray
    v_t: np.ndarray
    i_t: np.ndarray
    f_t: np.ndarray
    lf_t: np.ndarray
    C_prev: np.ndarray
    n_prev: np.ndarray
    m_prev: np.ndarray
    C: np.ndarray
    n: np.ndarray
    m: np.ndarray
    h: np.ndarray
    d: np.ndarray
    den: np.ndarray


class RecurrentCache(NamedTuple):
    """What :func:`backward` needs: the inputs ``q, k, v, i, f`` as given
    ``(B, T, H, ·)``, ``scale``, and the states ``C (B, T+1, H, K, V)``,
    ``n (B, T+1, H, K)``, ``m (B, T+1, H)`` (index 0 the initial state, t+1 the
    state after step t), the outputs ``h (B, T, H, V)``, ``d, den (B, T, H)``."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    i: np.ndarray
    f: np.ndarray
    scale: float
    C: np.ndarray
    n: np.ndarray
    m: np.ndarray
    h: np.ndarray
    d: np.ndarray
    den: np.ndarray


def floor(m: np.ndarray) -> np.ndarray:
    """The normaliser's lower bound ``e^{−m}``. It overflows to ``inf`` (silently)
    only where ``m < −88`` (float32) / ``−709`` (float64): there ``h`` underflows
    anyway, and ``den = inf`` gives ``h = 0`` and zero gradients, the limit."""
    with np.errstate(over="ignore"):
        return np.exp(-m)


def step_forward(q_t: np.ndarray, k_t: np.ndarray, v_t: np.ndarray, i_t: np.ndarray,
                 f_t: np.ndarray, state: State, scale: float
                 ) -> tuple[np.ndarray, State, MLSTMStepCache]:
    """One mLSTM step (equations in the module docstring).

    ``q_t, k_t (B, H, K)``, ``v_t (B, H, V)``, ``i_t, f_t (B, H)`` pre-activations,
    ``state = (C (B, H, K, V), n (B, H, K), m (B, H))``. Returns ``h_t (B, H, V)``,
    the new state and the step cache.
    """
    C_prev, n_prev, m_prev = state
    lf_t = log_sigmoid(f_t)
    x = lf_t + m_prev                     # the forget branch of the max
    m = np.maximum(x, i_t)
    a = np.exp(x - m)                     # exponents ≤ 0 by construction
    b = np.exp(i_t - m)
    C = a[..., None, None] * C_prev + b[..., None, None] * (k_t[..., :, None] * v_t[..., None, :])
    n = a[..., None] * n_prev + b[..., None] * k_t
    qs = scale * q_t
    num = np.einsum("bhkv,bhk->bhv", C, qs)
    d = np.sum(n * qs, axis=-1)
    den = np.maximum(np.abs(d), floor(m))
    h = num / den[..., None]
    return h, (C, n, m), MLSTMStepCache(qs, k_t, v_t, i_t, f_t, lf_t, C_prev, n_prev, m_prev,
                                        C, n, m, h, d, den)


def step_backward(dh_t: np.ndarray, dstate_next: State, cache_t: MLSTMStepCache
                  ) -> tuple[dict, State]:
    """Back through :func:`step_forward` (equations in the module docstring).

    ``dh_t (B, H, V)``; ``dstate_next = (dC, dn, dm)`` ∂L/∂ the state after the
    step. Returns ``{"qs", "k", "v", "i", "f"}`` (``qs``: ∂L/∂(scale·q_t)) and
    ``(dC, dn, dm)`` of the state before it.
    """
    c = cache_t
    dC, dn, dm = dstate_next
    # through h = num / den, num = C^T qs, den = max(|d|, e^{−m}), d = n · qs
    dnum = dh_t / c.den[..., None]
    hd = np.sum(dh_t * c.h, axis=-1)
    d_branch = np.abs(c.d) >= floor(c.m)  # ties: the |d| branch
    dd = np.divide(-hd, c.d, out=np.zeros_like(hd), where=d_branch)
    dm = dm + np.where(d_branch, 0, hd)
    dC = dC + c.qs[..., :, None] * dnum[..., None, :]
    dn = dn + dd[..., None] * c.qs
    dqs = np.einsum("bhkv,bhv->bhk", c.C, dnum) + dd[..., None] * c.n
    # through C = a C_prev + b k v^T, n = a n_prev + b k
    x = c.lf_t + c.m_prev
    a = np.exp(x - c.m)
    b = np.exp(c.i_t - c.m)
    da = np.sum(dC * c.C_prev, axis=(-2, -1)) + np.sum(dn * c.n_prev, axis=-1)
    dCv = np.einsum("bhkv,bhv->bhk", dC, c.v_t)
    db = np.sum(c.k_t * dCv, axis=-1) + np.sum(dn * c.k_t, axis=-1)
    dk = b[..., None] * (dCv + dn)
    dv = b[..., None] * np.einsum("bhkv,bhk->bhv", dC, c.k_t)
    dC_prev = a[..., None, None] * dC
    dn_prev = a[..., None] * dn
    # through a = e^{lf + m_prev − m} and b = e^{i − m}
    dlf = a * da
    dm_prev = a * da
    di = b * db
    dm_bar = dm - a * da - b * db
    # through m = max(lf + m_prev, i): ties take the forget branch
    forget = x >= c.i_t
    dlf = dlf + np.where(forget, dm_bar, 0)
    dm_prev = dm_prev + np.where(forget, dm_bar, 0)
    di = di + np.where(forget, 0, dm_bar)
    df = dlf * sigmoid(-c.f_t)
    return {"qs": dqs, "k": dk, "v": dv, "i": di, "f": df}, (dC_prev, dn_prev, dm_prev)


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, i: np.ndarray, f: np.ndarray,
            initial_state: State, scale: float) -> tuple[np.ndarray, State, RecurrentCache]:
    """:func:`step_forward` in a loop over time.

    ``q, k (B, T, H, K)``, ``v (B, T, H, V)``, ``i, f (B, T, H)``,
    ``initial_state = (C0 (B, H, K, V), n0 (B, H, K), m0 (B, H))`` (arrays,
    checked by the caller). Returns ``h (B, T, H, V)``, the final state
    ``(C, n, m)`` and the cache.
    """
    B, T, H, K = q.shape
    Vd = v.shape[-1]
    dtype = q.dtype
    C_all = np.empty((B, T + 1, H, K, Vd), dtype)
    n_all = np.empty((B, T + 1, H, K), dtype)
    m_all = np.empty((B, T + 1, H), dtype)
    h = np.empty((B, T, H, Vd), dtype)
    d = np.empty((B, T, H), dtype)
    den = np.empty((B, T, H), dtype)
    C_all[:, 0], n_all[:, 0], m_all[:, 0] = initial_state
    state = tuple(initial_state)
    for t in range(T):
        h[:, t], state, ct = step_forward(q[:, t], k[:, t], v[:, t], i[:, t], f[:, t],
                                          state, scale)
        C_all[:, t + 1], n_all[:, t + 1], m_all[:, t + 1] = state
        d[:, t], den[:, t] = ct.d, ct.den
    final = (C_all[:, T].copy(), n_all[:, T].copy(), m_all[:, T].copy())
    return h, final, RecurrentCache(q, k, v, i, f, scale, C_all, n_all, m_all, h, d, den)


def backward(cache: RecurrentCache, dh: np.ndarray, dstate: State) -> dict:
    """:func:`step_backward` in a loop backwards over time (BPTT).

    ``dh (B, T, H, V)`` and ``dstate = (dC, dn, dm)`` are arrays of the forward's
    dtype. Returns ``{"q", "k", "v", "i", "f", "initial_state": (dC0, dn0, dm0)}``.
    """
    c = cache
    T = c.q.shape[1]
    grads = {name: np.empty(x.shape, x.dtype) for name, x in
             (("q", c.q), ("k", c.k), ("v", c.v), ("i", c.i), ("f", c.f))}
    dstate_t = tuple(dstate)
    for t in reversed(range(T)):
        lf_t = log_sigmoid(c.f[:, t])
        ct = MLSTMStepCache(c.scale * c.q[:, t], c.k[:, t], c.v[:, t], c.i[:, t], c.f[:, t],
                            lf_t, c.C[:, t], c.n[:, t], c.m[:, t],
                            c.C[:, t + 1], c.n[:, t + 1], c.m[:, t + 1],
                            c.h[:, t], c.d[:, t], c.den[:, t])
        g, dstate_t = step_backward(dh[:, t], dstate_t, ct)
        grads["q"][:, t] = c.scale * g["qs"]
        for name in ("k", "v", "i", "f"):
            grads[name][:, t] = g[name]
    grads["initial_state"] = dstate_t
    return grads
