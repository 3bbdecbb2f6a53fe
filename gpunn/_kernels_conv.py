"""Host wrappers of ``kernels/conv2d.cu`` (convolution forward and backward), generic in ``xp``
(numpy: emulator, cupy: GPU).

Arguments arrive validated by ``gpunn.functional``: float32 C-contiguous x (N, C, H, W),
weight (K, C, R, S), bias (K,) or None, grad_y (N, K, OH, OW); stride and dilation pairs of
ints, padding4 = (top, bottom, left, right).
"""

from __future__ import annotations

import numpy

from gpunn._backend import get_array_module
from gpunn._loader import i32, module
from gpunn._shapes import ceil_div, conv_out_size

# The GEMM tile of conv2d_forward / conv2d_grad_input / conv2d_grad_weight; these must equal
# CONV_THREADS, CONV_BM, CONV_BN and CONV_BK in kernels/conv2d.cu (the tiling rationale is
# there). A block computes TILE_ROWS GEMM rows x TILE_COLS GEMM columns.
THREADS = 256
TILE_ROWS = 64
TILE_COLS = 128
TILE_K = 8
# Threads per block of conv2d_grad_bias and conv2d_sum_chunks (CONV_REDUCE_THREADS).
REDUCE_THREADS = 256

# Split-K of the weight gradient over the N*OH*OW pixels: enough chunks that the blocks
# cover two resident blocks on each of the H200's 132 SMs, at most MAX_CHUNKS slices of
# workspace, and chunks of at least MIN_CHUNK pixels (a shorter chunk moves more partial sums
# than it saves). The split depends on the shape only, never on the device, so a gradient is
# the same bits on every GPU and every run.
TARGET_BLOCKS = 264
MAX_CHUNKS = 64
MIN_CHUNK = 256

# Flat GEMM indices (N*OH*OW, N*H*W, C*R*S, K*R*S) are 32-bit ints in the kernels, with room
# for one tile's overrun past the end.
INDEX_LIMIT = 2**31 - 1024


def _output_hw(x_shape, w_shape, stride, padding4, dilation):
    _, _, H, W = x_shape
    _, _, R, S = w_shape
    top, bottom, left, right = padding4
    OH = conv_out_size(H, R, stride[0], top + bottom, dilation[0])
    OW = conv_out_size(W, S, stride[1], left + right, dilation[1])
    return OH, OW


def _geometry(x_shape, w_shape, OH, OW, stride, padding4, dilation):
    """The kernels' trailing arguments: N, C, H, W, K, R, S, OH, OW, stride_h, stride_w,
    pad_top, pad_left, dil_h, dil_w (bottom and right padding only shape OH and OW)."""
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    top, _, left, _ = padding4
    for what, value in (
        ("N*OH*OW", N * OH * OW),
        ("N*H*W", N * H * W),
        ("C*R*S", C * R * S),
        ("K*R*S", K * R * S),
    ):
        if value > INDEX_LIMIT:
            raise NotImplementedError(
                f"conv2d kernels index {what} in 32 bits: {value} is above {INDEX_LIMIT} "
                f"(x {tuple(x_shape)}, weight {tuple(w_shape)})"
            )
    values = (N, C, H, W, K, R, S, OH, OW, *stride, top, left, *dilation)
    return tuple(i32(v) for v in values)


def _gemm_grid(columns: int, rows: int, chunks: int = 1) -> tuple[int, int, int]:
    """One block per TILE_ROWS x TILE_COLS tile of the GEMM output (x: columns, y: rows)."""
    return (ceil_div(columns, TILE_COLS), ceil_div(rows, TILE_ROWS), chunks)


