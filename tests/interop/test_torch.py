"""minirec.interop.torch: PyTorch's RNN/LSTM/GRU weights in and out of minirec.

Without PyTorch: the key mapping both ways on state dicts of NumPy arrays, the
state conversions, the error messages, and that only ``to_torch`` needs torch
(a clear ImportError, raised when it is called, not on import).

With PyTorch (marked ``oracle``, skipped without it): parameter round trips
are exact, and minirec equals ``torch.nn.RNN/LSTM/GRU`` in float64 (outputs,
final states and EVERY gradient: x, the initial state(s), every parameter) to
≤ 1e-10 relative RMS (DESIGN §6), for 1 and 2 layers, one and two directions,
weights going from torch to minirec and from minirec to torch.
"""

import doctest
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minirec.cells import compose, gru, lstm, rnn
from minirec.interop import torch as interop
from minirec.nn import param_grads
from tests.conftest import assert_close

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-10  # relative RMS, float64
B, T, D, H = 3, 7, 5, 4  # D ≠ H ≠ 2H, so that a transposed or misplaced weight cannot pass
GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
CELLS = {"RNN": rnn, "LSTM": lstm, "GRU": gru}
MODES = [("rnn_tanh", "RNN", {"nonlinearity": "tanh"}),
         ("rnn_relu", "RNN", {"nonlinearity": "relu"}),
         ("lstm", "LSTM", {}),
         ("gru", "GRU", {})]
LAYOUTS = [(1, False), (2, False), (1, True), (2, True)]
LAYOUT_IDS = ["1layer", "2layers", "1layer_bidirectional", "2layers_bidirectional"]


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def numpy_state_dict(rng, mode, num_layers, bidirectional, dtype=np.float64):
    """A state dict with PyTorch's keys, order and shapes, of NumPy arrays."""
    G, sd = GATES[mode], {}
    for k in range(num_layers):
        for suffix in ("", "_reverse") if bidirectional else ("",):
            d_in = D if k == 0 else H * (2 if bidirectional else 1)
            shapes = {"weight_ih": (G * H, d_in), "weight_hh": (G * H, H),
                      "bias_ih": (G * H,), "bias_hh": (G * H,)}
            for name, shape in shapes.items():
                sd[f"{name}_l{k}{suffix}"] = rng.standard_normal(shape).astype(dtype)
    return sd


def minirec_cell(mode, num_layers, bidirectional):
    """The composition that DESIGN §4 / compose's docstring name for the torch module."""
    unit = compose.bidirectional(CELLS[mode]) if bidirectional else CELLS[mode]
    return compose.stack([unit] * num_layers) if num_layers > 1 else unit


# ---------------------------------------------------------------------------
# without PyTorch
# ---------------------------------------------------------------------------

def test_importing_the_module_does_not_import_torch():
    code = ("import sys; import minirec.interop, minirec.interop.torch; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


def test_without_torch_only_to_torch_raises_a_clear_import_error():
    """A fresh interpreter where `import torch` fails: the module imports, the NumPy
    functions work, to_torch says what to install."""
    code = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
import numpy as np
from minirec.cells import lstm
from minirec.interop.torch import from_torch, to_state_dict, to_torch
params = lstm.init_params(np.random.default_rng(0), 5, 4)
sd = to_state_dict(params)
assert list(sd) == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
assert from_torch(sd).cell is lstm
try:
    to_torch(params)
except ImportError as e:
    print(e)
else:
    raise SystemExit("to_torch did not raise")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "to_torch needs PyTorch" in out.stdout
    assert "pip install torch" in out.stdout and "to_state_dict" in out.stdout


def test_to_torch_import_error_in_process(monkeypatch, rng):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"to_torch needs PyTorch.*pip install torch"):
        interop.to_torch(gru.init_params(rng, D, H))


