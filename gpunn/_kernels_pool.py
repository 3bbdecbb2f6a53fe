"""Host wrappers of ``kernels/pool.cu`` (max pooling), generic in ``xp`` (numpy: emulator,
cupy: GPU).

Arguments arrive validated by ``gpunn.functional``: float32 C-contiguous x (N, C, H, W),
kernel/stride/padding/dilation as pairs of ints.
"""

from __future__ import annotations

from gpunn._backend import get_array_module
from gpunn._checks import check_pool_windows
from gpunn._loader import grid_1d, i32, module
from gpunn._shapes import pool_out_size

# Element-wise kernels: 256 threads (8 warps) per block keeps enough blocks in flight to hide
# memory latency; nothing is shared between the threads of a block.
THREADS = 256
# max_pool2d_backward_planes runs one thread per (n, c) plane, often only a few hundred
# threads: small blocks spread them over more multiprocessors.
PLANE_THREADS = 32


def max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode):
    """y (N, C, OH, OW) and int64 indices into each (n, c) plane (``h * W + w``)."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    OH = pool_out_size(H, kernel[0], stride[0], padding[0], dilation[0], ceil_mode)
    OW = pool_out_size(W, kernel[1], stride[1], padding[1], dilation[1], ceil_mode)
    if OH < 1 or OW < 1:
        raise ValueError(f"max pooling output would be {OH}x{OW} for input {H}x{W}")
    check_pool_windows((H, W), kernel, stride, padding, dilation, (OH, OW))
    y = xp.empty((N, C, OH, OW), dtype=x.dtype)  # (N, C, OH, OW)
    indices = xp.empty((N, C, OH, OW), dtype=xp.int64)  # (N, C, OH, OW)
    if y.size == 0:
        return y, indices
    fn = module(xp, "pool").get_function("max_pool2d_forward")
    grid, block = grid_1d(xp, y.size, THREADS)  # one thread per output element
    fn(
        grid,
        block,
        (x, y, indices, *_dims(N, C, H, W, OH, OW), *_geometry(kernel, stride, padding, dilation)),
    )
    return y, indices


def max_pool2d_backward(grad_y, indices, input_shape, geometry):
    """grad_x (N, C, H, W): each output's gradient added into the element it chose.

    With ``geometry`` (kernel, stride, padding, dilation) the gradient is a gather over the
    windows covering each input element; without it (the public API's
    ``max_pool2d_backward(grad_y, indices, input_shape)``), one thread per plane scatters its
    outputs in order. Both sum in row-major output order: deterministic and identical.
    """
    xp = get_array_module(grad_y)
    N, C, H, W = (int(v) for v in input_shape)
    OH, OW = grad_y.shape[2], grad_y.shape[3]
    if geometry is None:
        grad_x = xp.zeros((N, C, H, W), dtype=grad_y.dtype)  # (N, C, H, W)
        if grad_y.size == 0:
            return grad_x
        fn = module(xp, "pool").get_function("max_pool2d_backward_planes")
        grid, block = grid_1d(xp, N * C, PLANE_THREADS)  # one thread per (n, c) plane
        fn(grid, block, (grad_y, indices, grad_x, *_dims(N, C, H, W, OH, OW)))
        return grad_x
    kernel, stride, padding, dilation = geometry
    check_pool_windows((H, W), kernel, stride, padding, dilation, (OH, OW))
    grad_x = xp.empty((N, C, H, W), dtype=grad_y.dtype)  # (N, C, H, W)
    if grad_x.size == 0:
        return grad_x
    if grad_y.size == 0:
        grad_x[...] = 0
        return grad_x
    fn = module(xp, "pool").get_function("max_pool2d_backward_gather")
    grid, block = grid_1d(xp, grad_x.size, THREADS)  # one thread per input element
    fn(
        grid,
        block,
        (
            grad_y,
            indices,
            grad_x,
            *_dims(N, C, H, W, OH, OW),
            *_geometry(kernel, stride, padding, dilation),
        ),
    )
    return grad_x


def _dims(N, C, H, W, OH, OW):
    return tuple(i32(v) for v in (N, C, H, W, OH, OW))


def _geometry(kernel, stride, padding, dilation):
    """R, S, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w as kernel ints."""
    return tuple(i32(v) for v in (*kernel, *stride, *padding, *dilation))
