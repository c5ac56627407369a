"""Unaligned consensus genomes in FASTA, aligned to MN908947.3 with minimap2 and called.

A surveillance lab's consensus genomes are not in reference coordinates: their ends are
trimmed, amplicons that did not amplify are runs of N, mixed sites are IUPAC ambiguity codes,
and deletions shorten them. Each record is aligned to the reference with minimap2 (through its
Python binding, ``mappy``) and its alignment read into a :class:`GenomeCall`: substitutions to
A, C, G or T; masked spans for the Ns, the ambiguity codes, the uncovered ends and any
reference stretch between alignment pieces; deletions. Quality control follows lineage tools:
a genome too short, mostly unread, with characters that are not nucleotides, or that does not
align fails with a one-line reason instead of getting a guessed call.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from growformer.data.files import text_lines
from growformer.data.sarscov2.genome import BASES, GENOME_LENGTH
from growformer.data.sarscov2.mutations import (
    QC_FAIL,
    GenomeCall,
    Mutation,
    Span,
    merge_spans,
)
from growformer.errors import ConfigError, DataError

PRESET = "map-ont"
"""minimap2 preset. Compared on 500 simulated consensus genomes (10-90 substitutions, up to 8
N runs of 50-5,000 nt, ambiguity codes, 3-21 nt deletions, 9-nt insertions, trimmed ends),
asm5, asm20 and map-ont all call every substitution outside the masked spans right; map-ont
aligns through N runs in one piece and masks the fewest bases that were read (~0.3 per genome
against ~3 with asm20, whose pieces split at N runs lose their ends and once a deletion),
at the same speed."""

MIN_READ_BASES = 20_000
"""A genome with fewer A/C/G/T (ambiguity codes and N excluded) fails QC as too short; about
two thirds of the 29,903-nt genome, the share below which lineage tools stop trusting a
call."""

MAX_MASKED_FRACTION = 0.5
"""A genome more than this share N or ambiguity codes, or whose masked spans (N, ambiguity
codes, uncovered reference) cover more than this share of the reference, fails QC: more than
half of it was not read."""

NUCLEOTIDE_CODES = frozenset("ACGTNRYKMSWBDHV-")
"""Characters a consensus genome may hold (upper-cased): bases, N, IUPAC ambiguity codes, and
the gap '-', which is dropped before alignment."""

# One operation of minimap2's short cs tag: a match run, a substitution (reference base, query
# base), an insertion to or a deletion from the reference. Query bases that are not A/C/G/T
# (N and every ambiguity code) appear as "n".
_CS_OP = re.compile(r":(\d+)|\*([acgtn])([acgtn])|([+-])([acgtn]+)")


def _mappy() -> Any:
    try:
        import mappy
    except ImportError:
        raise ConfigError(
            "aligning genomes needs minimap2's Python binding: pip install mappy "
            "(or pip install 'growformer[genomes]')"
        ) from None
    return mappy


class Aligner:
    """minimap2's index of the reference genome, built once and reused for every genome.

    Args:
        reference: MN908947.3, upper case (as :func:`~growformer.data.sarscov2.read_reference`
            reads it).
        preset: The minimap2 preset.

    Raises:
        ConfigError: mappy is not installed, or minimap2 cannot index the reference with the
            preset.
    """

    def __init__(self, reference: str, preset: str = PRESET) -> None:
        self.reference = reference
        self.preset = preset
        # First position of the reference's 3' poly-A tail (29,871 in MN908947.3).
        self.poly_a_start = len(reference.rstrip("A")) + 1
        self._index = _mappy().Aligner(seq=reference, preset=preset)
        if not self._index:
            raise ConfigError(f"minimap2 cannot index the reference with preset {preset!r}")

    def pieces(self, sequence: str) -> list[Any]:
        """The genome's primary and supplementary alignments (secondary ones left out), best
        first; each has ``r_st``/``r_en`` (0-based reference span), ``q_st``/``q_en``,
        ``strand`` and the ``cs`` tag."""
        return [hit for hit in self._index.map(sequence, cs=True) if hit.is_primary]


def _failed(name: str, note: str) -> GenomeCall:
    return GenomeCall(name, qc_status=QC_FAIL, qc_note=note)


def _read_piece(
    hit: Any, substitutions: list[Mutation], masked: list[Span], deletions: list[Span]
) -> tuple[int, int]:
    """Add one alignment piece's calls; (insertions, inserted bases)."""
    position = hit.r_st  # 0-based reference position of the next operation
    insertions = inserted = 0
    for match in _CS_OP.finditer(hit.cs):
        run, ref_base, query_base, indel, bases = match.groups()
        if run is not None:
            position += int(run)
        elif ref_base is not None:
            position += 1
            if query_base == "n":
                if masked and masked[-1][1] == position - 1:
                    masked[-1] = (masked[-1][0], position)
                else:
                    masked.append((position, position))
            else:
                substitutions.append((position, query_base.upper()))
        elif indel == "-":
            deletions.append((position + 1, position + len(bases)))
            position += len(bases)
        else:
            insertions += 1
            inserted += len(bases)
    if position != hit.r_en:
        raise DataError(
            f"minimap2's cs tag covers {position - hit.r_st} reference bases, "
            f"not {hit.r_en - hit.r_st}"
        )
    return insertions, inserted


