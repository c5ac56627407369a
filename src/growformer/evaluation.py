"""Evaluation of a model on a whole data set: loss, accuracy and macro-F1 (classifiers) or
perplexity (language models), shared out over data-parallel ranks."""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from growformer.data import eval_batch_count, eval_batches
from growformer.distributed import Ranks
from growformer.errors import DataError
from growformer.model import ElasticModel


def evaluate(
    model: ElasticModel,
    data: Any,
    *,
    batch_size: int,
    pad_id: int,
    ranks: Ranks | None = None,
    lockstep: bool = False,
) -> dict[str, float]:
    """Loss, accuracy and macro-F1 (classification) or perplexity (LM) over all of ``data``.

    Args:
        model: The model (not a DDP wrapper: evaluation makes no collective call of its own).
        data: The examples.
        batch_size: Examples per batch.
        pad_id: Padding id for classification batches.
        ranks: Data-parallel ranks that share the work: each evaluates every
            ``world``-th batch and the sums are added up over the ranks, so that every
            rank returns the metrics of all of ``data``. None: this process does it all.
        lockstep: Every rank runs as many forward passes as the busiest (a sharded model
            gathers its weights in every pass, from all ranks): the others repeat a batch
            and drop its result.
    """
    ranks = ranks or Ranks()
    device = next(model.parameters()).device
    loss_sum, count, n = 0.0, 0, 0
    # confusion[label, prediction], for accuracy and per-class F1 (empty for language models).
    classes = model.arch.num_labels or 0
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    spare = 0
    if lockstep and ranks.active:
        # Known before any pass: a rank that finished would wait in a collective while
        # another's pass waits for it to gather weights.
        total = eval_batch_count(data, batch_size)
        spare = -(-total // ranks.world) - len(range(ranks.rank, total, ranks.world))
    with eval_mode(model):
        batches = eval_batches(data, batch_size, pad_id)
        for batch in itertools.islice(batches, ranks.rank, None, ranks.world):
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(batch["input_ids"], batch.get("attention_mask")).logits
            labels = batch["labels"]
            n += batch["input_ids"].shape[0]
            loss_sum += F.cross_entropy(
                logits.flatten(0, -2), labels.flatten(), reduction="sum"
            ).item()
            count += labels.numel()
            if model.kind == "classifier":
                confusion += confusion_matrix(labels.cpu(), logits.argmax(-1).cpu(), classes)
        if spare:
            batch = {
                k: v.to(device) for k, v in next(eval_batches(data, batch_size, pad_id)).items()
            }
            for _ in range(spare):
                model(batch["input_ids"], batch.get("attention_mask"))
    if ranks.active:
        sums = torch.tensor([loss_sum, count, n], dtype=torch.float64, device=device)
        confusion = confusion.to(device)
        ranks.sum_([sums, confusion])
        loss_sum, count, n = sums[0].item(), int(sums[1].item()), int(sums[2].item())
        confusion = confusion.cpu()
    if n == 0:
        raise DataError("evaluation data is empty")
    loss = loss_sum / count
    if model.kind == "classifier":
        return {
            "loss": loss,
            "accuracy": confusion.diag().sum().item() / count,
            "macro_f1": macro_f1(confusion),
            "n": n,
        }
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "n": n, "tokens": count}


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, classes: int) -> torch.Tensor:
    """``confusion[label, prediction]`` counts of (N,) label and prediction indices."""
    pairs = labels * classes + predictions
    return torch.bincount(pairs, minlength=classes * classes).view(classes, classes)


def class_f1(confusion: torch.Tensor) -> torch.Tensor:
    """F1 per class of ``confusion[label, prediction]`` (0 for a class never seen)."""
    seen = (confusion.sum(0) + confusion.sum(1)).double()
    return 2 * confusion.diag().double() / seen.clamp_min(1)


def macro_f1(confusion: torch.Tensor) -> float:
    """Mean F1 over the classes present in the labels or the predictions of
    ``confusion[label, prediction]`` (a class absent from both has no defined F1)."""
    present = (confusion.sum(0) + confusion.sum(1)) > 0
    return class_f1(confusion)[present].mean().item()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block without dropout, then restore the model's training mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
