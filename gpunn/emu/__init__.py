"""Run the CUDA C kernels of ``kernels/*.cu`` on the CPU, with CUDA's execution semantics.

A kernel source is compiled by the system C++ compiler against ``cuda_compat.h`` into a
shared library (cached on disk, see ``_build``). A launch runs every block of the grid, the
blocks spread over the CPU's cores; inside a block every CUDA thread is a fiber and
``__syncthreads()`` is a real barrier. Shared memory declared with ``GPUNN_SHARED`` is
filled with NaN bytes before every block. A barrier that not every thread of a block
reaches ends the launch with a RuntimeError naming the kernel and the barrier.

The interface is CuPy's: ``load_module(path).get_function(name)(grid, block, args)``.
Set ``GPUNN_EMU_SANITIZE=1`` to build and load AddressSanitizer/UBSan libraries instead (the
process must have been started with the sanitizer runtimes preloaded; see ``SANITIZE_HELP``).
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy

from gpunn._signature import check_args, parse_kernels
from gpunn.emu._build import (
    EmuCompileError,
    build_library,
    compiler,
    included_files,
    probe_compiler,
    sanitize_requested,
)

__all__ = [
    "EmuCompileError",
    "EmuKernel",
    "EmuModule",
    "ensure_available",
    "load_module",
    "unavailable_reason",
]

SANITIZE_HELP = (
    'LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)" '
    "ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 "
    "GPUNN_EMU_SANITIZE=1 python -m pytest ..."
)

# CUDA's launch limits (compute capability 9.0), enforced so that a launch that would fail
# on the GPU fails here too.
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024
MAX_GRID = (2**31 - 1, 65535, 65535)
ERROR_BUFFER_BYTES = 4096

_modules: dict[tuple, EmuModule] = {}
_modules_lock = threading.Lock()


def unavailable_reason() -> str | None:
    """None when the emulator can run here, else a sentence saying why not (cached)."""
    return probe_compiler(compiler())


def ensure_available() -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"the CPU emulator (backend 'emu') cannot run: {reason}")


def _sanitizer_runtime_loaded() -> bool:
    with open("/proc/self/maps") as maps:
        return "libasan" in maps.read()


def load_module(path) -> EmuModule:
    """The emulator's module for the CUDA C source at ``path`` (compiled once, then cached)."""
    ensure_available()
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"kernel source {path} does not exist")
    sanitize = sanitize_requested()
    if sanitize and not _sanitizer_runtime_loaded():
        raise RuntimeError(
            "GPUNN_EMU_SANITIZE=1 needs the sanitizer runtimes loaded first; run: " + SANITIZE_HELP
        )
    key = (
        str(path),
        sanitize,
        tuple((p, p.stat().st_mtime_ns, p.stat().st_size) for p in included_files(path)),
    )
    with _modules_lock:
        module = _modules.get(key)
        if module is None:
            module = EmuModule(path, sanitize)
            _modules[key] = module
    return module


class EmuModule:
    """One compiled kernel source; ``get_function(name)`` as ``cupy.RawModule``."""

    def __init__(self, path: Path, sanitize: bool):
        self.path = path
        self.kernels = parse_kernels(path.read_text())
        library = build_library(path, self.kernels, sanitize)
        self._lib = ctypes.CDLL(str(library))

    def get_function(self, name: str) -> EmuKernel:
        if name not in self.kernels:
            known = ", ".join(sorted(self.kernels)) or "none"
            raise ValueError(f"{self.path} has no __global__ function {name!r} (it has: {known})")
        entry = self._lib[f"gpunn_emu_launch_{name}"]
        entry.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_longlong),
            ctypes.c_longlong,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        entry.restype = ctypes.c_int
        return EmuKernel(self.kernels[name], entry, self.path)


def _dims(kernel: str, what: str, value, limits) -> tuple[int, int, int]:
    if isinstance(value, (int, numpy.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, tuple) or not 1 <= len(value) <= 3:
        raise TypeError(f"kernel {kernel!r}: {what} must be a tuple of 1 to 3 ints, got {value!r}")
    dims = []
    for v, limit in zip(value, limits):
        if isinstance(v, bool) or not isinstance(v, (int, numpy.integer)):
            raise TypeError(f"kernel {kernel!r}: {what} must hold ints, got {value!r}")
        if not 1 <= v <= limit:
            raise ValueError(f"kernel {kernel!r}: {what} {value!r} is outside [1, {limit}]")
        dims.append(int(v))
    return tuple(dims + [1] * (3 - len(dims)))


def _workers() -> int:
    explicit = os.environ.get("GPUNN_EMU_THREADS")
    if explicit:
        return max(1, int(explicit))
    return len(os.sched_getaffinity(0))


class EmuKernel:
    """A kernel launchable as ``kernel(grid, block, args, shared_mem=0)`` (CuPy's RawKernel)."""

    def __init__(self, signature, entry, path: Path):
        self.signature = signature
        self.name = signature.name
        self._entry = entry
        self._path = path

    def __call__(self, grid, block, args, shared_mem: int = 0) -> None:
        grid3 = _dims(self.name, "grid", grid, MAX_GRID)
        block3 = _dims(self.name, "block", block, MAX_BLOCK)
        if block3[0] * block3[1] * block3[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(
                f"kernel {self.name!r}: block {block!r} has more than "
                f"{MAX_THREADS_PER_BLOCK} threads"
            )
        if not isinstance(args, (tuple, list)):
            raise TypeError(
                f"kernel {self.name!r}: args must be a tuple, got {type(args).__name__}"
            )
        check_args(self.name, self.signature.params, args, (numpy.ndarray,))
        # args[i] points at the i-th argument's value, as for cudaLaunchKernel.
        holders = [
            numpy.array([a.ctypes.data], dtype=numpy.uintp)
            if p.is_pointer
            else numpy.array([a], dtype=p.dtype)
            for p, a in zip(self.signature.params, args)
        ]
        packed = (ctypes.c_void_p * max(1, len(holders)))(*[h.ctypes.data for h in holders])
        dims = (ctypes.c_longlong * 6)(*grid3, *block3)
        error = ctypes.create_string_buffer(ERROR_BUFFER_BYTES)
        status = self._entry(packed, dims, int(shared_mem), _workers(), error, ERROR_BUFFER_BYTES)
        if status != 0:
            raise RuntimeError(f"{self._path.name}: {error.value.decode(errors='replace')}")