def weight_grad_chunks(npix: int, K: int, CRS: int) -> tuple[int, int]:
    """``(chunk, chunks)``: the pixel reduction of grad_w cut into ``chunks`` pieces of
    ``chunk`` pixels (a multiple of TILE_K; the last piece may be shorter)."""
    tiles = ceil_div(K, TILE_ROWS) * ceil_div(CRS, TILE_COLS)
    chunks = max(1, min(ceil_div(TARGET_BLOCKS, tiles), MAX_CHUNKS, npix // MIN_CHUNK))
    chunk = ceil_div(ceil_div(npix, chunks), TILE_K) * TILE_K
    return chunk, ceil_div(npix, chunk)


def conv2d_forward(x, weight, bias, stride, padding4, dilation):
    """y (N, K, OH, OW) = conv(x, weight) + bias."""
    xp = get_array_module(x)
    N = x.shape[0]
    K = weight.shape[0]
    OH, OW = _output_hw(x.shape, weight.shape, stride, padding4, dilation)
    y = xp.empty((N, K, OH, OW), dtype=x.dtype)  # (N, K, OH, OW)
    if y.size == 0:
        return y
    geometry = _geometry(x.shape, weight.shape, OH, OW, stride, padding4, dilation)
    has_bias = bias is not None
    if not has_bias:
        bias = xp.zeros((1,), dtype=x.dtype)  # (1,) never read: has_bias = 0
    fn = module(xp, "conv2d").get_function("conv2d_forward")
    grid = _gemm_grid(N * OH * OW, K)  # GEMM rows K, columns (n, oh, ow)
    fn(grid, (THREADS, 1, 1), (x, weight, bias, i32(has_bias), y, *geometry))
    return y


def conv2d_backward(grad_y, x, weight, stride, padding4, dilation, need_bias):
    """(grad_x (N, C, H, W), grad_w (K, C, R, S), grad_b (K,) or None)."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    K, _, R, S = weight.shape
    OH, OW = grad_y.shape[2], grad_y.shape[3]
    grad_x = xp.empty((N, C, H, W), dtype=x.dtype)  # (N, C, H, W)
    grad_w = xp.empty((K, C, R, S), dtype=x.dtype)  # (K, C, R, S)
    grad_b = xp.empty((K,), dtype=x.dtype) if need_bias else None  # (K,)
    if grad_y.size == 0:  # N = 0 or K = 0: no output contributes to any gradient
        for g in (grad_x, grad_w, grad_b):
            if g is not None:
                g[...] = 0
        return grad_x, grad_w, grad_b
    geometry = _geometry(x.shape, weight.shape, OH, OW, stride, padding4, dilation)
    mod = module(xp, "conv2d")

    # grad_x: GEMM rows C, columns (n, h, w), a gather over (k, r, s); no launch when x is
    # empty (C = 0, or an image of only padding), which an empty grid could not express.
    if grad_x.size:
        fn = mod.get_function("conv2d_grad_input")
        fn(_gemm_grid(N * H * W, C), (THREADS, 1, 1), (grad_y, weight, grad_x, *geometry))

    if grad_w.size:  # C = 0 leaves grad_w empty
        _grad_weight(mod, grad_y, x, grad_w, geometry)

    if grad_b is not None:
        fn = mod.get_function("conv2d_grad_bias")
        # one block per output channel k
        fn((K, 1, 1), (REDUCE_THREADS, 1, 1), (grad_y, grad_b, i32(N), i32(K), i32(OH * OW)))
    return grad_x, grad_w, grad_b


def _grad_weight(mod, grad_y, x, grad_w, geometry):
    """grad_w (K, C, R, S): GEMM rows K, columns (c, r, s), split-K over the pixels, then a
    fixed-order sum of the chunks."""
    xp = get_array_module(x)
    N, K = grad_y.shape[:2]
    npix, crs = N * grad_y.shape[2] * grad_y.shape[3], grad_w[0].size
    chunk, chunks = weight_grad_chunks(npix, K, crs)
    if chunks == 1:
        parts = grad_w
    else:
        parts = xp.empty((chunks, K, crs), dtype=x.dtype)  # (chunks, K, C*R*S)
    fn = mod.get_function("conv2d_grad_weight")
    grid = _gemm_grid(crs, K, chunks)
    fn(grid, (THREADS, 1, 1), (grad_y, x, parts, i32(chunk), *geometry))
    if chunks > 1:
        count = grad_w.size
        fn = mod.get_function("conv2d_sum_chunks")
        grid = (ceil_div(count, REDUCE_THREADS), 1, 1)  # one thread per grad_w element
        fn(grid, (REDUCE_THREADS, 1, 1), (parts, grad_w, numpy.int64(count), i32(chunks)))
