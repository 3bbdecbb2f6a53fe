"""Shape arithmetic shared by the reference, the kernel wrappers, the layers and the tests.

This is the one place where output sizes are computed.
"""

from __future__ import annotations


def pair(value, name: str) -> tuple[int, int]:
    """Normalise an int or an (h, w) pair to a tuple of two Python ints."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int) or (hasattr(value, "__index__") and not hasattr(value, "__len__")):
        v = int(value)
        return (v, v)
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(items) != 2 or any(isinstance(v, bool) or not hasattr(v, "__index__") for v in items):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return (int(items[0]), int(items[1]))


def conv_out_size(size: int, k: int, stride: int, pad_total: int, dilation: int) -> int:
    """OH = floor((H + pad_total - dil*(R - 1) - 1) / stride) + 1.

    ``pad_total`` is the padding on both sides together (2 * pad for symmetric padding).
    """
    return (size + pad_total - dilation * (k - 1) - 1) // stride + 1


def pool_out_size(size: int, k: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """Max-pooling output size (PyTorch's rule).

    Floor mode is ``conv_out_size``. Ceil mode rounds up, but drops a last window that would
    start inside the right/bottom padding: ``(OH - 1) * stride >= H + pad``.
    """
    if not ceil_mode:
        return conv_out_size(size, k, stride, 2 * pad, dilation)
    span = size + 2 * pad - dilation * (k - 1) - 1
    out = ceil_div(span, stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def conv_padding(padding, R: int, S: int, stride: tuple[int, int], dilation: tuple[int, int]):
    """Resolve conv ``padding`` (int, pair, "valid", "same") to (top, bottom, left, right).

    "same" needs stride 1. With an even effective kernel ``dil*(R-1)`` the extra row and
    column go at the bottom and right, as in PyTorch.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            total_h = dilation[0] * (R - 1)
            total_w = dilation[1] * (S - 1)
            top, left = total_h // 2, total_w // 2
            return (top, total_h - top, left, total_w - left)
        raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return (ph, ph, pw, pw)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def empty_pool_window(size: int, k: int, stride: int, pad: int, dilation: int, out: int):
    """The first output position along one axis whose pooling window holds no input element
    (every tap ``o*stride - pad + j*dilation`` falls in the padding), or None.

    ``pad <= k // 2`` rules this out without dilation; with dilation the taps can step over
    the whole input (H=2, k=2, pad=1, dil=3: taps at -1 and 2).
    """
    for o in range(out):
        start = o * stride - pad
        j0 = 0 if start >= 0 else ceil_div(-start, dilation)  # the first tap at or after 0
        if j0 < k and start + j0 * dilation < size:
            continue
        return o
    return None
