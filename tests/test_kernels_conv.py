"""kernels/conv2d.cu through gpunn._kernels_conv, on the emulator (CI) and the GPU (mark gpu).

Every check compares float32 kernel output with gpunn.reference in float64 on the same
(float32-rounded) inputs, tolerance TOL[float32] from conftest (norm-wise), and again with
PyTorch's float64 conv2d and autograd. Shapes are chosen to hit the kernels' edges: partial
tiles in every GEMM dimension, padding past the border, strides and dilations, split-K.
Emulated launches stay near 10^5 threads x barriers.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpunn import _kernels_conv as kc
from gpunn import reference
from gpunn._loader import module
from gpunn._shapes import conv_out_size, conv_padding
from tests.conftest import assert_close, to_numpy


def _case(N, C, H, W, K, R, S, stride=1, padding4=(0, 0, 0, 0), dilation=1, bias=True):
    return {
        "N": N,
        "C": C,
        "H": H,
        "W": W,
        "K": K,
        "R": R,
        "S": S,
        "stride": (stride, stride) if isinstance(stride, int) else stride,
        "padding4": padding4,
        "dilation": (dilation, dilation) if isinstance(dilation, int) else dilation,
        "bias": bias,
    }


CASES = {
    # odd sizes, pad 1: every output pixel tile is partial (2*7*9 = 126 < 128 columns)
    "odd_pad1": _case(2, 3, 7, 9, 5, 3, 3, padding4=(1, 1, 1, 1)),
    # batch 1, stride larger than the kernel: some input pixels get no gradient at all
    "batch1_stride_gt_kernel": _case(1, 2, 13, 11, 3, 2, 2, stride=(3, 4)),
    # padding past dil*(R-1): the outer output rows see only padding (y = bias there)
    "padding_max": _case(2, 2, 5, 6, 3, 3, 3, padding4=(3, 3, 2, 2)),
    "dilation2": _case(2, 3, 10, 9, 4, 3, 3, padding4=(2, 2, 2, 2), dilation=2),
    # 'same' with an even kernel: the extra row and column go at the bottom and right
    "same_even_asymmetric": _case(
        2, 3, 8, 7, 4, 4, 4, padding4=conv_padding("same", 4, 4, (1, 1), (1, 1))
    ),
    # C*R*S = 45 (not a multiple of the BK = 8 slice), K = 70 (two row tiles, the second
    # partial), strides and dilation differing per axis, no bias
    "partial_tiles": _case(
        1, 5, 11, 10, 70, 3, 3, stride=(2, 1), padding4=(1, 0, 2, 1), dilation=(1, 2), bias=False
    ),
    "filter_1x1": _case(2, 9, 6, 5, 13, 1, 1, stride=2),
    # 2*17*17 = 578 pixels: the weight gradient is split over two chunks, and the forward
    # spans five column tiles
    "split_k": _case(2, 3, 17, 17, 5, 3, 3, padding4=(1, 1, 1, 1)),
}


def _inputs(case, seed=0):
    """float64 arrays holding float32 values: the kernels see exactly what the reference sees."""
    rng = np.random.default_rng(seed)

    def draw(*shape):
        return rng.standard_normal(shape).astype(np.float32).astype(np.float64)

    x = draw(case["N"], case["C"], case["H"], case["W"])
    w = draw(case["K"], case["C"], case["R"], case["S"])
    b = draw(case["K"]) if case["bias"] else None
    OH = conv_out_size(
        case["H"], case["R"], case["stride"][0], sum(case["padding4"][:2]), case["dilation"][0]
    )
    OW = conv_out_size(
        case["W"], case["S"], case["stride"][1], sum(case["padding4"][2:]), case["dilation"][1]
    )
    gy = draw(case["N"], case["K"], OH, OW)
    return x, w, b, gy


def _geometry(case):
    return case["stride"], case["padding4"], case["dilation"]


def _on(backend, *arrays):
    return [None if a is None else backend.asarray(a) for a in arrays]


def _torch_grads(torch, case, x, w, b, gy):
    """y and (grad_x, grad_w, grad_b) from PyTorch float64 autograd."""
    F = torch.nn.functional
    stride, (top, bottom, left, right), dilation = _geometry(case)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    y = F.conv2d(F.pad(xt, (left, right, top, bottom)), wt, bt, stride=stride, dilation=dilation)
    y.backward(torch.tensor(gy))
    grads = (xt.grad.numpy(), wt.grad.numpy(), None if bt is None else bt.grad.numpy())
    return y.detach().numpy(), grads


def _assert_grads(got, want, what):
    for name, g, r in zip(("grad_x", "grad_w", "grad_b"), got, want):
        if r is None:
            assert g is None, f"{what}: {name} should be None"
        else:
            assert_close(g, r, np.float32, what=f"{what} {name}")


@pytest.mark.parametrize("name", CASES)
def test_forward_matches_reference(kernel_backend, name):
    case = CASES[name]
    x, w, b, _ = _inputs(case)
    y = kc.conv2d_forward(*_on(kernel_backend, x, w, b), *_geometry(case))
    assert_close(y, reference.conv2d_forward(x, w, b, *_geometry(case)), np.float32)


@pytest.mark.parametrize("name", CASES)
def test_forward_matches_torch(kernel_backend, torch_oracle, name):
    case = CASES[name]
    x, w, b, gy = _inputs(case)
    y = kc.conv2d_forward(*_on(kernel_backend, x, w, b), *_geometry(case))
    assert_close(y, _torch_grads(torch_oracle, case, x, w, b, gy)[0], np.float32)


@pytest.mark.parametrize("name", CASES)
def test_backward_matches_reference(kernel_backend, name):
    case = CASES[name]
    x, w, b, gy = _inputs(case)
    got = kc.conv2d_backward(*_on(kernel_backend, gy, x, w), *_geometry(case), b is not None)
    want = reference.conv2d_backward(gy, x, w, *_geometry(case), b is not None)
    _assert_grads(got, want, name)


@pytest.mark.parametrize("name", CASES)
def test_backward_matches_torch(kernel_backend, torch_oracle, name):
    case = CASES[name]
    x, w, b, gy = _inputs(case)
    got = kc.conv2d_backward(*_on(kernel_backend, gy, x, w), *_geometry(case), b is not None)
    _assert_grads(got, _torch_grads(torch_oracle, case, x, w, b, gy)[1], name)


def test_split_k_case_really_splits():
    """The split_k case runs the workspace path (chunks > 1) and the fixed-order sum."""
    case = CASES["split_k"]
    npix = case["N"] * case["H"] * case["W"]  # stride 1, 'same' padding: OH*OW = H*W
    _, chunks = kc.weight_grad_chunks(npix, case["K"], case["C"] * case["R"] * case["S"])
    assert chunks > 1


@pytest.mark.parametrize("name", ["split_k", "dilation2"])
def test_backward_is_bit_identical_across_runs(kernel_backend, name):
    case = CASES[name]
    x, w, _, gy = _inputs(case, seed=1)
    args = (*_on(kernel_backend, gy, x, w), *_geometry(case), True)
    first = [to_numpy(a).copy() for a in kc.conv2d_backward(*args)]
    second = [to_numpy(a) for a in kc.conv2d_backward(*args)]
    for name_, a, b in zip(("grad_x", "grad_w", "grad_b"), first, second):
        assert np.array_equal(a, b), f"{name_} differs between two runs"


def test_notes_worked_example(kernel_backend):
    """The design notes' 4x4 input and 3x3 filter (small integers: the sums are exact)."""
    x = np.array([[1, 2, 3, 0], [0, 1, 2, 3], [3, 0, 1, 2], [2, 3, 0, 1]], float)[None, None]
    w = np.array([[2, 0, 1], [0, 1, 2], [1, 0, 2]], float)[None, None]
    xb, wb = _on(kernel_backend, x, w)
    no_pad = kc.conv2d_forward(xb, wb, None, (1, 1), (0, 0, 0, 0), (1, 1))
    pad1 = kc.conv2d_forward(xb, wb, None, (1, 1), (1, 1, 1, 1), (1, 1))
    pad1_stride2 = kc.conv2d_forward(xb, wb, None, (2, 2), (1, 1, 1, 1), (1, 1))
    assert to_numpy(no_pad)[0, 0].tolist() == [[15, 16], [6, 15]]
    assert to_numpy(pad1)[0, 0].tolist() == [
        [7, 12, 10, 2],
        [4, 15, 16, 10],
        [10, 6, 15, 6],
        [8, 10, 4, 3],
    ]
    assert to_numpy(pad1_stride2)[0, 0].tolist() == [[7, 10], [10, 15]]


