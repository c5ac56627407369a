"""Fully sharded data parallelism (PyTorch's FSDP2, ``fully_shard``) for a model whose
structure changes while it trains.

Each block is sharded on its own and the rest (embeddings, final norm, head) with the
root, so a forward pass gathers one block's weights at a time. FSDP2 fixes each
parameter's sharding when it wraps the model, so a structural change cannot be made on the
sharded tensors. Instead, at a structural step every rank gathers the whole model and its
optimizer state into a plain copy (:func:`gather`), applies the same surgery to it (every
rank takes the same decisions from statistics summed over the ranks), and shards the
result again with a new optimizer that gets the carried state (:func:`scatter`). The
optimizer state of surviving parameters passes through unchanged: sharding and gathering
only cut and join it. The cost is one all-gather of the model and its optimizer state per
structural step (``benchmarks/fsdp_growth.py`` measures it in steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from growformer.model import ElasticModel, build_model

MakeOptimizer = Callable[[ElasticModel], torch.optim.Optimizer]

FULL = StateDictOptions(full_state_dict=True)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` is wrapped by ``fully_shard``."""
    return isinstance(model, FSDPModule)


def shard(model: ElasticModel, world: int, device: torch.device) -> ElasticModel:
    """Shard ``model`` in place over ``world`` ranks: each block a unit of its own, the
    rest with the root. Returns ``model``."""
    mesh = init_device_mesh(device.type, (world,))
    for block in model.transformer.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def gather(
    model: ElasticModel, optimizer: torch.optim.Optimizer | None, make_optimizer: MakeOptimizer
) -> tuple[ElasticModel, torch.optim.Optimizer | None]:
    """A plain (unsharded) copy of a sharded ``model`` and of its optimizer with the same
    state, on every rank (a collective: every rank calls it)."""
    weights = get_model_state_dict(model, options=FULL)
    state = _optimizer_state(model, optimizer, FULL)
    device = next(iter(weights.values())).device
    # Its initial weights are overwritten: drawing them must not move the random
    # generators, which a run without sharding does not do here.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        plain = build_model(model.arch).to(device)
    plain.load_state_dict(weights)
    plain.train(model.training)
    if optimizer is None:
        return plain, None
    plain_optimizer = make_optimizer(plain)
    if state is not None:
        set_optimizer_state_dict(plain, plain_optimizer, state)
    return plain, plain_optimizer


def scatter(
    model: ElasticModel,
    optimizer: torch.optim.Optimizer | None,
    make_optimizer: MakeOptimizer,
    world: int,
) -> tuple[ElasticModel, torch.optim.Optimizer | None]:
    """Shard a plain ``model`` in place and give a new optimizer over its shards the state
    of ``optimizer`` (every rank holds the same full model and state)."""
    device = next(model.parameters()).device
    state = _optimizer_state(model, optimizer)
    shard(model, world, device)
    if optimizer is None:
        return model, None
    sharded_optimizer = make_optimizer(model)
    if state is not None:
        set_optimizer_state_dict(model, sharded_optimizer, state, options=FULL)
    return model, sharded_optimizer


def _optimizer_state(
    model: ElasticModel,
    optimizer: torch.optim.Optimizer | None,
    options: StateDictOptions | None = None,
) -> dict[str, Any] | None:
    """``optimizer``'s state by parameter name; None when it has none yet (asked for the
    state of an optimizer that never stepped, PyTorch would make one by stepping it with
    zero gradients, which leaves momentum from weight decay and counts a step)."""
    if optimizer is None or not optimizer.state:
        return None
    return get_optimizer_state_dict(model, optimizer, options=options)


@dataclass(frozen=True)
class Sharding:
    """How a run shards its model: the ranks, and the optimizer a sharded model gets.

    Args:
        world: Number of ranks.
        make_optimizer: The run's optimizer over a model's parameters (empty state).
    """

    world: int
    make_optimizer: MakeOptimizer

    def gather(
        self, model: ElasticModel, optimizer: torch.optim.Optimizer | None
    ) -> tuple[ElasticModel, torch.optim.Optimizer | None]:
        """See :func:`gather`."""
        return gather(model, optimizer, self.make_optimizer)

    def scatter(
        self, model: ElasticModel, optimizer: torch.optim.Optimizer | None
    ) -> tuple[ElasticModel, torch.optim.Optimizer | None]:
        """See :func:`scatter`."""
        return scatter(model, optimizer, self.make_optimizer, self.world)


def full(tensor: Tensor) -> Tensor:
    """The whole of ``tensor``: a sharded parameter's shards gathered (a collective), any
    other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
