"""PyTorch float64 oracle: RNN/LSTM/GRU (and their multi-layer / bidirectional
compositions) equal ``torch.nn.RNN/LSTM/GRU`` in the forward pass, the final
states and EVERY gradient: x, the initial state(s), every parameter.

Skipped when torch is not installed (``make test-oracle`` installs it).
Threshold: relative RMS ≤ 1e-10 in float64 (DESIGN §6).
"""

import numpy as np
import pytest

from minirec.cells import compose, gru, lstm, rnn
from tests.conftest import assert_close

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.oracle

TOL = 1e-10  # relative RMS, float64
TORCH_NAMES = {"W_ih": "weight_ih", "W_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}
B, T, D, H = 3, 7, 5, 4  # D ≠ H so that a transposed weight cannot pass


def build(cell, num_layers, bidirectional):
    """The minirec net and a function (layer, direction, name) -> its params key."""
    if num_layers == 1 and not bidirectional:
        return cell, lambda k, d, name: name
    unit = compose.bidirectional(cell) if bidirectional else cell
    net = compose.stack([unit] * num_layers)
    if bidirectional:
        return net, lambda k, d, name: f"l{k}.{d}.{name}"
    return net, lambda k, d, name: f"l{k}.{name}"


def torch_module(torch_cls, params, key, num_layers, bidirectional, kw):
    mod = torch_cls(D, H, num_layers=num_layers, bidirectional=bidirectional,
                    batch_first=True, dtype=torch.float64, **kw)
    dirs = ("fwd", "rev") if bidirectional else ("fwd",)
    with torch.no_grad():
        for k in range(num_layers):
            for d in dirs:
                for name, tname in TORCH_NAMES.items():
                    suffix = f"_l{k}" + ("_reverse" if d == "rev" else "")
                    getattr(mod, tname + suffix).copy_(torch.from_numpy(params[key(k, d, name)]))
    return mod


CASES = [  # (id, minirec cell, torch class, kwargs, num_layers, bidirectional)
    ("rnn_tanh", rnn, "RNN", {"nonlinearity": "tanh"}, 1, False),
    ("rnn_relu", rnn, "RNN", {"nonlinearity": "relu"}, 1, False),
    ("lstm", lstm, "LSTM", {}, 1, False),
    ("gru", gru, "GRU", {}, 1, False),
    ("rnn_tanh_2layers", rnn, "RNN", {"nonlinearity": "tanh"}, 2, False),
    ("rnn_relu_2layers_bidirectional", rnn, "RNN", {"nonlinearity": "relu"}, 2, True),
    ("lstm_bidirectional", lstm, "LSTM", {}, 1, True),
    ("lstm_2layers", lstm, "LSTM", {}, 2, False),
    ("lstm_3layers_bidirectional", lstm, "LSTM", {}, 3, True),
    ("gru_bidirectional", gru, "GRU", {}, 1, True),
    ("gru_2layers_bidirectional", gru, "GRU", {}, 2, True),
]


@pytest.mark.oracle
@pytest.mark.parametrize("cell, torch_name, kw, num_layers, bidirectional",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("with_state0", [True, False], ids=["state0", "no_state0"])
def test_matches_torch_forward_states_and_every_gradient(cell, torch_name, kw, num_layers,
                                                         bidirectional, with_state0):
    rng = np.random.default_rng(7)
    is_lstm = cell is lstm
    dirs = 2 if bidirectional else 1
    net, key = build(cell, num_layers, bidirectional)
    params = net.init_params(rng, D, H)
    x = rng.standard_normal((B, T, D))
    h0 = rng.standard_normal((num_layers * dirs, B, H))
    c0 = rng.standard_normal((num_layers * dirs, B, H))
    dy = rng.standard_normal((B, T, dirs * H))
    dh = rng.standard_normal((num_layers * dirs, B, H))
    dc = rng.standard_normal((num_layers * dirs, B, H))

    # minirec: states are flat tuples, (h, c) per LSTM cell, layer-major then direction
    composite = net is not cell
    if is_lstm:
        flat = lambda h, c: tuple(a for j in range(len(h)) for a in (h[j], c[j]))
    else:
        flat = lambda h, c: tuple(h)
    unpack = (lambda s: s) if composite else (lambda s: s if is_lstm else (s,))
    pack = (lambda s: s) if composite else (lambda s: s if is_lstm else s[0])
    state0 = pack(flat(h0, c0)) if with_state0 else None
    y, state, cache = net.forward(params, x, state0, **kw)
    grads = net.backward(params, cache, dy, pack(flat(dh, dc)))
    state = unpack(state)

    # torch
    mod = torch_module(getattr(torch.nn, torch_name), params, key, num_layers, bidirectional, kw)
    xt = torch.tensor(x, requires_grad=True)
    ht = torch.tensor(h0, requires_grad=True)
    ct = torch.tensor(c0, requires_grad=True)
    if with_state0:
        yt, st = mod(xt, (ht, ct) if is_lstm else ht)
    else:
        yt, st = mod(xt)
    hn, cn = st if is_lstm else (st, None)
    loss = (yt * torch.from_numpy(dy)).sum() + (hn * torch.from_numpy(dh)).sum()
    if is_lstm:
        loss = loss + (cn * torch.from_numpy(dc)).sum()
    loss.backward()

    assert_close(y, yt.detach().numpy(), TOL, "y")
    np.testing.assert_equal(len(state), len(flat(hn, cn)))
    for j, (a, b) in enumerate(zip(state, flat(hn.detach().numpy(),
                                               None if cn is None else cn.detach().numpy()))):
        assert_close(a, b, TOL, f"final state[{j}]")
    assert_close(grads["x"], xt.grad.numpy(), TOL, "dx")
    dstate0 = unpack(grads["state0"])
    if with_state0:
        ref = flat(ht.grad.numpy(), ct.grad.numpy() if is_lstm else None)
        for j, (a, b) in enumerate(zip(dstate0, ref)):
            assert_close(a, b, TOL, f"dstate0[{j}]")
    for k in range(num_layers):
        for d in ("fwd", "rev")[:dirs]:
            for name, tname in TORCH_NAMES.items():
                suffix = f"_l{k}" + ("_reverse" if d == "rev" else "")
                tgrad = getattr(mod, tname + suffix).grad.numpy()
                assert_close(grads[key(k, d, name)], tgrad, TOL, f"d{key(k, d, name)}")
    n_params = 4 * num_layers * dirs
    assert len(params) == n_params and set(grads) == set(params) | {"x", "state0"}


@pytest.mark.oracle
def test_pytorch_default_weights_give_the_same_outputs():
    """The other direction: weights initialised by torch, read into minirec by name."""
    torch.manual_seed(0)
    mod = torch.nn.GRU(D, H, num_layers=2, bidirectional=True, batch_first=True,
                       dtype=torch.float64)
    net = compose.stack([compose.bidirectional(gru)] * 2)
    params = {}
    for tname, p in mod.named_parameters():
        base, layer, *rev = tname.split("_l")[0], *tname.split("_l")[1].split("_")
        name = {v: k for k, v in TORCH_NAMES.items()}[base]
        params[f"l{layer}.{'rev' if rev else 'fwd'}.{name}"] = p.detach().numpy().copy()
    x = np.random.default_rng(0).standard_normal((B, T, D))
    y, state, _ = net.forward(params, x)
    yt, hn = mod(torch.from_numpy(x))
    assert_close(y, yt.detach().numpy(), TOL, "y")
    assert_close(np.stack(state), hn.detach().numpy(), TOL, "h_n")
