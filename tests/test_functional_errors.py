"""Every bad input listed under Errors in API.md raises its exception class, at once, with a
message naming the argument; the caller's arrays are left unchanged. Also: empty batches and
non-contiguous inputs."""

from __future__ import annotations

import re
import types

import numpy as np
import pytest
from conftest import assert_close

import gpunn
import gpunn._checks
from gpunn import functional as F

f32, f64 = np.float32, np.float64
_rng = np.random.default_rng(7)

# Valid arguments that each case below spoils in one way (shapes are deliberately odd).
X = _rng.standard_normal((2, 3, 7, 6)).astype(f32)  # (N, C, H, W)
W = _rng.standard_normal((4, 3, 3, 2)).astype(f32)  # (K, C, R, S)
B = _rng.standard_normal(4).astype(f32)  # (K,)
GY = _rng.standard_normal((2, 4, 5, 5)).astype(f32)  # conv2d(X, W) output shape
PY, PI = F.max_pool2d(X, 2, return_indices=True)  # (2, 3, 3, 3)
T_, N_, I_, HID = 3, 2, 5, 4
XS = _rng.standard_normal((T_, N_, I_)).astype(f32)  # (T, N, I)
H0 = _rng.standard_normal((N_, HID)).astype(f32)
WIH = _rng.standard_normal((4 * HID, I_)).astype(f32)
WHH = _rng.standard_normal((4 * HID, HID)).astype(f32)
BIH = _rng.standard_normal(4 * HID).astype(f32)
LOGITS = _rng.standard_normal((4, 3)).astype(f32)
TARGET = np.array([0, 2, 1, 2], dtype=np.int64)
ALL = [X, W, B, GY, PY, PI, XS, H0, WIH, WHH, BIH, LOGITS, TARGET]
SNAPSHOT = [a.copy() for a in ALL]


def _lstm(**over):
    args = {"x": XS, "h0": H0, "c0": H0, "weight_ih": WIH, "weight_hh": WHH}
    return F.lstm(**{**args, "bias_ih": BIH, "bias_hh": BIH, **over})


