"""What a task is to the registry: the request its loader gets, the data it returns, its spec."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from growformer.data.datasets import ClassificationData, LMData
from growformer.data.streaming import StreamedData
from growformer.data.tokenizer import Tokenizer

# The data inputs of `load_task`; a task names those it reads in `TaskSpec.files`.
FILE_INPUTS = ("data_dir", "data_file", "labels_file")


@dataclass
class TaskData:
    """A loaded task: encoded splits plus what a model needs to be built for it.

    Args:
        name: Task name as given to `load_task`.
        kind: "classification" or "lm".
        train: Training split (streamed: read as training goes).
        val: Validation split.
        tokenizer: Tokenizer fitted on the training split.
        num_labels: Number of classes (None for LM).
        label_names: Class `i` is `label_names[i]` (None for LM).
        max_len: Longest input sequence of the task (positions a model must support).
        info: Task-specific facts, e.g. the retrieval positions or the LM file split.
    """

    name: str
    kind: str
    train: ClassificationData | LMData | StreamedData
    val: ClassificationData | LMData
    tokenizer: Tokenizer
    num_labels: int | None
    label_names: list[str] | None
    max_len: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of the task's tokenizer."""
        return self.tokenizer.vocab_size


@dataclass(frozen=True)
class TaskRequest:
    """What `load_task` hands a task's loader.

    Args:
        name: The task's registered name.
        options: The task's options: its defaults overridden by the caller's. Values may be
            strings from a command line; the `common` module's `*_option` helpers check them.
        seed: Seed for generated data and random splits.
        max_len: Longest classification input (`[CLS]` included) or LM block size; at least 2.
        vocab_size: Target vocabulary size of a tokenizer trained on the data.
        data_dir: Directory of the task's files (always None unless the task reads one).
        data_file: The task's data file (always None unless the task reads one).
        labels_file: The task's labels file (always None unless the task reads one).
        tokenizer: A tokenizer to encode with instead of training one (a pretrained
            model's, or yours); only for tasks whose spec says ``takes_tokenizer``.
        train_records: Your training records instead of the task's files (see
            :mod:`growformer.data.tasks.records`); only for tasks whose spec says
            ``takes_records``.
        val_records: Your validation records (with ``train_records`` only).
    """

    name: str
    options: dict[str, Any]
    seed: int
    max_len: int
    vocab_size: int
    data_dir: str | Path | None = None
    data_file: str | Path | None = None
    labels_file: str | Path | None = None
    tokenizer: Tokenizer | None = None
    train_records: Any = None
    val_records: Any = None


@dataclass(frozen=True)
class EvalFormat:
    """How `growformer evaluate --data FILE --labels CSV` reads new examples of a task whose
    examples are not a labelled text table.

    Args:
        encode: `encode(tokenizer, task, max_len, data, labels)`: the examples in the file
            `data`, labelled by the file `labels`, encoded as the task encoded its training
            data, and facts about the file that evaluation reports beside its metrics
            (records that could not be scored, by reason). `task` is the checkpoint's task
            record (`name`, `label_names`, `info`) and `max_len` the model's longest input.
        usage: What such a checkpoint classifies and which files to pass; the error when
            `--labels` is missing reads "CHECKPOINT " followed by it.
    """

    encode: Callable[
        [Tokenizer, Mapping[str, Any], int, str, str], tuple[ClassificationData, dict[str, Any]]
    ]
    usage: str


@dataclass(frozen=True)
class TaskSpec:
    """A task that `load_task` can load: its loader, its options and the inputs it reads.

    Args:
        load: Builds the task from a `TaskRequest`; the `TaskData` it returns is named as the
            task was registered.
        options: Every option the task accepts, with its default; `load_task` rejects others.
        files: Which of "data_dir", "data_file" and "labels_file" the task reads; `load_task`
            rejects the others.
        evaluate: How `growformer evaluate` reads new data of the task; None (the default)
            reads a labelled text table for a classifier and plain text for a language model.
        takes_tokenizer: The task encodes text with any tokenizer it is given (a pretrained
            model's) instead of training its own; tasks with a vocabulary of their own
            (mutations, residues, symbols) refuse one.
        takes_records: The task reads your records (``train(..., train_data=)``) in place
            of its files.
    """

    load: Callable[[TaskRequest], TaskData]
    options: Mapping[str, Any] = field(default_factory=dict)
    files: Collection[str] = ()
    evaluate: EvalFormat | None = None
    takes_tokenizer: bool = False
    takes_records: bool = False
