"""The timing harness's arithmetic and output formats.

Expected FLOP and byte counts are worked out by hand in each test from the definitions in
gpunn/bench.py's "Work counts" block, not computed with the code under test.
"""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from conftest import TOL, require_torch

from gpunn import bench

# The harness compares float32 outputs against the float64 reference: conftest's float32 bound.
F32_TOL = TOL[np.dtype(np.float32)]


def test_conv2d_work_by_hand():
    # N=2, C=3, 5x4 input, K=4, 3x2 filter, stride 1, padding 1:
    # OH = 5 + 2 - 3 + 1 = 5, OW = 4 + 2 - 2 + 1 = 5.
    # FLOPs = 2 * N*K*OH*OW * C*R*S = 2 * (2*4*5*5) * (3*3*2) = 2 * 200 * 18 = 7200.
    # elements: x 2*3*5*4 = 120, weight 4*3*3*2 = 72, bias 4, y 2*4*5*5 = 200 -> 396.
    w = bench.conv2d_work(2, 3, 5, 4, 4, 3, 2, 1, 1, 4)
    assert w == bench.Work(7200, 396 * 4)
    assert bench.conv2d_work(2, 3, 5, 4, 4, 3, 2, 1, 1, 8).bytes == 396 * 8


def test_conv2d_work_stride():
    # 7x7 input, 3x3 filter, stride 2, no padding: OH = OW = (7 - 3) // 2 + 1 = 3.
    # FLOPs = 2 * (1*1*3*3) * (1*3*3) = 162; elements 49 + 9 + 1 + 9 = 68.
    assert bench.conv2d_work(1, 1, 7, 7, 1, 3, 3, 2, 0, 4) == bench.Work(162, 68 * 4)


def test_conv2d_backward_work_by_hand():
    # Same shape as test_conv2d_work_by_hand: grad_x and grad_weight 7200 FLOPs each, grad_bias
    # N*K*OH*OW = 200 adds -> 14600. Reads grad_y 200, x 120, weight 72; writes grad_x 120,
    # grad_weight 72, grad_bias 4 -> 588 elements.
    assert bench.conv2d_backward_work(2, 3, 5, 4, 4, 3, 2, 1, 1, 4) == bench.Work(14600, 588 * 4)


def test_max_pool2d_work_by_hand():
    # N=1, C=2, 5x5, 2x2 window, stride 2: OH = OW = 2, 8 outputs. Read x 50 floats, write
    # y 8 floats and 8 int64 indices: 50*4 + 8*4 + 8*8 = 296 bytes, no FLOPs.
    assert bench.max_pool2d_work(1, 2, 5, 5, 2, 2, 2, 0, 4) == bench.Work(0, 296)
    # Backward: 8 adds; read grad_y (8*4) and indices (8*8), write grad_x (50*4).
    assert bench.max_pool2d_backward_work(1, 2, 5, 5, 2, 2, 2, 0, 4) == bench.Work(8, 296)


def test_stem_pool_output_size():
    # ResNet stem pool: 112x112, k3 s2 p1 -> (112 + 2 - 3) // 2 + 1 = 56.
    w = bench.max_pool2d_work(1, 1, 112, 112, 3, 3, 2, 1, 4)
    assert w.bytes == 112 * 112 * 4 + 56 * 56 * (4 + 8)


def test_lstm_cell_work_by_hand():
    # N=2, HID=3: 9 FLOPs per unit * 6 = 54; read gates 2*12 and c_prev 6, write h, c 6 each.
    assert bench.lstm_cell_work(2, 3, 4) == bench.Work(54, (24 + 6 + 6 + 6) * 4)


def test_lstm_work_by_hand():
    # T=2, N=1, I=2, HID=1 (G = 4 gate rows). Per step: x W_ih^T 2*1*4*2 = 16, h W_hh^T
    # 2*1*4*1 = 8, biases 2*1*4 = 8 -> 32; two steps 64; cells 2*1*1*9 = 18 -> 82.
    # Inputs: x 4, h0 1, c0 1, W_ih 8, W_hh 4, biases 8 = 26; outputs y 2, h_n 1, c_n 1 = 4.
    assert bench.lstm_work(2, 1, 2, 1, 4) == bench.Work(82, 30 * 4)


