"""gpunn.reference linear, ReLU, tanh and softmax cross-entropy against PyTorch (float64)
and finite differences. These ops are generic in xp; here they run on NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from reference_checks import FD_TOL, numerical_grad, rng_for

from gpunn import reference

DTYPES = [np.float32, np.float64]


def t64(torch, a, grad=True):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(5,), (2, 3), (0,)])
def test_linear_matches_torch(torch_oracle, lead, bias, dtype):
    torch = torch_oracle
    rng = rng_for("linear", lead, bias)
    x = rng.standard_normal((*lead, 7)).astype(dtype)
    w = rng.standard_normal((3, 7)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype) if bias else None
    gy = rng.standard_normal((*lead, 3)).astype(dtype)
    y = reference.linear_forward(x, w, b)
    gx, gw, gb = reference.linear_backward(gy, x, w, bias)
    tx, tw = t64(torch, x), t64(torch, w)
    tb = t64(torch, b) if bias else None
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(gy, dtype=torch.float64))
    assert y.shape == (*lead, 3) and y.dtype == dtype and gx.dtype == dtype
    assert_close(y, ty, dtype=dtype, what="y")
    assert_close(gx, tx.grad, dtype=dtype, what="grad_x")
    assert_close(gw, tw.grad, dtype=dtype, what="grad_w")
    if bias:
        assert_close(gb, tb.grad, dtype=dtype, what="grad_b")
    else:
        assert gb is None


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_and_tanh_match_torch(torch_oracle, dtype):
    torch = torch_oracle
    rng = rng_for("act")
    x = rng.standard_normal((4, 9)).astype(dtype)
    x[0, :3] = [0.0, -0.0, np.nan]
    gy = rng.standard_normal(x.shape).astype(dtype)
    for fwd, bwd, tfn, from_output in [
        (reference.relu_forward, reference.relu_backward, torch.relu, False),
        (reference.tanh_forward, reference.tanh_backward, torch.tanh, True),
    ]:
        tx = t64(torch, x)
        ty = tfn(tx)
        ty.backward(torch.tensor(gy, dtype=torch.float64))
        y = fwd(x)
        g = bwd(gy, y if from_output else x)
        assert y.dtype == dtype and g.dtype == dtype
        assert_close(y, ty, dtype=dtype, what=f"{tfn.__name__} y")
        assert_close(g, tx.grad, dtype=dtype, what=f"{tfn.__name__} grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_cross_entropy_matches_torch(torch_oracle, scale, dtype):
    """Logits of magnitude 1000 must not overflow (log-softmax shifts by the row max)."""
    torch = torch_oracle
    rng = rng_for("ce", scale)
    logits = (rng.standard_normal((6, 5)) * scale).astype(dtype)
    target = rng.integers(0, 5, 6).astype(np.int64)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, saved = reference.cross_entropy_forward(logits, target)
        grad = reference.cross_entropy_backward(saved)
    tl = t64(torch, logits)
    tloss = torch.nn.functional.cross_entropy(tl, torch.tensor(target))
    tloss.backward()
    assert isinstance(loss, np.ndarray) and loss.shape == () and loss.dtype == dtype
    assert grad.dtype == dtype
    assert_close(loss, tloss, dtype=dtype, what="loss")
    assert_close(grad, tl.grad, dtype=dtype, what="grad")
    np.testing.assert_array_equal(grad, reference.cross_entropy_backward(saved))


def test_layers_finite_differences():
    rng = rng_for("layers_fd")
    x = rng.standard_normal((2, 3, 4))
    w = rng.standard_normal((5, 4))
    b = rng.standard_normal(5)
    gy = rng.standard_normal((2, 3, 5))

    def linear_loss():
        return float(np.sum(reference.linear_forward(x, w, b) * gy))

    gx, gw, gb = reference.linear_backward(gy, x, w, True)
    for grad, arr, what in [(gx, x, "x"), (gw, w, "w"), (gb, b, "b")]:
        assert_close(grad, numerical_grad(linear_loss, arr), tol=FD_TOL, what=f"linear {what}")

    logits = rng.standard_normal((4, 3))
    target = np.array([0, 2, 1, 2], dtype=np.int64)

    def ce_loss():
        return float(reference.cross_entropy_forward(logits, target)[0])

    grad = reference.cross_entropy_backward(reference.cross_entropy_forward(logits, target)[1])
    assert_close(grad, numerical_grad(ce_loss, logits), tol=FD_TOL, what="cross-entropy")

    z = rng.standard_normal((3, 4)) + 0.1  # away from ReLU's kink at 0
    gz = rng.standard_normal(z.shape)
    for fwd, bwd, from_output in [
        (reference.relu_forward, reference.relu_backward, False),
        (reference.tanh_forward, reference.tanh_backward, True),
    ]:

        def act_loss(fwd=fwd):
            return float(np.sum(fwd(z) * gz))

        got = bwd(gz, fwd(z) if from_output else z)
        assert_close(got, numerical_grad(act_loss, z), tol=FD_TOL, what=fwd.__name__)


def test_cross_entropy_empty_batch_is_nan_like_torch():
    loss, saved = reference.cross_entropy_forward(np.zeros((0, 4)), np.zeros(0, dtype=np.int64))
    assert loss.shape == () and np.isnan(loss)
    assert reference.cross_entropy_backward(saved).shape == (0, 4)
