"""Newton solves of a nonlinear recurrence, all time steps at once (DEER / ParaRNN).

Dimension key: B batch, T time, D input size, n state size (the cell's state
flattened: ``n = H`` for an RNN/GRU, ``2H`` for an LSTM's ``(h, c)``),
N = B·T (the batch axis of one batched step call).

A recurrence ``s_t = f(s_{t−1}, x_t)`` (``s_{−1}`` = ``state0``) is a system of
``T`` equations in the unknowns ``s_0 … s_{T−1}``,

    F_t(s) = s_t − f(s_{t−1}, x_t) = 0,      t = 0 … T−1.

Newton's method linearises every step around the current guess ``s*`` and
solves for the correction ``δ``; with ``J_t = ∂f/∂s_{t−1}`` at ``(s*_{t−1}, x_t)``
and the residual ``r_t = f(s*_{t−1}, x_t) − s*_t`` the linear system is itself
a recurrence,

    δ_t = J_t δ_{t−1} + r_t,      δ_{−1} = 0,      s*_t ← s*_t + δ_t,

a *linear* scan: :mod:`minirec.scan.matrix` for a full Jacobian (DEER),
:mod:`minirec.scan.linear` for a diagonal one (quasi-DEER, ParaRNN's diagonal
cells), or the matrix scan with the blocks on the batch axis for a
block-diagonal one (ParaRNN's LSTM: a 2×2 block per unit ``(h_j, c_j)``). Every
step ``f(s*_{t−1}, x_t)`` and every ``J_t`` is evaluated in ONE batched call of
the cell's step functions, the ``(B, T)`` axes flattened into one batch axis of
``N`` rows. One iteration costs a batched step (parallel over T) plus a scan
(depth ``log T`` with a tree method); ``k`` iterations replace ``T``
sequential steps, which pays when ``k ≪ T / log T`` on parallel hardware.

**After k iterations the first k states are exact.** ``δ_{−1} = 0`` makes
``s*_0 = f(s_{−1}, x_0)`` exact after the first iteration; if ``s*_0 … s*_{k−2}``
are exact, their residuals and corrections are 0, so iteration ``k`` sets
``s*_{k−1} ← s*_{k−1} + r_{k−1} = f(s_{k−2}, x_{k−1})``. Hence ``T`` iterations
always suffice (in exact arithmetic; in floating point to rounding); near the
solution the convergence is quadratic, and a contracting cell converges in a
handful of iterations whatever T (tests/scan/test_newton.py).

The step functions (the cell's, or a user's):

    state_next, cache_t = step_forward(params, x_t, state)      x_t (N, D)
    dx_t, dstate_prev, dparams = step_backward(dstate_next, cache_t)
    J = step_jacobian(params, x_t, state)                        J_t = ∂state_next/∂state

``state`` is an array ``(N, n)`` or a tuple of arrays ``(N, n_i)`` whose first
part is the output ``h`` (the :mod:`minirec.bptt` convention); the flat state
is their concatenation ``[s^0 | s^1 | …]`` along the last axis. The shape of
``J`` says its structure:

``(N, n, n)``     full: ``J[·, i, j] = ∂s_i/∂s_prev_j`` in the flat order.
``(N, n)``        diagonal: ``J[·, i] = ∂s_i/∂s_prev_i`` (all else 0).
``(N, m, k, k)``  block-diagonal per unit: the state has ``k`` parts of ``m``
                  units each and ``J[·, j, p, q] = ∂s^p_j/∂s^q_prev_j`` (the
                  LSTM's ``k = 2``: ``[[∂h/∂h, ∂h/∂c], [∂c/∂h, ∂c/∂c]]`` of unit
                  ``j``); units do not interact.

Stopping rule and failure. The guess starts at zeros (or ``guess``). An
iteration first evaluates every step at the current states; the solve has
converged when every residual entry satisfies ``|r| ≤ tol · (1 + |s*|)``
(``tol`` defaults to :data:`DEFAULT_TOL`: 1e-13 in float64, 1e-5 in float32),
and then returns those states (no further update). Otherwise it takes a Newton
step, at most ``max_iter`` of them (default ``min(T, 100)``: ``T`` always
suffice in exact arithmetic). Running out of iterations, or a non-finite
residual where the inputs are finite (divergence), is never silent:
``on_fail="raise"`` (default) raises :class:`NewtonConvergenceError` with the
residual, the iteration count and where the worst residual sits;
``on_fail="warn"`` issues a :class:`NewtonConvergenceWarning` saying the same
and returns the last iterate (its cache says ``converged=False``). NaN/inf in
the inputs propagate as in the definition: a residual entry at ``(b, t)`` whose
state is already non-finite counts as settled when row ``b``'s inputs up to
``t`` (``x``, ``state0``, or any parameter) hold a NaN/inf — the definition is
non-finite there too.

Backward by the implicit-function theorem. The converged ``s`` satisfies
``F(s, θ) = 0`` for the parameters ``θ = (params, x, state0)``, so
``ds/dθ = −(∂F/∂s)^{−1} ∂F/∂θ`` and for a loss ``L(s)``

    dL/dθ = −g^T ∂F/∂θ,      where  (∂F/∂s)^T g = ∂L/∂s.

``∂F/∂s`` is block lower-bidiagonal: ``I`` on the diagonal and ``∂F_t/∂s_{t−1}
= −J_t`` below it, so its transpose is upper-bidiagonal and ``g`` is ONE reverse
linear scan with the converged Jacobians,

    g_{T−1} = dy_{T−1} + dstate,      g_t = dy_t + J_{t+1}^T g_{t+1}

(``dy_t`` enters the output part ``h`` of ``g_t``). Since ``∂F_t/∂θ =
−∂f(s_{t−1}, x_t; θ)/∂θ``, ``dL/dθ = Σ_t g_t^T ∂f_t/∂θ``: the step VJPs with
upstream ``g_t``, all steps at once in one batched ``step_backward`` over the
``N`` rows (its parameter gradients are already summed over them),

    dx_t, dstate_prev_t, dθ = step_backward(g_t, cache_t)     (all t at once)
    dstate0 = dstate_prev_0 = J_0^T g_0.

This is BPTT's recursion (``ds_t = dy_t + J_{t+1}^T ds_{t+1}``) with the
sequential chain of step VJPs replaced by a scan over precomputed Jacobians,
so it equals BPTT at the converged states (tested to 1e-8 relative RMS).

Backends: ``backend`` chooses where the scans run (:mod:`minirec.scan.linear`
/ :mod:`minirec.scan.matrix` with that backend: ``"numba"``, ``"cupy"``,
``"cuda-emulated"`` run their ``"recurrent"`` kernels, the linear scan also
``"chunked"``); the step evaluations are the step functions' own NumPy code,
run on CuPy arrays for ``"cupy"`` (see :func:`minirec._backend.xp_of`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from minirec import _backend
from minirec import _validate as V
from minirec.scan import linear, matrix

STRUCTURES = ("full", "diagonal", "block")
ON_FAIL = ("raise", "warn")
DEFAULT_TOL = {np.dtype(np.float64): 1e-13, np.dtype(np.float32): 1e-5}
DEFAULT_MAX_ITER = 100  # the cap on min(T, ·): T iterations always suffice


class NewtonConvergenceError(RuntimeError):
    """The Newton solve stopped without meeting ``tol`` (``on_fail="raise"``).

    Attributes: ``iterations`` (Newton steps taken), ``residual`` (the largest
    scaled residual ``|r| / (1 + |s*|)`` over the entries that must settle;
    ``nan`` when one is non-finite), ``tol``, ``where`` (``(b, t)`` of the worst
    entry).
    """

    def __init__(self, message: str, iterations: int, residual: float, tol: float,
                 where: tuple[int, int] | None) -> None:
        super().__init__(message)
        self.iterations, self.residual, self.tol, self.where = iterations, residual, tol, where


class NewtonConvergenceWarning(RuntimeWarning):
    """The Newton solve returned an unconverged iterate (``on_fail="warn"``)."""


class NewtonCache(NamedTuple):
    """What :func:`backward` needs from :func:`solve`, and how the solve went.

    Fields:
        iterations: Newton steps taken (0 when the guess already solved it).
        residual: the final largest scaled residual ``max |r| / (1 + |s*|)``
            over the entries that must settle (``nan`` if one is non-finite).
        converged: whether ``residual ≤ tol`` (``False`` only with ``on_fail="warn"``).
        tol, max_iter: the stopping rule used.
        structure: ``"full"``, ``"diagonal"`` or ``"block"`` (the Jacobian's
            shape); ``None`` when no Newton step was needed.
        steps: the step cache of the final evaluation, one batched cache over
            the ``N = B·T`` rows (``f(s*_{t−1}, x_t)`` at the returned states).
        x: the input ``(B, T, D)``; prev: ``s*_{t−1}`` flat, ``(B, T, n)``.
        sizes: the sizes ``n_i`` of the state's parts; is_tuple: whether the
            state is a tuple of arrays.
        state0: the flat initial state ``(B, n)``.
        scan_method, chunk_size, backend: the scans' options.
        step_kwargs: keyword arguments the step functions were called with.
        param_shapes: ``{name: shape}`` of the params the solve ran with.
    """

    iterations: int
    residual: float
    converged: bool
    tol: float
    max_iter: int
    structure: str
    steps: Any
    x: Any
    prev: Any
    sizes: tuple
    is_tuple: bool
    state0: Any
    scan_method: str
    chunk_size: int | None
    backend: str
    step_kwargs: dict
    param_shapes: dict


# ---------------------------------------------------------------------------
# the flat state: [s^0 | s^1 | …] along the last axis
# ---------------------------------------------------------------------------

def _parts(state) -> list:
    return list(state) if isinstance(state, (tuple, list)) else [state]


def _flat(state, xp):
    parts = _parts(state)
    return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=-1)


def _unflat(v, sizes, is_tuple):
    if not is_tuple:
        return v
    out, i = [], 0
    for n in sizes:
        out.append(v[..., i:i + n])
        i += n
    return tuple(out)


# ---------------------------------------------------------------------------
# the Jacobian: its structure, and the linear scan it needs
# ---------------------------------------------------------------------------

def _structure(J, N: int, sizes: tuple, name: str = "step_jacobian") -> str:
    """The structure the shape of ``J`` declares (module docstring), checked."""
    n = sum(sizes)
    shape = tuple(getattr(J, "shape", ()))
    if not V._is_array(J):
        raise TypeError(f"{name}: expected it to return an array J, got {type(J).__name__}")
    if shape == (N, n, n):
        return "full"
    if shape == (N, n):
        return "diagonal"
    if len(shape) == 4 and shape[0] == N and shape[2] == shape[3] == len(sizes) \
            and all(s == shape[1] for s in sizes):
        return "block"
    k, m = len(sizes), sizes[0]
    raise ValueError(f"{name}: expected J of shape (N, n, n) = {(N, n, n)} (full), (N, n) = "
                     f"{(N, n)} (diagonal) or (N, m, k, k) = {(N, m, k, k)} (one k×k block "
                     f"per unit across the state's {k} parts), got {shape}")


def _to_blocks(v, B, T, k, m):
    """``(B, T, n)`` flat states → ``(B·m, T, k)``: each unit a batch row."""
    return v.reshape(B, T, k, m).transpose(0, 3, 1, 2).reshape(B * m, T, k)


def _from_blocks(v, B, T, k, m):
    return v.reshape(B, m, T, k).transpose(0, 2, 3, 1).reshape(B, T, k * m)


def _linear_solve(J, r, structure, k, m, *, method, chunk_size, backend):
    """``δ_t = J_t δ_{t−1} + r_t`` from ``δ_{−1} = 0``; ``J (B, T, …)``, ``r (B, T, n)``."""
    B, T = r.shape[:2]
    if structure == "diagonal":
        return linear.forward(J, r, None, method=method, chunk_size=chunk_size,
                              backend=backend)[0]
    if structure == "full":
        return matrix.forward(J, r, None, method=method, chunk_size=chunk_size,
                              backend=backend)[0]
    A = J.reshape(B, T, m, k, k).transpose(0, 2, 1, 3, 4).reshape(B * m, T, k, k)
    d = matrix.forward(A, _to_blocks(r, B, T, k, m), None, method=method,
                       chunk_size=chunk_size, backend=backend)[0]
    return _from_blocks(d, B, T, k, m)


def _transpose(J, structure):
    if structure == "diagonal":
        return J
    return J.swapaxes(-1, -2)


def _identity_like(J, structure, xp):
    """One ``J_t``-shaped identity per batch row: ``(B, …)``."""
    if structure == "diagonal":
        return xp.ones(J.shape[:1] + J.shape[2:], J.dtype)
    eye = xp.eye(J.shape[-1], dtype=J.dtype)
    return xp.broadcast_to(eye, J.shape[:1] + J.shape[2:])


# ---------------------------------------------------------------------------
# options and checks
# ---------------------------------------------------------------------------

def _scan_methods(structure):
    return linear.METHODS if structure == "diagonal" else matrix.METHODS


def _options(max_iter, tol, on_fail, T, dtype):
    if max_iter is None:
        max_iter = min(T, DEFAULT_MAX_ITER)
    elif max_iter != 0:  # 0: only measure the guess's residual
        max_iter = V.positive_int("max_iter", max_iter)
    if tol is None:  # by precision: float64 (complex128) or float32 (complex64)
        tol = DEFAULT_TOL[np.dtype(np.float64 if np.finfo(dtype).eps < 1e-10 else np.float32)]
    else:
        tol = V.positive_float("tol", tol)
    V.choice("on_fail", on_fail, ON_FAIL)
    return max_iter, tol


def _guess(guess, B, T, sizes, is_tuple, dtype, xp):
    """The first iterate ``s* (B, T, n)``: zeros, or ``guess`` (the state's
    structure with a time axis: ``(B, T, n_i)`` per part)."""
    n = sum(sizes)
    if guess is None:
        return xp.zeros((B, T, n), dtype)
    parts = _parts(guess)
    if isinstance(guess, (tuple, list)) != is_tuple or len(parts) != len(sizes):
        raise TypeError(f"guess: expected the state's structure with a time axis "
                        f"({len(sizes)} array(s) (B, T, n_i) = "
                        f"{[(B, T, s) for s in sizes]}), got {type(guess).__name__}")
    for i, (p, s) in enumerate(zip(parts, sizes)):
        V.array(f"guess[{i}]" if is_tuple else "guess", p, allow_complex=False)
        if tuple(p.shape) != (B, T, s):
            raise ValueError(f"guess: expected part {i} of shape {(B, T, s)} (B, T, n_i), "
                             f"got {tuple(p.shape)}")
    return _flat([p.astype(dtype) for p in parts], xp)


def _tainted(params, x, s0, xp):
    """``(B, T)``: whether row b's inputs up to t (x, state0, params) hold a NaN/inf."""
    bad = ~xp.isfinite(x).all(axis=2)
    bad_s0 = ~xp.isfinite(s0).all(axis=1)
    bad_p = any(not bool(xp.isfinite(p).all()) for p in params.values())
    return (xp.cumsum(bad, axis=1) > 0) | bad_s0[:, None] | bad_p