def test_lstm_train_work_by_hand():
    # Backward per step: 2 * (16 + 8) GEMM FLOPs, 8 for the biases, 23 for the cell = 79;
    # two steps 158; plus the forward's 82 -> 240. Bytes: forward 120 + grad_y (2) and a
    # gradient per input element (26) at 4 bytes = 120 + 112.
    assert bench.lstm_train_work(2, 1, 2, 1, 4) == bench.Work(240, 232)


def test_rnn_work_by_hand():
    # T=2, N=1, I=2, HID=3 (G = 3). Per step 2*1*3*2 = 12 + 2*1*3*3 = 18 + 2*3 = 6 -> 36;
    # two steps 72; tanh 2*1*3 = 6 -> 78. Inputs x 4, h0 3, W_ih 6, W_hh 9, biases 6 = 28;
    # outputs y 6, h_n 3 = 9.
    assert bench.rnn_work(2, 1, 2, 3, 4) == bench.Work(78, 37 * 4)
    # Backward per step: 2 * (12 + 18) + 6 + 3*3 = 75; two steps 150 -> 228.
    # Bytes: 148 + (grad_y 6 + 28) * 4 = 284.
    assert bench.rnn_train_work(2, 1, 2, 3, 4) == bench.Work(228, 284)


def test_summarize():
    t = bench.summarize([3.0, 1.0, 2.0, 5.0])
    assert (t.median, t.min, t.max) == (2.5, 1.0, 5.0)
    assert bench.summarize([4.0]).median == 4.0
    with pytest.raises(ValueError):
        bench.summarize([])


def test_roofline():
    # 20 GB at 100 GB/s = 0.2 s; 100 GFLOP at 1000 GFLOP/s = 0.1 s: memory-bound, floor 0.2 s.
    work = bench.Work(flops=100e9, bytes=20e9)
    assert bench.roofline_floor(work, 1e12, 1e11) == pytest.approx(0.2)
    assert bench.roofline_fraction(work, 0.4, 1e12, 1e11) == pytest.approx(0.5)
    # Compute-bound: 1000 GFLOP at 1000 GFLOP/s = 1 s.
    assert bench.roofline_fraction(bench.Work(1e12, 1e9), 2.0, 1e12, 1e11) == pytest.approx(0.5)


def test_rel_err_and_max_abs_err():
    ref = np.array([3.0, 4.0])  # norm 5
    out = np.array([3.0, 4.5])
    assert bench.rel_err(out, ref) == pytest.approx(0.1)
    assert bench.max_abs_err(out, ref) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        bench.rel_err(np.zeros(3), np.zeros(2))


def test_datasheet_lookup():
    assert bench.datasheet_gflops("NVIDIA H200") == 67_000.0
    assert bench.datasheet_gflops("NVIDIA H100 PCIe") == 51_200.0
    assert bench.datasheet_gflops("Some GPU") is None


def test_preset_cases():
    names = {c.preset for c in bench.preset_cases("conv2d", None, "numpy")}
    assert {"digits-conv1", "lenet-conv1", "resnet50-conv3x3"} <= names
    emu = bench.preset_cases("all", None, "emu")
    assert emu and all(c.preset in bench.TINY_PRESETS for c in emu)
    assert {c.op for c in emu} == set(bench.OPS)
    one = bench.preset_cases("all", "resnet50-stem-pool", "numpy")
    assert [c.op for c in one] == ["max_pool2d", "max_pool2d_backward"]
    with pytest.raises(ValueError, match="does not apply"):
        bench.preset_cases("conv2d", "lstm512", "numpy")


