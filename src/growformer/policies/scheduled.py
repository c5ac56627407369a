"""Structural changes at fixed steps, given by the user.

Useful to replay a structure trajectory found by another run, or for ablations (the
same growth with ``random`` versus ``function_preserving`` head initialisation).
Configured as ``{"events": [{"step": 100, "op": "add_head", "layer": 0}, ...]}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from growformer.errors import ConfigError
from growformer.events import OPS, Event
from growformer.policies.base import Policy
from growformer.statistics import LayerStats
from growformer.validation import is_int, key_list


class ScheduledPolicy(Policy):
    """Emit the configured events when their step is reached."""

    name = "scheduled"
    defaults: ClassVar[dict[str, Any]] = {"events": []}

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.schedule: dict[int, list[Event]] = {}
        events = self.options["events"]
        if not isinstance(events, list):
            raise ConfigError(f"scheduled policy events must be a list, got {events!r}")
        for i, raw in enumerate(events):
            event = _parse(i, raw)
            self.schedule.setdefault(event.step, []).append(event)

    def decide(self, step: int, stats: list[LayerStats] | None) -> list[Event]:
        return [Event(**vars(e)) for e in self.schedule.get(step, [])]


def _parse(i: int, raw: Any) -> Event:
    where = f"scheduled policy event {i}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object, got {raw!r}")
    if raw.get("op") not in OPS:
        raise ConfigError(f"{where}: op must be one of {', '.join(OPS)}, got {raw.get('op')!r}")
    for key in ("step", "layer"):
        value = raw.get(key)
        if not is_int(value) or value < (1 if key == "step" else 0):
            raise ConfigError(f"{where}: {key} must be an integer (step >= 1), got {value!r}")
    allowed = {
        "op",
        "step",
        "layer",
        "head",
        "init",
        "init_std",
        "loops",
        "looped_heads",
        "fade",
        "fade_steps",
        "reason",
    }
    unknown = sorted(raw.keys() - allowed)
    if unknown:
        raise ConfigError(f"{where} has unknown field(s) {key_list(unknown)}")
    event = Event(**raw)
    if event.looped_heads is not None:
        event.looped_heads = tuple(event.looped_heads)
    event.reason = event.reason or "scheduled"
    return event
