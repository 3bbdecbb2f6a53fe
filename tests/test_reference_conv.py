"""gpunn.reference conv2d against PyTorch (float64 oracle), finite differences and DESIGN.md.

Tolerances are conftest's TOL table: 1e-10 for float64 against torch float64, 1e-5 for the
float32 reference against torch float64 on the same float32-rounded inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from reference_checks import FD_TOL, numerical_grad, rng_for

from gpunn import reference
from gpunn._shapes import conv_out_size, conv_padding

DTYPES = [np.float32, np.float64]

# (N, C, H, W, K, R, S, stride, padding4 (top, bottom, left, right), dilation)
CASES = {
    "odd": (2, 3, 7, 5, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    "batch1_stride_above_kernel": (1, 2, 9, 8, 3, 2, 2, (3, 3), (0, 0, 0, 0), (1, 1)),
    "stride2_pad": (2, 3, 8, 7, 4, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1)),
    "mixed_stride_dilation": (2, 2, 9, 10, 3, 3, 2, (1, 2), (2, 2, 1, 1), (2, 3)),
    "asymmetric_pad": (1, 2, 6, 5, 3, 3, 4, (1, 1), (0, 2, 1, 2), (1, 1)),
    "pad_wider_than_kernel": (1, 2, 3, 3, 2, 2, 2, (1, 1), (3, 3, 3, 3), (1, 1)),
    "one_by_one": (3, 5, 4, 6, 2, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1)),
    "kernel_equals_input": (2, 3, 5, 4, 2, 5, 4, (1, 1), (0, 0, 0, 0), (1, 1)),
    "stride3_dilation2": (1, 2, 11, 12, 2, 3, 3, (3, 3), (1, 2, 2, 1), (2, 2)),
}


def torch_conv(torch, x, w, b, stride, padding4, dilation, grad_y):
    """PyTorch's float64 conv2d with explicit (asymmetric) zero padding, and its gradients."""
    F = torch.nn.functional
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    top, bottom, left, right = padding4
    y = F.conv2d(F.pad(tx, (left, right, top, bottom)), tw, tb, stride=stride, dilation=dilation)
    y.backward(torch.tensor(grad_y, dtype=torch.float64))
    return y.detach(), tx.grad, tw.grad, tb.grad


def conv_inputs(case, dtype, key):
    N, C, H, W, K, R, S, stride, padding4, dilation = case
    rng = rng_for("conv", key)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    OH = conv_out_size(H, R, stride[0], padding4[0] + padding4[1], dilation[0])
    OW = conv_out_size(W, S, stride[1], padding4[2] + padding4[3], dilation[1])
    gy = rng.standard_normal((N, K, OH, OW)).astype(dtype)
    return x, w, b, gy


def check_against_torch(torch, case, dtype, key):
    *_, stride, padding4, dilation = case
    x, w, b, gy = conv_inputs(case, dtype, key)
    y = reference.conv2d_forward(x, w, b, stride, padding4, dilation)
    gx, gw, gb = reference.conv2d_backward(gy, x, w, stride, padding4, dilation, True)
    ty, tgx, tgw, tgb = torch_conv(torch, x, w, b, stride, padding4, dilation, gy)
    for out, ref, what in [(y, ty, "y"), (gx, tgx, "grad_x"), (gw, tgw, "grad_w"), (gb, tgb, "b")]:
        assert out.dtype == dtype, what
        assert_close(out, ref, dtype=dtype, what=what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(CASES))
def test_conv_matches_torch(torch_oracle, name, dtype):
    check_against_torch(torch_oracle, CASES[name], dtype, name)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R,S,dilation", [(2, 2, (1, 1)), (4, 3, (1, 1)), (2, 4, (3, 1))])
def test_conv_same_padding_matches_torch(torch_oracle, R, S, dilation, dtype):
    """'same' with an even effective kernel: the extra row/column goes bottom/right."""
    torch = torch_oracle
    padding4 = conv_padding("same", R, S, (1, 1), dilation)
    case = (2, 3, 6, 7, 2, R, S, (1, 1), padding4, dilation)
    x, w, b, _ = conv_inputs(case, dtype, ("same", R, S))
    y = reference.conv2d_forward(x, w, b, (1, 1), padding4, dilation)
    ty = torch.nn.functional.conv2d(
        torch.tensor(x, dtype=torch.float64),
        torch.tensor(w, dtype=torch.float64),
        torch.tensor(b, dtype=torch.float64),
        padding="same",
        dilation=dilation,
    )
    assert y.shape == (2, 2, 6, 7)
    assert_close(y, ty, dtype=dtype)


# im2col block budgets in bytes, far below the default so that these small cases split into
# several blocks of output positions: 1 byte gives one position per block, 2000 9 to 20
# (a float64 position costs C*R*S*8 = 96 to 216 bytes of im2col here). Blocks then start and
# end inside image rows, and the backward's scatter-add crosses block boundaries.
@pytest.mark.parametrize("block_bytes", [1, 2000])
@pytest.mark.parametrize("name", ["odd", "stride3_dilation2", "mixed_stride_dilation"])
def test_conv_small_blocks_match_torch(torch_oracle, monkeypatch, name, block_bytes):
    """The im2col loop over several blocks of positions is the same convolution as one."""
    N, C, H, W, K, R, S, stride, padding4, dilation = CASES[name]
    monkeypatch.setattr(reference, "COLS_BLOCK_BYTES", block_bytes)
    g = reference._conv_geometry((N, C, H, W), (K, C, R, S), stride, padding4, dilation)
    assert len(reference._position_blocks(g, 8)) > 1
    check_against_torch(torch_oracle, CASES[name], np.float64, ("blocks", name))


