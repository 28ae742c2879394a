"""Causal softmax attention with one query per head, as a prefix scan (Aaren's core).

Feng et al. 2024, "Attention as an RNN". Dimension key: B batch, T time,
H heads, V value size. Scores ``s (B, T, H)`` (in Aaren ``s_t = q · k_t / √K``),
values ``v (B, T, H, V)``. The output at every prefix is the softmax-weighted
mean of the values seen so far:

    o_t = Σ_{i≤t} e^{s_i} v_i / Σ_{i≤t} e^{s_i}                      (B, T, H, V)

Stable form: the state after t tokens is the triple

    m_t = max_{i≤t} s_i                 running max                 (B, H)
    u_t = Σ_{i≤t} e^{s_i − m_t}         denominator                 (B, H)
    w_t = Σ_{i≤t} e^{s_i − m_t} v_i     numerator                   (B, H, V)

and ``o_t = w_t / u_t``. ``initial_state=None`` is the empty prefix
``(m, u, w) = (−inf, 0, 0)``; any other ``(m_0, u_0, w_0)`` acts as one extra
token in front with weight ``u_0 e^{m_0}`` and value ``w_0 / u_0``. Every
exponent is ``≤ 0``, so scores of ±1e3 neither overflow nor underflow to 0/0.
A score of ``−inf`` masks its token (weight 0, gradient 0) once a finite score
or a non-empty initial state precedes it; a prefix of ``−inf`` scores only is
treated as the limit of equal scores (a plain mean), never as 0/0.

The definition (``method="recurrent"``) is :func:`step_forward` in a loop::

    m_t = max(m_{t−1}, s_t)
    α_t = e^{m_{t−1} − m_t},   β_t = e^{s_t − m_t}                     (both ≤ 1)
    u_t = α_t u_{t−1} + β_t
    w_t = α_t w_{t−1} + β_t v_t
    o_t = w_t / u_t

``α`` is computed as 1 where ``m_{t−1} = m_t`` (so ``−inf − (−inf)`` is never
formed) and as 0 where ``m_{t−1} = −inf < m_t``.

Backward of one step (:func:`step_backward`); ``(dm, du, dw)`` is ∂L/∂ state_t
flowing back from t+1 (or ``dstate``, the final state's gradient), ``do`` =
∂L/∂o_t:

    dw̄ = dw + do / u_t                  du̅ = du − Σ_V (do ⊙ o_t) / u_t
    dα  = du̅ u_{t−1} + Σ_V dw̄ ⊙ w_{t−1}     dβ = du̅ + Σ_V dw̄ ⊙ v_t
    dv_t = β_t dw̄                       ds_t = β_t dβ
    du_{t−1} = α_t du̅                    dw_{t−1} = α_t dw̄
    dm_{t−1} = α_t dα
    dm̄ = dm − α_t dα − β_t dβ           (∂L/∂m_t through max, all paths)
    dm̄ goes to m_{t−1} if m_{t−1} ≥ s_t, else to s_t           (through max)

Shift invariance and ∂/∂m. The outputs do not change under
``(m, u, w) → (m + c, u e^{−c}, w e^{−c})``; the returned final state does, so
its gradient with respect to ``m`` is whatever the chain rule through the
formulas above gives. Expanding it, every ``dm̄`` coming from the outputs
cancels (``u_t du̅ + w_t · dw̄ = u_t du + w_t · dw``), leaving only

    E = dm_T − du_T u_{T−1} − Σ_V dw_T ⊙ w_{T−1}

routed through the max to the *first* position holding the overall maximum
(ties go to the earlier one: ``m_0`` before ``s_0`` before ``s_1`` …).

Parallel backward (``method="blelloch"``). With ``M_t, U_t, W_t`` the state
after t tokens, write the loss's gradient with respect to every prefix state
(final-state terms added at T−1):

    dU_t = −Σ_V (do_t ⊙ o_t) / U_t + [t = T−1] du_T
    dW_t =  do_t / U_t             + [t = T−1] dw_T

Then, with ``p_{t,i} U_t = e^{s_i − M_t}``,

    ds_i = Σ_{t≥i} e^{s_i − M_t} (dU_t + v_i · dW_t) + [i = argmax] E
         = Σ_{t≥i} p_{t,i} (v_i − o_t) · do_t  + (final-state terms)
    dv_i = Σ_{t≥i} e^{s_i − M_t} dW_t

and the reverse sums are taken stably as ``e^{s_i − M_i} R_i`` with

    R_i = dX_i + e^{M_i − M_{i+1}} R_{i+1},    R_{T−1} = dX_{T−1}

(``X`` = U and W), a reverse diagonal affine scan whose multipliers are ≤ 1,
computed by :func:`minirec.scan.linear.forward` with its Blelloch method.
The initial state is token −1 with ``α_0 = e^{m_0 − M_0}``:

    du_0 = α_0 R^U_0,   dw_0 = α_0 R^W_0,   dm_0 = u_0 du_0 + Σ_V w_0 ⊙ dw_0 (+ E if argmax)

Methods, both equal to the loop (tested to 1e-10 relative RMS in float64):

``recurrent``  the loop above, and the loop of :func:`step_backward` backwards.
``blelloch``   :func:`minirec.scan.associative.scan` with the operator

               (m₁, u₁, w₁) ∘ (m₂, u₂, w₂) = (m, u₁ e^{m₁−m} + u₂ e^{m₂−m},
                                                  w₁ e^{m₁−m} + w₂ e^{m₂−m}),
               m = max(m₁, m₂)

               over the elements ``(s_t, 1, v_t)`` (the initial state folded
               into the first); associative because both sides equal the sums
               of the union rescaled to the union's max. Its backward is the
               reverse Blelloch scan above plus elementwise work.

NaN. A NaN score makes ``m`` NaN from that step on (``max`` propagates it, as
``np.maximum`` does), and with it every later output, the final state and the
gradients reaching it: causal, and the same in every method and backend.

Backends: ``"numpy"`` runs both methods; ``"numba"``
(:mod:`minirec.kernels.numba.softmax_scan`) runs ``recurrent`` as one fused
loop over time per (batch, head) — the ``(m, u, w)`` update and the output in
the same step, ``prange`` over the ``B·H`` rows — and its backward as one fused
reverse loop of :func:`step_backward`'s equations. ``"cupy"`` and
``"cuda-emulated"`` (:mod:`minirec.kernels.cuda.softmax_scan`, the same CUDA C
on a GPU or in the CPU emulator) run ``recurrent`` with one warp per (batch,
head): lanes over ``V`` in the forward, and in the backward the same reverse
loop with the three sums over ``V`` of each step as one warp reduction. The
empty prefix ``m = −inf`` is handled as above (α = 1 where ``m_{t−1} = m_t``),
so it gives no NaN there either.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.scan import associative, linear

METHODS = ("recurrent", "blelloch")
BACKENDS = ("numpy", "numba", "cupy", "cuda-emulated")
# the methods each non-NumPy backend has kernels for (NumPy runs them all)
BACKEND_METHODS = {"numba": ("recurrent",), "cupy": ("recurrent",),
                   "cuda-emulated": ("recurrent",)}

State = tuple  # (m (B, H), u (B, H), w (B, H, V))


class SoftmaxStepCache(NamedTuple):
    """What :func:`step_backward` needs from one :func:`step_forward`: the
    token ``s_t (B, H)``, ``v_t (B, H, V)``, the state before it ``m_prev,
    u_prev (B, H)``, ``w_prev (B, H, V)`` and after it ``m, u, w``."""

    s_t: np.ndarray
    v_t: np.ndarray
    m_prev: np.ndarray
    u_prev: np.ndarray
    w_prev: np.ndarray
    m: np.ndarray
    u: np.ndarray
    w: np.ndarray


class SoftmaxScanCache(NamedTuple):
    """What :func:`backward` needs.

    Fields: ``s (B, T, H)``, ``v (B, T, H, V)``; ``m0, u0 (B, H)``,
    ``w0 (B, H, V)`` the initial state; ``M, U (B, T, H)``, ``W (B, T, H, V)``
    the state after every step (from a backend's kernel too, which is all its
    backward needs); ``method``, ``backend``.
    """

    s: np.ndarray
    v: np.ndarray
    m0: np.ndarray
    u0: np.ndarray
    w0: np.ndarray
    M: np.ndarray
    U: np.ndarray
    W: np.ndarray
    method: str
    backend: str


def _rescale(m_old: np.ndarray, m_new: np.ndarray) -> np.ndarray:
    """``e^{m_old − m_new}`` for ``m_old ≤ m_new``: 1 where they are equal (both
    ``−inf`` included), 0 where ``m_old = −inf < m_new``; never forms inf − inf."""
    diff = np.subtract(m_old, m_new, out=np.zeros(np.shape(m_new), np.result_type(m_new)),
                       where=m_old != m_new)
    return np.exp(diff)


def empty_state(batch_size: int, num_heads: int, value_size: int, dtype=np.float64, *,
                xp=np) -> State:
    """The empty prefix ``(m, u, w) = (−inf, 0, 0)``: shapes ``(B, H)``, ``(B, H)``,
    ``(B, H, V)``; ``xp`` allocates them (``numpy``, or ``cupy`` for GPU arrays)."""
    return (xp.full((batch_size, num_heads), -np.inf, dtype),
            xp.zeros((batch_size, num_heads), dtype),
            xp.zeros((batch_size, num_heads, value_size), dtype))


# ---------------------------------------------------------------------------
# one step: the definition
# ---------------------------------------------------------------------------

def step_forward(s_t: np.ndarray, v_t: np.ndarray, state: State
                 ) -> tuple[np.ndarray, State, SoftmaxStepCache]:
    """One token: ``m' = max(m, s_t)``, ``u' = e^{m−m'} u + e^{s_t−m'}``,
    ``w' = e^{m−m'} w + e^{s_t−m'} v_t``, ``o_t = w'/u'``.

    ``s_t (B, H)``, ``v_t (B, H, V)``, ``state = (m (B, H), u (B, H), w (B, H, V))``.
    Returns ``o_t (B, H, V)``, the new state and the step cache
    (:class:`SoftmaxStepCache`). Memory and time are O(B·H·V), whatever the
    number of tokens already seen.
    """
    m_prev, u_prev, w_prev = state
    m = np.maximum(m_prev, s_t)
    alpha = _rescale(m_prev, m)
    beta = _rescale(s_t, m)
    u = alpha * u_prev + beta
    w = alpha[..., None] * w_prev + beta[..., None] * v_t
    o = w / u[..., None]
    return o, (m, u, w), SoftmaxStepCache(s_t, v_t, m_prev, u_prev, w_prev, m, u, w)


def step_backward(do_t: np.ndarray | None, dstate_next: State, cache_t: SoftmaxStepCache
                  ) -> tuple[np.ndarray, np.ndarray, State]:
    """Back through :func:`step_forward` (equations in the module docstring).

    Returns ``ds_t (B, H)``, ``dv_t (B, H, V)`` and ``(dm, du, dw)`` of the
    previous state.
    """
    s_t, v_t, m_prev, u_prev, w_prev, m, u, w = cache_t
    dm, du, dw = dstate_next
    # through o_t = w_t / u_t
    if do_t is not None:
        o = w / u[..., None]
        dw = dw + do_t / u[..., None]
        du = du - np.sum(do_t * o, axis=-1) / u
    # through u_t = α u_{t-1} + β and w_t = α w_{t-1} + β v_t
    alpha = _rescale(m_prev, m)
    beta = _rescale(s_t, m)
    dalpha = du * u_prev + np.sum(dw * w_prev, axis=-1)
    dbeta = du + np.sum(dw * v_t, axis=-1)
    dv_t = beta[..., None] * dw
    du_prev = alpha * du
    dw_prev = alpha[..., None] * dw
    # through α = e^{m_{t-1} − m_t} and β = e^{s_t − m_t}
    ds_t = beta * dbeta
    dm_prev = alpha * dalpha
    dm_bar = dm - alpha * dalpha - beta * dbeta
    # through m_t = max(m_{t-1}, s_t): ties go to the earlier argument
    earlier = m_prev >= s_t
    dm_prev = dm_prev + np.where(earlier, dm_bar, 0)
    ds_t = ds_t + np.where(earlier, 0, dm_bar)
    return ds_t, dv_t, (dm_prev, du_prev, dw_prev)


# ---------------------------------------------------------------------------
# sequence algorithms, each f(s, v, m0, u0, w0) -> (M, U, W)
# ---------------------------------------------------------------------------

def _recurrent(s, v, m0, u0, w0):
    B, T, H, Vd = v.shape
    M = np.empty((B, T, H), s.dtype)
    U = np.empty((B, T, H), s.dtype)
    W = np.empty((B, T, H, Vd), s.dtype)
    state = (m0, u0, w0)
    for t in range(T):
        _, state, _ = step_forward(s[:, t], v[:, t], state)
        M[:, t], U[:, t], W[:, t] = state
    return M, U, W


def combine(earlier: State, later: State) -> State:
    """The associative operator on ``(m, u, w)`` triples (``w`` has one more
    trailing axis than ``m`` and ``u``):
    ``m = max(m₁, m₂)``, ``u = u₁ e^{m₁−m} + u₂ e^{m₂−m}``, ``w = w₁ e^{m₁−m} + w₂ e^{m₂−m}``.
    """
    m1, u1, w1 = earlier
    m2, u2, w2 = later
    m = np.maximum(m1, m2)
    a1 = _rescale(m1, m)
    a2 = _rescale(m2, m)
    return m, a1 * u1 + a2 * u2, a1[..., None] * w1 + a2[..., None] * w2


def _blelloch(s, v, m0, u0, w0):
    u = np.ones(s.shape, s.dtype)
    # fold the initial state into the first element: x_0 ← state_0 ∘ x_0
    first = combine((m0[:, None], u0[:, None], w0[:, None]),
                    (s[:, :1], u[:, :1], v[:, :1]))
    elems = tuple(np.concatenate([f, x[:, 1:]], axis=1) for f, x in zip(first, (s, u, v)))
    return associative.scan(combine, elems, axis=1, algorithm="blelloch")


_FORWARD = {"recurrent": _recurrent, "blelloch": _blelloch}


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def _check_inputs(s, v, initial_state):
    V.array("s", s, ndim=3, allow_complex=False)
    V.array("v", v, ndim=4, allow_complex=False)
    shapes = V.Shapes()
    shapes.check("s", s, ("B", "T", "H"))
    shapes.check("v", v, ("B", "T", "H", "V"))
    V.time_steps("s", s)
    parts = {}
    if initial_state is not None:
        if not isinstance(initial_state, (tuple, list)) or len(initial_state) != 3:
            raise TypeError("initial_state: expected a tuple (m (B, H), u (B, H), w (B, H, V)), "
                            f"got {type(initial_state).__name__}"
                            + (f" of length {len(initial_state)}"
                               if isinstance(initial_state, (tuple, list)) else ""))
        for name, x, spec in zip(("m", "u", "w"), initial_state,
                                 (("B", "H"), ("B", "H"), ("B", "H", "V"))):
            V.array(f"initial_state[{name}]", x, allow_complex=False)
            shapes.check(f"initial_state[{name}]", x, spec)
            parts[name] = x
    return V.common_dtype(s=s, v=v, **parts)


def forward(s: np.ndarray, v: np.ndarray, *, initial_state: State | None = None,
            method: str = "recurrent", backend: str = "numpy"
            ) -> tuple[np.ndarray, State, SoftmaxScanCache]:
    """Causal softmax-weighted means ``o_t = Σ_{i≤t} e^{s_i} v_i / Σ_{i≤t} e^{s_i}``.

    Args:
        s: ``(B, T, H)`` scores (one query per head, already dotted with the keys).
        v: ``(B, T, H, V)`` values.
        initial_state: ``(m (B, H), u (B, H), w (B, H, V))`` of an earlier
            prefix; ``None`` is the empty prefix ``(−inf, 0, 0)``.
        method: one of :data:`METHODS`.
        backend: one of :data:`BACKENDS`.

    Returns:
        ``o (B, T, H, V)``, the final state ``(m, u, w)`` and the cache for
        :func:`backward`. Computed in the inputs' dtype (float32 or float64).
    """
    V.choice("method", method, METHODS)
    _backend.resolve(backend, BACKENDS, what="ops.softmax_scan", method=method,
                     backend_methods=BACKEND_METHODS)
    dtype = _check_inputs(s, v, initial_state)
    B, T, H, Vd = v.shape
    if initial_state is None:
        initial_state = empty_state(B, H, Vd, dtype, xp=_backend.xp_of(s))
    m0, u0, w0 = initial_state
    if backend != "numpy":  # a fused loop per (batch, head): state update and output
        o, state, (M, U, W) = _backend.kernels("softmax_scan", backend).forward(
            s, v, initial_state)
    else:
        M, U, W = _FORWARD[method](s, v, m0, u0, w0)
        o = W / U[..., None]
        state = (M[:, -1].copy(), U[:, -1].copy(), W[:, -1].copy())
    return o, state, SoftmaxScanCache(s, v, m0, u0, w0, M, U, W, method, backend)


def _backward_recurrent(cache, do, dstate):
    s, v, M, U, W = cache.s, cache.v, cache.M, cache.U, cache.W
    ds = np.empty(s.shape, s.dtype)
    dv = np.empty(v.shape, v.dtype)
    for t in reversed(range(s.shape[1])):
        if t > 0:
            prev = (M[:, t - 1], U[:, t - 1], W[:, t - 1])
        else:
            prev = (cache.m0, cache.u0, cache.w0)
        cache_t = SoftmaxStepCache(s[:, t], v[:, t], *prev, M[:, t], U[:, t], W[:, t])
        ds[:, t], dv[:, t], dstate = step_backward(None if do is None else do[:, t],
                                                   dstate, cache_t)
    return ds, dv, dstate


def _backward_parallel(cache, do, dstate):
    s, v, M, U, W = cache.s, cache.v, cache.M, cache.U, cache.W
    m0, u0, w0 = cache.m0, cache.u0, cache.w0
    dm_T, du_T, dw_T = dstate
    # gradients with respect to every prefix state (U_t, W_t)
    if do is None:
        dU = np.zeros(U.shape, U.dtype)
        dW = np.zeros(W.shape, W.dtype)
    else:
        o = W / U[..., None]
        dU = -np.sum(do * o, axis=-1) / U
        dW = do / U[..., None]
    dU[:, -1] += du_T
    dW[:, -1] += dw_T
    # R_i = dX_i + e^{M_i − M_{i+1}} R_{i+1}: a reverse affine scan (Blelloch)
    c = np.ones(M.shape, M.dtype)
    c[:, :-1] = _rescale(M[:, :-1], M[:, 1:])
    dX = np.concatenate([dU[..., None], dW], axis=-1)  # (B, T, H, V+1)
    c = np.broadcast_to(c[..., None], dX.shape)
    flip = lambda x: np.flip(x, axis=1)
    R, _, _ = linear.forward(flip(c), flip(dX), method="blelloch")
    R = flip(R)
    RU, RW = R[..., 0], R[..., 1:]
    beta = _rescale(s, M)  # e^{s_i − M_i}
    ds = beta * (RU + np.sum(v * RW, axis=-1))
    dv = beta[..., None] * RW
    alpha0 = _rescale(m0, M[:, 0])
    du0 = alpha0 * RU[:, 0]
    dw0 = alpha0[..., None] * RW[:, 0]
    dm0 = u0 * du0 + np.sum(w0 * dw0, axis=-1)
    # the final state's max: E to the first position holding it (m0 counts as first)
    E = dm_T - du_T * U[:, -1] - np.sum(dw_T * W[:, -1], axis=-1)
    j = np.argmax(np.concatenate([m0[:, None], s], axis=1), axis=1)  # (B, H)
    dm0 = dm0 + np.where(j == 0, E, 0)
    onehot = np.arange(1, s.shape[1] + 1)[None, :, None] == j[:, None, :]
    ds = ds + np.where(onehot, E[:, None], 0)
    return ds, dv, (dm0, du0, dw0)


def backward(cache: SoftmaxScanCache, do: np.ndarray | None,
             dstate: State | None = None) -> dict:
    """Gradients of :func:`forward` by the algorithm of the method that made ``cache``.

    Args:
        cache: from :func:`forward`.
        do: ``(B, T, H, V)`` ∂L/∂o, or ``None`` for zeros.
        dstate: ``(dm (B, H), du (B, H), dw (B, H, V))`` ∂L/∂ final state,
            ``None`` (or ``None`` entries) for zeros.

    Returns:
        ``{"s": (B, T, H), "v": (B, T, H, V), "initial_state": (dm0, du0, dw0)}``.
        For the empty prefix (``initial_state=None``) the initial state's
        gradient is exactly zero.
    """
    c = V.cache("ops.softmax_scan", cache, SoftmaxScanCache)
    do = V.grad_like("do", do, c.W, "o")
    dstate = V.grad_state("dstate", dstate, (c.M[:, -1], c.U[:, -1], c.W[:, -1]), fill=True)
    if c.backend != "numpy":  # one fused reverse loop
        return _backend.kernels("softmax_scan", c.backend).backward(
            c.s, c.v, (c.m0, c.u0, c.w0), (c.M, c.U, c.W), do, dstate)
    run = _backward_recurrent if c.method == "recurrent" else _backward_parallel
    ds, dv, dinit = run(c, do, dstate)
    return {"s": ds, "v": dv, "initial_state": tuple(dinit)}
