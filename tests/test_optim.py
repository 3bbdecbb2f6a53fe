"""gpunn.optim against torch.optim over several steps, in float64 and float32, and its errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import assert_close

from gpunn import optim
from gpunn.nn import Parameter

f32, f64 = np.float32, np.float64
SHAPES = [(3, 4), (5,), (2, 1, 3)]
STEPS = 5


def _setup(torch, dtype):
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    params = [Parameter(d.copy()) for d in data]
    tparams = [torch.tensor(d, requires_grad=True) for d in data]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    return params, tparams, grads


OPTIMIZERS = [
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.9}),
    ("SGD", {"lr": 0.05, "momentum": 0.5, "weight_decay": 0.01}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize("name, kwargs", OPTIMIZERS)
def test_optimizer_matches_torch(torch_oracle, name, kwargs, dtype):
    torch = torch_oracle
    params, tparams, grads = _setup(torch, dtype)
    opt = getattr(optim, name)(params, **kwargs)
    topt = getattr(torch.optim, name)(tparams, **kwargs)
    arrays = [p.data for p in params]
    for step, step_grads in enumerate(grads):
        for p, tp, g in zip(params, tparams, step_grads):
            p.grad = g.copy()
            tp.grad = torch.from_numpy(g.copy())
        # The last parameter has no gradient in every other step: both skip it.
        if step % 2:
            params[-1].grad = None
            tparams[-1].grad = None
        opt.step()
        topt.step()
    for p, tp, a in zip(params, tparams, arrays):
        assert p.data is a  # updated in place
        assert p.data.dtype == dtype
        assert_close(p.data, tp, dtype, what=f"{name} parameters")


def test_parameter_without_grad_is_skipped():
    p, q = Parameter(np.ones(3)), Parameter(np.ones(2))
    p.grad = np.full(3, 2.0)
    opt = optim.Adam([p, q], lr=0.1)
    opt.step()
    np.testing.assert_array_equal(q.data, np.ones(2))
    assert not np.array_equal(p.data, np.ones(3))
    opt.zero_grad()
    assert p.grad is None and q.grad is None


def test_step_error_changes_nothing():
    p, q = Parameter(np.ones(3)), Parameter(np.ones(2))
    opt = optim.SGD([p, q], lr=0.1, momentum=0.9)
    p.grad, q.grad = np.ones(3), np.ones(2)
    opt.step()
    snapshot = (p.data.copy(), q.data.copy(), opt.state[0]["momentum_buffer"].copy())
    p.grad, q.grad = np.ones(3), np.ones(3)  # q's gradient has the wrong shape
    with pytest.raises(ValueError, match=re.escape("params[1].grad has shape (3,)")):
        opt.step()
    q.grad = np.ones(2, dtype=f32)  # a dtype mismatch is a TypeError (API.md, Errors)
    with pytest.raises(
        TypeError, match=re.escape("params[1].grad has dtype float32, but its data")
    ):
        opt.step()
    q.grad = [1.0, 1.0]
    with pytest.raises(TypeError, match=re.escape("params[1].grad must be a numpy.ndarray")):
        opt.step()
    np.testing.assert_array_equal(p.data, snapshot[0])
    np.testing.assert_array_equal(q.data, snapshot[1])
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], snapshot[2])


@pytest.mark.parametrize(
    "make, exc, fragment",
    [
        (lambda ps: optim.SGD(ps, lr=-0.1), ValueError, "lr must be >= 0, got -0.1"),
        (lambda ps: optim.SGD(ps, lr=float("nan")), ValueError, "lr must be >= 0, got nan"),
        (lambda ps: optim.SGD(ps, 0.1, momentum=-1), ValueError, "momentum must be >= 0"),
        (lambda ps: optim.SGD(ps, 0.1, weight_decay=-1), ValueError, "weight_decay must be >= 0"),
        (lambda ps: optim.SGD(ps, lr="0.1"), TypeError, "lr must be a real number, got '0.1'"),
        (lambda ps: optim.Adam(ps, eps=-1.0), ValueError, "eps must be >= 0"),
        (lambda ps: optim.Adam(ps, betas=(0.9, 1.0)), ValueError, "betas[1] must be in [0, 1)"),
        (lambda ps: optim.Adam(ps, betas=(-0.1, 0.9)), ValueError, "betas[0] must be in [0, 1)"),
        (lambda ps: optim.Adam(ps, betas=0.9), TypeError, "betas must be a pair of numbers"),
        (lambda ps: optim.Adam([]), ValueError, "params is empty"),
        (lambda ps: optim.Adam([np.ones(2)]), TypeError, "params[0] must be a gpunn.nn.Parameter"),
        (lambda ps: optim.SGD(ps[0], 0.1), TypeError, "got a single Parameter"),
    ],
)
def test_optimizer_argument_errors(make, exc, fragment):
    with pytest.raises(exc, match=re.escape(fragment)):
        make([Parameter(np.ones(2))])