def call_genome(name: str, sequence: str, aligner: Aligner) -> GenomeCall:
    """Align one consensus genome to MN908947.3 and read its substitutions, masked spans and
    deletions, with quality control.

    The genome fails QC (no substitutions, masked spans or deletions; the reason in
    ``qc_note``) when it holds characters other than nucleotide codes, is more than
    :data:`MAX_MASKED_FRACTION` N or ambiguity codes, has fewer than :data:`MIN_READ_BASES`
    A/C/G/T, or does not align. One whose masked spans cover more than
    :data:`MAX_MASKED_FRACTION` of the reference (a sequence aligning only in part) fails too
    but keeps what was read. A genome that aligns in
    several pieces (split at a long N run, say) gets the pieces' calls merged, the reference
    between them masked; a piece overlapping a better one is left out and named in the note.
    Insertions, reverse-complement input and query bases outside the alignment are noted.

    Args:
        name: The genome's name.
        sequence: Its nucleotides, any case; whitespace and gaps ('-') are ignored.
        aligner: The reference index.

    Returns:
        The call; a failed one has ``qc_status`` :data:`QC_FAIL`.
    """
    sequence = "".join(sequence.split()).upper()
    invalid = sorted(set(sequence) - NUCLEOTIDE_CODES)
    if invalid:
        shown = ", ".join(repr(c) for c in invalid[:10])
        return _failed(name, f"invalid characters {shown} (not IUPAC nucleotide codes)")
    sequence = sequence.replace("-", "")
    if not sequence:
        return _failed(name, "has no sequence")
    read = sum(sequence.count(base) for base in BASES)
    # Checked before the length: a full-length genome that is mostly N is reported as what it
    # is, not as short.
    if 1 - read / len(sequence) > MAX_MASKED_FRACTION:
        return _failed(
            name,
            f"too many Ns: {1 - read / len(sequence):.0%} of the sequence is N or ambiguity "
            f"codes, QC allows {MAX_MASKED_FRACTION:.0%}",
        )
    if read < MIN_READ_BASES:
        return _failed(
            name, f"too short: {read:,} unambiguous bases read, QC needs {MIN_READ_BASES:,}"
        )
    hits = aligner.pieces(sequence)
    if not hits:
        return _failed(name, "does not align to MN908947.3 (not SARS-CoV-2?)")
    notes: list[str] = []
    kept: list[Any] = []
    for hit in hits:
        if any(hit.r_st < other.r_en and other.r_st < hit.r_en for other in kept):
            notes.append(f"alignment piece at {hit.r_st + 1}-{hit.r_en} overlaps another, left out")
        else:
            kept.append(hit)
    kept.sort(key=lambda hit: hit.r_st)
    substitutions: list[Mutation] = []
    masked: list[Span] = []
    deletions: list[Span] = []
    insertions = inserted = 0
    covered_end = 0  # reference bases before it are covered by a piece or already masked
    for hit in kept:
        if hit.r_st > covered_end:
            masked.append((covered_end + 1, hit.r_st))
        try:
            counts = _read_piece(hit, substitutions, masked, deletions)
        except DataError as e:
            return _failed(name, str(e))
        insertions, inserted = insertions + counts[0], inserted + counts[1]
        covered_end = hit.r_en
    if covered_end < GENOME_LENGTH:
        masked.append((covered_end + 1, GENOME_LENGTH))
    # A consensus with a trimmed or shorter poly-A tail aligns with a gap inside the tail:
    # the tail's length was not read, so the gap is masked rather than called a deletion.
    tail = aligner.poly_a_start
    masked += [(max(first, tail), last) for first, last in deletions if last >= tail]
    deletions = [(first, min(last, tail - 1)) for first, last in deletions if first < tail]
    if insertions:
        notes.append(f"{insertions} insertion(s) of {inserted} nt in all")
    if kept[0].strand < 0:
        notes.append("reverse complement of the reference strand")
    outside = _unaligned_bases(sequence, kept)
    if outside:
        notes.append(f"{outside:,} unambiguous bases outside the alignment")
    call = GenomeCall(
        name,
        substitutions=tuple(sorted(substitutions)),
        masked=merge_spans(masked),
        deletions=tuple(sorted(deletions)),
    )
    if call.masked_fraction > MAX_MASKED_FRACTION:
        call.qc_status = QC_FAIL
        notes.insert(
            0,
            f"too many Ns: {call.masked_fraction:.0%} of the genome not read, QC allows "
            f"{MAX_MASKED_FRACTION:.0%}",
        )
    call.qc_note = "; ".join(notes)
    return call


