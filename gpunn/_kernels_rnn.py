"""Host wrappers of ``kernels/lstm.cu`` and ``kernels/rnn.cu`` (one recurrent layer), generic in
``xp`` (numpy: emulator, cupy: GPU).

A whole sequence runs as: the input projection of all T steps as one GEMM; then per step one
recurrent GEMM into a preallocated buffer and one fused cell launch writing h straight into
y[t]. Backward through time likewise (per step one fused cell-backward launch and one GEMM
for dh_prev), then the weight gradients as GEMMs over all T*N rows at once and the bias
gradients as one sum. No host synchronisation and no per-step allocation on the GPU.

Arguments arrive validated by ``gpunn.functional``: float32 C-contiguous arrays of one module;
x (T, N, I), h0/c0 (N, HID), weight_ih (G, I), weight_hh (G, HID), biases (G,) or both None,
with G = 4*HID for the LSTM and HID for the RNN. ``saved`` is read-only in backward.
"""

from __future__ import annotations

from typing import NamedTuple

from gpunn._backend import get_array_module
from gpunn._loader import grid_1d, i32, module

# One thread per (n, j); 256 threads (8 warps) per block, nothing shared within a block.
THREADS = 256


class LstmSaved(NamedTuple):
    x: object  # (T, N, I)
    h0: object  # (N, HID)
    c0: object  # (N, HID)
    w_ih: object  # (4HID, I)
    w_hh: object  # (4HID, HID)
    bias_given: tuple  # (bias_ih is not None, bias_hh is not None)
    y: object  # (T, N, HID): h_t for every t
    cs: object  # (T, N, HID): c_t for every t
    gates: object  # (T, N, 4HID): activated i, f, g, o


class RnnSaved(NamedTuple):
    x: object  # (T, N, I)
    h0: object  # (N, HID)
    w_ih: object  # (HID, I)
    w_hh: object  # (HID, HID)
    bias_given: tuple  # (bias_ih is not None, bias_hh is not None)
    y: object  # (T, N, HID): h_t for every t


def _biases(xp, x, b_ih, b_hh, G):
    """(has_bias, bias_ih, bias_hh, which) for the cell kernel: a missing bias of a pair is
    zeros; with neither, x stands in (never read, has_bias == 0). ``which`` records which
    biases exist, so backward returns None for the others."""
    which = (b_ih is not None, b_hh is not None)
    if not any(which):
        return False, x, x, which
    zeros = xp.zeros(G, dtype=x.dtype)  # (G,)
    return True, zeros if b_ih is None else b_ih, zeros if b_hh is None else b_hh, which


def _flag(present) -> object:
    return i32(1 if present else 0)


def _input_projection(xp, x, w_ih):
    """x W_ih^T for all T steps as one GEMM: (T, N, G)."""
    T, N, I = x.shape
    return xp.matmul(x.reshape(T * N, I), w_ih.T).reshape(T, N, w_ih.shape[0])


def _weight_grads(xp, dpre, saved):
    """grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh from the pre-activation gradients
    of every step, dpre (T, N, G), as GEMMs over all T*N rows (BPTT: a shared weight's
    gradient is the sum over the steps)."""
    x, h0, y, bias_given = saved.x, saved.h0, saved.y, saved.bias_given
    T, N, I = x.shape
    HID = h0.shape[1]
    G = dpre.shape[2]
    rows = dpre.reshape(T * N, G)  # (T*N, G)
    grad_x = xp.matmul(rows, saved.w_ih).reshape(T, N, I)  # (T, N, I)
    grad_w_ih = xp.matmul(rows.T, x.reshape(T * N, I))  # (G, I)
    # dW_hh = sum_t dpre_t^T h_{t-1}, with h_{-1} = h0 and h_t = y[t]
    grad_w_hh = xp.matmul(dpre[0].T, h0)  # (G, HID)
    if T > 1:
        grad_w_hh += xp.matmul(rows[N:].T, y[:-1].reshape((T - 1) * N, HID))
    if not any(bias_given):
        return grad_x, grad_w_ih, grad_w_hh, None, None
    grad_b = rows.sum(axis=0)  # (G,): d(b_ih) = d(b_hh) = the sum over steps and batch
    grad_b_ih = grad_b if bias_given[0] else None
    grad_b_hh = (grad_b.copy() if bias_given[0] else grad_b) if bias_given[1] else None
    return grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def _empty_backward(xp, saved, state_grads):
    """Backward of an empty sequence (T, N or HID = 0): each incoming state gradient passes
    through unchanged (zeros when None), every other gradient is zeros. ``state_grads`` pairs
    each state gradient with its state: ((grad_hn, h0),) or ((grad_hn, h0), (grad_cn, c0))."""
    states = (xp.zeros_like(like) if g is None else g.copy() for g, like in state_grads)
    grads = (xp.zeros_like(saved.w_ih), xp.zeros_like(saved.w_hh))
    G = saved.w_ih.shape[0]
    biases = (xp.zeros(G, dtype=saved.x.dtype) if given else None for given in saved.bias_given)
    return (xp.zeros_like(saved.x), *states, *grads, *biases)


