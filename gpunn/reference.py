"""NumPy reference for every gpunn op, forward and backward, in float32 and float64.

This is the CPU backend ``"numpy"`` and the oracle the CUDA kernels are tested against. It is
written for clarity first and vectorised second: no Python loop runs over the batch or over
pixels. The convolution loops over its R*S filter taps, the recurrent ops over time steps.

Arguments arrive validated and normalised by ``gpunn.functional`` (see CONTRIBUTING.md): pairs
are tuples of ints, conv padding is ``(top, bottom, left, right)``, pool padding a pair, every
float array has one dtype (float32 or float64) and results come back in that dtype, computed in
it. Shape letters: N, C, H, W input; K output channels; R, S filter; OH, OW output; T, N, HID
for sequences; LSTM gates are ordered i, f, g, o.

The convolution, pooling and recurrent ops take NumPy arrays; the recurrent ops, the LSTM cell
and the non-kernel ops (linear, ReLU, tanh, cross-entropy) are generic in ``xp`` and also accept
CuPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpunn._backend import get_array_module
from gpunn._shapes import ceil_div, conv_out_size, pool_out_size

# --------------------------------------------------------------------------------------------
# Convolution
#
# y[n, k, oh, ow] = b[k] + sum_{c, r, s} w[k, c, r, s] * xpad[n, c, oh*sh + r*dh, ow*sw + s*dw]
#
# Strategy: im2col GEMMs over blocks of output positions, the input read through plain slices,
# so that the large temporaries are the size of x and y, never R*S times that (on these
# machines fresh memory, not arithmetic, dominates a whole-batch im2col).
# 1. Stride phases. The padded input is split by stride into sh*sw phase planes, phase (a, b)
#    holding xpad[a::sh, b::sw] (Hq x Wq each). Padded row oh*sh + r*dh is then phase row
#    oh + (r*dh)//sh of row phase a = (r*dh) % sh, and likewise for columns, so every filter
#    tap reads one phase plane at stride 1.
# 2. Channel-major, batch flattened. Phase planes are stored as X (C, sh*sw, (N+1)*Hq*Wq): for
#    output position m = (n*Hq + oh)*Wq + ow, tap t = (r, s) reads X[c, phase_t, m + offset_t]
#    with offset_t = ((r*dh)//sh)*Wq + (s*dw)//sw. A tap's input over a run of positions is
#    therefore one 2-D slice (C, run). Positions with oh >= OH or ow >= OW are scratch:
#    computed and cropped in forward, given zero gradient in backward. The extra zero image at
#    the end keeps the scratch reads in bounds (offset_t < Hq*Wq).
# 3. Blocks of positions. For the positions [m0, m1) the im2col block is
#        cols[c, t, j] = X[c, phase_t, m0 + j + offset_t]      (C, R*S, m1 - m0)
#    (R*S slice copies) and, with Wmat = weight as (K, C*R*S), columns ordered (c, r, s):
#        forward    y[:, m0:m1] = Wmat @ cols
#        backward   grad_w^T += cols @ gy[:, m0:m1]^T
#                   grad_cols = Wmat^T @ gy[:, m0:m1], and each tap's rows are added back to
#                   the positions of X they were copied from (a scatter-add: the taps of
#                   neighbouring outputs overlap in the input).
#    The loop runs over blocks of positions that span images, not over images or pixels.
# --------------------------------------------------------------------------------------------

# Bytes of one im2col block. Small enough to stay in the last-level cache between its copy and
# its GEMM; large enough that a ResNet-size layer makes a dozen or so BLAS calls, not hundreds:
# measured on 2 cores, each threaded BLAS call costs a thread hand-off, and under load from
# other processes 1 MB blocks ran several times slower than 16 MB ones.
COLS_BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class _ConvGeometry:
    """Output size and where each filter tap reads in the stride-phase planes."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    OH: int
    OW: int
    Hq: int  # rows of one phase plane
    Wq: int  # columns of one phase plane
    stride: tuple
    padding4: tuple
    taps: tuple  # per tap t = r*S + s: (phase index a*sw + b, flat offset in the phase plane)

    @property
    def M(self) -> int:
        """Output positions on the scratch-widened grid: N * Hq * Wq."""
        return self.N * self.Hq * self.Wq


