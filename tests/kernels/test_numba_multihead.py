"""The Numba multi-head RNN/GRU/LSTM kernels (kernels/numba/multihead.py): what the
contract test (tests/test_contract.py) does not see — both forward forms (blocked
per-head products over blocks of rows, and the row form) whatever the head-width
switch picks, each blocked product (per-step BLAS gemm, column panels, row loop),
batch blocks of unequal size, a head width that is no multiple of a SIMD width,
and heads of one unit (the ParaRNN diagonal cells)."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")
from minirec.kernels.numba import classic, multihead  # noqa: E402  (imports numba)
from tests.kernels.test_numba_classic import PRODUCTS, _agree, _force  # noqa: E402

ENTRIES = ["rnn_multihead", "gru_multihead", "lstm_multihead"]
FORMS = {"blocked": 1, "rows": 1 << 30}   # HEAD_BLOCK_MIN_DH forcing each form


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_each_forward_form_equals_the_definition(name, dtype, form, monkeypatch):
    """dh = 11 (a remainder after every SIMD width), B = 5 (blocks of unequal size),
    NH = 3: forward and every gradient agree with the float64 NumPy definition
    (relative RMS ≤ 1e-10 in float64, ≤ 1e-4 in float32) in both forms."""
    monkeypatch.setattr(multihead, "HEAD_BLOCK_MIN_DH", FORMS[form])
    assert multihead.blocked(11) == (form == "blocked")
    _agree(name, dtype, B=5, T=13, H=33, NH=3)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("name", ENTRIES)
def test_each_blocked_product_equals_the_definition(name, product, monkeypatch):
    """The blocked form with its per-head product forced to a whole gemm, the row
    loop, and column panels (SMALL_GEMM_MACS = 1536: at dh = 16, blocks of ≤ 3 rows,
    the LSTM's (3, 16) @ (16, 64) head product runs as 2 panels of 32, the GRU's
    (3, 16) @ (16, 48) as 3 of 16)."""
    monkeypatch.setattr(multihead, "HEAD_BLOCK_MIN_DH", 1)
    _force(monkeypatch, product)
    if product == "panels":
        monkeypatch.setattr(classic, "SMALL_GEMM_MACS", 1536)
        rows = classic.block_rows(5)
        assert rows <= 3
        assert classic.panel_width(rows, 16, 64) == 32
        assert classic.panel_width(rows, 16, 48) == 16
    _agree(name, np.float64, B=5, T=9, H=32, NH=2)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["gru_diagonal", "lstm_diagonal"])
def test_heads_of_one_unit(name, form, monkeypatch):
    """The ParaRNN diagonal cells run as H heads of one unit, in either form."""
    monkeypatch.setattr(multihead, "HEAD_BLOCK_MIN_DH", FORMS[form])
    _agree(name, np.float64, B=3, T=11)


def test_the_form_switch():
    """Heads of HEAD_BLOCK_MIN_DH units and wider run blocked, narrower by rows."""
    assert multihead.blocked(multihead.HEAD_BLOCK_MIN_DH)
    assert not multihead.blocked(multihead.HEAD_BLOCK_MIN_DH - 1)
    assert not multihead.blocked(1)


@pytest.mark.parametrize("min_rows", [1, 1 << 30])
def test_head_weight_grad_is_the_block_diagonal_of_the_full_product(min_rows, monkeypatch):
    """dW_hh[h] = the h-th diagonal block (per gate) of Σ dgh^T h_prev, at NH = 3,
    in both forms (gemm per head; one batched matmul)."""
    monkeypatch.setattr(multihead, "HEAD_GEMM_MIN_ROWS", min_rows)
    rng = np.random.default_rng(0)
    B, T, NH, dh, G = 2, 7, 3, 5, 4
    H = NH * dh
    dgh = rng.standard_normal((B, T, G * H))
    hp = rng.standard_normal((B, T, H))
    full = dgh.reshape(-1, G * H).T @ hp.reshape(-1, H)   # (G·H, H)
    got = multihead.head_weight_grad(dgh, hp, NH)
    assert got.shape == (NH, G * dh, dh)
    for h in range(NH):
        want = np.concatenate([full[g * H + h * dh:g * H + (h + 1) * dh,
                                    h * dh:(h + 1) * dh] for g in range(G)])
        np.testing.assert_allclose(got[h], want, rtol=1e-12, atol=1e-12)