def test_conv_bias_none_and_no_bias_grad():
    x, w, b, gy = conv_inputs(CASES["odd"], np.float64, "nobias")
    *_, stride, padding4, dilation = CASES["odd"]
    y0 = reference.conv2d_forward(x, w, None, stride, padding4, dilation)
    y1 = reference.conv2d_forward(x, w, b, stride, padding4, dilation)
    np.testing.assert_allclose(y1 - y0, np.broadcast_to(b.reshape(1, -1, 1, 1), y0.shape))
    grads = reference.conv2d_backward(gy, x, w, stride, padding4, dilation, False)
    assert grads[2] is None


@pytest.mark.parametrize("name", ["odd", "mixed_stride_dilation", "asymmetric_pad"])
def test_conv_backward_finite_differences(name):
    _, _, H, W, _, R, S, stride, padding4, dilation = CASES[name]
    small = (1, 2, H, W, 2, R, S, stride, padding4, dilation)
    x, w, b, gy = conv_inputs(small, np.float64, ("fd", name))

    def loss():
        return float(np.sum(reference.conv2d_forward(x, w, b, stride, padding4, dilation) * gy))

    gx, gw, gb = reference.conv2d_backward(gy, x, w, stride, padding4, dilation, True)
    assert_close(gx, numerical_grad(loss, x), tol=FD_TOL, what="grad_x")
    assert_close(gw, numerical_grad(loss, w), tol=FD_TOL, what="grad_w")
    assert_close(gb, numerical_grad(loss, b), tol=FD_TOL, what="grad_b")


# DESIGN.md's worked example: a 4x4 input and a 3x3 filter, expected outputs from the doc.
DESIGN_X = [[1, 2, 3, 0], [0, 1, 2, 3], [3, 0, 1, 2], [2, 3, 0, 1]]
DESIGN_W = [[2, 0, 1], [0, 1, 2], [1, 0, 2]]
DESIGN_CASES = [
    ((1, 1), (0, 0, 0, 0), [[15, 16], [6, 15]]),
    ((1, 1), (1, 1, 1, 1), [[7, 12, 10, 2], [4, 15, 16, 10], [10, 6, 15, 6], [8, 10, 4, 3]]),
    ((2, 2), (1, 1, 1, 1), [[7, 10], [10, 15]]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,padding4,expected", DESIGN_CASES)
def test_conv_design_worked_example(stride, padding4, expected, dtype):
    x = np.array(DESIGN_X, dtype=dtype).reshape(1, 1, 4, 4)
    w = np.array(DESIGN_W, dtype=dtype).reshape(1, 1, 3, 3)
    y = reference.conv2d_forward(x, w, None, stride, padding4, (1, 1))
    np.testing.assert_array_equal(y[0, 0], np.array(expected, dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_empty_batch(dtype):
    x = np.zeros((0, 3, 7, 6), dtype=dtype)
    w = np.ones((4, 3, 3, 2), dtype=dtype)
    b = np.ones(4, dtype=dtype)
    y = reference.conv2d_forward(x, w, b, (2, 1), (1, 0, 1, 1), (1, 2))
    OH, OW = conv_out_size(7, 3, 2, 1, 1), conv_out_size(6, 2, 1, 2, 2)
    assert y.shape == (0, 4, OH, OW) and y.dtype == dtype
    gx, gw, gb = reference.conv2d_backward(y, x, w, (2, 1), (1, 0, 1, 1), (1, 2), True)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (4,)
    assert not gw.any() and not gb.any()


@pytest.mark.parametrize("C,K", [(0, 4), (3, 0)])
def test_conv_zero_channels(C, K):
    """C = 0: nothing to sum, y is the bias; K = 0: no output, so grad_x is zero."""
    x, w, b, _ = conv_inputs((2, C, 5, 6, K, 3, 2, (1, 1), (1, 0, 1, 1), (1, 1)), np.float64, C)
    y = reference.conv2d_forward(x, w, b, (1, 1), (1, 0, 1, 1), (1, 1))
    assert y.shape == (2, K, 4, 7)
    np.testing.assert_array_equal(y, np.broadcast_to(b.reshape(1, K, 1, 1), y.shape))
    gx, gw, gb = reference.conv2d_backward(
        np.ones_like(y), x, w, (1, 1), (1, 0, 1, 1), (1, 1), True
    )
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (K,)
    assert not gx.any() and not gw.any()
    np.testing.assert_array_equal(gb, np.full(K, 2 * 4 * 7.0))


@st.composite
def conv_shapes(draw):
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding4 = tuple(draw(st.integers(0, 3)) for _ in range(4))
    min_h = max(1, dilation[0] * (R - 1) + 1 - padding4[0] - padding4[1])
    min_w = max(1, dilation[1] * (S - 1) + 1 - padding4[2] - padding4[3])
    H, W = draw(st.integers(min_h, min_h + 6)), draw(st.integers(min_w, min_w + 6))
    N, C, K = draw(st.integers(0, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return (N, C, H, W, K, R, S, stride, padding4, dilation)


@settings(deadline=None, max_examples=40)
@given(case=conv_shapes(), dtype=st.sampled_from(DTYPES))
def test_conv_property_matches_torch(case, dtype):
    from conftest import require_torch

    check_against_torch(require_torch(), case, dtype, case)
