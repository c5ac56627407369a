"""Genomes as sets of nucleotide substitutions against MN908947.3, and what a sequencing
run could not read.

A genome is its substitutions, each a 1-based reference position and the new base, named
as lineage tools name them: reference base, position, new base (``C241T``). Lineage
assignment needs nothing else: two genomes with the same substitutions get the same call.

What a user's genome adds is what is *unknown*: stretches of N (an amplicon that did not
amplify), ambiguity codes, the uncovered ends, and deletions. A :class:`GenomeCall` keeps
them apart from the substitutions, so a masked site is never read as the reference base and
never as a mutation.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from growformer.data.sarscov2.genome import (
    BASES,
    CODONS,
    GENOME_LENGTH,
    SPIKE_END,
    SPIKE_START,
    spike_of_genome,
)
from growformer.errors import DataError

Mutation = tuple[int, str]
"""(1-based position in MN908947.3, new base in ACGT)."""

Span = tuple[int, int]
"""(first, last) 1-based reference positions, both included."""

_NAME = re.compile(r"([ACGT])(\d+)([ACGT])")

QC_PASS = "pass"
QC_FAIL = "fail"


def mutation_name(mutation: Mutation, reference: str) -> str:
    """``C241T``: the reference base, the position, the new base."""
    position, base = mutation
    return f"{reference[position - 1]}{position}{base}"


def parse_mutation(name: str, reference: str) -> Mutation:
    """The mutation a name such as ``C241T`` stands for, checked against the reference.

    Raises:
        DataError: The name is not REF, position, ALT in ACGT; the position is outside the
            genome; its reference base is not the reference's; or REF equals ALT.
    """
    match = _NAME.fullmatch(name.strip().upper())
    if match is None:
        raise DataError(f"mutation {name!r} is not a substitution such as C241T")
    ref, position, alt = match.group(1), int(match.group(2)), match.group(3)
    if not 1 <= position <= GENOME_LENGTH:
        raise DataError(f"mutation {name!r}: position {position} is outside 1..{GENOME_LENGTH}")
    if reference[position - 1] != ref:
        raise DataError(
            f"mutation {name!r}: MN908947.3 has {reference[position - 1]} at {position}, not {ref}"
        )
    if ref == alt:
        raise DataError(f"mutation {name!r} does not change the base")
    return position, alt


@dataclass
class GenomeCall:
    """One user genome, read against MN908947.3.

    Args:
        name: The sequence's name (FASTA header's first word, VCF sample, Nextclade seqName).
        substitutions: Sorted substitutions at sites that were read.
        masked: Sorted, disjoint spans not read: runs of N, ambiguity codes, the uncovered
            ends. A substitution is never inside one.
        deletions: Sorted spans the genome lacks against the reference.
        qc_status: :data:`QC_PASS` or :data:`QC_FAIL` (the genome gets no call).
        qc_note: Why it failed, or what is worth knowing although it passed; "" if nothing.
    """

    name: str
    substitutions: tuple[Mutation, ...] = ()
    masked: tuple[Span, ...] = ()
    deletions: tuple[Span, ...] = ()
    qc_status: str = QC_PASS
    qc_note: str = ""

    @property
    def qc_reason(self) -> str:
        """What kind of QC failure it is, for counting: the note without its line, figures and
        details (``too many Ns``, ``too short``, ``invalid characters``); "" if it passed."""
        if self.qc_status != QC_FAIL:
            return ""
        note = re.sub(r"^line \d+: ", "", self.qc_note)
        return re.sub(r"'[^']*'", "", note.split(":")[0].split(" (")[0]).strip()

    @property
    def masked_fraction(self) -> float:
        """Share of the reference genome that was not read."""
        return sum(last - first + 1 for first, last in self.masked) / GENOME_LENGTH


def check_substitutions(mutations: Iterable[Mutation], where: str) -> tuple[Mutation, ...]:
    """Sorted substitutions, one per position, each a position in the genome and a base.

    Raises:
        DataError: A position is outside the genome, a base is not in ACGT, or a position
            carries two different bases (``where`` names the record).
    """
    by_position: dict[int, str] = {}
    for position, base in mutations:
        if not 1 <= position <= GENOME_LENGTH:
            raise DataError(f"{where}: position {position} is outside 1..{GENOME_LENGTH}")
        if base not in BASES:
            raise DataError(f"{where}: base {base!r} at {position} is not one of ACGT")
        if by_position.setdefault(position, base) != base:
            raise DataError(
                f"{where}: position {position} carries both {by_position[position]} and {base}"
            )
    return tuple(sorted(by_position.items()))


def merge_spans(spans: Iterable[Span]) -> tuple[Span, ...]:
    """Sorted, disjoint spans covering the same positions (touching spans joined)."""
    merged: list[list[int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return tuple((a, b) for a, b in merged)


def outside_spans(mutations: Sequence[Mutation], spans: Sequence[Span]) -> tuple[Mutation, ...]:
    """The mutations at no position of ``spans`` (both sorted; spans disjoint)."""
    kept, i = [], 0
    for mutation in mutations:
        while i < len(spans) and spans[i][1] < mutation[0]:
            i += 1
        if i == len(spans) or mutation[0] < spans[i][0]:
            kept.append(mutation)
    return tuple(kept)


def spike_protein(genotype: Sequence[Mutation], reference: str) -> str:
    """The spike protein of a genome with ``genotype``'s substitutions (`SPIKE_LENGTH`
    residues; codons holding a masked or deleted site are not known here: read against the
    reference)."""
    residues = list(_reference_spike(reference))
    changed: dict[int, str] = {p: b for p, b in genotype if SPIKE_START <= p < SPIKE_END}
    # Translation is codon-local: only codons holding a change differ from the reference.
    for codon in {(p - SPIKE_START) // 3 for p in changed}:
        first = SPIKE_START + 3 * codon
        nts = "".join(changed.get(p, reference[p - 1]) for p in range(first, first + 3))
        residues[codon] = CODONS[nts]
    return "".join(residues)


@lru_cache(maxsize=2)
def _reference_spike(reference: str) -> str:
    return spike_of_genome(reference)
