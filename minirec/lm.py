"""A character language model trained with truncated BPTT: what ``minirec train`` runs.

Dimension key: B batch (parallel streams), T window length, V vocabulary
size, M embedding size, H hidden size, N = B·T positions per window.

The model reads characters ``c_0 … c_{T−1}`` and predicts at every position
the next one. ``n = layers`` recurrent cells of one kind (LSTM or minGRU) are
stacked between an embedding and a linear read-out::

    e_t      = E[c_t]                                  (B, T, M)  nn.embedding
    h⁽⁰⁾_t   = e_t
    h⁽ˡ⁾_t   = cell_l(h⁽ˡ⁻¹⁾_t, state⁽ˡ⁾_{t−1})          (B, T, H)  cells.lstm | cells.mingru
    z_t      = h⁽ⁿ⁾_t W^T + b                          (B, T, V)  nn.linear
    L        = −(1/N) Σ_{b,t} log softmax(z_{b,t})[c_{b,t+1}]     (nats per character)

Backward, by hand, in the reverse order::

    dz       = (softmax(z) − onehot(y)) / N            nn.loss.softmax_cross_entropy
    dh⁽ⁿ⁾    = dz W,   dW = Σ dz^T h⁽ⁿ⁾,   db = Σ dz   nn.linear.backward
    dh⁽ˡ⁻¹⁾  = cell_l.backward(…, dh⁽ˡ⁾)["x"]          BPTT in the window, l = n … 1
    dE[v]    = Σ_{c_{b,t} = v} dh⁽⁰⁾_{b,t}              nn.embedding.backward (scatter-add)

Truncated BPTT (Williams & Peng 1990; Sutskever 2013): the text is read as
B long streams in windows of T characters (:func:`minirec.tasks.bptt_batches`).
The state the model ends a window with is the initial state of the next
window (``state0``), so information flows forward across windows, but the
gradient of ``state0`` is dropped: gradients stop at the window boundary.
Passing the final state on *as an array* is all the "detach" there is: no
graph links the windows.

Perplexity is ``exp`` of the mean cross-entropy per character on held-out
text (:func:`perplexity`); a model that knows nothing scores ``V``, one that
is always certain and right scores 1. Sampling draws one character at a time
from ``softmax(z / τ)`` (:func:`sample`): a temperature ``τ < 1`` sharpens
the distribution, ``τ > 1`` flattens it.

Parameters are one nested dict: ``{"embed": {"W"}, "cell0": {...}, …,
"head": {"W", "b"}}``; the kind of cell is read from ``cell0``'s keys (see
:data:`CELLS`), so the parameters are all a caller passes around.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from minirec import _validate as V
from minirec.cells import lstm, mingru
from minirec.nn import embedding, linear, loss
from minirec.nn import train as nn_train
from minirec.tasks import text

#: The recurrent cells a model can stack, by name.
CELLS: dict[str, ModuleType] = {"lstm": lstm, "mingru": mingru}


class LMCache(NamedTuple):
    """What :func:`backward` needs: the embedding's, each layer's and the head's cache."""

    embed: embedding.EmbeddingCache
    cells: list
    head: linear.LinearCache


@dataclass
class LMResult:
    """What :func:`train` returns.

    Attributes:
        params: the trained parameters.
        losses: training loss (nats per character) at every step.
        valid_perplexity: perplexity on the held-out text after training.
        snapshots: ``(step, held-out perplexity, sample)`` taken every
            ``snapshot_every`` steps (before that step's update), and after
            the last step.
        seconds: wall-clock time of the training loop (snapshots included).
        windows: number of windows in one pass over the training text.
    """

    params: dict
    losses: list[float]
    valid_perplexity: float
    snapshots: list[tuple[int, float, str]] = field(default_factory=list)
    seconds: float = 0.0
    windows: int = 0


def _layers(params: dict) -> list[str]:
    return sorted((k for k in params if k.startswith("cell")), key=lambda k: int(k[4:]))


def cell_of(params: dict) -> tuple[str, ModuleType]:
    """The cell kind of a model's parameters: ``("lstm", cells.lstm)`` or
    ``("mingru", cells.mingru)``, from the keys of ``params["cell0"]``."""
    if not isinstance(params, dict) or not {"embed", "cell0", "head"} <= set(params):
        raise ValueError(f"params: expected a language model's parameters with keys "
                         f"'embed', 'cell0', …, 'head' (from minirec.lm.init), got "
                         f"{sorted(params) if isinstance(params, dict) else type(params).__name__}")
    keys = set(params["cell0"])
    for name, module in CELLS.items():
        if keys == set(module.PARAM_SHAPES):
            W_hh = params["cell0"].get("W_hh")
            if module is lstm and W_hh.shape[0] != lstm.GATES * W_hh.shape[-1]:
                continue  # an Elman RNN or a GRU has the same names
            return name, module
    raise ValueError(f"params['cell0']: expected the keys of one of {tuple(CELLS)}, "
                     f"got {sorted(keys)}")


