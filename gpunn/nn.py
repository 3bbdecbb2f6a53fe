"""Layers with an explicit forward and backward, named and initialised as in ``torch.nn``.

A module's ``forward`` saves what its ``backward`` needs; ``backward(grad_output)`` returns the
gradient of the input and *adds* parameter gradients into each ``Parameter.grad``. Backward
never changes what forward saved, so calling it twice gives the same result twice (and twice
the accumulated ``.grad``). Parameters are NumPy or CuPy arrays; each call runs on whatever
the arrays are, with the backend rules of ``gpunn.functional``.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import numpy

from gpunn import functional as F
from gpunn._backend import cupy_module, gpu_unavailable_reason
from gpunn._checks import (
    array_module,
    check_bool,
    check_input_dtype,
    check_rank,
    check_shape,
    conv_hyper,
    pool_hyper,
    positive_int,
    positive_pair,
)
from gpunn._random import generator

__all__ = [
    "LSTM",
    "RNN",
    "Conv2d",
    "CrossEntropyLoss",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
    "Tanh",
]


class Parameter:
    """A trainable array ``data`` and its accumulated gradient ``grad`` (None until backward)."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = None

    def accumulate(self, grad) -> None:
        """``grad`` += the given gradient (a fresh copy the first time)."""
        if self.grad is None:
            self.grad = grad.astype(self.data.dtype, copy=True)
        else:
            self.grad += grad

    def __repr__(self) -> str:
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


def _float_dtype(dtype) -> numpy.dtype:
    try:
        dt = numpy.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {dtype!r}") from None
    if dt not in (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)):
        raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {dt}")
    return dt


def _uniform(shape, bound: float, dtype) -> numpy.ndarray:
    """U(-bound, bound) from gpunn's seedable generator, as a NumPy array of ``dtype``."""
    return generator().uniform(-bound, bound, size=shape).astype(dtype)


def _move(array, xp, dtype):
    """``array`` as an array of module ``xp`` and ``dtype`` (a copy when either changes)."""
    if xp is numpy:
        if not isinstance(array, numpy.ndarray):
            array = array.get()
        return array.astype(dtype, copy=False)
    return xp.asarray(array, dtype=dtype)


def _device_module(device: str):
    """``numpy`` for "cpu", ``cupy`` for "cuda" (RuntimeError with the reason without a GPU)."""
    if device == "cpu":
        return numpy
    if device == "cuda":
        reason = gpu_unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"cannot move the module to 'cuda': {reason}")
        return cupy_module()
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


class Module:
    """Base class: parameters, children, state_dict, device and dtype moves."""

    def __init__(self, dtype=numpy.float32):
        self._dtype = _float_dtype(dtype)
        self._parameters: OrderedDict[str, Parameter] = OrderedDict()
        self._modules: OrderedDict[str, Module] = OrderedDict()

    def _add_parameter(self, name: str, data) -> Parameter:
        """Register a Parameter under its state_dict name, also reachable as an attribute
        (``lstm.weight_ih_l0``, as in PyTorch)."""
        p = Parameter(data)
        self._parameters[name] = p
        setattr(self, name, p)
        return p

    @property
    def dtype(self) -> numpy.dtype:
        return self._dtype

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, grad_output):
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _check_input(self, x, name: str = "input") -> None:
        if self._parameters:
            check_input_dtype(x, name, self._dtype)

    def _saved(self, name: str):
        value = getattr(self, name, None)
        if value is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return value

    def named_parameters(self, prefix: str = ""):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for child_name, child in self._modules.items():
            yield from child.named_parameters(f"{prefix}{child_name}.")

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def modules(self):
        yield self
        for child in self._modules.values():
            yield from child.modules()

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> OrderedDict:
        """Name -> the parameter arrays themselves (no copies), in PyTorch's order."""
        return OrderedDict((name, p.data) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict) -> None:
        """Copy arrays into the parameters, cast to the module's dtype and device.

        Everything is checked before anything is copied: KeyError for a missing or unexpected
        key, TypeError for a non-array or one that does not hold real numbers (complex,
        strings, objects), ValueError for a wrong shape, each naming the key.
        """
        params = OrderedDict(self.named_parameters())
        missing = [k for k in params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in params]
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, p in params.items():
            value = state_dict[name]
            array_module(value, f"state_dict[{name!r}]")
            if value.dtype.kind not in "biuf":  # bool, signed, unsigned, float
                raise TypeError(
                    f"state_dict[{name!r}] has dtype {value.dtype}: expected real numbers "
                    f"(float, integer or bool) for the parameter {name!r}"
                )
            if tuple(value.shape) != tuple(p.data.shape):
                raise ValueError(
                    f"state_dict[{name!r}] has shape {tuple(value.shape)}, but the parameter "
                    f"{name!r} has shape {tuple(p.data.shape)}"
                )
        converted = [
            (p, _move(state_dict[name], array_module(p.data, name), p.data.dtype))
            for name, p in params.items()
        ]
        for p, value in converted:
            p.data[...] = value

    def to(self, target):
        """Move to "cpu" / "cuda" or cast to a float dtype; returns the module itself."""
        if isinstance(target, str):
            xp, dtype = _device_module(target), None
        else:
            xp, dtype = None, _float_dtype(target)
        for module in self.modules():
            if dtype is not None:
                module._dtype = dtype
            for p in module._parameters.values():
                p_xp = xp or array_module(p.data, "parameter")
                p.data = _move(p.data, p_xp, dtype or p.data.dtype)
                if p.grad is not None:
                    p.grad = _move(p.grad, p_xp, dtype or p.grad.dtype)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""


