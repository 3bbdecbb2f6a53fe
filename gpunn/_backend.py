"""Backend selection and device discovery.

The array type decides first: a ``cupy.ndarray`` always runs the CUDA kernels. For NumPy
arrays a context variable selects the CPU backend: ``"numpy"`` (the reference, default) or
``"emu"`` (the CUDA C kernels executed on the CPU).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import numpy

CPU_BACKENDS = ("numpy", "emu")

_backend: contextvars.ContextVar[str] = contextvars.ContextVar("gpunn_backend", default="numpy")


@functools.lru_cache(maxsize=1)
def cupy_module():
    """The cupy module if it imports, else None (never raises)."""
    try:
        import cupy
    except Exception:  # noqa: BLE001 (a broken CUDA install raises anything at import)
        return None
    return cupy


def is_cupy_array(x) -> bool:
    cp = cupy_module()
    return cp is not None and isinstance(x, cp.ndarray)


def get_array_module(x):
    """``numpy`` for a NumPy array, ``cupy`` for a CuPy array."""
    if isinstance(x, numpy.ndarray):
        return numpy
    if is_cupy_array(x):
        return cupy_module()
    raise TypeError(f"expected a numpy.ndarray or cupy.ndarray, got {type(x).__name__}")


def get_backend() -> str:
    """The CPU backend in force: "numpy" or "emu"."""
    return _backend.get()


def use_backend(name: str):
    """Select the CPU backend ("numpy" or "emu") inside a ``with`` block. Nestable.

    The name is checked at the call, not when the block is entered: an unknown name is a
    ValueError, and "emu" without a working C++ compiler a RuntimeError saying why.
    """
    if name not in CPU_BACKENDS:
        raise ValueError(f"backend must be one of {CPU_BACKENDS}, got {name!r}")
    if name == "emu":
        from gpunn.emu import ensure_available

        ensure_available()
    return _selected(name)


@contextlib.contextmanager
def _selected(name: str):
    token = _backend.set(name)
    try:
        yield name
    finally:
        _backend.reset(token)


def gpu_unavailable_reason() -> str | None:
    """None when a GPU is usable through CuPy, else a sentence saying why not."""
    cp = cupy_module()
    if cp is None:
        return "cupy is not installed (pip install 'gpunn[cuda13]' or 'gpunn[cuda12]')"
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 (no driver, no device, a driver too old)
        return f"CUDA is not usable: {exc}"
    if count < 1:
        return "no CUDA device found"
    return None


def device_info() -> dict:
    """``available`` and the GPU's properties, or ``reason`` when no GPU is usable."""
    reason = gpu_unavailable_reason()
    if reason is not None:
        return {"available": False, "reason": reason}
    cp = cupy_module()
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"]
    return {
        "available": True,
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": f"{props['major']}.{props['minor']}",
        "memory_bytes": int(props["totalGlobalMem"]),
        "multiprocessors": int(props["multiProcessorCount"]),
        "l2_bytes": int(props["l2CacheSize"]),
        "cupy_version": cp.__version__,
        "cuda_runtime_version": int(cp.cuda.runtime.runtimeGetVersion()),
        "cuda_driver_version": int(cp.cuda.runtime.driverGetVersion()),
    }
