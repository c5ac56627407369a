"""Consensus genomes as a sequencing lab would have them, built from the tree's genotypes.

`genome_sequence` writes out a genotype as a full genome; `damage` then does to it what
amplicon sequencing does: ends not covered, amplicons that failed (runs of N), a few
deletions and ambiguity codes. Calling such genomes back (alignment, QC, the model) and
comparing with the tree's labels measures the whole path a user's file takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from growformer.data.sarscov2.genome import GENOME_LENGTH
from growformer.data.sarscov2.genotypes import AMPLICON_LENGTH
from growformer.data.sarscov2.mutations import Mutation

AMBIGUITY_CODES = "RYKMSW"


def genome_sequence(genotype: Sequence[Mutation], reference: str) -> str:
    """The genome with ``genotype``'s substitutions, reference bases elsewhere."""
    bases = list(reference)
    for position, base in genotype:
        bases[position - 1] = base
    return "".join(bases)


@dataclass(frozen=True)
class Damage:
    """How much of a genome a simulated sequencing run loses.

    Args:
        max_trim: Most bases cut from each end (uniform from 0).
        max_failed_amplicons: Most amplicons that fail (uniform from 0), each a run of N.
        max_deletions: Most deletions (uniform from 0), each of ``deletion_length`` bases.
        deletion_length: Bases per deletion (a multiple of 3 keeps the reading frame).
        ambiguous_sites: Single bases turned into an IUPAC ambiguity code.
    """

    max_trim: int = 150
    max_failed_amplicons: int = 4
    max_deletions: int = 2
    deletion_length: int = 9
    ambiguous_sites: int = 3


def damage(sequence: str, generator: torch.Generator, how: Damage = Damage()) -> str:
    """``sequence`` after a simulated sequencing run (see `Damage`), lower case at random.

    Args:
        sequence: A full-length genome.
        generator: Source of randomness.
        how: How much is lost.

    Returns:
        The damaged genome, shorter than the reference by its trimmed ends and deletions.
    """

    def uniform(high: int) -> int:
        return int(torch.randint(0, high + 1, (), generator=generator))

    bases = list(sequence)
    tiles = -(-GENOME_LENGTH // AMPLICON_LENGTH)
    failed = torch.randperm(tiles, generator=generator)[: uniform(how.max_failed_amplicons)]
    for tile in failed.tolist():
        start = tile * AMPLICON_LENGTH
        bases[start : start + AMPLICON_LENGTH] = ["N"] * len(bases[start : start + AMPLICON_LENGTH])
    for _ in range(how.ambiguous_sites):
        site = uniform(len(bases) - 1)
        if bases[site] != "N":
            bases[site] = AMBIGUITY_CODES[uniform(len(AMBIGUITY_CODES) - 1)]
    # Deleted last, from the end backwards, so earlier positions stay where they were.
    starts = sorted(uniform(len(bases) - 1000) + 500 for _ in range(uniform(how.max_deletions)))
    for start in reversed(starts):
        del bases[start : start + how.deletion_length]
    left, right = uniform(how.max_trim), uniform(how.max_trim)
    out = "".join(bases[left : len(bases) - right])
    return out.lower() if uniform(1) else out
