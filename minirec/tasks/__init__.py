"""Data for training recurrent models.

Synthetic tasks (:mod:`minirec.tasks.synthetic`): ``parity``, ``adding``,
``copy``, ``selective_copy`` — each ``f(rng, batch, …)`` with ``rng`` a
``np.random.Generator`` or an int seed — and ``chance_loss``, the loss of a
model that remembers nothing.

A character corpus (:mod:`minirec.tasks.text`): ``pydoc_text`` (CPython's
help texts, on every machine), ``char_corpus`` (ids, vocabulary, a train /
held-out split) and ``bptt_batches`` (B parallel streams cut into windows of
T characters, for truncated BPTT with the state carried across batches).
"""

from minirec.tasks.synthetic import (
    BLANK,
    adding,
    chance_loss,
    copy,
    marker,
    parity,
    selective_copy,
    vocab_size,
)
from minirec.tasks.text import CharCorpus, bptt_batches, char_corpus, pydoc_text

__all__ = ["BLANK", "CharCorpus", "adding", "bptt_batches", "chance_loss", "char_corpus", "copy",
           "marker", "parity", "pydoc_text", "selective_copy", "vocab_size"]
