"""What a family converter is, and the helpers the converters share."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from growformer.arch import Architecture
from growformer.errors import ConfigError
from growformer.model import ElasticModel

State = dict[str, Tensor]


@dataclass(frozen=True)
class Family:
    """One transformers model family.

    Args:
        to_growformer: (config, tensors, num_labels=) -> (architecture, growformer state
            dict) of the same function.
        from_growformer: model -> (transformers config, tensors), or ConfigError naming
            what the family's configuration cannot state.
        may_be_new: growformer parameters the source may lack (a new classifier).
    """

    to_growformer: Callable[..., tuple[Architecture, State]]
    from_growformer: Callable[[ElasticModel], tuple[dict[str, Any], State]]
    may_be_new: tuple[str, ...] = ()


def take(tensors: Mapping[str, Tensor], name: str, family: str) -> Tensor:
    """``tensors[name]``, or a ConfigError naming the missing tensor."""
    if name not in tensors:
        raise ConfigError(f"{family} model has no tensor {name!r}")
    return tensors[name]


def prefix_of(tensors: Mapping[str, Tensor], probe: str, prefixes: tuple[str, ...]) -> str:
    """The first of ``prefixes`` under which ``probe`` exists (a bare model's or a model
    with a head's key names)."""
    for prefix in prefixes:
        if prefix + probe in tensors:
            return prefix
    raise ConfigError(f"found no {probe!r} under any of {', '.join(repr(p) for p in prefixes)}")


def setting(config: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = config.get(name, default)
    if value is None and default is None:
        raise ConfigError(f"config.json lacks {name!r}")
    return value


def require(condition: bool, family: str, what: str) -> None:
    """Refuse a configuration the conversion would not reproduce."""
    if not condition:
        raise ConfigError(f"cannot convert this {family} model: {what}")


def uniform_layers(model: ElasticModel, family: str) -> tuple[int, int, int, int | None]:
    """(heads, head_dim, ffn_dim, kv_heads) shared by every layer, or ConfigError: a
    transformers configuration states one shape for all layers and no loops."""
    layers = model.arch.layers
    shapes = {(x.heads, x.head_dim, x.ffn_dim, x.kv_heads) for x in layers}
    if len(shapes) != 1:
        raise ConfigError(
            f"a {family} configuration states one layer shape; this model's layers differ "
            f"({sorted(shapes)[:2]}...): keep it as a growformer checkpoint"
        )
    if any(x.loops or x.block_loops or x.fade or x.head_fade for x in layers):
        raise ConfigError(
            f"a {family} model has no loops or fades: keep this one as a growformer checkpoint"
        )
    return shapes.pop()
