"""Tasks ``file`` and ``lm`` on your own records (``train(..., train_data=, val_data=)``):
held and encoded when they fit in memory, streamed otherwise (see
:mod:`growformer.data.records` for what a record is, :mod:`growformer.data.streaming` for
how a stream is read).

Validation: ``val_data`` when given (always read whole); else, for held records,
``val_fraction`` of them (seeded), and for a stream its first ``val_records`` records, which
training then skips. The tokenizer is yours, or a byte-level BPE trained on the training
texts (of a stream: its first ``HEAD_RECORDS``). A classifier's labels are those of the
training and validation records (of a stream: of its first ``HEAD_RECORDS`` and the
validation records; a later record with another label is left out and counted).
"""

from __future__ import annotations

import itertools
from typing import Any

from growformer.data.datasets import LMData
from growformer.data.files import label_vocab
from growformer.data.records import Skipped, describe, is_streamed, read_all
from growformer.data.streaming import StreamedData
from growformer.data.tasks.common import (
    classification_task,
    encode_classification,
    encode_lm,
    fraction_option,
    held_out,
    int_option,
)
from growformer.data.tasks.spec import TaskData, TaskRequest
from growformer.data.tokenizer import Tokenizer
from growformer.errors import ConfigError, DataError

HEAD_RECORDS = 50_000
"""Records at a stream's start that its tokenizer is trained on and its labels read from."""

RECORD_OPTIONS: dict[str, Any] = {"shuffle_buffer": 10_000, "val_records": 1_000}
"""Options of the tasks that take records, used when ``train_data`` is streamed."""


def records_task(request: TaskRequest, *, labelled: bool) -> TaskData:
    """Task ``request.name`` on ``request.train_records`` (a classifier when ``labelled``,
    else a language model whose blocks are ``request.max_len`` tokens).

    Raises:
        ConfigError: The records are of no usable type, or a one-shot iterator.
        DataError: No good record is left (in either split), or fewer than two labels.
    """
    skipped = Skipped("train_data")
    info: dict[str, Any] = {"source": f"train_data: {describe(request.train_records)}"}
    if request.val_records is not None:
        info["val_source"] = f"val_data: {describe(request.val_records)}"
    if is_streamed(request.train_records):
        return _streamed(request, labelled, skipped, info)
    texts, labels = read_all(request.train_records, labelled, skipped)
    if request.val_records is None:
        fraction = fraction_option(request.name, "val_fraction", request.options["val_fraction"])
        if len(texts) < 2:
            raise DataError(f"train_data has too few good records ({len(texts)}) to hold out any")
        train_idx, val_idx = held_out(len(texts), fraction, request.seed)
        train = ([texts[i] for i in train_idx], [labels[i] for i in train_idx] if labels else [])
        val = ([texts[i] for i in val_idx], [labels[i] for i in val_idx] if labels else [])
        info["val_fraction"] = fraction
    else:
        train = texts, labels
        val = read_all(request.val_records, labelled, _val_skips(info))
    info["skipped_records"] = skipped.as_info()
    if labelled:
        return classification_task(
            request.name,
            train,
            val,
            label_vocab(train[1] + val[1]),
            max_len=request.max_len,
            vocab_size=request.vocab_size,
            sources=("train_data", "val_data"),
            info=info,
            tokenizer=request.tokenizer,
        )
    tokenizer = request.tokenizer or Tokenizer.train(train[0], request.vocab_size)
    return _lm_task(request, tokenizer, encode_lm(tokenizer, train[0], request.max_len), val, info)


def _val_skips(info: dict[str, Any]) -> Skipped:
    skipped = Skipped("val_data")
    info["skipped_val_records"] = skipped.counts  # filled as the records are read
    return skipped


def _streamed(
    request: TaskRequest, labelled: bool, skipped: Skipped, info: dict[str, Any]
) -> TaskData:
    source, name, opts = request.train_records, request.name, request.options
    if iter(source) is source:
        raise ConfigError(
            "train_data is a one-shot iterator (a generator?): a stream is read once per epoch "
            "and again on resume; pass an iterable whose iter() starts over (a class with "
            "__iter__ returning a new generator, or datasets.IterableDataset.from_generator)"
        )
    buffer = int_option(name, "shuffle_buffer", opts["shuffle_buffer"], 1)
    rows = iter(source)
    skip = 0
    if request.val_records is None:
        skip = int_option(name, "val_records", opts["val_records"], 1)
        val = read_all(itertools.islice(rows, skip), labelled, skipped)
        info["val_source"] = f"the first {skip} records of train_data"
    else:
        val = read_all(request.val_records, labelled, _val_skips(info))
    head = read_all(itertools.islice(rows, HEAD_RECORDS), labelled, skipped, skip)
    if not head[0]:
        raise DataError(f"train_data has no good record among its first {HEAD_RECORDS}")
    tokenizer = request.tokenizer or Tokenizer.train(head[0], request.vocab_size)
    info |= {"streamed": True, "shuffle_buffer": buffer}
    # The live counts: a stream's bad records are found as training reads it, and the
    # checkpoints written then record them.
    info["skipped_records"] = skipped.counts
    names = label_vocab(head[1] + val[1]) if labelled else None
    train = StreamedData(
        source=source,
        tokenizer=tokenizer,
        label_index=None if names is None else {n: i for i, n in enumerate(names)},
        max_len=request.max_len,
        buffer=buffer,
        skip=skip,
        skipped=skipped,
    )
    if names is None:
        return _lm_task(request, tokenizer, train, val, info)
    if len(names) < 2:
        raise DataError(f"train_data has a single label {names!r}; need at least two")
    return TaskData(
        name=name,
        kind="classification",
        train=train,
        val=encode_classification(tokenizer, *val, names, request.max_len, source="val_data"),
        tokenizer=tokenizer,
        num_labels=len(names),
        label_names=names,
        max_len=request.max_len,
        info=info,
    )


def _lm_task(
    request: TaskRequest,
    tokenizer: Tokenizer,
    train: LMData | StreamedData,
    val: tuple[list[str], list[str]],
    info: dict[str, Any],
) -> TaskData:
    return TaskData(
        name=request.name,
        kind="lm",
        train=train,
        val=encode_lm(tokenizer, val[0], request.max_len, source="validation records"),
        tokenizer=tokenizer,
        num_labels=None,
        label_names=None,
        max_len=request.max_len,
        info=info,
    )
