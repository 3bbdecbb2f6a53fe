"""kernels/lstm.cu and kernels/rnn.cu, through the sequence wrappers, against PyTorch's
nn.LSTM / nn.RNN in float64 (an independent oracle), on every backend; the float64 NumPy
reference is checked against the same oracle. Norm-wise relative error within TOL (1e-5 in
float32), forward and every gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TOL, assert_close, to_numpy

from gpunn import _kernels, reference

# (name, T, N, I, HID, biases given (ih, hh), incoming gradients given (y, h_n, c_n))
CASES = [
    ("odd_sizes", 5, 3, 7, 6, (True, True), (True, True, True)),
    ("seq_len_1", 1, 2, 5, 4, (True, True), (True, True, True)),
    ("batch_1_no_bias", 4, 1, 3, 5, (False, False), (True, False, True)),
    ("hn_only_one_bias", 6, 5, 9, 13, (True, False), (False, True, False)),
]
IDS = [c[0] for c in CASES]
OUT_NAMES = {"lstm": ("y", "h_n", "c_n"), "rnn": ("y", "h_n")}
GRAD_NAMES = {
    "lstm": ("grad_x", "grad_h0", "grad_c0", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh"),
    "rnn": ("grad_x", "grad_h0", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh"),
}


def make_problem(kind, T, N, I, HID, biases, grads, seed, scale=1.0):
    """float32-representable float64 arrays: inputs, weights, and incoming gradients."""
    rng = np.random.default_rng(seed)
    G = 4 * HID if kind == "lstm" else HID
    bound = 1.0 / np.sqrt(HID)

    def f(*shape, s=1.0):
        return (s * rng.standard_normal(shape)).astype(np.float32).astype(np.float64)

    def u(*shape):
        return rng.uniform(-bound, bound, shape).astype(np.float32).astype(np.float64)

    p = {"x": f(T, N, I, s=scale), "h0": f(N, HID, s=0.5), "w_ih": u(G, I), "w_hh": u(G, HID)}
    if kind == "lstm":
        p["c0"] = f(N, HID, s=0.5)
    p["b_ih"] = u(G) if biases[0] else None
    p["b_hh"] = u(G) if biases[1] else None
    shapes = {"y": (T, N, HID), "h_n": (N, HID), "c_n": (N, HID)}
    outs = OUT_NAMES[kind]
    given = {name: f(*shapes[name]) if g else None for name, g in zip(outs, grads)}
    return p, given


def torch_run(torch, kind, p, given):
    """Outputs and gradients from torch.nn.LSTM / nn.RNN in float64."""
    I = p["x"].shape[2]
    HID = p["h0"].shape[1]
    has_bias = p["b_ih"] is not None or p["b_hh"] is not None
    cls = torch.nn.LSTM if kind == "lstm" else torch.nn.RNN
    m = cls(I, HID, bias=has_bias, dtype=torch.float64)
    with torch.no_grad():
        m.weight_ih_l0.copy_(torch.tensor(p["w_ih"]))
        m.weight_hh_l0.copy_(torch.tensor(p["w_hh"]))
        if has_bias:
            for key in ("b_ih", "b_hh"):
                value = p[key] if p[key] is not None else np.zeros(p["w_ih"].shape[0])
                getattr(m, f"bias_{key[2:]}_l0").copy_(torch.tensor(value))
    leaf = {k: torch.tensor(p[k], requires_grad=True) for k in ("x", "h0", "c0") if k in p}
    if kind == "lstm":
        y, (hn, cn) = m(leaf["x"], (leaf["h0"][None], leaf["c0"][None]))
        outs = {"y": y, "h_n": hn[0], "c_n": cn[0]}
    else:
        y, hn = m(leaf["x"], leaf["h0"][None])
        outs = {"y": y, "h_n": hn[0]}
    loss = sum((outs[k] * torch.tensor(g)).sum() for k, g in given.items() if g is not None)
    loss.backward()
    result = {k: v.detach().numpy() for k, v in outs.items()}
    result["grad_x"] = leaf["x"].grad.numpy()
    result["grad_h0"] = leaf["h0"].grad.numpy()
    if kind == "lstm":
        result["grad_c0"] = leaf["c0"].grad.numpy()
    result["grad_w_ih"] = m.weight_ih_l0.grad.numpy()
    result["grad_w_hh"] = m.weight_hh_l0.grad.numpy()
    for key in ("b_ih", "b_hh"):
        result[f"grad_{key}"] = (
            getattr(m, f"bias_{key[2:]}_l0").grad.numpy() if p[key] is not None else None
        )
    return result


def run(family, kind, p, given, asarray):
    """(outputs dict, gradients dict, saved) from ``family`` (gpunn._kernels or reference)."""
    a = {k: (asarray(v) if v is not None else None) for k, v in p.items()}
    g = {k: (asarray(v) if v is not None else None) for k, v in given.items()}
    if kind == "lstm":
        *outs, saved = family.lstm_forward(
            a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"]
        )
        grads = family.lstm_backward(saved, g["y"], g["h_n"], g["c_n"])
    else:
        *outs, saved = family.rnn_tanh_forward(
            a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"]
        )
        grads = family.rnn_tanh_backward(saved, g["y"], g["h_n"])
    return dict(zip(OUT_NAMES[kind], outs)), dict(zip(GRAD_NAMES[kind], grads)), saved


def check_against(result, ref, names, dtype):
    for name in names:
        if ref[name] is None:
            assert result[name] is None, f"{name} should be None"
        else:
            assert_close(result[name], ref[name], dtype=dtype, what=name)


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sequence_matches_torch(kernel_backend, torch_oracle, kind, case):
    _, T, N, I, HID, biases, grads = case
    p, given = make_problem(kind, T, N, I, HID, biases, grads, seed=10)
    ref = torch_run(torch_oracle, kind, p, given)
    outs, grad, _ = run(_kernels, kind, p, given, kernel_backend.asarray)
    check_against(outs, ref, OUT_NAMES[kind], np.float32)
    check_against(grad, ref, GRAD_NAMES[kind], np.float32)


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_numpy_reference_matches_torch(torch_oracle, kind):
    """The float64 reference the other tests trust agrees with PyTorch to rounding."""
    p, given = make_problem(kind, 5, 3, 7, 6, (True, False), (True, True, True), seed=11)
    ref = torch_run(torch_oracle, kind, p, given)
    outs, grad, _ = run(reference, kind, p, given, np.asarray)
    check_against(outs, ref, OUT_NAMES[kind], np.float64)
    check_against(grad, ref, GRAD_NAMES[kind], np.float64)


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_backward_twice_bit_identical(kernel_backend, kind):
    """Backward only reads ``saved``: a second call gives the same bits."""
    p, given = make_problem(kind, 4, 3, 5, 6, (True, True), (True, True, True), seed=12)
    xp_g = {k: kernel_backend.asarray(v) for k, v in given.items()}
    _, first, saved = run(_kernels, kind, p, given, kernel_backend.asarray)
    if kind == "lstm":
        second = _kernels.lstm_backward(saved, xp_g["y"], xp_g["h_n"], xp_g["c_n"])
    else:
        second = _kernels.rnn_tanh_backward(saved, xp_g["y"], xp_g["h_n"])
    for name, again in zip(GRAD_NAMES[kind], second):
        assert np.array_equal(to_numpy(first[name]), to_numpy(again)), name


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_outputs_are_not_the_saved_state(kernel_backend, kind):
    """Overwriting the returned y, h_n (and c_n) in place leaves backward unchanged, as with
    the reference (whose outputs are copies): they are the caller's arrays, not ``saved``."""
    p, given = make_problem(kind, 4, 3, 5, 6, (True, True), (True, True, True), seed=14)
    xp_g = {k: kernel_backend.asarray(v) for k, v in given.items()}
    outs, first, saved = run(_kernels, kind, p, given, kernel_backend.asarray)
    for out in outs.values():
        out[...] = 0
    if kind == "lstm":
        second = _kernels.lstm_backward(saved, xp_g["y"], xp_g["h_n"], xp_g["c_n"])
    else:
        second = _kernels.rnn_tanh_backward(saved, xp_g["y"], xp_g["h_n"])
    for name, again in zip(GRAD_NAMES[kind], second):
        assert np.array_equal(to_numpy(first[name]), to_numpy(again)), name


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_saturated_gates_stay_finite(kernel_backend, torch_oracle, kind):
    """Pre-activations around +-100: outputs exact limits, no NaN or inf anywhere. The
    gradients through saturated activations are ~1e-40 in float64 and 0 in float32, so only
    the forward is compared; every gradient must be finite."""
    p, given = make_problem(kind, 3, 4, 5, 6, (True, True), (True, True, True), seed=13)
    p["x"] = np.round(p["x"]) * 100.0  # |pre-activation| ~ 100 |w| ~ tens to hundreds
    p["w_ih"] = np.sign(p["w_ih"])
    ref = torch_run(torch_oracle, kind, p, given)
    outs, grad, _ = run(_kernels, kind, p, given, kernel_backend.asarray)
    check_against(outs, ref, OUT_NAMES[kind], np.float32)
    for name, value in grad.items():
        assert np.isfinite(to_numpy(value)).all(), f"{name} has NaN or inf"


