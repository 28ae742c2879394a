"""minirec.tasks: shapes, dtypes, labels checked by independent loops, determinism."""

import math

import numpy as np
import pytest

from minirec import tasks


def test_parity_labels_are_the_running_xor():
    x, y = tasks.parity(0, 4, 13)
    assert x.shape == (4, 13, 1) and x.dtype == np.float64
    assert y.shape == (4, 13) and y.dtype == np.int64
    assert set(np.unique(x)) <= {0.0, 1.0}
    for b in range(4):
        acc = 0
        for t in range(13):
            acc ^= int(x[b, t, 0])
            assert y[b, t] == acc
    assert tasks.parity(0, 2, 5, dtype=np.float32)[0].dtype == np.float32


def test_parity_bits_are_not_constant():
    x, y = tasks.parity(1, 64, 32)
    assert 0.4 < x.mean() < 0.6 and 0.4 < y.mean() < 0.6


def test_adding_one_marker_in_each_half_and_the_sum():
    T = 11
    x, y = tasks.adding(0, 6, T)
    assert x.shape == (6, T, 2) and y.shape == (6,)
    assert x.dtype == y.dtype == np.float64
    for b in range(6):
        marked = [t for t in range(T) if x[b, t, 1] == 1.0]
        assert len(marked) == 2 and sum(x[b, :, 1]) == 2.0
        assert marked[0] < T // 2 <= marked[1]
        assert y[b] == pytest.approx(x[b, marked[0], 0] + x[b, marked[1], 0], rel=1e-15)
    assert np.all((x[..., 0] >= 0) & (x[..., 0] < 1))


def test_adding_shortest_sequence_and_bad_T():
    x, y = tasks.adding(0, 3, 2)
    np.testing.assert_array_equal(x[..., 1], np.ones((3, 2)))
    np.testing.assert_allclose(y, x[..., 0].sum(axis=1), rtol=1e-15)
    with pytest.raises(ValueError, match="T >= 2"):
        tasks.adding(0, 3, 1)


def test_copy_layout():
    n, S, D = 5, 4, 3
    x, y, mask = tasks.copy(0, 3, n, S, D)
    L = S + D + S
    assert x.shape == y.shape == mask.shape == (3, L)
    assert x.dtype == y.dtype == np.int64 and mask.dtype == bool
    for b in range(3):
        data = list(x[b, :S])
        assert all(1 <= s <= n for s in data)
        assert list(x[b, S:S + D - 1]) == [0] * (D - 1)
        assert x[b, S + D - 1] == n + 1 == tasks.marker(n)
        assert list(x[b, S + D:]) == [0] * S
        assert list(y[b, S + D:]) == data and list(y[b, :S + D]) == [0] * (S + D)
        assert list(mask[b]) == [False] * (S + D) + [True] * S
    assert np.all(x < tasks.vocab_size(n)) and np.all(y < tasks.vocab_size(n))


def test_selective_copy_recalls_the_scattered_tokens_in_order():
    n, S, K = 6, 12, 4
    x, y, mask = tasks.selective_copy(0, 5, n, S, K)
    assert x.shape == y.shape == mask.shape == (5, S + K)
    assert x.dtype == y.dtype == np.int64 and mask.dtype == bool
    positions_seen = set()
    for b in range(5):
        tokens = [int(v) for v in x[b, :S] if v != tasks.BLANK]
        assert len(tokens) == K and all(1 <= v <= n for v in tokens)
        assert list(x[b, S:]) == [n + 1] * K
        assert list(y[b, S:]) == tokens and list(y[b, :S]) == [0] * S
        assert list(mask[b]) == [False] * S + [True] * K
        positions_seen.add(tuple(np.flatnonzero(x[b, :S])))
    assert len(positions_seen) > 1  # the positions are random, not fixed


def test_selective_copy_all_positions_and_bad_n_memorize():
    x, y, _ = tasks.selective_copy(0, 2, 3, 5, 5)  # every position holds a token
    assert np.all(x[:, :5] >= 1)
    np.testing.assert_array_equal(y[:, 5:], x[:, :5])
    with pytest.raises(ValueError, match="n_memorize: expected at most seq_len = 5, got 6"):
        tasks.selective_copy(0, 2, 3, 5, 6)


@pytest.mark.parametrize("make", [
    lambda rng: tasks.parity(rng, 3, 9),
    lambda rng: tasks.adding(rng, 3, 9),
    lambda rng: tasks.copy(rng, 3, 4, 5, 2),
    lambda rng: tasks.selective_copy(rng, 3, 4, 9, 3),
])
def test_same_seed_same_batch_and_generator_accepted(make):
    a, b = make(42), make(42)
    c = make(np.random.default_rng(42))
    d = make(43)
    for u, v, w in zip(a, b, c):
        np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(u, w)
    assert any(not np.array_equal(u, v) for u, v in zip(a, d))


def test_a_generator_advances_between_calls():
    rng = np.random.default_rng(0)
    x1, _ = tasks.parity(rng, 2, 50)
    x2, _ = tasks.parity(rng, 2, 50)
    assert not np.array_equal(x1, x2)


def test_chance_losses():
    assert tasks.chance_loss("parity") == pytest.approx(math.log(2))
    assert tasks.chance_loss("adding") == pytest.approx(1 / 6)
    assert tasks.chance_loss("copy", 8) == pytest.approx(math.log(8))
    assert tasks.chance_loss("selective_copy", 16) == pytest.approx(math.log(16))
    with pytest.raises(ValueError, match="n_symbols"):
        tasks.chance_loss("copy")
    with pytest.raises(ValueError, match="task: expected one of"):
        tasks.chance_loss("sorting")


def test_adding_chance_level_is_the_variance_of_the_target():
    _, y = tasks.adding(0, 20000, 10)
    assert np.mean((y - 1.0) ** 2) == pytest.approx(1 / 6, rel=0.03)


@pytest.mark.parametrize("call, match", [
    (lambda: tasks.parity(0, 0, 5), "batch: expected a positive integer"),
    (lambda: tasks.parity(0, 2, 0), "T: expected a positive integer"),
    (lambda: tasks.copy(0, 2, 0, 3, 1), "n_symbols: expected a positive integer"),
    (lambda: tasks.copy(0, 2, 3, 3, 0), "delay: expected a positive integer"),
    (lambda: tasks.selective_copy(0, 2, 3, 3, 0), "n_memorize: expected a positive integer"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
