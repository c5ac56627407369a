"""Structure policies: observe statistics, emit structural events."""

from __future__ import annotations

from typing import Any

from growformer.errors import ConfigError
from growformer.policies.base import Policy
from growformer.policies.compose import ComposedPolicy, compose
from growformer.policies.incrt import IncrtPolicy
from growformer.policies.records import (
    RECORD_KINDS,
    RecordKind,
    record_kind,
    record_scalars,
    register_record_kind,
)
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


def register_policy(policy: type[Policy]) -> type[Policy]:
    """Make ``policy`` (a :class:`Policy` subclass with a ``name``) available by its name to
    :func:`make_policy`, configuration files and the command line; usable as a class
    decorator. A name already taken is refused.

    Raises:
        ConfigError: ``policy`` is not a Policy subclass, has no name, or its name is taken
            (or contains ``+``, which composes policies).
    """
    if not (isinstance(policy, type) and issubclass(policy, Policy)):
        raise ConfigError(f"a policy must be a Policy subclass, got {policy!r}")
    name = getattr(policy, "name", None)
    if not isinstance(name, str) or not name or "+" in name:
        raise ConfigError(f"policy {policy.__name__} needs a name without '+', got {name!r}")
    if POLICIES.get(name, policy) is not policy:
        raise ConfigError(f"policy name {name!r} is taken by {POLICIES[name].__name__}")
    POLICIES[name] = policy
    return policy


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
    "RECORD_KINDS",
    "AllHeadLoopPolicy",
    "BlockLoopPolicy",
    "ComposedPolicy",
    "IncrtPolicy",
    "LowEntropyLoopPolicy",
    "Policy",
    "RecordKind",
    "ScheduledPolicy",
    "SgtPolicy",
    "StaticPolicy",
    "make_policy",
    "record_kind",
    "record_scalars",
    "register_policy",
    "register_record_kind",
]
