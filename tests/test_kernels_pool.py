"""kernels/pool.cu against PyTorch CPU in float64 (an independent oracle), on every backend.

Max pooling selects and never rounds, so values and indices must match exactly; the backward
gradients are small integers, so their sums are exact too and the comparison is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import to_numpy

from gpunn import _kernels

# (name, (N, C, H, W), kernel, stride, padding, dilation, ceil_mode, data)
CASES = [
    ("odd_sizes", (2, 3, 11, 13), (3, 3), (2, 2), (1, 1), (1, 1), False, "normal"),
    ("batch1_rect_kernel", (1, 2, 9, 7), (3, 2), (1, 2), (1, 1), (1, 1), False, "normal"),
    ("stride_above_kernel", (2, 2, 10, 11), (2, 2), (3, 3), (0, 0), (1, 1), False, "normal"),
    ("padding_at_max", (1, 3, 7, 8), (4, 5), (1, 1), (2, 2), (1, 1), False, "normal"),
    ("ceil_partial", (2, 2, 10, 9), (3, 3), (2, 2), (0, 0), (1, 1), True, "normal"),
    ("ceil_drops_pad_start", (1, 2, 5, 5), (2, 2), (2, 2), (1, 1), (1, 1), True, "normal"),
    ("overlap_ties", (2, 3, 9, 10), (3, 3), (1, 1), (1, 1), (1, 1), False, "ties"),
    ("dilation", (2, 2, 12, 11), (3, 3), (1, 1), (1, 1), (2, 2), False, "normal"),
    ("dilation_ceil_ties", (1, 2, 13, 12), (3, 2), (2, 3), (1, 1), (2, 3), True, "ties"),
    ("nan_and_inf", (2, 2, 9, 9), (3, 3), (2, 1), (1, 1), (1, 1), True, "nan"),
]
IDS = [c[0] for c in CASES]


def make_input(shape, data, seed):
    """float32 values: normal, small integers (many ties), or normal with NaN and -inf."""
    rng = np.random.default_rng(seed)
    if data == "ties":
        return rng.integers(0, 3, size=shape).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    if data == "nan":
        flat = x.reshape(-1)
        flat[rng.choice(flat.size, size=flat.size // 8, replace=False)] = np.nan
        flat[rng.choice(flat.size, size=flat.size // 10, replace=False)] = -np.inf
    return x


def torch_pool(torch, x, kernel, stride, padding, dilation, ceil_mode, grad_y=None):
    """(y, indices, grad_x) from PyTorch CPU in float64."""
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    y, ind = torch.nn.functional.max_pool2d(
        xt, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True
    )
    grad_x = None
    if grad_y is not None:
        y.backward(torch.tensor(grad_y.astype(np.float64)))
        grad_x = xt.grad.numpy()
    return y.detach().numpy(), ind.numpy(), grad_x


def assert_exact(out, ref, what):
    out = to_numpy(out)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    assert np.array_equal(out.astype(ref.dtype), ref, equal_nan=True), f"{what} differs"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_torch(kernel_backend, torch_oracle, case):
    _, shape, kernel, stride, padding, dilation, ceil_mode, data = case
    x = make_input(shape, data, seed=1)
    y_ref, ind_ref, _ = torch_pool(torch_oracle, x, kernel, stride, padding, dilation, ceil_mode)
    y, ind = _kernels.max_pool2d_forward(
        kernel_backend.xp.asarray(x), kernel, stride, padding, dilation, ceil_mode
    )
    assert to_numpy(ind).dtype == np.int64
    assert_exact(y, y_ref, "values")
    assert_exact(ind, ind_ref, "indices")


@pytest.mark.parametrize("with_geometry", [True, False], ids=["gather", "planes"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_matches_torch(kernel_backend, torch_oracle, case, with_geometry):
    _, shape, kernel, stride, padding, dilation, ceil_mode, data = case
    xp = kernel_backend.xp
    x = make_input(shape, data, seed=2)
    _, ind_ref, _ = torch_pool(torch_oracle, x, kernel, stride, padding, dilation, ceil_mode)
    grad_y = np.random.default_rng(3).integers(-3, 4, size=ind_ref.shape).astype(np.float32)
    _, _, gx_ref = torch_pool(torch_oracle, x, kernel, stride, padding, dilation, ceil_mode, grad_y)
    _, ind = _kernels.max_pool2d_forward(
        xp.asarray(x), kernel, stride, padding, dilation, ceil_mode
    )
    geometry = (kernel, stride, padding, dilation) if with_geometry else None
    gy = xp.asarray(grad_y)
    grad_x = _kernels.max_pool2d_backward(gy, ind, shape, geometry)
    assert_exact(grad_x, gx_ref, "grad_x")
    again = _kernels.max_pool2d_backward(gy, ind, shape, geometry)
    assert np.array_equal(to_numpy(again), to_numpy(grad_x)), "two runs differ"


def test_backward_float_sums_bit_identical(kernel_backend):
    """Non-integer gradients, heavily overlapping windows: the gather and the plane scatter
    sum in the same order, so they agree bit for bit, run after run."""
    xp = kernel_backend.xp
    shape, kernel, stride, padding, dilation = (2, 3, 10, 9), (4, 3), (1, 1), (2, 1), (1, 1)
    x = make_input(shape, "ties", seed=4)
    _, ind = _kernels.max_pool2d_forward(xp.asarray(x), kernel, stride, padding, dilation, False)
    gy = xp.asarray(np.random.default_rng(5).standard_normal(ind.shape).astype(np.float32))
    geometry = (kernel, stride, padding, dilation)
    runs = [_kernels.max_pool2d_backward(gy, ind, shape, g) for g in (geometry, geometry, None)]
    for other in runs[1:]:
        assert np.array_equal(to_numpy(runs[0]), to_numpy(other))


def test_empty_batch(kernel_backend, monkeypatch):
    xp = kernel_backend.xp
    monkeypatch.setattr(
        "gpunn._kernels_pool.module", lambda *a: pytest.fail("launched a kernel for N=0")
    )
    x = xp.zeros((0, 3, 8, 7), dtype=np.float32)
    y, ind = _kernels.max_pool2d_forward(x, (2, 2), (2, 2), (1, 1), (1, 1), True)
    assert y.shape == (0, 3, 5, 4) and ind.shape == (0, 3, 5, 4) and ind.dtype == np.int64
    for geometry in (((2, 2), (2, 2), (1, 1), (1, 1)), None):
        grad_x = _kernels.max_pool2d_backward(y, ind, (0, 3, 8, 7), geometry)
        assert grad_x.shape == (0, 3, 8, 7)


def test_plane_beyond_2_31_elements(kernel_backend, torch_oracle):
    """One (n, c) plane of 65537 x 32768 = 2^31 + 2^15 elements: output row 1 reads rows
    65535 and 65536 (offsets around 2^31) and reports indices above 2^31 - 1; 32-bit index
    arithmetic would wrap. Only the rows read are written, so on the CPU the rest of the
    8 GiB stays unbacked zero pages."""
    xp = kernel_backend.xp
    H, W = 65537, 32768
    try:
        x = xp.zeros((1, 1, H, W), dtype=np.float32)
    except MemoryError:
        pytest.skip("cannot reserve 8 GiB of address space for the 2^31-element plane")
    rng = np.random.default_rng(6)
    top = rng.standard_normal((2, W)).astype(np.float32)
    bottom = rng.standard_normal((2, W)).astype(np.float32)
    x[0, 0, 0:2] = xp.asarray(top)
    x[0, 0, H - 2 : H] = xp.asarray(bottom)
    y, ind = _kernels.max_pool2d_forward(x, (2, 2), (H - 2, 2), (0, 0), (1, 1), False)
    assert y.shape == (1, 1, 2, W // 2)
    for row, rows, first in ((0, top, 0), (1, bottom, H - 2)):
        y_ref, ind_ref, _ = torch_pool(torch_oracle, rows[None, None], 2, 2, 0, 1, False)
        assert_exact(y[0, 0, row], y_ref[0, 0, 0], f"values of output row {row}")
        assert_exact(ind[0, 0, row], ind_ref[0, 0, 0] + first * W, f"indices of row {row}")
    assert int(to_numpy(ind).max()) > 2**31


@pytest.mark.gpu
def test_gather_backward_beyond_2_31_elements_on_gpu():
    """The backward gather over the same 2^31 + 2^15-element plane: 2^31 threads, so it runs
    on the GPU only (emulated it would take hours)."""
    from gpunn._backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    import cupy

    H, W = 65537, 32768
    x = cupy.zeros((1, 1, H, W), dtype=cupy.float32)
    x[0, 0, H - 2 :] = cupy.asarray(np.random.default_rng(7).standard_normal((2, W)), cupy.float32)
    geometry = ((2, 2), (H - 2, 2), (0, 0), (1, 1))
    _, ind = _kernels.max_pool2d_forward(x, *geometry, False)
    gy = cupy.asarray(np.random.default_rng(8).integers(1, 4, ind.shape), cupy.float32)
    grad_x = _kernels.max_pool2d_backward(gy, ind, x.shape, geometry)
    # Each window's gradient lands on its own argmax: one non-zero per window, where ind says.
    flat = grad_x.reshape(-1)
    for row in (0, 1):
        chosen = ind[0, 0, row]
        assert cupy.array_equal(flat[chosen], gy[0, 0, row])
    del x, grad_x, flat
    cupy.get_default_memory_pool().free_all_blocks()
