"""Timing harness behind ``gpunn bench`` and the op-by-op comparison behind ``gpunn check``.

Method (BENCHMARKS.md says the same for readers of the numbers):

- Every op runs on float32 inputs drawn from a seeded generator. The float64 NumPy reference
  runs once on the same values (the float32 inputs widened, so only arithmetic differs), and
  each row reports the norm-wise relative error ||out - ref|| / ||ref|| of gpunn and of the
  peer (the largest over the op's outputs).
- Timing: ``warmup`` untimed calls, then ``repeat`` timed calls; the row shows the median
  with the minimum and maximum. On the CPU each call is timed with ``time.perf_counter``. On
  the GPU each call is bracketed by CUDA events on the stream both gpunn (CuPy) and PyTorch
  use, and before each call a buffer of twice the L2 size is rewritten, so no repeat finds
  its inputs in L2.
- The peer (PyTorch) runs on the same arrays: ``torch.from_numpy`` on the CPU,
  ``torch.from_dlpack`` (zero-copy) on the GPU, where TF32 is off and ``cudnn.benchmark`` on.
- Roofline: an op that must move B bytes and do F FLOPs cannot take less than
  ``floor = max(B / peak_bandwidth, F / peak_flops)``; the row shows ``floor / median``
  (1.0 means at the hardware limit). The counts are the functions under "Work counts".
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

import gpunn
from gpunn import _loader, _signature
from gpunn._backend import cupy_module, device_info, gpu_unavailable_reason
from gpunn._shapes import conv_out_size, pool_out_size

BACKENDS = ("numpy", "emu", "cuda")
PEERS = ("torch", "none")
INDEX_ITEMSIZE = np.dtype(np.int64).itemsize  # pooling indices are int64

# --------------------------------------------------------------------------------------------
# Work counts: the one place where FLOPs and bytes are defined.
#
# FLOPs count multiplies and adds (a multiply-add is 2) and one per activation function
# evaluation (sigmoid, tanh); comparisons (max pooling) count nothing. Bytes are the ideal
# traffic: each input read once and each output written once, at the arrays' itemsize.
# Intermediates (im2col columns, saved gate activations) are not counted: the floor is what
# the op must do, not what an implementation chooses to do.
# --------------------------------------------------------------------------------------------

# Forward LSTM cell per hidden unit: 3 sigmoids + 2 tanh, c = f*c_prev + i*g (3), h = o*tanh(c)
# (1).
LSTM_CELL_FWD_FLOPS = 9
# Backward LSTM cell per hidden unit, given dh and dc_next and the saved activations:
# tc = tanh(c) (1); do = dh*tc (1); dc = dc_next + dh*o*(1 - tc*tc) (5); df = dc*c_prev,
# di = dc*g, dg = dc*i, dc_prev = dc*f (4); through the activations: sigmoid' = s*(1-s) times
# the incoming gradient for i, f, o (3 each) and tanh' = (1-g*g) times it for g (3) (12).
LSTM_CELL_BWD_FLOPS = 23
# Forward tanh-RNN cell per hidden unit: one tanh.
RNN_CELL_FWD_FLOPS = 1
# Backward tanh-RNN cell per hidden unit: da = dh * (1 - h*h) (3).
RNN_CELL_BWD_FLOPS = 3


@dataclass(frozen=True)
class Work:
    flops: int
    bytes: int


def conv2d_work(N, C, H, W, K, R, S, stride, padding, itemsize) -> Work:
    """Forward: 2*N*K*OH*OW*C*R*S FLOPs (bias adds not counted); read x, weight, bias, write y."""
    OH = conv_out_size(H, R, stride, 2 * padding, 1)
    OW = conv_out_size(W, S, stride, 2 * padding, 1)
    flops = 2 * N * K * OH * OW * C * R * S
    elements = N * C * H * W + K * C * R * S + K + N * K * OH * OW
    return Work(flops, elements * itemsize)


def conv2d_backward_work(N, C, H, W, K, R, S, stride, padding, itemsize) -> Work:
    """grad_x and grad_weight are a forward's FLOPs each; grad_bias adds N*K*OH*OW values.

    Reads grad_y, x, weight; writes grad_x, grad_weight, grad_bias.
    """
    OH = conv_out_size(H, R, stride, 2 * padding, 1)
    OW = conv_out_size(W, S, stride, 2 * padding, 1)
    flops = 4 * N * K * OH * OW * C * R * S + N * K * OH * OW
    reads = N * K * OH * OW + N * C * H * W + K * C * R * S
    writes = N * C * H * W + K * C * R * S + K
    return Work(flops, (reads + writes) * itemsize)


def max_pool2d_work(N, C, H, W, R, S, stride, padding, itemsize) -> Work:
    """No FLOPs; read x, write y and the int64 indices."""
    OH = pool_out_size(H, R, stride, padding, 1, False)
    OW = pool_out_size(W, S, stride, padding, 1, False)
    out = N * C * OH * OW
    return Work(0, N * C * H * W * itemsize + out * itemsize + out * INDEX_ITEMSIZE)


def max_pool2d_backward_work(N, C, H, W, R, S, stride, padding, itemsize) -> Work:
    """One add per window (N*C*OH*OW); read grad_y and the indices, write grad_x."""
    OH = pool_out_size(H, R, stride, padding, 1, False)
    OW = pool_out_size(W, S, stride, padding, 1, False)
    out = N * C * OH * OW
    return Work(out, out * itemsize + out * INDEX_ITEMSIZE + N * C * H * W * itemsize)


def lstm_cell_work(N, HID, itemsize) -> Work:
    """Fused cell on pre-activation gates: read gates (N, 4HID) and c_prev, write h and c."""
    return Work(LSTM_CELL_FWD_FLOPS * N * HID, (4 * N * HID + 3 * N * HID) * itemsize)


def _gate_gemm_flops(T, N, I, HID, gates) -> int:
    """Per step: x_t W_ih^T (2*N*G*I) + h W_hh^T (2*N*G*HID) + both biases (2*N*G), G=gates*HID."""
    G = gates * HID
    return T * (2 * N * G * I + 2 * N * G * HID + 2 * N * G)


def _recurrent_elements(T, N, I, HID, gates, cell_state) -> tuple[int, int]:
    """(input elements, output elements) of a whole-sequence forward.

    Inputs: x, h0 (and c0), weight_ih, weight_hh, bias_ih, bias_hh. Outputs: y, h_n (and c_n).
    """
    G = gates * HID
    states = 2 if cell_state else 1
    inputs = T * N * I + states * N * HID + G * I + G * HID + 2 * G
    outputs = T * N * HID + states * N * HID
    return inputs, outputs


def lstm_work(T, N, I, HID, itemsize) -> Work:
    flops = _gate_gemm_flops(T, N, I, HID, 4) + T * N * HID * LSTM_CELL_FWD_FLOPS
    inputs, outputs = _recurrent_elements(T, N, I, HID, 4, True)
    return Work(flops, (inputs + outputs) * itemsize)


def lstm_train_work(T, N, I, HID, itemsize) -> Work:
    """Forward, then backward through time from grad_y.

    Backward per step: grad of x_t and of h (2*N*G*I + 2*N*G*HID), the weight gradients
    (the same again), the bias gradients (N*G adds into each of the two biases: 2*N*G) and
    the cell (LSTM_CELL_BWD_FLOPS per hidden unit).
    Reads the forward's inputs and grad_y; writes y, h_n, c_n and a gradient for every input.
    """
    G = 4 * HID
    forward = lstm_work(T, N, I, HID, itemsize)
    backward_flops = T * (
        2 * (2 * N * G * I + 2 * N * G * HID) + 2 * N * G + N * HID * LSTM_CELL_BWD_FLOPS
    )
    inputs, _ = _recurrent_elements(T, N, I, HID, 4, True)
    extra = T * N * HID + inputs  # read grad_y, write one gradient per input element
    return Work(forward.flops + backward_flops, forward.bytes + extra * itemsize)


def rnn_work(T, N, I, HID, itemsize) -> Work:
    flops = _gate_gemm_flops(T, N, I, HID, 1) + T * N * HID * RNN_CELL_FWD_FLOPS
    inputs, outputs = _recurrent_elements(T, N, I, HID, 1, False)
    return Work(flops, (inputs + outputs) * itemsize)


def rnn_train_work(T, N, I, HID, itemsize) -> Work:
    """As ``lstm_train_work`` with one gate and RNN_CELL_BWD_FLOPS."""
    G = HID
    forward = rnn_work(T, N, I, HID, itemsize)
    backward_flops = T * (
        2 * (2 * N * G * I + 2 * N * G * HID) + 2 * N * G + N * HID * RNN_CELL_BWD_FLOPS
    )
    inputs, _ = _recurrent_elements(T, N, I, HID, 1, False)
    extra = T * N * HID + inputs
    return Work(forward.flops + backward_flops, forward.bytes + extra * itemsize)


# --------------------------------------------------------------------------------------------
# Statistics and the roofline
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    median: float
    min: float
    max: float


def summarize(times: Sequence[float]) -> Timing:
    """Median, min and max of the repeats, in seconds."""
    if len(times) == 0:
        raise ValueError("summarize needs at least one time")
    return Timing(statistics.median(times), min(times), max(times))


def roofline_floor(work: Work, peak_flops: float, peak_bandwidth: float) -> float:
    """Seconds the op cannot beat: max(bytes / bandwidth, flops / peak)."""
    return max(work.bytes / peak_bandwidth, work.flops / peak_flops)


def roofline_fraction(work: Work, seconds: float, peak_flops: float, peak_bandwidth: float):
    """floor / measured time: 1.0 is the hardware limit; smaller is further from it."""
    return roofline_floor(work, peak_flops, peak_bandwidth) / seconds


# --------------------------------------------------------------------------------------------
# Shapes and presets
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvShape:
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    padding: int = 0

    def describe(self) -> str:
        return (
            f"N{self.N} C{self.C} {self.H}x{self.W} K{self.K} {self.R}x{self.S} "
            f"s{self.stride} p{self.padding}"
        )

    def dims(self):
        return (self.N, self.C, self.H, self.W, self.K, self.R, self.S, self.stride, self.padding)


@dataclass(frozen=True)
class PoolShape:
    N: int
    C: int
    H: int
    W: int
    R: int
    S: int
    stride: int
    padding: int = 0

    def describe(self) -> str:
        return (
            f"N{self.N} C{self.C} {self.H}x{self.W} k{self.R}x{self.S} "
            f"s{self.stride} p{self.padding}"
        )

    def dims(self):
        return (self.N, self.C, self.H, self.W, self.R, self.S, self.stride, self.padding)


@dataclass(frozen=True)
class CellShape:
    N: int
    HID: int

    def describe(self) -> str:
        return f"N{self.N} HID{self.HID}"

    def dims(self):
        return (self.N, self.HID)


@dataclass(frozen=True)
class SeqShape:
    T: int
    N: int
    I: int  # input features (PyTorch's input_size)
    HID: int

    def describe(self) -> str:
        return f"T{self.T} N{self.N} I{self.I} HID{self.HID}"

    def dims(self):
        return (self.T, self.N, self.I, self.HID)


# The digits presets are the layers of gpunn.train's models at its batch size (64).
CONV_PRESETS = {
    "digits-conv1": ConvShape(64, 1, 8, 8, 16, 3, 3, 1, 1),
    "digits-conv2": ConvShape(64, 16, 4, 4, 32, 3, 3, 1, 1),
    "lenet-conv1": ConvShape(64, 1, 28, 28, 6, 5, 5, 1, 0),
    "lenet-conv2": ConvShape(64, 6, 12, 12, 16, 5, 5, 1, 0),
    "resnet50-conv3x3": ConvShape(32, 64, 56, 56, 64, 3, 3, 1, 1),
}
POOL_PRESETS = {
    "digits-pool1": PoolShape(64, 16, 8, 8, 2, 2, 2, 0),
    "digits-pool2": PoolShape(64, 32, 4, 4, 2, 2, 2, 0),
    "lenet-pool1": PoolShape(64, 6, 24, 24, 2, 2, 2, 0),
    "lenet-pool2": PoolShape(64, 16, 8, 8, 2, 2, 2, 0),
    "resnet50-stem-pool": PoolShape(32, 64, 112, 112, 3, 3, 2, 1),
}
CELL_PRESETS = {
    "digits-lstm": CellShape(64, 64),
    "lstm512": CellShape(64, 512),
    "lstm512-n1": CellShape(1, 512),
}
SEQ_PRESETS = {
    "digits-rows": SeqShape(8, 64, 8, 64),
    "lstm512": SeqShape(100, 64, 512, 512),
    "lstm512-n1": SeqShape(100, 1, 512, 512),
}
# Presets small enough for the emulator (about 10^5 threads per launch or fewer).
TINY_PRESETS = frozenset(
    {"digits-conv1", "digits-conv2", "digits-pool1", "digits-pool2", "digits-lstm", "digits-rows"}
)

# --------------------------------------------------------------------------------------------
# Backends, peer and timers
# --------------------------------------------------------------------------------------------


class Backend:
    """Where gpunn runs: NumPy reference, the CUDA kernels emulated on the CPU, or the GPU."""

    def __init__(self, name: str):
        if name not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
        self.name = name
        if name == "cuda":
            reason = gpu_unavailable_reason()
            if reason is not None:
                raise RuntimeError(f"backend 'cuda' needs a usable GPU: {reason}")
            self.xp = cupy_module()
        else:
            self.xp = np
            if name == "emu":
                from gpunn.emu import ensure_available

                ensure_available()

    @property
    def on_gpu(self) -> bool:
        return self.name == "cuda"

    def context(self):
        """The gpunn CPU backend in force while this backend runs (cupy arrays ignore it)."""
        return gpunn.use_backend("emu" if self.name == "emu" else "numpy")

    def asarray(self, a: np.ndarray):
        return self.xp.asarray(a)

    def to_numpy(self, a) -> np.ndarray:
        if isinstance(a, np.ndarray):
            return a
        return cupy_module().asnumpy(a)


class TorchPeer:
    """PyTorch on the same arrays: oneDNN/ATen on the CPU, cuDNN (TF32 off) on the GPU."""

    def __init__(self, backend: Backend):
        import torch

        self.torch = torch
        self.device = "cuda" if backend.on_gpu else "cpu"
        if backend.on_gpu:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cudnn.benchmark = True

    def describe(self) -> str:
        t = self.torch
        if self.device == "cuda":
            return (
                f"torch {t.__version__} on the GPU through DLPack (cuDNN "
                f"{t.backends.cudnn.version()}; TF32 off; cudnn.benchmark on; pooling: "
                "PyTorch's own CUDA kernel)"
            )
        return f"torch {t.__version__} on the CPU ({t.get_num_threads()} threads)"

    def tensor(self, a, requires_grad: bool = False):
        """The same memory as ``a`` (numpy or cupy) as a torch tensor."""
        t = self.torch
        out = t.from_numpy(a) if isinstance(a, np.ndarray) else t.from_dlpack(a)
        if requires_grad:
            out = out.detach().requires_grad_(True)
        return out

    @staticmethod
    def to_numpy(t) -> np.ndarray:
        return t.detach().cpu().numpy()


# Before timing one side on the CPU, let the other side's worker threads go idle: OpenBLAS's
# spin for about 2^28 cycles (0.1 s) after a call and PyTorch's OpenMP threads a little, and a
# spinning thread on one of two cores makes the next 2-thread region wait a scheduler slice
# (seen here: a 0.3 ms torch call measured 16 ms right after NumPy's GEMMs).
CPU_SETTLE_S = 0.25


def time_cpu(fn: Callable[[], object], warmup: int, repeat: int):
    """After a ``CPU_SETTLE_S`` pause, ``warmup`` untimed calls, then ``repeat`` calls timed
    with perf_counter.

    Returns (seconds per repeat, the last call's result).
    """
    time.sleep(CPU_SETTLE_S)
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


class GpuTimer:
    """CUDA-event timing on the legacy default stream, with the L2 flushed before each call.

    CuPy's default stream and PyTorch's default stream are both the legacy default stream, so
    events recorded here bracket the work of either library.
    """

    def __init__(self, l2_bytes: int):
        cp = cupy_module()
        self.cp = cp
        # Rewriting 2x the L2 size evicts whatever the previous call left in it.
        self.flush_bytes = 2 * max(int(l2_bytes), 1 << 20)
        n = self.flush_bytes // np.dtype(np.float32).itemsize
        self.flush_buffer = cp.zeros(n, dtype=cp.float32)  # (n,): flush_bytes of float32

    def flush(self) -> None:
        self.flush_buffer += 1.0

    def __call__(self, fn, warmup: int, repeat: int):
        cp = self.cp
        out = None
        for _ in range(warmup):
            out = fn()
        cp.cuda.Device().synchronize()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(repeat):
            self.flush()
            start.record()
            out = fn()
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
        return times, out


# --------------------------------------------------------------------------------------------
# Peak figures for the roofline
# --------------------------------------------------------------------------------------------

# Datasheet fp32 (non-tensor) rates in GFLOP/s, matched against the device name in order.
GPU_FP32_GFLOPS = (
    ("H200", 67_000.0),
    ("H100 PCIe", 51_200.0),
    ("H100", 66_900.0),
    ("A100", 19_500.0),
)


def datasheet_gflops(device_name: str) -> float | None:
    for key, gflops in GPU_FP32_GFLOPS:
        if key in device_name:
            return gflops
    return None


def measure_cpu_bandwidth(nbytes: int = 64 << 20, repeat: int = 5) -> float:
    """Bytes/s of the best of ``repeat`` NumPy copies of ``nbytes`` (read + write counted)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = min(_perf(lambda: np.copyto(dst, src)) for _ in range(repeat))
    return 2 * src.nbytes / best


def measure_cpu_flops(n: int = 2048, repeat: int = 3) -> float:
    """FLOP/s of the best of ``repeat`` float32 n x n matrix products (2*n^3 FLOPs each)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_perf(lambda: a @ b) for _ in range(repeat))
    return 2 * n**3 / best


def measure_gpu_bandwidth(nbytes: int = 512 << 20, repeat: int = 10) -> float:
    """Bytes/s of the best of ``repeat`` device-to-device copies (read + write counted)."""
    cp = cupy_module()
    src = cp.ones(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    timer = GpuTimer(0)
    times, _ = timer(lambda: cp.copyto(dst, src), 2, repeat)
    return 2 * src.nbytes / min(times)


def _perf(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Ops: inputs, the gpunn call, the peer call and the float64 reference
# --------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """One op on one shape, ready to time.

    ``run`` and ``peer`` return the op's outputs as a tuple in the order of ``names``; the
    float64 reference outputs are in ``reference``.
    """

    names: tuple
    run: Callable[[], tuple]
    peer: Callable[[], tuple] | None
    reference: tuple


def _uniform(rng, shape, bound):
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _normal(rng, shape):
    return rng.standard_normal(shape, dtype=np.float32)


def _wide(*arrays):
    return tuple(a.astype(np.float64) for a in arrays)


def _peer_outputs(peer, outs):
    return tuple(peer.to_numpy(o) for o in outs)


def _prepare_conv(shape: ConvShape, backend, peer, rng, backward: bool) -> Prepared:
    from gpunn import functional as F
    from gpunn import reference

    N, C, H, W, K, R, S, st, pad = shape.dims()
    bound = 1.0 / math.sqrt(C * R * S)
    x = _normal(rng, (N, C, H, W))
    w = _uniform(rng, (K, C, R, S), bound)
    b = _uniform(rng, (K,), bound)
    stride, pad4, dil = (st, st), (pad, pad, pad, pad), (1, 1)
    OH = conv_out_size(H, R, st, 2 * pad, 1)
    OW = conv_out_size(W, S, st, 2 * pad, 1)
    gy = _normal(rng, (N, K, OH, OW))
    x_, w_, b_, gy_ = (backend.asarray(a) for a in (x, w, b, gy))
    t = None if peer is None else [peer.tensor(a) for a in (x_, w_, b_, gy_)]
    if not backward:
        ref = (reference.conv2d_forward(*_wide(x, w, b), stride, pad4, dil),)

        def run():
            return (F.conv2d(x_, w_, b_, stride=st, padding=pad),)

        def run_peer():
            tx, tw, tb, _ = t
            return (peer.torch.nn.functional.conv2d(tx, tw, tb, stride=st, padding=pad),)

        names = ("y",)
    else:
        ref = reference.conv2d_backward(*_wide(gy, x, w), stride, pad4, dil, True)

        def run():
            return tuple(F.conv2d_backward(gy_, x_, w_, stride=st, padding=pad, bias=True))

        def run_peer():
            tx, tw, _, tgy = t
            return tuple(
                peer.torch.ops.aten.convolution_backward(
                    tgy, tx, tw, [K], [st, st], [pad, pad], [1, 1], False, [0, 0], 1,
                    [True, True, True],
                )
            )  # fmt: skip

        names = ("grad_x", "grad_weight", "grad_bias")
    return Prepared(names, run, None if peer is None else run_peer, tuple(ref))


def _prepare_pool(
    shape: PoolShape, backend, peer, rng, backward: bool, geometry: bool = True
) -> Prepared:
    """Max pooling forward, or backward: with ``geometry`` (what the modules pass) the
    gather kernel runs; without it, the public 3-argument call and its per-plane fallback."""
    from gpunn import functional as F
    from gpunn import reference

    N, C, H, W, R, S, st, pad = shape.dims()
    x = _normal(rng, (N, C, H, W))
    kernel, stride, padding, dil = (R, S), (st, st), (pad, pad), (1, 1)
    y64, idx = reference.max_pool2d_forward(
        x.astype(np.float64), kernel, stride, padding, dil, False
    )
    x_ = backend.asarray(x)
    tx = None if peer is None else peer.tensor(x_)
    if not backward:

        def run():
            return tuple(F.max_pool2d(x_, kernel, st, pad, return_indices=True))

        def run_peer():
            return tuple(
                peer.torch.nn.functional.max_pool2d(tx, kernel, st, pad, return_indices=True)
            )

        return Prepared(("y", "indices"), run, None if peer is None else run_peer, (y64, idx))
    gy = _normal(rng, y64.shape)
    ref = (
        reference.max_pool2d_backward(
            gy.astype(np.float64), idx, x.shape, (kernel, stride, padding, dil)
        ),
    )
    gy_, idx_ = backend.asarray(gy), backend.asarray(idx)
    if peer is not None:
        tgy, tidx = peer.tensor(gy_), peer.tensor(idx_)

    keywords = {"kernel_size": kernel, "stride": stride, "padding": padding} if geometry else {}

    def run():
        return (F.max_pool2d_backward(gy_, idx_, x.shape, **keywords),)

    def run_peer():
        return (
            peer.torch.ops.aten.max_pool2d_with_indices_backward(
                tgy, tx, list(kernel), list(stride), list(padding), [1, 1], False, tidx
            ),
        )

    return Prepared(("grad_x",), run, None if peer is None else run_peer, ref)


def _prepare_lstm_cell(shape: CellShape, backend, peer, rng) -> Prepared:
    from gpunn import functional as F
    from gpunn import reference

    N, HID = shape.dims()
    gates = _normal(rng, (N, 4 * HID))
    c_prev = _normal(rng, (N, HID))
    ref = tuple(reference.lstm_cell_forward(*_wide(gates, c_prev)))
    g_, c_ = backend.asarray(gates), backend.asarray(c_prev)

    def run():
        return tuple(F.lstm_cell(g_, c_))

    if peer is None:
        return Prepared(("h", "c"), run, None, ref)
    torch = peer.torch
    tg, tc = peer.tensor(g_), peer.tensor(c_)
    fused = getattr(torch, "_thnn_fused_lstm_cell", None) if peer.device == "cuda" else None
    if fused is not None:
        zeros = torch.zeros_like(tg)

        def run_peer():
            h, c, _ = fused(tg, zeros, tc)
            return (h, c)

    else:

        def run_peer():
            i, f, g, o = tg.chunk(4, 1)
            c = torch.sigmoid(f) * tc + torch.sigmoid(i) * torch.tanh(g)
            return (torch.sigmoid(o) * torch.tanh(c), c)

    return Prepared(("h", "c"), run, run_peer, ref)


def _seq_inputs(shape: SeqShape, rng, gates: int, cell_state: bool):
    """x (T, N, I), h0 [, c0] (N, HID), weights and biases; weights U(-1/sqrt(HID), ...)."""
    T, N, I, HID = shape.dims()
    bound = 1.0 / math.sqrt(HID)
    arrays = {"x": _normal(rng, (T, N, I)), "h0": _normal(rng, (N, HID))}
    if cell_state:
        arrays["c0"] = _normal(rng, (N, HID))
    arrays["weight_ih"] = _uniform(rng, (gates * HID, I), bound)
    arrays["weight_hh"] = _uniform(rng, (gates * HID, HID), bound)
    arrays["bias_ih"] = _uniform(rng, (gates * HID,), bound)
    arrays["bias_hh"] = _uniform(rng, (gates * HID,), bound)
    return arrays


PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _prepare_recurrent(shape: SeqShape, backend, peer, rng, lstm: bool, train: bool):
    from gpunn import functional as F
    from gpunn import reference

    T, N, I, HID = shape.dims()
    a = _seq_inputs(shape, rng, 4 if lstm else 1, lstm)
    states = ("h0", "c0") if lstm else ("h0",)
    order = ("x", *states, *PARAM_NAMES)
    wide = dict(zip(order, _wide(*(a[k] for k in order))))
    dev = {k: backend.asarray(v) for k, v in a.items()}
    gy = _normal(rng, (T, N, HID))
    fwd_ref = (reference.lstm_forward if lstm else reference.rnn_tanh_forward)(
        *(wide[k] for k in order)
    )
    outs = fwd_ref[:-1]  # y, h_n[, c_n]; the last item is `saved`
    fwd_names = ("y", "h_n", "c_n") if lstm else ("y", "h_n")
    if not train:
        fn = F.lstm if lstm else F.rnn_tanh

        def run():
            if lstm:
                y, (h, c) = fn(*(dev[k] for k in order))
                return (y, h, c)
            return tuple(fn(*(dev[k] for k in order)))

        ref = tuple(outs)
        names = fwd_names
    else:
        backward = reference.lstm_backward if lstm else reference.rnn_tanh_backward
        none = (None, None) if lstm else (None,)
        grads = backward(fwd_ref[-1], gy.astype(np.float64), *none)
        ref = (outs[0], *grads)
        names = ("y", "grad_x", *(f"grad_{s}" for s in states), *(f"grad_{p}" for p in PARAM_NAMES))
        fwd, bwd = (
            (F.lstm_forward, F.lstm_backward) if lstm else (F.rnn_tanh_forward, F.rnn_tanh_backward)
        )
        gy_ = backend.asarray(gy)

        def run():
            y, *_, ctx = fwd(*(dev[k] for k in order))
            return (y, *bwd(ctx, gy_))

    if peer is None:
        return Prepared(names, run, None, ref)
    torch = peer.torch
    tmod = (torch.nn.LSTM if lstm else torch.nn.RNN)(I, HID).to(peer.device)
    with torch.no_grad():
        for p in PARAM_NAMES:
            getattr(tmod, f"{p}_l0").copy_(peer.tensor(dev[p]))
    if lstm and peer.device == "cuda":
        tmod.flatten_parameters()
    tx = peer.tensor(dev["x"], requires_grad=train)
    ths = [peer.tensor(dev[s][None], requires_grad=train) for s in states]
    thx = tuple(ths) if lstm else ths[0]
    if not train:

        def run_peer():
            with torch.no_grad():
                y, hn = tmod(tx, thx)
            if lstm:
                return (y, hn[0][0], hn[1][0])
            return (y, hn[0])

    else:
        tgy = peer.tensor(backend.asarray(gy))
        leaves = [tx, *ths]

        def run_peer():
            tmod.zero_grad(set_to_none=True)
            for leaf in leaves:
                leaf.grad = None
            y, _ = tmod(tx, thx)
            y.backward(tgy)
            pgrads = tuple(getattr(tmod, f"{p}_l0").grad for p in PARAM_NAMES)
            return (y, tx.grad, *(h.grad[0] for h in ths), *pgrads)

    return Prepared(names, run, run_peer, ref)


@dataclass(frozen=True)
class OpSpec:
    family: str  # "conv", "pool", "cell" or "seq": which presets and shape options apply
    work: Callable[..., Work]
    prepare: Callable[..., Prepared]
    summary: str


OPS = {
    "conv2d": OpSpec("conv", conv2d_work, partial(_prepare_conv, backward=False), "forward"),
    "conv2d_backward": OpSpec(
        "conv", conv2d_backward_work, partial(_prepare_conv, backward=True), "all three grads"
    ),
    "max_pool2d": OpSpec(
        "pool", max_pool2d_work, partial(_prepare_pool, backward=False), "forward + indices"
    ),
    "max_pool2d_backward": OpSpec(
        "pool", max_pool2d_backward_work, partial(_prepare_pool, backward=True), "grad_x"
    ),
    "lstm_cell": OpSpec("cell", lstm_cell_work, _prepare_lstm_cell, "fused step on gates"),
    "lstm": OpSpec(
        "seq", lstm_work, partial(_prepare_recurrent, lstm=True, train=False), "sequence forward"
    ),
    "lstm_train": OpSpec(
        "seq", lstm_train_work, partial(_prepare_recurrent, lstm=True, train=True), "fwd + BPTT"
    ),
    "rnn": OpSpec(
        "seq", rnn_work, partial(_prepare_recurrent, lstm=False, train=False), "sequence forward"
    ),
    "rnn_train": OpSpec(
        "seq", rnn_train_work, partial(_prepare_recurrent, lstm=False, train=True), "fwd + BPTT"
    ),
}
PRESETS = {"conv": CONV_PRESETS, "pool": POOL_PRESETS, "cell": CELL_PRESETS, "seq": SEQ_PRESETS}


@dataclass(frozen=True)
class Case:
    op: str
    preset: str  # a preset name, or "custom"
    shape: object  # ConvShape, PoolShape, CellShape or SeqShape

    def work(self, itemsize: int = 4) -> Work:
        return OPS[self.op].work(*self.shape.dims(), itemsize)


def preset_cases(op: str, preset: str | None, backend: str) -> list[Case]:
    """The cases of ``op`` ("all" for every op): one preset, or every preset the backend suits.

    The emulator runs only the tiny presets unless a preset is named.
    """
    ops = list(OPS) if op == "all" else [op]
    cases = []
    for name in ops:
        if name not in OPS:
            raise ValueError(f"OP must be one of {[*OPS, 'all']}, got {name!r}")
        presets = PRESETS[OPS[name].family]
        if preset is not None:
            if preset not in presets:
                if op == "all":
                    continue
                raise ValueError(
                    f"preset {preset!r} does not apply to {name}; choose from {sorted(presets)}"
                )
            cases.append(Case(name, preset, presets[preset]))
            continue
        for pname, shape in presets.items():
            if backend == "emu" and pname not in TINY_PRESETS:
                continue
            cases.append(Case(name, pname, shape))
    if not cases:
        raise ValueError(f"preset {preset!r} matches no op")
    return cases


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64 (the plain norm of out when ref is all zeros)."""
    o = np.asarray(out, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if o.shape != r.shape:
        raise ValueError(f"output shape {o.shape} differs from the reference's {r.shape}")
    num = float(np.linalg.norm(o - r))
    den = float(np.linalg.norm(r))
    return num / den if den > 0 else num


def max_abs_err(out, ref) -> float:
    o = np.asarray(out, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(o - r))) if o.size else 0.0


def output_errors(names, outs, refs) -> dict:
    """{name: (max abs error, norm-wise relative error)} for each output."""
    return {n: (max_abs_err(o, r), rel_err(o, r)) for n, o, r in zip(names, outs, refs)}


# --------------------------------------------------------------------------------------------
# gpunn check: every kernel op against the float64 reference on small fixed shapes
# --------------------------------------------------------------------------------------------

# Norm-wise relative tolerance for float32 against the float64 reference (tests/conftest.py's
# TOL). Max pooling forward selects and does not round, so it must match exactly; its backward
# sums overlapping windows in some order, so it gets the float32 tolerance.
CHECK_RTOL = 1e-5
EXACT_OPS = frozenset({"max_pool2d"})

# (label, bench op, shape[, prepare options]): odd and non-square sizes, batch 1, stride 2, padding at its limit,
# overlapping pooling windows, a one-step sequence (one fused cell backward).
CHECK_CASES = (
    ("conv2d", "conv2d", ConvShape(2, 3, 7, 9, 4, 3, 3, 1, 1)),
    ("conv2d", "conv2d", ConvShape(1, 2, 6, 5, 3, 3, 3, 2, 1)),
    ("conv2d", "conv2d", ConvShape(3, 1, 5, 5, 2, 5, 5, 1, 2)),
    ("conv2d_backward", "conv2d_backward", ConvShape(2, 3, 7, 9, 4, 3, 3, 1, 1)),
    ("conv2d_backward", "conv2d_backward", ConvShape(1, 2, 6, 5, 3, 3, 3, 2, 1)),
    ("conv2d_backward", "conv2d_backward", ConvShape(3, 1, 5, 5, 2, 5, 5, 1, 2)),
    # 2*17*17 = 578 output pixels: the weight gradient is split over chunks (split-K).
    ("conv2d_backward", "conv2d_backward", ConvShape(2, 3, 17, 17, 5, 3, 3, 1, 1)),
    ("max_pool2d", "max_pool2d", PoolShape(2, 3, 7, 9, 2, 2, 2, 0)),
    ("max_pool2d", "max_pool2d", PoolShape(1, 2, 8, 8, 3, 3, 2, 1)),
    ("max_pool2d", "max_pool2d", PoolShape(2, 1, 5, 6, 3, 3, 1, 1)),
    ("max_pool2d_backward", "max_pool2d_backward", PoolShape(2, 3, 7, 9, 2, 2, 2, 0)),
    ("max_pool2d_backward", "max_pool2d_backward", PoolShape(1, 2, 8, 8, 3, 3, 2, 1)),
    ("max_pool2d_backward", "max_pool2d_backward", PoolShape(2, 1, 5, 6, 3, 3, 1, 1)),
    (
        "max_pool2d_backward (planes)",
        "max_pool2d_backward",
        PoolShape(2, 1, 5, 6, 3, 3, 1, 1),
        {"geometry": False},
    ),
    (
        "max_pool2d_backward (planes)",
        "max_pool2d_backward",
        PoolShape(1, 2, 8, 8, 3, 3, 2, 1),
        {"geometry": False},
    ),
    ("lstm_cell", "lstm_cell", CellShape(3, 5)),
    ("lstm_cell", "lstm_cell", CellShape(1, 7)),
    ("lstm_cell_backward (T=1)", "lstm_train", SeqShape(1, 3, 4, 5)),
    ("lstm", "lstm", SeqShape(5, 3, 4, 6)),
    ("lstm", "lstm", SeqShape(1, 1, 3, 5)),
    ("lstm_backward", "lstm_train", SeqShape(5, 3, 4, 6)),
    ("lstm_backward", "lstm_train", SeqShape(2, 1, 3, 5)),
    ("rnn", "rnn", SeqShape(5, 3, 4, 6)),
    ("rnn", "rnn", SeqShape(1, 1, 3, 5)),
    ("rnn_backward", "rnn_train", SeqShape(5, 3, 4, 6)),
    ("rnn_backward", "rnn_train", SeqShape(2, 1, 3, 5)),
)


def check_rows(backend_name: str, seed: int = 0, cases=CHECK_CASES):
    """One row per (case, output): max abs error, relative error and PASS/FAIL."""
    backend = Backend(backend_name)
    rows = []
    for label, op, shape, *extra in cases:
        options = extra[0] if extra else {}  # keyword options of the op's prepare
        with backend.context(), _loader.record_launches() as launched:
            prep = OPS[op].prepare(shape, backend, None, np.random.default_rng(seed), **options)
            outs = [backend.to_numpy(o) for o in prep.run()]
        kernels = sorted(set(launched))
        for name, (abs_err, rel) in output_errors(prep.names, outs, prep.reference).items():
            exact = op in EXACT_OPS
            ok = abs_err == 0.0 if exact else rel <= CHECK_RTOL
            rows.append(
                {
                    "op": label,
                    "output": name,
                    "shape": shape.describe(),
                    "max_abs_err": abs_err,
                    "rel_err": rel,
                    "tolerance": "exact" if exact else f"rel {CHECK_RTOL:.0e}",
                    "passed": bool(ok),
                    "kernels": kernels,
                }
            )
    return rows


def check_kernel_summary(rows) -> list[dict]:
    """Per kernel of ``kernels/*.cu``: the largest errors over every checked output it helped
    compute, or ``checked: False`` when no check case launched it."""
    summary = []
    for file in _loader.kernel_names():
        for kernel in _signature.parse_kernels(_loader.source(file)):
            mine = [r for r in rows if kernel in r.get("kernels", ())]
            summary.append(
                {
                    "kernel": kernel,
                    "file": f"{file}.cu",
                    "checked": bool(mine),
                    "outputs": len(mine),
                    "max_abs_err": max((r["max_abs_err"] for r in mine), default=None),
                    "max_rel_err": max((r["rel_err"] for r in mine), default=None),
                    "passed": all(r["passed"] for r in mine),
                }
            )
    return summary


def format_kernel_summary(summary) -> str:
    cells = [
        [
            s["kernel"],
            s["file"],
            str(s["outputs"]),
            f"{s['max_abs_err']:.2e}" if s["checked"] else "-",
            f"{s['max_rel_err']:.2e}" if s["checked"] else "-",
            ("PASS" if s["passed"] else "FAIL") if s["checked"] else "not launched by check",
        ]
        for s in summary
    ]
    titles = ["kernel", "file", "outputs", "max abs err", "max rel err", "result"]
    return align(titles, cells, right=(2, 3, 4))


def format_check_table(rows) -> str:
    cells = [
        [
            r["op"],
            r["output"],
            r["shape"],
            f"{r['max_abs_err']:.2e}",
            f"{r['rel_err']:.2e}",
            r["tolerance"],
            "PASS" if r["passed"] else "FAIL",
        ]
        for r in rows
    ]
    titles = ["op", "output", "shape", "max abs err", "rel err", "tolerance", "result"]
    return align(titles, cells, right=(3, 4))


def align(titles, cells, right=()) -> str:
    """Columns padded to their widest cell; columns listed in ``right`` are right-aligned."""
    widths = [max([len(t)] + [len(c[i]) for c in cells]) for i, t in enumerate(titles)]

    def line(values):
        parts = [
            v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(titles), line(["-" * w for w in widths]), *map(line, cells)])