def _conv_geometry(x_shape, w_shape, stride, padding4, dilation) -> _ConvGeometry:
    N, C, H, W = x_shape
    K, _, R, S = w_shape
    sh, sw = stride
    top, bottom, left, right = padding4
    dh, dw = dilation
    OH = conv_out_size(H, R, sh, top + bottom, dh)
    OW = conv_out_size(W, S, sw, left + right, dw)
    Hq = ceil_div(H + top + bottom, sh)
    Wq = ceil_div(W + left + right, sw)
    taps = tuple(
        (((r * dh) % sh) * sw + (s * dw) % sw, ((r * dh) // sh) * Wq + (s * dw) // sw)
        for r in range(R)
        for s in range(S)
    )
    return _ConvGeometry(N, C, H, W, K, R, S, OH, OW, Hq, Wq, stride, padding4, taps)


def _phase_planes(x, g: _ConvGeometry):
    """x (N, C, H, W) -> zero-padded phase planes X (C, sh*sw, (N+1)*Hq*Wq)."""
    sh, sw = g.stride
    top, _, left, _ = g.padding4
    xpad = np.zeros((g.C, g.N + 1, g.Hq * sh, g.Wq * sw), dtype=x.dtype)
    xpad[:, : g.N, top : top + g.H, left : left + g.W] = x.transpose(1, 0, 2, 3)
    # (C, N+1, Hq, sh, Wq, sw) -> (C, sh, sw, N+1, Hq, Wq): phase (a, b) = xpad[a::sh, b::sw]
    planes = xpad.reshape(g.C, g.N + 1, g.Hq, sh, g.Wq, sw).transpose(0, 3, 5, 1, 2, 4)
    return planes.reshape(g.C, sh * sw, (g.N + 1) * g.Hq * g.Wq)


def _unphase_planes(X, g: _ConvGeometry):
    """Inverse of ``_phase_planes``: X (C, sh*sw, (N+1)*Hq*Wq) -> (N, C, H, W)."""
    sh, sw = g.stride
    top, _, left, _ = g.padding4
    planes = X.reshape(g.C, sh, sw, g.N + 1, g.Hq, g.Wq).transpose(3, 0, 4, 1, 5, 2)
    xpad = planes.reshape(g.N + 1, g.C, g.Hq * sh, g.Wq * sw)
    return np.ascontiguousarray(xpad[: g.N, :, top : top + g.H, left : left + g.W])


def _position_blocks(g: _ConvGeometry, itemsize: int):
    """(m0, m1) ranges covering [0, M), each with an im2col block of about COLS_BLOCK_BYTES."""
    block = max(1, COLS_BLOCK_BYTES // max(1, g.C * g.R * g.S * itemsize))  # C = 0 allowed
    return [(m0, min(m0 + block, g.M)) for m0 in range(0, g.M, block)]


def _im2col_buffer(g: _ConvGeometry, blocks, dtype):
    """One buffer that every block's im2col matrix is written into: a fresh 16 MB array per
    block costs its page faults again each time (measured: the block copies ran ~1.5x slower)."""
    return np.empty(g.C * g.R * g.S * max((m1 - m0 for m0, m1 in blocks), default=0), dtype)


def _im2col_block(X, g: _ConvGeometry, m0: int, m1: int, buf):
    """cols (C, R*S, m1 - m0), in ``buf``: cols[c, t, j] = X[c, phase_t, m0 + j + offset_t]."""
    cols = buf[: g.C * g.R * g.S * (m1 - m0)].reshape(g.C, g.R * g.S, m1 - m0)
    for t, (phase, offset) in enumerate(g.taps):
        cols[:, t, :] = X[:, phase, m0 + offset : m1 + offset]
    return cols


def conv2d_forward(x, weight, bias, stride, padding4, dilation):
    """2D cross-correlation (PyTorch's conv2d, groups=1).

    x (N, C, H, W), weight (K, C, R, S), bias (K,) or None; stride and dilation (h, w) pairs;
    padding4 (top, bottom, left, right) zeros. Returns y (N, K, OH, OW).
    """
    g = _conv_geometry(x.shape, weight.shape, stride, padding4, dilation)
    X = _phase_planes(x, g)
    w_mat = weight.reshape(g.K, g.C * g.R * g.S)
    y_wide = np.empty((g.K, g.M), dtype=x.dtype)
    blocks = _position_blocks(g, x.itemsize)
    buf = _im2col_buffer(g, blocks, x.dtype)
    for m0, m1 in blocks:
        cols = _im2col_block(X, g, m0, m1, buf).reshape(g.C * g.R * g.S, m1 - m0)
        np.matmul(w_mat, cols, out=y_wide[:, m0:m1])
    # (K, N, Hq, Wq) -> crop the scratch positions -> (N, K, OH, OW)
    y = np.empty((g.N, g.K, g.OH, g.OW), dtype=x.dtype)
    y[...] = y_wide.reshape(g.K, g.N, g.Hq, g.Wq)[:, :, : g.OH, : g.OW].transpose(1, 0, 2, 3)
    if bias is not None:
        y += bias.reshape(1, g.K, 1, 1)
    return y


def conv2d_backward(grad_y, x, weight, stride, padding4, dilation, need_bias):
    """Gradients of ``conv2d_forward``.

    grad_y (N, K, OH, OW), x (N, C, H, W), weight (K, C, R, S). Returns (grad_x (N, C, H, W),
    grad_w (K, C, R, S), grad_b (K,) or None when ``need_bias`` is False).
    """
    g = _conv_geometry(x.shape, weight.shape, stride, padding4, dilation)
    CRS = g.C * g.R * g.S
    # grad_y on the scratch-widened grid (K, M); scratch positions get zero gradient.
    gy = np.zeros((g.K, g.N, g.Hq, g.Wq), dtype=grad_y.dtype)
    gy[:, :, : g.OH, : g.OW] = grad_y.transpose(1, 0, 2, 3)
    gy = gy.reshape(g.K, g.M)

    X = _phase_planes(x, g)
    w_mat = weight.reshape(g.K, CRS)
    grad_w_t = np.zeros((CRS, g.K), dtype=weight.dtype)  # grad_w transposed
    grad_X = np.zeros_like(X)
    blocks = _position_blocks(g, x.itemsize)
    buf = _im2col_buffer(g, blocks, x.dtype)
    for m0, m1 in blocks:
        gy_block = gy[:, m0:m1]  # (K, m1 - m0)
        # grad_w^T += cols (C*R*S, B) @ gy^T (B, K). (The untransposed product gy @ cols^T
        # is the same sum, but OpenBLAS runs that operand order several times slower.)
        grad_w_t += _im2col_block(X, g, m0, m1, buf).reshape(CRS, m1 - m0) @ gy_block.T
        # grad_cols = Wmat^T gy, then col2im: each tap's rows go back where they were read.
        grad_cols = (w_mat.T @ gy_block).reshape(g.C, g.R * g.S, m1 - m0)
        for t, (phase, offset) in enumerate(g.taps):
            grad_X[:, phase, m0 + offset : m1 + offset] += grad_cols[:, t, :]
    grad_x = _unphase_planes(grad_X, g)

    grad_b = grad_y.sum(axis=(0, 2, 3)) if need_bias else None
    return grad_x, np.ascontiguousarray(grad_w_t.T).reshape(weight.shape), grad_b


# --------------------------------------------------------------------------------------------
# Max pooling
#
# y[n, c, oh, ow] = max over the window at padded (oh*sh + r*dh, ow*sw + s*dw), 0 <= r < R,
# 0 <= s < S. Padded positions (and, in ceil mode, positions past the padding) never win.
#
# Strategy: one pass per window tap t = (r, s) over a strided view of the input itself: the
# windows whose tap t lies inside the image form a rectangle of (oh, ow), and there tap(t) =
# x[:, :, oh*sh - ph + r*dh, ow*sw - pw + s*dw] is one slice of x with steps (sh, sw). No window
# is copied out and no padded copy of x is made (fresh memory costs page faults on these
# machines: a -inf-filled padded input was the largest array the op touched).
# 1. y = max over t of tap(t), with np.maximum on each tap's rectangle, y starting at -inf:
#    padded positions never win and NaN propagates.
# 2. The chosen tap: the first t, in row-major window order, whose element equals y (taps
#    visited in reverse, each overwriting the choice on its rectangle); in a window holding a
#    NaN the last NaN tap instead (visited in order), PyTorch's CPU rule. A window with no
#    element inside the image keeps -1.
# 3. indices = the chosen element's h * W + w, from the window origin and the tap's offset.
# --------------------------------------------------------------------------------------------


def _pool_tap_range(out_size: int, size: int, stride: int, pad: int, offset: int):
    """Windows o in [o0, o1) whose tap at ``offset`` (r*dh) reads input row o*stride - pad +
    offset inside [0, size), and that first input row."""
    o0 = min(out_size, max(0, ceil_div(pad - offset, stride)))
    o1 = max(o0, min(out_size, (size - 1 + pad - offset) // stride + 1))
    return o0, o1, o0 * stride - pad + offset


def max_pool2d_forward(x, kernel, stride, padding, dilation, ceil_mode):
    """Max pooling with argmax indices (PyTorch's max_pool2d).

    x (N, C, H, W); kernel (R, S), stride, padding and dilation (h, w) pairs; ceil_mode bool.
    Returns y (N, C, OH, OW) and indices (N, C, OH, OW) int64 into the flattened H*W plane
    (h * W + w). Ties go to the first maximum in row-major window order. A window holding a
    NaN outputs NaN and its index points at the last NaN of the window (PyTorch's CPU rule:
    a NaN always replaces the running maximum). A window with no element inside the image
    (possible with dilation) gives -inf and index -1.
    """
    N, C, H, W = x.shape
    R, S = kernel
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    OH = pool_out_size(H, R, sh, ph, dh, ceil_mode)
    OW = pool_out_size(W, S, sw, pw, dw, ceil_mode)
    taps = [(r, s) for r in range(R) for s in range(S)]  # t = r*S + s, row-major

    def tap(r, s):
        """(window rectangle, view of x): tap (r, s) of the windows in the rectangle."""
        oh0, oh1, h0 = _pool_tap_range(OH, H, sh, ph, r * dh)
        ow0, ow1, w0 = _pool_tap_range(OW, W, sw, pw, s * dw)
        rect = (slice(None), slice(None), slice(oh0, oh1), slice(ow0, ow1))
        return rect, x[:, :, h0::sh, w0::sw][:, :, : oh1 - oh0, : ow1 - ow0]

    y = np.full((N, C, OH, OW), -np.inf, dtype=x.dtype)
    for r, s in taps:
        rect, view = tap(r, s)
        np.maximum(y[rect], view, out=y[rect])  # NaN propagates through maximum

    # indices[n, c, oh, ow] = h * W + w of the chosen tap, written on each tap's rectangle:
    # index_of(r, s)[oh, ow] = (oh*sh - ph + r*dh) * W + (ow*sw - pw + s*dw).
    origin = (np.arange(OH) * sh - ph)[:, None] * W + (np.arange(OW) * sw - pw)  # (OH, OW)

    def index_of(t, rect):
        r, s = taps[t]
        return origin[rect[2:]] + (r * dh * W + s * dw)

    indices = np.full(y.shape, -1, dtype=np.int64)
    hit = np.empty(y.shape, dtype=bool)
    for t in reversed(range(len(taps))):
        rect, view = tap(*taps[t])
        np.equal(view, y[rect], out=hit[rect])
        np.copyto(indices[rect], index_of(t, rect), where=hit[rect])
    if np.isnan(y).any():
        for t, (r, s) in enumerate(taps):
            rect, view = tap(r, s)
            np.copyto(indices[rect], index_of(t, rect), where=np.isnan(view))
    return y, indices


def max_pool2d_backward(grad_y, indices, input_shape, geometry=None):
    """Gradient of max pooling: each window's gradient goes to the element it chose.

    grad_y and indices (N, C, OH, OW); input_shape (N, C, H, W). Overlapping windows that
    chose the same element add up (a scatter-add, np.add.at, which accumulates repeats; on
    1-D indices NumPy runs it several times faster than on an index tuple).
    ``geometry`` is accepted for the kernel family's signature and not needed here.
    An index of -1 (a window wholly in the padding) passes no gradient. Returns grad_x
    (N, C, H, W).
    """
    N, C, H, W = input_shape
    grad_x = np.zeros(N * C * H * W, dtype=grad_y.dtype)
    P = indices.shape[2] * indices.shape[3]  # OH * OW windows per plane
    flat = indices.reshape(N * C, P) + (np.arange(N * C) * (H * W))[:, None]  # into grad_x
    grad = grad_y.reshape(N * C, P)
    chose = indices.reshape(N * C, P) >= 0  # -1: a window wholly in the padding
    if not chose.all():
        flat, grad = flat[chose], grad[chose]
    np.add.at(grad_x, flat.reshape(-1), grad.reshape(-1))
    return grad_x.reshape(N, C, H, W)


# --------------------------------------------------------------------------------------------
# Recurrent layers (one layer; gpunn.nn stacks them). Generic in xp: NumPy or CuPy arrays.
#
# LSTM, gates ordered i, f, g, o:
#   gates_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh          (N, 4*HID)
#   i, f, o = sigmoid(.), g = tanh(.)
#   c_t = f * c_{t-1} + i * g,   h_t = o * tanh(c_t)
# tanh RNN:
#   h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)
# Forward projects the inputs of all steps with one GEMM, then loops over t. Backward through
# time loops over t in reverse for the recurrent part, then gets grad_x and the weight
# gradients of all steps with one GEMM each (the shared weights' gradient is the sum over t).
# The step loop writes into preallocated arrays (out=, in-place ops): at N=1 the per-step
# arithmetic is tiny, so fresh temporaries and a transposed-weight view would dominate it.
# W_hh^T is copied once to a C-contiguous (HID, G) array: OpenBLAS runs h @ W_hh.T (a
# transposed view) up to 100x slower than the same product on a contiguous matrix at N=1.
# --------------------------------------------------------------------------------------------


def _sigmoid_(a):
    """a = sigmoid(a) in place, computed as 0.5 * tanh(a / 2) + 0.5: no exp, no overflow."""
    xp = get_array_module(a)
    a *= 0.5
    xp.tanh(a, out=a)
    a *= 0.5
    a += 0.5
    return a


def _input_projection(x, w_ih, b_ih, b_hh):
    """x (T, N, I) -> x_t W_ih^T + b_ih + b_hh for every t, (T, N, G) with G the gate width."""
    proj = x @ w_ih.T
    biases = [b for b in (b_ih, b_hh) if b is not None]
    if biases:
        proj += sum(biases[1:], biases[0])  # (G,): one pass over proj for both biases
    return proj


def _recurrent_weight_grads(grad_pre, x, h_prev, has_ih_bias, has_hh_bias):
    """Gradients of W_ih, W_hh and the biases from the pre-activation gradients of all steps.

    grad_pre (T, N, G), x (T, N, I), h_prev (T, N, HID) the hidden state entering each step.
    grad_W_ih = sum_t grad_pre_t^T x_t, one GEMM over the T*N rows; likewise grad_W_hh.
    """
    T, N, G = grad_pre.shape
    flat = grad_pre.reshape(T * N, G)
    grad_w_ih = flat.T @ x.reshape(T * N, x.shape[2])
    grad_w_hh = flat.T @ h_prev.reshape(T * N, h_prev.shape[2])
    grad_b = flat.sum(axis=0)
    return (
        grad_w_ih,
        grad_w_hh,
        grad_b if has_ih_bias else None,
        grad_b.copy() if has_hh_bias else None,
    )


def _grad_or_zeros(grad, like):
    xp = get_array_module(like)
    return xp.zeros_like(like) if grad is None else grad


def lstm_cell_forward(gates, c_prev):
    """One fused LSTM step for a batch.

    gates (N, 4*HID) pre-activations with the biases already added, ordered i, f, g, o;
    c_prev (N, HID). Returns (h, c), each (N, HID).
    """
    xp = get_array_module(gates)
    h, c = xp.empty_like(c_prev), xp.empty_like(c_prev)
    _lstm_cell_(gates.copy(), c_prev, h, c)
    return h, c


def _lstm_cell_(act, c_prev, h_out, c_out):
    """One LSTM step in place: ``act`` (N, 4*HID) holds the pre-activation gates on entry and
    the activated gates i, f, g, o (kept for backward) on return; h_out and c_out (N, HID)
    receive h and c.
    """
    xp = get_array_module(act)
    HID = c_prev.shape[1]
    _sigmoid_(act[:, : 2 * HID])  # i, f
    xp.tanh(act[:, 2 * HID : 3 * HID], out=act[:, 2 * HID : 3 * HID])  # g
    _sigmoid_(act[:, 3 * HID :])  # o
    i, f, g, o = (act[:, k * HID : (k + 1) * HID] for k in range(4))
    # c = f * c_prev + i * g   (h_out holds i * g until h is written)
    xp.multiply(f, c_prev, out=c_out)
    xp.multiply(i, g, out=h_out)
    c_out += h_out
    # h = o * tanh(c)
    xp.tanh(c_out, out=h_out)
    h_out *= o


@dataclass(frozen=True)
class LSTMSaved:
    """What ``lstm_backward`` needs; never modified after ``lstm_forward`` returns."""

    x: object  # (T, N, I)
    h: object  # (T + 1, N, HID): h[0] = h0, h[t + 1] = output of step t
    c: object  # (T + 1, N, HID): c[0] = c0
    act: object  # (T, N, 4*HID) activated gates i, f, g, o
    w_ih: object  # (4*HID, I)
    w_hh: object  # (4*HID, HID)
    has_ih_bias: bool
    has_hh_bias: bool


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """One LSTM layer over a whole sequence.

    x (T, N, I), h0 and c0 (N, HID), w_ih (4*HID, I), w_hh (4*HID, HID), b_ih and b_hh
    (4*HID,) or None. Returns (y (T, N, HID), h_n (N, HID), c_n (N, HID), saved).
    """
    xp = get_array_module(x)
    T, N, _ = x.shape
    HID = h0.shape[1]
    # act starts as the input projections; each step adds h_{t-1} W_hh^T and activates it.
    act = _input_projection(x, w_ih, b_ih, b_hh)  # (T, N, 4*HID)
    w_hh_t = xp.ascontiguousarray(w_hh.T)  # (HID, 4*HID)
    h = xp.empty((T + 1, N, HID), dtype=x.dtype)
    c = xp.empty((T + 1, N, HID), dtype=x.dtype)
    recurrent = xp.empty((N, 4 * HID), dtype=x.dtype)  # h_{t-1} W_hh^T, one buffer for all t
    h[0], c[0] = h0, c0
    for t in range(T):
        xp.matmul(h[t], w_hh_t, out=recurrent)
        act[t] += recurrent
        _lstm_cell_(act[t], c[t], h[t + 1], c[t + 1])
    saved = LSTMSaved(x, h, c, act, w_ih, w_hh, b_ih is not None, b_hh is not None)
    return h[1:].copy(), h[T].copy(), c[T].copy(), saved


def lstm_backward(saved: LSTMSaved, grad_y, grad_hn, grad_cn):
    """Backward through time for ``lstm_forward``; a None gradient counts as zeros.

    grad_y (T, N, HID), grad_hn and grad_cn (N, HID). Returns (grad_x (T, N, I), grad_h0,
    grad_c0 (N, HID), grad_w_ih (4*HID, I), grad_w_hh (4*HID, HID), grad_b_ih, grad_b_hh
    (4*HID,) or None where the bias was None).
    """
    xp = get_array_module(saved.x)
    T = saved.x.shape[0]
    HID = saved.h.shape[2]
    grad_y = _grad_or_zeros(grad_y, saved.h[1:])
    dh = _grad_or_zeros(grad_hn, saved.h[T]).copy()  # grad of h_t, (N, HID)
    dc = _grad_or_zeros(grad_cn, saved.c[T]).copy()  # grad of c_t, (N, HID)
    grad_pre = xp.empty_like(saved.act)  # (T, N, 4*HID) grads of the pre-activation gates
    for t in range(T - 1, -1, -1):
        i, f, g, o = (saved.act[t, :, k * HID : (k + 1) * HID] for k in range(4))
        tanh_c = xp.tanh(saved.c[t + 1])
        dh = dh + grad_y[t]
        # h = o * tanh(c)
        do = dh * tanh_c
        dc = dc + dh * o * (1 - tanh_c * tanh_c)
        # c = f * c_prev + i * g
        di, df, dg = dc * g, dc * saved.c[t], dc * i
        # through the activations: sigmoid' = s (1 - s), tanh' = 1 - tanh^2
        grad_pre[t, :, :HID] = di * i * (1 - i)
        grad_pre[t, :, HID : 2 * HID] = df * f * (1 - f)
        grad_pre[t, :, 2 * HID : 3 * HID] = dg * (1 - g * g)
        grad_pre[t, :, 3 * HID :] = do * o * (1 - o)
        dh = grad_pre[t] @ saved.w_hh  # grad of h_{t-1}
        dc = dc * f  # grad of c_{t-1}
    grad_x = grad_pre @ saved.w_ih  # (T, N, I)
    weight_grads = _recurrent_weight_grads(
        grad_pre, saved.x, saved.h[:T], saved.has_ih_bias, saved.has_hh_bias
    )
    return (grad_x, dh, dc, *weight_grads)


@dataclass(frozen=True)
class RNNSaved:
    """What ``rnn_tanh_backward`` needs; never modified after ``rnn_tanh_forward`` returns."""

    x: object  # (T, N, I)
    h: object  # (T + 1, N, HID): h[0] = h0
    w_ih: object  # (HID, I)
    w_hh: object  # (HID, HID)
    has_ih_bias: bool
    has_hh_bias: bool


def rnn_tanh_forward(x, h0, w_ih, w_hh, b_ih, b_hh):
    """One tanh RNN layer over a whole sequence.

    x (T, N, I), h0 (N, HID), w_ih (HID, I), w_hh (HID, HID), b_ih and b_hh (HID,) or None.
    Returns (y (T, N, HID), h_n (N, HID), saved).
    """
    xp = get_array_module(x)
    T, N, _ = x.shape
    HID = h0.shape[1]
    proj = _input_projection(x, w_ih, b_ih, b_hh)  # (T, N, HID)
    w_hh_t = xp.ascontiguousarray(w_hh.T)  # (HID, HID)
    h = xp.empty((T + 1, N, HID), dtype=x.dtype)
    h[0] = h0
    for t in range(T):
        xp.matmul(h[t], w_hh_t, out=h[t + 1])
        h[t + 1] += proj[t]
        xp.tanh(h[t + 1], out=h[t + 1])
    saved = RNNSaved(x, h, w_ih, w_hh, b_ih is not None, b_hh is not None)
    return h[1:].copy(), h[T].copy(), saved


def rnn_tanh_backward(saved: RNNSaved, grad_y, grad_hn):
    """Backward through time for ``rnn_tanh_forward``; a None gradient counts as zeros.

    grad_y (T, N, HID), grad_hn (N, HID). Returns (grad_x (T, N, I), grad_h0 (N, HID),
    grad_w_ih (HID, I), grad_w_hh (HID, HID), grad_b_ih, grad_b_hh (HID,) or None).
    """
    xp = get_array_module(saved.x)
    T = saved.x.shape[0]
    grad_y = _grad_or_zeros(grad_y, saved.h[1:])
    dh = _grad_or_zeros(grad_hn, saved.h[T]).copy()  # grad of h_t
    grad_pre = xp.empty_like(saved.h[1:])  # (T, N, HID)
    for t in range(T - 1, -1, -1):
        # h_t = tanh(pre_t): tanh' = 1 - h_t^2
        grad_pre[t] = (dh + grad_y[t]) * (1 - saved.h[t + 1] * saved.h[t + 1])
        dh = grad_pre[t] @ saved.w_hh  # grad of h_{t-1}
    grad_x = grad_pre @ saved.w_ih  # (T, N, I)
    weight_grads = _recurrent_weight_grads(
        grad_pre, saved.x, saved.h[:T], saved.has_ih_bias, saved.has_hh_bias
    )
    return (grad_x, dh, *weight_grads)


# --------------------------------------------------------------------------------------------
# Linear, activations and loss: not CUDA kernels in this project, written once, generic in xp.
# --------------------------------------------------------------------------------------------


def linear_forward(x, w, b):
    """y = x W^T + b. x (*, in), w (out, in), b (out,) or None. Returns y (*, out)."""
    y = x @ w.T
    if b is not None:
        y = y + b
    return y


def linear_backward(grad_y, x, w, need_bias):
    """Gradients of ``linear_forward``.

    grad_y (*, out), x (*, in), w (out, in). Returns (grad_x (*, in), grad_w (out, in),
    grad_b (out,) or None when ``need_bias`` is False).
    """
    out_features, in_features = w.shape
    gy = grad_y.reshape(-1, out_features)  # (rows, out), rows = product of the * dims
    grad_x = grad_y @ w
    grad_w = gy.T @ x.reshape(-1, in_features)
    grad_b = gy.sum(axis=0) if need_bias else None
    return grad_x, grad_w, grad_b


def relu_forward(x):
    """max(x, 0) elementwise; NaN stays NaN."""
    return get_array_module(x).maximum(x, 0)


def relu_backward(grad_y, x_or_y):
    """grad_y, zeroed where the input (or the output) is <= 0; NaN passes it, as in PyTorch."""
    xp = get_array_module(grad_y)
    return xp.where(x_or_y <= 0, xp.zeros_like(grad_y), grad_y)


def tanh_forward(x):
    """tanh elementwise."""
    return get_array_module(x).tanh(x)


def tanh_backward(grad_y, y):
    """grad_y * (1 - y^2), from the output y = tanh(x)."""
    return grad_y * (1 - y * y)


@dataclass(frozen=True)
class CrossEntropySaved:
    """What ``cross_entropy_backward`` needs: softmax probabilities and the targets."""

    probs: object  # (N, classes)
    target: object  # (N,) int64


def cross_entropy_forward(logits, target):
    """Mean softmax cross-entropy, as PyTorch's cross_entropy with reduction="mean".

    logits (N, classes), target (N,) int64 class indices. Returns (loss, saved) with loss a
    0-d array of the logits' module and dtype; NaN for N = 0, as PyTorch.
    log_softmax = z - log(sum(exp(z))) with z = logits - max(logits): exp never overflows.
    """
    xp = get_array_module(logits)
    N = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True) if N else logits
    log_probs = z - xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    picked = log_probs[xp.arange(N), target]  # (N,)
    if N:
        loss = -picked.sum() / logits.dtype.type(N)
    else:
        loss = xp.asarray(xp.nan, dtype=logits.dtype)
    saved = CrossEntropySaved(xp.exp(log_probs), target)
    return xp.asarray(loss, dtype=logits.dtype), saved


def cross_entropy_backward(saved: CrossEntropySaved):
    """Gradient of the mean loss for the logits: (softmax - onehot(target)) / N, (N, classes)."""
    xp = get_array_module(saved.probs)
    N = saved.probs.shape[0]
    grad = saved.probs.copy()
    grad[xp.arange(N), saved.target] -= 1
    if N:
        grad /= grad.dtype.type(N)
    return grad
