"""Kernel signatures parsed from CUDA C sources, and launch-argument checks against them.

CuPy passes whatever it is given to a kernel: a Python int arrives as a 64-bit integer, a
float64 array is read as float32 garbage. Both loaders (``gpunn._loader`` and ``gpunn.emu``)
therefore check every launch against the parsed ``__global__`` signature first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy

# C scalar types (LP64) that kernel parameters use, as numpy dtypes.
_C_DTYPES = {
    "float": numpy.float32,
    "double": numpy.float64,
    "int": numpy.int32,
    "signed int": numpy.int32,
    "unsigned": numpy.uint32,
    "unsigned int": numpy.uint32,
    "long": numpy.int64,
    "long int": numpy.int64,
    "long long": numpy.int64,
    "long long int": numpy.int64,
    "unsigned long": numpy.uint64,
    "unsigned long long": numpy.uint64,
    "size_t": numpy.uint64,
    "int64_t": numpy.int64,
    "int32_t": numpy.int32,
    "uint32_t": numpy.uint32,
    "uint64_t": numpy.uint64,
    "short": numpy.int16,
    "unsigned short": numpy.uint16,
    "char": numpy.int8,
    "signed char": numpy.int8,
    "unsigned char": numpy.uint8,
    "int8_t": numpy.int8,
    "uint8_t": numpy.uint8,
    "bool": numpy.bool_,
}

_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict"}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: ``const float* __restrict__ x`` is
    Param(position=0, name="x", ctype="const float*", is_pointer=True, is_const=True,
    dtype=float32)."""

    position: int
    name: str
    ctype: str
    is_pointer: bool
    is_const: bool
    dtype: numpy.dtype

    def describe(self) -> str:
        return f"argument {self.position} '{self.name}' ({self.ctype})"


@dataclass(frozen=True)
class KernelSignature:
    name: str
    params: tuple[Param, ...]
    uses_barrier: bool  # the body, or a function it calls from this source, has a barrier


