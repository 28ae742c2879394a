"""Papers' layers expressed through the matrix-state ops.

Dimension key: B batch, T time, H heads, K key/query size, V value size; for
SSD (Mamba-2) the names of :mod:`minirec.ops.ssd` (``batch``, P, N, and the
paper's arrays ``A, B, C, D``).

Lightning Attention / TransNormerLLM (Qin et al. 2023, 2024)
    Linear attention with a fixed decay per head, ``S_t = λ_h S_{t−1} + k_t v_t^T``:
    :mod:`minirec.ops.retention` with ``gamma = lightning_decays(H, ...)``
    (or :mod:`minirec.ops.simple_gla` with ``g = log λ`` broadcast over B, T).
    :func:`lightning_decays` gives the decays of the released models.

HGRN2 (Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion")
    ``S_t = Diag(f_t) S_{t−1} + (1 − f_t) v_t^T``, ``o_t = scale · S_t^T q_t``:
    GLA (:mod:`minirec.ops.gla`) with the log forget gate ``g = log f`` and the
    key ``k = 1 − f = 1 − e^{g}`` (the input gate tied to the forget gate, so
    no separate key projection); :func:`hgrn2` / :func:`hgrn2_backward`.

SSD ≡ simple GLA (Dao & Gu 2024)
    ``h_t = e^{dt_t A} h_{t−1} + dt_t B_t x_t^T``, ``y_t = h_t^T C_t + D x_t`` is
    simple GLA ``S_t = e^{g_t} S_{t−1} + k_t v_t^T``, ``o_t = scale · S_t^T q_t``
    with ``q = C``, ``k = dt·B``, ``v = x``, ``g = dt·A``, ``scale = 1``, and
    ``y = o + D x``: :func:`ssd_as_simple_gla` maps the arguments, and
    :func:`ssd_grads_from_simple_gla` maps simple GLA's gradients back to SSD's
    by the chain rule.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from minirec import _validate as V
from minirec.ops import gla

# ---------------------------------------------------------------------------
# Lightning Attention's per-head decays
# ---------------------------------------------------------------------------


def _alibi_slopes(H: int) -> list[float]:
    """ALiBi's head slopes (Press et al. 2022): ``2^{−8(h+1)/H}`` for ``H`` a power
    of two; otherwise those of the nearest lower power of two followed by every
    other slope of the next power of two."""
    if math.log2(H).is_integer():
        return [2.0 ** (-8.0 * (h + 1) / H) for h in range(H)]
    low = 2 ** math.floor(math.log2(H))
    return _alibi_slopes(low) + _alibi_slopes(2 * low)[0::2][:H - low]


def lightning_decays(H: int, *, layer: int = 0, num_layers: int = 1) -> np.ndarray:
    """The per-head decays ``λ_h`` of Lightning Attention (TransNormerLLM, Qin et
    al. 2023; Lightning Attention-2, Qin et al. 2024; also MiniMax-01), float64 ``(H,)``.

    As the released code computes them (``_build_slope_tensor`` and the layer
    factor of OpenNLPLab's TransNormerLLM/lightning-attention models):

        s_h = 2^{−8(h+1)/H}                     h = 0 … H−1, ALiBi's slopes (H a power
                                                of two; otherwise ALiBi's interleaving)
        r_l = 1 − l/(L−1) + 10^{−5}              layer l of L (r = 1 + 10^{−5} when L = 1)
        λ_h = exp(−s_h · r_l)

    The paper writes the rule as ``λ = exp(−(8h/H)(1 − l/L))``: lower layers and
    later heads decay faster, and the last layer keeps a tiny decay (the
    ``10^{−5}``) rather than none. Pass the result as ``gamma`` to
    :func:`minirec.ops.retention.forward`, or ``np.log`` of it, broadcast to
    ``(B, T, H)``, as ``g`` to :func:`minirec.ops.simple_gla.forward`.

    Args:
        H: number of heads (≥ 1).
        layer: the layer index ``l`` (0-based, ``0 ≤ l < num_layers``).
        num_layers: the number of layers ``L`` (≥ 1).

    Returns:
        ``λ (H,)`` in ``(0, 1)``.
    """
    H = V.positive_int("H", H)
    num_layers = V.positive_int("num_layers", num_layers)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) \
            or not 0 <= layer < num_layers:
        raise ValueError(f"layer: expected an integer in [0, num_layers={num_layers}), "
                         f"got {layer!r}")
    ratio = 1.0 + 1e-5 if num_layers == 1 else 1.0 - layer / (num_layers - 1) + 1e-5
    return np.exp(-np.asarray(_alibi_slopes(H)) * ratio)


# ---------------------------------------------------------------------------
# HGRN2: GLA with k = 1 − f
# ---------------------------------------------------------------------------

class HGRN2Cache(NamedTuple):
    """What :func:`hgrn2_backward` needs: the GLA op's cache ``gla`` and
    ``f = e^{f_log} (B, T, H, K)``."""

    gla: gla.GLACache
    f: np.ndarray


def hgrn2(q: np.ndarray, f_log: np.ndarray, v: np.ndarray, *, scale: float | None = None,
          initial_state: np.ndarray | None = None, method: str = "recurrent",
          chunk_size: int = 64, backend: str = "numpy",
          ) -> tuple[np.ndarray, np.ndarray, HGRN2Cache]:
    """HGRN2's recurrence ``S_t = Diag(f_t) S_{t−1} + (1 − f_t) v_t^T``,
    ``o_t = scale · S_t^T q_t``, run as GLA with ``g = f_log`` and
    ``k = 1 − e^{f_log}`` (computed as ``−expm1(f_log)``: exact for ``f`` near 1).

    The paper writes the read-out without a factor; ``scale=None`` means GLA's
    ``K^{−1/2}`` (as flash-linear-attention's HGRN2 layer runs it), ``scale=1``
    gives the paper's.

    Args:
        q: ``(B, T, H, K)`` queries (HGRN2's output gates).
        f_log: ``(B, T, H, K)`` log forget gates ``log f ≤ 0`` (e.g.
            :func:`minirec.ops.hgrn.lower_bounded_gate` of the logits).
        v: ``(B, T, H, V)`` inputs.
        scale: as :func:`minirec.ops.gla.forward`.
        initial_state: as :func:`minirec.ops.gla.forward`.
        method: as :func:`minirec.ops.gla.forward`.
        chunk_size: as :func:`minirec.ops.gla.forward`.
        backend: as :func:`minirec.ops.gla.forward`.

    Returns:
        ``o (B, T, H, V)``, the final state ``(B, H, K, V)`` and the cache.
    """
    V.array("q", q, allow_complex=False)  # f_log checked in its own name before it is GLA's g
    V.array("f_log", f_log, allow_complex=False)
    V.same_shape("f_log", f_log, "q", q)
    f = np.exp(f_log)
    k = -np.expm1(f_log)                           # 1 − f
    o, S, cache = gla.forward(q, k, v, f_log, scale=scale, initial_state=initial_state,
                              method=method, chunk_size=chunk_size, backend=backend)
    return o, S, HGRN2Cache(cache, f)


def hgrn2_backward(cache: HGRN2Cache, do: np.ndarray | None,
                   dstate: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Back through :func:`hgrn2`: GLA's backward, then ``k = 1 − e^{g}``:

        df_log = dg − dk ⊙ f          (f = e^{f_log})

    Returns:
        ``{"q", "f_log", "v", "initial_state"}``.
    """
    c = V.cache("ops.variants.hgrn2", cache, HGRN2Cache)
    grads = gla.backward(c.gla, do, dstate)
    return {"q": grads["q"], "f_log": grads["g"] - grads["k"] * c.f, "v": grads["v"],
            "initial_state": grads["initial_state"]}


# ---------------------------------------------------------------------------
# SSD ≡ simple GLA
# ---------------------------------------------------------------------------

def ssd_as_simple_gla(x: np.ndarray, dt: np.ndarray, A: np.ndarray, B: np.ndarray,
                      C: np.ndarray) -> dict:
    """Mamba-2's SSD arguments as :func:`minirec.ops.simple_gla.forward`'s.

    ``q = C``, ``k = dt·B``, ``v = x``, ``g = dt·A``, ``scale = 1``: then
    simple GLA's ``o`` is SSD's ``y`` without the skip (``y = o + D x``) and its
    state is SSD's ``h (batch, H, N, P)`` (simple GLA's K is N, its V is P).

    Args:
        x: ``(batch, T, H, P)``; dt: ``(batch, T, H)``; A: ``(H,)``;
        B: ``(batch, T, H, N)``.
        C: ``(batch, T, H, N)``.

    Returns:
        ``{"q", "k", "v", "g", "scale"}``, to call ``simple_gla.forward(**args, ...)``.
    """
    for name, arr in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        V.array(name, arr, allow_complex=False)
    return {"q": C, "k": dt[..., None] * B, "v": x, "g": dt * A, "scale": 1.0}


def ssd_grads_from_simple_gla(grads: dict, x: np.ndarray, dt: np.ndarray, A: np.ndarray,
                              B: np.ndarray, D: np.ndarray | None = None,
                              dy: np.ndarray | None = None) -> dict:
    """SSD's gradients from simple GLA's on the arguments of :func:`ssd_as_simple_gla`.

    With ``dq, dk, dv, dg`` from ``simple_gla.backward(cache, dy, dstate)``:

        dC = dq,  dB = dt ⊙ dk,  ddt = Σ_N dk ⊙ B + A dg,  dA = Σ_{batch,T} dt ⊙ dg,
        dx = dv + D dy,  dD = Σ_{batch,T,P} dy ⊙ x,  d initial_state = dS0.

    Args:
        grads: simple GLA's ``{"q", "k", "v", "g", "initial_state"}``.
        x: SSD's ``(batch, T, H, P)`` inputs.
        dt: SSD's ``(batch, T, H)`` steps.
        A: SSD's ``(H,)`` decay rates.
        B: SSD's ``(batch, T, H, N)`` input maps.
        D: SSD's ``(H,)`` skip, or ``None``.
        dy: ∂L/∂y ``(batch, T, H, P)``, needed when ``D`` is given.

    Returns:
        ``{"x", "dt", "A", "B", "C", "D", "initial_state"}`` as
        :func:`minirec.ops.ssd.backward` returns them (``"D"`` ``None`` without ``D``).
    """
    dk, dg = grads["k"], grads["g"]
    out = {"x": grads["v"],
           "dt": np.einsum("bthn,bthn->bth", dk, B) + A * dg,
           "A": np.einsum("bth,bth->h", dg, dt),
           "B": dt[..., None] * dk,
           "C": grads["q"],
           "D": None,
           "initial_state": grads["initial_state"]}
    if D is not None:
        if dy is None:
            raise ValueError("dy: expected ∂L/∂y (batch, T, H, P) to differentiate D, got None")
        V.grad_like("dy", dy, x, "x")
        out["x"] = out["x"] + D[:, None] * dy
        out["D"] = np.einsum("bthp,bthp->h", dy, x)
    return out
