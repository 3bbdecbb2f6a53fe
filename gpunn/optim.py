"""SGD and Adam with PyTorch's update rules, updating ``Parameter.data`` in place.

Each optimizer works on NumPy and CuPy parameters alike: its state lives on the array module
of the parameter it belongs to. A parameter whose ``.grad`` is None is skipped. ``step`` checks
every gradient before it updates anything, so an error leaves parameters and state unchanged.
"""

from __future__ import annotations

import math
import numbers

from gpunn._backend import get_array_module
from gpunn._checks import array_module, non_negative_number
from gpunn.nn import Parameter

__all__ = ["SGD", "Adam", "Optimizer"]


class Optimizer:
    """Holds the parameter list and per-parameter state; subclasses define ``_update``."""

    def __init__(self, params):
        if isinstance(params, Parameter):
            raise TypeError("params must be an iterable of Parameters, got a single Parameter")
        self.params = list(params)
        if not self.params:
            raise ValueError("params is empty: the optimizer got no parameters to update")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"params[{i}] must be a gpunn.nn.Parameter, got {p!r}")
        self.state: list[dict] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Set every ``.grad`` to None (PyTorch's default)."""
        for p in self.params:
            p.grad = None

    def _check_grads(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            xp = array_module(p.grad, f"params[{i}].grad")
            if xp is not get_array_module(p.data):
                raise TypeError(
                    f"params[{i}].grad is a {xp.__name__}.ndarray but its data is a "
                    f"{get_array_module(p.data).__name__}.ndarray"
                )
            if p.grad.shape != p.data.shape:
                raise ValueError(
                    f"params[{i}].grad has shape {p.grad.shape}, but its data has shape "
                    f"{p.data.shape}"
                )
            if p.grad.dtype != p.data.dtype:
                raise TypeError(
                    f"params[{i}].grad has dtype {p.grad.dtype}, but its data has dtype "
                    f"{p.data.dtype}"
                )

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        self._check_grads()
        for p, state in zip(self.params, self.state):
            if p.grad is not None:
                self._update(p, state)

    def _update(self, p: Parameter, state: dict) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and weight decay (PyTorch's rule).

    ``g = grad + weight_decay * p``; with momentum, ``buf = g`` on the first step and
    ``buf = momentum * buf + g`` after, then ``g = buf``; finally ``p -= lr * g``.
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        super().__init__(params)
        self.lr = non_negative_number(lr, "lr")
        self.momentum = non_negative_number(momentum, "momentum")
        self.weight_decay = non_negative_number(weight_decay, "weight_decay")

    def _update(self, p, state):
        g = p.grad
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                state["momentum_buffer"] = buf = g.copy()
            else:
                buf *= self.momentum
                buf += g
            g = buf
        p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma and Ba) with PyTorch's bias correction.

    ``m = beta1 * m + (1 - beta1) * g``; ``v = beta2 * v + (1 - beta2) * g^2``;
    ``p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self.lr = non_negative_number(lr, "lr")
        self.eps = non_negative_number(eps, "eps")
        self.weight_decay = non_negative_number(weight_decay, "weight_decay")
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of numbers, got {betas!r}") from None
        for i, beta in enumerate((beta1, beta2)):
            if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
                raise TypeError(f"betas[{i}] must be a real number, got {beta!r}")
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {beta!r}")
        self.betas = (float(beta1), float(beta2))

    def _update(self, p, state):
        xp = get_array_module(p.data)
        beta1, beta2 = self.betas
        g = p.grad
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m += (1.0 - beta1) * (g - m)
        v *= beta2
        v += (1.0 - beta2) * g * g
        step_size = self.lr / (1.0 - beta1**t)
        denom = xp.sqrt(v) / math.sqrt(1.0 - beta2**t) + self.eps
        p.data -= step_size * (m / denom)
