"""Shared test fixtures: backends, oracles and the tolerance table.

Tolerances (norm-wise relative error ||out - ref|| / ||ref||), one table for every test:
- float64 against an independent float64 oracle: 1e-10 (only rounding differs);
- float32 against the float64 reference: 1e-5 (float32 has 24 bits; sums of a few hundred
  products stay far below this);
- max pooling is exact: it selects, it does not round.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpunn
from gpunn._backend import gpu_unavailable_reason

TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}

IN_CI = os.environ.get("CI", "").lower() == "true"


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are all zeros)."""
    out = np.asarray(to_numpy(out), dtype=np.float64)
    ref = np.asarray(to_numpy(ref), dtype=np.float64)
    assert out.shape == ref.shape, f"shape {out.shape} != reference shape {ref.shape}"
    denom = np.linalg.norm(ref)
    num = np.linalg.norm(out - ref)
    if denom == 0.0:
        return float(num)
    return float(num / denom)


def assert_close(out, ref, dtype=None, tol=None, what="output"):
    """Norm-wise comparison with the tolerance for ``dtype`` from TOL."""
    if tol is None:
        tol = TOL[np.dtype(dtype if dtype is not None else to_numpy(out).dtype)]
    o = to_numpy(out)
    r = to_numpy(ref)
    assert np.isnan(o).sum() == np.isnan(r).sum(), f"{what}: NaN pattern differs"
    mask = ~np.isnan(r)
    err = rel_err(np.where(mask, o, 0), np.where(mask, r, 0))
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"


def to_numpy(x):
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np.asarray(x)
    if hasattr(x, "get"):  # cupy
        return x.get()
    if hasattr(x, "detach"):  # torch
        return x.detach().numpy()
    return np.asarray(x)


def require_torch():
    """Import torch for oracle tests: skip without it, except under CI=true where it fails."""
    try:
        import torch
    except ImportError:
        if IN_CI:
            pytest.fail("torch is required under CI=true (pip install torch==2.13.0)")
        pytest.skip("torch not installed (pip install torch==2.13.0)")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return torch


@pytest.fixture
def torch_oracle():
    return require_torch()


class KernelBackend:
    """How a kernel test runs on one backend: arrays in, arrays out, backend selected."""

    def __init__(self, name: str):
        self.name = name
        if name == "cuda":
            import cupy

            self.xp = cupy
        else:
            self.xp = np

    def asarray(self, a):
        """A float64 reference input as the backend's float32 (or int) array."""
        a = np.asarray(a)
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        return self.xp.asarray(a)

    def context(self):
        if self.name == "emu":
            return gpunn.use_backend("emu")
        return gpunn.use_backend("numpy")


def _cuda_param():
    return pytest.param("cuda", marks=pytest.mark.gpu)


@pytest.fixture(params=["emu", _cuda_param()])
def kernel_backend(request):
    """Each kernel test body runs once emulated on the CPU and once on the GPU (mark gpu)."""
    name = request.param
    if name == "cuda":
        reason = gpu_unavailable_reason()
        if reason is not None:
            pytest.skip(f"no usable GPU: {reason}")
    else:
        from gpunn.emu import unavailable_reason

        reason = unavailable_reason()
        if reason is not None:
            pytest.fail(f"the CPU emulator cannot run here: {reason}")
    backend = KernelBackend(name)
    with backend.context():
        yield backend