def _measure(R, S, tainted, tol, xp):
    """``(converged, residual, diverged, where)`` of the residual ``R`` at the states ``S``.

    An entry settles when ``|r| ≤ tol (1 + |s*|)``, or when its state is already
    non-finite and its inputs up to there were not finite (the definition's NaN).
    """
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = xp.abs(R) / (1 + xp.abs(S))
        excused = tainted[..., None] & ~xp.isfinite(S)
        ok = (scaled <= tol) | excused
    if R.size == 0 or bool(ok.all()):
        worst = xp.where(excused, 0, scaled)
        return True, float(worst.max()) if R.size else 0.0, False, None
    with np.errstate(invalid="ignore"):
        nonfinite = ~xp.isfinite(R) & ~tainted[..., None]
        diverged = bool(nonfinite.any())
        key = xp.where(ok, -1.0, xp.where(xp.isfinite(scaled), scaled, np.inf))
    flat = int(xp.argmax(key))
    b, t, _ = np.unravel_index(flat, R.shape)
    residual = float("nan") if diverged else float(key.max())
    return False, residual, diverged, (int(b), int(t))


def _fail(message, iterations, residual, tol, where, on_fail):
    if on_fail == "raise":
        raise NewtonConvergenceError(message, iterations, residual, tol, where)
    warnings.warn(message, NewtonConvergenceWarning, stacklevel=4)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------

