"""Structure policies: observe statistics, emit structural events."""

from __future__ import annotations

from typing import Any

from growformer.errors import ConfigError
from growformer.policies.base import Policy
from growformer.policies.compose import ComposedPolicy, compose
from growformer.policies.incrt import IncrtPolicy
from growformer.policies.scheduled import ScheduledPolicy
from growformer.policies.sgt import (
    AllHeadLoopPolicy,
    BlockLoopPolicy,
    LowEntropyLoopPolicy,
    SgtPolicy,
)
from growformer.policies.static import StaticPolicy

POLICIES: dict[str, type[Policy]] = {
    p.name: p
    for p in (
        StaticPolicy,
        ScheduledPolicy,
        IncrtPolicy,
        SgtPolicy,
        AllHeadLoopPolicy,
        LowEntropyLoopPolicy,
        BlockLoopPolicy,
    )
}


def make_policy(name: str, options: dict[str, Any] | None = None) -> Policy:
    """Instantiate the policy called ``name``; ``"a+b"`` composes policies a and b
    (see :mod:`growformer.policies.compose`)."""
    if "+" in name:
        return compose(name, options, _make_single)
    return _make_single(name, options)


def _make_single(name: str, options: dict[str, Any] | None) -> Policy:
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r} (known: {', '.join(sorted(POLICIES))})")
    return POLICIES[name](options)


__all__ = [
    "POLICIES",
    "AllHeadLoopPolicy",
    "BlockLoopPolicy",
    "ComposedPolicy",
    "IncrtPolicy",
    "LowEntropyLoopPolicy",
    "Policy",
    "ScheduledPolicy",
    "SgtPolicy",
    "StaticPolicy",
    "make_policy",
]
