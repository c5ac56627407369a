"""Data parallelism under ``torchrun``: one process per rank, the same model on every rank.

Every rank draws the same global batch and trains on its own equal slice of it through
:class:`~torch.nn.parallel.DistributedDataParallel`; the statistics a policy decides from
are summed over the ranks first (:meth:`Ranks.sum_`), so every rank takes the same
decisions and applies the same structural events in the same order. After each event the
wrapper is rebuilt around the changed model (:meth:`Ranks.wrap`) and every rank checks
that its structure agrees with rank 0's (:meth:`Ranks.check_same_structure`). Rank 0
alone writes logs and checkpoints.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) this is one rank and every
method is a no-op.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from growformer.errors import ConfigError, GrowformerError
from growformer.model import ElasticModel
from growformer.validation import int_from

# How long a rank waits for the others at a collective before giving up (a dead peer is
# usually noticed at once, through its closed connection).
TIMEOUT = timedelta(minutes=10)


class DistributedError(GrowformerError, RuntimeError):
    """The ranks of a data-parallel run disagree or lost contact with each other."""


FOREIGN_LAUNCHERS = {
    "mpirun": "OMPI_COMM_WORLD_SIZE",
    "an MPI launcher": "PMI_SIZE",
    "srun": "SLURM_STEP_NUM_TASKS",  # the tasks of this job step, not of the allocation
}
"""Launchers that start several processes without torchrun's variables: the variable that
says how many."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job.

    Args:
        rank: Global rank (0 writes logs and checkpoints).
        world: Number of ranks.
        local_rank: Rank on this machine (the GPU it uses).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls) -> Ranks:
        """The ranks a launcher set in the environment: ``RANK``, ``WORLD_SIZE`` and
        ``LOCAL_RANK``, as ``torchrun`` and ``accelerate launch --multi_gpu`` (torchrun
        underneath, on CPU too) set them, ``MASTER_ADDR`` and ``MASTER_PORT`` read by
        ``torch.distributed``; one rank without them.

        Raises:
            ConfigError: The variables are incomplete or not integers, or another launcher
                (MPI, Slurm's ``srun``) started several processes without them: each would
                train alone into the same run directory.
        """
        if "WORLD_SIZE" not in os.environ:
            for launcher, variable in FOREIGN_LAUNCHERS.items():
                if int_from(os.environ.get(variable), strings=True) not in (None, 0, 1):
                    raise ConfigError(
                        f"{launcher} started {os.environ[variable]} processes ({variable}) "
                        "but not torchrun's RANK and WORLD_SIZE: each would train alone into "
                        "the same run; launch with torchrun or accelerate launch --multi_gpu"
                    )
            return cls()
        try:
            values = {k: int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        except (KeyError, ValueError) as e:
            raise ConfigError(f"torchrun environment is incomplete or invalid: {e}") from None
        return cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU on CUDA."""
        if self.active and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group (gloo on CPU, NCCL on CUDA), once per process."""
        if not self.active or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT)

    def shard(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """This rank's equal slice of a global batch (rows ``rank * n / world`` onwards)."""
        if not self.active:
            return batch
        n = batch["input_ids"].shape[0]
        if n % self.world:
            raise ConfigError(
                f"a global batch of {n} examples does not split evenly over {self.world} ranks"
            )
        size = n // self.world
        return {k: v[self.rank * size : (self.rank + 1) * size] for k, v in batch.items()}

    def wrap(self, model: ElasticModel) -> nn.Module:
        """The module to train through: ``model`` itself, or a DDP wrapper around it (built
        anew after every structural change, since DDP holds on to the parameters)."""
        if not self.active:
            return model
        on_gpu = next(model.parameters()).device.type == "cuda"
        device_ids = [self.local_rank] if on_gpu else None
        # The structural buffers (loop fade levels) change identically on every rank: no
        # need to send them at every forward pass.
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, forward_sync_buffers=False
        )

    def sum_(self, tensors: list[Tensor]) -> None:
        """Sum each tensor over the ranks, in place."""
        if self.active:
            for t in tensors:
                dist.all_reduce(t)

    def mean(self, value: float) -> float:
        """The mean of a number over the ranks."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t)
        return t.item() / self.world

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank."""
        return bool(self.most(int(flag)))

    def most(self, value: int) -> int:
        """The largest of an integer over the ranks."""
        if not self.active:
            return value
        t = torch.tensor([value], device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def check_same_structure(self, model: ElasticModel) -> None:
        """Raise :class:`DistributedError` unless every rank's architecture and parameter
        shapes are rank 0's."""
        if not self.active:
            return
        mine = fingerprint(model)
        prints: list[str | None] = [None] * self.world
        dist.all_gather_object(prints, mine)
        differ = [r for r, p in enumerate(prints) if p != prints[0]]
        if differ:
            raise DistributedError(
                f"ranks {differ} disagree with rank 0 on the model structure after a "
                f"structural event (fingerprints {prints}); the last checkpoint is intact"
            )

    def stop(self) -> None:
        """Leave the process group."""
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def _collective_device(self) -> torch.device:
        backend = dist.get_backend()
        return torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")


def rebuild_in_place(wrapper: nn.parallel.DistributedDataParallel) -> None:
    """Build a DDP wrapper again around its module's parameters as they are now, keeping
    the wrapper object (a training loop that holds it, such as transformers' Trainer's,
    goes on with it) and its settings; its old reducer, and with it the old parameters'
    gradient hooks, goes. Communication hooks registered on it must be registered again.

    Every rank calls it (it checks the parameter shapes across the ranks and broadcasts
    rank 0's module state).
    """
    settings = {
        "device_ids": wrapper.device_ids,
        "output_device": wrapper.output_device,
        "dim": wrapper.dim,
        "process_group": wrapper.process_group,
        "bucket_cap_mb": wrapper.bucket_bytes_cap / 2**20,
        "find_unused_parameters": wrapper.find_unused_parameters,
        "gradient_as_bucket_view": wrapper.gradient_as_bucket_view,
        "static_graph": wrapper.static_graph,
        "mixed_precision": wrapper.mixed_precision,
        "skip_all_reduce_unused_params": wrapper.skip_all_reduce_unused_params,
        "forward_sync_buffers": wrapper.forward_sync_buffers,
    }
    module = wrapper.module
    nn.parallel.DistributedDataParallel.__init__(wrapper, module, **settings)
    gc.collect()  # the old reducer is in reference cycles: drop its hooks now


def fingerprint(model: ElasticModel) -> str:
    """A short hash of the architecture and every parameter's name and shape."""
    shapes = [(n, list(p.shape)) for n, p in model.named_parameters()]
    text = json.dumps([model.arch.to_dict(), shapes], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
