"""Helpers shared by the tasks: option checks, text encoding, a text classification task."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import torch

from growformer.data.datasets import ClassificationData, LMData
from growformer.data.tasks.spec import TaskData
from growformer.data.tokenizer import Tokenizer
from growformer.errors import ConfigError, DataError
from growformer.validation import bool_from, int_from, number_from


def int_option(task: str, key: str, value: Any, minimum: int) -> int:
    """An integer option, which may arrive as a string from a command line.

    Args:
        task: Task name, for the error message.
        key: Option name, for the error message.
        value: The option's value.
        minimum: Smallest value allowed.

    Returns:
        The integer.

    Raises:
        ConfigError: `value` is not an integer (booleans are not) of at least `minimum`.
    """
    n = int_from(value, strings=True)
    if n is None or n < minimum:
        raise ConfigError(f"task '{task}': {key} must be an integer >= {minimum}, got {value!r}")
    return n


def fraction_option(task: str, key: str, value: Any) -> float:
    """A fraction option strictly between 0 and 1 (a number or a numeric string).

    Args:
        task: Task name, for the error message.
        key: Option name, for the error message.
        value: The option's value.

    Returns:
        The fraction.

    Raises:
        ConfigError: `value` is not a number in (0, 1).
    """
    x = number_from(value, strings=True)
    if x is None or not 0.0 < x < 1.0:
        raise ConfigError(f"task '{task}': {key} must be a number in (0, 1), got {value!r}")
    return x


def path_option(task: str, key: str, value: Any) -> str | os.PathLike | None:
    """An optional path option.

    Args:
        task: Task name, for the error message.
        key: Option name, for the error message.
        value: The option's value.

    Returns:
        `value` unchanged: None, a path, or a non-blank string.

    Raises:
        ConfigError: `value` is anything else.
    """
    if (
        value is None
        or isinstance(value, os.PathLike)
        or (isinstance(value, str) and value.strip())
    ):
        return value
    raise ConfigError(f"task '{task}': {key} must be a file or directory path, got {value!r}")


def bool_option(task: str, key: str, value: Any) -> bool:
    """A boolean option, which may arrive as the string "true" or "false" from a command line.

    Args:
        task: Task name, for the error message.
        key: Option name, for the error message.
        value: The option's value.

    Returns:
        The boolean.

    Raises:
        ConfigError: `value` is neither a boolean nor "true" or "false" (any case).
    """
    b = bool_from(value, strings=True)
    if b is None:
        raise ConfigError(f"task '{task}': {key} must be true or false, got {value!r}")
    return b


def held_out(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of ``n`` examples: (training indices, validation indices), each in
    order, validation ``fraction`` of them (at least one, and at least one left to train).

    Args:
        n: Number of examples, at least 2.
        fraction: Share held out, in (0, 1).
        seed: Seed of the draw.
    """
    n_val = min(max(1, round(n * fraction)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    # Sorted so both splits keep the data's order; BatchStream shuffles training anyway.
    return sorted(perm[n_val:]), sorted(perm[:n_val])


def encode_classification(
    tokenizer: Tokenizer,
    texts: list[str],
    raw_labels: list[str],
    label_names: list[str],
    max_len: int,
    *,
    source: str = "data",
) -> ClassificationData:
    """Encode labelled texts with `[CLS]` first, truncated to `max_len` ids.

    Args:
        tokenizer: Tokenizer to encode with.
        texts: One text per example.
        raw_labels: One label name per example.
        label_names: Known labels; example label index = position in this list.
        max_len: Maximum ids per example, `[CLS]` included.
        source: What error messages call the data, e.g. "data file /x/dev.tsv".

    Returns:
        The encoded data.

    Raises:
        DataError: There are no examples, or a label is not in `label_names`.
    """
    if len(texts) != len(raw_labels):
        raise ValueError(f"{len(texts)} texts but {len(raw_labels)} labels")
    if not texts:
        raise DataError(f"{source} has no examples")
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(raw_labels) - index.keys())
    if unknown:
        raise DataError(
            f"{source} has label(s) {', '.join(repr(u) for u in unknown[:5])} not among the "
            f"known labels ({', '.join(label_names)})"
        )
    ids = tokenizer.encode(texts, add_cls=True, max_len=max_len)
    labels = torch.tensor([index[r] for r in raw_labels], dtype=torch.long)
    return ClassificationData(ids=ids, labels=labels)


def encode_lm(
    tokenizer: Tokenizer, text: str | Sequence[str], block: int, *, source: str = "text"
) -> LMData:
    """Encode text as one token stream, each document followed by `[EOS]`.

    Args:
        tokenizer: Tokenizer to encode with.
        text: One document, or a sequence of documents.
        block: Context length of an example.
        source: What error messages call the text, e.g. "text file /x/eval.txt".

    Returns:
        The encoded stream.

    Raises:
        DataError: The text yields fewer than `block + 1` tokens (not a single example).
    """
    docs = [text] if isinstance(text, str) else list(text)
    encoded = tokenizer.encode(docs, add_cls=False, max_len=None)
    stream = list(itertools.chain.from_iterable([*ids, tokenizer.eos_id] for ids in encoded))
    if len(stream) < block + 1:
        raise DataError(
            f"{source} has only {len(stream)} tokens, fewer than one example of {block + 1}"
        )
    return LMData(tokens=torch.tensor(stream, dtype=torch.long), block=block)


def classification_task(
    name: str,
    train: tuple[list[str], list[str]],
    val: tuple[list[str], list[str]],
    label_names: list[str],
    *,
    max_len: int,
    vocab_size: int,
    sources: tuple[str, str],
    info: dict[str, Any],
    tokenizer: Tokenizer | None = None,
) -> TaskData:
    """A text classification task: a BPE tokenizer trained on `train` (or the one given),
    both splits encoded.

    Args:
        name: Task name.
        train: Training texts and their label names.
        val: Validation texts and their label names.
        label_names: Known labels; example label index = position in this list.
        max_len: Maximum ids per example, `[CLS]` included.
        vocab_size: Target BPE vocabulary size.
        sources: What error messages call the training and the validation data.
        info: The task's `info`.
        tokenizer: Encode with this tokenizer (a pretrained model's) instead.

    Returns:
        The task.

    Raises:
        DataError: Fewer than two labels, no examples, or a label not in `label_names`.
    """
    if len(label_names) < 2:
        raise DataError(f"{sources[0]} has a single label {label_names!r}; need at least two")
    tokenizer = tokenizer or Tokenizer.train(train[0], vocab_size)
    return TaskData(
        name=name,
        kind="classification",
        train=encode_classification(tokenizer, *train, label_names, max_len, source=sources[0]),
        val=encode_classification(tokenizer, *val, label_names, max_len, source=sources[1]),
        tokenizer=tokenizer,
        num_labels=len(label_names),
        label_names=label_names,
        max_len=max_len,
        info=info,
    )