@pytest.mark.parametrize("num_layers, bidirectional", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("mode", ["RNN", "LSTM", "GRU"])
def test_state_dict_round_trip_gives_the_cell_and_its_own_keys(mode, num_layers, bidirectional,
                                                              rng):
    sd = numpy_state_dict(rng, mode, num_layers, bidirectional)
    cell, params, options = interop.from_torch(sd)
    if num_layers == 1 and not bidirectional:
        assert cell is CELLS[mode]
    else:
        assert repr(cell) == repr(minirec_cell(mode, num_layers, bidirectional))
    # the params are exactly what the returned cell's own init_params makes: keys,
    # order, shapes
    own = cell.init_params(rng, D, H)
    assert list(params) == list(own)
    assert all(params[k].shape == own[k].shape for k in own)
    assert options == ({"nonlinearity": "tanh"} if mode == "RNN" else {})
    back = interop.to_state_dict(params)
    assert list(back) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
        assert not np.shares_memory(back[k], sd[k])
    assert not any(np.shares_memory(params[k], v) for k in params for v in sd.values())


def test_keys_map_as_documented(rng):
    sd = numpy_state_dict(rng, "LSTM", 2, True)
    net, params, _ = interop.from_torch(sd)
    assert repr(net) == "stack(bidirectional(lstm), bidirectional(lstm))"
    np.testing.assert_array_equal(params["l1.rev.W_hh"], sd["weight_hh_l1_reverse"])
    np.testing.assert_array_equal(params["l0.fwd.b_ih"], sd["bias_ih_l0"])
    np.testing.assert_array_equal(params["l1.fwd.W_ih"], sd["weight_ih_l1"])

    _, params, _ = interop.from_torch(numpy_state_dict(rng, "GRU", 1, True))
    assert list(params) == [f"{d}.{n}" for d in ("fwd", "rev")
                            for n in ("W_ih", "W_hh", "b_ih", "b_hh")]
    _, params, _ = interop.from_torch(numpy_state_dict(rng, "RNN", 1, False))
    assert list(params) == ["W_ih", "W_hh", "b_ih", "b_hh"]


def test_a_stack_of_one_layer_maps_to_layer_zero(rng):
    """compose.stack([lstm]) (keys "l0.*") is torch's one-layer LSTM too."""
    params = compose.stack([lstm]).init_params(rng, D, H)
    sd = interop.to_state_dict(params)
    assert list(sd) == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    np.testing.assert_array_equal(sd["weight_hh_l0"], params["l0.W_hh"])
    h0, c0 = rng.standard_normal((2, 1, B, H))
    state = interop.state_from_torch((h0, c0), params)
    assert len(state) == 2  # a composition's flat tuple (h, c)
    h, c = interop.state_to_torch(state, params)
    np.testing.assert_array_equal(h, h0)
    np.testing.assert_array_equal(c, c0)


def test_prefix_reads_one_module_out_of_a_model_state_dict(rng):
    inner = numpy_state_dict(rng, "GRU", 2, False)
    model = {"embed.weight": rng.standard_normal((10, D)),
             **{f"encoder.rnn.{k}": v for k, v in inner.items()},
             "head.bias": rng.standard_normal(3)}
    _, params, _ = interop.from_torch(model, prefix="encoder.rnn.")
    np.testing.assert_array_equal(params["l1.W_hh"], inner["weight_hh_l1"])
    with pytest.raises(ValueError, match=r"unexpected keys \['embed.weight'"):
        interop.from_torch(model)


@pytest.mark.parametrize("mode", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("num_layers, bidirectional", LAYOUTS, ids=LAYOUT_IDS)
def test_states_convert_both_ways(mode, num_layers, bidirectional, rng):
    sd = numpy_state_dict(rng, mode, num_layers, bidirectional)
    cell, params, options = interop.from_torch(sd)
    n = num_layers * (2 if bidirectional else 1)
    h0 = rng.standard_normal((n, B, H))
    c0 = rng.standard_normal((n, B, H))
    hx = (h0, c0) if mode == "LSTM" else h0
    state0 = interop.state_from_torch(hx, params)
    # the converted state is what the cell takes (its forward accepts it) …
    x = rng.standard_normal((B, T, D))
    _, state, _ = cell.forward(params, x, state0, **options)
    # … and converts back unchanged
    back = interop.state_to_torch(state0, params)
    for a, b in zip(back if mode == "LSTM" else (back,), hx if mode == "LSTM" else (hx,)):
        np.testing.assert_array_equal(a, b)
    out = interop.state_to_torch(state, params)
    assert (out[0] if mode == "LSTM" else out).shape == (n, B, H)
    assert interop.state_from_torch(None, params) is None
    assert interop.state_to_torch(None, params) is None


def test_state_conversion_errors_name_what_was_expected(rng):
    params = compose.stack([gru, gru]).init_params(rng, D, H)
    with pytest.raises(ValueError, match=r"h_0: expected shape \(L·dirs=2, B, H=4\), got"):
        interop.state_from_torch(rng.standard_normal((3, B, H)), params)
    with pytest.raises(TypeError, match=r"hx: expected one array h_0 .*GRU has no c_0\), "
                                        r"got a tuple"):
        interop.state_from_torch((rng.standard_normal((2, B, H)),), params)
    with pytest.raises(TypeError, match=r"state: expected a tuple of 2 arrays .*got ndarray"):
        interop.state_to_torch(rng.standard_normal((B, H)), params)
    lstm_params = lstm.init_params(rng, D, H)
    with pytest.raises(TypeError, match=r"hx: expected the tuple \(h_0, c_0\)"):
        interop.state_from_torch(rng.standard_normal((1, B, H)), lstm_params)


def test_to_state_dict_maps_parameter_gradients(rng):
    """Gradients have the params' keys, so they map to the names of torch's .grad."""
    net = compose.stack([compose.bidirectional(rnn)] * 2)
    params = net.init_params(rng, D, H)
    x = rng.standard_normal((B, T, D))
    y, _, cache = net.forward(params, x)
    grads = net.backward(params, cache, rng.standard_normal(y.shape))
    sd = interop.to_state_dict(param_grads(grads, params))
    np.testing.assert_array_equal(sd["weight_ih_l1_reverse"], grads["l1.rev.W_ih"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(dtype, rng):
    sd = numpy_state_dict(rng, "LSTM", 1, False, dtype=dtype)
    _, params, _ = interop.from_torch(sd)
    assert {p.dtype for p in params.values()} == {np.dtype(dtype)}
    assert {a.dtype for a in interop.to_state_dict(params).values()} == {np.dtype(dtype)}


# errors: every message names the argument and says expected … got …

def test_unknown_minirec_keys_are_refused(rng):
    params = {**gru.init_params(rng, D, H), "W_hr": np.zeros((H, H))}
    with pytest.raises(ValueError, match=r"to_state_dict: params: expected the keys W_ih.*"
                                         r"got unexpected keys \['W_hr'\]"):
        interop.to_state_dict(params)
    with pytest.raises(ValueError, match="got an empty dict"):
        interop.to_state_dict({})
    with pytest.raises(TypeError, match="params: expected a dict of arrays, got list"):
        interop.to_state_dict([1, 2])


def test_mixed_prefixes_are_refused(rng):
    params = {**gru.init_params(rng, D, H),
              **{f"l1.{k}": v for k, v in gru.init_params(rng, H, H).items()}}
    with pytest.raises(ValueError, match=r"expected a layer prefix 'l<k>.' on every key or on "
                                         r"none, got keys"):
        interop.to_state_dict(params)
    params = {**gru.init_params(rng, D, H),
              **{f"rev.{k}": v for k, v in gru.init_params(rng, D, H).items()}}
    with pytest.raises(ValueError, match="expected a direction prefix"):
        interop.to_state_dict(params)


def test_missing_weights_and_layer_gaps_are_refused(rng):
    params = compose.bidirectional(lstm).init_params(rng, D, H)
    del params["rev.b_hh"]
    with pytest.raises(ValueError, match=r"expected the four weights .* got no "
                                         r"\[\"to_state_dict: params\['rev.b_hh'\]\"\]"):
        interop.to_state_dict(params)
    sd = numpy_state_dict(rng, "GRU", 3, False)
    sd = {k: v for k, v in sd.items() if "_l1" not in k}
    with pytest.raises(ValueError, match=r"expected layers 0 … 2 without gaps, got layers "
                                         r"\[0, 2\]"):
        interop.from_torch(sd)


def test_shapes_that_do_not_fit_are_refused(rng):
    sd = numpy_state_dict(rng, "LSTM", 2, True)
    sd["weight_ih_l1"] = sd["weight_ih_l1"][:, :H]  # reads H features, not 2H
    with pytest.raises(ValueError, match=r"state_dict\['weight_ih_l1'\]: expected shape "
                                         r"\(4H=16, 2H=8\), got \(16, 4\)"):
        interop.from_torch(sd)
    params = gru.init_params(rng, D, H)
    params["W_hh"] = np.zeros((2 * H, H))  # G = 2: no such cell
    with pytest.raises(ValueError, match=r"W_hh'\]: expected shape \(G·H, H\) with G = 1 "
                                         r"\(RNN\), 4 \(LSTM\) or 3 \(GRU\), got \(8, 4\)"):
        interop.to_state_dict(params)
    params = gru.init_params(rng, D, H)
    params["b_ih"] = np.zeros(H)
    with pytest.raises(ValueError, match=r"b_ih'\]: expected shape \(3H=12\), got \(4,\)"):
        interop.to_state_dict(params)


def test_bad_dtypes_are_refused(rng):
    params = rnn.init_params(rng, D, H)
    with pytest.raises(TypeError, match=r"mixed precisions"):
        interop.to_state_dict({**params, "b_hh": params["b_hh"].astype(np.float32)})
    with pytest.raises(TypeError, match=r"params\['W_ih'\]: expected dtype in"):
        interop.to_state_dict({**params, "W_ih": np.zeros((H, D), dtype=np.int64)})
    sd = numpy_state_dict(rng, "RNN", 1, False)
    with pytest.raises(TypeError, match=r"state_dict\['bias_hh_l0'\]: expected dtype in"):
        interop.from_torch({**sd, "bias_hh_l0": sd["bias_hh_l0"].astype(np.complex128)})


def test_unsupported_state_dicts_say_what_is_unsupported(rng):
    sd = numpy_state_dict(rng, "LSTM", 1, False)
    with pytest.raises(ValueError, match=r"proj_size > 0 is not supported: expected an LSTM "
                                         r"without projection .*got projection weights "
                                         r"\['weight_hr_l0'\]"):
        interop.from_torch({**sd, "weight_hr_l0": np.zeros((2, H))})
    weights_only = {k: v for k, v in sd.items() if k.startswith("weight")}
    with pytest.raises(ValueError, match=r"bias=False is not supported: expected bias_ih_l<k>"):
        interop.from_torch(weights_only)
    with pytest.raises(TypeError, match=r"from_torch: expected a torch.nn.RNN, LSTM or GRU "
                                        r"module or a state dict .*got list"):
        interop.from_torch([sd])


def test_nonlinearity_is_an_rnn_option_only(rng):
    _, _, options = interop.from_torch(numpy_state_dict(rng, "RNN", 1, False),
                                       nonlinearity="relu")
    assert options == {"nonlinearity": "relu"}
    with pytest.raises(ValueError, match=r"nonlinearity: expected one of \('tanh', 'relu'\), "
                                         r"got 'gelu'"):
        interop.from_torch(numpy_state_dict(rng, "RNN", 1, False), nonlinearity="gelu")
    with pytest.raises(ValueError, match=r"nonlinearity: expected None \(only torch.nn.RNN has "
                                         r"one; these are GRU weights\), got 'tanh'"):
        interop.from_torch(numpy_state_dict(rng, "GRU", 1, False), nonlinearity="tanh")


# ---------------------------------------------------------------------------
# with PyTorch: the oracle
# ---------------------------------------------------------------------------

def torch_module(torch, mode, options, num_layers, bidirectional, seed=0, **kw):
    """A module with PyTorch's own initialisation, float64, batch-first."""
    torch.manual_seed(seed)
    return getattr(torch.nn, mode)(D, H, num_layers=num_layers, bidirectional=bidirectional,
                                   batch_first=kw.pop("batch_first", True),
                                   dtype=kw.pop("dtype", torch.float64), **options, **kw)


@pytest.mark.oracle
@pytest.mark.parametrize("num_layers, bidirectional", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("mode, options", [m[1:] for m in MODES], ids=[m[0] for m in MODES])
def test_round_trips_are_exact(torch, mode, options, num_layers, bidirectional, rng):
    mod = torch_module(torch, mode, options, num_layers, bidirectional)
    cell, params, opts = interop.from_torch(mod)
    assert opts == options
    back = interop.to_torch(params, **opts)
    assert type(back) is type(mod) and back.batch_first
    assert back.weight_hh_l0.dtype == torch.float64
    assert (back.num_layers, back.bidirectional, back.input_size, back.hidden_size) == \
        (num_layers, bidirectional, D, H)
    if mode == "RNN":
        assert back.nonlinearity == options["nonlinearity"]
    ref, got = mod.state_dict(), back.state_dict()
    assert list(got) == list(ref)
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    # and minirec → torch → minirec
    again = interop.from_torch(back)
    assert list(again.params) == list(params)
    for k in params:
        np.testing.assert_array_equal(again.params[k], params[k])
    # copies: training one side leaves the other alone
    params[next(iter(params))] += 1.0  # W_ih, l0.W_ih, fwd.W_ih or l0.fwd.W_ih
    assert torch.equal(mod.weight_ih_l0, back.weight_ih_l0)
    assert not np.array_equal(params[next(iter(params))], back.weight_ih_l0.detach().numpy())


@pytest.mark.oracle
@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
@pytest.mark.parametrize("num_layers, bidirectional", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("mode, options", [m[1:] for m in MODES], ids=[m[0] for m in MODES])
def test_matches_torch_forward_and_every_gradient(torch, mode, options, num_layers,
                                                 bidirectional, direction, rng):
    """torch-initialised weights read into minirec, and minirec-initialised weights
    written into a torch module: y, the final states, dx, the initial states'
    gradients and every parameter's gradient agree in float64."""
    if direction == "from_torch":
        mod = torch_module(torch, mode, options, num_layers, bidirectional)
        net, params, opts = interop.from_torch(mod)
    else:
        net = minirec_cell(mode, num_layers, bidirectional)
        params, opts = net.init_params(rng, D, H), dict(options)
        mod = interop.to_torch(params, **opts)
    is_lstm = mode == "LSTM"
    n = num_layers * (2 if bidirectional else 1)
    x = rng.standard_normal((B, T, D))
    h0, c0 = rng.standard_normal((2, n, B, H))
    dy = rng.standard_normal((B, T, H * (2 if bidirectional else 1)))
    dh, dc = rng.standard_normal((2, n, B, H))
    hx, dhx = ((h0, c0), (dh, dc)) if is_lstm else (h0, dh)

    # minirec
    y, state, cache = net.forward(params, x, interop.state_from_torch(hx, params), **opts)
    grads = net.backward(params, cache, dy, interop.state_from_torch(dhx, params))

    # torch
    xt = torch.tensor(x, requires_grad=True)
    hxt = tuple(torch.tensor(a, requires_grad=True) for a in (hx if is_lstm else (hx,)))
    yt, st = mod(xt, hxt if is_lstm else hxt[0])
    st = st if is_lstm else (st,)
    loss = (yt * torch.from_numpy(dy)).sum()
    for s, d in zip(st, dhx if is_lstm else (dhx,)):
        loss = loss + (s * torch.from_numpy(d)).sum()
    loss.backward()

    assert_close(y, yt.detach().numpy(), TOL, "y")
    final = interop.state_to_torch(state, params)
    for j, (a, b) in enumerate(zip(final if is_lstm else (final,), st)):
        assert_close(a, b.detach().numpy(), TOL, f"final state {('h_n', 'c_n')[j]}")
    assert_close(grads["x"], xt.grad.numpy(), TOL, "dx")
    dstate0 = interop.state_to_torch(grads["state0"], params)
    for j, (a, b) in enumerate(zip(dstate0 if is_lstm else (dstate0,), hxt)):
        assert_close(a, b.grad.numpy(), TOL, f"d{('h_0', 'c_0')[j]}")
    dparams = interop.to_state_dict(param_grads(grads, params))
    torch_grads = {k: p.grad.numpy() for k, p in mod.named_parameters()}
    assert list(dparams) == list(torch_grads)  # every parameter, in torch's order
    for k, g in torch_grads.items():
        assert_close(dparams[k], g, TOL, f"d{k}")


@pytest.mark.oracle
def test_a_batch_first_false_module_reads_transposed_inputs(torch, rng):
    mod = torch_module(torch, "GRU", {}, 2, True, batch_first=False)
    net, params, opts = interop.from_torch(mod)
    x = rng.standard_normal((B, T, D))
    y, state, _ = net.forward(params, x, **opts)
    yt, hn = mod(torch.from_numpy(x.transpose(1, 0, 2).copy()))  # (T, B, D)
    assert_close(y, yt.detach().numpy().transpose(1, 0, 2), TOL, "y")
    assert_close(interop.state_to_torch(state, params), hn.detach().numpy(), TOL, "h_n")
    assert interop.to_torch(params, batch_first=False).batch_first is False


@pytest.mark.oracle
def test_float32_goes_both_ways(torch, rng):
    mod = torch_module(torch, "LSTM", {}, 2, False, dtype=torch.float32)
    net, params, _ = interop.from_torch(mod)
    assert {p.dtype for p in params.values()} == {np.dtype(np.float32)}
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    y, _, _ = net.forward(params, x)
    yt, _ = mod(torch.from_numpy(x))
    assert_close(y, yt.detach().numpy(), 1e-4, "y float32")
    assert interop.to_torch(params).weight_ih_l0.dtype == torch.float32


@pytest.mark.oracle
def test_an_rnn_module_brings_its_nonlinearity(torch):
    mod = torch_module(torch, "RNN", {"nonlinearity": "relu"}, 1, False)
    _, _, options = interop.from_torch(mod)
    assert options == {"nonlinearity": "relu"}
    assert interop.from_torch(mod, nonlinearity="relu").options == options
    with pytest.raises(ValueError, match=r"nonlinearity: expected 'relu' \(the module's\) or "
                                         r"None, got 'tanh'"):
        interop.from_torch(mod, nonlinearity="tanh")
    with pytest.raises(ValueError, match=r"prefix: expected '' for a module"):
        interop.from_torch(mod, prefix="rnn.")


@pytest.mark.oracle
def test_unsupported_modules_say_what_is_unsupported(torch, rng):
    nn = torch.nn
    with pytest.raises(ValueError, match=r"proj_size=2 is not supported: expected an LSTM "
                                         r"without projection"):
        interop.from_torch(nn.LSTM(D, H, proj_size=2))
    with pytest.raises(ValueError, match=r"bias=False is not supported: expected bias=True"):
        interop.from_torch(nn.GRU(D, H, bias=False))
    with pytest.raises(ValueError, match=r"dropout=0.5 between layers in training mode is not "
                                         r"supported: expected dropout=0 or a module in eval"):
        interop.from_torch(nn.LSTM(D, H, num_layers=2, dropout=0.5))
    with pytest.raises(TypeError, match=r"expected a torch.nn.RNN, LSTM or GRU module, got "
                                        r"Linear"):
        interop.from_torch(nn.Linear(D, H))
    with pytest.raises(TypeError, match=r"state_dict\['weight_ih_l0'\]: expected a "
                                        r"torch.float32 or torch.float64 tensor, got "
                                        r"torch.float16"):
        interop.from_torch(nn.GRU(D, H, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"LSTMCell \(one time step\) is not supported"):
        interop.from_torch(nn.LSTMCell(D, H))


@pytest.mark.oracle
def test_what_the_errors_suggest_works(torch, rng):
    """A module with dropout in eval mode, and a *Cell through its state dict with
    "_l0" keys, give what torch computes."""
    x = rng.standard_normal((B, T, D))
    mod = torch_module(torch, "LSTM", {}, 2, False, dropout=0.5).eval()
    net, params, _ = interop.from_torch(mod)
    y, _, _ = net.forward(params, x)
    assert_close(y, mod(torch.from_numpy(x))[0].detach().numpy(), TOL, "y (eval, dropout)")

    torch.manual_seed(0)
    cell_t = torch.nn.GRUCell(D, H, dtype=torch.float64)
    cell, params, _ = interop.from_torch({k + "_l0": v for k, v in cell_t.state_dict().items()})
    h0 = rng.standard_normal((B, H))
    h1, _ = cell.step_forward(params, x[:, 0], h0)
    ref = cell_t(torch.from_numpy(x[:, 0]), torch.from_numpy(h0)).detach().numpy()
    assert_close(h1, ref, TOL, "GRUCell step")


@pytest.mark.oracle
def test_the_docstring_example_runs(torch):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(interop) if t.examples]
    assert tests, "the module has an example"
    for t in tests:
        runner.run(t)
    assert runner.failures == 0
