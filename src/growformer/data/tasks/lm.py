"""Causal language modelling on Python sources: the standard library's, or a directory's."""

from __future__ import annotations

import os
import sysconfig
import zlib
from pathlib import Path

from growformer.data.tasks.common import encode_lm, fraction_option, int_option
from growformer.data.tasks.records import RECORD_OPTIONS, records_task
from growformer.data.tasks.spec import TaskData, TaskRequest, TaskSpec
from growformer.data.tokenizer import Tokenizer
from growformer.errors import DataError, read_utf8

# Test suites and installed packages are not representative library code.
_STDLIB_SKIP_DIRS = frozenset({"site-packages", "test", "tests"})


def _find_files(root: Path, suffixes: tuple[str, ...], skip_dirs: frozenset[str]) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip_dirs]  # prune, don't just filter
        found += [Path(dirpath, f) for f in filenames if f.endswith(suffixes)]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _lm_documents(
    data_dir: str | Path | None, max_chars: int
) -> tuple[Path, list[tuple[str, str]]]:
    """(root, [(relative path, text)]) in sorted path order, until max_chars is reached."""
    if data_dir is None:
        root = Path(sysconfig.get_paths()["stdlib"])
        paths = _find_files(root, (".py",), _STDLIB_SKIP_DIRS)
    else:
        root = Path(data_dir)
        if not root.is_dir():
            raise DataError(f"LM data directory {root} does not exist or is not a directory")
        paths = _find_files(root, (".py", ".txt"), frozenset())
    docs: list[tuple[str, str]] = []
    total = 0
    for path in paths:
        if total >= max_chars:
            break
        try:
            text = read_utf8(path, "LM data file")
        except DataError:
            if data_dir is not None:
                raise
            continue  # an unreadable stdlib file is simply left out of the corpus
        if text.strip():
            docs.append((path.relative_to(root).as_posix(), text))
            total += len(text)
    return root, docs


def _load(request: TaskRequest) -> TaskData:
    """The lm task (see `LM`): split by file on a hash of its path, tokenizer trained on the
    training files."""
    if request.train_records is not None:
        return records_task(request, labelled=False)
    data_dir, opts = request.data_dir, request.options
    block, vocab_size = request.max_len, request.vocab_size
    max_chars = int_option("lm", "max_chars", opts["max_chars"], 1)
    val_fraction = fraction_option("lm", "val_fraction", opts["val_fraction"])
    root, docs = _lm_documents(data_dir, max_chars)
    # Split by file on a hash of its path: stable across machines and runs, and no held-out
    # text ever appears in training.
    is_val = [zlib.crc32(rel.encode()) % 1000 < val_fraction * 1000 for rel, _ in docs]
    train = [d for d, v in zip(docs, is_val, strict=True) if not v]
    val = [d for d, v in zip(docs, is_val, strict=True) if v]
    for split, split_docs in (("training", train), ("validation", val)):
        if not split_docs:
            raise DataError(
                f"LM corpus {root} has no {split} files ({len(docs)} files read; "
                f"raise max_chars or adjust val_fraction)"
            )
    tokenizer = request.tokenizer or Tokenizer.train([text for _, text in train], vocab_size)
    return TaskData(
        name="lm",
        kind="lm",
        train=encode_lm(tokenizer, [t for _, t in train], block, source=f"LM corpus {root}"),
        val=encode_lm(
            tokenizer, [t for _, t in val], block, source=f"LM validation files of {root}"
        ),
        tokenizer=tokenizer,
        num_labels=None,
        label_names=None,
        max_len=block,
        info={
            "source": str(root),
            "train_files": [rel for rel, _ in train],
            "val_files": [rel for rel, _ in val],
        },
    )


LM = TaskSpec(
    load=_load,
    options={"max_chars": 4_000_000, "val_fraction": 0.05, **RECORD_OPTIONS},
    files=("data_dir",),
    takes_tokenizer=True,
    takes_records=True,
)
"""The `.py` files of the Python standard library (tests and site-packages left out), or the
`.py` and `.txt` files under `data_dir`, up to `max_chars` characters, split by file. Or
your text records (`train(..., train_data=)`, see `growformer.data.tasks.records`), one
document each."""
