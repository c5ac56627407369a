"""Structure policies: observe statistics, emit structural events."""

from __future__ import annotations

from typing import Any

from growformer.errors import ConfigError
from growformer.policies.base import Policy
from growformer.policies.incrt import IncrtPolicy
from growformer.policies.scheduled import ScheduledPolicy
from growformer.policies.static import StaticPolicy

POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (StaticPolicy, ScheduledPolicy, IncrtPolicy)
}


def make_policy(name: str, options: dict[str, Any] | None = None) -> Policy:
    """Instantiate the policy called ``name``."""
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r} (known: {', '.join(sorted(POLICIES))})")
    return POLICIES[name](options)


__all__ = ["POLICIES", "IncrtPolicy", "Policy", "ScheduledPolicy", "StaticPolicy", "make_policy"]
