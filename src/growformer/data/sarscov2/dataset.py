"""From labelled spike proteins to a task's examples: the split, the sites, the tokens."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from growformer.data.sarscov2.genome import PROTEIN_ALPHABET
from growformer.data.tokenizer import Tokenizer


@dataclass
class SequenceSplit:
    """Train/test examples, with identical sequences always on one side.

    Args:
        train: (sequence, label) examples for training.
        test: (sequence, label) examples for testing.
        info: Sizes per side: samples, distinct sequences and examples, and the number of
            sequences whose samples carry different labels.
    """

    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    info: dict[str, int] = field(default_factory=dict)


def split_by_sequence(
    sequences: Sequence[str],
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
    by_sequence: dict[str, Counter[str]] = defaultdict(Counter)
    for sequence, label in zip(sequences, labels, strict=True):
        by_sequence[sequence][label] += 1
    by_class: dict[str, list[str]] = defaultdict(list)
    for sequence in sorted(by_sequence):
        counts = by_sequence[sequence]
        by_class[min(counts, key=lambda s: (-counts[s], s))].append(sequence)
    gen = torch.Generator().manual_seed(seed)
    test_sequences: set[str] = set()
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


def variable_sites(sequences: Sequence[str], reference: str, min_count: int = 1) -> list[int]:
    """Positions where at least `min_count` of the distinct sequences differ from the reference.

    Args:
        sequences: Aligned sequences, each as long as `reference`.
        reference: The reference sequence.
        min_count: Distinct sequences that must differ at a position for it to be kept
            (more than 1 leaves out sites that a single sequence varies at).

    Returns:
        0-based positions, ascending.
    """
    counts: Counter[int] = Counter()
    for sequence in set(sequences):
        counts.update(i for i, (a, b) in enumerate(zip(sequence, reference, strict=True)) if a != b)
    return sorted(i for i, n in counts.items() if n >= min_count)


def spike_tokens(sequence: str, sites: Sequence[int] | None, k: int) -> list[str]:
    """A protein as tokens: the residues at `sites`, as overlapping k-mers.

    With `sites`, a k-mer joins consecutive kept sites, which need not be neighbours in the
    protein. `" ".join(tokens)` is the text form that `Tokenizer.encode` takes.

    Args:
        sequence: Protein sequence.
        sites: 0-based positions to keep, in order; None keeps all.
        k: Residues per token (1: one token per residue).

    Returns:
        The tokens.
    """
    kept = sequence if sites is None else "".join(sequence[i] for i in sites)
    return [kept[i : i + k] for i in range(len(kept) - k + 1)]


def spike_tokenizer(k: int, train_tokens: Sequence[Sequence[str]]) -> Tokenizer:
    """Word-level tokenizer of residues (k=1) or of the k-mers seen in training (k>1).

    Args:
        k: Residues per token.
        train_tokens: Training sequences as `spike_tokens` returns them (only read for k>1).

    Returns:
        The tokenizer; k-mers absent from training encode as `[UNK]`.
    """
    if k == 1:
        return Tokenizer.word_level(list(PROTEIN_ALPHABET))
    return Tokenizer.word_level(sorted({t for tokens in train_tokens for t in tokens}))
