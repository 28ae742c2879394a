"""cells.compose: stack and bidirectional wrappers around any cell — that they
equal the cells they wrap, PyTorch's layouts, None parts of state gradients,
user cells, and the wrapper-specific messages. Gradients, agreement of
backends, split-resume, dtypes and the bad-input tables are
tests/test_contract.py's (entries "lstm_stack2", "gru_bidirectional")."""

import types

import numpy as np
import pytest

from minirec import bptt, gradcheck
from minirec.cells import compose, gru, lstm, rnn


def inputs(rng, net, B=2, T=5, D=3, H=4, dtype=np.float64):
    params = net.init_params(rng, D, H, dtype=dtype)
    x = rng.standard_normal((B, T, D)).astype(dtype)
    state0 = tuple(rng.standard_normal(s.shape).astype(dtype)
                   for s in net.zero_state(params, B, dtype))
    return params, x, state0


def sub(params, prefix):
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def test_stack_of_one_equals_the_cell(rng):
    net = compose.stack([lstm])
    params, x, (h0, c0) = inputs(rng, net)
    y, state, cache = net.forward(params, x, (h0, c0))
    y_ref, (h, c), cache_ref = lstm.forward(sub(params, "l0."), x, (h0, c0))
    np.testing.assert_array_equal(y, y_ref)
    assert isinstance(state, tuple) and len(state) == 2
    np.testing.assert_array_equal(state[0], h)
    np.testing.assert_array_equal(state[1], c)
    dy = rng.standard_normal(y.shape)
    ds = (rng.standard_normal(h.shape), rng.standard_normal(c.shape))
    g = net.backward(params, cache, dy, ds)
    g_ref = lstm.backward(sub(params, "l0."), cache_ref, dy, ds)
    assert set(g) == set(params) | {"x", "state0"}
    for k in lstm.PARAM_SHAPES:
        np.testing.assert_array_equal(g["l0." + k], g_ref[k])
    np.testing.assert_array_equal(g["x"], g_ref["x"])
    for a, b in zip(g["state0"], g_ref["state0"]):
        np.testing.assert_array_equal(a, b)


def test_stack_feeds_each_layer_to_the_next(rng):
    net = compose.stack([gru, lstm, rnn])
    params, x, (h0, h1, c1, h2) = inputs(rng, net, T=6)
    y, state, _ = net.forward(params, x, (h0, h1, c1, h2))
    y0, s0, _ = gru.forward(sub(params, "l0."), x, h0)
    y1, s1, _ = lstm.forward(sub(params, "l1."), y0, (h1, c1))
    y2, s2, _ = rnn.forward(sub(params, "l2."), y1, h2)
    np.testing.assert_array_equal(y, y2)
    for a, b in zip(state, (s0, *s1, s2)):
        np.testing.assert_array_equal(a, b)


def test_bidirectional_halves_are_the_cell_forward_and_on_the_flipped_sequence(rng):
    net = compose.bidirectional(gru)
    params, x, (h_f, h_r) = inputs(rng, net, T=7)
    y, (s_f, s_r), _ = net.forward(params, x, (h_f, h_r))
    assert y.shape == (2, 7, 8)
    y_f, ref_f, _ = gru.forward(sub(params, "fwd."), x, h_f)
    y_r, ref_r, _ = gru.forward(sub(params, "rev."), x[:, ::-1], h_r)
    np.testing.assert_array_equal(y[..., :4], y_f)
    np.testing.assert_array_equal(y[..., 4:], y_r[:, ::-1])
    np.testing.assert_array_equal(s_f, ref_f)
    np.testing.assert_array_equal(s_r, ref_r)
    # the reverse half at t = 0 has read the whole sequence: it is the reverse final state
    np.testing.assert_array_equal(y[:, 0, 4:], s_r)


def test_params_layout_follows_pytorch_shapes(rng):
    net = compose.stack([compose.bidirectional(lstm)] * 2)
    params = net.init_params(rng, 3, 5)
    shapes = {k: v.shape for k, v in params.items()}
    assert shapes["l0.fwd.W_ih"] == (20, 3) and shapes["l0.rev.W_ih"] == (20, 3)
    assert shapes["l1.fwd.W_ih"] == (20, 10) and shapes["l1.rev.W_hh"] == (20, 5)
    assert len(params) == 16
    assert net.output_size(5) == 10
    assert len(net.zero_state(params, 2)) == 8  # (h, c) × 2 directions × 2 layers


