"""GLUE SST-2 sentiment classification: from `data_dir`, $GROWFORMER_SST2_DIR, the data
beside the checkout or the Hub."""

from __future__ import annotations

import os
from pathlib import Path

from growformer.data.files import label_vocab, read_labeled
from growformer.data.shared import beside_checkout
from growformer.data.tasks.common import classification_task, int_option
from growformer.data.tasks.spec import TaskData, TaskRequest, TaskSpec
from growformer.errors import DataError

_SST2_HELP = (
    "pass --data-dir DIR with GLUE SST-2 train.tsv and dev.tsv (or set GROWFORMER_SST2_DIR)"
)


def _load(request: TaskRequest) -> TaskData:
    """The sst2 task (see `SST2`)."""
    opts, max_len, vocab_size = request.options, request.max_len, request.vocab_size
    limit = opts["train_limit"]
    limit = None if limit is None else int_option("sst2", "train_limit", limit, 1)
    data_dir = request.data_dir
    data_dir = data_dir if data_dir is not None else os.environ.get("GROWFORMER_SST2_DIR")
    data_dir = data_dir if data_dir is not None else beside_checkout("sst2")
    if data_dir is not None:
        train_path, val_path = Path(data_dir) / "train.tsv", Path(data_dir) / "dev.tsv"
        train, val = read_labeled(train_path), read_labeled(val_path)
        sources = (f"data file {train_path}", f"data file {val_path}")
    else:
        train, val = _sst2_from_hub()
        sources = ("SST-2 training split", "SST-2 validation split")
    train = (train[0][:limit], train[1][:limit])
    return classification_task(
        "sst2",
        train,
        val,
        label_vocab(train[1] + val[1]),
        max_len=max_len,
        vocab_size=vocab_size,
        sources=sources,
        info={"source": str(data_dir) if data_dir is not None else "huggingface:glue/sst2"},
        tokenizer=request.tokenizer,
    )


def _sst2_from_hub() -> tuple[tuple[list[str], list[str]], tuple[list[str], list[str]]]:
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise DataError(f"SST-2 not found and `datasets` is not installed: {_SST2_HELP}") from e
    try:
        ds = load_dataset("glue", "sst2")
    except Exception as e:  # offline, hub errors, cache corruption: all mean "not available"
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"SST-2 could not be downloaded ({reason}): {_SST2_HELP}") from e

    def split(s: str) -> tuple[list[str], list[str]]:
        return [t.strip() for t in ds[s]["sentence"]], [str(y) for y in ds[s]["label"]]

    return split("train"), split("validation")


SST2 = TaskSpec(
    load=_load, options={"train_limit": None}, files=("data_dir",), takes_tokenizer=True
)
"""GLUE SST-2 (binary sentiment) from `train.tsv` and `dev.tsv` in `data_dir`, else in
$GROWFORMER_SST2_DIR, else in ``shared/data/sst2`` beside the checkout
(:mod:`growformer.data.shared`), else from Hugging Face `datasets`. Option `train_limit`:
use only the first that many training sentences."""
