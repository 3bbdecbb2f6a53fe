"""Every kernels/*.cu compiles through NVRTC (the compiler CuPy uses at run time) for sm_80 and
sm_90 with the loader's OPTIONS, without a GPU; where nvcc is installed, ptxas reports no
register spills. Run with ``-s`` to see the per-kernel register table (it is also attached to
the junit report as the ``ptxas`` property).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from gpunn import _loader, _signature

ARCHS = ("sm_80", "sm_90")
NAMES = _loader.kernel_names()
IN_CI = os.environ.get("CI", "").lower() == "true"


def _nvrtc():
    """The NVRTC binding; skip without it, except under CI=true where it fails."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except (ImportError, OSError, RuntimeError) as exc:
        message = f"NVRTC is not usable ({exc}); pip install 'nvidia-cuda-nvrtc==13.0.*'"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return nvrtc


def test_there_are_kernels():
    assert {"pool", "lstm", "rnn"} <= set(NAMES), NAMES


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", NAMES)
def test_nvrtc_compiles(name, arch):
    nvrtc = _nvrtc()
    text = _loader.source(name)
    prog = nvrtc.createProgram(text, f"{name}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [*_loader.OPTIONS, f"-arch={arch}"])
        except nvrtc.NVRTCError:
            log = nvrtc.getProgramLog(prog)
            pytest.fail(f"NVRTC failed on kernels/{name}.cu for {arch}:\n{log}")
        log = nvrtc.getProgramLog(prog)
        assert "warning" not in log, f"NVRTC warnings on kernels/{name}.cu for {arch}:\n{log}"
        cubin = nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)
    # Every __global__ function is in the binary under its extern "C" name.
    for kernel in _signature.parse_kernels(text):
        assert kernel.encode() in cubin, f"{kernel} missing from the {arch} cubin of {name}.cu"


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def parse_ptxas(log: str) -> dict[str, dict[str, int]]:
    """kernel -> {registers, stack, spill_stores, spill_loads} from ``nvcc -Xptxas -v``."""
    table: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = table.setdefault(m.group(1), {})
        elif current is not None and (m := _SPILLS.search(line)):
            current.update(stack=int(m[1]), spill_stores=int(m[2]), spill_loads=int(m[3]))
        elif current is not None and (m := _REGS.search(line)):
            current["registers"] = int(m[1])
    return table


def test_parse_ptxas_reads_each_entry():
    log = (
        "ptxas info    : Compiling entry function 'k1' for 'sm_90'\n"
        "ptxas info    : Function properties for k1\n"
        "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 255 registers, used 1 barriers\n"
        "ptxas info    : Compiling entry function 'k2' for 'sm_90'\n"
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
        "ptxas info    : Used 16 registers, used 0 barriers\n"
    )
    assert parse_ptxas(log) == {
        "k1": {"registers": 255, "stack": 8, "spill_stores": 4, "spill_loads": 12},
        "k2": {"registers": 16, "stack": 0, "spill_stores": 0, "spill_loads": 0},
    }


@pytest.mark.parametrize("name", NAMES)
def test_ptxas_no_spills(name, tmp_path, record_property):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: no ptxas register report")
    src = tmp_path / f"{name}.cu"
    src.write_text(_loader.source(name))
    cmd = [nvcc, "-arch=sm_90", "-cubin", "-Xptxas", "-v", *_loader.OPTIONS]
    cmd += ["-o", str(tmp_path / f"{name}.cubin"), str(src)]
    # nvcc must not inherit the sanitizer step's LD_PRELOAD of libasan (it crashes under it).
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    run = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, env=env)
    log = run.stdout + run.stderr
    assert run.returncode == 0, f"nvcc failed on kernels/{name}.cu:\n{log}"
    table = parse_ptxas(log)
    kernels = set(_signature.parse_kernels(_loader.source(name)))
    assert kernels <= set(table), f"ptxas reported {sorted(table)}, expected {sorted(kernels)}"
    rows = [f"{'kernel (sm_90)':32} {'regs':>5} {'stack':>6} {'spill st':>9} {'spill ld':>9}"]
    for kernel, r in sorted(table.items()):
        rows.append(
            f"{kernel:32} {r['registers']:5d} {r['stack']:6d} "
            f"{r['spill_stores']:9d} {r['spill_loads']:9d}"
        )
    report = "\n".join(rows)
    record_property("ptxas", report)
    print(f"\nkernels/{name}.cu\n{report}")
    spilled = [k for k, r in table.items() if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, f"register spills in {spilled}:\n{report}"
