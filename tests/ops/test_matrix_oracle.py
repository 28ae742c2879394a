"""PyTorch float64 oracle for the matrix-state ops (issue 9): each op's equations
written again here as a naive loop over time in PyTorch, straight from the
issue's table (not from minirec's code), differentiated by autograd, and
compared with EVERY method of the minirec op: the output, the final state and
every gradient (every array argument and the initial state, through random
upstream gradients of the output and of the final state).

Skipped when torch is not installed (``make test-oracle`` installs it).
Threshold: relative RMS ≤ 1e-10 in float64 (DESIGN §6).
"""

import importlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest

from tests.conftest import assert_close

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.oracle

TOL = 1e-10  # relative RMS, float64
FLOOR = 1e-13  # a reference below this RMS is a zero up to rounding: compared absolutely
B, T, H, K, V = 2, 13, 2, 5, 7   # K ≠ V, neither a power of two; T not a chunk multiple
CHUNK = 4
E = torch.einsum


# ---------------------------------------------------------------------------
# the definitions, in PyTorch, one step at a time (the table)
# ---------------------------------------------------------------------------

def outer(k, v):
    return E("bhk,bhv->bhkv", k, v)


def read(S, q):
    """S^T q per (batch, head)."""
    return E("bhkv,bhk->bhv", S, q)


def t_linear_attention(q, k, v, initial_state, *, scale, normalize):
    """S_t = S_{t−1} + k_t v_t^T, o_t = scale·S_t^T q_t; with normalize also
    z_t = z_{t−1} + k_t and o_t /= scale·q_t·z_t; state (S, z)."""
    S, z = initial_state if normalize else (initial_state, None)
    out = []
    for t in range(q.shape[1]):
        S = S + outer(k[:, t], v[:, t])
        o = scale * read(S, q[:, t])
        if normalize:
            z = z + k[:, t]
            o = o / (scale * (q[:, t] * z).sum(-1, keepdim=True))
        out.append(o)
    return torch.stack(out, 1), ((S, z) if normalize else S)


def t_retention(q, k, v, initial_state, *, scale):
    """S_t = γ_h S_{t−1} + k_t v_t^T, γ_h = 1 − 2^{−5−h}."""
    gamma = 1 - 2.0 ** (-5 - torch.arange(q.shape[2], dtype=torch.float64))
    S, out = initial_state, []
    for t in range(q.shape[1]):
        S = gamma[None, :, None, None] * S + outer(k[:, t], v[:, t])
        out.append(scale * read(S, q[:, t]))
    return torch.stack(out, 1), S


def t_simple_gla(q, k, v, g, initial_state, *, scale):
    """S_t = e^{g_t} S_{t−1} + k_t v_t^T, g (B, T, H)."""
    S, out = initial_state, []
    for t in range(q.shape[1]):
        S = torch.exp(g[:, t])[:, :, None, None] * S + outer(k[:, t], v[:, t])
        out.append(scale * read(S, q[:, t]))
    return torch.stack(out, 1), S


def t_gla(q, k, v, g, initial_state, *, scale):
    """S_t = Diag(e^{g_t}) S_{t−1} + k_t v_t^T, g (B, T, H, K)."""
    S, out = initial_state, []
    for t in range(q.shape[1]):
        S = torch.exp(g[:, t])[..., None] * S + outer(k[:, t], v[:, t])
        out.append(scale * read(S, q[:, t]))
    return torch.stack(out, 1), S


def t_rwkv6(r, k, v, w, u, initial_state, *, scale):
    """o_t = scale·(S_{t−1} + Diag(u) k_t v_t^T)^T r_t, then
    S_t = Diag(e^{w_t}) S_{t−1} + k_t v_t^T."""
    S, out = initial_state, []
    for t in range(r.shape[1]):
        kv = outer(k[:, t], v[:, t])
        out.append(scale * read(S + u[None, :, :, None] * kv, r[:, t]))
        S = torch.exp(w[:, t])[..., None] * S + kv
    return torch.stack(out, 1), S


def t_delta_rule(q, k, v, beta, initial_state, *, scale):
    """S_t = S_{t−1} + β_t k_t (v_t − S_{t−1}^T k_t)^T."""
    S, out = initial_state, []
    for t in range(q.shape[1]):
        err = v[:, t] - read(S, k[:, t])
        S = S + beta[:, t, :, None, None] * outer(k[:, t], err)
        out.append(scale * read(S, q[:, t]))
    return torch.stack(out, 1), S


def t_gated_delta_rule(q, k, v, g, beta, initial_state, *, scale):
    """S' = e^{g_t} S_{t−1}, S_t = S' + β_t k_t (v_t − S'^T k_t)^T."""
    S, out = initial_state, []
    for t in range(q.shape[1]):
        Sd = torch.exp(g[:, t])[:, :, None, None] * S
        S = Sd + beta[:, t, :, None, None] * outer(k[:, t], v[:, t] - read(Sd, k[:, t]))
        out.append(scale * read(S, q[:, t]))
    return torch.stack(out, 1), S