def init(rng: np.random.Generator | int | None, vocab_size: int, *, cell: str = "lstm",
         hidden: int = 128, embed: int = 32, layers: int = 1,
         dtype=np.float64) -> dict[str, dict[str, np.ndarray]]:
    """Initial parameters: an embedding ``E (V, M)``, ``layers`` cells and a read-out.

    Args:
        rng: ``np.random.Generator`` or int seed.
        vocab_size: V.
        cell: one of :data:`CELLS`.
        hidden: H, every layer's hidden size.
        embed: M, the embedding size.
        layers: number of stacked cells.
        dtype: float64 or float32.

    Returns:
        ``{"embed": {"W": (V, M)}, "cell0": …, "cell{layers-1}": …,
        "head": {"W": (V, H), "b": (V,)}}`` (each layer's initialisation is its
        cell's ``init_params``; the embedding is N(0, 1), PyTorch's).
    """
    V.choice("cell", cell, tuple(CELLS))
    Vn = V.positive_int("vocab_size", vocab_size)
    H = V.positive_int("hidden", hidden)
    M = V.positive_int("embed", embed)
    n_layers = V.positive_int("layers", layers)
    rng = np.random.default_rng(rng)
    params = {"embed": embedding.init(rng, Vn, M, dtype)}
    for l in range(n_layers):
        params[f"cell{l}"] = CELLS[cell].init_params(rng, M if l == 0 else H, H, dtype=dtype)
    params["head"] = linear.init(rng, H, Vn, dtype)
    return params


def zero_state(params: dict, batch: int) -> tuple:
    """Every layer's zero state for ``batch`` streams (a tuple, one entry per layer)."""
    _, module = cell_of(params)
    B = V.positive_int("batch", batch)
    return tuple(module.zero_state(params[k], B) for k in _layers(params))


def forward(params: dict, idx: np.ndarray, state0: tuple | None = None, *,
            method: str = "recurrent") -> tuple[np.ndarray, tuple, LMCache]:
    """Logits for the next character at every position.

    Args:
        params: from :func:`init`.
        idx: ``(B, T)`` integer ids.
        state0: one state per layer (from :func:`zero_state` or a previous
            call's returned state); ``None`` means zeros.
        method: the cells' ``method`` (LSTM: ``"recurrent"``; minGRU: any of
            ``mingru.METHODS``).

    Returns:
        ``logits (B, T, V)``, the final state (one per layer) and an
        :class:`LMCache` for :func:`backward`.
    """
    _, module = cell_of(params)
    names = _layers(params)
    if not (hasattr(idx, "ndim") and idx.ndim == 2):
        raise ValueError(f"idx: expected a (B, T) integer array, got "
                         f"{getattr(idx, 'shape', type(idx).__name__)}")
    if state0 is None:
        state0 = zero_state(params, idx.shape[0])
    if not isinstance(state0, tuple) or len(state0) != len(names):
        raise ValueError(f"state0: expected a tuple of {len(names)} layer states (from "
                         f"lm.zero_state or a previous call), got {type(state0).__name__}"
                         + (f" of length {len(state0)}" if isinstance(state0, tuple) else ""))
    h, embed_cache = embedding.forward(params["embed"], idx)
    states, caches = [], []
    for name, s0 in zip(names, state0):
        h, s, c = module.forward(params[name], h, s0, method=method)
        states.append(s)
        caches.append(c)
    logits, head_cache = linear.forward(params["head"], h)
    return logits, tuple(states), LMCache(embed_cache, caches, head_cache)


def backward(params: dict, cache: LMCache, dlogits: np.ndarray) -> dict:
    """Gradients of every parameter from ``dlogits (B, T, V)`` (structure of ``params``).

    The gradient of ``state0`` is not propagated: truncated BPTT stops at
    the window (module docstring).
    """
    _, module = cell_of(params)
    if not isinstance(cache, LMCache):
        raise TypeError(f"cache: expected the LMCache of lm.forward, got {type(cache).__name__}")
    dh, g_head = linear.backward(params["head"], cache.head, dlogits)
    grads: dict[str, Any] = {"head": g_head}
    for name, c in zip(reversed(_layers(params)), reversed(cache.cells)):
        g = module.backward(params[name], c, dh)
        dh = g["x"]                                   # into the layer below
        grads[name] = nn_train.param_grads(g, params[name])
    grads["embed"] = embedding.backward(params["embed"], cache.embed, dh)
    return {k: grads[k] for k in params}


