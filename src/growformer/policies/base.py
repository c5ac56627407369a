"""What every structure policy provides: decisions from statistics, and resumable state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from growformer.errors import CheckpointError, ConfigError
from growformer.surgery import Event


class Policy(ABC):
    """Decides structural events; never touches the model's tensors.

    Args:
        options: Policy-specific options from the run's configuration.
    """

    name: str
    options_known: frozenset[str] = frozenset()

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = sorted(options.keys() - self.options_known)
        if unknown:
            known = ", ".join(sorted(self.options_known)) or "none"
            raise ConfigError(
                f"policy {self.name!r} has no option(s) {', '.join(unknown)} (known: {known})"
            )
        self.options = options

    @abstractmethod
    def decide(self, step: int) -> list[Event]:
        """Events to apply now that ``step`` optimizer steps are done."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (stateless policies accept only ``{}``)."""
        if state:
            raise CheckpointError(
                f"policy {self.name!r} keeps no state, but the checkpoint has some"
            )