def t_mlstm(q, k, v, i, f, initial_state, *, scale):
    """xLSTM: m_t = max(logσ(f_t) + m_{t−1}, i_t),
    C_t = e^{logσ(f_t)+m_{t−1}−m_t} C_{t−1} + e^{i_t−m_t} k_t v_t^T, n_t likewise with k_t,
    h_t = C_t^T q̃_t / max(|n_t·q̃_t|, e^{−m_t}), q̃ = scale·q."""
    C, n, m = initial_state
    out = []
    for t in range(q.shape[1]):
        logf = torch.nn.functional.logsigmoid(f[:, t])
        m_new = torch.maximum(logf + m, i[:, t])
        fd = torch.exp(logf + m - m_new)
        idt = torch.exp(i[:, t] - m_new)
        C = fd[..., None, None] * C + idt[..., None, None] * outer(k[:, t], v[:, t])
        n = fd[..., None] * n + idt[..., None] * k[:, t]
        m = m_new
        qt = scale * q[:, t]
        den = torch.maximum(torch.abs((n * qt).sum(-1)), torch.exp(-m))
        out.append(read(C, qt) / den[..., None])
    return torch.stack(out, 1), (C, n, m)


def t_ssd(x, dt, A, B_, C, D, initial_state):
    """Mamba-2: h_t = e^{dt_t A_h} h_{t−1} + dt_t B_t x_t^T, y_t = h_t^T C_t + D_h x_t."""
    h, out = initial_state, []
    for t in range(x.shape[1]):
        a = torch.exp(dt[:, t] * A)
        h = a[..., None, None] * h + dt[:, t, :, None, None] * outer(B_[:, t], x[:, t])
        out.append(read(h, C[:, t]) + D[None, :, None] * x[:, t])
    return torch.stack(out, 1), h


# ---------------------------------------------------------------------------
# inputs (numpy, float64), in the op's positional order; the initial state last
# ---------------------------------------------------------------------------

def _qkv(rng, positive=False):
    if positive:  # normalize divides by scale·q·z: keep it away from 0
        return (rng.uniform(0.1, 1.0, (B, T, H, K)), rng.uniform(0.1, 1.0, (B, T, H, K)),
                rng.standard_normal((B, T, H, V)))
    return (rng.standard_normal((B, T, H, K)), rng.standard_normal((B, T, H, K)),
            rng.standard_normal((B, T, H, V)))


def _S0(rng):
    return rng.standard_normal((B, H, K, V))


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def in_linear_attention(rng):
    q, k, v = _qkv(rng)
    return {"q": q, "k": k, "v": v, "initial_state": _S0(rng)}


def in_linear_attention_normalized(rng):
    q, k, v = _qkv(rng, positive=True)
    return {"q": q, "k": k, "v": v,
            "initial_state": (_S0(rng), rng.uniform(0.5, 1.0, (B, H, K)))}


def in_simple_gla(rng):
    q, k, v = _qkv(rng)
    return {"q": q, "k": k, "v": v, "g": -rng.uniform(0, 1.5, (B, T, H)),
            "initial_state": _S0(rng)}


def in_gla(rng):
    q, k, v = _qkv(rng)
    return {"q": q, "k": k, "v": v, "g": -rng.uniform(0, 1.5, (B, T, H, K)),
            "initial_state": _S0(rng)}


def in_rwkv6(rng):
    r, k, v = _qkv(rng)
    return {"r": r, "k": k, "v": v, "w": -rng.uniform(0, 1.5, (B, T, H, K)),
            "u": rng.standard_normal((H, K)), "initial_state": _S0(rng)}


def in_delta_rule(rng):
    q, k, v = _qkv(rng)
    return {"q": q, "k": _unit(k), "v": v, "beta": rng.uniform(0, 2, (B, T, H)),
            "initial_state": _S0(rng)}


def in_gated_delta_rule(rng):
    q, k, v = _qkv(rng)
    return {"q": q, "k": _unit(k), "v": v, "g": -rng.uniform(0, 1.5, (B, T, H)),
            "beta": rng.uniform(0, 2, (B, T, H)), "initial_state": _S0(rng)}


def in_mlstm(rng):
    q, k, v = _qkv(rng)
    return {"q": q, "k": k, "v": v, "i": rng.normal(0, 2, (B, T, H)),
            "f": rng.normal(1, 2, (B, T, H)),
            "initial_state": (_S0(rng), rng.standard_normal((B, H, K)),
                              rng.normal(0, 1, (B, H)))}


