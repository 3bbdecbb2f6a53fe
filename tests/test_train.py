"""Digits data, models and the training loop behind ``gpunn train``."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import IN_CI

from gpunn import train

# scikit-learn holds the data; it is in the test extra, so under CI=true its absence fails.
if not IN_CI:
    pytest.importorskip("sklearn")


def test_split_is_fixed_and_disjoint():
    a = train.load_digits_split()
    b = train.load_digits_split()
    assert a.x_train.shape == (1438, 64) and a.x_test.shape == (359, 64)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0 and a.x_train.max() == 1.0
    np.testing.assert_array_equal(a.x_test, b.x_test)
    train_rows = {r.tobytes() for r in a.x_train}
    assert sum(r.tobytes() in train_rows for r in a.x_test) <= 5  # only duplicate scans
    small = train.load_digits_split(100)
    np.testing.assert_array_equal(small.x_train, a.x_train[:100])
    np.testing.assert_array_equal(small.x_test, a.x_test)
    with pytest.raises(ValueError, match="train_size"):
        train.load_digits_split(0)


def test_model_input_layouts():
    x = np.arange(2 * 64, dtype=np.float32).reshape(2, 64)
    img = train.model_input("cnn", x)
    assert img.shape == (2, 1, 8, 8) and img[1, 0, 3, 5] == x[1, 3 * 8 + 5]
    seq = train.model_input("lstm", x)
    assert seq.shape == (8, 2, 8)  # (T = rows, N, I = pixels per row)
    np.testing.assert_array_equal(seq[3, 1], x[1, 24:32])


def test_last_step():
    step = train.LastStep()
    y = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    np.testing.assert_array_equal(step((y, None)), y[2])
    g = np.ones((2, 4), np.float32)
    grad = step.backward(g)
    assert grad.shape == y.shape
    np.testing.assert_array_equal(grad[2], g)
    assert not grad[:2].any()


def test_fit_is_reproducible_and_reports():
    epochs = []
    a = train.fit("lstm", epochs=2, train_size=128, on_epoch=epochs.append)
    b = train.fit("lstm", epochs=2, train_size=128)
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert a["train_loss"] == b["train_loss"] and a["test_accuracy"] == b["test_accuracy"]
    assert a["epochs"] == 2 and a["device"] == "cpu" and a["seconds"] > 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"lr": 0.0}, "lr"),
     ({"device": "tpu"}, "device")],
)  # fmt: skip
def test_fit_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        train.fit("cnn", **kwargs)


@pytest.mark.parametrize(("model", "bar"), [("cnn", 0.97), ("lstm", 0.90)])
def test_default_run_reaches_accuracy_bar(model, bar):
    result = train.fit(model)
    assert result["test_accuracy"] >= bar


@pytest.mark.parametrize("model", ["cnn", "lstm"])
def test_examples_are_importable(model, capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / f"train_{model}.py"
    spec = importlib.util.spec_from_file_location(f"train_{model}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(epochs=1)
    assert result["model"] == model and result["epochs"] == 1
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.emu
def test_lstm_trained_through_emulated_kernels_reaches_accuracy_bar():
    # The whole training step through the CUDA C kernels (fused LSTM cell forward and backward
    # through time), run on the CPU emulator: the same bar as the NumPy reference.
    result = train.fit("lstm", device="emu")
    assert result["device"] == "emu"
    assert result["test_accuracy"] >= 0.90


@pytest.mark.emu
def test_cnn_step_on_emulated_kernels_tracks_the_reference():
    # Two epochs on 256 digits: the conv and pool kernels (forward and backward) and the NumPy
    # reference give the same training trajectory up to float32 rounding.
    ref = train.fit("cnn", epochs=2, train_size=256)
    emu = train.fit("cnn", epochs=2, train_size=256, device="emu")
    # rel 1e-4, not TOL's 1e-5: the two float32 runs differ by rounding at every step and
    # each SGD update carries the difference into the next step's weights.
    for r, e in zip(ref["history"], emu["history"]):
        assert e["train_loss"] == pytest.approx(r["train_loss"], rel=1e-4)