def test_lstm_cell_matches_torch(kernel_backend, torch_oracle):
    """The public fused step on pre-activation gates, some at +-100, against LSTMCell with an
    identity input weight and no recurrent contribution."""
    torch = torch_oracle
    N, HID = 7, 9
    rng = np.random.default_rng(14)
    gates = rng.standard_normal((N, 4 * HID)).astype(np.float32)
    gates[rng.random(gates.shape) < 0.2] = 100.0
    gates[rng.random(gates.shape) < 0.2] = -100.0
    c_prev = rng.standard_normal((N, HID)).astype(np.float32)
    cell = torch.nn.LSTMCell(4 * HID, HID, bias=False, dtype=torch.float64)
    with torch.no_grad():
        cell.weight_ih.copy_(torch.eye(4 * HID, dtype=torch.float64))
        cell.weight_hh.zero_()
    h_ref, c_ref = cell(
        torch.tensor(gates, dtype=torch.float64),
        (torch.zeros(N, HID, dtype=torch.float64), torch.tensor(c_prev, dtype=torch.float64)),
    )
    xp = kernel_backend.xp
    h, c = _kernels.lstm_cell_forward(xp.asarray(gates), xp.asarray(c_prev))
    assert np.isfinite(to_numpy(h)).all() and np.isfinite(to_numpy(c)).all()
    assert_close(h, h_ref.detach().numpy(), dtype=np.float32, what="h")
    assert_close(c, c_ref.detach().numpy(), dtype=np.float32, what="c")


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_empty_batch_launches_nothing(kernel_backend, monkeypatch, kind):
    monkeypatch.setattr(
        "gpunn._kernels_rnn.module", lambda *a: pytest.fail("launched a kernel for N=0")
    )
    p, given = make_problem(kind, 3, 0, 4, 5, (True, True), (True, True, True), seed=15)
    outs, grad, _ = run(_kernels, kind, p, given, kernel_backend.asarray)
    assert outs["y"].shape == (3, 0, 5) and outs["h_n"].shape == (0, 5)
    expected = {"grad_x": (3, 0, 4), "grad_h0": (0, 5), "grad_c0": (0, 5)}
    G = 20 if kind == "lstm" else 5
    expected.update(grad_w_ih=(G, 4), grad_w_hh=(G, 5), grad_b_ih=(G,), grad_b_hh=(G,))
    for name, value in grad.items():
        assert value.shape == expected[name], name
        assert not to_numpy(value).any(), f"{name} should be zeros"


