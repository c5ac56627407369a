"""Spike proteins as a task's input: the variable sites, the tokens and the tokenizer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from growformer.data.sarscov2.genome import PROTEIN_ALPHABET
from growformer.data.tokenizer import Tokenizer


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