def strip_comments(source: str) -> str:
    """The source with comments replaced by spaces (string literals are left alone)."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\])*"', re.DOTALL)

    def blank(m: re.Match) -> str:
        text = m.group(0)
        return text if text.startswith('"') else re.sub(r"[^\n]", " ", text)

    return pattern.sub(blank, source)


def _matching(text: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket closing the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_ch:
            depth += 1
        elif text[i] == close_ch:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {open_ch!r} at offset {start}")


def _split_params(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _parse_param(kernel: str, position: int, text: str) -> Param:
    words = re.findall(r"[A-Za-z_]\w*|\*|&|\[|\]", text)
    if "&" in words or "[" in words:
        raise ValueError(f"kernel {kernel!r}: parameter {text!r} is not a scalar or pointer")
    stars = words.count("*")
    names = [w for w in words if w != "*"]
    if len(names) < 2:
        raise ValueError(f"kernel {kernel!r}: parameter {text!r} has no name")
    name = names[-1]
    # const before the first '*' qualifies the pointee (const float*); after it, the pointer.
    first_star = words.index("*") if stars else len(words)
    is_const = "const" in words[:first_star]
    base = " ".join(w for w in names[:-1] if w not in _QUALIFIERS)
    base = re.sub(r"\bsigned (?=long|short)", "", base)
    if stars > 1 or base not in _C_DTYPES:
        raise ValueError(f"kernel {kernel!r}: unsupported parameter type in {text!r}")
    ctype = ("const " if is_const else "") + base + "*" * stars
    return Param(position, name, ctype, stars == 1, is_const, numpy.dtype(_C_DTYPES[base]))


def _function_bodies(code: str) -> dict[str, str]:
    """Every function definition at file scope: name -> body text (templates included)."""
    bodies: dict[str, str] = {}
    head = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
    pos = 0
    while True:
        m = head.search(code, pos)
        if m is None:
            return bodies
        close = _matching(code, m.end() - 1, "(", ")")
        after = re.match(
            r"\s*(?:const\s*)?(?:__launch_bounds__\s*\([^)]*\)\s*)?\{", code[close + 1 :]
        )
        if after is None or m.group(1) in {"if", "for", "while", "switch", "return"}:
            pos = m.end()
            continue
        brace = close + after.end()
        end = _matching(code, brace, "{", "}")
        bodies[m.group(1)] = bodies.get(m.group(1), "") + code[brace : end + 1]
        pos = end + 1


def _barrier_functions(bodies: dict[str, str]) -> set[str]:
    """Functions whose body reaches __syncthreads(), directly or through a call."""
    calls = {
        name: set(re.findall(r"\b([A-Za-z_]\w*)\s*(?:<[^;{}()]*>)?\s*\(", body))
        for name, body in bodies.items()
    }
    found = {name for name, body in bodies.items() if re.search(r"\b__syncthreads\b", body)}
    changed = True
    while changed:
        changed = False
        for name, called in calls.items():
            if name not in found and called & found:
                found.add(name)
                changed = True
    return found


def parse_kernels(source: str) -> dict[str, KernelSignature]:
    """Every ``__global__`` function of a CUDA C source: name -> KernelSignature."""
    code = strip_comments(source)
    bodies = _function_bodies(code)
    with_barrier = _barrier_functions(bodies)
    kernels: dict[str, KernelSignature] = {}
    for m in re.finditer(r"\b__global__\b", code):
        rest = code[m.end() :]
        rest_clean = re.sub(r"__launch_bounds__\s*\([^)]*\)", lambda x: " " * len(x.group(0)), rest)
        head = re.match(r"[\s\w]*?\bvoid\s+([A-Za-z_]\w*)\s*\(", rest_clean)
        if head is None:
            raise ValueError(f"cannot parse the __global__ declaration at: {rest[:80].strip()!r}")
        name = head.group(1)
        open_paren = m.end() + head.end() - 1
        close = _matching(code, open_paren, "(", ")")
        texts = _split_params(code[open_paren + 1 : close])
        if texts == ["void"]:
            texts = []
        params = tuple(_parse_param(name, i, t) for i, t in enumerate(texts))
        kernels[name] = KernelSignature(name, params, name in with_barrier)
    return kernels


def _type_name(arg) -> str:
    cls = type(arg)
    dtype = getattr(arg, "dtype", None)
    shown = f"{cls.__module__}.{cls.__name__}" if cls.__module__ != "builtins" else cls.__name__
    return f"{shown} of {dtype}" if dtype is not None and hasattr(arg, "shape") else shown


def check_args(kernel_name: str, params, args, array_types: tuple[type, ...]) -> None:
    """Raise TypeError, naming the kernel and the argument, unless ``args`` fit ``params``.

    Pointer parameters take C-contiguous arrays (instances of ``array_types``: numpy.ndarray
    for the emulator, cupy.ndarray for CUDA) of the pointee's dtype; a non-const pointer
    needs a writeable array. Scalar parameters take numpy scalars of exactly the C type's
    dtype: a Python int or float is an error (CuPy would pass it as 64 bits).
    """
    params = tuple(params)
    args = tuple(args)
    if len(args) != len(params):
        names = ", ".join(p.name for p in params)
        raise TypeError(
            f"kernel {kernel_name!r} takes {len(params)} arguments ({names}), got {len(args)}"
        )
    # Messages are built only on failure: this runs before every launch, once per step of a
    # recurrent sequence, so the passing path stays a few attribute compares per argument.
    for p, a in zip(params, args):
        if p.is_pointer:
            if (
                isinstance(a, array_types)
                and a.dtype == p.dtype
                and a.flags.c_contiguous
                and (p.is_const or getattr(a.flags, "writeable", True))
            ):
                continue
            _pointer_error(kernel_name, p, a, array_types)
        elif not isinstance(a, numpy.generic) or a.dtype != p.dtype:
            raise TypeError(
                f"kernel {kernel_name!r} {p.describe()}: expected numpy.{p.dtype.name} (a "
                f"scalar, as numpy.{p.dtype.name}(value)), got {_type_name(a)}"
            )


def _pointer_error(kernel_name: str, p, a, array_types) -> None:
    """Raise the TypeError that says why ``a`` does not fit pointer parameter ``p``."""
    where = f"kernel {kernel_name!r} {p.describe()}"
    if not isinstance(a, array_types):
        kinds = " or ".join(f"{t.__module__}.{t.__name__}" for t in array_types)
        raise TypeError(f"{where}: expected a {kinds} of {p.dtype}, got {_type_name(a)}")
    if a.dtype != p.dtype:
        raise TypeError(f"{where}: expected dtype {p.dtype}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise TypeError(f"{where}: the array must be C-contiguous")
    raise TypeError(f"{where}: the kernel writes through it, the array is read-only")
