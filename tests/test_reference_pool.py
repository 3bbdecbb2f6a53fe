"""gpunn.reference max pooling against PyTorch's CPU max_pool2d: values and indices exactly.

Pooling selects, it does not round, so forward values, indices and (with one window per
element or small-integer gradients) backward sums are compared bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference_checks import FD_TOL, numerical_grad, rng_for

from gpunn import reference
from gpunn._shapes import pool_out_size

DTYPES = [np.float32, np.float64]

# (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)
CASES = {
    "odd": (2, 3, 7, 5, (3, 3), (2, 2), (1, 1), (1, 1), False),
    "batch1_overlapping": (1, 2, 6, 7, (3, 2), (1, 1), (0, 0), (1, 1), False),
    "stride_above_kernel": (2, 1, 9, 10, (2, 2), (3, 4), (0, 0), (1, 1), False),
    "padding_at_max": (2, 2, 5, 6, (4, 5), (2, 2), (2, 2), (1, 1), False),
    "ceil_partial_window": (1, 2, 6, 7, (3, 3), (2, 2), (0, 0), (1, 1), True),
    "ceil_with_padding": (2, 1, 5, 8, (2, 3), (2, 3), (1, 1), (1, 1), True),
    "dilation": (2, 2, 9, 8, (2, 3), (1, 2), (1, 1), (3, 2), False),
    "dilation_ceil": (1, 2, 10, 9, (3, 2), (3, 2), (1, 1), (2, 3), True),
    "kernel_one": (2, 2, 4, 5, (1, 1), (2, 2), (0, 0), (1, 1), True),
}

# How a case's input is filled: every value distinct, small integers (ties), NaNs mixed in,
# or -inf mixed in (a window of -inf must still point at an element inside the image).
FILLS = ["distinct", "ties", "nan", "neg_inf"]


def pool_input(shape, fill, dtype, key):
    rng = rng_for("pool", key, fill)
    if fill == "distinct":
        x = rng.permutation(np.prod(shape)).reshape(shape) * 0.25
    else:
        x = rng.integers(-2, 3, shape).astype(np.float64)
    if fill == "nan":
        x[rng.random(shape) < 0.2] = np.nan
    if fill == "neg_inf":
        x[rng.random(shape) < 0.5] = -np.inf
    return x.astype(dtype)


def torch_pool(torch, x, kernel, stride, padding, dilation, ceil_mode, grad_y):
    tx = torch.tensor(x, requires_grad=True)
    y, idx = torch.nn.functional.max_pool2d(
        tx, kernel, stride, padding, dilation, ceil_mode, return_indices=True
    )
    y.backward(torch.tensor(grad_y))
    return y.detach().numpy(), idx.numpy(), tx.grad.numpy()


def check_against_torch(torch, case, fill, dtype, key):
    N, C, H, W, kernel, stride, padding, dilation, ceil_mode = case
    x = pool_input((N, C, H, W), fill, dtype, key)
    geometry = (kernel, stride, padding, dilation)
    y, idx = reference.max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode)
    # Small-integer gradients: sums of overlapping windows are exact in either order.
    gy = rng_for("pool_grad", key).integers(-4, 5, y.shape).astype(dtype)
    gx = reference.max_pool2d_backward(gy, idx, x.shape, geometry)
    ty, tidx, tgx = torch_pool(torch, x, kernel, stride, padding, dilation, ceil_mode, gy)
    assert y.dtype == dtype and idx.dtype == np.int64 and gx.dtype == dtype
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(idx, tidx)
    np.testing.assert_array_equal(gx, tgx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", FILLS)
@pytest.mark.parametrize("name", list(CASES))
def test_pool_matches_torch_exactly(torch_oracle, name, fill, dtype):
    check_against_torch(torch_oracle, CASES[name], fill, dtype, name)


def test_pool_output_size_uses_ceil_rule():
    """Ceil mode keeps a partial window but never one starting in the bottom/right padding."""
    x = pool_input((1, 1, 5, 5), "distinct", np.float64, "ceil_rule")
    y, _ = reference.max_pool2d_forward(x, (2, 2), (2, 2), (1, 1), (1, 1), True)
    assert y.shape == (1, 1, 3, 3)
    assert y.shape[2] == pool_out_size(5, 2, 2, 1, 1, True)


def test_pool_ties_pick_first_in_window():
    x = np.zeros((1, 1, 3, 3))
    _, idx = reference.max_pool2d_forward(x, (2, 2), (1, 1), (0, 0), (1, 1), False)
    np.testing.assert_array_equal(idx[0, 0], [[0, 1], [3, 4]])


def test_pool_backward_finite_differences():
    """Distinct values keep every argmax fixed under a 1e-6 nudge, so the gradient is exact."""
    N, C, H, W, kernel, stride, padding, dilation, ceil_mode = CASES["dilation_ceil"]
    x = pool_input((N, C, H, W), "distinct", np.float64, "fd")
    y, idx = reference.max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode)
    gy = rng_for("pool_fd").standard_normal(y.shape)

    def loss():
        out, _ = reference.max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode)
        return float(np.sum(out * gy))

    gx = reference.max_pool2d_backward(gy, idx, x.shape, None)
    assert_close(gx, numerical_grad(loss, x), tol=FD_TOL, what="grad_x")


@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_empty_batch(dtype):
    x = np.zeros((0, 2, 7, 6), dtype=dtype)
    y, idx = reference.max_pool2d_forward(x, (3, 2), (2, 2), (1, 1), (1, 1), True)
    shape = (0, 2, pool_out_size(7, 3, 2, 1, 1, True), pool_out_size(6, 2, 2, 1, 1, True))
    assert y.shape == shape and idx.shape == shape and idx.dtype == np.int64
    gx = reference.max_pool2d_backward(y, idx, x.shape, None)
    assert gx.shape == x.shape and gx.dtype == dtype


def window_in_padding(size, k, stride, pad, dilation, ceil_mode):
    """True when some window along one axis has no tap inside [0, size)."""
    out = pool_out_size(size, k, stride, pad, dilation, ceil_mode)
    return any(
        all(not 0 <= o * stride - pad + t * dilation < size for t in range(k)) for o in range(out)
    )


def test_pool_window_wholly_in_padding():
    """Dilation 3 over W=2 with padding 1: the one window taps w=-1 and w=2, both outside.

    PyTorch returns index 2 there (outside the plane); the reference says -1, and backward
    passes that window no gradient.
    """
    x = np.array([[[[1.0, 2.0]]]])
    assert window_in_padding(2, 2, 4, 1, 3, False)
    y, idx = reference.max_pool2d_forward(x, (1, 2), (3, 4), (0, 1), (1, 3), False)
    np.testing.assert_array_equal(y, [[[[-np.inf]]]])
    np.testing.assert_array_equal(idx, [[[[-1]]]])
    gx = reference.max_pool2d_backward(np.ones_like(y), idx, x.shape, None)
    np.testing.assert_array_equal(gx, np.zeros_like(x))


@st.composite
def pool_cases(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    min_h = max(1, dilation[0] * (kernel[0] - 1) + 1 - 2 * padding[0])
    min_w = max(1, dilation[1] * (kernel[1] - 1) + 1 - 2 * padding[1])
    H, W = draw(st.integers(min_h, min_h + 7)), draw(st.integers(min_w, min_w + 7))
    N, C = draw(st.integers(0, 3)), draw(st.integers(1, 3))
    ceil_mode = draw(st.booleans())
    # PyTorch's index for a window wholly in the padding is not an element (tested above).
    assume(not window_in_padding(H, kernel[0], stride[0], padding[0], dilation[0], ceil_mode))
    assume(not window_in_padding(W, kernel[1], stride[1], padding[1], dilation[1], ceil_mode))
    return (N, C, H, W, kernel, stride, padding, dilation, ceil_mode)


@settings(deadline=None, max_examples=40)
@given(case=pool_cases(), fill=st.sampled_from(FILLS), dtype=st.sampled_from(DTYPES))
def test_pool_property_matches_torch(case, fill, dtype):
    from conftest import require_torch

    check_against_torch(require_torch(), case, fill, dtype, case)