def test_tolerance_table_is_float32_1e5():
    """The recurrent comparisons rely on TOL: float32 within 1e-5 of float64."""
    assert TOL[np.dtype(np.float32)] == 1e-5


@pytest.mark.gpu
def test_lstm_cell_gates_beyond_2_31_elements_on_gpu():
    """gates (N, 4*HID) with N*4*HID = 2^31 + 4*HID: the last rows sit at offsets past 2^31,
    where 32-bit index arithmetic would wrap. GPU only (2^29 threads)."""
    from gpunn._backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    import cupy

    N, HID = 2**19 + 1, 1024
    gates = cupy.zeros((N, 4 * HID), dtype=cupy.float32)
    c_prev = cupy.zeros((N, HID), dtype=cupy.float32)
    rng = np.random.default_rng(16)
    tail_gates = rng.standard_normal((2, 4 * HID)).astype(np.float32)
    tail_c = rng.standard_normal((2, HID)).astype(np.float32)
    gates[-2:] = cupy.asarray(tail_gates)
    c_prev[-2:] = cupy.asarray(tail_c)
    h, c = _kernels.lstm_cell_forward(gates, c_prev)
    h_ref, c_ref = reference.lstm_cell_forward(
        tail_gates.astype(np.float64), tail_c.astype(np.float64)
    )
    assert_close(h[-2:], h_ref, dtype=np.float32, what="h of the last rows")
    assert_close(c[-2:], c_ref, dtype=np.float32, what="c of the last rows")
    del gates, c_prev, h, c
    cupy.get_default_memory_pool().free_all_blocks()
