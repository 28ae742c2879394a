"""minirec: recurrent networks, state-space models and linear attention in NumPy.

Every recurrence has a readable definition with a hand-derived backward pass
(``method="recurrent"``), parallel algorithms checked equal to it, and fast
kernels. Importing minirec imports neither Numba nor CuPy.

Public names: the subpackages ``scan``, ``cells``, ``ops``, ``nn``, ``tasks``
and the modules ``registry``, ``gradcheck``, ``bptt``.
"""

from minirec import bptt, gradcheck, registry

__version__ = "0.1.0"
__all__ = ["bptt", "gradcheck", "registry", "__version__"]
