"""Training batches read from a stream of records as training goes, never held whole.

Each epoch reads the stream from its start (less the records kept for validation) through
a shuffle buffer: the first ``buffer`` records fill it, then every record read takes the
place of one drawn at random, which is emitted; at the end of the stream the buffer is
emitted in random order. The draws are seeded by (seed, epoch), so a run's batches depend
on its seed and step alone and a resumed run reads the same ones (it reads the stream
again up to where it stopped). A record is shuffled only with those at most ``buffer``
records away: a stream sorted by label needs a buffer larger than one label's run.

Memory: the buffer's records, one batch and (for a language model) one block of tokens.
"""

from __future__ import annotations

import itertools
import random
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from growformer.data.datasets import BatchStream, ClassificationData, Data, collate, epoch_seed
from growformer.data.records import Skipped, good_records
from growformer.data.tokenizer import Tokenizer
from growformer.errors import DataError

T = TypeVar("T")
# Records encoded together (one call into the tokenizer) when packing a language model's
# blocks: the per-call cost dominates for short records.
_ENCODE_CHUNK = 256
# Batches a stream keeps after producing them, so that the first steps can be asked for
# twice (the policy's calibration reads them before training does) without a second pass.
_RECENT = 32


def shuffled(items: Iterable[T], buffer: int, rng: random.Random) -> Iterator[T]:
    """``items`` in shuffle-buffer order (see the module docstring)."""
    held: list[T] = []
    for item in items:
        if len(held) < buffer:
            held.append(item)
            continue
        j = rng.randrange(buffer)
        yield held[j]
        held[j] = item
    rng.shuffle(held)
    yield from held


@dataclass
class StreamedData:
    """A training split read from a stream of records (see :mod:`growformer.data.records`).

    Args:
        source: The records; ``iter(source)`` must start over each time.
        tokenizer: Encodes the texts.
        label_index: Label name -> class index (a classifier), or None (a language model).
        max_len: Longest classifier input (``[CLS]`` included), or the LM block size.
        buffer: Records in the shuffle buffer.
        skip: Records at the stream's start that are the validation split.
        skipped: Where bad records are counted (an unknown label is one).
    """

    source: Iterable[object]
    tokenizer: Tokenizer
    label_index: dict[str, int] | None
    max_len: int
    buffer: int
    skip: int
    skipped: Skipped

    def records(self, seed: int, epoch: int) -> Iterator[tuple[str, str | None]]:
        """The good records' (text, label) of one epoch, in its shuffled order."""
        rows = itertools.islice(iter(self.source), self.skip, None)
        good = good_records(rows, self.label_index is not None, self.skipped, self.skip)
        rng = random.Random(epoch_seed(seed, epoch))
        for index, text, label in shuffled(good, self.buffer, rng):
            if label is None or self.label_index is None or label in self.label_index:
                yield text, label
            else:
                known = ", ".join(self.label_index)
                self.skipped.add(index, f"label {label!r} not among {known}")

    def examples(self, seed: int, epoch: int) -> Iterator[tuple[list[int], int]]:
        """One epoch's examples: (ids, class) for a classifier; for a language model, blocks
        of ``max_len + 1`` token ids (the records' tokens, each record followed by
        ``[EOS]``, packed) with class 0."""
        records = self.records(seed, epoch)
        if self.label_index is not None:
            index = self.label_index
            for chunk in _chunks(records, _ENCODE_CHUNK):
                texts = [text for text, _ in chunk]
                ids = self.tokenizer.encode(texts, add_cls=True, max_len=self.max_len)
                yield from zip(ids, (index[label] for _, label in chunk), strict=True)
            return
        block, tokens = self.max_len, []
        for chunk in _chunks(records, _ENCODE_CHUNK):
            for ids in self.tokenizer.encode([t for t, _ in chunk], add_cls=False, max_len=None):
                tokens += [*ids, self.tokenizer.eos_id]
            while len(tokens) > block:
                yield tokens[: block + 1], 0
                del tokens[:block]


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


class StreamBatches:
    """Training batches of a :class:`StreamedData`, ``batch(step)`` depending only on
    ``step`` (like :class:`growformer.data.BatchStream`): an epoch is one pass over the
    stream cut into full batches, the remainder dropped.

    Args:
        data: The stream.
        batch_size: Examples per batch.
        seed: Shuffling seed.
        pad_id: Padding id of classifier batches.
    """

    def __init__(self, data: StreamedData, batch_size: int, seed: int, pad_id: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data, self.batch_size, self.seed, self.pad_id = data, batch_size, seed, pad_id
        self._recent: OrderedDict[int, dict[str, Tensor]] = OrderedDict()
        self._restart(0)

    def _restart(self, step: int) -> None:
        """Read from the start of epoch 0; the next batch made is the one of ``step``."""
        self._epoch, self._next = 0, 0
        self._examples = self.data.examples(self.seed, 0)
        self._fresh_epoch = True
        while self._next < step:
            self._take()

    def _take(self) -> list[tuple[list[int], int]]:
        """The next batch's examples, passing into the next epoch when one ends."""
        while True:
            got = list(itertools.islice(self._examples, self.batch_size))
            if len(got) == self.batch_size:
                self._next += 1
                self._fresh_epoch = False
                return got
            if self._fresh_epoch:
                raise DataError(
                    f"train_data gives {len(got)} examples in a whole pass, fewer than one "
                    f"batch of {self.batch_size}"
                )
            self._epoch += 1
            self._examples = self.data.examples(self.seed, self._epoch)
            self._fresh_epoch = True

    def batch(self, step: int) -> dict[str, Tensor]:
        """The batch for training step ``step`` (keys as :func:`growformer.data.collate`)."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        if step in self._recent:
            return self._recent[step]
        if step < self._next:
            self._restart(step)
        while self._next < step:
            self._take()
        examples = self._take()
        made = _collate(examples, self.data.label_index is None, self.pad_id)
        self._recent[step] = made
        if len(self._recent) > _RECENT:
            self._recent.popitem(last=False)
        return made


def _collate(examples: list[tuple[list[int], int]], lm: bool, pad_id: int) -> dict[str, Tensor]:
    """The keys and shapes :func:`growformer.data.collate` gives for held data."""
    if lm:
        tokens = torch.tensor([ids for ids, _ in examples], dtype=torch.long)
        return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}
    labels = torch.tensor([label for _, label in examples], dtype=torch.long)
    data = ClassificationData(ids=[ids for ids, _ in examples], labels=labels)
    return collate(data, list(range(len(examples))), pad_id)


def train_batches(
    data: Data | StreamedData, batch_size: int, seed: int, pad_id: int
) -> BatchStream | StreamBatches:
    """The training batches of a held or a streamed split (same ``batch(step)`` contract)."""
    if isinstance(data, StreamedData):
        return StreamBatches(data, batch_size, seed, pad_id)
    return BatchStream(data, batch_size, seed, pad_id)
