"""The gpunn command line through click's CliRunner (and once as ``python cli.py``)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TOL

from gpunn import bench
from gpunn._backend import gpu_unavailable_reason
from gpunn.cli import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", [[], ["info"], ["check"], ["train"], ["bench"]])
def test_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_info():
    result = invoke("info", "--json")
    assert result.exit_code == 0, result.output
    data = last_json(result)
    assert set(data["backends"]) == {"numpy", "emu", "cuda"}
    assert data["backends"]["numpy"] == "available"
    assert "available" in data["device"]
    assert {"gpunn", "python", "numpy", "cupy", "torch", "click"} <= set(data["versions"])
    text = invoke("info")
    assert text.exit_code == 0 and "backends:" in text.output


@pytest.mark.parametrize("backend", ["numpy", "emu"])
def test_check(backend):
    result = invoke("check", "--backend", backend, "--json")
    assert result.exit_code == 0, result.output
    assert f"backend: {backend}" in result.stdout
    data = last_json(result)
    assert data["failed"] == 0 and len(data["rows"]) > 20
    if backend == "emu":
        # Every kernel of kernels/*.cu ran against the reference, except the index probe that
        # only tests/test_kernels_conv.py launches.
        unchecked = {k["kernel"] for k in data["kernels"] if not k["checked"]}
        assert unchecked == {"conv2d_index_probe"}
        assert all(k["passed"] for k in data["kernels"])
        assert len(data["kernels"]) >= 13


def test_check_fails_on_error(monkeypatch):
    def wrong(names, outs, refs):
        return {n: (1.0, 1.0) for n in names}

    monkeypatch.setattr(bench, "output_errors", wrong)
    result = invoke("check", "--backend", "numpy")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "PASS" not in result.stdout


@pytest.mark.parametrize("model", ["cnn", "lstm"])
def test_train_json_last_line(model):
    result = invoke("train", model, "--epochs", "1", "--train-size", "256", "--json")
    assert result.exit_code == 0, result.output
    assert "epoch   1" in result.stdout
    data = last_json(result)
    for key in ("test_accuracy", "train_loss", "epochs", "seconds", "device"):
        assert key in data
    assert data["epochs"] == 1 and data["device"] == "cpu" and data["train_examples"] == 256
    assert 0.0 <= data["test_accuracy"] <= 1.0


def test_train_bad_options():
    assert invoke("train", "mlp").exit_code == 2
    result = invoke("train", "cnn", "--epochs", "0")
    assert result.exit_code == 2 and "--epochs" in result.output


@pytest.mark.skipif(gpu_unavailable_reason() is None, reason="a GPU is usable here")
def test_cuda_without_gpu_is_a_usage_error():
    result = invoke("train", "cnn", "--device", "cuda")
    assert result.exit_code == 2 and "--device" in result.output
    result = invoke("bench", "conv2d", "--backend", "cuda")
    assert result.exit_code == 2 and "--backend" in result.output


def test_bench_json():
    result = invoke("bench", "conv2d", "--preset", "digits-conv1", "--repeat", "2",
                    "--warmup", "0", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = last_json(result)
    assert data["header"]["backend"] == "numpy" and data["header"]["repeat"] == 2
    (row,) = data["rows"]
    assert row["preset"] == "digits-conv1"
    for key in ("median_s", "min_s", "max_s", "gflops", "gbs", "roofline_fraction",
                "ratio_to_peer", "rel_err", "peer_rel_err"):  # fmt: skip
        assert key in row
    assert row["ratio_to_peer"] > 0 and row["rel_err"] < TOL[np.dtype(np.float32)]


def test_bench_table_and_csv_custom_shape():
    args = ["bench", "max_pool2d", "--shape", "2,3,9,8", "--kernel", "3", "--stride", "2",
            "--padding", "1", "--repeat", "1", "--warmup", "0", "--peer", "none"]  # fmt: skip
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "repeat: 1" in result.stdout and "peak_gbs" in result.stdout
    assert "custom" in result.stdout and "N2 C3 9x8 k3x3 s2 p1" in result.stdout
    csv_result = invoke(*args, "--csv")
    assert csv_result.exit_code == 0, csv_result.output
    lines = csv_result.stdout.strip().splitlines()
    assert lines[0] == ",".join(bench.CSV_COLUMNS) and len(lines) == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["conv2d", "--shape", "2,3,8", "--kernel", "4,3,3"], "--shape"),
        (["conv2d", "--shape", "2,3,8,8", "--kernel", "4,9,9"], "--kernel"),
        (["max_pool2d", "--shape", "1,1,8,8", "--kernel", "2", "--padding", "2"], "--padding"),
        (["all", "--shape", "1,1,8,8"], "not 'all'"),
        (["conv2d", "--preset", "nope"], "--preset"),
        (["conv2d", "--json", "--csv"], "--json"),
        (["lstm", "--shape", "3,2,4"], "--hidden"),
        (["conv2d", "--repeat", "0"], "--repeat"),
    ],
)
def test_bench_bad_options(args, needle):
    result = invoke("bench", *args)
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_cli_shim_from_checkout():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "cli.py", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("info", "check", "train", "bench"):
        assert command in proc.stdout
