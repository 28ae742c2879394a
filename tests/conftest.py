"""Shared fixtures and helpers for the test suite."""

import numpy as np
import pytest

from minirec.registry import rel_rms


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_close(actual, expected, rtol, name="array"):
    """Relative-RMS comparison (DESIGN §6): float64 1e-10, float32 1e-4."""
    err = rel_rms(actual, expected)
    assert err <= rtol, f"{name}: relative RMS error {err:.3e} > {rtol:.0e}"


def readonly(*arrays):
    """Mark arrays read-only, as a caller's memory-mapped data would be."""
    for a in arrays:
        if a is not None:
            a.flags.writeable = False
    return arrays


TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.complex128): 1e-10,
       np.dtype(np.float32): 1e-4, np.dtype(np.complex64): 1e-4}