@pytest.mark.parametrize("build, kw, with_state0", [
    (lambda: compose.stack([lstm, gru]), {}, True),
    (lambda: compose.stack([lstm, gru]), {}, False),
    (lambda: compose.bidirectional(rnn), {"nonlinearity": "relu"}, True),
    (lambda: compose.bidirectional(rnn), {"nonlinearity": "relu"}, False),
    (lambda: compose.stack([compose.bidirectional(lstm)] * 2), {}, True),
], ids=["stack(lstm, gru)", "stack(lstm, gru) state0=None", "bidirectional(rnn relu)",
        "bidirectional(rnn relu) state0=None", "stack(bidirectional(lstm) x2)"])
def test_gradcheck(build, kw, with_state0, rng):
    net = build()
    params, x, state0 = inputs(rng, net, B=1, T=3, D=2, H=2)  # small: every entry perturbed
    report = gradcheck.check_cell(net, params, x, state0 if with_state0 else None, **kw)
    assert report.passed, str(report)  # relative error < 1e-6, float64
    assert set(report.errors) >= set(params) | {"x"}


def test_state0_none_equals_zeros_and_none_gradient_parts_are_zeros(rng):
    net = compose.stack([compose.bidirectional(lstm), gru])
    params, x, state0 = inputs(rng, net)
    zeros = net.zero_state(params, 2)
    y0, s0, cache0 = net.forward(params, x)
    y1, s1, cache1 = net.forward(params, x, zeros)
    np.testing.assert_array_equal(y0, y1)
    ds = [rng.standard_normal(s.shape) for s in s0]
    ds_none = tuple(None if k % 2 else d for k, d in enumerate(ds))
    ds_zero = tuple(np.zeros_like(d) if k % 2 else d for k, d in enumerate(ds))
    g0 = net.backward(params, cache0, None, ds_none)
    g1 = net.backward(params, cache1, None, ds_zero)
    for k in (*params, "x"):
        np.testing.assert_array_equal(g0[k], g1[k])
    assert len(g0["state0"]) == len(zeros) == 5


def test_works_with_a_users_bptt_cell_and_a_cell_without_zero_state(rng):
    user = bptt.make_cell(gru.step_forward, gru.step_backward, gru.zero_state, name="mygru")
    plain = types.SimpleNamespace(forward=gru.forward, backward=gru.backward,
                                  init_params=gru.init_params, __name__="plain")
    net = compose.stack([user, compose.bidirectional(plain)])
    assert net.__name__ == "stack(mygru, bidirectional(plain))"
    with pytest.raises(TypeError, match="mygru has no init_params.*keys 'l0.<name>'"):
        net.init_params(rng, 3, 4)
    params = {"l0." + k: v for k, v in gru.init_params(rng, 2, 3).items()}
    params.update({f"l1.{d}.{k}": v for d in ("fwd", "rev")
                   for k, v in gru.init_params(rng, 3, 3).items()})
    x = rng.standard_normal((2, 3, 2))
    state0 = tuple(rng.standard_normal((2, 3)) for _ in range(3))
    report = gradcheck.check_cell(net, params, x, state0)
    assert report.passed, str(report)  # relative error < 1e-6, float64


def test_methods_and_backends_are_those_all_cells_share():
    fake = types.SimpleNamespace(METHODS=("recurrent", "newton"), BACKENDS=("numpy", "numba"))
    other = types.SimpleNamespace(METHODS=("newton", "recurrent"), BACKENDS=("numba",))
    net = compose.stack([fake, other])
    assert net.METHODS == ("recurrent", "newton") and net.BACKENDS == ("numba",)
    assert compose.bidirectional(lstm).METHODS == lstm.METHODS
    with pytest.raises(ValueError, match="share no METHODS"):
        compose.stack([fake, types.SimpleNamespace(METHODS=("chunked",))])


@pytest.mark.parametrize("build", [lambda: compose.stack([lstm, lstm]),
                                   lambda: compose.bidirectional(lstm)])
