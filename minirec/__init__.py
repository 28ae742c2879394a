"""minirec: recurrent networks, state-space models and linear attention in NumPy.

Every recurrence has a readable definition with a hand-derived backward pass
(``method="recurrent"``), parallel algorithms checked equal to it, and fast
kernels. Importing minirec imports neither Numba nor CuPy.

Public names: the subpackages ``scan``, ``cells``, ``ops``, ``nn``, ``tasks``
and the modules ``registry``, ``gradcheck``, ``bptt``; :class:`check_finite`,
the library's one switch for the NaN/inf check of every array argument.
"""

from minirec import bptt, gradcheck, registry
from minirec._validate import check_finite

__version__ = "0.1.0"
__all__ = ["bptt", "check_finite", "gradcheck", "registry", "__version__"]
