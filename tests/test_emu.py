"""The CPU emulator (backend "emu") on fixture kernels of its own (tests/emu_fixtures).

Each fixture kernel is small and its expected result is computed here with NumPy, never by
the emulator. Inputs are small integers where sums are involved, so float32 sums are exact.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpunn import emu
from gpunn._signature import check_args, parse_kernels

FIXTURES = Path(__file__).parent / "emu_fixtures"
TILE = 16  # TILE in shared_memory.cu
BLOCK = 128  # BLOCK in shared_memory.cu

pytestmark = pytest.mark.emu


@pytest.fixture(autouse=True)
def _need_emulator():
    reason = emu.unavailable_reason()
    if reason is not None:
        pytest.fail(f"the CPU emulator cannot run here: {reason}")


def kernel(file: str, name: str):
    return emu.load_module(FIXTURES / file).get_function(name)


def barrier_lines(path: Path) -> list[int]:
    """1-based line numbers of the __syncthreads() calls in a source."""
    lines = path.read_text().splitlines()
    return [i + 1 for i, line in enumerate(lines) if re.search(r"^\s*__syncthreads\(\)", line)]


def ints(shape, high=8, seed=0):
    """float32 small integers: sums of a few thousand of them are exact in float32."""
    return np.random.default_rng(seed).integers(-high, high, size=shape).astype(np.float32)


# ---- CUDA semantics: shared memory and barriers --------------------------------------------------


@pytest.mark.parametrize("H, W", [(37, 50), (16, 16), (1, 33)])
def test_tiled_transpose_matches_numpy(H, W):
    x = ints((H, W))
    out = np.full((W, H), -1.0, dtype=np.float32)
    grid = (-(-W // TILE), -(-H // TILE))
    kernel("shared_memory.cu", "transpose")(grid, (TILE, TILE), (x, out, np.int32(H), np.int32(W)))
    np.testing.assert_array_equal(out, x.T)


@pytest.mark.parametrize("n", [1, 128, 1000])
def test_block_reduction_matches_numpy(n):
    x = ints((n,), high=100)
    blocks = -(-n // BLOCK)
    out = np.full(blocks, np.nan, dtype=np.float32)
    kernel("shared_memory.cu", "block_sum")((blocks,), (BLOCK,), (x, out, np.int64(n)))
    padded = np.zeros(blocks * BLOCK, dtype=np.float32)
    padded[:n] = x
    np.testing.assert_array_equal(out, padded.reshape(blocks, BLOCK).sum(axis=1))


def test_shared_memory_read_before_write_is_nan():
    out = np.zeros(3 * BLOCK, dtype=np.float32)
    kernel("shared_memory.cu", "read_unwritten")((3,), (BLOCK,), (out,))
    assert np.isnan(out).all()


def test_shared_memory_is_poisoned_again_for_every_block():
    # Block 0 writes its slots; if later blocks on the same OS thread saw them, slot reads
    # before the write in those blocks would show block 0's values instead of NaN.
    shift = kernel("shared_memory.cu", "shift_left")
    read = kernel("shared_memory.cu", "read_unwritten")
    x = ints((BLOCK,))
    shift((1,), (BLOCK,), (x, np.zeros(BLOCK, np.float32), np.int32(1)))
    out = np.zeros(4 * BLOCK, dtype=np.float32)
    read((4,), (BLOCK,), (out,))
    assert np.isnan(out).all()


def _shift_reference(x, name):
    blocks = x.reshape(-1, BLOCK)
    if name == "shift_left":
        return np.concatenate([np.append(b[1:], 0) for b in blocks])
    return np.concatenate([np.insert(b[:-1], 0, 0) for b in blocks])


@pytest.mark.parametrize("name", ["shift_left", "shift_right"])
def test_neighbour_read_on_either_side_with_barrier_matches_reference(name):
    x = ints((2 * BLOCK,))
    out = np.zeros_like(x)
    kernel("shared_memory.cu", name)((2,), (BLOCK,), (x, out, np.int32(1)))
    np.testing.assert_array_equal(out, _shift_reference(x, name))


@pytest.mark.parametrize("name", ["shift_left", "shift_right"])
def test_missing_barrier_before_neighbour_read_is_caught(name):
    # Threads of a block run one after another up to the next barrier, in ascending order in
    # some passes and descending in others, so a reader of either neighbour's slot runs before
    # that neighbour's write in at least one of the two blocks and sees the NaN poison.
    x = ints((2 * BLOCK,))
    out = np.zeros_like(x)
    kernel("shared_memory.cu", name)((2,), (BLOCK,), (x, out, np.int32(0)))
    assert not np.array_equal(out, _shift_reference(x, name))
    assert np.isnan(out).any()


def test_barrier_skipped_by_returned_threads_raises():
    lines = barrier_lines(FIXTURES / "faults.cu")
    with pytest.raises(RuntimeError) as info:
        kernel("faults.cu", "early_return")((2,), (64,), (np.zeros(128, np.float32), np.int32(100)))
    message = str(info.value)
    assert "early_return" in message
    assert f"faults.cu:{lines[0]}" in message
    assert "36 of 64 threads" in message


def test_threads_at_different_barriers_raise():
    lines = barrier_lines(FIXTURES / "faults.cu")
    with pytest.raises(RuntimeError) as info:
        kernel("faults.cu", "split_barrier")((1,), (64,), (np.zeros(64, np.float32),))
    message = str(info.value)
    assert "split_barrier" in message
    assert f"faults.cu:{lines[1]}" in message and f"faults.cu:{lines[2]}" in message


def test_barrier_the_parser_cannot_see_raises():
    assert not emu.load_module(FIXTURES / "faults.cu").kernels["hidden_barrier"].uses_barrier
    with pytest.raises(RuntimeError, match=r"hidden_barrier.*__syncthreads\(\) at .*faults\.cu"):
        kernel("faults.cu", "hidden_barrier")((1,), (32,), (np.zeros(32, np.float32),))


def test_module_recovers_after_a_fault():
    with pytest.raises(RuntimeError):
        kernel("faults.cu", "split_barrier")((1,), (64,), (np.zeros(64, np.float32),))
    x = ints((TILE, TILE))
    out = np.zeros_like(x)
    kernel("shared_memory.cu", "transpose")(
        (1, 1), (TILE, TILE), (x, out, np.int32(16), np.int32(16))
    )
    np.testing.assert_array_equal(out, x.T)


# ---- geometry and atomics ---------------------------------------------------------------------


@pytest.mark.parametrize("grid, block", [((3, 2, 2), (4, 3, 2)), ((5,), (7,)), ((1, 4), (2, 1, 3))])
def test_grid_and_block_coordinates(grid, block):
    g = tuple(grid) + (1,) * (3 - len(grid))
    b = tuple(block) + (1,) * (3 - len(block))
    total = int(np.prod(g) * np.prod(b))
    out = np.full((total, 6), -1, dtype=np.int32)
    kernel("indexing.cu", "coords")(grid, block, (out,))
    # flat = block_id * threads_per_block + thread_id, x fastest in both
    bz, by, bx, tz, ty, tx = np.meshgrid(
        *(np.arange(n) for n in (g[2], g[1], g[0], b[2], b[1], b[0])), indexing="ij"
    )
    ref = np.stack([bx, by, bz, tx, ty, tz], axis=-1).reshape(total, 6)
    np.testing.assert_array_equal(out, ref)


def test_atomics_are_atomic_across_os_threads(monkeypatch):
    monkeypatch.setenv("GPUNN_EMU_THREADS", "2")
    n, bins = 100_000, 3
    values = np.random.default_rng(1).integers(0, 1000, size=n).astype(np.int64)
    counts = np.zeros(bins, dtype=np.int64)
    kernel("indexing.cu", "histogram")(
        (-(-n // 256),), (256,), (values, counts, np.int32(n), np.int32(bins))
    )
    np.testing.assert_array_equal(counts, np.bincount(values % bins, minlength=bins))


def test_float_atomics(monkeypatch):
    monkeypatch.setenv("GPUNN_EMU_THREADS", "2")
    n = 50_000
    x = ints((n,), high=50, seed=3)
    best = np.array([-np.inf], dtype=np.float32)
    total = np.zeros(1, dtype=np.float32)
    kernel("indexing.cu", "float_max")((-(-n // 128),), (128,), (x, best, total, np.int32(n)))
    assert best[0] == x.max()
    assert total[0] == x.astype(np.float64).sum()


def test_scalar_arguments_reach_the_kernel():
    x = ints((300,))
    y = np.zeros_like(x)
    args = (x, y, np.float32(2.5), np.float32(-1.0), np.int32(299))
    kernel("indexing.cu", "scale")((3,), (128,), args)
    np.testing.assert_array_equal(y[:299], 2.5 * x[:299] - 1.0)
    assert y[299] == 0.0


@pytest.mark.parametrize(
    "grid, block, error",
    [
        ((0,), (32,), ValueError),
        ((1,), (2048,), ValueError),
        ((1,), (32, 32, 2), ValueError),
        ((1,), (1, 1, 65), ValueError),
        ((1, 1, 1, 1), (32,), TypeError),
        ((1.0,), (32,), TypeError),
    ],
)
def test_bad_launch_geometry(grid, block, error):
    out = np.zeros(64, np.float32)
    with pytest.raises(error, match="read_unwritten"):
        kernel("shared_memory.cu", "read_unwritten")(grid, block, (out,))


# ---- argument checks ------------------------------------------------------------------------------


def scale_args():
    x = np.zeros(8, np.float32)
    return [x, np.zeros_like(x), np.float32(1), np.float32(0), np.int32(8)]


@pytest.mark.parametrize(
    "position, value, pattern",
    [
        (4, 8, r"argument 4 'n' \(int\): expected numpy.int32"),
        (4, np.int64(8), r"argument 4 'n' \(int\): expected numpy.int32.*numpy.int64"),
        (2, 1.0, r"argument 2 'a' \(float\): expected numpy.float32"),
        (0, np.zeros(8, np.float64), r"argument 0 'x' \(const float\*\): expected dtype float32"),
        (1, np.zeros(16, np.float32)[::2], r"argument 1 'y' \(float\*\).*C-contiguous"),
        (0, [0.0] * 8, r"argument 0 'x' \(const float\*\): expected a numpy.ndarray"),
        (0, np.float32(0), r"argument 0 'x'.*expected a numpy.ndarray"),
        (2, np.zeros(1, np.float32), r"argument 2 'a'.*got numpy.ndarray"),
    ],
)
def test_argument_type_errors_name_kernel_and_argument(position, value, pattern):
    args = scale_args()
    args[position] = value
    with pytest.raises(TypeError, match=r"kernel 'scale' " + pattern):
        kernel("indexing.cu", "scale")((1,), (8,), tuple(args))


def test_argument_count_and_read_only_output():
    fn = kernel("indexing.cu", "scale")
    with pytest.raises(
        TypeError, match=r"kernel 'scale' takes 5 arguments \(x, y, a, b, n\), got 4"
    ):
        fn((1,), (8,), tuple(scale_args()[:4]))
    args = scale_args()
    args[1].flags.writeable = False
    with pytest.raises(TypeError, match="argument 1 'y'.*read-only"):
        fn((1,), (8,), tuple(args))


def test_check_args_duck_types_foreign_arrays():
    """The CUDA loader passes cupy.ndarray as the array type; any class with dtype/flags works."""

    class Flags:
        c_contiguous = True

    class DeviceArray:
        def __init__(self, dtype):
            self.dtype = np.dtype(dtype)
            self.flags = Flags()
            self.shape = (4,)

    params = parse_kernels('extern "C" __global__ void k(const float* x, int n) {}')["k"].params
    check_args("k", params, (DeviceArray(np.float32), np.int32(4)), (DeviceArray,))
    with pytest.raises(TypeError, match=r"kernel 'k' argument 0 'x'.*float64"):
        check_args("k", params, (DeviceArray(np.float64), np.int32(4)), (DeviceArray,))
    with pytest.raises(TypeError, match=r"kernel 'k' argument 0 'x'.*DeviceArray"):
        check_args("k", params, (np.zeros(4, np.float32), np.int32(4)), (DeviceArray,))


def test_parse_kernels():
    source = """
    // extern "C" __global__ void commented_out(int a) {}
    #include "common.cuh"
    __device__ __forceinline__ void helper() { __syncthreads(); }
    template <int N> __device__ void wrapper() { helper(); }
    extern "C" __global__ void __launch_bounds__(256)
        first(const float* __restrict__ x, float* __restrict__ y, long long n, float a,
              const long long* idx, unsigned int u) { wrapper<4>(); }
    extern "C" __global__ void second(void) { int a = max(1, 2); }
    """
    kernels = parse_kernels(source)
    assert list(kernels) == ["first", "second"]
    first = kernels["first"]
    assert first.uses_barrier and not kernels["second"].uses_barrier
    described = [(p.name, p.ctype, p.is_pointer, p.is_const, p.dtype) for p in first.params]
    assert described == [
        ("x", "const float*", True, True, np.dtype(np.float32)),
        ("y", "float*", True, False, np.dtype(np.float32)),
        ("n", "long long", False, False, np.dtype(np.int64)),
        ("a", "float", False, False, np.dtype(np.float32)),
        ("idx", "const long long*", True, True, np.dtype(np.int64)),
        ("u", "unsigned int", False, False, np.dtype(np.uint32)),
    ]
    assert kernels["second"].params == ()


# ---- building and caching -------------------------------------------------------------------------


def test_compile_error_names_the_file_and_shows_the_log(tmp_path):
    bad = tmp_path / "broken_kernel.cu"
    bad.write_text('extern "C" __global__ void k(float* y) { y[0] = undeclared_name; }\n')
    with pytest.raises(emu.EmuCompileError) as info:
        emu.load_module(bad)
    message = str(info.value)
    assert str(bad) in message
    assert "undeclared_name" in message and "error" in message
    assert isinstance(info.value, RuntimeError)


def test_unknown_kernel_name():
    with pytest.raises(ValueError, match="no __global__ function 'nope'.*transpose"):
        emu.load_module(FIXTURES / "shared_memory.cu").get_function("nope")


def test_module_cache_follows_source_changes(tmp_path):
    for name in ("indexing.cu", "fixture_common.cuh"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    copy = tmp_path / "indexing.cu"
    first = emu.load_module(copy)
    assert emu.load_module(copy) is first
    x = ints((8,))
    y = np.zeros_like(x)
    args = (x, y, np.float32(2), np.float32(1), np.int32(8))
    first.get_function("scale")((1,), (8,), args)
    np.testing.assert_array_equal(y, 2 * x + 1)

    text = copy.read_text().replace("y[i] = fmaf(a, x[i], b);", "y[i] = fmaf(a, x[i], b) + 100.0f;")
    copy.write_text(text)
    second = emu.load_module(copy)
    assert second is not first
    second.get_function("scale")((1,), (8,), args)
    np.testing.assert_array_equal(y, 2 * x + 101)


def test_loader_follows_kernel_source_changes(tmp_path, monkeypatch):
    """gpunn._loader.module (the path every op takes) recompiles an edited kernel file in the
    same process instead of keeping the first build."""
    import gpunn
    from gpunn import _loader
    from gpunn import functional as F

    for path in _loader.KERNELS_DIR.iterdir():
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(_loader, "KERNELS_DIR", tmp_path)
    x, h0 = ints((1, 2, 3), high=2) / 8, ints((2, 4), high=2, seed=1) / 8
    w_ih, w_hh = ints((4, 3), high=2, seed=2) / 8, ints((4, 4), high=2, seed=3) / 8
    with gpunn.use_backend("emu"):
        y, _ = F.rnn_tanh(x, h0, w_ih, w_hh)
        rnn = tmp_path / "rnn.cu"
        text = rnn.read_text()
        assert text.count("h[idx] = safe_tanhf(a);") == 1
        rnn.write_text(text.replace("h[idx] = safe_tanhf(a);", "h[idx] = safe_tanhf(a) + 100.0f;"))
        edited, _ = F.rnn_tanh(x, h0, w_ih, w_hh)
    # Both sides add 100 in float32 (an ulp there is 2^-17, 7.6e-8 relative): rtol 1e-6 allows
    # a few ulps of rounding, while any other change to the kernel's output fails.
    np.testing.assert_allclose(edited, y + 100.0, rtol=1e-6)
