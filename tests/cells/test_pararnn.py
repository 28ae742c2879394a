"""ParaRNN's adapted cells: the GRU and LSTM with diagonal recurrent weights
(``init_params(..., diagonal=True)``, ``W_hh`` a vector ``(G·H,)``).

A diagonal ``W_hh`` is the full cell with ``W_hh`` made of diagonal blocks:
that is the oracle here (forward and every gradient). Newton on these cells is
a diagonal (GRU) or 2×2-block (LSTM) scan. Gradients, backends, split-resume,
NaN patterns and bad input are tests/test_contract.py's (entries
"gru_diagonal", "lstm_diagonal"); Newton's properties are tests/scan/test_newton.py's.
"""

import numpy as np
import pytest

from minirec import registry
from minirec.cells import gru, lstm
from minirec.registry import _flatten, rel_rms
from minirec.scan import newton

CELLS = {"gru": (gru, False), "lstm": (lstm, True)}


def make(name, rng, B=3, T=11, D=4, H=5):
    mod, hc = CELLS[name]
    params = mod.init_params(rng, D, H, diagonal=True)
    x = rng.standard_normal((B, T, D))
    s0 = ((rng.standard_normal((B, H)), rng.standard_normal((B, H))) if hc
          else rng.standard_normal((B, H)))
    return mod, params, x, s0


def as_full(mod, params):
    """The same cell with a full W_hh (G·H, H) of diagonal blocks diag(w_gate)."""
    w = params["W_hh"].reshape(mod.GATES, -1)
    return {**params, "W_hh": np.concatenate([np.diag(v) for v in w], axis=0)}


def diagonal_of(mod, dW_full):
    """The gradient of the diagonals from the full W_hh's gradient."""
    H = dW_full.shape[1]
    return np.concatenate([np.diag(dW_full[g * H:(g + 1) * H]) for g in range(mod.GATES)])


@pytest.mark.parametrize("name", list(CELLS))
def test_init_params_gives_the_diagonals_as_a_vector(name, rng):
    mod, params, _, _ = make(name, rng)
    assert params["W_hh"].shape == (mod.GATES * 5,)
    assert params["W_ih"].shape == (mod.GATES * 5, 4)
    assert np.all(np.abs(params["W_hh"]) <= 1 / np.sqrt(5))  # U(−1/√H, 1/√H), PyTorch's


def check_against_full(name, rng, **forward_kw):
    """Forward (≤ 1e-12) and every gradient (≤ 1e-10 rel. RMS, float64) of the
    diagonal cell run with ``forward_kw`` against the full cell with diagonal
    blocks (the NumPy definition); returns ``(params, cache, params as given)``."""
    mod, params, x, s0 = make(name, rng)
    kept = {k: v.copy() for k, v in params.items()}
    full = as_full(mod, params)
    y_ref, st_ref, c_ref = mod.forward(full, x, s0)
    y, st, cache = mod.forward(params, x, s0, **forward_kw)
    assert rel_rms(y, y_ref) <= 1e-12
    dy = rng.standard_normal(y.shape)
    ds = tuple(rng.standard_normal(s.shape) for s in st) if isinstance(st, tuple) else \
        rng.standard_normal(st.shape)
    g_ref = mod.backward(full, c_ref, dy, ds)
    g = mod.backward(params, cache, dy, ds)
    g_ref["W_hh"] = diagonal_of(mod, g_ref["W_hh"])
    assert g["W_hh"].shape == params["W_hh"].shape
    a, b = _flatten("", g), _flatten("", g_ref)
    bad = {k: rel_rms(a[k], b[k]) for k in b if not rel_rms(a[k], b[k]) <= 1e-10}
    assert not bad, f"{name} {forward_kw}: gradients differ from the full cell's: {bad}"
    return params, cache, kept


@pytest.mark.parametrize("method", ["recurrent", "newton"])
@pytest.mark.parametrize("name", list(CELLS))
def test_diagonal_cell_equals_the_full_cell_with_diagonal_blocks(name, method, rng):
    check_against_full(name, rng, method=method)


