"""Moving weights between minirec and other frameworks.

``minirec.interop.torch``: ``torch.nn.RNN``/``LSTM``/``GRU`` (stacked,
bidirectional) to minirec's cells and back (``from_torch``, ``to_torch``,
``to_state_dict``, ``state_from_torch``, ``state_to_torch``).

Importing this package imports no framework: PyTorch is imported only by the
function that builds a torch module (``to_torch``).
"""

from minirec.interop import torch

__all__ = ["torch"]
