"""Fully sharded data parallelism (PyTorch's FSDP2, ``fully_shard``) for a model whose
structure changes while it trains.

Each block is sharded on its own and the rest (embeddings, final norm, head) with the
root, so a forward pass gathers one block's weights at a time. FSDP2 fixes each
parameter's sharding when it wraps a module, so a structural change cannot be made on the
sharded tensors. Every structural change is to one layer, and is made like this on every
rank (each takes the same decisions, from statistics summed over the ranks):
:meth:`Sharding.change` gathers that block's weights and optimizer state into a plain block,
puts it in the model, lets surgery change it, shards it as a new unit, and gives a new
optimizer the state of every parameter: the other units' as it was, the changed block's
cut back into shards. The optimizer state of surviving slices passes through unchanged:
sharding and gathering only cut and join it. A change thus costs one all-gather of one
block and its optimizer state, and holds one whole block at a time. (:class:`Sharding`
can gather the whole model instead, :meth:`~Sharding.gather` then
:meth:`~Sharding.scatter`: simpler, and ``benchmarks/distributed_scaling.py`` compares the
two.)

The wrapped model keeps a list of its sharded units from its first forward pass on; after
a block is replaced the list is dropped so that the next pass makes it anew. That list is
FSDP2's internal state (``torch`` is pinned), and ``tests/test_fsdp.py`` checks every
change against the same change without sharding.
"""

from __future__ import annotations

import contextlib
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
from torch.distributed.tensor import DTensor, distribute_tensor

from growformer.events import Event
from growformer.model import Block, ElasticModel, build_model

MakeOptimizer = Callable[[torch.nn.Module], torch.optim.Optimizer]
Change = Callable[[ElasticModel, torch.optim.Optimizer | None], Event]

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


@dataclass(frozen=True)
class Sharding:
    """How a run shards its model, and the structural changes, gathers and scatters made
    on a sharded model (each a collective: every rank calls it).

    Args:
        world: Number of ranks.
        make_optimizer: The run's optimizer over a module's parameters (empty state).
        whole_model: Gather the whole model for a change instead of its layer (more
            memory and communication; to compare).
    """

    world: int
    make_optimizer: MakeOptimizer
    whole_model: bool = False

    def change(
        self,
        model: ElasticModel,
        optimizer: torch.optim.Optimizer | None,
        layer: int,
        change: Change,
    ) -> tuple[ElasticModel, torch.optim.Optimizer | None, Event]:
        """Make ``change`` to layer ``layer`` of a sharded ``model``.

        Block ``layer`` is gathered into a plain block in the model, with an optimizer of
        its own that has its state; ``change`` makes the change on the model and that
        optimizer (e.g. :func:`growformer.surgery.apply` of an event) and returns its
        record; the block is sharded as a new unit, and a new optimizer gets the other
        units' state as it was and the block's cut into shards.

        Returns:
            The model and optimizer to go on with (a new optimizer), and the record.
        """
        if self.whole_model:
            plain, plain_optimizer = self.gather(model, optimizer)
            record = change(plain, plain_optimizer)
            model, optimizer = self.scatter(plain, plain_optimizer)
            return model, optimizer, record
        settle(model)
        old = model.transformer.layers[layer]
        mesh = next(old.parameters()).device_mesh
        weights = {k: full(v) for k, v in old.state_dict().items()}
        state = {}
        if optimizer is not None:
            for name, p in old.named_parameters():
                if p in optimizer.state:
                    state[name] = {k: full(v) for k, v in optimizer.state[p].items()}
        device = next(iter(weights.values())).device
        with _rng_untouched(device):
            plain = Block(arch=model.arch, spec=model.arch.layers[layer]).to(device)
        plain.load_state_dict(weights)
        plain.train(old.training)
        block_optimizer = None if optimizer is None else self.make_optimizer(plain)
        if block_optimizer is not None:
            for name, p in plain.named_parameters():
                if name in state:
                    block_optimizer.state[p] = state[name]
        model.transformer.layers[layer] = plain
        record = change(model, block_optimizer)
        changed = {}
        if block_optimizer is not None:
            for name, p in plain.named_parameters():
                if p in block_optimizer.state:
                    changed[name] = block_optimizer.state[p]
        fully_shard(plain, mesh=mesh)
        _forget_units(model)
        if optimizer is None:
            return model, None, record
        new = self.make_optimizer(model)
        for group, before in zip(new.param_groups, optimizer.param_groups, strict=True):
            group.update({k: v for k, v in before.items() if k != "params"})
        for p in model.parameters():
            if p in optimizer.state:  # the other units' parameters, as they were
                new.state[p] = optimizer.state[p]
        for name, p in plain.named_parameters():
            if name in changed:
                new.state[p] = {k: _shard_like(v, p) for k, v in changed[name].items()}
        return model, new, record

    def gather(
        self, model: ElasticModel, optimizer: torch.optim.Optimizer | None
    ) -> tuple[ElasticModel, torch.optim.Optimizer | None]:
        """A plain (unsharded) copy of a sharded ``model`` and of its optimizer with the
        same state, on every rank."""
        settle(model)
        weights = get_model_state_dict(model, options=FULL)
        state = _optimizer_state(model, optimizer, FULL)
        device = next(iter(weights.values())).device
        with _rng_untouched(device):
            plain = build_model(model.arch).to(device)
        plain.load_state_dict(weights)
        plain.train(model.training)
        if optimizer is None:
            return plain, None
        plain_optimizer = self.make_optimizer(plain)
        if state is not None:
            set_optimizer_state_dict(plain, plain_optimizer, state)
        return plain, plain_optimizer

    def scatter(
        self, model: ElasticModel, optimizer: torch.optim.Optimizer | None
    ) -> tuple[ElasticModel, torch.optim.Optimizer | None]:
        """Shard a plain ``model`` in place and give a new optimizer over its shards the
        state of ``optimizer`` (every rank holds the same whole model and state)."""
        device = next(model.parameters()).device
        state = _optimizer_state(model, optimizer)
        shard(model, self.world, device)
        if optimizer is None:
            return model, None
        sharded_optimizer = self.make_optimizer(model)
        if state is not None:
            set_optimizer_state_dict(model, sharded_optimizer, state, options=FULL)
        return model, sharded_optimizer


def settle(model: torch.nn.Module) -> None:
    """Put a sharded ``model``'s sharded parameters back in place: after a forward pass
    without backward (an evaluation, a probe) its root unit keeps the gathered ones, which
    its optimizer does not know."""
    if is_sharded(model):
        model.reshard()


def full(tensor: Tensor) -> Tensor:
    """The whole of ``tensor``: a sharded parameter's shards gathered (a collective), any
    other tensor as it is."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _shard_like(value: Any, param: DTensor) -> Any:
    """An optimizer state value of a whole parameter, sharded as ``param`` is (held whole
    on every rank, so each keeps its own shard without communicating); scalars and state of
    another shape (a step count) as they are."""
    if not isinstance(value, Tensor) or value.shape != param.shape:
        return value
    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


def _forget_units(model: ElasticModel) -> None:
    """Make the sharded ``model`` list its units anew at its next forward pass (one was
    replaced): FSDP2 lists them at the first pass and marks which is the root."""
    root = model._get_fsdp_state()
    for state in root._state_ctx.all_states:
        state._is_root = None
    root._state_ctx.all_states.clear()


def _rng_untouched(device: torch.device) -> contextlib.AbstractContextManager:
    """Weights drawn inside are overwritten: drawing them must not move the random
    generators, which a run without sharding does not do here."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


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
