"""torch's Adafactor, made safe for the empty parameters of a layer with no heads."""

from __future__ import annotations

from collections.abc import Callable

import torch


class Adafactor(torch.optim.Adafactor):
    """``torch.optim.Adafactor`` that leaves parameters without entries out of its step.

    torch's step divides by each parameter's number of entries (its relative step size is
    scaled by the parameter's root mean square), which fails for the ``(0, d_model)``
    projections of a layer whose heads were all removed; such a parameter has nothing to
    update. Its state keys and their layout are torch's (``row_var``, ``col_var``,
    ``variance``), so the class keeps torch's name.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        empty = [
            p
            for g in self.param_groups
            for p in g["params"]
            if not p.numel() and p.grad is not None
        ]
        grads = [p.grad for p in empty]
        for p in empty:
            p.grad = None
        try:
            super().step()
        finally:
            for p, grad in zip(empty, grads, strict=True):
                p.grad = grad
        return loss