@pytest.mark.parametrize("name, structure, shape", [("gru", "diagonal", (3, 5)),
                                                    ("lstm", "block", (3, 5, 2, 2))])
def test_the_newton_system_is_diagonal_or_two_by_two_blocks(name, structure, shape, rng):
    mod, params, x, s0 = make(name, rng)
    J = mod.step_jacobian(params, x[:, 0], s0)
    assert J.shape == shape
    _, _, cache = mod.forward(params, x, s0, method="newton")
    assert cache.newton.structure == structure and cache.newton.converged


def test_lstm_blocks_are_the_per_unit_entries_of_the_full_jacobian(rng):
    """The (h_j, c_j) block of unit j equals those four entries of the full
    cell's (2H × 2H) Jacobian, and every entry coupling two units is 0."""
    mod, params, x, s0 = make("lstm", rng)
    blocks = lstm.step_jacobian(params, x[:, 0], s0)
    J = lstm.step_jacobian(as_full(mod, params), x[:, 0], s0)  # (B, 2H, 2H)
    H = 5
    for j in range(H):
        for p in range(2):
            for q in range(2):
                np.testing.assert_allclose(blocks[:, j, p, q], J[:, p * H + j, q * H + j],
                                           rtol=1e-13, atol=1e-15)
    mask = np.ones((2 * H, 2 * H), bool)
    for j in range(H):
        mask[np.ix_([j, H + j], [j, H + j])] = False
    assert np.all(J[:, mask] == 0)


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("backend", ["numba", "cuda-emulated"])
def test_recurrent_kernels_equal_the_full_cell_with_diagonal_blocks(name, backend, rng):
    """The kernel backends run the diagonal cell as H heads of one unit
    (``rnn.as_heads``): forward and every gradient equal the full cell's
    definition (diagonal blocks) in float64, the caller's params untouched."""
    params, cache, kept = check_against_full(name, rng, backend=backend)
    assert cache.kernel is not None
    assert all(np.array_equal(params[k], kept[k]) for k in kept)


@pytest.mark.parametrize("name", list(CELLS))
def test_a_diagonal_of_the_wrong_length_is_refused(name, rng):
    mod, params, x, s0 = make(name, rng)
    bad = {**params, "W_ih": params["W_ih"][:-1], "W_hh": params["W_hh"][:-1],
           "b_ih": params["b_ih"][:-1], "b_hh": params["b_hh"][:-1]}
    with pytest.raises(ValueError, match=rf"{name}: W_hh: expected shape \({mod.GATES}H,\) = "
                                         rf"\({mod.GATES * 5},\).*got \({mod.GATES * 5 - 1},\)"):
        mod.forward(bad, x, s0)


@pytest.mark.parametrize("entry", ["gru_diagonal", "lstm_diagonal"])
def test_registry_entries_list_both_methods_on_every_backend(entry):
    e = registry.get(entry)
    for b in ("numpy", "numba", "cupy", "cuda-emulated"):
        assert ("newton", b) in e.pairs and ("recurrent", b) in e.pairs


def test_newton_converges_in_a_few_iterations_on_a_long_sequence(rng):
    """The diagonal GRU at T = 2000 (PyTorch's init): a handful of iterations,
    the result equal to the definition."""
    mod, params, x, s0 = make("gru", rng, B=2, T=2000, H=8)
    y_ref, _, _ = mod.forward(params, x, s0)
    y, _, cache = mod.forward(params, x, s0, method="newton",
                              newton_options={"scan_method": "chunked"})
    assert cache.newton.iterations <= 10
    assert rel_rms(y, y_ref) <= 1e-10


def test_jacobians_match_finite_differences(rng):
    for name in CELLS:
        mod, params, x, s0 = make(name, rng)
        assert newton.check_jacobian(mod.step_forward, mod.step_jacobian, params, x[:, 0],
                                     s0) < 1e-8
