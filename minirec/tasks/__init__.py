"""Synthetic data for training recurrent models (see :mod:`minirec.tasks.synthetic`).

``parity``, ``adding``, ``copy``, ``selective_copy`` — each ``f(rng, batch, …)``
with ``rng`` a ``np.random.Generator`` or an int seed — and ``chance_loss``,
the loss of a model that remembers nothing.
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

__all__ = ["BLANK", "adding", "chance_loss", "copy", "marker", "parity", "selective_copy",
           "vocab_size"]
