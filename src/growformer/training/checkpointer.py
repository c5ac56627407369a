"""A run's checkpoints: what :class:`growformer.training.loop.Trainer` writes so that a
resumed run continues exactly, and how it reads that back, each value checked so that a
damaged ``trainer_state.json`` is named rather than crashing the run later."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import torch

from growformer import checkpoint, fsdp
from growformer.data import TaskData
from growformer.distributed import Ranks
from growformer.errors import CheckpointError
from growformer.fsdp import Sharding
from growformer.model import ElasticModel
from growformer.policies import Policy
from growformer.training.config import TrainConfig
from growformer.validation import is_int, is_number


class Checkpointer:
    """Writes and restores one run's checkpoints.

    Args:
        out: Run directory.
        cfg: The run's configuration.
        ranks: The run's processes.
        data: The run's task data (its name, kind, labels and tokenizer are saved).
    """

    def __init__(self, out: Path, cfg: TrainConfig, ranks: Ranks, data: TaskData) -> None:
        self.out, self.cfg, self.ranks = out, cfg, ranks
        self.tokenizer_json = data.tokenizer.to_json()
        self.task = {
            "name": data.name,
            "kind": data.kind,
            "label_names": data.label_names,
            "max_len": data.max_len,
            "info": data.info,
        }

    def restore(
        self,
        ckpt: checkpoint.Checkpoint,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        policy: Policy,
    ) -> None:
        """Continue from ``ckpt``: the optimizer, the counters in ``state`` (of the types
        they have there), the policy and the random states."""
        ckpt.load_optimizer(optimizer)
        saved = dict(ckpt.trainer_state)
        where = ckpt.path / "trainer_state.json"
        # Checkpoints from before the baseline was kept start it at train_flops (exact for
        # runs without loops).
        saved.setdefault("train_flops_no_loops", saved.get("train_flops"))
        saved.setdefault("nonfinite_skips", 0)
        for key, fresh in state.items():
            value = saved.get(key)
            if not (is_number(value) if isinstance(fresh, float) else is_int(value)):
                raise CheckpointError(f"{where}: '{key}' must be a number, got {value!r:.60}")
            if not (math.isfinite(value) and value >= 0):
                raise CheckpointError(f"{where}: '{key}' must be finite and >= 0, got {value}")
            state[key] = type(fresh)(value)
        try:
            policy.load_state_dict(saved["policy"])
            random.setstate(_tuple_state(saved["python_rng"]))
        except (
            KeyError,
            TypeError,
            ValueError,
            OverflowError,
            IndexError,
            AttributeError,
            RecursionError,
        ) as e:
            reason = str(e).splitlines()[0] if str(e) else ""
            raise CheckpointError(
                f"{where}: the policy or random state cannot be restored "
                f"({type(e).__name__}: {reason:.100})"
            ) from None
        ckpt.restore_rng()

    def save(
        self,
        model: ElasticModel,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        policy: Policy,
        sharding: Sharding | None,
    ) -> Path | None:
        """Checkpoint everything a resumed run needs; returns its directory (None on ranks
        other than 0). Rank 0 writes, or with a sharded model and ``checkpoint_format:
        sharded`` every rank writes its shards; ``full`` gathers them first."""
        sharded = self.cfg.checkpoint_format == "sharded"
        if sharding is not None and not sharded:
            model, optimizer = sharding.gather(model, optimizer)
        if not self.ranks.main and not fsdp.is_sharded(model):
            return None
        return checkpoint.save(
            self.out,
            step=state["step"],
            model=model,
            optimizer=optimizer,
            config=self.cfg.to_dict(),
            tokenizer_json=self.tokenizer_json,
            task=self.task,
            trainer_state={
                **state,
                "policy": policy.state_dict(),
                "python_rng": random.getstate(),
            },
            keep=self.cfg.keep_checkpoints,
            sharded=sharded,
        )


def _tuple_state(state: Any) -> Any:
    """JSON turns Python's RNG state tuples into lists; turn them back."""
    return tuple(_tuple_state(s) for s in state) if isinstance(state, list) else state
