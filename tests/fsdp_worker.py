"""Run under torchrun by ``test_fsdp.py``: for every optimizer, structural changes made on
a model sharded over the ranks (its layer gathered, or the whole model) against the same
changes on a plain copy in the same process. Rank 0 prints one JSON line per optimizer,
model and way."""

from __future__ import annotations

import copy
import functools
import json
import sys

import torch
import torch.distributed as dist
from helpers import arch
from test_properties import _batch

from growformer import fsdp, surgery
from growformer.events import Event
from growformer.model import build_model
from growformer.optim import OPTIMIZERS, build_optimizer

EVENTS = (
    Event("add_head", 0, init="random"),
    Event("set_loops", 1, loops=2, looped_heads=(0,), fade="linear", fade_steps=2),
    Event("remove_head", 0, head=1),
    Event("add_head", 1, init="function_preserving"),
)


def train(model, optimizer, batch) -> None:
    model(**batch).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()


def compare(variant: str, name: str, whole_model: bool, rank: int, world: int) -> dict:
    torch.manual_seed(0)
    plain = arch("classifier" if variant != "llama" else "causal_lm", variant)
    model = build_model(plain)
    reference = copy.deepcopy(model)
    make = functools.partial(build_optimizer, name=name, lr=1e-2, weight_decay=0.1)
    reference_optimizer = make(reference)
    sharding = fsdp.Sharding(world, make, whole_model=whole_model)
    model, optimizer = sharding.scatter(model, make(model))
    # Rows that split evenly over the ranks (one row with padding).
    parts = [_batch(plain, seed) for seed in range(world)]
    batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    size = batch["input_ids"].shape[0] // world
    mine = {k: v[rank * size : (rank + 1) * size] for k, v in batch.items()}
    for i, event in enumerate((*EVENTS, None)):
        train(model, optimizer, mine)
        train(reference, reference_optimizer, batch)
        if event is None:
            break
        request = Event(**{**event.to_dict(), "step": i + 1})
        torch.manual_seed(100 + i)  # the same draws for a new head's weights
        surgery.apply(reference, reference_optimizer, request)
        torch.manual_seed(100 + i)
        change = functools.partial(surgery.apply, event=request)
        model, optimizer, _ = sharding.change(model, optimizer, request.layer, change)
    whole, whole_optimizer = sharding.gather(model, optimizer)
    weights = max(
        (whole.state_dict()[k] - v).abs().max().item()
        for k, v in reference.state_dict().items()
        if v.is_floating_point()
    )
    mine_state, theirs = whole_optimizer.state_dict(), reference_optimizer.state_dict()
    state = 0.0
    same_keys = mine_state["state"].keys() == theirs["state"].keys()
    for idx, values in theirs["state"].items():
        for key, value in values.items():
            other = mine_state["state"].get(idx, {}).get(key)
            if isinstance(value, torch.Tensor) and other is not None:
                state = max(state, (other.float() - value.float()).abs().max().item())
            else:
                same_keys &= other == value
    return {
        "variant": variant,
        "optimizer": name,
        "whole_model": whole_model,
        "arch": whole.arch.to_dict() == reference.arch.to_dict(),
        "weights": weights,
        "state": state,
        "same_state_keys": bool(same_keys),
    }


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    for variant in sys.argv[1:]:
        for name in (n for n, spec in OPTIMIZERS.items() if spec.shardable):
            for whole_model in (False, True):
                result = compare(variant, name, whole_model, rank, world)
                if rank == 0:
                    print(json.dumps(result), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
