"""A finished run's logs, parsed: ``summary.json``, and where present ``events.jsonl``,
``metrics.jsonl`` and ``stats.jsonl``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from growformer.errors import ConfigError, read_json
from growformer.policies import record_kind


@dataclass
class RunRecords:
    """The files of a run directory, parsed.

    Args:
        path: The run directory.
        summary: ``summary.json``.
        events: Structural events (``events.jsonl``, else the summary's), in order.
        metrics: ``metrics.jsonl`` records (training loss and evaluations).
        stats: The policy's statistics records (``stats.jsonl``), in order; read those of
            one kind with :meth:`of`.
    """

    path: Path
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    stats: list[dict[str, Any]]

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The statistics records of ``kind`` (e.g. ``"incrt.gate"``), in order."""
        return [r for r in self.stats if record_kind(r) == kind]

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The final architecture's layers (dicts of :meth:`Architecture.to_dict`)."""
        return self.summary["architecture"]["layers"]

    @property
    def steps(self) -> int:
        return int(self.summary.get("steps", 0))


def read_run(run_dir: str | Path) -> RunRecords:
    """Parse a finished run directory.

    Args:
        run_dir: Directory written by ``growformer train``.

    Returns:
        Its logs; a missing optional log reads as empty.

    Raises:
        ConfigError: ``run_dir`` is not a finished run, or one of its files is not valid JSON.
    """
    path = Path(run_dir)
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        if not path.is_dir():
            raise ConfigError(f"run directory {path} does not exist")
        if (path / "checkpoints").is_dir():
            raise ConfigError(
                f"the run in {path} has not finished: no summary.json yet (written when "
                "training ends; resume it with growformer train --resume)"
            )
        raise ConfigError(
            f"{path} is not a run directory: it has no summary.json (growformer train writes "
            "one when training ends)"
        )
    summary = read_json(summary_file, "run summary")
    arch = summary.get("architecture") if isinstance(summary, dict) else None
    if not isinstance(arch, dict) or not isinstance(arch.get("layers"), list):
        raise ConfigError(f"{summary_file} has no architecture: not a growformer run summary")
    events = _read_jsonl(path / "events.jsonl")
    return RunRecords(
        path=path,
        summary=summary,
        events=events if (path / "events.jsonl").exists() else summary.get("events", []),
        metrics=_read_jsonl(path / "metrics.jsonl"),
        stats=_read_jsonl(path / "stats.jsonl"),
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log; none if the file is absent."""
    if not path.exists():
        return []
    records = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read: {reason(e)}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"{path}:{n} is not valid JSON: {reason(e)}") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{n} is not a JSON object")
        records.append(record)
    return records


def reason(e: Exception) -> str:
    """An error in one short line: its type and the start of its message."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text:.100}"