def _row(**over):
    row = {
        "op": "conv2d",
        "preset": "digits-conv1",
        "shape": "N64 C1 8x8 K16 3x3 s1 p1",
        "median_s": 2.5e-4,
        "min_s": 2.0e-4,
        "max_s": 3.0e-3,
        "flops": 1000,
        "bytes": 400,
        "gflops": 4.0,
        "gbs": 1.6,
        "roofline_fraction": 0.08,
        "rel_err": 5e-8,
        "peer_median_s": 1.0e-4,
        "peer_min_s": 0.9e-4,
        "peer_max_s": 1.2e-4,
        "ratio_to_peer": 2.5,
        "peer_rel_err": 6e-8,
    }
    row.update(over)
    return row


def test_format_table_aligned():
    rows = [
        _row(),
        _row(op="max_pool2d_backward", preset="resnet50-stem-pool", median_s=1.5,
             flops=0, peer_median_s=None, ratio_to_peer=None, peer_rel_err=None),
    ]  # fmt: skip
    lines = bench.format_table(rows).splitlines()
    assert len(lines) == 4
    assert len({len(line) for line in lines}) == 1  # every line as wide as the header
    assert set(lines[1]) <= {"-", " "}
    # The right edge of the "median" title lines up with the right edge of each value.
    edge = lines[0].index("median") + len("median")
    assert lines[2][:edge].endswith("250 us")
    assert lines[3][:edge].endswith("1.5 s")
    assert "2.50" in lines[2] and lines[3].split()[-1] == "-"


def test_format_seconds():
    assert bench.format_seconds(1.5) == "1.5 s"
    assert bench.format_seconds(2.5e-3) == "2.5 ms"
    assert bench.format_seconds(7e-6) == "7 us"
    assert bench.format_seconds(None) == "-"


def test_json_and_csv():
    header = {"backend": "numpy", "peer": "torch"}
    data = json.loads(bench.to_json(header, [_row()]))
    assert data["header"] == header
    assert data["rows"][0]["ratio_to_peer"] == 2.5
    text = bench.to_csv([_row(), _row(ratio_to_peer=None)])
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == bench.CSV_COLUMNS
    assert "ratio_to_peer" in rows[0]
    col = rows[0].index("ratio_to_peer")
    assert rows[1][col] == "2.5" and rows[2][col] == ""


@pytest.fixture(scope="module")
def harness():
    require_torch()  # skips without torch, fails under CI=true
    return bench.Harness(bench.Settings("numpy", "torch", warmup=0, repeat=3, seed=0))


def test_harness_measures_against_peer(harness):
    case = bench.Case("conv2d", "custom", bench.ConvShape(2, 3, 9, 7, 4, 3, 3, 2, 1))
    row = harness.measure(case)
    assert row["min_s"] <= row["median_s"] <= row["max_s"]
    assert row["ratio_to_peer"] == pytest.approx(row["median_s"] / row["peer_median_s"])
    assert row["flops"] == case.work().flops
    assert row["gflops"] == pytest.approx(row["flops"] / row["median_s"] / 1e9)
    assert row["rel_err"] < F32_TOL and row["peer_rel_err"] < F32_TOL
    header = harness.header()
    for key in ("device", "dtype", "seed", "repeat", "warmup", "peak_gflops", "peak_gbs", "peer"):
        assert key in header


@pytest.mark.parametrize("op", sorted(bench.OPS))
def test_every_op_matches_reference_and_peer(harness, op):
    small = {
        "conv": bench.ConvShape(2, 3, 6, 5, 4, 3, 3, 1, 1),
        "pool": bench.PoolShape(2, 3, 7, 6, 3, 3, 2, 1),
        "cell": bench.CellShape(3, 5),
        "seq": bench.SeqShape(3, 2, 4, 5),
    }[bench.OPS[op].family]
    row = harness.measure(bench.Case(op, "custom", small))
    assert row["rel_err"] < F32_TOL
    assert row["peer_rel_err"] < F32_TOL


def test_check_rows_numpy():
    rows = bench.check_rows("numpy")
    assert rows and all(r["passed"] for r in rows)
    ops = {r["op"] for r in rows}
    assert {"conv2d_backward", "max_pool2d", "lstm_cell_backward (T=1)", "rnn_backward"} <= ops
    assert {r["output"] for r in rows if r["op"] == "max_pool2d"} == {"y", "indices"}
