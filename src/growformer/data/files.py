"""Reading user data files: labelled TSV/CSV tables, plain or gzipped text, with one-line
errors."""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterator
from pathlib import Path

from growformer.errors import DataError, existing_file, read_utf8

TEXT_COLUMNS: tuple[str, ...] = ("sentence", "text")  # the first one present is used
LABEL_COLUMN = "label"


GZIP_MAGIC = b"\x1f\x8b"  # a gzip stream's first two bytes, whatever the file is called


def text_lines(path: str | Path, what: str = "file") -> Iterator[tuple[int, str]]:
    """The lines of a UTF-8 text file, plain or gzip-compressed, read one at a time.

    Gzip is recognised by its magic bytes, so a compressed file without a ``.gz`` suffix (or a
    plain one with it) is read right. A leading byte-order mark is dropped. The file is opened
    before this returns, so a missing or unreadable file raises here; decoding errors raise
    while iterating, naming the line.

    Args:
        path: The file.
        what: How error messages call the file, e.g. "FASTA file".

    Returns:
        An iterator of (1-based line number, line without its line ending).

    Raises:
        DataError: The file is missing, a directory, unreadable, a corrupt or truncated gzip
            stream, or not UTF-8.
    """
    path = existing_file(path, what)
    try:
        with path.open("rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
    except OSError as e:
        raise DataError(f"{what} {path} cannot be read: {e.strerror}") from e
    return _decoded_lines(path, what, compressed)


def _decoded_lines(path: Path, what: str, compressed: bool) -> Iterator[tuple[int, str]]:
    number = 0
    with path.open("rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if compressed else raw
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline=None)
        try:
            for number, line in enumerate(text, 1):
                yield number, line.rstrip("\n")
        except UnicodeDecodeError as e:
            raise DataError(f"{what} {path} is not UTF-8 text (near line {number + 1})") from e
        except (OSError, EOFError, zlib.error) as e:
            # gzip.BadGzipFile is an OSError; a truncated stream ends in EOFError.
            raise DataError(
                f"{what} {path} cannot be read after line {number}: {e or 'truncated'}"
            ) from e


def _is_tsv(path: Path, text: str) -> bool:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return suffix == ".tsv"
    return "\t" in text.split("\n", 1)[0]


def _column_indices(path: Path, header: list[str], tsv: bool) -> tuple[int, int]:
    text_col = next((c for c in TEXT_COLUMNS if c in header), None)
    for name, col in (("'sentence' or 'text'", text_col), (f"'{LABEL_COLUMN}'", LABEL_COLUMN)):
        if col not in header:
            # A one-column header holding the other delimiter means the suffix picked the
            # wrong format, which is worth saying explicitly.
            other, kind = (",", "comma") if tsv else ("\t", "tab")
            hint = f" (is it {kind}-separated?)" if len(header) == 1 and other in header[0] else ""
            raise DataError(
                f"data file {path} has no {name} column (columns: {', '.join(header)}){hint}"
            )
    return header.index(text_col), header.index(LABEL_COLUMN)


def read_labeled(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a labelled table with a `sentence` or `text` column and a `label` column.

    `.tsv` files are tab-separated without quoting (GLUE style), `.csv` files are
    comma-separated with normal quoting, other suffixes are TSV if the header has a tab.
    Other columns are ignored; fields are stripped of surrounding whitespace; blank lines are
    skipped.

    Args:
        path: The file.

    Returns:
        The texts and the raw label strings, in file order.

    Raises:
        DataError: The file is missing, unreadable, not UTF-8, lacks the columns, has a row
            with the wrong number of fields or an empty text or label, or has no data rows.
    """
    path = Path(path)
    content = read_utf8(path, "data file")
    if not content.strip():
        raise DataError(f"data file {path} is empty")
    tsv = _is_tsv(path, content)
    dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    reader = csv.reader(io.StringIO(content, newline=""), **dialect)
    texts: list[str] = []
    labels: list[str] = []
    try:
        header = [h.strip().lower() for h in next(row for row in reader if row)]
        ti, li = _column_indices(path, header, tsv)
        end = reader.line_num
        for row in reader:
            # A quoted CSV field may span lines; report the line where the row starts.
            line, end = end + 1, reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                hint = " (unclosed quote?)" if any("\n" in field for field in row) else ""
                raise DataError(
                    f"data file {path} line {line} has {len(row)} field(s), "
                    f"expected {len(header)} like the header{hint}"
                )
            for col in (ti, li):
                if not row[col].strip():
                    raise DataError(f"data file {path} line {line} has an empty '{header[col]}'")
            texts.append(row[ti].strip())
            labels.append(row[li].strip())
    except csv.Error as e:
        raise DataError(f"data file {path} near line {reader.line_num} is malformed: {e}") from e
    if not texts:
        raise DataError(f"data file {path} has a header but no data rows")
    return texts, labels


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file (an LM evaluation corpus).

    Args:
        path: The file.

    Returns:
        Its contents.

    Raises:
        DataError: The file is missing, unreadable, not UTF-8 or empty.
    """
    path = Path(path)
    text = read_utf8(path, "text file")
    if not text.strip():
        raise DataError(f"text file {path} is empty")
    return text


def label_vocab(raw: list[str]) -> list[str]:
    """Sorted distinct label names; numerically sorted if all are integers ("2" < "10").

    Args:
        raw: Label strings as read from the data.

    Returns:
        The label names; label `i` of a model is `label_vocab(raw)[i]`.
    """
    names = set(raw)
    try:
        return sorted(names, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(names)
