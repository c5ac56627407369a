"""Lion, a sign optimizer: every entry moves by the learning rate, in the direction of the
sign of an interpolation between its momentum and its gradient.

As described by Chen et al. (2023), "Symbolic Discovery of Optimization Algorithms":
``u = sign(beta1 * m + (1 - beta1) * g)``, ``p <- p - lr * (u + weight_decay * p)``, then
``m <- beta2 * m + (1 - beta2) * g``. One state tensor per parameter (``exp_avg``, the
momentum), half of Adam's. Its updates are larger than Adam's per entry, so it is run with a
learning rate 3-10 times smaller and a weight decay as many times larger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class Lion(torch.optim.Optimizer):
    """Lion with decoupled weight decay.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate (the size of every entry's step).
        betas: ``(beta1, beta2)``: the interpolation of the update and the momentum's decay.
        weight_decay: Decoupled weight decay (multiplied by ``lr``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                momentum = state["exp_avg"]
                if decay:
                    p.mul_(1 - lr * decay)
                p.add_(momentum.lerp(p.grad, 1 - beta1).sign_(), alpha=-lr)
                momentum.lerp_(p.grad, 1 - beta2)
        return loss
