"""Several policies in one run: ``"policy": "incrt+sgt"``.

``policy_options`` are keyed by part name (``{"incrt": {...}, "sgt": {...}}``). Each part
gets the statistics it asks for (all taken in the step's one forward pass) and keeps its
own state. At every step the parts take turns in the order of the name: the first
decides and its events are applied, every part observes them, then the second decides on
the structure they left, and so on. The initial structure passes through the parts in
the same order, and calibration and held-out statistics go to the parts that ask for
them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from growformer.arch import Architecture
from growformer.errors import CheckpointError, ConfigError
from growformer.events import Event
from growformer.policies.base import Policy
from growformer.statistics import LayerStats
from growformer.validation import key_list


class ComposedPolicy(Policy):
    """The parts of a ``"a+b"`` policy, run together.

    Args:
        parts: The policies, in the order their events are applied.
    """

    def __init__(self, parts: list[Policy]) -> None:
        names = [p.name for p in parts]
        if len(parts) < 2 or len(set(names)) != len(names):
            raise ConfigError(f"a composed policy needs two or more distinct parts, got {names}")
        self.parts = parts
        # The part whose events the trainer is applying (see refused).
        self._turn = parts[0]
        self.name = "+".join(names)
        self.options = {p.name: p.options for p in parts}
        self.calibration_batches = max(p.calibration_batches for p in parts)
        self.heldout_batches = max(p.heldout_batches for p in parts)
        # The first part with a preference (INCRT's thresholds assume its scale).
        self.attn_init = next(
            (p.attn_init for p in parts if p.attn_init != Policy.attn_init), Policy.attn_init
        )

    def initial_arch(self, arch: Architecture) -> Architecture:
        for p in self.parts:
            arch = p.initial_arch(arch)
        return arch

    def calibrate(self, batches: list[list[LayerStats]]) -> None:
        for p in self.parts:
            if p.calibration_batches:
                p.calibrate(batches[: p.calibration_batches])

    def needs(self, step: int) -> frozenset[str]:
        return frozenset().union(*(p.needs(step) for p in self.parts))

    def decide_from(self, step: int, stats: dict[str, Any]) -> Iterator[list[Event]]:
        for p in self.parts:
            self._turn = p
            yield from p.decide_from(step, stats)

    def refused(self, requests: list[Event]) -> None:
        # Refusals come between turns: they are the requests of the part whose turn it is.
        self._turn.refused(requests)

    def observe(self, records: list[Event]) -> None:
        for p in self.parts:
            p.observe(records)

    def drain_log(self) -> list[dict[str, Any]]:
        return [{"policy": p.name, **record} for p in self.parts for record in p.drain_log()]

    def report(self, heldout: list[LayerStats] | None) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for p in self.parts:
            fields = p.report(heldout if p.heldout_batches else None)
            clash = sorted(fields.keys() & merged.keys())
            if clash:
                raise ConfigError(f"policies of {self.name!r} both report {', '.join(clash)}")
            merged.update(fields)
        return merged

    def state_dict(self) -> dict[str, Any]:
        return {p.name: p.state_dict() for p in self.parts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {p.name for p in self.parts}:
            raise CheckpointError(
                f"policy {self.name!r}: the checkpoint holds state of {sorted(state)}"
            )
        for p in self.parts:
            p.load_state_dict(state[p.name])


def compose(
    name: str,
    options: dict[str, Any] | None,
    make: Callable[[str, dict[str, Any] | None], Policy],
) -> ComposedPolicy:
    """The composed policy ``name`` (``"a+b"``), its parts built by ``make(name, options)``.

    Args:
        name: Part names joined by ``+``.
        options: Options per part name.
        make: The factory of single policies.
    """
    names = name.split("+")
    options = dict(options or {})
    unknown = sorted(options.keys() - set(names))
    if unknown:
        raise ConfigError(
            f"policy {name!r} takes options per part ({', '.join(names)}), not {key_list(unknown)}"
        )
    for part, value in options.items():
        if not isinstance(value, dict):
            raise ConfigError(f"policy {name!r}: options of {part!r} must be an object")
    return ComposedPolicy([make(n, options.get(n)) for n in names])
