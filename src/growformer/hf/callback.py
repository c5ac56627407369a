"""A ``transformers.TrainerCallback`` that runs a growformer structure policy inside
``transformers.Trainer``, through the same structural step as ``growformer train``."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.utils.hooks import RemovableHandle

# First: names the extra to install when transformers is missing or too old.
from growformer.hf.model import GrowformerPreTrainedModel

# isort: split
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from growformer import statistics
from growformer.distributed import DistributedError, Ranks, rebuild_in_place
from growformer.errors import ConfigError
from growformer.optim.state import check_supported
from growformer.policies import make_policy
from growformer.structure import Budget, StructuralStep, probe_loss


class GrowformerCallback(TrainerCallback, ExportableState):
    """Runs a growformer structure policy inside ``transformers.Trainer``.

    It runs the same :class:`growformer.structure.StructuralStep` as
    :class:`growformer.training.loop.Trainer`, in the Trainer's loop: before training, the
    policy calibrates on statistics of the first ``calibration_batches`` training batches;
    during each step's forward passes, the statistics the policy asked for are recorded;
    after the optimizer step, the policy's events are applied by :mod:`growformer.surgery`
    to the model and to the Trainer's optimizer (the state of surviving parameters is
    carried, new slices start at zero), unless they would exceed the budget.

    The model as given is where the structure starts (a policy's ``initial_arch`` is not
    applied). Under DDP (the Trainer launched by ``torchrun`` or ``accelerate launch``)
    every rank records the statistics of its own batches, the sums over the ranks are
    what the policy sees (calibration included), and the loss a change is measured by is
    the mean over the ranks, so every rank makes the same changes; after them the Trainer's
    DDP wrapper is rebuilt in place around the new parameters
    (:func:`growformer.distributed.rebuild_in_place`). Not under transformers' FSDP or
    DeepSpeed, which hold parameters of their own.

    The callback's state (the policy's, its events and statistics records) is saved in
    the Trainer's checkpoints. To resume, load the model from the checkpoint directory
    (it holds the grown structure, which the model as first built does not), and set
    ``TrainingArguments(restore_callback_states_from_checkpoint=True)``: the Trainer then
    replaces this callback by one restored from the checkpoint (find it in
    ``trainer.callback_handler.callbacks``).

    Args:
        policy: A policy name (``"incrt"``, ``"sgt"``, ``"a+b"``, see
            :func:`growformer.policies.make_policy`).
        options: The policy's options.
        max_params: Parameter budget: a structural change that would exceed it is refused
            (recorded in :attr:`stats`) and training goes on; None: no budget.
        max_heads_per_layer: Head budget of each layer, enforced the same way; None: none.

    Attributes:
        policy: The policy.
        events: The records of the structural changes, in order (as in ``events.jsonl``).
        stats: The refused requests and the policy's statistics records (as in
            ``stats.jsonl``).
    """

    def __init__(
        self,
        policy: str,
        options: dict[str, Any] | None = None,
        max_params: int | None = None,
        max_heads_per_layer: int | None = None,
    ) -> None:
        self._args = {
            "policy": policy,
            "options": options,
            "max_params": max_params,
            "max_heads_per_layer": max_heads_per_layer,
        }
        self.policy = make_policy(policy, options)
        self.structure = StructuralStep(self.policy, Budget(max_params, max_heads_per_layer))
        self.events: list[dict[str, Any]] = []
        self.stats: list[dict[str, Any]] = []
        self._calibrated = False
        self._capture: statistics.Capture | None = None
        self._batch: dict[str, Tensor] | None = None
        self._hooks: list[RemovableHandle] = []
        self._recording = contextlib.ExitStack()
        self._ranks = Ranks()
        # The Trainer's DDP wrapper around the model, seen in its first forward pass.
        self._wrapper: nn.parallel.DistributedDataParallel | None = None
        self._model: nn.Module | None = None

    def state(self) -> dict[str, Any]:
        """What the Trainer saves in its checkpoints' ``trainer_state.json`` (JSON)."""
        return {
            "args": self._args,
            "attributes": {
                "policy_state": self.policy_state,
                "events": self.events,
                "stats": self.stats,
                "_calibrated": self._calibrated,
            },
        }

    @property
    def policy_state(self) -> dict[str, Any]:
        """The policy's state (set by the Trainer when it restores the callback)."""
        return self.policy.state_dict()

    @policy_state.setter
    def policy_state(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state)

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        train_dataloader: Any = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(model, GrowformerPreTrainedModel):
            raise ConfigError(
                f"GrowformerCallback needs a growformer model, got {type(model).__name__}"
            )
        if args.world_size > 1 and (args.fsdp or args.deepspeed):
            raise ConfigError(
                "GrowformerCallback changes the model's structure under DDP, not under "
                "transformers' FSDP or DeepSpeed, which hold parameters of their own"
            )
        self._ranks = Ranks(args.process_index, args.world_size, args.local_process_index)
        if kwargs.get("optimizer") is not None:
            check_supported(kwargs["optimizer"])  # before training, not at the first change
        if self.policy.calibration_batches and not self._calibrated:
            self.structure.calibrate(model.elastic, train_dataloader, self._ranks.sum_)
            self._calibrated = True

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        needs = self.structure.needs(state.global_step)
        n_layers = len(model.elastic.transformer.layers)
        self._capture = statistics.Capture(n_layers, needs) if needs else None
        self._hooks = [
            model.register_forward_pre_hook(self._before_forward, with_kwargs=True),
            model.register_forward_hook(self._after_forward, always_call=True),
        ]
        if self._ranks.active and self._wrapper is None:
            self._model = model
            self._hooks.append(register_module_forward_pre_hook(self._find_wrapper))

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        **kwargs: Any,
    ) -> None:
        for hook in self._hooks:
            hook.remove()
        batch, ranks = self._batch, self._ranks

        def probe() -> float:
            """The loss as the Trainer computes it (through the wrapper), the mean over the
            ranks' batches."""
            return ranks.mean(probe_loss(model, batch))

        stats = {}
        if self._capture is not None:
            self._capture.reduce(ranks.sum_)
            stats = self._capture.results(model.elastic, probe)
        done = self.structure.after_step(
            model.elastic, optimizer, state.global_step, stats, lambda _changed: probe()
        )
        if done.events and ranks.active:
            ranks.check_same_structure(model.elastic)
            wrapper = self._wrapper
            if wrapper is None:
                raise DistributedError(
                    f"training runs in {ranks.world} processes but no DDP wrapper holds the "
                    "model: GrowformerCallback cannot pass the new parameters on"
                )
            rebuild_in_place(wrapper)
        self.events += [r.to_dict() for r in done.events]
        self.stats += done.refusals + done.stats
        self._capture = self._batch = None

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        """Keep the step's batch (to measure the changes by) and record its statistics."""
        inputs = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        self._batch = {k: v for k, v in inputs.items() if v is not None}
        if self._capture is not None:
            watch = self._capture.watch(module.elastic, inputs.get("attention_mask"))
            self._recording.enter_context(watch)

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        self._recording.close()

    def _find_wrapper(self, module: nn.Module, args: tuple) -> None:
        """Keep the DDP wrapper whose forward pass runs the model (the Trainer does not
        hand it to callbacks, and it must be rebuilt after a change)."""
        if isinstance(module, nn.parallel.DistributedDataParallel) and module.module is self._model:
            self._wrapper = module