@dataclass
class Settings:
    backend: str
    peer: str
    warmup: int
    repeat: int
    seed: int
    peak_gflops: float | None = None  # None: datasheet on GPU, measured matmul on CPU


DEFAULT_REPEAT = {"numpy": 5, "emu": 2, "cuda": 30}
DEFAULT_WARMUP = {"numpy": 1, "emu": 1, "cuda": 3}


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict:
    """Versions of gpunn, Python and the libraries the CLI uses (None: not installed)."""
    out = {"gpunn": gpunn.__version__, "python": platform.python_version()}
    for dist in ("numpy", "torch", "click", "scikit-learn"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    cp = cupy_module()
    out["cupy"] = cp.__version__ if cp is not None else None
    return out


class Harness:
    """Runs cases under one set of settings and produces the header and the rows."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.backend = Backend(settings.backend)
        self.peer = TorchPeer(self.backend) if settings.peer == "torch" else None
        if self.backend.on_gpu:
            info = device_info()
            self.device = info["name"]
            self.timer = GpuTimer(info["l2_bytes"])
            if settings.peak_gflops is None:
                gflops = datasheet_gflops(self.device)
                if gflops is None:
                    raise ValueError(
                        f"no datasheet fp32 rate known for {self.device!r}: pass --peak-gflops"
                    )
                self.peak_flops_source = "datasheet fp32"
            else:
                gflops = settings.peak_gflops
                self.peak_flops_source = "--peak-gflops"
            self.peak_flops = gflops * 1e9
            self.peak_bandwidth = measure_gpu_bandwidth()
            self.bandwidth_source = "measured device copy"
        else:
            self.device = _cpu_name()
            self.timer = time_cpu
            if settings.peak_gflops is None:
                self.peak_flops = measure_cpu_flops()
                self.peak_flops_source = "measured float32 matmul"
            else:
                self.peak_flops = settings.peak_gflops * 1e9
                self.peak_flops_source = "--peak-gflops"
            self.peak_bandwidth = measure_cpu_bandwidth()
            self.bandwidth_source = "measured memcpy"

    def header(self) -> dict:
        s = self.settings
        h = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": s.backend,
            "device": self.device,
            "cpu_count": os.cpu_count(),
            "dtype": "float32",
            "seed": s.seed,
            "warmup": s.warmup,
            "repeat": s.repeat,
            "timer": "CUDA events, L2 flushed before each repeat"
            if self.backend.on_gpu
            else "time.perf_counter",
            "peak_gflops": self.peak_flops / 1e9,
            "peak_gflops_source": self.peak_flops_source,
            "peak_gbs": self.peak_bandwidth / 1e9,
            "peak_gbs_source": self.bandwidth_source,
            "peer": self.peer.describe() if self.peer is not None else "none",
            "versions": versions(),
        }
        if self.backend.on_gpu:
            h["l2_flush_bytes"] = self.timer.flush_bytes
        else:
            # Other processes on the same cores slow both gpunn and the peer: say how busy.
            h["load_average_1min"] = os.getloadavg()[0]
        if s.backend == "emu":
            h["note"] = (
                "emu runs the CUDA C kernels on the CPU, one fiber per GPU thread: it is slow, "
                "its times say nothing about a GPU, and by default only the tiny presets run"
            )
        return h

    def measure(self, case: Case) -> dict:
        s = self.settings
        rng = np.random.default_rng(s.seed)
        with self.backend.context():
            prep = OPS[case.op].prepare(case.shape, self.backend, self.peer, rng)
            times, outs = self.timer(prep.run, s.warmup, s.repeat)
        timing = summarize(times)
        work = case.work(np.dtype(np.float32).itemsize)
        errs = output_errors(prep.names, [self.backend.to_numpy(o) for o in outs], prep.reference)
        row = {
            "op": case.op,
            "preset": case.preset,
            "shape": case.shape.describe(),
            "median_s": timing.median,
            "min_s": timing.min,
            "max_s": timing.max,
            "flops": work.flops,
            "bytes": work.bytes,
            "gflops": work.flops / timing.median / 1e9,
            "gbs": work.bytes / timing.median / 1e9,
            "roofline_fraction": roofline_fraction(
                work, timing.median, self.peak_flops, self.peak_bandwidth
            ),
            "rel_err": max(e[1] for e in errs.values()),
            "peer_median_s": None,
            "peer_min_s": None,
            "peer_max_s": None,
            "ratio_to_peer": None,
            "peer_rel_err": None,
        }
        if prep.peer is not None:
            ptimes, pouts = self.timer(prep.peer, s.warmup, s.repeat)
            ptiming = summarize(ptimes)
            perrs = output_errors(prep.names, _peer_outputs(self.peer, pouts), prep.reference)
            row.update(
                peer_median_s=ptiming.median,
                peer_min_s=ptiming.min,
                peer_max_s=ptiming.max,
                ratio_to_peer=timing.median / ptiming.median,
                peer_rel_err=max(e[1] for e in perrs.values()),
            )
        return row


# --------------------------------------------------------------------------------------------
# Output formats
# --------------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    ("op", "op"),
    ("preset", "preset"),
    ("shape", "shape"),
    ("median", "median_s"),
    ("min-max", None),
    ("GFLOP/s", "gflops"),
    ("GB/s", "gbs"),
    ("roofline", "roofline_fraction"),
    ("peer", "peer_median_s"),
    ("ratio", "ratio_to_peer"),
    ("rel err", "rel_err"),
    ("peer rel err", "peer_rel_err"),
)
CSV_COLUMNS = (
    "op",
    "preset",
    "shape",
    "median_s",
    "min_s",
    "max_s",
    "flops",
    "bytes",
    "gflops",
    "gbs",
    "roofline_fraction",
    "peer_median_s",
    "peer_min_s",
    "peer_max_s",
    "ratio_to_peer",
    "rel_err",
    "peer_rel_err",
)


def format_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _cell(row: dict, title: str, key: str | None) -> str:
    if title == "min-max":
        return f"{format_seconds(row['min_s'])} - {format_seconds(row['max_s'])}"
    value = row.get(key)
    if value is None:
        return "-"
    if key.endswith("_s"):
        return format_seconds(value)
    if key in ("gflops", "gbs"):
        return "-" if (key == "gflops" and row["flops"] == 0) else f"{value:.3g}"
    if key in ("roofline_fraction", "ratio_to_peer"):
        return f"{value:.2f}"
    if key.endswith("rel_err"):
        return f"{value:.1e}"
    return str(value)


def format_table(rows: Sequence[dict]) -> str:
    """One aligned row per measurement: text columns left-aligned, numbers right-aligned."""
    titles = [t for t, _ in TABLE_COLUMNS]
    cells = [[_cell(r, t, k) for t, k in TABLE_COLUMNS] for r in rows]
    return align(titles, cells, right=range(3, len(titles)))


def format_header(header: dict) -> str:
    """The configuration as ``key: value`` lines, printed before the table."""
    lines = []
    for key, value in header.items():
        if key == "versions":
            value = ", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
        elif isinstance(value, float):
            value = f"{value:.4g}"
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def to_json(header: dict, rows: Sequence[dict]) -> str:
    return json.dumps({"header": header, "rows": list(rows)})


def to_csv(rows: Sequence[dict]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in CSV_COLUMNS})
    return buf.getvalue()
