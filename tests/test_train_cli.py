"""The character language model (minirec.lm) and the `minirec train` command: gradients
by finite differences, truncated BPTT's state carry, a training run that lowers the loss,
perplexity, sampling, and the command's options, errors and output."""

import inspect
import re
import subprocess
import sys

import numpy as np
import pytest

from minirec import cli, lm, tasks
from minirec.gradcheck import rel_error
from minirec.nn import loss as nn_loss

TEXT = ("the cat sat on the mat. the dog sat on the log. a cat and a dog met on a mat.\n"
        * 12)  # 936 characters, 15 distinct


@pytest.fixture(scope="module")
def corpus():
    return tasks.char_corpus(TEXT, valid_fraction=0.25)


def _flat(tree, prefix=""):
    """(path, array) for every leaf of a nested dict."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield prefix + k, v


def _perturbed(params, path, delta):
    out = {k: dict(v) for k, v in params.items()}
    layer, name = path.split(".")
    out[layer][name] = params[layer][name] + delta
    return out


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell", sorted(lm.CELLS))
def test_backward_matches_finite_differences_with_a_carried_state(cell, corpus, rng):
    params = lm.init(rng, corpus.vocab_size, cell=cell, hidden=5, embed=4, layers=2)
    x, y = tasks.bptt_batches(corpus.train, 3, 6)
    _, _, state = lm.loss_and_grads(params, x[0], y[0])  # a nonzero state to start from
    value, grads, _ = lm.loss_and_grads(params, x[1], y[1], state)
    assert [p for p, _ in _flat(grads)] == [p for p, _ in _flat(params)]  # no "x", no "state0"
    eps = 1e-5  # the loss is O(1): rounding limits a smaller step (worst seen ~6e-8)
    for path, g in _flat(grads):
        d = rng.standard_normal(g.shape)
        plus = lm.loss_and_grads(_perturbed(params, path, eps * d), x[1], y[1], state)[0]
        minus = lm.loss_and_grads(_perturbed(params, path, -eps * d), x[1], y[1], state)[0]
        numeric = (plus - minus) / (2 * eps)
        err = rel_error(np.sum(g * d), numeric)
        assert err < 1e-6, f"{cell} d{path}: relative error {err:.2e} (threshold 1e-6)"


@pytest.mark.parametrize("cell", sorted(lm.CELLS))
def test_windows_with_the_carried_state_equal_one_long_run(cell, corpus, rng):
    params = lm.init(rng, corpus.vocab_size, cell=cell, hidden=6, embed=3, layers=2)
    x, _ = tasks.bptt_batches(corpus.train, 2, 5)
    state, pieces = None, []
    for k in range(len(x)):
        logits, state, _ = lm.forward(params, x[k], state)
        pieces.append(logits)
    whole, final, _ = lm.forward(params, np.concatenate(list(x), axis=1))
    err = rel_error(np.concatenate(pieces, axis=1), whole)
    assert err < 1e-12, f"window by window vs one run: relative error {err:.1e}"
    for a, b in zip(np.concatenate([np.ravel(s) for s in state]),
                    np.concatenate([np.ravel(s) for s in final])):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-14)


def test_a_few_steps_lower_the_loss_on_a_fixed_seed(corpus):
    result = lm.train(corpus, cell="lstm", hidden=16, embed=8, batch=4, T=8, steps=60, lr=1e-2,
                      seed=3, snapshot_every=30, sample_length=5, progress=False)
    assert len(result.losses) == 60 and result.windows == len(tasks.bptt_batches(
        corpus.train, 4, 8)[0])
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert first > np.log(corpus.vocab_size) - 0.5          # starts near a uniform guess
    assert last < first - 1.0, (first, last)               # 60 steps gain over a nat a character
    steps = [s for s, _, _ in result.snapshots]
    ppl = [p for _, p, _ in result.snapshots]
    assert steps == [0, 30, 60]
    assert ppl[-1] < ppl[0] / 2 and result.valid_perplexity == ppl[-1]
    again = lm.train(corpus, cell="lstm", hidden=16, embed=8, batch=4, T=8, steps=60, lr=1e-2,
                     seed=3, snapshot_every=30, sample_length=5, progress=False)
    assert again.losses == result.losses and again.snapshots == result.snapshots


def test_mingru_trains_too(corpus):
    result = lm.train(corpus, cell="mingru", layers=2, hidden=16, embed=8, batch=4, T=8,
                      steps=60, seed=0, sample_length=0, dtype=np.float64, progress=False)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.5
    assert result.params["cell1"]["W_z"].dtype == np.float64
    assert result.snapshots[-1][2] == ""


def test_training_starts_every_stream_anew_after_a_pass(corpus, monkeypatch):
    seen = []
    real = lm.loss_and_grads

    def spy(params, x, y, state0=None, **kwargs):
        seen.append(state0 is None)
        return real(params, x, y, state0, **kwargs)

    monkeypatch.setattr(lm, "loss_and_grads", spy)
    n = len(tasks.bptt_batches(corpus.train, 4, 8)[0])
    lm.train(corpus, hidden=4, embed=2, batch=4, T=8, steps=2 * n + 1, sample_length=0,
             progress=False)
    assert [i for i, fresh in enumerate(seen) if fresh] == [0, n, 2 * n]


def test_a_model_that_knows_nothing_has_perplexity_V(corpus, rng):
    params = lm.init(rng, corpus.vocab_size, hidden=4, embed=3)
    params["head"] = {k: np.zeros_like(v) for k, v in params["head"].items()}
    ppl = lm.perplexity(params, corpus.valid, batch=2, T=10)
    assert ppl == pytest.approx(corpus.vocab_size, rel=1e-12)


def test_perplexity_is_exp_of_the_mean_loss_and_carrying_the_state_matters(corpus, rng):
    params = lm.init(rng, corpus.vocab_size, hidden=8, embed=4)
    x, y = tasks.bptt_batches(corpus.valid, 2, 10)
    state, losses = None, []
    for k in range(len(x)):
        logits, state, _ = lm.forward(params, x[k], state)
        losses.append(nn_loss.softmax_cross_entropy(logits, y[k])[0])
    assert lm.perplexity(params, corpus.valid, batch=2, T=10) == pytest.approx(
        np.exp(np.mean(losses)), rel=1e-12)
    assert lm.perplexity(params, corpus.valid, batch=2, T=10, carry_state=False) != \
        pytest.approx(np.exp(np.mean(losses)), rel=1e-6)


def test_next_char_probs_is_a_stable_softmax_of_logits_over_temperature(rng):
    z = rng.standard_normal((3, 7))
    p1 = lm.next_char_probs(z)
    assert rel_error(p1, np.exp(nn_loss.log_softmax(z))) < 1e-15
    assert rel_error(lm.next_char_probs(z, 0.5), np.exp(nn_loss.log_softmax(2 * z))) < 1e-15
    assert np.allclose(lm.next_char_probs(z, 2.0).sum(-1), 1.0, rtol=0, atol=1e-15)
    cold = lm.next_char_probs(z, 1e-3)
    assert np.array_equal(cold.argmax(-1), z.argmax(-1)) and cold.max() == pytest.approx(1.0)
    big = lm.next_char_probs(np.array([1000.0, 999.0, -1000.0]))
    assert np.all(np.isfinite(big)) and big[0] == pytest.approx(1 / (1 + np.exp(-1)))
    with pytest.raises(ValueError, match="temperature: expected a positive finite number"):
        lm.next_char_probs(z, 0.0)


def test_sample_is_reproducible_and_in_the_vocabulary(corpus, rng):
    params = lm.init(rng, corpus.vocab_size, hidden=8, embed=4)
    a = lm.sample(params, corpus, 40, prime="the ", temperature=0.7, rng=5)
    b = lm.sample(params, corpus, 40, prime="the ", temperature=0.7, rng=5)
    assert a == b and len(a) == 40 and set(a) <= set(corpus.chars)
    assert lm.sample(params, corpus, 0) == ""
    with pytest.raises(ValueError, match=r"prime: expected characters .* got 'Z'"):
        lm.sample(params, corpus, 5, prime="Zoo")
    with pytest.raises(ValueError, match="prime: expected a non-empty str"):
        lm.sample(params, corpus, 5, prime="")
    with pytest.raises(ValueError, match="length: expected an integer ≥ 0, got -1"):
        lm.sample(params, corpus, -1)


def test_low_temperature_sampling_is_greedy(corpus, rng):
    params = lm.init(rng, corpus.vocab_size, hidden=8, embed=4)
    greedy, state = [], None
    logits, state, _ = lm.forward(params, corpus.encode("the")[None], state)
    for _ in range(15):
        greedy.append(int(logits[0, -1].argmax()))
        logits, state, _ = lm.forward(params, np.array([[greedy[-1]]]), state)
    assert lm.sample(params, corpus, 15, prime="the", temperature=1e-4, rng=0) == \
        corpus.decode(greedy)


def test_bad_model_arguments_are_refused(corpus, rng):
    with pytest.raises(ValueError, match=r"cell: expected one of \('lstm', 'mingru'\), got 'gru'"):
        lm.init(rng, 10, cell="gru")
    with pytest.raises(ValueError, match="hidden: expected a positive integer, got 0"):
        lm.init(rng, 10, hidden=0)
    with pytest.raises(ValueError, match="params: expected a language model's parameters"):
        lm.forward({"W": np.zeros(3)}, np.zeros((1, 2), dtype=np.int64))
    params = lm.init(rng, corpus.vocab_size, hidden=4, embed=3, layers=2)
    with pytest.raises(ValueError, match="state0: expected a tuple of 2 layer states"):
        lm.forward(params, np.zeros((1, 2), dtype=np.int64), lm.zero_state(params, 1)[:1])
    with pytest.raises(ValueError, match=r"idx: expected values in \[0, "):
        lm.forward(params, np.full((1, 2), corpus.vocab_size))
    n = len(corpus.valid)  # 234, shorter than the training part
    with pytest.raises(ValueError, match=rf"batch, T: expected batch·T \+ 1 ≤ {n} .* got "
                                         r"batch=30, T=8"):
        lm.train(corpus, batch=30, T=8, steps=1, progress=False)
    with pytest.raises(ValueError, match=r"prime: expected characters"):
        lm.train(corpus, batch=2, T=4, steps=1, prime="€", progress=False)
    with pytest.raises(ValueError, match="sample_length: expected an integer ≥ 0, got -5"):
        lm.train(corpus, batch=2, T=4, steps=1, sample_length=-5, progress=False)
    with pytest.raises(ValueError,
                       match=r"method: expected one of \('recurrent', 'newton'\), got 'log'"):
        lm.train(corpus, batch=2, T=4, steps=1, method="log", progress=False)


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------

def _train_parser():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_command_defaults_are_the_library_defaults():
    defaults = {k: v.default for k, v in inspect.signature(lm.train).parameters.items()}
    ns = _train_parser().parse_args([])
    for opt in ("cell", "layers", "hidden", "embed", "batch", "T", "steps", "lr", "clip",
                "seed", "temperature", "sample_length", "prime"):
        assert getattr(ns, opt) == defaults[opt], opt
    assert np.dtype(ns.dtype) == np.dtype(defaults["dtype"])
    assert ns.valid_fraction == inspect.signature(tasks.char_corpus).parameters[
        "valid_fraction"].default


def test_help_states_every_default(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for action in _train_parser()._actions:
        if action.dest != "help":
            assert "(default:" in " ".join(action.help.split()), action.dest
    assert "(default: 500)" in out and "(default: lstm)" in out and "(default: 0.8)" in out


@pytest.mark.parametrize("argv, option, got", [
    (["--steps", "0"], "--steps", "'0'"),
    (["--hidden", "-3"], "--hidden", "'-3'"),
    (["--batch", "two"], "--batch", "'two'"),
    (["--lr", "0"], "--lr", "'0'"),
    (["--temperature", "nan"], "--temperature", "'nan'"),
    (["--valid-fraction", "1.5"], "--valid-fraction", "'1.5'"),
    (["--sample-length", "-1"], "--sample-length", "'-1'"),
    (["--text", "/no/such/file.txt"], "--text", "'/no/such/file.txt'"),
    (["--cell", "gru"], "--cell", "'gru'"),
    (["--dtype", "float16"], "--dtype", "'float16'"),
])
def test_bad_options_exit_2_saying_expected_and_got(argv, option, got, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and got in err, err
    assert "expected" in err or "invalid choice" in err, err


def _write(tmp_path, text):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_options_the_corpus_cannot_satisfy_exit_2(tmp_path, capsys):
    path = _write(tmp_path, TEXT)
    assert cli.main(["train", "--text", path, "--batch", "64", "--T", "8"]) == 2
    assert re.search(r"minirec train: batch, T: expected batch·T \+ 1 ≤ \d+ .* got batch=64",
                     capsys.readouterr().err)
    assert cli.main(["train", "--text", path, "--batch", "2", "--T", "4", "--steps", "1",
                     "--prime", "Q"]) == 2
    assert "prime: expected characters" in capsys.readouterr().err
    assert cli.main(["train", "--text", _write(tmp_path, "abc")]) == 2
    assert "text: expected enough characters" in capsys.readouterr().err


def test_a_tiny_run_prints_perplexity_and_a_sample(tmp_path, capsys):
    path = _write(tmp_path, TEXT)
    assert cli.main(["train", "--text", path, "--steps", "30", "--hidden", "12", "--embed", "6",
                     "--batch", "4", "--T", "8", "--sample-length", "25", "--prime", "the ",
                     "--seed", "1"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"corpus: {path}, {len(TEXT)} characters")
    assert "1 × lstm (hidden 12)" in lines[1]
    m = re.search(r"training loss ([\d.]+) → ([\d.]+) nats", captured.out)
    assert m and float(m.group(2)) < float(m.group(1))
    m = re.search(r"held-out perplexity: ([\d.]+)", captured.out)
    assert m and 1 < float(m.group(1)) < 22
    head, sample = captured.out.split("sample (temperature 0.8, after 'the '):\n", 1)
    assert "held-out perplexity" in head
    sample = sample[:-1]  # print adds one newline
    assert len(sample) == 25 and set(sample) <= set(TEXT)
    assert "lstm language model" in captured.err  # the progress bar


def test_a_tiny_run_on_the_default_corpus(capsys):
    assert cli.main(["train", "--cell", "mingru", "--layers", "2", "--steps", "2", "--hidden",
                     "8", "--batch", "16", "--T", "32", "--sample-length", "10",
                     "--dtype", "float64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("corpus: CPython's help texts (pydoc_data.topics)")
    assert "2 × mingru (hidden 8)" in out and "held-out perplexity" in out


def test_the_installed_command_rejects_a_bad_option():
    proc = subprocess.run([sys.executable, "-m", "minirec.cli", "train", "--T", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "argument --T: expected a positive integer, got '0'" in proc.stderr
