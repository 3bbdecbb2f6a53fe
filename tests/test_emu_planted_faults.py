"""Faults planted in a copy of a real kernel (kernels/conv2d.cu) are caught by the emulator.

Each test copies kernels/conv2d.cu and common.cuh into tmp_path, changes one line by text
substitution (asserting that the line is there, so a rewrite of the kernel fails these tests
loudly instead of silently planting nothing), and checks that the unchanged copy matches the
NumPy reference while the broken copy does not, or that the emulator (or AddressSanitizer)
reports the fault.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpunn import emu, reference

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
ROOT = KERNELS.parent

pytestmark = pytest.mark.emu

# N, C, H, W; K, R, S; padding 1 on every side, stride 1: the bottom output row's windows
# reach one row into the padding, where an off-by-one bound reads a real row instead.
X_SHAPE = (2, 3, 9, 11)
W_SHAPE = (5, 3, 3, 3)
PAD = 1

# Fault: the bound of the input row in the forward gather lets row H through.
OFF_BY_ONE = ("ih >= 0 && ih < g.H", "ih >= 0 && ih <= g.H")
# Fault: the barrier between stashing the first tiles and reading them is gone.
MISSING_FIRST_BARRIER = (
    "    // buffer 0 complete before anyone reads it\n    __syncthreads();\n",
    "",
)
# Fault: the bias reduction's barrier moves inside the branch only the lower half takes.
DIVERGENT_BARRIER = (
    "if (t < half) partial[t] += partial[t + half];",
    "if (t < half) { partial[t] += partial[t + half]; __syncthreads(); }",
)


def planted_copy(tmp_path: Path, fault=None) -> Path:
    shutil.copy(KERNELS / "common.cuh", tmp_path / "common.cuh")
    text = (KERNELS / "conv2d.cu").read_text()
    if fault is not None:
        old, new = fault
        assert old in text, f"kernels/conv2d.cu no longer contains {old!r}: update this test"
        text = text.replace(old, new, 1)
    path = tmp_path / "conv2d.cu"
    path.write_text(text)
    return path


def constants(path: Path) -> dict[str, int]:
    """The kernel file's `constexpr int NAME = value;` tile constants."""
    return {k: int(v) for k, v in re.findall(r"constexpr int (\w+) = (\d+);", path.read_text())}


def inputs():
    rng = np.random.default_rng(7)
    x = rng.integers(-4, 5, size=X_SHAPE).astype(np.float32)
    w = rng.integers(-4, 5, size=W_SHAPE).astype(np.float32)
    b = rng.integers(-4, 5, size=W_SHAPE[0]).astype(np.float32)
    return x, w, b


def conv_forward(path: Path, x, w, b):
    """y (N, K, OH, OW) from the copy's conv2d_forward, launched as the kernel file says."""
    c = constants(path)
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    OH, OW = H + 2 * PAD - R + 1, W + 2 * PAD - S + 1
    y = np.full((N, K, OH, OW), -7.0, dtype=np.float32)
    grid = (-(-N * OH * OW // c["CONV_BN"]), -(-K // c["CONV_BM"]))
    geometry = (N, C, H, W, K, R, S, OH, OW, 1, 1, PAD, PAD, 1, 1)
    args = (x, w, b, np.int32(1), y, *(np.int32(v) for v in geometry))
    emu.load_module(path).get_function("conv2d_forward")(grid, (c["CONV_THREADS"],), args)
    return y


def reference_forward(x, w, b):
    out = reference.conv2d_forward(
        x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), (1, 1), (PAD,) * 4, (1, 1)
    )
    return np.asarray(out)


@pytest.fixture
def guarded_x():
    """x as the front of a larger buffer whose tail is NaN: a read past x's end shows up as
    NaN (and stays inside allocated memory, so the plain build reads no foreign memory)."""
    x, w, b = inputs()
    buffer = np.full(x.size + 4096, np.nan, dtype=np.float32)
    buffer[: x.size] = x.ravel()
    return buffer[: x.size].reshape(x.shape), w, b


def test_unchanged_copy_matches_reference(tmp_path, guarded_x):
    x, w, b = guarded_x
    y = conv_forward(planted_copy(tmp_path), x, w, b)
    np.testing.assert_array_equal(y, reference_forward(x, w, b))


def test_off_by_one_read_is_caught(tmp_path, guarded_x):
    x, w, b = guarded_x
    y = conv_forward(planted_copy(tmp_path, OFF_BY_ONE), x, w, b)
    ref = reference_forward(x, w, b)
    wrong = np.argwhere(y != ref)
    assert wrong.size > 0
    # Only the last output row reaches into the bottom padding.
    assert set(wrong[:, 2]) == {y.shape[2] - 1}


def test_missing_barrier_is_caught(tmp_path, guarded_x):
    x, w, b = guarded_x
    y = conv_forward(planted_copy(tmp_path, MISSING_FIRST_BARRIER), x, w, b)
    assert not np.array_equal(y, reference_forward(x, w, b))
    assert np.isnan(y).any()  # read the poisoned, not yet written, shared tile


def test_divergent_barrier_is_reported(tmp_path):
    path = planted_copy(tmp_path, DIVERGENT_BARRIER)
    c = constants(path)
    N, K, OHW = 2, 3, 50
    grad_y = np.ones((N, K, OHW), dtype=np.float32)
    grad_b = np.zeros(K, dtype=np.float32)
    fn = emu.load_module(path).get_function("conv2d_grad_bias")
    with pytest.raises(RuntimeError, match=r"conv2d_grad_bias.*conv2d\.cu:\d+"):
        fn(
            (K,),
            (c["CONV_REDUCE_THREADS"],),
            (grad_y, grad_b, np.int32(N), np.int32(K), np.int32(OHW)),
        )


ASAN_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {root!r})
from tests.test_emu_planted_faults import conv_forward, inputs
from pathlib import Path
x, w, b = inputs()
conv_forward(Path({path!r}), x, w, b)
print("finished without a report")
"""


def sanitizer_env() -> dict[str, str] | None:
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        found = subprocess.run(
            ["g++", f"-print-file-name={name}"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if not os.path.isabs(found):
            return None
        libs.append(found)
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=" ".join(libs),
        ASAN_OPTIONS="detect_leaks=0",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        GPUNN_EMU_SANITIZE="1",
    )
    return env


@pytest.mark.slow
def test_address_sanitizer_reports_off_by_one_past_the_buffer(tmp_path):
    """Unguarded x: the off-by-one reads past the end of the numpy buffer; ASan reports it."""
    env = sanitizer_env()
    if env is None:
        pytest.skip("g++ has no libasan/libubsan here")
    (tmp_path / "clean").mkdir()
    (tmp_path / "faulty").mkdir()
    clean = planted_copy(tmp_path / "clean")
    faulty = planted_copy(tmp_path / "faulty", OFF_BY_ONE)
    results = {}
    for name, path in (("clean", clean), ("faulty", faulty)):
        script = ASAN_SCRIPT.format(root=str(ROOT), path=str(path))
        results[name] = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
        )
    assert results["clean"].returncode == 0, results["clean"].stderr[-3000:]
    assert "finished without a report" in results["clean"].stdout
    faulty_run = results["faulty"]
    assert faulty_run.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in faulty_run.stderr
    assert "conv2d.cu" in faulty_run.stderr
