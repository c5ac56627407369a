"""The kinds of statistics records a policy logs (``stats.jsonl``), and the scalars each
kind gives TensorBoard.

Every record a policy logs names its kind (field ``kind``, e.g. ``"incrt.gate"``). The
module that writes a kind registers it here with the scalars one record of it gives, so the
report and the TensorBoard logger read records by kind and never by a policy's own keys: a
new policy's records reach TensorBoard by one :func:`register_record_kind` call beside the
policy.

Run directories written before records named their kind are still read: a kind may give
the keys that identified its records then (``legacy_keys``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from growformer.errors import ConfigError

Scalars = Callable[[dict[str, Any]], dict[str, float]]


@dataclass(frozen=True)
class RecordKind:
    """One kind of statistics record.

    Attributes:
        name: The record's ``kind`` field.
        scalars: Tag -> value of what TensorBoard shows for one record (None: nothing).
        legacy_keys: Keys that all appear in a record of this kind written without a
            ``kind`` field (empty: such records are not recognised).
    """

    name: str
    scalars: Scalars | None = None
    legacy_keys: frozenset[str] = frozenset()


RECORD_KINDS: dict[str, RecordKind] = {}


def register_record_kind(
    name: str, *, scalars: Scalars | None = None, legacy_keys: frozenset[str] = frozenset()
) -> RecordKind:
    """Register a kind of statistics record; a name already taken is refused.

    Args:
        name: The value of the records' ``kind`` field.
        scalars: Turns one record into TensorBoard scalars (tag -> value).
        legacy_keys: Keys identifying records of this kind written before records named it.

    Raises:
        ConfigError: ``name`` is empty or already registered.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a record kind needs a name, got {name!r}")
    if name in RECORD_KINDS:
        raise ConfigError(f"record kind {name!r} is already registered")
    kind = RecordKind(name, scalars, frozenset(legacy_keys))
    RECORD_KINDS[name] = kind
    return kind


def record_kind(record: dict[str, Any]) -> str | None:
    """The kind of ``record``: its ``kind`` field, else the registered kind whose legacy keys
    it carries; None when neither says."""
    kind = record.get("kind")
    if isinstance(kind, str):
        return kind
    return next(
        (k.name for k in RECORD_KINDS.values() if k.legacy_keys and k.legacy_keys <= record.keys()),
        None,
    )


def record_scalars(record: dict[str, Any]) -> dict[str, float]:
    """What TensorBoard shows for ``record`` (none for a kind without scalars or unknown)."""
    kind = RECORD_KINDS.get(record_kind(record) or "")
    return {} if kind is None or kind.scalars is None else kind.scalars(record)