def _data(p: Parameter | None):
    return None if p is None else p.data


class Conv2d(Module):
    """2-D convolution layer: ``weight`` (K, C, R, S), ``bias`` (K,)."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        *,
        dtype=numpy.float32,
    ):
        super().__init__(dtype)
        C = positive_int(in_channels, "in_channels")
        K = positive_int(out_channels, "out_channels")
        R, S = positive_pair(kernel_size, "kernel_size")
        conv_hyper(stride, padding, dilation, groups, (R, S))
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        # PyTorch's kaiming_uniform_(a=sqrt(5)) bound, gain * sqrt(3 / fan_in), is 1/sqrt(fan_in);
        # its bias bound is the same.
        bound = 1.0 / math.sqrt(C * R * S)
        self.weight = self._add_parameter("weight", _uniform((K, C, R, S), bound, self._dtype))
        self.bias = None
        if check_bool(bias, "bias"):
            self.bias = self._add_parameter("bias", _uniform((K,), bound, self._dtype))
        self._x = None

    def _geometry(self):
        return self.stride, self.padding, self.dilation, self.groups

    def forward(self, x):
        self._check_input(x)
        y = F.conv2d(x, self.weight.data, _data(self.bias), *self._geometry())
        self._x = x
        return y

    def backward(self, grad_output):
        grad_x, grad_w, grad_b = F.conv2d_backward(
            grad_output,
            self._saved("_x"),
            self.weight.data,
            *self._geometry(),
            bias=self.bias is not None,
        )
        self.weight.accumulate(grad_w)
        if self.bias is not None:
            self.bias.accumulate(grad_b)
        return grad_x

    def extra_repr(self) -> str:
        K, C, R, S = self.weight.data.shape
        return (
            f"{C}, {K}, kernel_size={(R, S)}, stride={self.stride}, padding={self.padding!r}, "
            f"dilation={self.dilation}, bias={self.bias is not None}"
        )


class MaxPool2d(Module):
    """2-D max pooling; ``forward`` returns y, or ``(y, indices)`` with ``return_indices``."""

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        dilation=1,
        return_indices=False,
        ceil_mode=False,
        *,
        dtype=numpy.float32,
    ):
        super().__init__(dtype)
        pool_hyper(kernel_size, stride, padding, dilation, ceil_mode)
        self.return_indices = check_bool(return_indices, "return_indices")
        self._window = {
            "kernel_size": kernel_size,
            "stride": stride,
            "padding": padding,
            "dilation": dilation,
            "ceil_mode": ceil_mode,
        }
        self._indices = None

    def forward(self, x):
        y, indices = F.max_pool2d(x, **self._window, return_indices=True)
        self._indices, self._x_shape = indices, tuple(x.shape)
        return (y, indices) if self.return_indices else y

    def backward(self, grad_output):
        return F.max_pool2d_backward(
            grad_output, self._saved("_indices"), self._x_shape, **self._window
        )

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._window.items())


class Linear(Module):
    """``y = x W^T + b``: ``weight`` (out_features, in_features), ``bias`` (out_features,)."""

    def __init__(self, in_features, out_features, bias=True, *, dtype=numpy.float32):
        super().__init__(dtype)
        n_in = positive_int(in_features, "in_features")
        n_out = positive_int(out_features, "out_features")
        bound = 1.0 / math.sqrt(n_in)  # PyTorch's default bounds, as for Conv2d
        self.weight = self._add_parameter("weight", _uniform((n_out, n_in), bound, self._dtype))
        self.bias = None
        if check_bool(bias, "bias"):
            self.bias = self._add_parameter("bias", _uniform((n_out,), bound, self._dtype))
        self._x = None

    def forward(self, x):
        self._check_input(x)
        y = F.linear(x, self.weight.data, _data(self.bias))
        self._x = x
        return y

    def backward(self, grad_output):
        grad_x, grad_w, grad_b = F.linear_backward(
            grad_output, self._saved("_x"), self.weight.data, bias=self.bias is not None
        )
        self.weight.accumulate(grad_w)
        if self.bias is not None:
            self.bias.accumulate(grad_b)
        return grad_x

    def extra_repr(self) -> str:
        n_out, n_in = self.weight.data.shape
        return f"in_features={n_in}, out_features={n_out}, bias={self.bias is not None}"


class ReLU(Module):
    def __init__(self, *, dtype=numpy.float32):
        super().__init__(dtype)
        self._x = None

    def forward(self, x):
        y = F.relu(x)
        self._x = x
        return y

    def backward(self, grad_output):
        return F.relu_backward(grad_output, self._saved("_x"))


class Tanh(Module):
    def __init__(self, *, dtype=numpy.float32):
        super().__init__(dtype)
        self._y = None

    def forward(self, x):
        self._y = F.tanh(x)
        return self._y

    def backward(self, grad_output):
        return F.tanh_backward(grad_output, self._saved("_y"))


class Flatten(Module):
    """Flattens dimensions ``start_dim`` to ``end_dim`` into one (a view when possible)."""

    def __init__(self, start_dim=1, end_dim=-1, *, dtype=numpy.float32):
        super().__init__(dtype)
        for name, dim in (("start_dim", start_dim), ("end_dim", end_dim)):
            if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {dim!r}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)
        self._x_shape = None

    def forward(self, x):
        array_module(x, "input")
        ndim = x.ndim
        dims = (self.start_dim, self.end_dim)
        in_range = ndim > 0 and all(-ndim <= d < ndim for d in dims)
        start, end = (d % max(ndim, 1) for d in dims)
        if not in_range or start > end:
            raise ValueError(
                f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim}) does not fit an "
                f"input of shape {tuple(x.shape)}"
            )
        self._x_shape = tuple(x.shape)
        # the flattened size spelled out: NumPy cannot infer -1 when another dimension is 0
        flat = math.prod(x.shape[start : end + 1])
        return x.reshape(*x.shape[:start], flat, *x.shape[end + 1 :])

    def backward(self, grad_output):
        shape = self._saved("_x_shape")
        array_module(grad_output, "grad_output")
        if grad_output.size != math.prod(shape):
            raise ValueError(
                f"grad_output of shape {tuple(grad_output.shape)} does not reshape to the "
                f"input shape {shape}"
            )
        return grad_output.reshape(shape)


class Sequential(Module):
    """Chains modules; parameter names are prefixed with the child's position ("0.", "1.")."""

    def __init__(self, *modules):
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(f"Sequential argument {i} must be a gpunn.nn.Module, got {m!r}")
            self._modules[str(i)] = m

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_output):
        for m in reversed(self._modules.values()):
            grad_output = m.backward(grad_output)
        return grad_output

    def __repr__(self) -> str:
        rows = "".join(f"\n  ({k}): {m!r}" for k, m in self._modules.items())
        return f"Sequential({rows}\n)"


