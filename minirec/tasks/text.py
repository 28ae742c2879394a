"""A character corpus for language modelling, and batching for truncated BPTT.

Dimension key: n characters in a split, V vocabulary size, B parallel streams
(the batch), T window length in characters, N windows.

The corpus. :func:`pydoc_text` is the English help text that ships with
CPython itself (``pydoc_data.topics.topics``, what ``help("with")`` prints:
~465 000 characters in Python 3.11, more in later versions), so every machine
that runs minirec has it and nothing is downloaded. :func:`char_corpus` turns
a text into integer ids over its sorted set of characters and splits it into
a training part (the first ``1 − valid_fraction``) and a held-out part (the
rest): two disjoint, contiguous pieces of the text.

Batching for truncated BPTT (:func:`bptt_batches`; d2l's "sequential
partitioning", the ``batchify`` of PyTorch's word-language-model example).
The ids ``s`` (length n) are cut into B contiguous streams of length
``L = (n − 1) // B``, and every stream into windows of T characters; the
target of each character is the next one::

    stream b      = s[b L : b L + L + 1]
    x[k, b, :]    = s[b L + k T     : b L + k T + T]        (N, B, T)  inputs
    y[k, b, :]    = s[b L + k T + 1 : b L + k T + T + 1]    (N, B, T)  targets
    N             = L // T

Row b of window k + 1 continues row b of window k (``x[k+1, b, 0] =
y[k, b, T−1]``), so the state a recurrent model ends window k with is the
right initial state for window k + 1: carry it across batches and the model
reads B long texts, each from its beginning; backpropagate only within a
window (truncated BPTT). The last ``(n − 1) − N T B`` characters, fewer than
one window per stream, are not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minirec import _validate as V


def pydoc_text() -> str:
    """CPython's help texts (``pydoc_data.topics.topics``), joined in sorted topic order.

    Topics are separated by a blank line. The text is part of the standard
    library, so it exists wherever Python does (some Linux distributions
    strip ``pydoc_data``; then pass your own text to :func:`char_corpus`).

    Raises:
        ModuleNotFoundError: this Python has no ``pydoc_data``.
    """
    try:
        from pydoc_data.topics import topics
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "pydoc_data: expected CPython's help texts (pydoc_data.topics), got none in "
            "this Python (its distribution removed them); pass your own text: "
            "char_corpus(text=open(path).read())") from exc
    return "\n\n".join(topics[k].strip("\n") for k in sorted(topics)) + "\n"


@dataclass(frozen=True, eq=False)
class CharCorpus:
    """A text as integer ids, split into training and held-out parts.

    Attributes:
        chars: the vocabulary, sorted: id ``i`` is the character ``chars[i]``.
        train: ``(n_train,)`` int64 ids, the first part of the text.
        valid: ``(n_valid,)`` int64 ids, the rest of the text (held out).
    """

    chars: str
    train: np.ndarray
    valid: np.ndarray

    @property
    def vocab_size(self) -> int:
        """V, the number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """``text`` as ``(len(text),)`` int64 ids; a character outside the
        vocabulary is a ``ValueError`` naming it."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise ValueError(f"text: expected characters of the corpus' vocabulary "
                             f"({self.vocab_size} characters), got {len(unknown)} others: "
                             f"{''.join(unknown[:20])!r}")
        return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids) -> str:
        """The text of a sequence of ids (any integer array or list, flattened)."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids: expected integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"ids: expected values in [0, {self.vocab_size}), got min "
                             f"{int(ids.min())}, max {int(ids.max())}")
        return "".join(self.chars[i] for i in ids)


def char_corpus(text: str | None = None, *, valid_fraction: float = 0.1) -> CharCorpus:
    """Character ids of ``text`` (default: :func:`pydoc_text`), split in two.

    The vocabulary is the sorted set of characters of the whole text, so the
    held-out part has no unknown character. The held-out part is the last
    ``round(valid_fraction · n)`` characters; the two parts are disjoint and
    together are the text.

    Args:
        text: the corpus; ``None`` for CPython's help texts.
        valid_fraction: share of the text held out, in ``(0, 1)``.

    Returns:
        A :class:`CharCorpus`.

    Raises:
        ValueError: ``valid_fraction`` outside ``(0, 1)``, or a text so short
            that a part would have fewer than 2 characters (an input and its
            target).
    """
    if text is None:
        text = pydoc_text()
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str or None, got {type(text).__name__}")
    frac = V.positive_float("valid_fraction", valid_fraction)
    if frac >= 1:
        raise ValueError(f"valid_fraction: expected a number in (0, 1), got {valid_fraction!r}")
    n_valid = int(round(frac * len(text)))
    if n_valid < 2 or len(text) - n_valid < 2:
        raise ValueError(f"text: expected enough characters for two parts of at least 2 "
                         f"(valid_fraction={frac:g}), got {len(text)} characters")
    chars = "".join(sorted(set(text)))
    lookup = np.full(max(map(ord, chars)) + 1, -1, dtype=np.int64)
    lookup[[ord(c) for c in chars]] = np.arange(len(chars))
    ids = lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
    return CharCorpus(chars, ids[:len(text) - n_valid], ids[len(text) - n_valid:])


def bptt_batches(ids: np.ndarray, batch: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``ids`` into B streams and each stream into windows of T (module docstring).

    Args:
        ids: ``(n,)`` integer ids, e.g. ``corpus.train``.
        batch: B, the number of parallel streams.
        T: the window length.

    Returns:
        ``(x, y)``, each ``(N, B, T)`` int64 with ``N = ((n − 1) // B) // T``:
        window k is ``x[k]``, its targets ``y[k]`` (the next character of
        each), and ``x[k + 1, b, 0] = y[k, b, T − 1]``.

    Raises:
        ValueError: ``ids`` not a 1-d integer array, or shorter than
            ``batch · T + 1`` (not one window per stream).
    """
    B = V.positive_int("batch", batch)
    T = V.positive_int("T", T)
    if not (hasattr(ids, "dtype") and np.issubdtype(ids.dtype, np.integer) and ids.ndim == 1):
        raise TypeError(f"ids: expected a 1-d integer ndarray, got "
                        f"{getattr(ids, 'dtype', type(ids).__name__)} of shape "
                        f"{getattr(ids, 'shape', None)}")
    L = (len(ids) - 1) // B
    N = L // T
    if N < 1:
        raise ValueError(f"ids: expected at least batch·T + 1 = {B * T + 1} ids (one window "
                         f"of T={T} per stream, batch={B}), got {len(ids)}")
    starts = np.arange(B)[:, None] * L + np.arange(N * T + 1)[None, :]  # (B, N T + 1)
    streams = ids[starts].astype(np.int64, copy=False)
    x = streams[:, :-1].reshape(B, N, T).transpose(1, 0, 2)
    y = streams[:, 1:].reshape(B, N, T).transpose(1, 0, 2)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)
