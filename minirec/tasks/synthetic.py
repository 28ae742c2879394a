"""Synthetic sequence tasks that test memory, each a function of a seed.

Every task takes ``rng`` — a ``np.random.Generator`` or an int seed — first:
the same seed gives the same batch. Token tasks share one vocabulary layout:
``0`` is the blank token, ``1 … n_symbols`` are data symbols, and
``n_symbols + 1`` is the marker that asks for recall (vocabulary size
``n_symbols + 2``).

=================  ===============================  ==========================================
task               what must be remembered          chance-level loss (:func:`chance_loss`)
=================  ===============================  ==========================================
``parity``         the xor of every bit so far      cross-entropy ``log 2 ≈ 0.693`` per step
``adding``         two marked numbers over T steps  MSE ``1/6 ≈ 0.167`` (always predict 1)
``copy``           a sequence, across a delay       cross-entropy ``log n_symbols`` (masked)
``selective_copy`` tokens scattered among blanks    cross-entropy ``log n_symbols`` (masked)
=================  ===============================  ==========================================

"Chance level" is the best loss of a model that remembers nothing: a model
that reaches it has learnt only the label statistics.
"""

from __future__ import annotations

import numpy as np

from minirec import _validate as V

BLANK = 0


def marker(n_symbols: int) -> int:
    """The recall marker of the token tasks: ``n_symbols + 1``."""
    return n_symbols + 1


def vocab_size(n_symbols: int) -> int:
    """Vocabulary size of the token tasks: blank, ``n_symbols`` symbols, marker."""
    return n_symbols + 2


