"""The public functional API: validate, normalise, pick the backend, call it.

Every function checks all of its arguments first (``gpunn._checks``), so that bad input raises
before any kernel runs and nothing is changed. It then normalises them (pairs of ints, conv
padding as ``(top, bottom, left, right)``, C-contiguous arrays) and calls one family, both
with the signatures in CONTRIBUTING.md:

- ``gpunn._kernels`` for CuPy arrays (the GPU) and for NumPy arrays under the "emu" backend;
- ``gpunn.reference`` for NumPy arrays under the "numpy" backend (the default).

An empty batch (N = 0) returns empty results of the right shape without calling either.
Linear, ReLU, tanh and softmax cross-entropy are not kernels: the reference writes them once,
generic in ``xp``, and they run there for NumPy and CuPy arrays alike.
"""

from __future__ import annotations

import numbers

import numpy

from gpunn._checks import (
    check_bool,
    check_pool_windows,
    check_rank,
    check_same_module,
    check_shape,
    check_window_fits,
    conv_hyper,
    float_arrays,
    op_family,
    pool_hyper,
)
from gpunn._shapes import conv_out_size, pool_out_size

__all__ = [
    "conv2d",
    "conv2d_backward",
    "cross_entropy",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "linear",
    "linear_backward",
    "lstm",
    "lstm_backward",
    "lstm_cell",
    "lstm_forward",
    "max_pool2d",
    "max_pool2d_backward",
    "relu",
    "relu_backward",
    "rnn_tanh",
    "rnn_tanh_backward",
    "rnn_tanh_forward",
    "tanh",
    "tanh_backward",
]


def _contiguous(xp, *arrays):
    return tuple(None if a is None else xp.ascontiguousarray(a) for a in arrays)


# ---------------------------------------------------------------------------------------------
# Convolution


