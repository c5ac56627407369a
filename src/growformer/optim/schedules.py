"""Learning-rate schedules: a linear warm-up to the peak, then one of the registered
shapes from the peak down to ``lr * min_lr_ratio`` at ``decay_steps`` (default: ``steps``).

- ``cosine``: half a cosine.
- ``linear``: a straight line.
- ``constant``: the peak throughout (``min_lr_ratio`` unused).
- ``wsd`` (warm-up, stable, decay): the peak until the last ``cooldown_fraction`` of the
  span after warm-up, then a straight line down; a run can be extended from a stable-phase
  checkpoint and cooled down later.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol


class ScheduleSettings(Protocol):
    """The settings a schedule reads (a :class:`~growformer.training.config.TrainConfig`)."""

    lr: float
    warmup_steps: int
    steps: int
    decay_steps: int | None
    min_lr_ratio: float
    schedule: str
    cooldown_fraction: float


# progress in [0, 1] through the decay span, cooldown fraction -> share of the way from
# the floor to the peak
Shape = Callable[[float, float], float]

SCHEDULES: dict[str, Shape] = {
    "cosine": lambda progress, _: 0.5 * (1 + math.cos(math.pi * progress)),
    "linear": lambda progress, _: 1 - progress,
    "constant": lambda progress, _: 1.0,
    "wsd": lambda progress, cooldown: min(1.0, (1 - progress) / cooldown) if cooldown else 1.0,
}


def register_schedule(name: str, shape: Shape) -> None:
    """Add a schedule: ``shape(progress, cooldown_fraction)`` gives the share of the way
    from the floor (``lr * min_lr_ratio``) to the peak at ``progress`` through the span."""
    SCHEDULES[name] = shape


def lr_at(step: int, cfg: ScheduleSettings) -> float:
    """The learning rate of optimizer step ``step`` (0-based) under ``cfg``'s schedule."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, (cfg.decay_steps or cfg.steps) - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * SCHEDULES[cfg.schedule](progress, cfg.cooldown_fraction)