def _incoming_dh(t, T, grad_y, grad_hn, dh):
    """The two gradient terms that reach h_t in backward step t, with their presence flags:
    grad_y[t] from the output, and grad_hn (last step) or the recurrent dh (earlier steps).
    An absent term is replaced by ``dh`` as a stand-in the kernel never reads."""
    from_y = grad_y[t] if grad_y is not None else dh
    if t == T - 1:
        from_next = grad_hn if grad_hn is not None else dh
        has_next = grad_hn is not None
    else:
        from_next, has_next = dh, True
    return from_y, from_next, _flag(grad_y is not None), _flag(has_next)


# ---- LSTM ------------------------------------------------------------------------------------


def lstm_cell_forward(gates, c_prev):
    """(h, c), each (N, HID), from pre-activation gates (N, 4HID) whose biases are added."""
    xp = get_array_module(gates)
    N, HID = c_prev.shape
    h = xp.empty((N, HID), dtype=gates.dtype)  # (N, HID)
    c = xp.empty((N, HID), dtype=gates.dtype)  # (N, HID)
    if h.size == 0:
        return h, c
    fn = module(xp, "lstm").get_function("lstm_cell_forward")
    grid, block = grid_1d(xp, N * HID, THREADS)  # one thread per (n, j)
    # gh, the biases and the saved gates are absent: gates stands in for them, never touched.
    args = (gates, gates, gates, gates, c_prev, h, c, gates, i32(N), i32(HID))
    fn(grid, block, (*args, _flag(False), _flag(False), _flag(False)))
    return h, c


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
    """(y (T, N, HID), h_n (N, HID), c_n (N, HID), saved)."""
    xp = get_array_module(x)
    T, N, _ = x.shape
    HID = w_hh.shape[1]
    G = 4 * HID
    has_bias, bias_ih, bias_hh, which = _biases(xp, x, b_ih, b_hh, G)
    y = xp.empty((T, N, HID), dtype=x.dtype)  # (T, N, HID)
    cs = xp.empty((T, N, HID), dtype=x.dtype)  # (T, N, HID)
    gates = xp.empty((T, N, G), dtype=x.dtype)  # (T, N, 4HID)
    saved = LstmSaved(x, h0, c0, w_ih, w_hh, which, y, cs, gates)
    if T == 0 or N == 0 or HID == 0:
        return y, h0.copy(), c0.copy(), saved
    xg = _input_projection(xp, x, w_ih)  # (T, N, 4HID)
    gh = xp.empty((N, G), dtype=x.dtype)  # (N, 4HID): h_{t-1} W_hh^T, reused every step
    w_hh_t = w_hh.T  # (HID, 4HID) view
    fn = module(xp, "lstm").get_function("lstm_cell_forward")
    grid, block = grid_1d(xp, N * HID, THREADS)  # one thread per (n, j)
    # N, HID and the flags (has_gh, has_bias, save_gates) are the same for every step
    tail = (i32(N), i32(HID), _flag(True), _flag(has_bias), _flag(True))
    for t in range(T):
        h_prev = h0 if t == 0 else y[t - 1]
        c_prev = c0 if t == 0 else cs[t - 1]
        xp.matmul(h_prev, w_hh_t, out=gh)
        fn(grid, block, (xg[t], gh, bias_ih, bias_hh, c_prev, y[t], cs[t], gates[t], *tail))
    # y is returned as a copy: the caller may overwrite its output, backward reads saved.y
    return y.copy(), y[T - 1].copy(), cs[T - 1].copy(), saved