def _conv_geometry(x, weight, stride, padding, dilation, groups):
    """Validate conv shapes and hyper-parameters; returns (stride, padding4, dilation, y shape)."""
    check_rank(x, "x", "N, C, H, W")
    check_rank(weight, "weight", "K, C, R, S")
    N, C, H, W = x.shape
    K, C_w, R, S = weight.shape
    if C_w != C:
        raise ValueError(
            f"x has {C} input channels (shape {tuple(x.shape)}) but weight expects {C_w} "
            f"(shape {tuple(weight.shape)})"
        )
    if R <= 0 or S <= 0:
        raise ValueError(f"weight must have a positive kernel size R, S, got shape {weight.shape}")
    stride, padding4, dilation = conv_hyper(stride, padding, dilation, groups, (R, S))
    check_window_fits(x.shape, padding4, (R, S), dilation, "the filter")
    OH = conv_out_size(H, R, stride[0], padding4[0] + padding4[1], dilation[0])
    OW = conv_out_size(W, S, stride[1], padding4[2] + padding4[3], dilation[1])
    return stride, padding4, dilation, (N, K, OH, OW)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, as ``torch.nn.functional.conv2d``: y (N, K, OH, OW)."""
    xp, dtype = float_arrays(x=x, weight=weight, bias=bias, optional=("bias",))
    stride, padding4, dilation, y_shape = _conv_geometry(
        x, weight, stride, padding, dilation, groups
    )
    if bias is not None:
        check_shape(bias, "bias", (weight.shape[0],))
    family = op_family(xp, dtype, "x")
    if x.shape[0] == 0:
        return xp.zeros(y_shape, dtype=dtype)
    x, weight, bias = _contiguous(xp, x, weight, bias)
    return family.conv2d_forward(x, weight, bias, stride, padding4, dilation)


def conv2d_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1, bias=True):
    """Gradients of ``conv2d``: ``(grad_x, grad_weight, grad_bias)``.

    ``bias`` is a bool: whether to compute ``grad_bias`` (else it is None).
    """
    need_bias = check_bool(bias, "bias")
    xp, dtype = float_arrays(grad_y=grad_y, x=x, weight=weight)
    stride, padding4, dilation, y_shape = _conv_geometry(
        x, weight, stride, padding, dilation, groups
    )
    check_rank(grad_y, "grad_y", "N, K, OH, OW")
    check_shape(grad_y, "grad_y", y_shape)
    family = op_family(xp, dtype, "grad_y")
    if x.shape[0] == 0:
        grad_b = xp.zeros(weight.shape[:1], dtype=dtype) if need_bias else None
        return xp.zeros(x.shape, dtype=dtype), xp.zeros(weight.shape, dtype=dtype), grad_b
    grad_y, x, weight = _contiguous(xp, grad_y, x, weight)
    return family.conv2d_backward(grad_y, x, weight, stride, padding4, dilation, need_bias)


# ---------------------------------------------------------------------------------------------
# Max pooling


def _pool_geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    """Validate pooling hyper-parameters against an (N, C, H, W) input shape.

    Returns ``(kernel, stride, padding, dilation, ceil_mode, y_shape)``, each geometry entry a
    pair of ints.
    """
    kernel, stride, padding, dilation, ceil_mode = pool_hyper(
        kernel_size, stride, padding, dilation, ceil_mode
    )
    pad4 = (padding[0], padding[0], padding[1], padding[1])
    check_window_fits(x_shape, pad4, kernel, dilation, "the pooling window")
    N, C, H, W = x_shape
    OH = pool_out_size(H, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = pool_out_size(W, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    check_pool_windows((H, W), kernel, stride, padding, dilation, (OH, OW))
    return kernel, stride, padding, dilation, ceil_mode, (N, C, OH, OW)


def max_pool2d(
    x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    """2-D max pooling, as ``torch.nn.functional.max_pool2d``: y, or ``(y, indices)``.

    ``indices`` (int64) are positions ``h * W + w`` in the input plane of each (n, c).
    """
    xp, dtype = float_arrays(x=x)
    check_rank(x, "x", "N, C, H, W")
    return_indices = check_bool(return_indices, "return_indices")
    kernel, stride, padding, dilation, ceil_mode, y_shape = _pool_geometry(
        x.shape, kernel_size, stride, padding, dilation, ceil_mode
    )
    family = op_family(xp, dtype, "x")
    if x.shape[0] == 0:
        y, indices = xp.zeros(y_shape, dtype=dtype), xp.zeros(y_shape, dtype=numpy.int64)
    else:
        (x,) = _contiguous(xp, x)
        y, indices = family.max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode)
    return (y, indices) if return_indices else y


def _input_shape(input_shape, grad_y) -> tuple[int, int, int, int]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise TypeError(f"input_shape must be a tuple (N, C, H, W), got {input_shape!r}") from None
    if len(shape) != 4 or any(
        isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0 for v in shape
    ):
        raise ValueError(
            f"input_shape must be four non-negative ints (N, C, H, W), got {input_shape!r}"
        )
    shape = tuple(int(v) for v in shape)
    if shape[:2] != tuple(grad_y.shape[:2]):
        raise ValueError(
            f"input_shape {shape} must have the N, C of grad_y, whose shape is "
            f"{tuple(grad_y.shape)}"
        )
    return shape


def max_pool2d_backward(
    grad_y,
    indices,
    input_shape,
    *,
    kernel_size=None,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode=False,
):
    """Gradient of ``max_pool2d``: each window's gradient is added to the element it chose.

    ``input_shape`` is the full (N, C, H, W). The keyword geometry (gpunn's extension) lets a
    kernel gather per input element instead of scattering per window; without ``kernel_size``
    the geometry is unknown and the other keywords must keep their defaults.
    """
    xp, dtype = float_arrays(grad_y=grad_y)
    check_rank(grad_y, "grad_y", "N, C, OH, OW")
    check_same_module(indices, "indices", xp, "grad_y")
    if indices.dtype != numpy.int64:
        raise TypeError(f"indices must have dtype int64, got {indices.dtype}")
    check_shape(indices, "indices", grad_y.shape)
    input_shape = _input_shape(input_shape, grad_y)
    geometry = None
    if kernel_size is not None:
        kernel, stride, padding, dilation, _, y_shape = _pool_geometry(
            input_shape, kernel_size, stride, padding, dilation, ceil_mode
        )
        check_shape(grad_y, "grad_y", y_shape)
        geometry = (kernel, stride, padding, dilation)
    elif (stride, padding, dilation, ceil_mode) != (None, 0, 1, False):
        raise ValueError(
            "stride, padding, dilation and ceil_mode describe the pooling window and need "
            f"kernel_size, got kernel_size=None with stride={stride!r}, padding={padding!r}, "
            f"dilation={dilation!r}, ceil_mode={ceil_mode!r}"
        )
    plane = input_shape[2] * input_shape[3]
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= plane):
        raise ValueError(
            f"indices must lie in [0, H*W) = [0, {plane}) for input_shape {input_shape}, got "
            f"values in [{int(indices.min())}, {int(indices.max())}]"
        )
    family = op_family(xp, dtype, "grad_y")
    if grad_y.size == 0:
        return xp.zeros(input_shape, dtype=dtype)
    grad_y, indices = _contiguous(xp, grad_y, indices)
    return family.max_pool2d_backward(grad_y, indices, input_shape, geometry)


# ---------------------------------------------------------------------------------------------
# LSTM and tanh RNN

_GATES = {"lstm": 4, "rnn_tanh": 1}


class RecurrentContext:
    """What ``lstm_forward`` / ``rnn_tanh_forward`` keep for their backward.

    ``saved`` is the family's opaque object (None for an empty batch); backward never changes
    it, so it may be used any number of times.
    """

    __slots__ = ("dtype", "family", "has_bias", "kind", "saved", "shapes", "xp")

    def __init__(self, kind, family, saved, xp, dtype, shapes, has_bias):
        self.kind = kind
        self.family = family
        self.saved = saved
        self.xp = xp
        self.dtype = dtype
        self.shapes = shapes  # (T, N, I, HID)
        self.has_bias = has_bias


def _recurrent_forward(kind, x, states, weight_ih, weight_hh, bias_ih, bias_hh):
    """Validate and run one recurrent layer; returns (y, final states, context)."""
    G = _GATES[kind]
    xp, dtype = float_arrays(
        x=x,
        **states,
        weight_ih=weight_ih,
        weight_hh=weight_hh,
        bias_ih=bias_ih,
        bias_hh=bias_hh,
        optional=("bias_ih", "bias_hh"),
    )
    check_rank(x, "x", "T, N, I")
    T, N, I = x.shape
    if T == 0:
        raise ValueError(f"x must hold at least one time step, got shape {tuple(x.shape)}")
    # N and I come from x, HID from the first state (h0), as in PyTorch.
    first, first_state = next(iter(states.items()))
    for name, state in states.items():
        check_rank(state, name, "N, HID")
    HID = first_state.shape[1]
    for name, state in states.items():
        check_shape(state, name, (N, HID), f"N={N} from x of shape {tuple(x.shape)}")
    check_rank(weight_ih, "weight_ih", f"{G}*HID, I")
    check_rank(weight_hh, "weight_hh", f"{G}*HID, HID")
    if weight_ih.shape[1] != I:
        raise ValueError(
            f"x has {I} input features (shape {tuple(x.shape)}) but weight_ih expects "
            f"{weight_ih.shape[1]} (shape {tuple(weight_ih.shape)})"
        )
    hidden = f"hidden size HID={HID} from {first} of shape {tuple(first_state.shape)}"
    check_shape(weight_ih, "weight_ih", (G * HID, I), hidden)
    check_shape(weight_hh, "weight_hh", (G * HID, HID), hidden)
    if (bias_ih is None) != (bias_hh is None):
        raise ValueError(
            "bias_ih and bias_hh must both be arrays or both be None, got "
            f"{type(bias_ih).__name__} and {type(bias_hh).__name__}"
        )
    if bias_ih is not None:
        check_shape(bias_ih, "bias_ih", (G * HID,), hidden)
        check_shape(bias_hh, "bias_hh", (G * HID,), hidden)
    family = op_family(xp, dtype, "x")
    has_bias = bias_ih is not None
    shapes = (T, N, I, HID)
    if N == 0:
        y = xp.zeros((T, 0, HID), dtype=dtype)
        finals = tuple(xp.zeros((0, HID), dtype=dtype) for _ in states)
        return y, finals, RecurrentContext(kind, family, None, xp, dtype, shapes, has_bias)
    args = _contiguous(xp, x, *states.values(), weight_ih, weight_hh, bias_ih, bias_hh)
    y, *finals, saved = getattr(family, f"{kind}_forward")(*args)
    return y, tuple(finals), RecurrentContext(kind, family, saved, xp, dtype, shapes, has_bias)


def _recurrent_backward(kind, ctx, grad_y, grad_states):
    """Validate the output gradients against ``ctx`` and run the family's backward."""
    if not isinstance(ctx, RecurrentContext) or ctx.kind != kind:
        raise TypeError(f"ctx must be the context returned by {kind}_forward, got {ctx!r}")
    T, N, I, HID = ctx.shapes
    given = {k: v for k, v in {"grad_y": grad_y, **grad_states}.items() if v is not None}
    if given:
        xp, dtype = float_arrays(**given)
        name = next(iter(given))
        if xp is not ctx.xp or dtype != ctx.dtype:
            raise TypeError(
                f"{name} is a {xp.__name__}.ndarray of {dtype}, but the forward ran on "
                f"{ctx.xp.__name__}.ndarray of {ctx.dtype}"
            )
    if grad_y is not None:
        check_shape(grad_y, "grad_y", (T, N, HID))
    for name, g in grad_states.items():
        if g is not None:
            check_shape(g, name, (N, HID))
    xp, dtype = ctx.xp, ctx.dtype
    if ctx.saved is None:
        G = _GATES[kind]
        zeros = xp.zeros
        bias_grads = (zeros((G * HID,), dtype), zeros((G * HID,), dtype))
        return (
            zeros((T, 0, I), dtype),
            *(zeros((0, HID), dtype) for _ in grad_states),
            zeros((G * HID, I), dtype),
            zeros((G * HID, HID), dtype),
            *(bias_grads if ctx.has_bias else (None, None)),
        )
    grads = _contiguous(xp, grad_y, *grad_states.values())
    return getattr(ctx.family, f"{kind}_backward")(ctx.saved, *grads)


def lstm_cell(gates, c_prev):
    """One fused LSTM step on pre-activation gates (N, 4*HID), biases added: ``(h, c)``.

    Gates are ordered i, f, g, o: ``c = f * c_prev + i * g``, ``h = o * tanh(c)``.
    """
    xp, dtype = float_arrays(gates=gates, c_prev=c_prev)
    check_rank(gates, "gates", "N, 4*HID")
    check_rank(c_prev, "c_prev", "N, HID")
    N, HID = c_prev.shape
    check_shape(gates, "gates", (N, 4 * HID), f"(N, 4*HID) for c_prev of shape {(N, HID)}")
    family = op_family(xp, dtype, "gates")
    if N == 0:
        return xp.zeros((0, HID), dtype=dtype), xp.zeros((0, HID), dtype=dtype)
    return family.lstm_cell_forward(*_contiguous(xp, gates, c_prev))


def lstm_forward(x, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One LSTM layer over a sequence x (T, N, I): ``(y, (h_n, c_n), ctx)``.

    ``ctx`` is what ``lstm_backward`` needs; the biases may both be None.
    """
    y, (h_n, c_n), ctx = _recurrent_forward(
        "lstm", x, {"h0": h0, "c0": c0}, weight_ih, weight_hh, bias_ih, bias_hh
    )
    return y, (h_n, c_n), ctx


def lstm(x, h0, c0, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One LSTM layer over a sequence x (T, N, I): ``(y, (h_n, c_n))``, y (T, N, HID)."""
    y, state, _ = lstm_forward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)
    return y, state


def lstm_backward(ctx, grad_y=None, grad_hn=None, grad_cn=None):
    """Backpropagation through time for ``lstm_forward``; a None gradient counts as zeros.

    Returns ``(grad_x, grad_h0, grad_c0, grad_weight_ih, grad_weight_hh, grad_bias_ih,
    grad_bias_hh)``; the bias gradients are None when the forward had no biases.
    """
    return _recurrent_backward("lstm", ctx, grad_y, {"grad_hn": grad_hn, "grad_cn": grad_cn})


def rnn_tanh_forward(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One tanh RNN layer over x (T, N, I): ``(y, h_n, ctx)``."""
    y, (h_n,), ctx = _recurrent_forward(
        "rnn_tanh", x, {"h0": h0}, weight_ih, weight_hh, bias_ih, bias_hh
    )
    return y, h_n, ctx


def rnn_tanh(x, h0, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """One tanh RNN layer: ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    Returns ``(y, h_n)``, y (T, N, HID).
    """
    y, h_n, _ = rnn_tanh_forward(x, h0, weight_ih, weight_hh, bias_ih, bias_hh)
    return y, h_n


def rnn_tanh_backward(ctx, grad_y=None, grad_hn=None):
    """Backpropagation through time for ``rnn_tanh_forward``; a None gradient counts as zeros.

    Returns ``(grad_x, grad_h0, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh)``.
    """
    return _recurrent_backward("rnn_tanh", ctx, grad_y, {"grad_hn": grad_hn})


# ---------------------------------------------------------------------------------------------
# Linear, activations, loss: written once in the reference, generic in xp (NumPy or CuPy)


def _linear_args(x, weight, bias):
    check_rank(weight, "weight", "out_features, in_features")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"x must have shape (*, {weight.shape[1]}) to match weight of shape "
            f"{tuple(weight.shape)}, got {tuple(x.shape)}"
        )
    if bias is not None:
        check_shape(bias, "bias", (weight.shape[0],))


def linear(x, weight, bias=None):
    """``y = x W^T + b`` for x (*, in_features), weight (out_features, in_features)."""
    from gpunn import reference

    xp, _ = float_arrays(x=x, weight=weight, bias=bias, optional=("bias",))
    _linear_args(x, weight, bias)
    return reference.linear_forward(*_contiguous(xp, x, weight, bias))


def linear_backward(grad_y, x, weight, bias=True):
    """Gradients of ``linear``: ``(grad_x, grad_weight, grad_bias or None)``."""
    from gpunn import reference

    need_bias = check_bool(bias, "bias")
    xp, _ = float_arrays(grad_y=grad_y, x=x, weight=weight)
    _linear_args(x, weight, None)
    check_shape(grad_y, "grad_y", (*x.shape[:-1], weight.shape[0]))
    return reference.linear_backward(*_contiguous(xp, grad_y, x, weight), need_bias)


def _pointwise(op: str, x):
    from gpunn import reference

    float_arrays(x=x)
    return getattr(reference, f"{op}_forward")(x)


def _pointwise_backward(op: str, grad_y, name: str, saved):
    """``reference.<op>_backward(grad_y, saved)`` after checking ``grad_y`` against ``saved``."""
    from gpunn import reference

    float_arrays(grad_y=grad_y, **{name: saved})
    check_shape(grad_y, "grad_y", saved.shape)
    return getattr(reference, f"{op}_backward")(grad_y, saved)


def relu(x):
    """``max(x, 0)`` elementwise."""
    return _pointwise("relu", x)


def relu_backward(grad_y, x):
    """Gradient of ``relu`` at its input ``x``."""
    return _pointwise_backward("relu", grad_y, "x", x)


def tanh(x):
    """``tanh(x)`` elementwise."""
    return _pointwise("tanh", x)


def tanh_backward(grad_y, y):
    """Gradient of ``tanh`` given its output ``y``: ``grad_y * (1 - y^2)``."""
    return _pointwise_backward("tanh", grad_y, "y", y)


def _cross_entropy_args(logits, target):
    xp, dtype = float_arrays(logits=logits)
    check_rank(logits, "logits", "N, classes")
    check_same_module(target, "target", xp, "logits")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold int64 class indices, got dtype {target.dtype}")
    N, classes = logits.shape
    check_shape(target, "target", (N,))
    if N and (int(target.min()) < 0 or int(target.max()) >= classes):
        raise ValueError(
            f"target must hold class indices in [0, {classes}), got values in "
            f"[{int(target.min())}, {int(target.max())}]"
        )
    return xp, dtype


def cross_entropy_forward(logits, target):
    """Mean softmax cross-entropy of logits (N, classes) against int64 target (N,).

    Returns ``(loss, saved)``: the loss a 0-d array of the logits' module and dtype (NaN for
    N = 0, as PyTorch), ``saved`` what ``cross_entropy_backward`` needs.
    """
    from gpunn import reference

    xp, _ = _cross_entropy_args(logits, target)
    return reference.cross_entropy_forward(*_contiguous(xp, logits, target))


def cross_entropy(logits, target):
    """Mean softmax cross-entropy, as ``torch.nn.functional.cross_entropy``: a 0-d array."""
    return cross_entropy_forward(logits, target)[0]


def cross_entropy_backward(saved):
    """Gradient of the mean loss with respect to the logits, from ``cross_entropy_forward``."""
    from gpunn import reference

    if not isinstance(saved, reference.CrossEntropySaved):
        raise TypeError(f"saved must come from cross_entropy_forward, got {type(saved).__name__}")
    return reference.cross_entropy_backward(saved)
