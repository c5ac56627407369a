"""Genomes already called against MN908947.3: a VCF, or Nextclade's tabular results.

Both formats give each genome's differences from the reference in reference coordinates, so
no alignment is needed: each VCF sample (or a sample-less VCF as a whole) and each Nextclade
row becomes a :class:`GenomeCall`. Nothing is dropped silently: a record that cannot be used
at a site masks that site and is named in the genome's ``qc_note``; one that cannot be placed
at all, or a genome's row that cannot be read, makes that genome fail with the reason, and
the other genomes go on.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from growformer.data.files import text_lines
from growformer.data.sarscov2.genome import BASES, GENOME_LENGTH
from growformer.data.sarscov2.mutations import (
    QC_FAIL,
    GenomeCall,
    Mutation,
    Span,
    check_substitutions,
    merge_spans,
    mutation_name,
    outside_spans,
    parse_mutation,
)
from growformer.errors import DataError

REFERENCE_NAMES = frozenset({"MN908947.3", "MN908947", "NC_045512.2", "NC_045512"})
"""VCF chromosome names of the reference (GenBank and RefSeq accessions of Wuhan-Hu-1)."""

_GENOTYPE = re.compile(r"(?:\.|\d+)(?:[/|](?:\.|\d+))*")
_NOTE_LINES = 5  # line numbers a note lists before it only counts


@dataclass
class _Genome:
    """What is known of one genome while its file is read."""

    name: str
    substitutions: list[Mutation] = field(default_factory=list)
    masked: list[Span] = field(default_factory=list)
    deletions: list[Span] = field(default_factory=list)
    notes: dict[str, list[int]] = field(default_factory=dict)  # reason -> line numbers
    failure: str = ""

    def note(self, reason: str, line: int) -> None:
        self.notes.setdefault(reason, []).append(line)

    def fail(self, reason: str) -> None:
        self.failure = self.failure or reason  # the first reason is the one to fix first

    def call(self, reference: str) -> GenomeCall:
        if self.failure:
            return GenomeCall(self.name, qc_status=QC_FAIL, qc_note=self.failure)
        notes = []
        for reason, lines in self.notes.items():
            shown = ", ".join(str(n) for n in lines[:_NOTE_LINES])
            more = f" and {len(lines) - _NOTE_LINES} more" if len(lines) > _NOTE_LINES else ""
            notes.append(f"{reason} (line {shown}{more})")
        masked = merge_spans(self.masked)
        try:
            substitutions = check_substitutions(self.substitutions, f"genome '{self.name}'")
        except DataError as e:
            return GenomeCall(self.name, qc_status=QC_FAIL, qc_note=str(e))
        kept = outside_spans(substitutions, masked)
        if len(kept) < len(substitutions):
            hidden = sorted(set(substitutions) - set(kept))
            names = ", ".join(mutation_name(m, reference) for m in hidden[:_NOTE_LINES])
            notes.append(f"substitution(s) at masked sites left out: {names}")
        return GenomeCall(
            self.name,
            substitutions=kept,
            masked=masked,
            deletions=tuple(sorted(set(self.deletions))),
            qc_note="; ".join(notes),
        )


def _apply_allele(genome: _Genome, line: int, position: int, ref: str, alt: str) -> None:
    """Add what one ALT allele of a VCF record changes in the genome."""
    span = (position, position + len(ref) - 1)
    if alt == "*":  # the site lies in a deletion another record describes
        genome.masked.append(span)
    elif not alt or set(alt) - set(BASES):
        genome.masked.append(span)
        genome.note("ALT not A/C/G/T, site masked", line)
    elif len(alt) == len(ref):
        genome.substitutions += [
            (position + i, b) for i, (a, b) in enumerate(zip(ref, alt, strict=True)) if a != b
        ]
    elif len(ref) > len(alt) and ref.startswith(alt):
        genome.deletions.append((position + len(alt), span[1]))
    elif len(alt) > len(ref) and alt.startswith(ref):
        genome.note("insertion", line)
    else:
        genome.masked.append(span)
        genome.note("complex REF/ALT, site masked", line)


def _genotype_allele(text: str, alts: int) -> int | str | None:
    """The ALT index (1-based) a GT carries, 0 for the reference, None for a missing call,
    or a string saying why it cannot be used."""
    gt = text.split(":", 1)[0]
    if not _GENOTYPE.fullmatch(gt):
        return f"genotype {gt!r} is not a GT such as 1, 0/1 or 1|1"
    alleles = set(re.split(r"[/|]", gt))
    if "." in alleles:
        return None
    if len(alleles) > 1:
        return "mixed"
    allele = int(alleles.pop())
    if allele > alts:
        return f"genotype {gt!r} names ALT {allele} of {alts}"
    return allele


def read_vcf(path: str | Path, reference: str) -> Iterator[GenomeCall]:
    """Read the genomes of a VCF against MN908947.3 (plain or gzip-compressed).

    With sample columns, each sample is a genome carrying the ALT allele its GT names (1,
    1/1, 1|1, 2 ...); a missing GT ('.') or a mixed one (0/1) masks the site. Without them the
    file is one genome, named after the file, carrying every ALT (a record with several ALTs
    and no genotype to choose masks its site). SNVs and MNVs become substitutions, REF longer
    than ALT a deletion, insertions are counted in the note; an ALT of N, '*', a symbolic
    allele, a FILTER other than PASS, or a REF that is not the reference's bases masks the
    record's site and is noted. A VCF lists only differences, so uncovered regions are masked
    only as far as its records say. A record that cannot be read (too few columns, a position
    that is not a number or outside the genome) makes every genome of the file fail, as each
    may then lack a mutation; a sample's unreadable genotype fails that sample alone.

    Args:
        path: The VCF file.
        reference: MN908947.3, upper case.

    Returns:
        An iterator of the calls, in sample order (given once the file is read).

    Raises:
        DataError: The file is missing, unreadable, or has no '#CHROM' header line before its
            records.
    """
    path = Path(path)
    return _vcf_calls(path, text_lines(path, "VCF file"), reference)


def _vcf_calls(
    path: Path, lines: Iterator[tuple[int, str]], reference: str
) -> Iterator[GenomeCall]:
    header: list[str] | None = None
    genomes: list[_Genome] = []
    for number, line in lines:
        if line.startswith("##") or not line.strip():
            continue
        if line.startswith("#"):
            header = line[1:].rstrip("\r").split("\t")
            samples = header[9:]
            stem = path.name.removesuffix(".gz").removesuffix(".vcf")
            genomes = [_Genome(name) for name in samples] if samples else [_Genome(stem)]
            continue
        if header is None:
            raise DataError(f"VCF file {path} line {number}: record before the '#CHROM' header")
        _read_record(line.rstrip("\r").split("\t"), len(header), number, genomes, reference)
    if header is None:
        raise DataError(f"VCF file {path} has no '#CHROM' header line")
    for genome in genomes:
        yield genome.call(reference)


def _read_record(
    fields: list[str], columns: int, line: int, genomes: list[_Genome], reference: str
) -> None:
    """Add one VCF record to the genomes of the file."""
    problem = None
    if len(fields) != columns or len(fields) < 8:
        problem = f"has {len(fields)} column(s), the header {columns}"
    elif not fields[1].isdigit() or not 1 <= int(fields[1]) <= GENOME_LENGTH:
        problem = f"POS {fields[1]!r} is not a position in 1..{GENOME_LENGTH}"
    elif not fields[3] or set(fields[3].upper()) - set(BASES + "N"):
        problem = f"REF {fields[3]!r} is not nucleotides"
    if problem is not None:
        for genome in genomes:
            genome.fail(f"line {line}: VCF record {problem}")
        return
    chrom, position, ref = fields[0], int(fields[1]), fields[3].upper()
    alts = fields[4].upper().split(",")
    span = (position, min(position + len(ref) - 1, GENOME_LENGTH))
    if chrom not in REFERENCE_NAMES:
        for genome in genomes:
            genome.note(f"record on chromosome {chrom!r}, not MN908947.3, left out", line)
        return
    reason = None
    if reference[position - 1 : position - 1 + len(ref)] != ref:
        reason = f"REF disagrees with MN908947.3 ({reference[span[0] - 1 : span[1]]}), site masked"
    elif fields[6] not in ("PASS", "."):
        reason = f"FILTER {fields[6]}, site masked"
    if reason is not None:
        for genome in genomes:
            genome.masked.append(span)
            genome.note(reason, line)
        return
    if fields[4] == ".":  # no ALT: the site is the reference
        return
    if len(fields) <= 9:  # no samples (a FORMAT column or not): one genome carrying the ALT
        if len(alts) == 1:
            _apply_allele(genomes[0], line, position, ref, alts[0])
        else:
            genomes[0].masked.append(span)
            genomes[0].note("several ALTs and no genotype, site masked", line)
        return
    gt_first = fields[8].split(":")[0] == "GT"
    for genome, sample in zip(genomes, fields[9:], strict=True):
        allele = _genotype_allele(sample, len(alts)) if gt_first else "no GT"
        if allele == "mixed":
            genome.masked.append(span)
            genome.note("mixed genotype, site masked", line)
        elif allele == "no GT":
            genome.masked.append(span)
            genome.note("FORMAT has no GT first, site masked", line)
        elif isinstance(allele, str):
            genome.fail(f"line {line}: {allele}")
        elif allele is None:
            genome.masked.append(span)
        elif allele > 0:
            _apply_allele(genome, line, position, ref, alts[allele - 1])


def _spans(text: str, column: str) -> list[Span]:
    """The spans of a Nextclade list such as ``1-54,29837-29903`` (single positions allowed;
    ``nonACGTNs`` items carry a code and a colon, ``R:6000``)."""
    spans = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        bounds = item.rsplit(":", 1)[-1].split("-")
        if len(bounds) > 2 or not all(b.isdigit() for b in bounds):
            raise DataError(f"{column} item {item!r} is not a position or a range a-b")
        first, last = int(bounds[0]), int(bounds[-1])
        if not 1 <= first <= last <= GENOME_LENGTH:
            raise DataError(f"{column} range {item!r} is not inside 1..{GENOME_LENGTH}")
        spans.append((first, last))
    return spans


def read_nextclade(path: str | Path, reference: str) -> Iterator[GenomeCall]:
    """Read Nextclade's results table: TSV, or its CSV variant separated by ';'.

    Columns used (``seqName`` is required, the others may be absent): ``substitutions``
    (``C241T,C3037T``, each checked against the reference), ``deletions``, ``missing`` and
    ``nonACGTNs`` (positions or ranges; the last two become masked spans), ``alignmentStart``
    and ``alignmentEnd`` (the reference outside them is masked), ``qc.overallStatus`` (bad
    fails QC, mediocre is noted) and ``errors`` (a sequence Nextclade could not analyse
    fails). A row that cannot be read fails alone with the reason; the other rows go on.

    Args:
        path: The table (plain or gzip-compressed).
        reference: MN908947.3, upper case.

    Returns:
        An iterator of calls, one per row, in file order.

    Raises:
        DataError: The file is missing, unreadable, or its header has no ``seqName`` column
            (raised at once for a missing file, while iterating otherwise).
    """
    path = Path(path)
    return _nextclade_calls(path, text_lines(path, "Nextclade file"), reference)


def _nextclade_calls(
    path: Path, lines: Iterator[tuple[int, str]], reference: str
) -> Iterator[GenomeCall]:
    rows = ((number, line) for number, line in lines if line.strip())
    first = next(rows, None)
    if first is None:
        raise DataError(f"Nextclade file {path} is empty")
    delimiter = "\t" if "\t" in first[1] else ";"
    header = next(csv.reader([first[1]], delimiter=delimiter))
    if "seqName" not in header:
        raise DataError(f"Nextclade file {path} line {first[0]}: header has no 'seqName' column")
    for number, line in rows:
        values = next(csv.reader([line], delimiter=delimiter))
        row = dict(zip(header, values, strict=False))
        name = row.get("seqName", "").strip()
        if len(values) != len(header):
            call = GenomeCall(
                name,
                qc_status=QC_FAIL,
                qc_note=f"line {number}: {len(values)} column(s), the header {len(header)}",
            )
        else:
            try:
                call = _nextclade_row(row, name, reference)
            except DataError as e:
                call = GenomeCall(name, qc_status=QC_FAIL, qc_note=f"line {number}: {e}")
        yield call


def _nextclade_row(row: dict[str, str], name: str, reference: str) -> GenomeCall:
    """One Nextclade row's call; DataError if a column cannot be read."""
    if row.get("errors", "").strip():
        raise DataError(f"Nextclade could not analyse it: {row['errors'].strip()}")
    genome = _Genome(name)
    genome.substitutions = [
        parse_mutation(item, reference)
        for item in row.get("substitutions", "").split(",")
        if item.strip()
    ]
    genome.deletions = _spans(row.get("deletions", ""), "deletions")
    genome.masked = _spans(row.get("missing", ""), "missing") + _spans(
        row.get("nonACGTNs", ""), "nonACGTNs"
    )
    ends = [row.get(column, "").strip() for column in ("alignmentStart", "alignmentEnd")]
    if all(ends):
        start, end = _spans("-".join(ends), "alignmentStart-alignmentEnd")[0]
        genome.masked += [(1, start - 1)] if start > 1 else []
        genome.masked += [(end + 1, GENOME_LENGTH)] if end < GENOME_LENGTH else []
    call = genome.call(reference)
    status = row.get("qc.overallStatus", "").strip()
    if status == "bad" and call.qc_status != QC_FAIL:
        call.qc_status = QC_FAIL
        call.qc_note = "; ".join(filter(None, ["Nextclade QC status bad", call.qc_note]))
    elif status == "mediocre":
        call.qc_note = "; ".join(filter(None, ["Nextclade QC status mediocre", call.qc_note]))
    return call
