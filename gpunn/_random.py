"""gpunn's seedable generator for parameter initialisation."""

from __future__ import annotations

import numpy

_DEFAULT_SEED = 0
_generator = numpy.random.default_rng(_DEFAULT_SEED)


def manual_seed(seed: int) -> None:
    """Make parameter initialisation reproducible: the same numbers every run."""
    global _generator
    if isinstance(seed, bool) or not hasattr(seed, "__index__"):
        raise TypeError(f"seed must be an int, got {seed!r}")
    _generator = numpy.random.default_rng(int(seed))


def generator() -> numpy.random.Generator:
    return _generator
