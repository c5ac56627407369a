"""Optimizers and learning-rate schedules, each a registry entry, and the layout of every
optimizer's state along its parameters, which surgery follows (:mod:`.state`).

Every optimizer decays matrices only (not biases, norms or other vectors); its other
settings come from ``optimizer_options`` over the defaults below:

- ``adamw`` (default): ``betas`` (0.9, 0.98), ``eps`` 1e-8; decoupled weight decay.
- ``adam``: the same settings; weight decay as an L2 term in the gradient.
- ``sgd``: ``momentum`` 0.9, ``nesterov`` false, ``dampening`` 0.
- ``adafactor`` (``torch.optim.Adafactor``, :class:`~growformer.optim.adafactor.Adafactor`
  skips empty parameters): factored second moments of matrices (one value
  per row and per column), ``beta2_decay`` -0.8, ``eps`` [null, 1e-3], ``d`` 1.0 (update
  clipping); ``lr`` is its largest relative step size.
- ``lion`` (:class:`~growformer.optim.lion.Lion`): ``betas`` (0.9, 0.99); a sign update,
  run with a smaller ``lr`` and a larger ``weight_decay`` than AdamW.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from growformer.errors import ConfigError
from growformer.optim.adafactor import Adafactor
from growformer.optim.lion import Lion
from growformer.optim.schedules import SCHEDULES, lr_at, register_schedule
from growformer.optim.state import (
    STATE_LAYOUTS,
    StateLayout,
    check_supported,
    register_state_layout,
)
from growformer.validation import key_list


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer.

    Args:
        build: ``build(groups, lr=..., **options)``: the optimizer over parameter groups
            (each with its ``weight_decay``).
        defaults: Its options and their defaults (the keys ``optimizer_options`` may set).
        shardable: Whether it steps parameters sharded by FSDP2 (DTensors) correctly.
    """

    build: Callable[..., torch.optim.Optimizer]
    defaults: dict[str, Any] = field(default_factory=dict)
    shardable: bool = True


ADAM = {"betas": (0.9, 0.98), "eps": 1e-8}
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec(torch.optim.AdamW, ADAM),
    "adam": OptimizerSpec(torch.optim.Adam, ADAM),
    "sgd": OptimizerSpec(torch.optim.SGD, {"momentum": 0.9, "nesterov": False, "dampening": 0.0}),
    # Its column moments are means over rows that FSDP2 spreads over the ranks: PyTorch's
    # in-place square of a norm over sharded rows fails.
    "adafactor": OptimizerSpec(
        Adafactor, {"beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0}, shardable=False
    ),
    "lion": OptimizerSpec(Lion, {"betas": (0.9, 0.99)}),
}


def register_optimizer(
    name: str, spec: OptimizerSpec, state: dict[str, StateLayout] | None = None
) -> None:
    """Add an optimizer under ``name``; ``state``, when given, registers (or replaces) the
    layout of its class's state (:func:`~growformer.optim.state.register_state_layout`),
    which surgery needs unless the class is one already known."""
    OPTIMIZERS[name] = spec
    if state is not None:
        register_state_layout(spec.build.__name__, state)


def check_optimizer(name: str, options: dict[str, Any]) -> None:
    """Refuse an unknown optimizer or option, naming what is known."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")
    unknown = sorted(options.keys() - OPTIMIZERS[name].defaults.keys())
    if unknown:
        raise ConfigError(
            f"optimizer {name} has no option(s) {key_list(unknown)} "
            f"(known: {key_list(OPTIMIZERS[name].defaults) or 'none'})"
        )


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    options: dict[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``model``'s parameters, weight decay on matrices only;
    the parameter order follows the model.

    Raises:
        ConfigError: An unknown optimizer or option, or a value it refuses.
    """
    options = dict(options or {})
    check_optimizer(name, options)
    spec = OPTIMIZERS[name]
    settings = {**spec.defaults, **options}
    for key in ("betas", "eps"):  # JSON and YAML give lists
        if isinstance(settings.get(key), list):
            settings[key] = tuple(settings[key])
    groups = [
        {"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0},
    ]
    try:
        optimizer = spec.build(groups, lr=lr, **settings)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"optimizer {name}: {e}") from None
    check_supported(optimizer)
    return optimizer


__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "STATE_LAYOUTS",
    "Adafactor",
    "Lion",
    "OptimizerSpec",
    "build_optimizer",
    "check_optimizer",
    "check_supported",
    "lr_at",
    "register_optimizer",
    "register_schedule",
    "register_state_layout",
]
