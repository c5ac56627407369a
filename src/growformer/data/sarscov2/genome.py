"""The reference genome and its spike gene: coordinates, the genetic code, translation."""

from __future__ import annotations

import itertools
from pathlib import Path

from growformer.errors import DataError, read_utf8

GENOME_LENGTH = 29_903  # Wuhan-Hu-1 (MN908947.3); user genomes must be aligned to it
SPIKE_START = 21_563  # 1-based genome position of the spike gene's first nucleotide
SPIKE_LENGTH = 1_273  # residues; the terminal stop codon is not one
ROOT_MUTATIONS: tuple[tuple[int, str], ...] = ((8_782, "T"), (28_144, "C"))
"""Lineage A, the tree's root, is the reference genome with these (position, base) changes."""

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
PROTEIN_ALPHABET = AMINO_ACIDS + "X*"  # X: unknown residue, *: stop codon
SPIKE_END = SPIKE_START + 3 * SPIKE_LENGTH  # 1-based, exclusive: the stop codon is not tracked
BASES = "ACGT"  # the tree's base codes 0..3
CODONS = {
    "".join(codon): aa
    for codon, aa in zip(
        itertools.product("TCAG", repeat=3),
        "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG",
        strict=True,
    )
}


def translate(nucleotides: str) -> str:
    """Translate a coding sequence with the standard genetic code.

    Args:
        nucleotides: Upper-case nucleotides, read in frame from the first; a trailing partial
            codon is ignored.

    Returns:
        One residue per codon: stops as "*", codons with N, gaps or ambiguity codes as "X".
    """
    return "".join(
        CODONS.get(nucleotides[i : i + 3], "X") for i in range(0, len(nucleotides) - 2, 3)
    )


def spike_of_genome(genome: str) -> str:
    """The spike protein of a reference-aligned genome (terminal stop excluded).

    Args:
        genome: Upper-case genome of `GENOME_LENGTH` nucleotides, aligned to MN908947.3.

    Returns:
        The `SPIKE_LENGTH` residues.
    """
    return translate(spike_nucleotides(genome))


def spike_nucleotides(genome: str) -> str:
    """The spike gene's coding nucleotides (stop codon excluded) of an aligned genome.

    Args:
        genome: Genome of `GENOME_LENGTH` nucleotides.

    Returns:
        Its `3 * SPIKE_LENGTH` spike nucleotides.
    """
    return genome[SPIKE_START - 1 : SPIKE_END - 1]


def read_reference(path: str | Path) -> str:
    """Read the reference genome MN908947.3 from a single-record FASTA file.

    Args:
        path: The FASTA file.

    Returns:
        The genome, upper case.

    Raises:
        DataError: The file is missing, not FASTA, or not a 29,903-nt ACGT genome.
    """
    path = Path(path)
    lines = read_utf8(path, "reference genome file").splitlines()
    if not lines or not lines[0].startswith(">"):
        raise DataError(f"reference genome file {path} is not FASTA (no '>' header on line 1)")
    genome = "".join(line.strip() for line in lines[1:] if not line.startswith(">")).upper()
    other = sorted(set(genome) - set(BASES))
    if len(genome) != GENOME_LENGTH or other:
        found = f"{len(genome):,} nucleotides" + (f" with {''.join(other)[:10]}" if other else "")
        raise DataError(
            f"reference genome file {path} is not MN908947.3: expected {GENOME_LENGTH:,} "
            f"nucleotides of ACGT, got {found}"
        )
    return genome
