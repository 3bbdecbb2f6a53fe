"""Compiling a kernel source into a shared library for the emulator, with an on-disk cache.

A kernel file becomes one library: the file itself (included unchanged after the
compatibility header), one ``extern "C"`` launch trampoline per ``__global__`` function, and
the scheduler (``runtime.cpp``, compiled once into a cached object). Libraries are cached
under ``$GPUNN_EMU_CACHE``, else ``$XDG_CACHE_HOME/gpunn/emu``, else ``~/.cache/gpunn/emu``,
named by a hash of everything that goes into them; each is written under a temporary name
and renamed into place, so concurrent processes never see a half-written file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPAT_HEADER = HERE / "cuda_compat.h"
RUNTIME_SOURCES = (HERE / "runtime.cpp", HERE / "runtime.h", COMPAT_HEADER)

COMMON_FLAGS = (
    "-std=c++17",
    "-fPIC",
    "-pthread",
    "-fvisibility=hidden",
    "-fno-strict-aliasing",
    "-DGPUNN_EMU",
)
OPTIMISED_FLAGS = ("-O2",)
# AddressSanitizer for out-of-bounds reads and writes of the arrays and of shared memory,
# UndefinedBehaviorSanitizer for signed overflow, bad shifts and misaligned access.
SANITIZE_FLAGS = ("-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer")


class EmuCompileError(RuntimeError):
    """A kernel source that the C++ compiler rejects; the message carries the compiler's log."""


def compiler() -> str:
    return os.environ.get("GPUNN_EMU_CXX", "g++")


def sanitize_requested() -> bool:
    return os.environ.get("GPUNN_EMU_SANITIZE", "") not in ("", "0")


def compiler_env() -> dict[str, str]:
    """The environment for the compiler: without LD_PRELOAD, which under the sanitizer set-up
    names libasan (uninstrumented tools such as nvcc crash with it preloaded)."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def cache_dir() -> Path:
    explicit = os.environ.get("GPUNN_EMU_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpunn" / "emu"


@functools.cache
def compiler_identity(cxx: str) -> str:
    """The compiler's version line (part of every cache key)."""
    out = subprocess.run(
        [cxx, "--version"], capture_output=True, env=compiler_env(), text=True, check=True
    )
    return out.stdout.splitlines()[0] if out.stdout else cxx


@functools.cache
def probe_compiler(cxx: str) -> str | None:
    """None when ``cxx`` compiles a fiber-using C++17 file, else why it cannot."""
    if shutil.which(cxx) is None:
        return f"no C++ compiler: {cxx!r} is not on PATH (install g++ or set GPUNN_EMU_CXX)"
    probe = "#include <ucontext.h>\n#include <thread>\nint f() { ucontext_t c; return getcontext(&c); }\n"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.cpp"
        src.write_text(probe)
        result = subprocess.run(
            [cxx, *COMMON_FLAGS, "-c", str(src), "-o", str(Path(tmp) / "probe.o")],
            capture_output=True,
            env=compiler_env(),
            text=True,
            check=False,
        )
    if result.returncode != 0:
        return f"{cxx} cannot compile C++17 with <ucontext.h>: {result.stderr.strip()[:500]}"
    return None


def build_flags(sanitize: bool) -> tuple[str, ...]:
    mode = SANITIZE_FLAGS if sanitize else OPTIMISED_FLAGS
    return (*COMMON_FLAGS, *mode, "-include", str(COMPAT_HEADER), "-I", str(HERE))


def included_files(path: Path, seen: set[Path] | None = None) -> list[Path]:
    """``path`` and every file it includes with #include "..." (resolved beside the includer)."""
    seen = set() if seen is None else seen
    path = path.resolve()
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    files = [path]
    for name in re.findall(r'^\s*#\s*include\s*"([^"]+)"', path.read_text(), re.MULTILINE):
        files += included_files(path.parent / name, seen)
    return files


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:32]


def _compile(cmd: list[str], target: Path, what: str) -> None:
    """Run ``cmd`` (which writes ``target``'s temporary twin) and rename the result into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        result = subprocess.run(
            [*cmd, "-o", tmp], capture_output=True, env=compiler_env(), text=True, check=False
        )
        if result.returncode != 0:
            raise EmuCompileError(
                f"{what}: {cmd[0]} failed to compile it for the CPU emulator "
                f"(exit status {result.returncode}):\n{result.stderr.strip()}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def runtime_object(sanitize: bool) -> Path:
    """The scheduler compiled once per compiler and flag set (cached)."""
    cxx = compiler()
    flags = build_flags(sanitize)
    key = _digest(compiler_identity(cxx), *flags, *(p.read_bytes() for p in RUNTIME_SOURCES))
    target = cache_dir() / f"runtime-{key}.o"
    if not target.exists():
        _compile([cxx, *flags, "-c", str(HERE / "runtime.cpp")], target, str(HERE / "runtime.cpp"))
    return target


TRAMPOLINE = """
static void gpunn_emu_body_{name}(void** args) {{ ::gpunn_emu::invoke(&{name}, args); }}
extern "C" __attribute__((visibility("default"))) int gpunn_emu_launch_{name}(
        void** args, const long long* dims, long long shared_bytes, int workers, char* error,
        int error_size) {{
    static const ::gpunn_emu::Kernel kernel{{"{name}", {barrier}, &gpunn_emu_body_{name}}};
    return ::gpunn_emu::launch(kernel, args, dims, shared_bytes, workers, error, error_size);
}}
"""


def trampolines(source_path: Path, kernels) -> str:
    """C++ that includes the kernel source and exports one launch entry point per kernel."""
    quoted = str(source_path).replace("\\", "\\\\").replace('"', '\\"')
    parts = ['#include "runtime.h"', f'#include "{quoted}"']
    for k in kernels.values():
        barrier = "true" if k.uses_barrier else "false"
        parts.append(TRAMPOLINE.format(name=k.name, barrier=barrier))
    return "\n".join(parts)


def build_library(source_path: Path, kernels, sanitize: bool) -> Path:
    """The shared library for one kernel source (compiled on a cache miss)."""
    cxx = compiler()
    flags = build_flags(sanitize)
    runtime = runtime_object(sanitize)
    generated = trampolines(source_path, kernels)
    key = _digest(
        runtime.name,
        generated,
        *flags,
        *(f"{p}\0{p.read_text()}" for p in included_files(source_path)),
    )
    library = cache_dir() / f"{source_path.stem}-{key}{'-asan' if sanitize else ''}.so"
    if library.exists():
        return library
    cpp = cache_dir() / f"{source_path.stem}-{key}.cpp"
    cpp.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cpp.parent, prefix=cpp.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(generated)
    os.replace(tmp, cpp)
    cmd = [cxx, *flags, "-I", str(source_path.parent), "-shared", "-x", "c++", str(cpp)]
    cmd += ["-x", "none", str(runtime)]
    if sanitize:
        cmd += ["-fsanitize=address,undefined"]
    _compile(cmd, library, str(source_path))
    return library
