"""gpunn.nn against torch.nn on the CPU: the torch module's state_dict is loaded as is, then
forward outputs, input gradients and every parameter gradient are compared (TOL table in
conftest). Also: module bookkeeping (names, state_dict, to, zero_grad) and its errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import assert_close

import gpunn
from gpunn import nn
from gpunn._backend import gpu_unavailable_reason

f32, f64 = np.float32, np.float64


def _rng(seed):
    return np.random.default_rng(seed)


def _load_from_torch(module, tmodule):
    module.load_state_dict({k: v.detach().numpy() for k, v in tmodule.state_dict().items()})


def _torch_module(torch, tmodule, dtype):
    return tmodule.to(torch.float64 if dtype == f64 else torch.float32)


def _leaf(torch, a):
    return torch.tensor(a, requires_grad=True)


def _compare_params(module, tmodule, dtype):
    tparams = dict(tmodule.named_parameters())
    names = [n for n, _ in module.named_parameters()]
    assert names == list(tparams)
    for name, p in module.named_parameters():
        assert p.grad.dtype == dtype and p.grad.shape == p.data.shape
        assert_close(p.grad, tparams[name].grad, dtype, what=f"grad of {name}")


def _check_single_input(torch, module, tmodule, x, dtype, twice=True):
    """Forward and backward of a one-input module against torch, and backward twice."""
    tx = _leaf(torch, x)
    ty = tmodule(tx)
    y = module(x)
    assert y.dtype == dtype
    assert_close(y, ty, dtype, what="forward")
    gy = _rng(1).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(gy))
    gx = module.backward(gy)
    assert_close(gx, tx.grad, dtype, what="grad_x")
    _compare_params(module, tmodule, dtype)
    if twice:
        first = {n: p.grad.copy() for n, p in module.named_parameters()}
        np.testing.assert_array_equal(module.backward(gy), gx)
        for n, p in module.named_parameters():
            np.testing.assert_array_equal(p.grad, 2 * first[n])


CONV_CASES = [
    # in, out, kernel, stride, padding, dilation, bias, x shape
    (3, 4, (3, 2), (2, 1), 1, 1, True, (2, 3, 11, 7)),
    (2, 5, 3, 1, "same", 2, False, (1, 2, 9, 8)),
    (1, 3, 2, 3, (0, 1), (1, 2), True, (3, 1, 7, 10)),
]


@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(torch_oracle, case, dtype):
    torch = torch_oracle
    C, K, k, s, p, d, bias, shape = case
    tconv = _torch_module(torch, torch.nn.Conv2d(C, K, k, s, p, d, 1, bias), dtype)
    conv = nn.Conv2d(C, K, k, s, p, d, 1, bias, dtype=dtype)
    _load_from_torch(conv, tconv)
    x = _rng(0).standard_normal(shape).astype(dtype)
    _check_single_input(torch, conv, tconv, x, dtype)


POOL_CASES = [
    # kernel, stride, padding, dilation, ceil_mode, x shape
    (3, 2, 1, 1, True, (2, 3, 9, 8)),
    ((2, 3), (1, 2), (1, 0), (2, 1), False, (1, 2, 7, 9)),
    (2, None, 0, 1, False, (3, 1, 5, 6)),
]


@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_matches_torch(torch_oracle, case, dtype):
    torch = torch_oracle
    k, s, p, d, ceil, shape = case
    tpool = torch.nn.MaxPool2d(k, s, p, d, return_indices=True, ceil_mode=ceil)
    pool = nn.MaxPool2d(k, s, p, d, return_indices=True, ceil_mode=ceil, dtype=dtype)
    x = _rng(0).standard_normal(shape).astype(dtype)
    tx = _leaf(torch, x)
    ty, tidx = tpool(tx)
    y, idx = pool(x)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(idx, tidx.numpy())
    gy = _rng(1).standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(gy))
    assert_close(pool.backward(gy), tx.grad, dtype, what="grad_x")


@pytest.mark.parametrize("dtype", [f32, f64])
def test_linear_matches_torch(torch_oracle, dtype):
    torch = torch_oracle
    tlin = _torch_module(torch, torch.nn.Linear(7, 5), dtype)
    lin = nn.Linear(7, 5, dtype=dtype)
    _load_from_torch(lin, tlin)
    x = _rng(0).standard_normal((3, 4, 7)).astype(dtype)  # (*, in) with two leading dims
    _check_single_input(torch, lin, tlin, x, dtype)


def test_sequential_cnn_and_loss_match_torch(torch_oracle):
    torch, dtype = torch_oracle, f64
    layers = [
        (nn.Conv2d(1, 4, 3, padding=1, dtype=dtype), torch.nn.Conv2d(1, 4, 3, padding=1)),
        (nn.ReLU(), torch.nn.ReLU()),
        (nn.MaxPool2d(2), torch.nn.MaxPool2d(2)),
        (nn.Conv2d(4, 3, 2, bias=False, dtype=dtype), torch.nn.Conv2d(4, 3, 2, bias=False)),
        (nn.Tanh(), torch.nn.Tanh()),
        (nn.Flatten(), torch.nn.Flatten()),
        (nn.Linear(3 * 3 * 2, 10, dtype=dtype), torch.nn.Linear(3 * 3 * 2, 10)),
    ]
    model = nn.Sequential(*(g for g, _ in layers))
    tmodel = torch.nn.Sequential(*(t for _, t in layers)).double()
    assert list(model.state_dict()) == list(tmodel.state_dict())  # "0.weight", ..., "6.bias"
    _load_from_torch(model, tmodel)
    x = _rng(0).standard_normal((5, 1, 8, 6))
    target = np.array([3, 0, 9, 3, 1], dtype=np.int64)
    loss_fn, tloss_fn = nn.CrossEntropyLoss(dtype=dtype), torch.nn.CrossEntropyLoss()
    tx = _leaf(torch, x)
    tloss = tloss_fn(tmodel(tx), torch.from_numpy(target))
    loss = loss_fn(model(x), target)
    assert loss.shape == () and loss.dtype == dtype
    assert_close(loss, tloss, dtype, what="loss")
    tloss.backward()
    gx = model.backward(loss_fn.backward())
    assert_close(gx, tx.grad, dtype, what="grad_x")
    _compare_params(model, tmodel, dtype)


# batch_first, hx given, grad_y given (False: the loss is on h_n (and c_n) alone), bias, dtype
RECURRENT_CASES = [
    (False, True, True, True, f64),
    (True, False, True, True, f64),
    (True, True, False, True, f64),
    (False, False, False, False, f64),
    (True, True, True, True, f32),
]


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("case", RECURRENT_CASES)
def test_recurrent_matches_torch(torch_oracle, kind, case):
    torch = torch_oracle
    batch_first, hx_given, grad_y_given, bias, dtype = case
    T, N, I, HID, L = 4, 3, 5, 6, 2
    rng = _rng(0)
    tmod = getattr(torch.nn, kind)(I, HID, num_layers=L, bias=bias, batch_first=batch_first)
    tmod = _torch_module(torch, tmod, dtype)
    mod = getattr(nn, kind)(I, HID, L, bias=bias, batch_first=batch_first, dtype=dtype)
    _load_from_torch(mod, tmod)
    n_states = 2 if kind == "LSTM" else 1
    x = rng.standard_normal((N, T, I) if batch_first else (T, N, I)).astype(dtype)
    states = [rng.standard_normal((L, N, HID)).astype(dtype) for _ in range(n_states)]
    tx = _leaf(torch, x)
    tstates = [
        _leaf(torch, s) if hx_given else torch.zeros(L, N, HID, dtype=tx.dtype, requires_grad=True)
        for s in states
    ]
    thx = tuple(tstates) if n_states == 2 else tstates[0]
    hx = (tuple(states) if n_states == 2 else states[0]) if hx_given else None
    ty, tfinal = tmod(tx, thx)
    y, final = mod(x, hx)
    tfinals = tfinal if n_states == 2 else (tfinal,)
    finals = final if n_states == 2 else (final,)
    assert_close(y, ty, dtype, what="y")
    for a, b in zip(finals, tfinals):
        assert a.shape == (L, N, HID)
        assert_close(a, b, dtype, what="final state")
    gy = rng.standard_normal(y.shape).astype(dtype) if grad_y_given else None
    gstates = [rng.standard_normal((L, N, HID)).astype(dtype) for _ in range(n_states)]
    tloss = sum((t * torch.from_numpy(g)).sum() for t, g in zip(tfinals, gstates))
    if gy is not None:
        tloss = tloss + (ty * torch.from_numpy(gy)).sum()
    tloss.backward()
    gx, ghx = mod.backward(gy, *gstates)
    ghx = ghx if n_states == 2 else (ghx,)
    assert_close(gx, tx.grad, dtype, what="grad_x")
    for g, t in zip(ghx, tstates):
        assert g.shape == (L, N, HID)  # shaped like hx, also when forward had none
        assert_close(g, t.grad, dtype, what="grad_hx")
    _compare_params(mod, tmod, dtype)
    # Backward again: the same input gradient and twice the parameter gradients.
    first = {n: p.grad.copy() for n, p in mod.named_parameters()}
    gx2, _ = mod.backward(gy, *gstates)
    np.testing.assert_array_equal(gx2, gx)
    for n, p in mod.named_parameters():
        np.testing.assert_array_equal(p.grad, 2 * first[n])


def test_recurrent_parameter_names_and_initial_bounds():
    lstm = nn.LSTM(3, 5, num_layers=2)
    names = [n for n, _ in lstm.named_parameters()]
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    assert names == [f"{kind}_l{k}" for k in range(2) for kind in kinds]
    assert lstm.state_dict()["weight_ih_l1"].shape == (20, 5)
    for _, p in lstm.named_parameters():
        assert np.abs(p.data).max() <= 1 / np.sqrt(5)
    conv = nn.Conv2d(2, 3, (3, 4))
    assert np.abs(conv.weight.data).max() <= 1 / np.sqrt(2 * 3 * 4)
    assert conv.weight.data.dtype == f32


# ---------------------------------------------------------------------------------------------
# Bookkeeping and errors


def test_state_dict_holds_the_arrays_and_zero_grad_clears():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1, bias=False))
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight"]
    assert sd["0.weight"] is model[0].weight.data
    model.backward(model(np.ones((4, 3), dtype=f32)) * 0 + 1)
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_input_dtype_must_match_parameters():
    conv = nn.Conv2d(1, 2, 3)
    x = np.zeros((1, 1, 5, 5), dtype=f64)
    with pytest.raises(TypeError, match="input has dtype float64 but the module's parameters are"):
        conv(x)
    lstm = nn.LSTM(2, 3, dtype=f64)
    with pytest.raises(TypeError, match="h0 has dtype float32"):
        lstm(np.zeros((2, 1, 2)), (np.zeros((1, 1, 3), f32), np.zeros((1, 1, 3))))


def test_load_state_dict_errors_change_nothing():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(4, 2))
    before = {k: v.copy() for k, v in model.state_dict().items()}
    good = {k: np.full(v.shape, 7.0) for k, v in before.items()}  # float64: cast on load
    cases = [
        (KeyError, "missing keys ['1.bias']", {k: v for k, v in good.items() if k != "1.bias"}),
        (KeyError, "unexpected keys ['2.weight']", {**good, "2.weight": good["1.weight"]}),
        (
            ValueError,
            "state_dict['1.weight'] has shape (4, 2), but the parameter '1.weight'",
            {**good, "1.weight": good["1.weight"].T},
        ),
        (TypeError, "state_dict['0.bias'] must be a numpy.ndarray", {**good, "0.bias": [7, 7]}),
        (
            TypeError,
            "state_dict['0.bias'] has dtype complex128: expected real numbers",
            {**good, "0.bias": good["0.bias"] + 1j},
        ),
        (
            TypeError,
            "state_dict['1.bias'] has dtype <U1: expected real numbers",
            {**good, "1.bias": np.array(["7", "7"])},
        ),
    ]
    for exc, fragment, sd in cases:
        with pytest.raises(exc, match=re.escape(fragment)):
            model.load_state_dict(sd)
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, before[k])
    model.load_state_dict(good)
    for k, v in model.state_dict().items():
        assert v.dtype == f32 and (v == 7).all()


def test_to_dtype_returns_self_and_casts():
    model = nn.Sequential(nn.Linear(3, 2), nn.Tanh())
    model.backward(model(np.ones((1, 3), f32)))
    assert model.to(np.float64) is model
    for p in model.parameters():
        assert p.data.dtype == f64 and p.grad.dtype == f64
    assert model(np.ones((1, 3))).dtype == f64


def test_to_cuda_without_gpu_raises():
    reason = gpu_unavailable_reason()
    if reason is None:
        pytest.skip("a GPU is usable here: to('cuda') succeeds")
    model = nn.Linear(3, 2)
    with pytest.raises(
        RuntimeError, match=re.escape(f"cannot move the module to 'cuda': {reason}")
    ):
        model.to("cuda")
    assert isinstance(model.weight.data, np.ndarray)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda', got 'tpu'"):
        model.to("tpu")


@pytest.mark.gpu
def test_to_cuda_runs_on_the_gpu_and_back():
    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    import cupy

    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    x = _rng(0).standard_normal((2, 2, 9, 9)).astype(f32)
    y_cpu = model(x)
    gx_cpu = model.backward(np.ones_like(y_cpu))
    model.zero_grad()
    assert model.to("cuda") is model
    assert isinstance(model[0].weight.data, cupy.ndarray)
    y = model(cupy.asarray(x))
    assert isinstance(y, cupy.ndarray)
    assert_close(y, y_cpu, f32)
    assert_close(model.backward(cupy.ones_like(y)), gx_cpu, f32)
    model.to("cpu")
    assert isinstance(model[0].weight.data, np.ndarray)


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="Conv2d.backward called before forward"):
        nn.Conv2d(1, 1, 1).backward(np.zeros((1, 1, 1, 1), f32))


@pytest.mark.parametrize(
    "make, exc, fragment",
    [
        (lambda: nn.Conv2d(1, 2, 3, groups=2), NotImplementedError, "groups=2 is not supported"),
        (lambda: nn.Conv2d(1, 2, 0), ValueError, "kernel_size must be positive, got 0"),
        (lambda: nn.Conv2d(1, 2, 3, stride=2, padding="same"), ValueError, "needs stride 1"),
        (lambda: nn.Conv2d(1, 2, 3, bias=None), TypeError, "bias must be a bool, got None"),
        (lambda: nn.MaxPool2d(3, padding=2), ValueError, "at most half of kernel_size"),
        (lambda: nn.Linear(0, 2), ValueError, "in_features must be positive, got 0"),
        (lambda: nn.LSTM(2, 3, num_layers=0), ValueError, "num_layers must be positive"),
        (lambda: nn.RNN(2, 3, nonlinearity="relu"), NotImplementedError, "not supported yet"),
        (lambda: nn.RNN(2, 3, nonlinearity="sigmoid"), ValueError, "'tanh' or 'relu'"),
        (lambda: nn.Linear(2, 3, dtype=np.int32), TypeError, "numpy.float32 or numpy.float64"),
        (lambda: nn.Flatten(1.5), TypeError, "start_dim must be an int, got 1.5"),
        (lambda: nn.Flatten(1, None), TypeError, "end_dim must be an int, got None"),
    ],
)
def test_constructor_errors(make, exc, fragment):
    with pytest.raises(exc, match=re.escape(fragment)):
        make()


def test_manual_seed_makes_initialisation_reproducible():
    gpunn.manual_seed(11)
    a = nn.Conv2d(2, 3, 3).weight.data
    gpunn.manual_seed(11)
    b = nn.Conv2d(2, 3, 3).weight.data
    c = nn.Conv2d(2, 3, 3).weight.data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


# ---------------------------------------------------------------------------------------------
# The emulated CUDA kernels through the public API (numbers against the numpy backend)


def _emu_or_skip():
    from gpunn.emu import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the CPU emulator cannot run here: {reason}")


def _run(module, x, grad_fn):
    module.zero_grad()
    out = module(x)
    y = out[0] if isinstance(out, tuple) else out
    gx = module.backward(grad_fn(y))
    gx = gx[0] if isinstance(gx, tuple) else gx
    return y, gx, {n: p.grad.copy() for n, p in module.named_parameters()}


@pytest.mark.emu
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1), (2, 3, 9, 7)),
        (lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 9, 8)),
        (lambda: nn.LSTM(5, 6, num_layers=2, batch_first=True), (3, 4, 5)),
        (lambda: nn.RNN(5, 6), (4, 3, 5)),
    ],
    ids=["Conv2d", "MaxPool2d", "LSTM", "RNN"],
)
def test_emu_backend_matches_numpy_backend(make, shape):
    _emu_or_skip()
    module = make()
    x = _rng(0).standard_normal(shape).astype(f32)

    def grad_fn(y):
        return _rng(1).standard_normal(y.shape).astype(f32)

    y_ref, gx_ref, grads_ref = _run(module, x, grad_fn)
    with gpunn.use_backend("emu"):
        y, gx, grads = _run(module, x, grad_fn)
    assert_close(y, y_ref, f32, what="forward")
    assert_close(gx, gx_ref, f32, what="grad_x")
    for name, g in grads.items():
        assert_close(g, grads_ref[name], f32, what=f"grad of {name}")


@pytest.mark.parametrize("start_dim, end_dim", [(4, -1), (1, 7), (-5, -1), (2, 1)])
def test_flatten_dims_outside_the_input_raise(start_dim, end_dim):
    """As torch.nn.Flatten: a dimension outside [-ndim, ndim) is an error, not taken modulo
    ndim (Flatten(4) on a 4-D input flattened everything; Flatten(1, 7) acted as (1, 3))."""
    flatten = nn.Flatten(start_dim, end_dim)
    fragment = f"Flatten(start_dim={start_dim}, end_dim={end_dim}) does not fit an input"
    with pytest.raises(ValueError, match=re.escape(fragment)):
        flatten(np.zeros((2, 3, 4, 5), f32))


def test_flatten_matches_torch_for_every_valid_pair(torch_oracle):
    x = np.arange(120, dtype=f32).reshape(2, 3, 4, 5)
    for start in range(-4, 4):
        for end in range(-4, 4):
            if start % 4 > end % 4:
                continue
            want = torch_oracle.nn.Flatten(start, end)(torch_oracle.tensor(x)).numpy()
            got = nn.Flatten(start, end)(x)
            assert got.shape == want.shape and np.array_equal(got, want), (start, end)


def test_cnn_on_an_empty_batch():
    """N = 0 through Conv2d, MaxPool2d, Flatten and Linear: empty results of the right shape
    (Flatten must not ask NumPy to infer a -1 dimension from an empty array)."""
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2)
    )
    y = model(np.zeros((0, 2, 4, 4), f32))
    assert y.shape == (0, 2)
    assert model.backward(np.zeros((0, 2), f32)).shape == (0, 2, 4, 4)
    for p in model.parameters():
        assert p.grad.shape == p.data.shape and not p.grad.any()
    assert nn.Flatten(0, 1)(np.zeros((3, 0, 2), f32)).shape == (0, 2)


def test_cross_entropy_backward_scale_keeps_the_logits_dtype():
    """backward(grad_output) scales the gradient by the loss's gradient: a number keeps the
    logits' dtype; a 0-d array must have it (as PyTorch), not silently promote to float64."""
    loss_fn = nn.CrossEntropyLoss()
    logits = _rng(4).standard_normal((3, 5)).astype(f32)
    loss_fn(logits, np.array([0, 4, 2]))
    unit = loss_fn.backward()
    for scale in (2.0, 2, np.float64(2.0), np.array(2.0, dtype=f32)):
        grad = loss_fn.backward(scale)
        assert grad.dtype == f32, scale
        np.testing.assert_array_equal(grad, unit * f32(2))
    with pytest.raises(TypeError, match="grad_output has dtype float64 but the loss is float32"):
        loss_fn.backward(np.array(2.0))
    with pytest.raises(ValueError, match=re.escape("grad_output must have shape (), got (3,)")):
        loss_fn.backward(np.ones(3, f32))


def test_recurrent_parameters_are_attributes_as_in_pytorch():
    lstm = nn.LSTM(3, 4, num_layers=2, bias=False)
    named = dict(lstm.named_parameters())
    assert set(named) == {"weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"}
    for name, p in named.items():
        assert getattr(lstm, name) is p
    assert not hasattr(lstm, "bias_ih_l0")
