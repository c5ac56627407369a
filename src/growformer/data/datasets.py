"""Encoded data sets and batching: classification examples and LM token streams."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from growformer.errors import DataError


@dataclass
class ClassificationData:
    """Variable-length token sequences with one class label each.

    Args:
        ids: Token ids per example (unpadded, `[CLS]` first).
        labels: (N,) long class indices.
    """

    ids: list[list[int]]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class LMData:
    """One token stream (documents separated by `[EOS]`) cut into blocks for next-token training.

    Example `i` is `tokens[i*block : i*block+block+1]`: inputs are its first `block` tokens,
    targets its last `block`, so consecutive examples share one boundary token.

    Args:
        tokens: (L,) long token ids.
        block: Context length of one example.
    """

    tokens: Tensor
    block: int

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.block)


Data = ClassificationData | LMData


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffle: distinct for every (run seed, epoch) in use."""
    return seed * 1_000_003 + epoch


def collate(data: Data, indices: Tensor | list[int], pad_id: int) -> dict[str, Tensor]:
    """Assemble the examples at `indices` into a batch.

    Args:
        data: The data set.
        indices: Example indices, in batch order.
        pad_id: Id used to pad classification sequences to the longest in the batch.

    Returns:
        Classification: `input_ids` (B, T) long, `attention_mask` (B, T) bool (True = real
        token), `labels` (B,) long. LM: `input_ids` (B, block) long and `labels` (B, block)
        long where `labels[b, t]` is the token that follows `input_ids[b, t]`.
    """
    idx = torch.as_tensor(indices, dtype=torch.long)
    if isinstance(data, LMData):
        x = data.tokens[idx[:, None] * data.block + torch.arange(data.block + 1)]
        # Contiguous so callers can .view() them (e.g. flattening targets for the loss).
        return {"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()}
    seqs = [torch.tensor(data.ids[i], dtype=torch.long) for i in idx.tolist()]
    lengths = torch.tensor([len(s) for s in seqs])
    input_ids = pad_sequence(seqs, batch_first=True, padding_value=pad_id)
    mask = torch.arange(input_ids.shape[1]) < lengths[:, None]
    return {"input_ids": input_ids, "attention_mask": mask, "labels": data.labels[idx]}


class BatchStream:
    """Shuffled training batches where `batch(step)` depends only on `step`.

    Each epoch is a fresh seeded permutation cut into `batches_per_epoch` full batches (the
    remainder is dropped), so a run resumed at any step sees exactly the batches it would
    have seen without stopping.

    Args:
        data: The training set.
        batch_size: Examples per batch; if the set is smaller, every batch is the whole set.
        seed: Shuffling seed.
        pad_id: Padding id for classification batches.
    """

    def __init__(self, data: Data, batch_size: int, seed: int, pad_id: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if len(data) == 0:
            raise DataError("cannot draw training batches from an empty data set")
        self.data = data
        self.batch_size = batch_size
        self.seed = seed
        self.pad_id = pad_id
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    @property
    def batches_per_epoch(self) -> int:
        """Number of distinct batches before the order is reshuffled."""
        return max(1, len(self.data) // self.batch_size)

    def batch(self, step: int) -> dict[str, Tensor]:
        """The batch for training step `step` (see `collate` for the keys).

        Args:
            step: Zero-based global step.

        Returns:
            The batch.
        """
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        epoch, pos = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            self._perm = torch.randperm(len(self.data), generator=gen)
            self._epoch = epoch
        idx = self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        return collate(self.data, idx, self.pad_id)


def eval_batches(data: Data, batch_size: int, pad_id: int) -> Iterator[dict[str, Tensor]]:
    """Every example once, in order; the last batch may be smaller.

    Args:
        data: The data set.
        batch_size: Examples per batch.
        pad_id: Padding id for classification batches.

    Yields:
        Batches as returned by `collate`.
    """
    for start in _batch_starts(data, batch_size):
        yield collate(data, list(range(start, min(start + batch_size, len(data)))), pad_id)


def eval_batch_count(data: Data, batch_size: int) -> int:
    """How many batches :func:`eval_batches` yields (without making them)."""
    return len(_batch_starts(data, batch_size))


def _batch_starts(data: Data, batch_size: int) -> range:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return range(0, len(data), batch_size)
