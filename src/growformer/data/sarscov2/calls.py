"""One entry point for a lab's genomes, whatever form they come in: the file's content, not
its name, says whether it holds consensus genomes (FASTA), variant calls (VCF) or
Nextclade's results table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from growformer.data.files import text_lines
from growformer.data.sarscov2.align import Aligner, read_genomes
from growformer.data.sarscov2.mutations import GenomeCall
from growformer.data.sarscov2.variants import read_nextclade, read_vcf
from growformer.errors import DataError


class Format(NamedTuple):
    """A file format genomes are read from.

    Args:
        detect: Whether a file's first non-blank line is this format's.
        read: Reads the file's calls, given the file and the reference (or its index).
    """

    detect: Callable[[str], bool]
    read: Callable[[Path, str | Aligner], Iterator[GenomeCall]]


def _reference(reference: str | Aligner) -> str:
    return reference.reference if isinstance(reference, Aligner) else reference


FORMATS: dict[str, Format] = {
    "FASTA": Format(lambda line: line.startswith(">"), read_genomes),
    "VCF": Format(
        lambda line: line.startswith(("##fileformat=VCF", "#CHROM")),
        lambda path, reference: read_vcf(path, _reference(reference)),
    ),
    "Nextclade": Format(
        lambda line: "seqName" in (c.strip('"') for c in line.replace(";", "\t").split("\t")),
        lambda path, reference: read_nextclade(path, _reference(reference)),
    ),
}
"""The formats :func:`read_calls` recognises, by name."""


def detect_format(path: str | Path) -> str:
    """The name in :data:`FORMATS` of the file's format, told by its first non-blank line.

    Raises:
        DataError: The file is missing, unreadable, empty, or none of the formats.
    """
    path = Path(path)
    first = next((line for _, line in text_lines(path, "genome file") if line.strip()), None)
    if first is None:
        raise DataError(f"genome file {path} is empty")
    for name, fmt in FORMATS.items():
        if fmt.detect(first):
            return name
    raise DataError(
        f"genome file {path} is not {', '.join(FORMATS)}: its first line starts {first[:40]!r}"
    )


def read_calls(path: str | Path, reference: str | Aligner) -> Iterator[GenomeCall]:
    """Read the genomes of a FASTA, VCF or Nextclade file (plain or gzip) as calls against
    MN908947.3.

    FASTA records are aligned (:func:`~growformer.data.sarscov2.align.read_genomes`), VCF and
    Nextclade results read as they are. Bad records yield failed calls naming them; the rest
    of the file goes on.

    Args:
        path: The file.
        reference: MN908947.3, upper case, or an :class:`Aligner` of it (reused across files
            to index the reference once).

    Returns:
        An iterator of the file's calls.

    Raises:
        DataError: The file is missing, unreadable, or not one of the formats (at once).
        ConfigError: A FASTA file, and mappy is not installed.
    """
    path = Path(path)
    return FORMATS[detect_format(path)].read(path, reference)
