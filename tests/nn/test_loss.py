"""nn.loss: cross-entropy against a direct log-softmax, masks, gradients, mse."""

import math
import types

import numpy as np
import pytest

from minirec import gradcheck
from minirec.nn import loss


def direct_cross_entropy(logits, targets, mask=None):
    """-mean log softmax(z)[y] over unmasked positions, written with Python loops."""
    flat = logits.reshape(-1, logits.shape[-1])
    ys = targets.reshape(-1)
    keep = np.ones(ys.shape, bool) if mask is None else mask.reshape(-1)
    total, count = 0.0, 0
    for z, y, k in zip(flat, ys, keep):
        if not k:
            continue
        log_norm = math.log(sum(math.exp(v) for v in z))
        total += -(z[y] - log_norm)
        count += 1
    return total / count


def ce_op(targets, mask=None):
    def fwd(logits):
        value, dlogits = loss.softmax_cross_entropy(logits, targets, mask)
        return np.array([value]), (), dlogits

    def bwd(dlogits, d_out, _):
        return {"logits": d_out[0] * dlogits}
    return types.SimpleNamespace(forward=fwd, backward=bwd)


def test_cross_entropy_equals_direct_log_softmax(rng):
    logits = rng.standard_normal((3, 4, 5)) * 2
    targets = rng.integers(0, 5, (3, 4))
    value, _ = loss.softmax_cross_entropy(logits, targets)
    assert isinstance(value, float)
    assert value == pytest.approx(direct_cross_entropy(logits, targets), rel=1e-12)


def test_cross_entropy_golden_uniform_logits():
    """Equal logits over C classes: p = 1/C, loss = log C, dlogits = (1/C − onehot)/N."""
    value, d = loss.softmax_cross_entropy(np.zeros((2, 4)), np.array([1, 3]))
    assert value == pytest.approx(math.log(4), rel=1e-14)
    np.testing.assert_allclose(d, [[0.125, -0.375, 0.125, 0.125],
                                   [0.125, 0.125, 0.125, -0.375]], rtol=1e-14)


def test_mask_averages_only_the_kept_positions(rng):
    logits = rng.standard_normal((2, 6, 3))
    targets = rng.integers(0, 3, (2, 6))
    mask = rng.random((2, 6)) < 0.5
    mask[0, 0] = True
    value, d = loss.softmax_cross_entropy(logits, targets, mask)
    assert value == pytest.approx(direct_cross_entropy(logits, targets, mask), rel=1e-12)
    assert np.all(d[~mask] == 0)
    # changing a masked-out logit changes nothing
    changed = logits.copy()
    changed[~mask] += 100.0
    assert loss.softmax_cross_entropy(changed, targets, mask)[0] == pytest.approx(value)


def test_all_false_mask_gives_zero_loss_and_gradient():
    value, d = loss.softmax_cross_entropy(np.ones((2, 3)), np.array([0, 1]),
                                          np.zeros(2, bool))
    assert value == 0.0 and not np.any(d)


def test_large_logits_do_not_overflow():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    value, d = loss.softmax_cross_entropy(logits, np.array([1]))
    assert value == pytest.approx(1000.0, rel=1e-12)
    assert np.all(np.isfinite(d))


@pytest.mark.parametrize("masked", [False, True])
def test_cross_entropy_gradcheck(masked, rng):
    logits = rng.standard_normal((2, 3, 4))
    targets = rng.integers(0, 4, (2, 3))
    mask = np.array([[True, False, True], [False, True, True]]) if masked else None
    report = gradcheck.check_op(ce_op(targets, mask), {"logits": logits})
    assert report.passed, str(report)  # relative error < 1e-6


def test_float32_logits_give_float32_gradient(rng):
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    value, d = loss.softmax_cross_entropy(logits, np.array([0, 1, 2, 0]))
    assert d.dtype == np.float32
    ref, _ = loss.softmax_cross_entropy(logits.astype(np.float64), np.array([0, 1, 2, 0]))
    assert value == pytest.approx(ref, rel=1e-5)


def test_cross_entropy_bad_input():
    with pytest.raises(ValueError, match=r"targets: expected values in \[0, 3\), got min 0, max 3"):
        loss.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"targets: expected shape \(N0=2\)"):
        loss.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(TypeError, match="targets: expected an integer dtype"):
        loss.softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(TypeError, match="mask: expected a bool ndarray"):
        loss.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), np.ones(2))
    with pytest.raises(ValueError, match=r"mask: expected shape \(N0=2\), got \(3,\)"):
        loss.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), np.ones(3, bool))


def test_mse_value_and_gradient(rng):
    pred = np.array([1.0, 2.0, 4.0])
    target = np.array([0.0, 2.0, 1.0])
    value, d = loss.mse(pred, target)
    assert value == pytest.approx((1 + 0 + 9) / 3, rel=1e-14)
    np.testing.assert_allclose(d, [2 / 3, 0.0, 2.0], rtol=1e-14)

    def fwd(pred):
        v, dp = loss.mse(pred, target)
        return np.array([v]), (), dp
    op = types.SimpleNamespace(forward=fwd, backward=lambda dp, d_out, _: {"pred": d_out[0] * dp})
    report = gradcheck.check_op(op, {"pred": rng.standard_normal(3)})
    assert report.passed, str(report)  # relative error < 1e-6


def test_mse_bad_shape():
    with pytest.raises(ValueError, match=r"target: expected shape \(3,\)"):
        loss.mse(np.zeros(3), np.zeros(4))