def lstm_backward(saved, grad_y, grad_hn, grad_cn):
    """(grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh); each incoming
    gradient may be None (zeros). ``saved`` is only read."""
    xp = get_array_module(saved.x)
    T, N, _ = saved.x.shape
    HID = saved.h0.shape[1]
    if T == 0 or N == 0 or HID == 0:
        return _empty_backward(xp, saved, ((grad_hn, saved.h0), (grad_cn, saved.c0)))
    dgates = xp.empty((T, N, 4 * HID), dtype=saved.x.dtype)  # (T, N, 4HID) pre-activation
    dh = xp.empty((N, HID), dtype=saved.x.dtype)  # (N, HID): gradient reaching h_{t-1}
    dc = xp.empty((N, HID), dtype=saved.x.dtype)  # (N, HID): gradient reaching c_{t-1}
    fn = module(xp, "lstm").get_function("lstm_cell_backward")
    grid, block = grid_1d(xp, N * HID, THREADS)  # one thread per (n, j)
    dims = (i32(N), i32(HID))
    for t in range(T - 1, -1, -1):
        dh_a, dh_b, has_a, has_b = _incoming_dh(t, T, grad_y, grad_hn, dh)
        last = t == T - 1
        dc_in = (grad_cn if grad_cn is not None else dc) if last else dc
        has_c = _flag(grad_cn is not None if last else True)
        c_prev = saved.c0 if t == 0 else saved.cs[t - 1]
        args = (dh_a, dh_b, dc_in, saved.gates[t], c_prev, saved.cs[t], dgates[t], dc)
        fn(grid, block, (*args, *dims, has_a, has_b, has_c))
        xp.matmul(dgates[t], saved.w_hh, out=dh)  # dh_{t-1} = dgates_t W_hh
    grads = _weight_grads(xp, dgates, saved)
    return (grads[0], dh, dc, *grads[1:])


# ---- tanh RNN --------------------------------------------------------------------------------


def rnn_tanh_forward(x, h0, w_ih, w_hh, b_ih, b_hh):
    """(y (T, N, HID), h_n (N, HID), saved)."""
    xp = get_array_module(x)
    T, N, _ = x.shape
    HID = w_hh.shape[1]
    has_bias, bias_ih, bias_hh, which = _biases(xp, x, b_ih, b_hh, HID)
    y = xp.empty((T, N, HID), dtype=x.dtype)  # (T, N, HID)
    saved = RnnSaved(x, h0, w_ih, w_hh, which, y)
    if T == 0 or N == 0 or HID == 0:
        return y, h0.copy(), saved
    xg = _input_projection(xp, x, w_ih)  # (T, N, HID)
    gh = xp.empty((N, HID), dtype=x.dtype)  # (N, HID): h_{t-1} W_hh^T, reused every step
    w_hh_t = w_hh.T  # (HID, HID) view
    fn = module(xp, "rnn").get_function("rnn_tanh_cell_forward")
    grid, block = grid_1d(xp, N * HID, THREADS)  # one thread per (n, j)
    # N, HID and the flags (has_gh, has_bias) are the same for every step
    tail = (i32(N), i32(HID), _flag(True), _flag(has_bias))
    for t in range(T):
        h_prev = h0 if t == 0 else y[t - 1]
        xp.matmul(h_prev, w_hh_t, out=gh)
        fn(grid, block, (xg[t], gh, bias_ih, bias_hh, y[t], *tail))
    return y.copy(), y[T - 1].copy(), saved  # a copy of y, as in lstm_forward


def rnn_tanh_backward(saved, grad_y, grad_hn):
    """(grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh); grad_y and grad_hn may
    be None (zeros). ``saved`` is only read."""
    xp = get_array_module(saved.x)
    T, N, _ = saved.x.shape
    HID = saved.h0.shape[1]
    if T == 0 or N == 0 or HID == 0:
        return _empty_backward(xp, saved, ((grad_hn, saved.h0),))
    dpre = xp.empty((T, N, HID), dtype=saved.x.dtype)  # (T, N, HID) pre-activation
    dh = xp.empty((N, HID), dtype=saved.x.dtype)  # (N, HID): gradient reaching h_{t-1}
    fn = module(xp, "rnn").get_function("rnn_tanh_cell_backward")
    grid, block = grid_1d(xp, N * HID, THREADS)  # one thread per (n, j)
    dims = (i32(N), i32(HID))
    for t in range(T - 1, -1, -1):
        dh_a, dh_b, has_a, has_b = _incoming_dh(t, T, grad_y, grad_hn, dh)
        fn(grid, block, (dh_a, dh_b, saved.y[t], dpre[t], *dims, has_a, has_b))
        xp.matmul(dpre[t], saved.w_hh, out=dh)  # dh_{t-1} = dpre_t W_hh
    grads = _weight_grads(xp, dpre, saved)
    return (grads[0], dh, *grads[1:])