def parity(rng: np.random.Generator | int | None, batch: int, T: int,
           dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Streaming parity: after each bit, output the xor of all bits so far.

    Returns:
        ``x (B, T, 1)`` bits in {0, 1} as ``dtype``; ``y (B, T)`` int64,
        ``y_t = x_0 ⊕ x_1 ⊕ … ⊕ x_t``.

    A model without memory sees only ``x_t``, which is independent of
    ``y_{t-1}``, so its best cross-entropy is ``log 2`` for every step after
    the first.
    """
    rng = np.random.default_rng(rng)
    B = V.positive_int("batch", batch)
    T = V.positive_int("T", T)
    bits = rng.integers(0, 2, size=(B, T))
    y = np.bitwise_xor.accumulate(bits, axis=1).astype(np.int64)
    return bits[..., None].astype(dtype), y


def adding(rng: np.random.Generator | int | None, batch: int, T: int,
           dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015's form).

    Channel 0 holds numbers ~ U(0, 1); channel 1 marks exactly two of them with
    a 1, one in the first half ``[0, T//2)`` and one in the second half
    ``[T//2, T)``. The target is the sum of the two marked numbers.

    Returns:
        ``x (B, T, 2)`` as ``dtype``; ``y (B,)`` as ``dtype``.

    Predicting the constant 1 (the mean of the sum) gives MSE ``Var = 2/12 =
    1/6``: the chance level. Needs ``T >= 2``.
    """
    rng = np.random.default_rng(rng)
    B = V.positive_int("batch", batch)
    T = V.positive_int("T", T)
    if T < 2:
        raise ValueError(f"T: expected T >= 2 (one marker in each half), got {T}")
    values = rng.uniform(0.0, 1.0, size=(B, T))
    half = T // 2
    first = rng.integers(0, half, size=B)
    second = rng.integers(half, T, size=B)
    marks = np.zeros((B, T))
    rows = np.arange(B)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    x = np.stack([values, marks], axis=-1).astype(dtype)
    y = (values[rows, first] + values[rows, second]).astype(dtype)
    return x, y


def copy(rng: np.random.Generator | int | None, batch: int, n_symbols: int, seq_len: int,
         delay: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The copy task (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016's form).

    Layout of one sequence, length ``L = seq_len + delay + seq_len``::

        x:  s_1 … s_S   0 … 0 M   0 … 0          (M = marker, last of the delay steps)
        y:  0 … 0       0 … 0 0   s_1 … s_S
        mask: False …   False …   True …

    ``s_i`` are uniform in ``1 … n_symbols``; ``delay >= 1`` blank-or-marker
    steps separate the sequence from its recall.

    Returns:
        ``x (B, L)`` int64 tokens, ``y (B, L)`` int64 targets (blank outside
        the recall window), ``mask (B, L)`` bool, True on the recall window.

    Chance level: cross-entropy ``log n_symbols`` on the masked positions (a
    model that knows only that a symbol comes). Unmasked, the memoryless
    baseline is ``seq_len · log(n_symbols) / L`` (Arjovsky et al.).
    """
    rng = np.random.default_rng(rng)
    B = V.positive_int("batch", batch)
    n = V.positive_int("n_symbols", n_symbols)
    S = V.positive_int("seq_len", seq_len)
    D = V.positive_int("delay", delay)
    L = S + D + S
    data = rng.integers(1, n + 1, size=(B, S))
    x = np.zeros((B, L), np.int64)
    x[:, :S] = data
    x[:, S + D - 1] = marker(n)
    y = np.zeros((B, L), np.int64)
    y[:, S + D:] = data
    mask = np.zeros((B, L), bool)
    mask[:, S + D:] = True
    return x, y, mask


def selective_copy(rng: np.random.Generator | int | None, batch: int, n_symbols: int,
                   seq_len: int, n_memorize: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Selective copying (Gu & Dao 2023, Mamba §3.1): recall scattered tokens in order.

    ``n_memorize`` data tokens (uniform in ``1 … n_symbols``) sit at random
    distinct positions among ``seq_len`` steps of blanks; then
    ``n_memorize`` marker steps ask for them back in order of appearance.
    Unlike :func:`copy`, where the tokens are is random, so a fixed time-shift
    (a convolution) cannot solve it: the model must select by content. Length
    ``L = seq_len + n_memorize``::

        x:  0 s_1 0 0 s_2 … 0 s_K 0   M M … M
        y:  0 …                 0     s_1 s_2 … s_K
        mask: False …                 True …

    Returns:
        ``x (B, L)`` int64, ``y (B, L)`` int64 (blank outside the recall
        window), ``mask (B, L)`` bool, True on the recall window.

    Chance level: cross-entropy ``log n_symbols`` on the masked positions.
    Needs ``n_memorize <= seq_len``.
    """
    rng = np.random.default_rng(rng)
    B = V.positive_int("batch", batch)
    n = V.positive_int("n_symbols", n_symbols)
    S = V.positive_int("seq_len", seq_len)
    K = V.positive_int("n_memorize", n_memorize)
    if K > S:
        raise ValueError(f"n_memorize: expected at most seq_len = {S}, got {K}")
    L = S + K
    # K distinct sorted positions per row: the K smallest of S random keys
    positions = np.sort(np.argsort(rng.random((B, S)), axis=1)[:, :K], axis=1)
    data = rng.integers(1, n + 1, size=(B, K))
    x = np.zeros((B, L), np.int64)
    np.put_along_axis(x, positions, data, axis=1)
    x[:, S:] = marker(n)
    y = np.zeros((B, L), np.int64)
    y[:, S:] = data
    mask = np.zeros((B, L), bool)
    mask[:, S:] = True
    return x, y, mask


def chance_loss(task: str, n_symbols: int | None = None) -> float:
    """The best loss of a model with no memory (see the table above).

    ``chance_loss("parity") = log 2``; ``chance_loss("adding") = 1/6``;
    ``chance_loss("copy", n_symbols)`` and ``chance_loss("selective_copy",
    n_symbols)`` ``= log n_symbols`` on the masked positions.
    """
    V.choice("task", task, ("parity", "adding", "copy", "selective_copy"))
    if task == "parity":
        return float(np.log(2.0))
    if task == "adding":
        return 1.0 / 6.0
    n = V.positive_int("n_symbols", n_symbols)
    return float(np.log(n))
