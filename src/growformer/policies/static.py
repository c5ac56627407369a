"""The fixed-structure policy: never changes anything."""

from __future__ import annotations

from growformer.events import Event
from growformer.policies.base import Policy
from growformer.statistics import LayerStats


class StaticPolicy(Policy):
    """Train the architecture as configured."""

    name = "static"

    def decide(self, step: int, stats: list[LayerStats] | None) -> list[Event]:
        return []