def solve(step_forward: Callable, step_jacobian: Callable | None, params: dict,
          x: np.ndarray, state0: Any, *, max_iter: int | None = None,
          tol: float | None = None, guess: Any = None, scan_method: str = "recurrent",
          chunk_size: int | None = None, backend: str = "numpy", on_fail: str = "raise",
          step_kwargs: Mapping | None = None) -> tuple[np.ndarray, Any, NewtonCache]:
    """Solve ``s_t = f(s_{t−1}, x_t)`` for every t at once by Newton's method.

    Args:
        step_forward: ``(params, x_t (N, D), state) -> (state_next, cache_t)``,
            vectorised over its batch axis (the :mod:`minirec.bptt` convention).
        step_jacobian: ``(params, x_t, state) -> J``, ``∂state_next/∂state``:
            ``(N, n, n)`` full, ``(N, n)`` diagonal or ``(N, m, k, k)`` per-unit
            blocks (module docstring). ``None`` is an error saying what to provide.
        params: the parameter dict, passed to the step functions.
        x: ``(B, T, D)``.
        state0: ``s_{−1}``: an array ``(B, n)`` or a tuple of arrays ``(B, n_i)``.
        max_iter: the most Newton steps (default ``min(T, 100)``; ``T`` always
            suffice in exact arithmetic; ``0`` only measures the guess's residual).
        tol: converged when every ``|r| ≤ tol (1 + |s*|)`` (default
            :data:`DEFAULT_TOL` of the dtype).
        guess: the first iterate, the state's structure with a time axis
            (``(B, T, n_i)`` per part); ``None`` means zeros.
        scan_method: the linear scan's method (``scan.linear.METHODS`` for a
            diagonal Jacobian, ``scan.matrix.METHODS`` otherwise).
        chunk_size: for ``scan_method="chunked"``.
        backend: where the scans run (``scan.linear`` / ``scan.matrix`` backends).
        on_fail: ``"raise"`` (:class:`NewtonConvergenceError`) or ``"warn"``
            (:class:`NewtonConvergenceWarning`, the last iterate returned).
        step_kwargs: keyword arguments for both step functions (e.g. an RNN's
            ``nonlinearity``).

    Returns:
        ``y (B, T, n_0)`` (the output part ``h`` of every state), the final
        state (the structure of ``state0``), and the :class:`NewtonCache`
        (``.iterations``, ``.residual``, ``.converged``) for :func:`backward`.
    """
    if step_jacobian is None or not callable(step_jacobian):
        name = getattr(step_forward, "__module__", None) or "this cell"
        raise TypeError(
            f"step_jacobian: method='newton' expected a function step_jacobian(params, x_t, "
            f"state) -> J = ∂state_next/∂state, got {type(step_jacobian).__name__} for "
            f"{name}. Provide one returning J of shape (N, n, n) (full), (N, n) (diagonal) "
            f"or (N, m, k, k) (per-unit blocks) for the flat state of size n, e.g. "
            f"cell.step_jacobian = my_jacobian (check it with "
            f"minirec.scan.newton.check_jacobian)")
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict of arrays, got {type(params).__name__}")
    V.array("x", x, ndim=3)
    T = V.time_steps("x", x)
    if state0 is None:
        raise ValueError("state0: expected the initial state (an array or a tuple of arrays), "
                         "got None (the cells' forward makes zeros; solve does not)")
    for i, p in enumerate(_parts(state0)):
        V.array(f"state0[{i}]" if isinstance(state0, (tuple, list)) else "state0", p, ndim=2)
    V.choice("scan_method", scan_method, linear.METHODS + matrix.METHODS)
    chunk_size = V.positive_int("chunk_size", chunk_size, allow_none=True)
    kw = dict(step_kwargs or {})
    xp = _backend.xp_of(x)
    B, _, D = x.shape
    N = B * T
    is_tuple = isinstance(state0, (tuple, list))
    sizes = tuple(int(p.shape[1]) for p in _parts(state0))
    n = sum(sizes)
    dtype = np.result_type(x.dtype, *[p.dtype for p in _parts(state0)],
                           *[p.dtype for p in params.values()])
    max_iter, tol = _options(max_iter, tol, on_fail, T, dtype)
    s0 = _flat(state0, xp).astype(dtype, copy=False)
    S = _guess(guess, B, T, sizes, is_tuple, dtype, xp)
    x_flat = x.reshape(N, D)
    tainted = _tainted(params, x, s0, xp)
    structure, k, m = None, len(sizes), sizes[0]
    iterations = 0
    while True:
        # every step at the current states, in one batched call over N = B·T rows
        prev = xp.concatenate([s0[:, None], S[:, :-1]], axis=1)
        out, steps = step_forward(params, x_flat, _unflat(prev.reshape(N, n), sizes,
                                                          is_tuple), **kw)
        R = _flat(out, xp).reshape(B, T, n) - S
        converged, residual, diverged, where = _measure(R, S, tainted, tol, xp)
        if converged or diverged or iterations == max_iter:
            break
        J = step_jacobian(params, x_flat, _unflat(prev.reshape(N, n), sizes, is_tuple), **kw)
        if structure is None:
            structure = _structure(J, N, sizes)
            V.choice("scan_method", scan_method, _scan_methods(structure))
        J = J.reshape((B, T) + tuple(J.shape[1:]))
        S = S + _linear_solve(J, R, structure, k, m, method=scan_method,
                              chunk_size=chunk_size, backend=backend)
        iterations += 1
    if not converged:
        why = ("diverged: a non-finite residual where every input up to there is finite"
               if diverged else f"did not converge in max_iter={max_iter} iterations")
        _fail(f"newton: {why} (T = {T}): scaled residual max |r|/(1+|s*|) = {residual:.3e} "
              f"> tol = {tol:.1e}, worst at (b, t) = {where}, after {iterations} "
              f"iteration(s). Use method='recurrent', raise max_iter (T = {T} iterations "
              f"always suffice in exact arithmetic) or tol, or pass on_fail='warn' to get "
              f"the last iterate", iterations, residual, tol, where, on_fail)
    y = S[..., :sizes[0]]
    last = _unflat(S[:, -1], sizes, is_tuple)
    state = tuple(p.copy() for p in last) if is_tuple else last.copy()
    cache = NewtonCache(iterations, residual, converged, tol, max_iter,
                        structure, steps, x, prev, sizes, is_tuple, s0,
                        scan_method, chunk_size, backend, kw, V.param_shapes(params))
    return xp.ascontiguousarray(y), state, cache


