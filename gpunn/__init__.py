"""gpunn: hand-written CUDA C kernels for CNNs and RNNs, driven from Python through CuPy.

Public API: ``gpunn.functional``, ``gpunn.nn``, ``gpunn.optim`` and the helpers below.
"""

from __future__ import annotations

import importlib

from gpunn._backend import device_info, get_array_module, get_backend, use_backend
from gpunn._random import manual_seed

__version__ = "0.1.0"

__all__ = [
    "device_info",
    "functional",
    "get_array_module",
    "get_backend",
    "manual_seed",
    "nn",
    "optim",
    "use_backend",
]

_SUBMODULES = ("functional", "nn", "optim", "reference")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"gpunn.{name}")
    raise AttributeError(f"module 'gpunn' has no attribute {name!r}")
