"""The structural step: statistics -> policy -> events -> surgery, one object that every
trainer runs (:class:`growformer.training.loop.Trainer` and the ``transformers`` callback
:class:`growformer.hf.callback.GrowformerCallback`).

Around each optimizer step a trainer asks :meth:`StructuralStep.needs` which statistics
to record, and after it hands them to :meth:`StructuralStep.after_step`. That applies the
fades that are over, then the policy's requests through :mod:`growformer.surgery`, each
first checked against the run's :class:`Budget` on the structure
:func:`growformer.surgery.predict` says it would leave. The trainer writes the records it
returns to its logs.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from growformer import surgery
from growformer.arch import Architecture
from growformer.errors import ConfigError, SurgeryError
from growformer.evaluation import eval_mode
from growformer.events import Event
from growformer.fsdp import Sharding
from growformer.model import ElasticModel, build_model
from growformer.policies import Policy
from growformer.policies.records import register_record_kind
from growformer.statistics import InputCapture, LayerStats, capture_inputs, layer_stats

Batch = dict[str, torch.Tensor]
SumOverRanks = Callable[[list[torch.Tensor]], None]


@dataclass(frozen=True)
class Budget:
    """Limits a structural change may not cross (a change that would is refused).

    Args:
        max_params: Most parameters of the model; None: no limit.
        max_heads_per_layer: Most heads of any layer; None: no limit.
    """

    max_params: int | None = None
    max_heads_per_layer: int | None = None

    @property
    def limited(self) -> bool:
        return self.max_params is not None or self.max_heads_per_layer is not None

    def exceeded_by(self, arch: Architecture, params: int | None = None) -> str | None:
        """Which limit ``arch`` exceeds, as a sentence; None if none. ``params``: its
        parameter count, if known (else counted when a limit needs it)."""
        cap = self.max_heads_per_layer
        if cap is not None:
            for i, layer in enumerate(arch.layers):
                if layer.heads > cap:
                    return f"layer {i} heads {layer.heads} > max_heads_per_layer {cap}"
        if self.max_params is not None:
            n = param_count(arch) if params is None else params
            if n > self.max_params:
                return f"params {n} > max_params {self.max_params}"
        return None

    def check_initial(self, arch: Architecture) -> None:
        """Raise :class:`ConfigError` if the structure training starts from is over budget."""
        reason = self.exceeded_by(arch)
        if reason is not None:
            raise ConfigError(f"the initial model is over budget: {reason}")


@dataclass
class StepRecords:
    """What one structural step did, for the trainer's logs.

    Args:
        model: The model to train on from now on: the one given, or with sharding, the
            changed model sharded anew.
        optimizer: Its optimizer (likewise).
        events: The records of the changes applied, in order (``events.jsonl``).
        refusals: A record per request the budget refused (``stats.jsonl``).
        stats: The policy's statistics records since the last step (``stats.jsonl``).
    """

    model: ElasticModel
    optimizer: torch.optim.Optimizer | None
    events: list[Event] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)


class StructuralStep:
    """The policy and budget of one run, and the step that changes its model's structure.

    Args:
        policy: The structure policy (it decides; surgery changes the model).
        budget: Limits on growth; None: none.
    """

    def __init__(self, policy: Policy, budget: Budget | None = None) -> None:
        self.policy = policy
        self.budget = budget or Budget()

    def calibrate(
        self, model: ElasticModel, batches: Iterable[Batch], sum_: SumOverRanks | None = None
    ) -> None:
        """Show the policy statistics of its ``calibration_batches`` first ``batches``
        (with ``sum_``, each rank's batches: the statistics of theirs together)."""
        n = self.policy.calibration_batches
        if n:
            first = itertools.islice(batches, n)
            self.policy.calibrate([layer_statistics(model, [b], sum_) for b in first])

    def needs(self, done: int) -> frozenset[str]:
        """The statistics to record during the step after ``done`` optimizer steps."""
        return self.policy.needs(done + 1)

    def after_step(
        self,
        model: ElasticModel,
        optimizer: torch.optim.Optimizer | None,
        step: int,
        stats: dict[str, Any],
        probe: Callable[[ElasticModel], float],
        sharding: Sharding | None = None,
    ) -> StepRecords:
        """Apply the structural changes due once ``step`` optimizer steps are done.

        First the fades that are over (:func:`surgery.advance`), then the policy's turns
        (:meth:`Policy.decide_from`); the records of each turn are shown to
        :meth:`Policy.observe` before the next turn is asked for, and the requests the
        budget refused to :meth:`Policy.refused`.

        Args:
            model: The model that surgery changes.
            optimizer: Its optimizer (the state of surviving parameters is carried), or None.
            step: Optimizer steps done.
            stats: The statistics captured during the step (name -> per-layer values).
            probe: The loss of the model it is given, by which a change is measured, just
                before and just after it (the record's ``loss_before`` and ``loss_after``).
            sharding: How ``model`` is sharded (None: it is not). Each change is made on
                its layer gathered, then sharded again with a new optimizer
                (:mod:`growformer.fsdp`); the records name the model and optimizer to go
                on with.
        """
        out = StepRecords(model, optimizer)
        turns = itertools.chain(
            [surgery.advance(model, step)], self.policy.decide_from(step, stats)
        )
        for requests in turns:
            records, refused = [], []
            for request in requests:
                request.step = step
                reason = self._refusal(out.model, request)
                if reason is not None:
                    out.refusals.append(
                        {
                            "kind": "budget.refused",
                            "step": step,
                            "op": request.op,
                            "layer": request.layer,
                            "refused": reason,
                        }
                    )
                    refused.append(request)
                    continue
                loss_before = probe(out.model)
                if sharding is None:
                    record = surgery.apply(out.model, out.optimizer, request)
                else:
                    change = functools.partial(surgery.apply, event=request)
                    out.model, out.optimizer, record = sharding.change(
                        out.model, out.optimizer, request.layer, change
                    )
                record.loss_before, record.loss_after = loss_before, probe(out.model)
                records.append(record)
            if refused:
                self.policy.refused(refused)
            if records:
                self.policy.observe(records)
                out.events += records
        out.stats = self.policy.drain_log()
        return out

    def _refusal(self, model: ElasticModel, request: Event) -> str | None:
        """Why the budget refuses ``request`` (it grows the model past a limit); None to
        apply it. A request surgery would reject is left for surgery to name."""
        if not self.budget.limited:
            return None
        try:
            after = surgery.predict(model.arch, request)
        except SurgeryError:
            return None
        params = param_count(after)
        layers = zip(after.layers, model.arch.layers, strict=True)
        grows = params > model.num_params() or any(new.heads > old.heads for new, old in layers)
        return self.budget.exceeded_by(after, params) if grows else None


register_record_kind("budget.refused", legacy_keys=frozenset({"refused"}))


def param_count(arch: Architecture) -> int:
    """Parameters of a model of ``arch``, counted without allocating its weights."""
    with torch.device("meta"):
        return build_model(arch).num_params()


@torch.no_grad()
def probe_loss(model: torch.nn.Module, batch: Batch) -> float:
    """The loss of ``model`` on ``batch`` without dropout (a structural change's jump)."""
    with eval_mode(model):
        return model(**batch).loss.item()


@torch.no_grad()
def layer_statistics(
    model: ElasticModel, batches: Iterable[Batch], sum_: SumOverRanks | None = None
) -> list[LayerStats]:
    """Layer statistics of ``model`` over ``batches`` (eval mode, no dropout); with
    ``sum_`` (see :meth:`growformer.distributed.Ranks.sum_`), over every rank's batches."""
    device = next(model.parameters()).device
    capture = InputCapture(len(model.transformer.layers))
    with eval_mode(model):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            with capture_inputs(model, batch.get("attention_mask"), capture):
                model(batch["input_ids"], batch.get("attention_mask"))
    if sum_ is not None:
        capture.reduce(sum_)
    return layer_stats(model, capture)
