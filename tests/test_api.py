"""Top-level helpers: backend selection, device_info, get_array_module, manual_seed."""

from __future__ import annotations

import numpy as np
import pytest

import gpunn
from gpunn._backend import gpu_unavailable_reason


def test_use_backend_nests_and_restores():
    from gpunn.emu import unavailable_reason

    if unavailable_reason() is not None:
        pytest.skip(f"the CPU emulator cannot run here: {unavailable_reason()}")
    assert gpunn.get_backend() == "numpy"
    with gpunn.use_backend("emu") as name:
        assert name == "emu" and gpunn.get_backend() == "emu"
        with gpunn.use_backend("numpy"):
            assert gpunn.get_backend() == "numpy"
        assert gpunn.get_backend() == "emu"
    assert gpunn.get_backend() == "numpy"


@pytest.mark.parametrize("name", ["cuda", "NumPy", "", None])
def test_unknown_backend_is_a_value_error(name):
    # Raised by the call itself, before any ``with`` block is entered.
    with pytest.raises(ValueError, match="backend must be one of"):
        gpunn.use_backend(name)
    assert gpunn.get_backend() == "numpy"


def test_backend_is_restored_after_an_error_inside():
    with pytest.raises(KeyError), gpunn.use_backend("numpy"):
        raise KeyError("inside")
    assert gpunn.get_backend() == "numpy"


def test_device_info_without_gpu():
    reason = gpu_unavailable_reason()
    if reason is None:
        pytest.skip("a GPU is usable here")
    assert gpunn.device_info() == {"available": False, "reason": reason}


@pytest.mark.gpu
def test_device_info_with_gpu():
    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no usable GPU: {reason}")
    info = gpunn.device_info()
    assert info["available"] is True
    for key in ("name", "compute_capability", "memory_bytes", "cupy_version"):
        assert key in info


def test_get_array_module():
    assert gpunn.get_array_module(np.zeros(2)) is np
    with pytest.raises(TypeError, match="expected a numpy.ndarray or cupy.ndarray, got list"):
        gpunn.get_array_module([1.0])


def test_manual_seed():
    from gpunn import nn

    gpunn.manual_seed(5)
    a = nn.Linear(4, 3).weight.data.copy()
    gpunn.manual_seed(5)
    np.testing.assert_array_equal(nn.Linear(4, 3).weight.data, a)
    gpunn.manual_seed(6)
    assert not np.array_equal(nn.Linear(4, 3).weight.data, a)
    with pytest.raises(TypeError, match="seed must be an int"):
        gpunn.manual_seed(1.5)
