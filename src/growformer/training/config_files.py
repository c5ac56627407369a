"""Where a run's configuration comes from: YAML or JSON files, ``KEY=VALUE`` overrides with
dotted keys, and the resolved configuration written back as YAML.

Both file formats hold the same schema (:class:`~growformer.training.config.TrainConfig`)
and fail with the same one-line errors naming the file and the field. YAML numbers follow
YAML 1.2, so ``lr: 1e-3`` is a number (PyYAML alone, after YAML 1.1, reads it as a string).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from growformer.errors import ConfigError, read_json, read_utf8
from growformer.training.config import TrainConfig

YAML_SUFFIXES = (".yaml", ".yml")
RUN_CONFIG = "config.yaml"  # the resolved configuration in every run directory


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2 floats (``1e-3``, ``1.5e3``, ``-2E+4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    # Only what YAML 1.1 misses: an exponent without a dot or without a sign (1e-3, 1.5e3);
    # integers and the other floats keep PyYAML's own resolvers, which come first.
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _read_yaml(p: Path) -> Any:
    text = read_utf8(p, "config file", ConfigError)
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {p} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"config file {p} is nested too deeply") from None


def read_config(path: str | Path) -> dict[str, Any]:
    """The keys a configuration file sets, validated against :class:`TrainConfig`.

    Args:
        path: A YAML file (``.yaml``, ``.yml``) or a JSON file (any other name).

    Raises:
        ConfigError: The file is missing, unreadable or malformed, or a key or value is
            not one the schema accepts (named, with the file).
    """
    p = Path(path)
    d = _read_yaml(p) if p.suffix.lower() in YAML_SUFFIXES else read_json(p, "config file")
    if d is None:  # an empty YAML file sets nothing
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys, got {type(d).__name__}")
    try:
        TrainConfig.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    return d


def parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses as JSON (numbers, ``true``, ``null``,
    ``[1, 2]``, ``{"a": 1}``), else the text itself as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(config: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """``config`` with each ``KEY=VALUE`` of ``items`` set, in order (a later one wins).

    A dotted key reaches into a nested section: ``policy_options.growth_ratio=0.2``,
    ``model.d_model=256``, ``task_options.split=lineage``. The values are read by
    :func:`parse_value`. ``config`` itself is not changed.

    Raises:
        ConfigError: An item is not ``KEY=VALUE``, or its key runs through a value that is
            not a section.
    """
    out = json.loads(json.dumps(config))  # a deep copy (configs are JSON values)
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(
                f"--set {item!r}: expected KEY=VALUE, e.g. policy_options.growth_ratio=0.2"
            )
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                section = ".".join(parts[: depth + 1])
                raise ConfigError(f"--set {item!r}: {section} is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(text)
    return out


def dump_config(config: TrainConfig) -> str:
    """Every setting of ``config`` as YAML, in the schema's order (a valid config file)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
