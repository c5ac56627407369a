"""A user's labelled TSV/CSV table: a validation file of its own or a seeded held-out share."""

from __future__ import annotations

from growformer.data.files import label_vocab, read_labeled
from growformer.data.tasks.common import (
    classification_task,
    fraction_option,
    held_out,
    path_option,
)
from growformer.data.tasks.records import RECORD_OPTIONS, records_task
from growformer.data.tasks.spec import TaskData, TaskRequest, TaskSpec
from growformer.errors import ConfigError, DataError


def _load(request: TaskRequest) -> TaskData:
    """The file task (see `FILE`)."""
    if request.train_records is not None:
        return records_task(request, labelled=True)
    data_file, opts, seed = request.data_file, request.options, request.seed
    max_len, vocab_size = request.max_len, request.vocab_size
    if data_file is None:
        raise ConfigError(
            "task 'file' trains on your table: pass --data FILE (TSV/CSV with a text and a "
            "label column; data_file in a config), or train_data in Python"
        )
    texts, raw = read_labeled(data_file)
    source = f"data file {data_file}"
    val_file = path_option("file", "val_file", opts["val_file"])
    if val_file is not None:
        return classification_task(
            "file",
            (texts, raw),
            read_labeled(val_file),
            label_vocab(raw),
            max_len=max_len,
            vocab_size=vocab_size,
            sources=(source, f"data file {val_file}"),
            info={"source": str(data_file), "val_file": str(val_file)},
            tokenizer=request.tokenizer,
        )
    val_fraction = fraction_option("file", "val_fraction", opts["val_fraction"])
    n = len(texts)
    if n < 2:
        raise DataError(f"{source} has too few rows ({n}) to split off a validation set")
    train_idx, val_idx = held_out(n, val_fraction, seed)
    return classification_task(
        "file",
        ([texts[i] for i in train_idx], [raw[i] for i in train_idx]),
        ([texts[i] for i in val_idx], [raw[i] for i in val_idx]),
        # Label names come from the whole file: a rare class may land only in validation.
        label_vocab(raw),
        max_len=max_len,
        vocab_size=vocab_size,
        sources=(source, source),
        info={"source": str(data_file), "val_rows": len(val_idx)},
        tokenizer=request.tokenizer,
    )


FILE = TaskSpec(
    load=_load,
    options={"val_fraction": 0.1, "val_file": None, **RECORD_OPTIONS},
    files=("data_file",),
    takes_tokenizer=True,
    takes_records=True,
)
"""A labelled table in `data_file` (a `sentence` or `text` column and a `label` column);
`val_fraction` of its rows are held out, or `val_file` is the validation table. Or your
labelled records (`train(..., train_data=)`, see `growformer.data.tasks.records`)."""