# (exception, message fragment that must appear, call)
CASES = {
    # TypeError: array kind and dtype
    "x is a list": (
        TypeError,
        "x must be a numpy.ndarray or cupy.ndarray, got list",
        lambda: F.conv2d(X.tolist(), W),
    ),
    "weight is a scalar": (TypeError, "weight must be a numpy.ndarray", lambda: F.conv2d(X, 1.0)),
    # None is accepted only for the optional biases; a required array given as None must not
    # fail later as an AttributeError on None.ndim
    "x is None": (
        TypeError,
        "x must be a numpy.ndarray or cupy.ndarray, got NoneType",
        lambda: F.conv2d(None, W),
    ),
    "conv grad_y is None": (
        TypeError,
        "grad_y must be a numpy.ndarray",
        lambda: F.conv2d_backward(None, X, W),
    ),
    "pool x is None": (TypeError, "x must be a numpy.ndarray", lambda: F.max_pool2d(None, 2)),
    "pool grad_y is None": (
        TypeError,
        "grad_y must be a numpy.ndarray",
        lambda: F.max_pool2d_backward(None, PI, X.shape),
    ),
    "lstm h0 is None": (TypeError, "h0 must be a numpy.ndarray", lambda: _lstm(h0=None)),
    "lstm_cell gates is None": (
        TypeError,
        "gates must be a numpy.ndarray",
        lambda: F.lstm_cell(None, H0),
    ),
    "linear weight is None": (
        TypeError,
        "weight must be a numpy.ndarray",
        lambda: F.linear(LOGITS, None),
    ),
    "relu x is None": (TypeError, "x must be a numpy.ndarray", lambda: F.relu(None)),
    "tanh_backward y is None": (
        TypeError,
        "y must be a numpy.ndarray",
        lambda: F.tanh_backward(LOGITS, None),
    ),
    "cross_entropy logits is None": (
        TypeError,
        "logits must be a numpy.ndarray",
        lambda: F.cross_entropy(None, TARGET),
    ),
    "x integer": (
        TypeError,
        "x must have dtype float32 or float64, got int32",
        lambda: F.conv2d(X.astype(np.int32), W),
    ),
    "x complex": (
        TypeError,
        "x must have dtype float32 or float64, got complex64",
        lambda: F.max_pool2d(X.astype(np.complex64), 2),
    ),
    "x float16": (TypeError, "got float16", lambda: F.conv2d(X.astype(np.float16), W)),
    "mixed dtypes conv": (
        TypeError,
        "x has dtype float32 but weight has dtype float64",
        lambda: F.conv2d(X, W.astype(f64)),
    ),
    "mixed dtypes bias": (
        TypeError,
        "x has dtype float32 but bias has dtype float64",
        lambda: F.conv2d(X, W, B.astype(f64)),
    ),
    "mixed dtypes lstm": (
        TypeError,
        "x has dtype float32 but c0 has dtype float64",
        lambda: _lstm(c0=H0.astype(f64)),
    ),
    "mixed dtypes backward": (
        TypeError,
        "grad_y has dtype float64 but x has dtype float32",
        lambda: F.conv2d_backward(GY.astype(f64), X, W),
    ),
    "bias flag int": (
        TypeError,
        "bias must be a bool, got 1",
        lambda: F.conv2d_backward(GY, X, W, bias=1),
    ),
    "bias flag None": (
        TypeError,
        "bias must be a bool, got None",
        lambda: F.conv2d_backward(GY, X, W, bias=None),
    ),
    "bias flag array": (
        TypeError,
        "bias must be a bool",
        lambda: F.conv2d_backward(GY, X, W, bias=B),
    ),
    "indices float": (
        TypeError,
        "indices must have dtype int64, got float32",
        lambda: F.max_pool2d_backward(PY, PY, X.shape),
    ),
    "target float": (
        TypeError,
        "target must hold int64 class indices, got dtype float32",
        lambda: F.cross_entropy(LOGITS, TARGET.astype(f32)),
    ),
    "stride float": (
        TypeError,
        "stride must be an int or a pair of ints, got 1.5",
        lambda: F.conv2d(X, W, stride=1.5),
    ),
    # ValueError: ranks and shapes
    "x rank 3": (
        ValueError,
        "x must be 4-D (N, C, H, W), got shape (3, 7, 6)",
        lambda: F.conv2d(X[0], W),
    ),
    "weight rank 2": (
        ValueError,
        "weight must be 4-D (K, C, R, S), got shape (4, 3)",
        lambda: F.conv2d(X, W[:, :, 0, 0]),
    ),
    "pool x rank 5": (
        ValueError,
        "x must be 4-D (N, C, H, W), got shape (1, 2, 3, 7, 6)",
        lambda: F.max_pool2d(X[None], 2),
    ),
    "lstm x rank 2": (
        ValueError,
        "x must be 3-D (T, N, I), got shape (3, 2)",
        lambda: _lstm(x=XS[:, :, 0]),
    ),
    "channel mismatch": (
        ValueError,
        "x has 3 input channels (shape (2, 3, 7, 6)) but weight expects 2",
        lambda: F.conv2d(X, W[:, :2]),
    ),
    "bias shape": (
        ValueError,
        "bias must have shape (4,), got (3,)",
        lambda: F.conv2d(X, W, B[:3]),
    ),
    "grad_y shape": (
        ValueError,
        "grad_y must have shape (2, 4, 5, 5), got (2, 4, 5, 4)",
        lambda: F.conv2d_backward(GY[..., :4], X, W),
    ),
    "lstm input size": (
        ValueError,
        "x has 5 input features (shape (3, 2, 5)) but weight_ih expects 4 (shape (16, 4))",
        lambda: _lstm(weight_ih=WIH[:, :4]),
    ),
    "lstm h0 shape": (
        ValueError,
        "h0 must have shape (2, 4) (N=2 from x of shape (3, 2, 5)), got (1, 4)",
        lambda: _lstm(h0=H0[:1]),
    ),
    "lstm one bias": (
        ValueError,
        "bias_ih and bias_hh must both be arrays or both be None",
        lambda: _lstm(bias_hh=None),
    ),
    "lstm_cell gates": (
        ValueError,
        "gates must have shape (2, 16) ((N, 4*HID) for c_prev of shape (2, 4)), got (2, 12)",
        lambda: F.lstm_cell(WHH.reshape(4, 16)[:2, :12], H0),
    ),
    "rnn weights sized for an LSTM": (
        ValueError,
        (
            "weight_ih must have shape (4, 5) (hidden size HID=4 from h0 of shape (2, 4)), "
            "got (16, 5)"
        ),
        lambda: F.rnn_tanh(XS, H0, WIH, WHH, None, None),
    ),
    "indices shape": (
        ValueError,
        "indices must have shape (2, 3, 3, 3), got (2, 3, 3, 2)",
        lambda: F.max_pool2d_backward(PY, PI[..., :2], X.shape),
    ),
    "input_shape N": (
        ValueError,
        "input_shape (3, 3, 7, 6) must have the N, C of grad_y",
        lambda: F.max_pool2d_backward(PY, PI, (3, 3, 7, 6)),
    ),
    "indices range": (
        ValueError,
        "indices must lie in [0, H*W) = [0, 12)",
        lambda: F.max_pool2d_backward(PY, PI, (2, 3, 3, 4)),
    ),
    "target range": (
        ValueError,
        "target must hold class indices in [0, 3)",
        lambda: F.cross_entropy(LOGITS, TARGET + 1),
    ),
    # ValueError: hyper-parameters
    "conv stride 0": (ValueError, "stride must be positive, got 0", lambda: F.conv2d(X, W, B, 0)),
    "conv dilation negative": (
        ValueError,
        "dilation must be positive, got (1, -1)",
        lambda: F.conv2d(X, W, dilation=(1, -1)),
    ),
    "conv padding negative": (
        ValueError,
        "padding must be non-negative, got -1",
        lambda: F.conv2d(X, W, padding=-1),
    ),
    "conv padding word": (
        ValueError,
        "padding must be an int, a pair, 'valid' or 'same'",
        lambda: F.conv2d(X, W, padding="full"),
    ),
    "same with stride 2": (
        ValueError,
        "padding='same' needs stride 1",
        lambda: F.conv2d(X, W, stride=2, padding="same"),
    ),
    "filter larger than padded input": (
        ValueError,
        "the filter (dilated size (7, 4)) is larger than the padded input (6, 6)",
        lambda: F.conv2d(X[:, :, :6], W, dilation=3),
    ),
    "pool kernel 0": (
        ValueError,
        "kernel_size must be positive, got 0",
        lambda: F.max_pool2d(X, 0),
    ),
    "pool stride negative": (
        ValueError,
        "stride must be positive, got -2",
        lambda: F.max_pool2d(X, 2, -2),
    ),
    "pool dilation 0": (
        ValueError,
        "dilation must be positive, got 0",
        lambda: F.max_pool2d(X, 2, dilation=0),
    ),
    "pool padding negative": (
        ValueError,
        "padding must be non-negative, got -1",
        lambda: F.max_pool2d(X, 3, padding=-1),
    ),
    "pool padding above half": (
        ValueError,
        "padding must be at most half of kernel_size",
        lambda: F.max_pool2d(X, 3, padding=2),
    ),
    "pool window wholly in the padding": (
        ValueError,
        "the pooling window of output column 0 lies entirely in the padding",
        lambda: F.max_pool2d(np.ones((1, 1, 4, 2), np.float32), 2, padding=1, dilation=3),
    ),
    "pool window larger than input": (
        ValueError,
        "the pooling window (dilated size (9, 9)) is larger than the padded input",
        lambda: F.max_pool2d(X, 9),
    ),
    "pool backward geometry": (
        ValueError,
        "grad_y must have shape (2, 3, 6, 5), got (2, 3, 3, 3)",
        lambda: F.max_pool2d_backward(PY, PI, X.shape, kernel_size=2, stride=1),
    ),
    "pool backward stride without kernel": (
        ValueError,
        "need kernel_size",
        lambda: F.max_pool2d_backward(PY, PI, X.shape, stride=2),
    ),
    # NotImplementedError
    "groups 2": (
        NotImplementedError,
        "groups=2 is not supported yet",
        lambda: F.conv2d(X, W, groups=2),
    ),
    "groups 2 backward": (
        NotImplementedError,
        "groups=2 is not supported yet",
        lambda: F.conv2d_backward(GY, X, W, groups=2),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises(case):
    exc, fragment, call = CASES[case]
    with pytest.raises(exc, match=re.escape(fragment)):
        call()
    for before, after in zip(SNAPSHOT, ALL):
        np.testing.assert_array_equal(before, after)


def test_torch_tensor_is_rejected(torch_oracle):
    with pytest.raises(TypeError, match="x must be a numpy.ndarray or cupy.ndarray, got torch"):
        F.conv2d(torch_oracle.from_numpy(X), W)


def test_unknown_backend_name():
    msg = "backend must be one of ('numpy', 'emu'), got 'cuda'"
    with pytest.raises(ValueError, match=re.escape(msg)), gpunn.use_backend("cuda"):
        pass


class _FakeCupyArray:
    """Stands in for a cupy.ndarray on a machine without a GPU: only what checks read."""

    def __init__(self, a):
        self.dtype, self.shape, self.ndim = a.dtype, a.shape, a.ndim


def test_numpy_and_cupy_mixed(monkeypatch):
    fake_cupy = types.SimpleNamespace(__name__="cupy")
    monkeypatch.setattr(gpunn._checks, "cupy_module", lambda: fake_cupy)
    monkeypatch.setattr(gpunn._checks, "is_cupy_array", lambda a: isinstance(a, _FakeCupyArray))
    msg = "x is a numpy.ndarray but weight is a cupy.ndarray: NumPy and CuPy arrays cannot be mixed"
    with pytest.raises(TypeError, match=re.escape(msg)):
        F.conv2d(X, _FakeCupyArray(W))
    with pytest.raises(TypeError, match="indices must be a numpy.ndarray like grad_y"):
        F.max_pool2d_backward(PY, _FakeCupyArray(PI), X.shape)


@pytest.mark.gpu
def test_numpy_and_cupy_mixed_on_gpu():
    reason = gpunn._backend.gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    import cupy

    with pytest.raises(TypeError, match="x is a numpy.ndarray but weight is a cupy.ndarray"):
        F.conv2d(X, cupy.asarray(W))


def _emu_or_skip():
    from gpunn.emu import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"the CPU emulator cannot run here: {reason}")


@pytest.mark.parametrize(
    "call",
    [
        lambda: F.conv2d(X.astype(f64), W.astype(f64)),
        lambda: F.max_pool2d(X.astype(f64), 2),
        lambda: F.lstm(XS.astype(f64), *(a.astype(f64) for a in (H0, H0, WIH, WHH, BIH, BIH))),
    ],
    ids=["conv2d", "max_pool2d", "lstm"],
)
def test_float64_on_kernel_backend(call):
    _emu_or_skip()
    msg = "the 'emu' backend computes in float32: pass float32"
    with gpunn.use_backend("emu"), pytest.raises(TypeError, match=msg):
        call()


# Empty batches give empty results of the right shape; the backend is not called.
def test_empty_batch_conv_and_pool():
    x0 = X[:0]
    y = F.conv2d(x0, W, B, stride=2, padding=1)
    assert y.shape == (0, 4, 4, 4) and y.dtype == f32
    gx, gw, gb = F.conv2d_backward(y, x0, W, stride=2, padding=1)
    assert gx.shape == x0.shape and gw.shape == W.shape and gb.shape == B.shape
    assert not gw.any() and not gb.any()
    y, idx = F.max_pool2d(x0, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert y.shape == idx.shape == (0, 3, 4, 4) and idx.dtype == np.int64
    assert F.max_pool2d_backward(y, idx, x0.shape).shape == x0.shape


def test_empty_batch_recurrent():
    x0, h0 = XS[:, :0], H0[:0]
    y, (h_n, c_n), ctx = F.lstm_forward(x0, h0, h0, WIH, WHH, BIH, BIH)
    assert y.shape == (T_, 0, HID) and h_n.shape == c_n.shape == (0, HID)
    gx, gh0, gc0, *gw = F.lstm_backward(ctx, y)
    assert gx.shape == x0.shape and gh0.shape == gc0.shape == (0, HID)
    assert [g.shape for g in gw] == [WIH.shape, WHH.shape, BIH.shape, BIH.shape]
    assert not any(g.any() for g in gw)
    y, h_n = F.rnn_tanh(x0, h0, WIH[:HID], WHH[:HID], None, None)
    assert y.shape == (T_, 0, HID) and h_n.shape == (0, HID)


def test_non_contiguous_inputs_are_accepted():
    x = np.asfortranarray(X)[:, :, ::-1]
    w = W.transpose(1, 0, 2, 3).copy().transpose(1, 0, 2, 3)
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    assert_close(F.conv2d(x, w, B), F.conv2d(x.copy(), w.copy(), B))
    np.testing.assert_array_equal(F.max_pool2d(x, 2), F.max_pool2d(x.copy(), 2))