class CrossEntropyLoss(Module):
    """Mean softmax cross-entropy of logits (N, classes) against int64 class indices (N,)."""

    def __init__(self, *, dtype=numpy.float32):
        super().__init__(dtype)
        self._ctx = None

    def forward(self, logits, target):
        loss, self._ctx = F.cross_entropy_forward(logits, target)
        return loss

    def backward(self, grad_output=None):
        """Gradient of the logits; ``grad_output`` scales it (default 1, the loss itself).

        ``grad_output`` is a number, or a 0-d array of the logits' module and dtype (as the
        loss); the gradient keeps the logits' dtype.
        """
        grad = F.cross_entropy_backward(self._saved("_ctx"))
        if grad_output is None:
            return grad
        if isinstance(grad_output, numbers.Real) and not isinstance(grad_output, bool):
            return grad * grad.dtype.type(grad_output)
        array_module(grad_output, "grad_output")
        if grad_output.dtype != grad.dtype:
            raise TypeError(
                f"grad_output has dtype {grad_output.dtype} but the loss is {grad.dtype}: "
                "pass a number or a 0-d array of the loss's dtype"
            )
        check_shape(grad_output, "grad_output", ())
        return grad * grad_output


class _Recurrent(Module):
    """Stacked recurrent layers; layer k > 0 reads the output sequence of layer k - 1."""

    _kind = ""  # the functional family: "lstm" or "rnn_tanh"
    _gates = 1  # gate blocks per layer in weight_ih / weight_hh (4 for the LSTM: i, f, g, o)
    _states = ("h",)  # the recurrent state arrays, as in hx

    def __init__(self, input_size, hidden_size, num_layers, bias, batch_first, dtype):
        super().__init__(dtype)
        self.input_size = positive_int(input_size, "input_size")
        self.hidden_size = HID = positive_int(hidden_size, "hidden_size")
        self.num_layers = positive_int(num_layers, "num_layers")
        self.bias = check_bool(bias, "bias")
        self.batch_first = check_bool(batch_first, "batch_first")
        G = self._gates
        bound = 1.0 / math.sqrt(HID)  # PyTorch: every weight and bias ~ U(-1/sqrt(HID), ...)
        for k in range(self.num_layers):
            n_in = self.input_size if k == 0 else HID
            self._add_parameter(f"weight_ih_l{k}", _uniform((G * HID, n_in), bound, self._dtype))
            self._add_parameter(f"weight_hh_l{k}", _uniform((G * HID, HID), bound, self._dtype))
            if self.bias:
                self._add_parameter(f"bias_ih_l{k}", _uniform((G * HID,), bound, self._dtype))
                self._add_parameter(f"bias_hh_l{k}", _uniform((G * HID,), bound, self._dtype))
        self._contexts = None

    def _layer(self, k):
        """The arrays of layer k in the functional order (w_ih, w_hh, b_ih, b_hh)."""
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return tuple(_data(self._parameters.get(f"{n}_l{k}")) for n in names)

    def _seq_dims(self) -> str:
        return "N, T, input_size" if self.batch_first else "T, N, input_size"

    def _state_shape(self, N):
        return (self.num_layers, N, self.hidden_size)

    def forward(self, x, hx=None):
        self._check_input(x, "input")
        check_rank(x, "input", self._seq_dims())
        xp = array_module(x, "input")
        seq = x.swapaxes(0, 1) if self.batch_first else x  # (T, N, I)
        N = seq.shape[1]
        states = self._initial_states(hx, xp, N)
        forward = getattr(F, f"{self._kind}_forward")
        contexts, finals = [], []
        for k in range(self.num_layers):
            seq, final, ctx = forward(seq, *(s[k] for s in states), *self._layer(k))
            contexts.append(ctx)
            finals.append(final if isinstance(final, tuple) else (final,))
        self._contexts, self._N = contexts, N
        y = seq.swapaxes(0, 1) if self.batch_first else seq
        final_states = tuple(xp.stack([f[i] for f in finals]) for i in range(len(self._states)))
        return y, final_states if len(final_states) > 1 else final_states[0]

    def _initial_states(self, hx, xp, N):
        shape = self._state_shape(N)
        if hx is None:
            return tuple(xp.zeros(shape, dtype=self._dtype) for _ in self._states)
        names = tuple(f"{s}0" for s in self._states)
        if len(names) > 1:
            if not isinstance(hx, (tuple, list)) or len(hx) != len(names):
                raise TypeError(f"hx must be a tuple {names}, got {type(hx).__name__}")
        else:
            hx = (hx,)
        for name, s in zip(names, hx):
            self._check_input(s, name)
            check_rank(s, name, "num_layers, N, hidden_size")
            check_shape(s, name, shape)
        return tuple(hx)

    def backward(self, grad_y=None, *grad_states):
        """Backpropagation through time; a None gradient counts as zeros.

        Returns ``(grad_x, grad_hx)`` with grad_hx shaped like hx.
        """
        contexts = self._saved("_contexts")
        T, N, _, HID = contexts[0].shapes
        if grad_y is not None:
            array_module(grad_y, "grad_y")
            y_shape = (N, T, HID) if self.batch_first else (T, N, HID)
            check_shape(grad_y, "grad_y", y_shape)
            grad_y = grad_y.swapaxes(0, 1) if self.batch_first else grad_y
        for name, g in zip((f"grad_{s}n" for s in self._states), grad_states):
            if g is not None:
                array_module(g, name)
                check_shape(g, name, self._state_shape(N))
        backward = getattr(F, f"{self._kind}_backward")
        n_states = len(self._states)
        layer_grads = [None] * self.num_layers
        grad_seq = grad_y
        for k in reversed(range(self.num_layers)):
            state_grads = (None if g is None else g[k] for g in grad_states)
            grad_seq, *rest = backward(contexts[k], grad_seq, *state_grads)
            layer_grads[k] = rest
        # Every layer's backward succeeded: only now touch the parameters' .grad.
        for k, rest in enumerate(layer_grads):
            names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
            for name, g in zip(names, rest[n_states:]):
                if g is not None:
                    self._parameters[f"{name}_l{k}"].accumulate(g)
        xp = contexts[0].xp
        grad_hx = tuple(xp.stack([r[i] for r in layer_grads]) for i in range(n_states))
        grad_x = grad_seq.swapaxes(0, 1) if self.batch_first else grad_seq
        return grad_x, grad_hx if n_states > 1 else grad_hx[0]

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"bias={self.bias}, batch_first={self.batch_first}"
        )


