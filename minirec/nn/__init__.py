"""A tiny training kit for the tutorials, every backward written by hand.

``linear`` (``y = x W^T + b``), ``embedding`` (``y = W[idx]``), ``norm``
(layer norm), ``loss`` (``softmax_cross_entropy``, ``mse``), ``optim`` (Adam
as pure ``adam_init``/``adam_update``, ``clip_by_global_norm``) and ``train``
(``fit``: a loop with a progress bar). Layers follow one pattern::

    params = linear.init(rng, in_features, out_features)
    y, cache = linear.forward(params, x)
    dx, grads = linear.backward(params, cache, dy)      # grads: keys of params
"""

from minirec.nn import embedding, linear, loss, norm, optim, train
from minirec.nn.optim import adam_init, adam_update, clip_by_global_norm
from minirec.nn.train import fit, param_grads

__all__ = ["embedding", "linear", "loss", "norm", "optim", "train",
           "adam_init", "adam_update", "clip_by_global_norm", "fit", "param_grads"]