def test_empty_batch(kernel_backend):
    case = CASES["odd_pad1"]
    x, w, b, gy = _inputs(case)
    x0, gy0 = x[:0], gy[:0]
    y = kc.conv2d_forward(*_on(kernel_backend, x0, w, b), *_geometry(case))
    assert y.shape == (0, case["K"]) + gy.shape[2:]
    gx, gw, gb = kc.conv2d_backward(*_on(kernel_backend, gy0, x0, w), *_geometry(case), True)
    assert gx.shape == x0.shape
    assert gw.shape == w.shape and not to_numpy(gw).any()
    assert gb.shape == (case["K"],) and not to_numpy(gb).any()


@pytest.mark.parametrize(
    "x_shape, w_shape, padding4",
    [
        ((2, 3, 5, 5), (0, 3, 3, 3), (0, 0, 0, 0)),  # K = 0: grad_y is empty, grad_x is not
        ((2, 0, 5, 5), (4, 0, 3, 3), (0, 0, 0, 0)),  # C = 0: no reduction, grad_x empty
        ((2, 3, 0, 4), (2, 3, 1, 1), (1, 1, 1, 1)),  # H = 0: only padding, y = bias
    ],
)
def test_degenerate_sizes_match_reference(kernel_backend, x_shape, w_shape, padding4):
    """Zero output channels, zero input channels or an empty image (with N > 0): the
    reference's zeros and bias-only outputs, no empty grid launched, nothing uninitialised."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(np.float32).astype(np.float64)
    w = rng.standard_normal(w_shape).astype(np.float32).astype(np.float64)
    b = rng.standard_normal(w_shape[:1]).astype(np.float32).astype(np.float64)
    geometry = ((1, 1), padding4, (1, 1))
    want_y = reference.conv2d_forward(x, w, b, *geometry)
    y = kc.conv2d_forward(*_on(kernel_backend, x, w, b), *geometry)
    assert np.array_equal(to_numpy(y), want_y.astype(np.float32))
    gy = rng.standard_normal(want_y.shape).astype(np.float32).astype(np.float64)
    want = reference.conv2d_backward(gy, x, w, *geometry, True)
    got = kc.conv2d_backward(*_on(kernel_backend, gy, x, w), *geometry, True)
    _assert_grads(got, want, f"x {x_shape}, weight {w_shape}")


# 64-bit offsets. A CPU cannot hold a tensor past 2^31 elements for an emulated launch, so
# conv2d_index_probe runs the kernels' own operand helpers (the same XGather, GyGather and
# A-operand code that conv2d_forward/grad_input/grad_weight call) on geometries whose
# tensors pass 2^31 elements, at the far corners and at random points, and returns the
# offsets they compute. Python ints (unbounded) give the expected offsets; the test insists
# that some of them pass 2^31, so 32-bit arithmetic anywhere in the helpers would fail it.
PROBE_GEOMETRIES = {
    # x 3*1000*1000*1000 = 3e9 and grad_y 3*1000*998*998 = 3e9 elements: the x gather, the
    # grad_y gather and grad weight's A operand pass 2^31 (columns 0, 1, 4)
    "large_x": {
        "N": 3,
        "C": 1000,
        "H": 1000,
        "W": 1000,
        "K": 1000,
        "R": 3,
        "S": 3,
        "stride": (1, 1),
        "pad": (1, 1),
        "dilation": (2, 2),
        "beyond_int32": (0, 1, 4),
    },
    # weight 3000*100000*3*3 = 2.7e9 elements: both weight operands pass 2^31, and x
    # (2*100000*600*500) too (columns 0, 2, 3)
    "large_weight": {
        "N": 2,
        "C": 100000,
        "H": 600,
        "W": 500,
        "K": 3000,
        "R": 3,
        "S": 3,
        "stride": (2, 1),
        "pad": (1, 1),
        "dilation": (1, 1),
        "beyond_int32": (0, 2, 3),
    },
}


def _probe_points(g, OH, OW, rng, count):
    """Pixel, tap and row indices: the extreme corners first, then random ones."""
    p_max = min(g["N"] * OH * OW, g["N"] * g["H"] * g["W"]) - 1
    q_max = min(g["C"], g["K"]) * g["R"] * g["S"] - 1
    m_max = min(g["C"], g["K"]) - 1
    p = np.concatenate([[p_max, 0], rng.integers(0, p_max + 1, count - 2)])
    q = np.concatenate([[q_max, 0], rng.integers(0, q_max + 1, count - 2)])
    m = np.concatenate([[m_max, 0], rng.integers(0, m_max + 1, count - 2)])
    oh = np.concatenate([[OH - 1, 0], rng.integers(0, OH, count - 2)])
    ow = np.concatenate([[OW - 1, 0], rng.integers(0, OW, count - 2)])
    return [a.astype(np.int32) for a in (p, q, m, oh, ow)]


def _expected_offsets(g, OH, OW, p, q, m, oh, ow):
    """The same five offsets as conv2d_index_probe, from the NCHW formulas in Python ints."""
    C, H, W, K, R, S = (g[k] for k in ("C", "H", "W", "K", "R", "S"))
    (sh, sw), (ph, pw), (dh, dw) = g["stride"], g["pad"], g["dilation"]
    p, q, m, oh, ow = (int(v) for v in (p, q, m, oh, ow))
    # forward B: p = (n, oh, ow) over N*OH*OW, q = (c, r, s)
    n, oh_p, ow_p = p // (OH * OW), p // OW % OH, p % OW
    c, r, s = q // (R * S), q // S % R, q % S
    ih, iw = oh_p * sh - ph + r * dh, ow_p * sw - pw + s * dw
    x_off = ((n * C + c) * H + ih) * W + iw
    # grad input B: p = (n, h, w) over N*H*W, q = (k, r, s), at output (oh, ow)
    gy_off = ((p // (H * W) * K + q // (R * S)) * OH + oh) * OW + ow
    # forward A: w[m, q]; grad input A: w[k, c = m, r, s]; grad weight A: grad_y[n, m, oh, ow]
    w_fwd = m * C * R * S + q
    w_t = (q // (R * S) * C + m) * R * S + q % (R * S)
    gy_a = (n * K + m) * OH * OW + p % (OH * OW)
    return [x_off, gy_off, w_fwd, w_t, gy_a]


@pytest.mark.parametrize("name", PROBE_GEOMETRIES)
def test_index_arithmetic_is_64_bit(kernel_backend, name):
    g = PROBE_GEOMETRIES[name]
    OH = conv_out_size(g["H"], g["R"], g["stride"][0], 2 * g["pad"][0], g["dilation"][0])
    OW = conv_out_size(g["W"], g["S"], g["stride"][1], 2 * g["pad"][1], g["dilation"][1])
    count = 64
    points = _probe_points(g, OH, OW, np.random.default_rng(7), count)
    xp = kernel_backend.xp
    out = xp.zeros((count, 5), dtype=np.int64)  # (count, 5)
    geometry = (
        g["N"],
        g["C"],
        g["H"],
        g["W"],
        g["K"],
        g["R"],
        g["S"],
        OH,
        OW,
        *g["stride"],
        g["pad"][0],
        g["pad"][1],
        *g["dilation"],
    )
    fn = module(xp, "conv2d").get_function("conv2d_index_probe")
    fn(
        (1, 1, 1),
        (count, 1, 1),
        (*[xp.asarray(a) for a in points], out, np.int32(count), *[np.int32(v) for v in geometry]),
    )
    expected = np.array([_expected_offsets(g, OH, OW, *pt) for pt in zip(*points)], dtype=np.int64)
    beyond = list(g["beyond_int32"])
    assert (expected[:, beyond] >= 2**31).any(axis=0).all(), "the geometry must need 64 bits"
    np.testing.assert_array_equal(to_numpy(out), expected)