def in_ssd(rng):
    N, P = K, V
    return {"x": rng.standard_normal((B, T, H, P)), "dt": rng.uniform(0.05, 1.0, (B, T, H)),
            "A": -rng.uniform(0.5, 2.0, H), "B": rng.standard_normal((B, T, H, N)),
            "C": rng.standard_normal((B, T, H, N)), "D": rng.standard_normal(H),
            "initial_state": rng.standard_normal((B, H, N, P))}


class Case(NamedTuple):
    module: str                       # minirec.ops.<module>
    inputs: Callable                  # rng -> dict of arrays (op order, initial_state last)
    torch_def: Callable               # the definition above
    kwargs: dict                      # passed to the minirec forward and the definition
    scaled: bool = True               # the definition takes scale = K^{−1/2}


CASES = {
    "linear_attention": Case("linear_attention", in_linear_attention, t_linear_attention,
                             {"normalize": False}),
    "linear_attention_normalize": Case("linear_attention", in_linear_attention_normalized,
                                       t_linear_attention, {"normalize": True}),
    "retention": Case("retention", in_linear_attention, t_retention, {}),
    "simple_gla": Case("simple_gla", in_simple_gla, t_simple_gla, {}),
    "gla": Case("gla", in_gla, t_gla, {}),
    "rwkv6": Case("rwkv6", in_rwkv6, t_rwkv6, {}),
    "delta_rule": Case("delta_rule", in_delta_rule, t_delta_rule, {}),
    "gated_delta_rule": Case("gated_delta_rule", in_gated_delta_rule, t_gated_delta_rule, {}),
    "mlstm": Case("mlstm", in_mlstm, t_mlstm, {}),
    "ssd": Case("ssd", in_ssd, t_ssd, {}, scaled=False),
}


def _methods(name):
    return importlib.import_module(f"minirec.ops.{CASES[name].module}").METHODS


PARAMS = [(name, m) for name in CASES for m in ("recurrent", "parallel", "chunk")]


def _as_tuple(s):
    return tuple(s) if isinstance(s, (tuple, list)) else (s,)


@pytest.mark.parametrize("with_state0", [True, False], ids=["state0", "no_state0"])
@pytest.mark.parametrize("name, method", PARAMS, ids=[f"{n}-{m}" for n, m in PARAMS])
def test_matches_torch_forward_state_and_every_gradient(name, method, with_state0):
    """``no_state0``: minirec gets ``initial_state=None``, the definition zeros (for
    mLSTM ``m_0 = 0`` too), and the gradient at those zeros is compared."""
    case = CASES[name]
    op = importlib.import_module(f"minirec.ops.{case.module}")
    assert method in op.METHODS, f"ops.{case.module}.METHODS lacks {method!r}"
    rng = np.random.default_rng(11)
    arrays = case.inputs(rng)
    names = [n for n in arrays if n != "initial_state"]
    S0 = arrays["initial_state"]
    if not with_state0:
        S0 = (tuple(np.zeros_like(s) for s in S0) if isinstance(S0, tuple)
              else np.zeros_like(S0))

    # minirec
    out, state, cache = op.forward(*(arrays[n] for n in names),
                                   initial_state=S0 if with_state0 else None,
                                   method=method, chunk_size=CHUNK, **case.kwargs)
    d_out = rng.standard_normal(out.shape)
    d_state = tuple(rng.standard_normal(s.shape) for s in _as_tuple(state))
    grads = op.backward(cache, d_out, d_state if isinstance(state, tuple) else d_state[0])

    # torch
    tt = {n: torch.tensor(arrays[n], requires_grad=True) for n in names}
    t_S0 = tuple(torch.tensor(s, requires_grad=True) for s in _as_tuple(S0))
    extra = dict(case.kwargs)
    if case.scaled:
        extra["scale"] = K ** -0.5
    t_out, t_state = case.torch_def(*(tt[n] for n in names),
                                    t_S0 if isinstance(S0, tuple) else t_S0[0], **extra)
    loss = (t_out * torch.from_numpy(d_out)).sum()
    for s, ds in zip(_as_tuple(t_state), d_state):
        loss = loss + (s * torch.from_numpy(ds)).sum()
    loss.backward()

    close(out, t_out.detach().numpy(), "output")
    for j, (a, b) in enumerate(zip(_as_tuple(state), _as_tuple(t_state))):
        close(a, b.detach().numpy(), f"final state[{j}]")
    for n in names:
        close(grads[n], tt[n].grad.numpy(), f"d{n}")
    for j, (a, b) in enumerate(zip(_as_tuple(grads["initial_state"]), t_S0)):
        close(a, b.grad.numpy(), f"d initial_state[{j}]")


def close(actual, expected, name):
    """Relative RMS ≤ TOL; a reference that is zero up to rounding (mLSTM's dm_0 from a
    zero state when an input gate wins the stabiliser's max: ~1e-20) absolutely."""
    if np.sqrt(np.mean(expected ** 2)) < FLOOR:
        assert np.max(np.abs(actual - expected)) < FLOOR, name
        return
    assert_close(actual, expected, TOL, name)
