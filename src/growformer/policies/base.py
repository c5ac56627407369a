"""What every structure policy provides: decisions from statistics, and resumable state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from torch import Tensor

from growformer.arch import Architecture
from growformer.errors import CheckpointError, ConfigError
from growformer.events import Event
from growformer.statistics import MOMENTS, LayerStats
from growformer.validation import is_finite, is_int, is_number, key_list


class Policy:
    """Decides structural events from statistics; never touches the model's tensors.

    The trainer asks a policy, in this order: :meth:`initial_arch` (fresh runs), then
    statistics of ``calibration_batches`` training batches for :meth:`calibrate`; at
    every step, which statistics it :meth:`needs`, then :meth:`decide_from` with them,
    showing :meth:`observe` the records of every change applied (the trainer's own, such
    as the end of a fade, and the policy's); at the end, statistics of
    ``heldout_batches`` validation batches for :meth:`report`.

    A policy of one kind of statistics implements :meth:`wants_stats` and :meth:`decide`
    and names the kind in :attr:`statistic`; :meth:`needs` and :meth:`decide_from` adapt
    them (a composition of policies overrides those two instead).

    Args:
        options: Policy-specific options from the run's configuration.
    """

    name: str
    defaults: ClassVar[dict[str, Any]] = {}
    calibration_batches: int = 0
    heldout_batches: int = 0
    # Attention initialisation the policy's thresholds assume (unless the config sets one).
    attn_init: str = "gpt2"
    # What decide() receives (see growformer.statistics.STATISTICS).
    statistic: str = MOMENTS

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = sorted(options.keys() - self.defaults.keys())
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(
                f"policy {self.name!r} has no option(s) {key_list(unknown)} (known: {known})"
            )
        for key, value in options.items():
            _check_option(self.name, key, value, self.defaults[key])
        self.options = {**self.defaults, **options}

    def initial_arch(self, arch: Architecture) -> Architecture:
        """The structure training starts from (default: as configured)."""
        return arch

    def calibrate(self, batches: list[list[LayerStats]]) -> None:
        """Set data-relative thresholds from statistics of the untrained model."""

    def wants_stats(self, step: int) -> bool:
        """Whether :meth:`decide` at ``step`` needs statistics."""
        return False

    def decide(self, step: int, stats: list[LayerStats] | list[Tensor] | None) -> list[Event]:
        """Events to apply now that ``step`` optimizer steps are done.

        Args:
            step: Optimizer steps done.
            stats: The per-layer :attr:`statistic` of the step's batch when
                :meth:`wants_stats` asked for it, else None.
        """
        raise NotImplementedError

    def needs(self, step: int) -> frozenset[str]:
        """Names of the statistics :meth:`decide_from` at ``step`` needs."""
        return frozenset({self.statistic}) if self.wants_stats(step) else frozenset()

    def decide_from(self, step: int, stats: dict[str, Any]) -> Iterator[list[Event]]:
        """Events to apply at ``step`` in turns, given the statistics captured (name -> value).

        The trainer applies each turn's events and shows their records to :meth:`observe`
        before it asks for the next turn, so that the later parts of a composition decide
        on the structure the earlier ones left.
        """
        yield self.decide(step, stats.get(self.statistic) if self.wants_stats(step) else None)

    def observe(self, records: list[Event]) -> None:
        """Learn of the structural changes applied this step (its own and any other's)."""

    def refused(self, requests: list[Event]) -> None:
        """Learn that the trainer did not apply these requests of the last turn (they would
        exceed a budget, see :class:`growformer.training.config.TrainConfig`'s ``max_params``)."""

    def drain_log(self) -> list[dict[str, Any]]:
        """Statistics records since the last call (written to stats.jsonl)."""
        return []

    def report(self, heldout: list[LayerStats] | None) -> dict[str, Any]:
        """Extra fields for summary.json."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (stateless policies accept only ``{}``)."""
        if state:
            raise CheckpointError(
                f"policy {self.name!r} keeps no state, but the checkpoint has some"
            )


def _check_option(policy: str, key: str, value: Any, default: Any) -> None:
    """ConfigError unless ``value`` has the type of the option's default (an int may stand
    for a float); None, and any value of an option whose default is None, are for the
    policy to check."""
    if default is None or value is None:
        return
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        ok = isinstance(value, type(default))
    else:
        ok = is_number(value) and (isinstance(default, float) or is_int(value))
        ok = ok and is_finite(value)  # no NaN, no infinity
    if not ok:
        kind = type(default).__name__
        raise ConfigError(f"policy {policy!r}: option {key} must be a {kind}, got {value!r}")
