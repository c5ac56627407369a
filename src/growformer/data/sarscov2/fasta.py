"""A user's spike proteins or aligned genomes in a FASTA file, labelled by a CSV file."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from growformer.data.sarscov2.genome import GENOME_LENGTH, PROTEIN_ALPHABET, spike_of_genome
from growformer.errors import DataError, read_utf8

# IUPAC ambiguity codes occur in real consensus genomes; codons holding them translate to X.
_NUCLEOTIDES = frozenset("ACGTNRYKMSWBDHV-")


@dataclass
class LabeledSequences:
    """Spike proteins with labels read from a user's FASTA and labels CSV.

    Args:
        ids: Record ids, in FASTA order.
        sequences: Spike protein per record (genomes translated).
        labels: Label per record.
        kind: "protein" or "genome": what the FASTA records were.
        dropped: One message per record or label row left out (only with skip_bad).
    """

    ids: list[str]
    sequences: list[str]
    labels: list[str]
    kind: str
    dropped: list[str] = field(default_factory=list)


@dataclass
class _Record:
    id: str
    line: int  # of the header
    chunks: list[tuple[int, str]]  # (line number, sequence text)


def _fasta_records(path: Path) -> list[_Record]:
    records: list[_Record] = []
    for number, line in enumerate(read_utf8(path, "FASTA file").splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith(">"):
            words = text[1:].split(maxsplit=1)
            records.append(_Record(words[0] if words else "", number, []))
        elif not records:
            raise DataError(
                f"FASTA file {path} line {number}: sequence before the first '>' header "
                "(not a FASTA file?)"
            )
        else:
            records[-1].chunks.append((number, text.upper()))
    if not records:
        raise DataError(f"FASTA file {path} is empty")
    return records


def _check_record(path: Path, record: _Record) -> tuple[str, str]:
    """(kind, spike protein) of a record; DataError if it is neither a genome nor a protein."""
    where = f"FASTA file {path} line {record.line}: record '{record.id}'"
    sequence = "".join(text for _, text in record.chunks)
    if not sequence:
        raise DataError(f"{where} has no sequence")
    # Proteins are ~30% A/C/G/T/N, genomes nearly all: the share tells the two apart even
    # when a record holds a few bad characters.
    nucleotide_share = sum(sequence.count(c) for c in "ACGTN-") / len(sequence)
    kind = "genome" if nucleotide_share > 0.9 else "protein"
    alphabet = _NUCLEOTIDES if kind == "genome" else frozenset(PROTEIN_ALPHABET)
    for number, text in record.chunks:
        bad = next((c for c in text if c not in alphabet), None)
        if bad is not None:
            raise DataError(
                f"FASTA file {path} line {number}: record '{record.id}' ({kind}) has bad "
                f"character {bad!r}"
            )
    if kind == "protein":
        # A terminal stop is notation, not a residue: genome translations leave it out too.
        return kind, sequence[:-1] if sequence.endswith("*") else sequence
    if len(sequence) != GENOME_LENGTH:
        raise DataError(
            f"{where} is a genome of {len(sequence):,} nt; genomes must be aligned to "
            f"MN908947.3 ({GENOME_LENGTH:,} nt)"
        )
    return kind, spike_of_genome(sequence)


def read_label_rows(path: Path, skip_bad: bool, dropped: list[str]) -> dict[str, tuple[str, int]]:
    """id -> (label, line) of a labels CSV with header `id,label`.

    Args:
        path: The CSV file.
        skip_bad: Record a bad row's message in ``dropped`` and go on, instead of raising.
        dropped: Where skipped rows are recorded.

    Raises:
        DataError: The file is missing, empty or malformed, has no `id` and `label` columns,
            or (without ``skip_bad``) a row is bad: wrong field count, empty, a repeated id.
    """
    content = read_utf8(path, "labels file")
    if not content.strip():
        raise DataError(f"labels file {path} is empty")
    reader = csv.reader(io.StringIO(content, newline=""))
    try:
        header = [h.strip().lower() for h in next(row for row in reader if row)]
        if "id" not in header or "label" not in header:
            raise DataError(
                f"labels file {path} line {reader.line_num}: header must name the columns "
                f"'id' and 'label', got {','.join(header)}"
            )
        ii, li = header.index("id"), header.index("label")
        rows: dict[str, tuple[str, int]] = {}
        end = reader.line_num
        for row in reader:
            line, end = end + 1, reader.line_num
            if not row:
                continue
            problem = None
            if len(row) != len(header):
                problem = f"has {len(row)} field(s), expected {len(header)}"
            elif not row[ii].strip() or not row[li].strip():
                problem = "has an empty id or label"
            elif row[ii].strip() in rows:
                problem = f"repeats id '{row[ii].strip()}' of line {rows[row[ii].strip()][1]}"
            if problem is not None:
                message = f"labels file {path} line {line} {problem}"
                if not skip_bad:
                    raise DataError(message)
                dropped.append(message)
                continue
            rows[row[ii].strip()] = (row[li].strip(), line)
    except csv.Error as e:
        raise DataError(f"labels file {path} near line {reader.line_num} is malformed: {e}") from e
    if not rows:
        raise DataError(f"labels file {path} has a header but no usable rows")
    return rows


def read_fasta_labels(
    fasta: str | Path, labels_csv: str | Path, *, skip_bad: bool = False
) -> LabeledSequences:
    """Read spike sequences and their labels from a FASTA file and a CSV file.

    The FASTA holds either spike proteins (amino acids, X and * allowed) or genomes aligned to
    MN908947.3 (exactly 29,903 nt; IUPAC ambiguity codes, N and - allowed), which are
    translated to their spike protein. The CSV has a header naming `id` and `label`. Record
    ids are the first word of each header line.

    Args:
        fasta: The FASTA file.
        labels_csv: The labels CSV.
        skip_bad: Leave out bad records and rows, listing each in `dropped`, instead of raising.

    Returns:
        The labelled sequences, in FASTA order.

    Raises:
        DataError: Naming the file, the line and the record: a bad character, a genome of the
            wrong length, protein and genome records mixed, a repeated id, a record without a
            label, labels without a record (their count), an empty file or a missing header.
            With skip_bad, only the file-level errors remain.
    """
    fasta, labels_csv = Path(fasta), Path(labels_csv)
    dropped: list[str] = []

    def reject(message: str) -> None:
        if not skip_bad:
            raise DataError(message)
        dropped.append(message)

    rows = read_label_rows(labels_csv, skip_bad, dropped)
    result = LabeledSequences([], [], [], kind="")
    first: dict[str, _Record] = {}
    first_valid: _Record | None = None  # its kind is the file's kind
    for record in _fasta_records(fasta):
        where = f"FASTA file {fasta} line {record.line}: record '{record.id}'"
        if not record.id:
            reject(f"FASTA file {fasta} line {record.line}: header has no id")
            continue
        if record.id in first:
            reject(f"{where} repeats the id of line {first[record.id].line}")
            continue
        first[record.id] = record
        try:
            kind, protein = _check_record(fasta, record)
        except DataError as e:
            reject(str(e))
            continue
        if first_valid is None:
            first_valid, result.kind = record, kind
        elif kind != result.kind:
            reject(
                f"{where} is a {kind} but record '{first_valid.id}' on line {first_valid.line} "
                f"is a {result.kind}; use one kind per file"
            )
            continue
        if record.id not in rows:
            reject(f"{where} has no label in labels file {labels_csv}")
            continue
        result.ids.append(record.id)
        result.sequences.append(protein)
        result.labels.append(rows[record.id][0])
    orphans = [(line, i) for i, (_, line) in rows.items() if i not in first]
    if orphans:
        orphans.sort()
        reject(
            f"labels file {labels_csv} has {len(orphans)} id(s) with no record in FASTA file "
            f"{fasta} (first: '{orphans[0][1]}' on line {orphans[0][0]})"
        )
    if not result.ids:
        raise DataError(f"FASTA file {fasta} has no usable labelled records")
    result.dropped = dropped
    return result
