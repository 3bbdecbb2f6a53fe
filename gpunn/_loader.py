"""Loading ``kernels/*.cu``: through NVRTC (``cupy.RawModule``) for CuPy arrays, through the
CPU emulator (``gpunn.emu``) for NumPy arrays.

``module(xp, name)`` compiles ``kernels/<name>.cu`` once per process and returns an object with
``get_function(kernel)``; a function is called as a CuPy ``RawKernel``: ``fn(grid, block, args)``.
Every launch is checked against the kernel's parsed ``__global__`` signature first.

The CUDA path compiles one self-contained source: ``source(name)`` inlines the quoted
``#include``s (with ``#line`` markers, so NVRTC's log names the right file and line). CuPy's
on-disk cache keys on the source text and options, so an edited header recompiles too.
``OPTIONS`` are the NVRTC options; CuPy adds the GPU's ``-arch``. ``tests/test_compile.py``
compiles ``source(name)`` with the same ``OPTIONS`` for sm_80 and sm_90.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
from pathlib import Path

import numpy

from gpunn._shapes import ceil_div

KERNELS_DIR = Path(__file__).parent / "kernels"

# NVRTC options shared by the loader and the compile test (no fast-math: the activations
# must reach their limits exactly and the reference comparison is at 1e-5).
OPTIONS = ("--std=c++17",)

# Set GPUNN_SYNC_LAUNCHES=1 to synchronise after every CUDA launch, so that an asynchronous
# fault (an illegal address) is reported with the kernel that caused it.
SYNC_LAUNCHES = os.environ.get("GPUNN_SYNC_LAUNCHES", "") not in ("", "0")

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$')
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$")


def kernel_path(name: str) -> Path:
    """``kernels/<name>.cu``; ValueError naming the file when it does not exist."""
    path = KERNELS_DIR / f"{name}.cu"
    if not path.is_file():
        raise ValueError(f"no kernel source {path} (name={name!r})")
    return path


def kernel_names() -> list[str]:
    """Every kernel file's name (``pool`` for ``kernels/pool.cu``), sorted."""
    return sorted(p.stem for p in KERNELS_DIR.glob("*.cu"))


def source(name: str) -> str:
    """The source of ``kernels/<name>.cu`` with its quoted includes inlined once each."""
    return _expand(kernel_path(name), set())


def _expand(path: Path, seen: set) -> str:
    out = [f'#line 1 "{path.name}"']
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        match = _INCLUDE.match(line)
        if match:
            header = path.parent / match.group(1)
            if not header.is_file():
                raise RuntimeError(f"{path.name}:{lineno}: included file {header} not found")
            if header.resolve() not in seen:
                seen.add(header.resolve())
                out.append(_expand(header, seen))
            out.append(f'#line {lineno + 1} "{path.name}"')
        elif _PRAGMA_ONCE.match(line):
            out.append("")  # inlined once already; keeps the line count
        else:
            out.append(line)
    return "\n".join(out) + "\n"


# While record_launches() is active, the names of the kernels launched in this context.
_launch_log: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "gpunn_launch_log", default=None
)


@contextlib.contextmanager
def record_launches():
    """Collect, in a list, the name of every kernel launched inside the ``with`` block
    (``gpunn check`` uses it to attribute each comparison to the kernels that produced it)."""
    log: list[str] = []
    token = _launch_log.set(log)
    try:
        yield log
    finally:
        _launch_log.reset(token)


class _RecordingModule:
    """A module whose functions append their kernel's name to ``log`` when launched."""

    def __init__(self, mod, log: list):
        self._mod = mod
        self._log = log

    def get_function(self, kernel: str):
        fn = self._mod.get_function(kernel)
        log = self._log

        def launch(grid, block, args, shared_mem: int = 0):
            log.append(kernel)
            return fn(grid, block, args, shared_mem)

        return launch


def module(xp, name: str):
    """The compiled ``kernels/<name>.cu`` for array module ``xp`` (numpy: emulator, cupy:
    NVRTC), built once per process for each version of the source: an edited kernel file
    (or header) is compiled again, not served from the first build."""
    if xp is numpy:
        from gpunn import emu

        mod = emu.load_module(kernel_path(name))  # cached there, keyed on the files' mtimes
    else:
        mod = _cuda_module(kernel_path(name), source(name))
    log = _launch_log.get()
    return mod if log is None else _RecordingModule(mod, log)


@functools.cache
def _cuda_module(path: Path, text: str):
    import cupy

    raw = cupy.RawModule(code=text, options=OPTIONS)
    try:
        raw.compile()
    except cupy.cuda.compiler.CompileException as exc:
        raise RuntimeError(f"NVRTC failed to compile {path}:\n{exc.get_message()}") from None
    return CudaModule(path, text, raw)


class CudaModule:
    """A compiled kernel file; ``get_function`` returns checked launchers."""

    def __init__(self, path: Path, text: str, raw):
        from gpunn import _signature

        self.path = path
        self._raw = raw
        self._signatures = _signature.parse_kernels(text)
        self._functions: dict = {}

    def get_function(self, kernel: str):
        fn = self._functions.get(kernel)
        if fn is None:
            if kernel not in self._signatures:
                raise ValueError(
                    f"{self.path.name} has no kernel {kernel!r} "
                    f"(it defines {sorted(self._signatures)})"
                )
            fn = CudaKernel(self.path, kernel, self._signatures[kernel], self._raw)
            self._functions[kernel] = fn
        return fn


class CudaKernel:
    """One ``__global__`` function: checks the arguments, launches, reports failures by name."""

    def __init__(self, path: Path, name: str, signature, raw):
        self.path = path
        self.name = name
        self.signature = signature
        self._kernel = raw.get_function(name)

    def __call__(self, grid, block, args, shared_mem: int = 0):
        import cupy

        from gpunn import _signature

        _signature.check_args(self.name, self.signature.params, args, (cupy.ndarray,))
        try:
            self._kernel(grid, block, args, shared_mem=shared_mem)
        except Exception as exc:
            raise RuntimeError(f"{self._where(grid, block)} failed to launch: {exc}") from exc
        if SYNC_LAUNCHES:
            try:
                cupy.cuda.get_current_stream().synchronize()
            except Exception as exc:
                raise RuntimeError(f"{self._where(grid, block)} failed: {exc}") from exc

    def _where(self, grid, block) -> str:
        return f"kernel {self.name} ({self.path.name}) grid={grid} block={block}"


def grid_1d(xp, total: int, threads: int) -> tuple[tuple, tuple]:
    """``(grid, block)`` covering ``total`` threads with ``threads`` per block, the grid
    checked against the device's largest x dimension."""
    blocks = ceil_div(total, threads)
    limit = max_grid_x(xp)
    if blocks > limit:
        raise ValueError(
            f"{total} threads need {blocks} blocks of {threads}, above the grid limit {limit}"
        )
    return (blocks, 1, 1), (threads, 1, 1)


def max_grid_x(xp) -> int:
    """The largest grid x dimension: the current device's for CuPy, CUDA's 2^31 - 1 for the
    emulator."""
    if xp is numpy:
        return 2**31 - 1
    return _device_max_grid_x(xp.cuda.Device().id)


@functools.cache
def _device_max_grid_x(device_id: int) -> int:
    import cupy

    return int(cupy.cuda.Device(device_id).attributes["MaxGridDimX"])


def i32(value) -> numpy.int32:
    """A kernel ``int`` argument; ValueError when the value does not fit in 32 bits."""
    v = int(value)
    if not -(2**31) <= v < 2**31:
        raise ValueError(f"{v} does not fit in a 32-bit kernel argument")
    return numpy.int32(v)