def loss_and_grads(params: dict, x: np.ndarray, y: np.ndarray, state0: tuple | None = None,
                   *, method: str = "recurrent") -> tuple[float, dict, tuple]:
    """One window of truncated BPTT: mean cross-entropy, its gradients, the final state.

    Args:
        params: from :func:`init`.
        x: ``(B, T)`` input ids; ``y``: ``(B, T)`` target ids (the next characters).
        state0: the state the previous window ended with (``None``: zeros).
        method: see :func:`forward`.

    Returns:
        ``(loss, grads, state)``: the loss in nats per character, gradients
        with the structure of ``params``, and the state to pass as the next
        window's ``state0``.
    """
    logits, state, cache = forward(params, x, state0, method=method)
    value, dlogits = loss.softmax_cross_entropy(logits, y)
    return value, backward(params, cache, dlogits), state


def perplexity(params: dict, ids: np.ndarray, *, batch: int = 16, T: int = 128,
               carry_state: bool = True, method: str = "recurrent") -> float:
    """``exp`` of the mean cross-entropy per character of ``ids (n,)``.

    ``ids`` is read as ``batch`` streams in windows of ``T``, the state
    carried from window to window (:func:`minirec.tasks.bptt_batches`; its
    last, incomplete windows are left out). Each stream starts from a zero
    state, so its first characters are predicted with less context.
    ``carry_state=False`` starts every window from zeros instead: the model
    then sees at most ``T`` characters back.
    """
    x, y = text.bptt_batches(ids, batch, T)
    state, total = None, 0.0
    for k in range(len(x)):
        logits, state, _ = forward(params, x[k], state if carry_state else None, method=method)
        total += loss.softmax_cross_entropy(logits, y[k])[0]
    return float(np.exp(total / len(x)))


def next_char_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``softmax(z / τ)`` over the last axis of ``logits (..., V)``, computed stably
    (``z − max z`` first): the distribution :func:`sample` draws from."""
    V.array("logits", logits, allow_complex=False, min_ndim=1)
    tau = V.positive_float("temperature", temperature)
    z = logits / logits.dtype.type(tau)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def _encode_prime(corpus: text.CharCorpus, prime: str) -> np.ndarray:
    if not (isinstance(prime, str) and prime):
        raise ValueError(f"prime: expected a non-empty str, got {prime!r}")
    unknown = sorted(set(prime) - set(corpus.chars))
    if unknown:
        raise ValueError(f"prime: expected characters of the corpus' vocabulary, got "
                         f"{''.join(unknown)!r}, which the corpus does not contain")
    return corpus.encode(prime)


def sample(params: dict, corpus: text.CharCorpus, length: int, *, prime: str = "\n",
           temperature: float = 1.0, rng: np.random.Generator | int | None = None,
           method: str = "recurrent") -> str:
    """Generate ``length`` characters after reading ``prime``.

    At each step the next id is drawn from ``p = softmax(z / temperature)``
    (:func:`next_char_probs` of the last logits ``z``), fed back in, and the
    state carried on.

    Args:
        params: from :func:`init`.
        corpus: for the vocabulary (:meth:`CharCorpus.encode`/``decode``).
        length: characters to generate (≥ 0).
        prime: text read first (at least one character of the vocabulary).
        temperature: ``τ > 0``.
        rng: seed or generator of the draws.
        method: see :func:`forward`.

    Returns:
        The ``length`` generated characters (without ``prime``).
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length: expected an integer ≥ 0, got {length!r}")
    V.positive_float("temperature", temperature)
    rng = np.random.default_rng(rng)
    logits, state, _ = forward(params, _encode_prime(corpus, prime)[None, :], method=method)
    out = np.empty(length, dtype=np.int64)
    for i in range(length):
        p = next_char_probs(logits[0, -1].astype(np.float64), temperature)
        out[i] = rng.choice(len(p), p=p)
        logits, state, _ = forward(params, out[None, i:i + 1], state, method=method)
    return corpus.decode(out)


