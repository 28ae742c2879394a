"""minirec.tasks.text: the corpus, its vocabulary and split, and truncated-BPTT batching."""

import numpy as np
import pytest

from minirec import tasks

TEXT = "the cat sat on the mat; the dog sat on the log.\n" * 3  # 144 characters


def test_pydoc_text_is_cpythons_help_and_deterministic():
    from pydoc_data.topics import topics

    text = tasks.pydoc_text()
    assert len(text) > 100_000
    assert text == tasks.pydoc_text()
    first = sorted(topics)[0]
    assert text.startswith(topics[first].strip("\n"))
    assert all(topics[k].strip("\n") in text for k in topics)


def test_vocabulary_is_the_sorted_characters_and_encode_decode_round_trip():
    c = tasks.char_corpus(TEXT)
    assert c.chars == "".join(sorted(set(TEXT)))
    assert c.vocab_size == len(set(TEXT))
    ids = c.encode(TEXT)
    assert ids.dtype == np.int64 and ids.shape == (len(TEXT),)
    assert all(c.chars[i] == ch for i, ch in zip(ids, TEXT))
    assert c.decode(ids) == TEXT
    assert c.decode(ids.reshape(3, 48).tolist()) == TEXT


def test_split_is_disjoint_contiguous_and_covers_the_text():
    c = tasks.char_corpus(TEXT, valid_fraction=0.2)
    n_valid = round(0.2 * len(TEXT))
    assert len(c.valid) == n_valid and len(c.train) == len(TEXT) - n_valid
    assert c.decode(c.train) == TEXT[:len(TEXT) - n_valid]   # the first part ...
    assert c.decode(c.valid) == TEXT[len(TEXT) - n_valid:]   # ... and the rest, no overlap
    assert np.array_equal(np.concatenate([c.train, c.valid]), c.encode(TEXT))
    assert c.train.dtype == c.valid.dtype == np.int64


def test_default_corpus_is_pydoc_text():
    c = tasks.char_corpus()
    assert c.decode(c.train[:200]) == tasks.pydoc_text()[:200]
    assert len(c.train) + len(c.valid) == len(tasks.pydoc_text())


def test_unknown_characters_and_bad_ids_are_refused():
    c = tasks.char_corpus(TEXT)
    with pytest.raises(ValueError, match=r"text: expected characters .* got 2 others: 'XZ'"):
        c.encode("the ZX")
    with pytest.raises(TypeError, match="text: expected a str"):
        c.encode(b"the")
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, "):
        c.decode([0, c.vocab_size])
    with pytest.raises(TypeError, match="ids: expected integers"):
        c.decode(np.array([0.5]))


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan")])
def test_valid_fraction_must_be_in_0_1(bad):
    with pytest.raises(ValueError, match=r"valid_fraction: expected"):
        tasks.char_corpus(TEXT, valid_fraction=bad)


def test_too_short_text_and_non_text_are_refused():
    with pytest.raises(ValueError, match="text: expected enough characters .* got 5"):
        tasks.char_corpus("abcde", valid_fraction=0.1)
    with pytest.raises(TypeError, match="text: expected a str or None, got list"):
        tasks.char_corpus(["a", "b"])


def test_batches_shapes_and_count():
    ids = np.arange(1000)
    x, y = tasks.bptt_batches(ids, 4, 10)
    L = (1000 - 1) // 4                   # 249 per stream
    assert x.shape == y.shape == (L // 10, 4, 10)
    assert x.dtype == y.dtype == np.int64


def test_each_row_is_a_contiguous_stream_and_targets_are_the_next_character():
    ids = np.arange(1000) * 7 % 1009      # distinct values, so positions can be read back
    B, T = 4, 10
    x, y = tasks.bptt_batches(ids, B, T)
    N, L = x.shape[0], (len(ids) - 1) // B
    for b in range(B):
        stream_x = x[:, b, :].reshape(-1)  # windows 0, 1, ... of row b, concatenated
        stream_y = y[:, b, :].reshape(-1)
        assert np.array_equal(stream_x, ids[b * L: b * L + N * T])
        assert np.array_equal(stream_y, ids[b * L + 1: b * L + N * T + 1])


def test_state_carry_alignment_next_window_continues_each_row():
    ids = tasks.char_corpus(TEXT * 4).train
    x, y = tasks.bptt_batches(ids, 3, 7)
    assert len(x) >= 3
    # the first input of window k+1 is the last target of window k, in every row
    assert np.array_equal(x[1:, :, 0], y[:-1, :, -1])
    # and within a window the targets are the inputs shifted by one
    assert np.array_equal(x[:, :, 1:], y[:, :, :-1])


def test_streams_are_disjoint_and_in_text_order():
    ids = np.arange(500)
    x, _ = tasks.bptt_batches(ids, 5, 8)
    rows = [set(x[:, b, :].reshape(-1)) for b in range(5)]
    for b in range(4):
        assert not rows[b] & rows[b + 1]
        assert max(rows[b]) < min(rows[b + 1])


def test_exactly_one_window_when_the_ids_just_suffice():
    x, y = tasks.bptt_batches(np.arange(2 * 5 + 1), 2, 5)
    assert x.shape == (1, 2, 5)
    assert y[-1, -1, -1] == 10
    with pytest.raises(ValueError, match=r"ids: expected at least batch·T \+ 1 = 11 ids .* got 10"):
        tasks.bptt_batches(np.arange(10), 2, 5)


def test_batching_refuses_bad_arguments():
    with pytest.raises(TypeError, match="ids: expected a 1-d integer ndarray"):
        tasks.bptt_batches(np.arange(100.0), 2, 5)
    with pytest.raises(TypeError, match="ids: expected a 1-d integer ndarray"):
        tasks.bptt_batches(np.arange(100).reshape(10, 10), 2, 5)
    with pytest.raises(ValueError, match="batch: expected a positive integer, got 0"):
        tasks.bptt_batches(np.arange(100), 0, 5)
    with pytest.raises(ValueError, match="T: expected a positive integer, got 2.5"):
        tasks.bptt_batches(np.arange(100), 2, 2.5)


def test_batching_does_not_modify_or_alias_its_input():
    ids = np.arange(200)
    before = ids.copy()
    x, _ = tasks.bptt_batches(ids, 2, 10)
    x[...] = -1
    assert np.array_equal(ids, before)
