"""Helpers for the reference tests: central-difference gradients and seeded inputs."""

from __future__ import annotations

import zlib

import numpy as np

FD_EPS = 1e-6
# Central differences in float64 with eps 1e-6: truncation ~eps^2, rounding ~1e-16/eps, so
# agreement to 1e-7 norm-wise leaves a wide margin while catching any wrong term.
FD_TOL = 1e-7


def numerical_grad(loss, arr, eps=FD_EPS):
    """d loss() / d arr by central differences, perturbing ``arr`` in place and restoring it."""
    grad = np.zeros_like(arr)
    flat = arr.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        plus = loss()
        flat[i] = orig - eps
        minus = loss()
        flat[i] = orig
        grad.reshape(-1)[i] = (plus - minus) / (2 * eps)
    return grad


def rng_for(*key):
    """A generator seeded from a test's parameters, so every case has its own fixed data."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))