def backward(step_backward: Callable, step_jacobian: Callable, params: dict,
             cache: NewtonCache, dy: np.ndarray | None, dstate: Any = None) -> dict[str, Any]:
    """Gradients of :func:`solve` by the implicit-function theorem (module docstring).

    Args:
        step_backward: ``(dstate_next, cache_t) -> (dx_t, dstate_prev, dparams)``,
            vectorised over its batch axis.
        step_jacobian: the one the solve used (``J_t`` at the converged states).
        params: the parameter dict of the solve.
        cache: from :func:`solve`.
        dy: ``(B, T, n_0)`` ∂L/∂y, or ``None``.
        dstate: the gradient of the final state (its structure; ``None``, or a
            ``None`` part, for zeros).

    Returns:
        ``{**dparams, "x": (B, T, D), "state0": the state's structure}``.
    """
    V.cache("scan.newton", cache, NewtonCache)
    V.params_match("scan.newton", params, cache.param_shapes)
    x, prev, sizes, is_tuple = cache.x, cache.prev, cache.sizes, cache.is_tuple
    xp = _backend.xp_of(prev)
    B, T, n = prev.shape
    N, D = B * T, x.shape[2]
    dy = V.grad_like("dy", dy, V.zeros_view(prev, (B, T, sizes[0])), "y")
    state_like = [V.zeros_view(prev, (B, size)) for size in sizes]
    dstate = V.grad_state("dstate", dstate, tuple(state_like) if is_tuple else state_like[0])
    # upstream gradients of every state: dy_t into the output part h, dstate at T−1
    G = xp.zeros((B, T, n), prev.dtype)
    if dy is not None:
        G[..., :sizes[0]] += dy
    ds = xp.zeros((B, n), prev.dtype)
    if dstate is not None:
        i = 0
        for d, size in zip(_parts(dstate), sizes):
            if d is not None:
                ds[:, i:i + size] += d
            i += size
    if N:
        # g_t = dy_t + J_{t+1}^T g_{t+1}: a forward scan over the flipped sequence
        # with C_t = J_{t+1}^T (C_{T−1} = I), from g_T := dstate
        J = step_jacobian(params, x.reshape(N, D), _unflat(prev.reshape(N, n), sizes, is_tuple),
                          **cache.step_kwargs)
        structure = _structure(J, N, sizes)
        J = J.reshape((B, T) + tuple(J.shape[1:]))
        C = xp.concatenate([_transpose(J[:, 1:], structure),
                            _identity_like(J, structure, xp)[:, None]], axis=1)
        flip = lambda v: xp.flip(v, axis=1)  # noqa: E731
        k, m = len(sizes), sizes[0]
        if structure == "block":
            Cb = flip(C).reshape(B, T, m, k, k).transpose(0, 2, 1, 3, 4).reshape(B * m, T, k, k)
            g = matrix.forward(xp.ascontiguousarray(Cb), _to_blocks(flip(G), B, T, k, m),
                               _to_blocks(ds[:, None], B, 1, k, m)[:, 0],
                               method=cache.scan_method, chunk_size=cache.chunk_size,
                               backend=cache.backend)[0]
            g = flip(_from_blocks(g, B, T, k, m))
        else:
            scan = linear if structure == "diagonal" else matrix
            g = flip(scan.forward(xp.ascontiguousarray(flip(C)), xp.ascontiguousarray(flip(G)),
                                  ds, method=cache.scan_method, chunk_size=cache.chunk_size,
                                  backend=cache.backend)[0])
    else:
        g = G
    # every step's VJP at once: one batched step_backward over the N rows
    g_flat = xp.ascontiguousarray(g).reshape(N, n)
    dx, dprev, dparams = step_backward(_unflat(g_flat, sizes, is_tuple), cache.steps)
    if not isinstance(dparams, Mapping) or dparams.keys() != params.keys():
        got = sorted(dparams) if isinstance(dparams, Mapping) else type(dparams).__name__
        raise ValueError(f"step_backward: expected dparams with the keys of params "
                         f"{sorted(params)}, got {got}")
    dprev = _flat(dprev, xp).reshape(B, T, n)
    grads = dict(dparams)
    grads["x"] = dx.reshape(B, T, D)
    d0 = xp.ascontiguousarray(dprev[:, 0])  # dstate0 = J_0^T g_0
    grads["state0"] = tuple(p.copy() for p in _unflat(d0, sizes, True)) if is_tuple else d0
    return grads


