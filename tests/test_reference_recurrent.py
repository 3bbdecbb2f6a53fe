"""gpunn.reference LSTM and tanh RNN (one layer) against torch.nn.LSTM / nn.RNN in float64,
finite differences, and the rule that backward leaves its inputs unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from reference_checks import FD_TOL, numerical_grad, rng_for

from gpunn import reference

DTYPES = [np.float32, np.float64]
# (T, N, I, HID): seq_len 1 with batch 1, odd sizes, a longer sequence
SHAPES = [(1, 1, 3, 4), (5, 3, 4, 7), (9, 2, 1, 3)]


def make_inputs(kind, T, N, I, HID, bias, dtype, key):
    """Seeded x, h0, c0, weights (gate width G = 4*HID for LSTM, HID for RNN), and grads."""
    G = 4 * HID if kind == "lstm" else HID
    rng = rng_for(kind, key)

    def draw(*shape):
        return rng.uniform(-1, 1, shape).astype(dtype)

    params = [draw(G, I), draw(G, HID), draw(G) if bias else None, draw(G) if bias else None]
    names = ["x", "h0", "c0", "grad_y", "grad_hn", "grad_cn"]
    shapes = [(T, N, I), (N, HID), (N, HID), (T, N, HID), (N, HID), (N, HID)]
    return {"params": params} | {name: draw(*shape) for name, shape in zip(names, shapes)}


def torch_run(torch, kind, d, use_grads):
    """nn.LSTM / nn.RNN in float64 with the same weights; returns outputs and gradients."""
    I = d["x"].shape[2]
    HID = d["h0"].shape[1]
    w_ih, w_hh, b_ih, b_hh = d["params"]
    bias = b_ih is not None
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.RNN
    module = cls(I, HID, bias=bias).double()
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.tensor(w_ih))
        module.weight_hh_l0.copy_(torch.tensor(w_hh))
        if bias:
            module.bias_ih_l0.copy_(torch.tensor(b_ih))
            module.bias_hh_l0.copy_(torch.tensor(b_hh))

    def t(a):
        return torch.tensor(a, dtype=torch.float64, requires_grad=True)

    x, h0, c0 = t(d["x"]), t(d["h0"][None]), t(d["c0"][None])
    if kind == "lstm":
        y, (hn, cn) = module(x, (h0, c0))
        outs = [y, hn[0], cn[0]]
        grads = [d["grad_y"], d["grad_hn"], d["grad_cn"]]
    else:
        y, hn = module(x, h0)
        outs = [y, hn[0]]
        grads = [d["grad_y"], d["grad_hn"]]
    loss = sum((o * torch.tensor(g, dtype=torch.float64)).sum() for o, g in zip(outs, grads))
    if use_grads == "hn_only":
        loss = (outs[1] * torch.tensor(grads[1], dtype=torch.float64)).sum()
    loss.backward()
    named = [x.grad, h0.grad[0]] + ([c0.grad[0]] if kind == "lstm" else [])
    named += [module.weight_ih_l0.grad, module.weight_hh_l0.grad]
    named += [module.bias_ih_l0.grad, module.bias_hh_l0.grad] if bias else [None, None]
    return [o.detach() for o in outs], named


def ref_run(kind, d, use_grads):
    if kind == "lstm":
        y, hn, cn, saved = reference.lstm_forward(d["x"], d["h0"], d["c0"], *d["params"])
        outs = [y, hn, cn]
        if use_grads == "hn_only":
            grads = reference.lstm_backward(saved, None, d["grad_hn"], None)
        else:
            grads = reference.lstm_backward(saved, d["grad_y"], d["grad_hn"], d["grad_cn"])
    else:
        y, hn, saved = reference.rnn_tanh_forward(d["x"], d["h0"], *d["params"])
        outs = [y, hn]
        if use_grads == "hn_only":
            grads = reference.rnn_tanh_backward(saved, None, d["grad_hn"])
        else:
            grads = reference.rnn_tanh_backward(saved, d["grad_y"], d["grad_hn"])
    return outs, list(grads), saved


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_grads", ["all", "hn_only"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_recurrent_matches_torch(torch_oracle, kind, shape, bias, use_grads, dtype):
    d = make_inputs(kind, *shape, bias, dtype, (shape, bias))
    outs, grads, _ = ref_run(kind, d, use_grads)
    touts, tgrads = torch_run(torch_oracle, kind, d, use_grads)
    for i, (o, t) in enumerate(zip(outs, touts)):
        assert o.dtype == dtype
        assert_close(o, t, dtype=dtype, what=f"output {i}")
    assert len(grads) == len(tgrads)
    for i, (g, t) in enumerate(zip(grads, tgrads)):
        if t is None:
            assert g is None, f"grad {i} should be None without bias"
        else:
            assert g.dtype == dtype
            assert_close(g, t, dtype=dtype, what=f"grad {i}")


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_recurrent_backward_finite_differences(kind):
    d = make_inputs(kind, 3, 2, 3, 2, True, np.float64, "fd")
    grad_names = ["x", "h0"] + (["c0"] if kind == "lstm" else [])
    _, grads, _ = ref_run(kind, d, "all")
    gys = [d["grad_y"], d["grad_hn"], d["grad_cn"]]

    def loss():
        o, _, _ = ref_run(kind, d, "all")
        return float(sum(np.sum(a * g) for a, g in zip(o, gys)))

    tensors = [d[name] for name in grad_names] + d["params"]
    labels = grad_names + ["w_ih", "w_hh", "b_ih", "b_hh"]
    for arr, grad, label in zip(tensors, grads, labels):
        assert_close(grad, numerical_grad(loss, arr), tol=FD_TOL, what=f"grad {label}")


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_recurrent_backward_leaves_saved_and_inputs_unchanged(kind):
    d = make_inputs(kind, 4, 3, 2, 3, True, np.float64, "twice")
    _, first, saved = ref_run(kind, d, "all")
    before = {k: np.copy(v) for k, v in vars(saved).items() if isinstance(v, np.ndarray)}
    grads_before = [d["grad_y"].copy(), d["grad_hn"].copy(), d["grad_cn"].copy()]
    args = (d["grad_y"], d["grad_hn"], d["grad_cn"])
    if kind == "lstm":
        second = reference.lstm_backward(saved, *args)
    else:
        second = reference.rnn_tanh_backward(saved, *args[:2])
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(saved, k), v, err_msg=k)
    for a, b in zip(args, grads_before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lstm_cell_matches_formula_and_saturates(dtype):
    """Saturated gates reach sigmoid's and tanh's limits exactly, with no overflow."""
    HID = 2
    big = np.array([[100, -1000, 1000, -1000, 100, -100, 100, -1000]], dtype=dtype)
    c_prev = np.array([[0.5, -2.0]], dtype=dtype)
    # exp(-1000) underflows to 0 by design; overflow or 0/0 would be a bug.
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        h, c = reference.lstm_cell_forward(big, c_prev)
    # i = (1, 0), f = (1, 0), g = (1, -1), o = (1, 0)
    np.testing.assert_array_equal(c, np.array([[0.5 + 1.0, 0.0]], dtype=dtype))
    np.testing.assert_array_equal(h, np.array([[np.tanh(dtype(1.5)), 0.0]], dtype=dtype))
    rng = rng_for("cell")
    gates = rng.uniform(-3, 3, (3, 4 * HID)).astype(dtype)
    c_prev = rng.uniform(-1, 1, (3, HID)).astype(dtype)
    h, c = reference.lstm_cell_forward(gates, c_prev)
    g64 = gates.astype(np.float64)
    i, f, g, o = (g64[:, k * HID : (k + 1) * HID] for k in range(4))

    def sig(v):
        return 1 / (1 + np.exp(-v))

    c_ref = sig(f) * c_prev + sig(i) * np.tanh(g)
    assert_close(c, c_ref, dtype=dtype)
    assert_close(h, sig(o) * np.tanh(c_ref), dtype=dtype)


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_recurrent_empty_batch(kind):
    d = make_inputs(kind, 3, 0, 2, 4, True, np.float32, "empty")
    outs, grads, _ = ref_run(kind, d, "all")
    assert outs[0].shape == (3, 0, 4)
    assert grads[0].shape == (3, 0, 2)
    assert grads[-4].shape == d["params"][0].shape and not grads[-4].any()