def test_bad_input_is_refused_with_a_clear_message(build, rng):
    net = build()
    params, x, state0 = inputs(rng, net)
    with pytest.raises(ValueError, match="method: expected one of"):
        net.forward(params, x, state0, method="chunked")
    with pytest.raises(ValueError, match="backend"):
        net.forward(params, x, state0, backend="tpu")
    with pytest.raises(ValueError, match=r"unexpected keys \['W_ih'\]"):
        net.forward({**params, "W_ih": params[next(iter(params))]}, x, state0)
    with pytest.raises(ValueError, match="expected a flat tuple of 4 state arrays, got 5"):
        net.forward(params, x, state0 + (state0[0],))
    with pytest.raises(ValueError, match=r"needs entries 2\.\.3 .* got a tuple of 3"):
        net.forward(params, x, state0[:3])
    with pytest.raises(TypeError, match="expected a flat tuple of state arrays"):
        net.forward(params, x, state0[0])
    _, _, cache = net.forward(params, x, state0)
    with pytest.raises(ValueError, match=r"dy: expected shape"):
        net.backward(params, cache, np.zeros((2, 4, 3)))
    with pytest.raises(TypeError, match=r"dstate: expected a tuple of 4 arrays .*got a tuple "
                                        r"of length 2"):
        net.backward(params, cache, None, state0[:2])


def test_inner_errors_say_which_layer(rng):
    net = compose.stack([lstm, gru])
    params, x, state0 = inputs(rng, net)
    bad = {k: v for k, v in params.items() if k != "l1.b_hh"}
    with pytest.raises(ValueError, match=r"layer 1 \(params 'l1\.\*'\): gru: params: .*"
                                         r"missing \['b_hh'\]"):
        net.forward(bad, x, state0)
    no_w = {k: v for k, v in params.items() if k != "l0.W_hh"}
    with pytest.raises(ValueError, match=r"layer 0 .*lstm: params: .*missing \['W_hh'\]"):
        net.forward(no_w, x, state0)
    bad_state = (state0[0], state0[1][:, :2], state0[2])
    with pytest.raises(ValueError, match=r"layer 0 .*\(c0\): expected shape \(B=2, H=4\)"):
        net.forward(params, x, bad_state)
    with pytest.raises(ValueError, match="at least one cell"):
        compose.stack([])


BUILDS = {"stack": lambda: compose.stack([lstm, gru]),
          "bidirectional": lambda: compose.bidirectional(rnn)}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("chunk_size", [-1, 0, 2.5, "4", True], ids=repr)
@pytest.mark.parametrize("build", BUILDS.values(), ids=BUILDS.keys())
def test_a_bad_chunk_size_is_refused(build, chunk_size, backend, rng):
    """Issue 7 #9: the wrappers passed a bad chunk_size on to cells that ignore it."""
    if backend == "numba":
        pytest.importorskip("numba")
    net = build()
    params, x, state0 = inputs(rng, net)
    with pytest.raises(ValueError, match=r"chunk_size: expected a positive integer, got "):
        net.forward(params, x, state0, chunk_size=chunk_size, backend=backend)
    net.forward(params, x, state0, chunk_size=4, backend=backend)  # passed on to the cells


def test_a_cache_of_another_wrapper_or_cell_is_refused(rng):
    """Issue 7 #8 for the wrappers: a dict, another wrapper's or a cell's cache."""
    net, other = compose.stack([lstm, lstm]), compose.bidirectional(lstm)
    params, x, state0 = inputs(rng, net)
    y, _, _ = net.forward(params, x, state0)
    _, _, other_cache = other.forward(other.init_params(rng, 3, 4), x)
    _, _, cell_cache = lstm.forward(lstm.init_params(rng, 3, 4), x)
    with pytest.raises(TypeError, match=r"cache: expected the cache returned by "
                                        r"stack\(lstm, lstm\)'s forward, got one returned by "
                                        r"bidirectional\(lstm\)'s"):
        net.backward(params, other_cache, y)
    for bad, got in (({}, "dict"), (None, "NoneType"), (cell_cache, "LSTMCache")):
        with pytest.raises(TypeError, match=rf"cache: expected .*\(ComposedCache\), got {got}"):
            net.backward(params, bad, y)


def test_params_that_do_not_match_the_cache_are_refused(rng):
    net = compose.bidirectional(gru)
    params, x, state0 = inputs(rng, net)
    y, _, cache = net.forward(params, x, state0)
    other = net.init_params(rng, 3, 5)
    with pytest.raises(ValueError, match=r"params\['fwd.W_ih'\]: expected shape \(12, 3\) "
                                         r"\(as in the forward that made this cache\), got "
                                         r"\(15, 3\)"):
        net.backward(other, cache, y)
