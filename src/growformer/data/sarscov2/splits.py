"""Train/test splits of labelled samples, each keeping identical inputs off both sides.

An input is what the model sees of a sample: a genotype (its substitutions) or a spike
protein. Three splits, each asking a different question:

- `split_by_sequence` (``genotype``): distinct inputs split at random within each class.
  Can the model call lineages it has seen, on genomes it has not?
- `split_by_lineage` (``lineage``): whole Pango lineages held out at random within each
  class. Can it place a lineage it has never seen under the right variant?
- `split_future` (``future``): within each class, the last-designated lineages held out
  (designation order from the alias table and the lineage names). Can a model trained on
  the past call what was designated after it?

Every split deduplicates: one example per distinct (input, label) on each side, and a test
input that is also a training input is dropped from the test side and counted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

Key = TypeVar("Key", bound=Hashable)


@dataclass
class SequenceSplit:
    """Train/test examples, with identical inputs never on both sides.

    Args:
        train: (input, label) examples for training.
        test: (input, label) examples for testing.
        info: Sizes per side: samples, distinct inputs and examples, the number of inputs
            whose samples carry different labels, and what the split held out.
    """

    train: list[tuple[Key, str]]
    test: list[tuple[Key, str]]
    info: dict[str, Any] = field(default_factory=dict)


def split_by_sequence(
    sequences: Sequence[Key],
    labels: Sequence[str],
    *,
    test_fraction: float,
    seed: int,
    dedup: bool,
) -> SequenceSplit:
    """Split samples into train and test by distinct sequence, stratified by label.

    Splitting samples would put copies of one sequence on both sides and score memory, not
    generalisation. Each distinct sequence goes to the class of its most frequent label, and
    each class's sequences are split on their own, so a class with two or more distinct
    sequences is represented on both sides.

    Args:
        sequences: Sequence per sample.
        labels: Label per sample.
        test_fraction: Share of each class's distinct sequences that go to test.
        seed: Seed of the shuffle.
        dedup: One example per distinct (sequence, label) instead of one per sample. Copies of
            a sequence carry no new information, only weight: in the lineage tree 42,213
            samples hold 5,469 distinct spikes, so common lineages would dominate training and
            the test score by sheer repetition.

    Returns:
        The examples, in a deterministic order.
    """
    by_sequence: dict[Key, Counter[str]] = defaultdict(Counter)
    for sequence, label in zip(sequences, labels, strict=True):
        by_sequence[sequence][label] += 1
    by_class: dict[str, list[Key]] = defaultdict(list)
    for sequence in sorted(by_sequence):
        counts = by_sequence[sequence]
        by_class[min(counts, key=lambda s: (-counts[s], s))].append(sequence)
    gen = torch.Generator().manual_seed(seed)
    test_sequences: set[Key] = set()
    for label in sorted(by_class):
        group = by_class[label]
        n = len(group)
        n_test = min(max(1, round(n * test_fraction)), n - 1) if n >= 2 else 0
        test_sequences.update(group[i] for i in torch.randperm(n, generator=gen)[:n_test].tolist())
    split = SequenceSplit([], [])
    samples = {"train": 0, "test": 0}
    for sequence in sorted(by_sequence):
        side = "test" if sequence in test_sequences else "train"
        examples = split.test if side == "test" else split.train
        for label, count in sorted(by_sequence[sequence].items()):
            examples.extend([(sequence, label)] * (1 if dedup else count))
            samples[side] += count
    split.info = {
        "train_samples": samples["train"],
        "test_samples": samples["test"],
        "train_sequences": len(by_sequence) - len(test_sequences),
        "test_sequences": len(test_sequences),
        "train_examples": len(split.train),
        "test_examples": len(split.test),
        "label_conflicting_sequences": sum(len(c) > 1 for c in by_sequence.values()),
    }
    return split


def split_by_lineage(
    sequences: Sequence[Key],
    labels: Sequence[str],
    lineages: Sequence[str],
    *,
    test_fraction: float,
    seed: int,
) -> SequenceSplit:
    """Hold out whole lineages, chosen at random within each class.

    Each class's lineages are shuffled and held out in that order until the test side holds
    at least ``test_fraction`` of the class's distinct inputs; a class with a single lineage
    stays in training.

    Args:
        sequences: Input per sample.
        labels: Label per sample.
        lineages: Pango lineage per sample.
        test_fraction: Share of each class's distinct inputs to hold out (at least).
        seed: Seed of the shuffle.

    Returns:
        The examples, deduplicated; ``info["held_out_lineages"]`` names the held-out ones.
    """
    gen = torch.Generator().manual_seed(seed)

    def order(group: list[str]) -> list[str]:
        return [group[i] for i in torch.randperm(len(group), generator=gen).tolist()]

    return _hold_out(sequences, labels, lineages, test_fraction, order)


def split_future(
    sequences: Sequence[Key],
    labels: Sequence[str],
    lineages: Sequence[str],
    designation: Callable[[str], tuple[int, ...]],
    *,
    test_fraction: float,
) -> SequenceSplit:
    """Hold out, within each class, the lineages designated last.

    Each class's lineages are held out from the last-designated backwards until the test
    side holds at least ``test_fraction`` of the class's distinct inputs; a class with a
    single lineage stays in training.

    Args:
        sequences: Input per sample.
        labels: Label per sample.
        lineages: Pango lineage per sample.
        designation: A lineage's place in designation order (larger: later), e.g.
            :func:`~growformer.data.sarscov2.lineages.designation_order`.
        test_fraction: Share of each class's distinct inputs to hold out (at least).

    Returns:
        The examples, deduplicated; ``info["held_out_lineages"]`` names the held-out ones.
    """
    return _hold_out(
        sequences,
        labels,
        lineages,
        test_fraction,
        lambda group: sorted(group, key=lambda s: (designation(s), s), reverse=True),
    )


def _hold_out(
    sequences: Sequence[Key],
    labels: Sequence[str],
    lineages: Sequence[str],
    test_fraction: float,
    order: Callable[[list[str]], list[str]],
) -> SequenceSplit:
    """Hold out lineages of each class in ``order`` until ``test_fraction`` of its inputs."""
    inputs_of: dict[str, set[Key]] = defaultdict(set)  # lineage -> its distinct inputs
    class_of: dict[str, Counter[str]] = defaultdict(Counter)  # lineage -> its labels
    for sequence, label, lineage in zip(sequences, labels, lineages, strict=True):
        inputs_of[lineage].add(sequence)
        class_of[lineage][label] += 1
    by_class: dict[str, list[str]] = defaultdict(list)
    for lineage in sorted(inputs_of):
        counts = class_of[lineage]
        by_class[min(counts, key=lambda s: (-counts[s], s))].append(lineage)
    held: set[str] = set()
    for label in sorted(by_class):
        group = by_class[label]
        if len(group) < 2:
            continue
        total = len(set().union(*(inputs_of[s] for s in group)))
        taken: set[Key] = set()
        for lineage in order(group)[: len(group) - 1]:  # one lineage always trains
            if len(taken) >= test_fraction * total:
                break
            held.add(lineage)
            taken |= inputs_of[lineage]
    train: Counter[tuple[Key, str]] = Counter()
    test: Counter[tuple[Key, str]] = Counter()
    for sequence, label, lineage in zip(sequences, labels, lineages, strict=True):
        (test if lineage in held else train)[sequence, label] += 1
    seen = {sequence for sequence, _ in train}
    kept = sorted(k for k in test if k[0] not in seen)
    split = SequenceSplit(sorted(train), kept)
    split.info = {
        "train_samples": sum(train.values()),
        "test_samples": sum(test[k] for k in kept),
        "train_sequences": len(seen),
        "test_sequences": len({sequence for sequence, _ in kept}),
        "train_examples": len(split.train),
        "test_examples": len(split.test),
        "test_inputs_seen_in_training": len({k[0] for k in test if k[0] in seen}),
        "held_out_lineages": sorted(held),
    }
    return split
