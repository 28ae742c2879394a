"""LRU and S4D/LSSL with backend="numba": the recurrence runs in scan.linear's
numba kernels (the projections stay NumPy), so numba runs exactly the methods
scan.linear has kernels for, and refuses the others by name. Agreement with the
NumPy definition (every dtype, T = 1, split-resume, no initial state) is
tests/test_contract.py's, for the "lru", "ssm" and "ssm_bilinear" entries."""

import numpy as np
import pytest

from minirec import registry

pytest.importorskip("numba")


@pytest.mark.parametrize("name, method", [("lru", "blelloch"), ("lru", "log"),
                                          ("ssm", "conv"), ("ssm", "log")])
def test_numba_refuses_methods_without_a_kernel(name, method):
    d = registry.get(name).make_inputs(np.random.default_rng(0), np.float64, "small")
    with pytest.raises(ValueError, match=f"method: .*backend='numba' supports .*got '{method}'"):
        registry.get(name).module.forward(d["params"], d["x"], method=method, backend="numba")