def check_jacobian(step_forward: Callable, step_jacobian: Callable, params: dict,
                   x_t: np.ndarray, state: Any, *, eps: float = 1e-6,
                   step_kwargs: Mapping | None = None) -> float:
    """Relative error of ``step_jacobian`` against central differences of
    ``step_forward`` (float64): ``max|J − J_fd| / max(1e-8, max|J| + max|J_fd|)``.

    ``x_t (N, D)``, ``state`` the step's state (array or tuple). A correct
    Jacobian gives ~1e-9 or less; use it before ``method="newton"`` on your cell.
    """
    kw = dict(step_kwargs or {})
    is_tuple = isinstance(state, (tuple, list))
    parts = [np.asarray(p, np.float64) for p in _parts(state)]
    sizes = tuple(p.shape[1] for p in parts)
    s = _flat(parts, np)
    N, n = s.shape
    J = np.asarray(step_jacobian(params, x_t, _unflat(s, sizes, is_tuple), **kw))
    structure = _structure(J, N, sizes)
    fd = np.zeros((N, n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = eps
        plus = _flat(step_forward(params, x_t, _unflat(s + e, sizes, is_tuple), **kw)[0], np)
        minus = _flat(step_forward(params, x_t, _unflat(s - e, sizes, is_tuple), **kw)[0], np)
        fd[:, :, j] = (plus - minus) / (2 * eps)
    if structure == "diagonal":
        full = np.zeros((N, n, n))
        full[:, np.arange(n), np.arange(n)] = J
    elif structure == "block":
        k, m = len(sizes), sizes[0]
        full = np.zeros((N, k, m, k, m))
        for p in range(k):
            for q in range(k):
                full[:, p, np.arange(m), q, np.arange(m)] = J[:, :, p, q]
        full = full.reshape(N, n, n)
    else:
        full = J
    return float(np.max(np.abs(full - fd)) / max(1e-8, np.max(np.abs(full)) + np.max(np.abs(fd))))


class NewtonCell:
    """A cell with the DESIGN §4 API whose forward is a Newton solve; see :func:`cell`."""

    def __init__(self, c: Any, name: str) -> None:
        self.cell, self.__name__ = c, name
        self.zero_state = getattr(c, "zero_state", None)

    def forward(self, params: dict, x: np.ndarray, state0: Any = None, **options):
        """``(y, final_state, cache)`` by :func:`solve` (``options``: its keywords;
        other keywords go to the step functions)."""
        if state0 is None:
            if self.zero_state is None:
                raise ValueError(f"state0: expected an initial state, got None: {self.__name__} "
                                 f"has no zero_state")
            V.array("x", x, ndim=3)
            state0 = self.zero_state(params, x.shape[0], x.dtype)
        names = ("max_iter", "tol", "guess", "scan_method", "chunk_size", "backend", "on_fail")
        opts = {k: options.pop(k) for k in names if k in options}
        return solve(self.cell.step_forward, self.cell.step_jacobian, params, x, state0,
                     step_kwargs=options, **opts)

    def backward(self, params: dict, cache: NewtonCache, dy: np.ndarray | None,
                 dstate: Any = None) -> dict:
        """Every parameter's gradient plus ``"x"`` and ``"state0"`` (:func:`backward`)."""
        return backward(self.cell.step_backward, self.cell.step_jacobian, params, cache, dy,
                        dstate)


def cell(c: Any, name: str | None = None) -> NewtonCell:
    """A cell whose forward is a Newton solve of ``c``'s step pair.

    ``c`` is any object with ``step_forward``, ``step_backward`` and
    ``step_jacobian`` (a cell module, or a :func:`minirec.bptt.make_cell` cell
    given a ``step_jacobian`` attribute); its ``zero_state`` is used for
    ``state0=None``. The result passes :func:`minirec.gradcheck.check_cell`.

    Raises ``TypeError`` saying what to provide when ``c`` has no
    ``step_jacobian``.
    """
    name = name or str(getattr(c, "__name__", type(c).__name__))
    for attr in ("step_forward", "step_backward"):
        if not callable(getattr(c, attr, None)):
            raise TypeError(f"cell: expected an object with {attr}, got {name} without it")
    if not callable(getattr(c, "step_jacobian", None)):
        raise TypeError(
            f"cell: method='newton' expected {name} to have step_jacobian(params, x_t, state) "
            f"-> J = ∂state_next/∂state, got a cell without one. Provide it: J of shape "
            f"(N, n, n) (full), (N, n) (diagonal) or (N, m, k, k) (per-unit blocks) for the "
            f"flat state of size n, e.g. cell.step_jacobian = my_jacobian, and check it with "
            f"minirec.scan.newton.check_jacobian(step_forward, my_jacobian, params, x_t, state)")
    return NewtonCell(c, name)


OPTIONS = ("max_iter", "tol", "guess", "scan_method", "on_fail")


def options(newton_options: Mapping | None, method: str) -> dict:
    """A cell's ``newton_options`` checked: ``None`` or a dict with keys among
    :data:`OPTIONS` (the keywords of :func:`solve` a cell passes on), and only
    with ``method="newton"``."""
    if newton_options is None:
        return {}
    if not isinstance(newton_options, Mapping):
        raise TypeError(f"newton_options: expected a dict with keys among {OPTIONS} or None, "
                        f"got {type(newton_options).__name__}")
    if method != "newton":
        raise ValueError(f"newton_options: expected None with method={method!r} (they apply "
                         f"to method='newton'), got {dict(newton_options)!r}")
    unknown = sorted(set(newton_options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"newton_options: expected keys among {OPTIONS}, got {unknown}")
    return dict(newton_options)
