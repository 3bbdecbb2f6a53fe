"""Host wrappers of the CUDA kernels, generic in ``xp`` (numpy: emulator, cupy: GPU).

One facade over the per-family wrapper modules, with the names and signatures fixed in
CONTRIBUTING.md; ``module(xp, name)`` loads ``kernels/<name>.cu`` (see ``gpunn._loader``).
"""

from __future__ import annotations

from gpunn._kernels_conv import conv2d_backward, conv2d_forward
from gpunn._kernels_pool import max_pool2d_backward, max_pool2d_forward
from gpunn._kernels_rnn import (
    lstm_backward,
    lstm_cell_forward,
    lstm_forward,
    rnn_tanh_backward,
    rnn_tanh_forward,
)
from gpunn._loader import module

__all__ = [
    "conv2d_backward",
    "conv2d_forward",
    "lstm_backward",
    "lstm_cell_forward",
    "lstm_forward",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "module",
    "rnn_tanh_backward",
    "rnn_tanh_forward",
]
