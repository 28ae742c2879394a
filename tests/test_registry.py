"""The registry itself: named sizes and the gradient check it drives. The
per-entry contract (gradients, agreement, bad input …) is tests/test_contract.py."""

import numpy as np
import pytest

from minirec import registry


def test_names_are_unique_and_every_entry_has_a_definition():
    assert len(registry.ENTRIES) == len(set(registry.ENTRIES))
    for e in registry.ENTRIES.values():
        assert e.methods[0] == "recurrent", e.name
        assert e.backends[0] == "numpy", e.name
        assert set(e.time_inputs) <= set(e.make_inputs(np.random.default_rng(0), np.float64
                                                        if np.float64 in [np.dtype(d) for d in
                                                                          e.dtypes]
                                                        else np.complex128)), e.name


def test_sizes_are_named_and_overridable():
    e = registry.get("selective_scan")
    assert e.size("small") == {"B": 2, "T": 5, "D": 3, "N": 4}
    assert e.size("medium", T=1)["T"] == 1
    assert e.size((8, 512, 32, 16)) == {"B": 8, "T": 512, "D": 32, "N": 16}
    inputs = e.make_inputs(np.random.default_rng(0), np.float32, "small", B=0, T=7)
    assert inputs["u"].shape == (0, 7, 3) and inputs["A"].shape == (3, 4)
    assert inputs["u"].dtype == np.float32


@pytest.mark.parametrize("bad, match", [("huge", "expected one of"),
                                        ((1, 2, 3), "expected a name or a tuple")])
def test_bad_sizes_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        registry.get("rnn").size(bad)
    with pytest.raises(ValueError, match="has dimensions"):
        registry.get("rnn").size("small", Q=3)


def test_gradcheck_fails_on_a_backward_wrong_by_a_tenth_of_a_percent():
    import types

    from minirec.cells import rnn

    def bad_backward(params, cache, dy, dstate=None):
        g = rnn.backward(params, cache, dy, dstate)
        g["W_hh"] = g["W_hh"] * 1.001  # 0.1 % wrong
        return g

    broken = types.SimpleNamespace(forward=rnn.forward, backward=bad_backward)
    entry = registry.get("rnn")
    inputs = entry.make_inputs(np.random.default_rng(0), np.float64, "small")
    report = registry.gradcheck(entry)
    assert report.passed, str(report)
    from minirec import gradcheck
    bad = gradcheck.check_cell(broken, inputs["params"], inputs["x"], inputs["state0"])
    assert not bad.passed
    assert bad.errors["W_hh"] > 1e-4 and bad.errors["W_ih"] < 1e-6, str(bad)


def test_on_device_moves_arrays_only_for_cupy_and_keeps_other_leaves():
    x = {"a": np.ones(2), "s": (np.zeros(1), None), "l": [1.0, 2.0]}
    assert registry.to_device(x, "numpy") is x
    assert registry.to_host(x)["l"] == [1.0, 2.0]
    assert registry.run_forward  # the numpy path goes straight to the module:
    e = registry.get("rnn")
    assert registry._module(e, "numpy") is e.module
    assert isinstance(registry._module(e, "cupy"), registry.OnDevice)
    assert not registry._holds_cupy((np.ones(1), {"k": [np.ones(1)]}))


def test_generic_benchmark_sizes_map_to_heads():
    """The benchmarks' (B, T, D, H) become D // H heads of size H for the
    multi-head ops, in each entry's own dimension names."""
    assert registry.get("gla").size((8, 512, 64, 32)) == {"B": 8, "T": 512, "H": 2,
                                                          "K": 32, "V": 32}
    assert registry.get("ssd").size((2, 64, 16, 32)) == {"B": 2, "T": 64, "H": 1,
                                                         "N": 32, "P": 32}
    inputs = registry.get("rwkv6").make_inputs(np.random.default_rng(0), np.float32,
                                               (2, 7, 12, 4))
    assert inputs["r"].shape == (2, 7, 3, 4) and inputs["u"].shape == (3, 4)
