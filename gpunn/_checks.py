"""Argument validation shared by ``gpunn.functional``, ``gpunn.nn`` and ``gpunn.optim``.

Every check raises the exception class API.md assigns to it, with a message that names the
argument, what was expected and what was received. Nothing here computes or mutates.
"""

from __future__ import annotations

import numbers

import numpy

from gpunn._backend import cupy_module, get_backend, is_cupy_array
from gpunn._shapes import conv_padding, empty_pool_window, pair

FLOAT_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


def _kind(x) -> str:
    t = type(x)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"


def array_module(x, name: str):
    """``numpy`` or ``cupy`` for the array ``x``; anything else is a TypeError naming ``name``."""
    if isinstance(x, numpy.ndarray):
        return numpy
    if is_cupy_array(x):
        return cupy_module()
    raise TypeError(f"{name} must be a numpy.ndarray or cupy.ndarray, got {_kind(x)}")


def check_rank(x, name: str, dims: str) -> None:
    """``x.ndim`` must match the layout ``dims`` (e.g. "N, C, H, W"); else ValueError."""
    ndim = len(dims.split(","))
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D ({dims}), got shape {tuple(x.shape)}")


def check_shape(x, name: str, shape: tuple, because: str = "") -> None:
    """``x.shape`` must equal ``shape``; else ValueError showing both (and ``because``, the
    argument the expected shape comes from)."""
    if tuple(x.shape) != tuple(shape):
        why = f" ({because})" if because else ""
        raise ValueError(f"{name} must have shape {tuple(shape)}{why}, got {tuple(x.shape)}")


def float_arrays(optional=(), **named):
    """Check that the arrays in ``named`` share one module and one float dtype.

    Only the names listed in ``optional`` (the biases) may be None; they are then skipped.
    Returns ``(xp, dtype)``. TypeError for a non-array (None included), NumPy and CuPy mixed,
    a dtype other than float32/float64, or two dtypes (naming both arguments).
    """
    first = None  # (name, array, xp)
    for name, x in named.items():
        if x is None and name in optional:
            continue
        xp = array_module(x, name)
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
        if first is None:
            first = (name, x, xp)
            continue
        name0, x0, xp0 = first
        if xp is not xp0:
            raise TypeError(
                f"{name0} is a {xp0.__name__}.ndarray but {name} is a {xp.__name__}.ndarray: "
                "NumPy and CuPy arrays cannot be mixed in one call"
            )
        if x.dtype != x0.dtype:
            raise TypeError(
                f"{name0} has dtype {x0.dtype} but {name} has dtype {x.dtype}: "
                "all float arguments of one call must share one dtype"
            )
    return first[2], first[1].dtype


def check_same_module(x, name: str, xp, other: str) -> None:
    """``x`` (any dtype) must be an array of module ``xp``, like the argument ``other``."""
    if array_module(x, name) is not xp:
        raise TypeError(
            f"{name} must be a {xp.__name__}.ndarray like {other}, got {_kind(x)}: "
            "NumPy and CuPy arrays cannot be mixed in one call"
        )


def op_family(xp, dtype, name: str):
    """The implementation family for arrays of module ``xp`` and ``dtype``.

    CuPy arrays run ``gpunn._kernels`` on the GPU; NumPy arrays run ``gpunn.reference`` under
    the "numpy" backend and ``gpunn._kernels`` under "emu". The kernels compute in float32
    only, so float64 there is a TypeError naming ``name`` (the first float argument).
    """
    backend = "cuda" if xp is not numpy else get_backend()
    if backend == "numpy":
        from gpunn import reference

        return reference
    if numpy.dtype(dtype) != numpy.float32:
        raise TypeError(
            f"{name} has dtype {numpy.dtype(dtype)}, but the {backend!r} backend computes in "
            "float32: pass float32 arrays, or use NumPy arrays with gpunn.use_backend('numpy')"
        )
    from gpunn import _kernels

    return _kernels


def check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, numpy.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def positive_int(value, name: str) -> int:
    """A positive Python int (not a bool); TypeError for non-ints, ValueError for <= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def positive_pair(value, name: str) -> tuple[int, int]:
    """An int or (h, w) pair with both entries > 0 (kernel size, stride, dilation)."""
    p = pair(value, name)
    if p[0] <= 0 or p[1] <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return p


def non_negative_pair(value, name: str) -> tuple[int, int]:
    p = pair(value, name)
    if p[0] < 0 or p[1] < 0:
        raise ValueError(f"{name} must be non-negative, got {value!r}")
    return p


def check_groups(groups) -> None:
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups != 1:
        raise NotImplementedError(f"groups={groups} is not supported yet: gpunn supports groups=1")


def conv_hyper(stride, padding, dilation, groups, kernel):
    """Validate conv hyper-parameters for a (R, S) kernel: (stride, padding4, dilation)."""
    check_groups(groups)
    stride = positive_pair(stride, "stride")
    dilation = positive_pair(dilation, "dilation")
    padding4 = conv_padding(padding, kernel[0], kernel[1], stride, dilation)
    return stride, padding4, dilation


def pool_hyper(kernel_size, stride, padding, dilation, ceil_mode):
    """Validate max-pooling hyper-parameters: (kernel, stride, padding, dilation, ceil_mode).

    ``stride`` None means ``kernel_size``; padding may be at most half the kernel.
    """
    kernel = positive_pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else positive_pair(stride, "stride")
    padding = non_negative_pair(padding, "padding")
    dilation = positive_pair(dilation, "dilation")
    ceil_mode = check_bool(ceil_mode, "ceil_mode")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size, got padding={padding} "
            f"for kernel_size={kernel}"
        )
    return kernel, stride, padding, dilation, ceil_mode


def check_window_fits(x_shape, padding4, kernel, dilation, what: str) -> None:
    """ValueError when the effective kernel ``dil*(R-1)+1`` exceeds the padded input."""
    H, W = x_shape[2], x_shape[3]
    padded = (H + padding4[0] + padding4[1], W + padding4[2] + padding4[3])
    span = (dilation[0] * (kernel[0] - 1) + 1, dilation[1] * (kernel[1] - 1) + 1)
    if span[0] > padded[0] or span[1] > padded[1]:
        raise ValueError(
            f"{what} (dilated size {span}) is larger than the padded input {padded} "
            f"(input H, W = {(H, W)}, padding (top, bottom, left, right) = {padding4})"
        )


def check_pool_windows(in_hw, kernel, stride, padding, dilation, out_hw) -> None:
    """ValueError when a pooling window of an (OH, OW) output holds no input element (the
    kernels start each window from its first input element). Used by ``gpunn.functional``
    and, as a guard for direct callers, by ``gpunn._kernels_pool``."""
    for axis in (0, 1):
        o = empty_pool_window(
            in_hw[axis], kernel[axis], stride[axis], padding[axis], dilation[axis], out_hw[axis]
        )
        if o is not None:
            raise ValueError(
                f"the pooling window of output {'row' if axis == 0 else 'column'} {o} lies "
                f"entirely in the padding (input H, W = {tuple(in_hw)}, kernel_size={kernel}, "
                f"stride={stride}, padding={padding}, dilation={dilation}): it has no element "
                f"to select"
            )


def non_negative_number(value, name: str) -> float:
    """A real number >= 0 (learning rate, eps, weight decay, momentum)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def check_input_dtype(x, name: str, dtype) -> None:
    """A module's input must have the dtype of its parameters (TypeError otherwise)."""
    array_module(x, name)
    if x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the module's parameters are {numpy.dtype(dtype)}: "
            f"cast the input or call module.to({numpy.dtype(dtype).name})"
        )