class RNN(_Recurrent):
    """Elman RNN with tanh: ``h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    ``forward(x, hx=None) -> (y, h_n)``; ``backward(grad_y, grad_hn=None) -> (grad_x, grad_h0)``.
    """

    _kind = "rnn_tanh"
    _gates = 1
    _states = ("h",)

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        nonlinearity="tanh",
        bias=True,
        batch_first=False,
        *,
        dtype=numpy.float32,
    ):
        if nonlinearity == "relu":
            raise NotImplementedError("RNN(nonlinearity='relu') is not supported yet: use 'tanh'")
        if nonlinearity != "tanh":
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dtype)

    def backward(self, grad_y=None, grad_hn=None):
        return super().backward(grad_y, grad_hn)


class LSTM(_Recurrent):
    """LSTM with gates i, f, g, o: ``c = f * c_prev + i * g``, ``h = o * tanh(c)``.

    ``forward(x, hx=None) -> (y, (h_n, c_n))``; ``backward(grad_y, grad_hn=None, grad_cn=None)
    -> (grad_x, (grad_h0, grad_c0))``.
    """

    _kind = "lstm"
    _gates = 4
    _states = ("h", "c")

    def __init__(
        self,
        input_size,
        hidden_size,
        num_layers=1,
        bias=True,
        batch_first=False,
        *,
        dtype=numpy.float32,
    ):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dtype)

    def backward(self, grad_y=None, grad_hn=None, grad_cn=None):
        return super().backward(grad_y, grad_hn, grad_cn)
