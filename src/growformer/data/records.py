"""Your own examples as Python records: what a record holds, how a collection of them is
told apart from a stream, and the tokenizer you bring.

A record is a mapping with a text under ``text`` (or ``sentence``) and, for a classifier,
a label under ``label`` (a string, or an integer that is read as its decimal string). In
memory (anything with ``len`` and integer indexing: a list of dicts, a map-style torch
``Dataset``, a Hugging Face ``datasets.Dataset``) the records are read once and encoded;
any other iterable (a generator, a torch ``IterableDataset``, a streamed
``datasets.IterableDataset``) is streamed (:mod:`growformer.data.streaming`).

A bad record (not a mapping, no text, an empty text, no label, a label of another type)
never stops a run: it is left out, counted by reason in the task's ``info``, and the first
of each reason is named in a warning.
"""

from __future__ import annotations

import numbers
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import tokenizers

from growformer.data.files import LABEL_COLUMN, TEXT_COLUMNS
from growformer.data.tokenizer import Tokenizer
from growformer.errors import ConfigError


class BadRecord(ValueError):
    """A record that cannot be an example; its message is the reason, one line."""


def is_streamed(data: object) -> bool:
    """Whether ``data`` is read as a stream rather than held: it lacks ``len`` or integer
    indexing, or it is a torch ``IterableDataset`` (whose base class defines indexing).

    Raises:
        ConfigError: ``data`` is a string, a mapping (columns rather than records) or not
            iterable at all.
    """
    if isinstance(data, str | bytes | Mapping):
        what = "a mapping (columns?)" if isinstance(data, Mapping) else "a string"
        raise ConfigError(
            f"training data must be records (mappings with 'text' and 'label'), got {what}; "
            "build a datasets.Dataset with Dataset.from_dict for columns"
        )
    # torch's and datasets' iterable data sets, and their subclasses (torch's base class
    # has an indexing method that raises).
    if any(c.__name__ == "IterableDataset" for c in type(data).__mro__):
        return True
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return False
    if not hasattr(data, "__iter__"):
        raise ConfigError(f"training data must be records, got {type(data).__name__}")
    return True


def describe(data: object) -> str:
    """What the data are, for the task's info: ``list of 5000 records``, ``generator``."""
    kind = type(data)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    return name if is_streamed(data) else f"{name} of {len(data)} records"  # type: ignore[arg-type]


def parse(record: object, labelled: bool) -> tuple[str, str | None]:
    """A record's text and label (None when ``labelled`` is false).

    Raises:
        BadRecord: The record cannot be an example (the message says why).
    """
    if not isinstance(record, Mapping):
        raise BadRecord(f"not a mapping ({type(record).__name__})")
    key = next((k for k in TEXT_COLUMNS if k in record), None)
    if key is None:
        raise BadRecord(f"no {' or '.join(map(repr, TEXT_COLUMNS))}")
    text = record[key]
    if not isinstance(text, str) or not text.strip():
        raise BadRecord(f"'{key}' is not a non-empty string")
    if not labelled:
        return text, None
    if LABEL_COLUMN not in record:
        raise BadRecord(f"no '{LABEL_COLUMN}'")
    return text, _label_name(record[LABEL_COLUMN])


def _label_name(label: object) -> str:
    """A label as a class name: a non-blank string, or an integer (Python's, NumPy's, or a
    one-element integer tensor, as a torch ``Dataset`` often gives) as its decimal string."""
    if hasattr(label, "item") and getattr(label, "ndim", 1) == 0:
        label = label.item()  # type: ignore[union-attr]
    # bool is an int subclass; True as a class name "True" would surprise.
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        return str(int(label))
    if isinstance(label, str) and label.strip():
        return label.strip()
    raise BadRecord(f"'{LABEL_COLUMN}' is not a string or an integer ({label!r:.40})")


class Skipped:
    """The bad records of one source, counted by reason; the first of each reason warned.

    Args:
        source: What the warnings call the data, e.g. "train_data".
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.counts: Counter[str] = Counter()
        # A stream is read again every epoch (and on resume): each record counts once.
        self._seen: set[int] = set()

    def add(self, index: int, reason: str) -> None:
        if index in self._seen:
            return
        self._seen.add(index)
        if not self.counts[reason]:
            warnings.warn(
                f"{self.source} record {index} left out: {reason} (further records left out "
                "for this reason are counted in the task's info, not warned)",
                stacklevel=2,
            )
        self.counts[reason] += 1

    def as_info(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def read_all(
    data: Iterable[object], labelled: bool, skipped: Skipped, start: int = 0
) -> tuple[list[str], list[str]]:
    """Every good record's text and label (an empty label list when not ``labelled``);
    ``start`` is the index of the first record (in the warnings)."""
    texts: list[str] = []
    labels: list[str] = []
    for _, text, label in good_records(data, labelled, skipped, start):
        texts.append(text)
        if label is not None:
            labels.append(label)
    return texts, labels


def good_records(
    data: Iterable[object], labelled: bool, skipped: Skipped, start: int = 0
) -> Iterator[tuple[int, str, str | None]]:
    """(index, text, label) of each good record of ``data``, in order, the first at index
    ``start``; bad ones counted."""
    for index, record in enumerate(data, start):
        try:
            text, label = parse(record, labelled)
        except BadRecord as e:
            skipped.add(index, str(e))
        else:
            yield index, text, label


def as_tokenizer(tokenizer: Any) -> Tokenizer:
    """Your tokenizer as growformer's: a :class:`Tokenizer`, a ``tokenizers.Tokenizer`` or a
    transformers fast tokenizer (its ``backend_tokenizer``), copied so that yours is left as
    it was, without its post-processor. Its special tokens are found by role
    (``SpecialTokens.of``).

    Raises:
        ConfigError: It is none of these (a slow transformers tokenizer has no backend).
        DataError: Its vocabulary has no token for padding, ``[CLS]`` or end of sequence.
    """
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if not isinstance(backend, tokenizers.Tokenizer):
        raise ConfigError(
            f"tokenizer must be a tokenizers.Tokenizer or a transformers fast tokenizer, got "
            f"{type(tokenizer).__name__} (load it with use_fast=True)"
        )
    copy = tokenizers.Tokenizer.from_str(backend.to_str())
    # Unused (growformer inserts the special tokens itself), and transformers rewrites it
    # when a special token is looked up: left in, the same tokenizer would read as another
    # one on resume.
    copy.post_processor = None
    return Tokenizer(copy)