def _unaligned_bases(sequence: str, hits: list[Any]) -> int:
    """A/C/G/T of the query in no alignment piece (soft-clipped ends, unaligned middles)."""
    outside, start = 0, 0
    for q_st, q_en in sorted((hit.q_st, hit.q_en) for hit in hits):
        if q_st > start:
            outside += sum(sequence.count(base, start, q_st) for base in BASES)
        start = max(start, q_en)
    return outside + sum(sequence.count(base, start) for base in BASES)


def read_genomes(
    path: str | Path, reference: str | Aligner, *, workers: int | None = None
) -> Iterator[GenomeCall]:
    """Call every genome of a FASTA file of unaligned consensus genomes, one at a time.

    The file may be gzip-compressed (recognised by its content, whatever its name). Each
    record's name is its header's first word. A malformed record (no name, no sequence, a name
    already used) yields a failed call saying so and the file goes on; every failed call's
    note starts with the record's line. Records are aligned on ``workers`` threads (minimap2
    releases the interpreter lock while it aligns), a few records ahead of the one yielded,
    so memory stays flat however long the file.

    Args:
        path: The FASTA file.
        reference: The reference index, or MN908947.3 to build one from (once for the file).
        workers: Alignment threads; None for one per CPU.

    Returns:
        An iterator of calls, in file order.

    Raises:
        ConfigError: mappy is not installed, or ``workers`` is below 1.
        DataError: The file is missing or unreadable (at once); while iterating, the file is
            not UTF-8 or gzip, or does not start with a '>' header.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    aligner = reference if isinstance(reference, Aligner) else Aligner(reference)
    lines = text_lines(path, "FASTA file")
    return _calls(Path(path), lines, aligner, workers)


def _calls(
    path: Path, lines: Iterator[tuple[int, str]], aligner: Aligner, workers: int
) -> Iterator[GenomeCall]:
    window: deque[tuple[int, Future[GenomeCall]]] = deque()
    seen: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for line, name, sequence in _records(path, lines):
            if not name:
                task = partial(_failed, "", "header has no name")
            elif name in seen:
                task = partial(
                    _failed, name, f"repeats the name of the record on line {seen[name]}"
                )
            elif not sequence:
                task = partial(_failed, name, "has no sequence")
            else:
                task = partial(call_genome, name, sequence, aligner)
            seen.setdefault(name, line)
            window.append((line, pool.submit(task)))
            if len(window) > 2 * workers:  # enough queued to keep every thread busy
                yield _located(*window.popleft())
        while window:
            yield _located(*window.popleft())


def _located(line: int, future: Future[GenomeCall]) -> GenomeCall:
    call = future.result()
    if call.qc_status == QC_FAIL:
        call.qc_note = f"line {line}: {call.qc_note}"
    return call


def _records(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str, str]]:
    """(header line, name, sequence) of each FASTA record."""
    header: tuple[int, str] | None = None
    chunks: list[str] = []
    for number, line in lines:
        if line.startswith(">"):
            if header is not None:
                yield header[0], header[1], "".join(chunks)
            words = line[1:].split(maxsplit=1)
            header, chunks = (number, words[0] if words else ""), []
        elif header is not None:
            chunks.append(line)
        elif line.strip():
            raise DataError(
                f"FASTA file {path} line {number}: sequence before the first '>' header "
                "(not a FASTA file?)"
            )
    if header is None:
        raise DataError(f"FASTA file {path} has no records")
    yield header[0], header[1], "".join(chunks)