def train(corpus: text.CharCorpus | None = None, *, cell: str = "lstm", hidden: int = 128,
          embed: int = 32, layers: int = 1, batch: int = 32, T: int = 64, steps: int = 500,
          lr: float = 1e-2, clip: float = 1.0, seed: int = 0, method: str = "recurrent",
          snapshot_every: int | None = None, sample_length: int = 300,
          temperature: float = 0.8, prime: str = "\n", dtype=np.float32,
          progress: bool = True) -> LMResult:
    """Train a character language model with truncated BPTT, Adam and clipping.

    Step ``k`` trains on window ``k mod N`` of :func:`minirec.tasks.bptt_batches`
    (``corpus.train``, ``batch`` streams, windows of ``T``) from the state
    step ``k − 1`` ended with (zeros at ``k mod N = 0``, where every stream
    starts again). :func:`minirec.nn.fit` runs the loop (Adam, clipping,
    progress bar).

    Args:
        corpus: the text; default ``char_corpus()`` (CPython's help texts).
        cell: the recurrent cell, as for :func:`init`.
        hidden: its hidden size (:func:`init`).
        embed: the embedding size (:func:`init`).
        layers: how many stacked cells (:func:`init`).
        batch: B, parallel streams.
        T: window length (how far back gradients reach).
        steps: Adam steps.
        lr: Adam's step size.
        clip: global gradient-norm limit.
        seed: seeds the initial parameters and the samples.
        method: see :func:`forward`.
        snapshot_every: every this many steps (and after the last one),
            record the held-out perplexity and a sample (``None``: only after
            the last step).
        sample_length: characters per snapshot sample (:func:`sample`).
        temperature: the snapshots' sampling temperature (:func:`sample`).
        prime: the text the snapshot samples start from (:func:`sample`).
        dtype: the parameters' dtype, float32 (about twice as fast as
            float64 here, and ample for training) or float64.
        progress: show the progress bar.

    Returns:
        An :class:`LMResult`.

    Raises:
        ValueError: a bad option (the message names it), or ``batch · T + 1``
            more characters than the training or held-out text has.
    """
    corpus = text.char_corpus() if corpus is None else corpus
    if not isinstance(corpus, text.CharCorpus):
        raise TypeError(f"corpus: expected a CharCorpus (minirec.tasks.char_corpus), got "
                        f"{type(corpus).__name__}")
    steps = V.positive_int("steps", steps)
    V.positive_int("snapshot_every", snapshot_every, allow_none=True)
    V.positive_float("temperature", temperature)
    if isinstance(sample_length, bool) or not isinstance(sample_length, (int, np.integer)) \
            or sample_length < 0:
        raise ValueError(f"sample_length: expected an integer ≥ 0, got {sample_length!r}")
    V.positive_float("clip", clip)
    V.positive_float("lr", lr)
    V.choice("method", method, CELLS[V.choice("cell", cell, tuple(CELLS))].METHODS)
    _encode_prime(corpus, prime)  # refuse an unknown character before training, not after
    B, T = V.positive_int("batch", batch), V.positive_int("T", T)
    shortest = min(len(corpus.train), len(corpus.valid))
    if B * T + 1 > shortest:  # one window per stream, in both parts of the text
        raise ValueError(f"batch, T: expected batch·T + 1 ≤ {shortest} (the shorter of the "
                         f"training and held-out texts), got batch={B}, T={T} "
                         f"(batch·T + 1 = {B * T + 1})")
    x, y = text.bptt_batches(corpus.train, B, T)
    params = init(seed, corpus.vocab_size, cell=cell, hidden=hidden, embed=embed,
                  layers=layers, dtype=dtype)
    carried: dict[str, Any] = {"state": None}
    snapshots: list[tuple[int, float, str]] = []
    sample_rng = np.random.default_rng([seed, 1])

    def snapshot(p: dict, step: int) -> None:
        snapshots.append((step, perplexity(p, corpus.valid, batch=batch, T=T, method=method),
                          sample(p, corpus, sample_length, prime=prime, temperature=temperature,
                                 rng=sample_rng, method=method)))

    def step_fn(p: dict, step: int) -> tuple[float, dict]:
        if snapshot_every is not None and step % snapshot_every == 0:
            snapshot(p, step)
        k = step % len(x)
        state0 = None if k == 0 else carried["state"]   # a new pass starts every stream anew
        value, grads, carried["state"] = loss_and_grads(p, x[k], y[k], state0, method=method)
        return value, grads

    start = time.perf_counter()
    params, history = nn_train.fit(step_fn, params, steps, lr=lr, clip=clip,
                                   progress=progress, desc=f"{cell} language model")
    snapshot(params, steps)
    seconds = time.perf_counter() - start
    return LMResult(params, history["loss"], snapshots[-1][1], snapshots, seconds, len(x))
