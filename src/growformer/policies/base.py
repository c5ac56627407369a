"""What every structure policy provides: decisions from statistics, and resumable state."""

from __future__ import annotations

from typing import Any, ClassVar

from growformer.arch import Architecture
from growformer.errors import CheckpointError, ConfigError
from growformer.statistics import LayerStats
from growformer.surgery import Event


class Policy:
    """Decides structural events from statistics; never touches the model's tensors.

    The trainer asks a policy, in this order: :meth:`initial_arch` (fresh runs), then
    statistics of ``calibration_batches`` training batches for :meth:`calibrate`; at
    every step, whether it :meth:`wants_stats`, and then :meth:`decide`; at the end,
    statistics of ``heldout_batches`` validation batches for :meth:`report`.

    Args:
        options: Policy-specific options from the run's configuration.
    """

    name: str
    defaults: ClassVar[dict[str, Any]] = {}
    calibration_batches: int = 0
    heldout_batches: int = 0
    # Attention initialisation the policy's thresholds assume (unless the config sets one).
    attn_init: str = "gpt2"

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = sorted(options.keys() - self.defaults.keys())
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ConfigError(
                f"policy {self.name!r} has no option(s) {', '.join(unknown)} (known: {known})"
            )
        self.options = {**self.defaults, **options}

    def initial_arch(self, arch: Architecture) -> Architecture:
        """The structure training starts from (default: as configured)."""
        return arch

    def calibrate(self, batches: list[list[LayerStats]]) -> None:
        """Set data-relative thresholds from statistics of the untrained model."""

    def wants_stats(self, step: int) -> bool:
        """Whether :meth:`decide` at ``step`` needs statistics."""
        return False

    def decide(self, step: int, stats: list[LayerStats] | None) -> list[Event]:
        """Events to apply now that ``step`` optimizer steps are done."""
        raise NotImplementedError

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
