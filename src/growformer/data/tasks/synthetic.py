"""Synthetic classification tasks with a known answer: retrieval and channels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from growformer.data.datasets import ClassificationData
from growformer.data.tasks.common import int_option
from growformer.data.tasks.spec import TaskData, TaskRequest, TaskSpec
from growformer.data.tokenizer import Tokenizer
from growformer.errors import ConfigError

# Label rules of the retrieval task.
RETRIEVAL_LABELS = ("sum_mod", "count", "tuple")
# More classes than this cannot be a classifier's output layer (nor listed as label names).
MAX_TUPLE_LABELS = 1 << 20


def _generated(
    name: str,
    make: Callable[[int], ClassificationData],
    n_train: int,
    n_val: int,
    **fields: Any,
) -> TaskData:
    """A generated classification task; ``make(n)`` draws n examples, training split first
    (so a seed gives the same splits)."""
    train = make(n_train)
    return TaskData(name=name, kind="classification", train=train, val=make(n_val), **fields)


def _load_retrieval(request: TaskRequest) -> TaskData:
    """The retrieval task (see `RETRIEVAL`): positions, marks and examples drawn from `seed`."""
    opts, seed, max_len = request.options, request.seed, request.max_len
    seq_len = int_option("retrieval", "seq_len", opts["seq_len"], 1)
    k = int_option("retrieval", "k", opts["k"], 1)
    if k > seq_len:
        raise ConfigError(f"task 'retrieval': k={k} exceeds seq_len={seq_len}")
    if max_len < seq_len + 1:
        raise ConfigError(
            f"task 'retrieval': max_len {max_len} is shorter than seq_len+1 = {seq_len + 1}"
        )
    symbols = int_option("retrieval", "symbols", opts["symbols"], 2)
    rule = opts["label"]
    if rule not in RETRIEVAL_LABELS:
        raise ConfigError(
            f"task 'retrieval': label must be one of {', '.join(RETRIEVAL_LABELS)}, got {rule!r}"
        )
    if rule == "tuple" and symbols**k > MAX_TUPLE_LABELS:
        raise ConfigError(
            f"task 'retrieval': label 'tuple' with symbols={symbols}, k={k} has symbols^k "
            f"classes, more than {MAX_TUPLE_LABELS:,}"
        )
    fixed = {"count": (k + 1, "k+1"), "tuple": (symbols**k, "symbols^k")}
    num_labels = fixed[rule][0] if rule in fixed else 2
    if opts["num_labels"] is not None:
        num_labels = int_option("retrieval", "num_labels", opts["num_labels"], 2)
        if rule in fixed and num_labels != fixed[rule][0]:
            raise ConfigError(
                f"task 'retrieval': label '{rule}' has {fixed[rule][1]} = {fixed[rule][0]} "
                f"classes, not num_labels={num_labels}"
            )
    n_train = int_option("retrieval", "n_train", opts["n_train"], 1)
    n_val = int_option("retrieval", "n_val", opts["n_val"], 1)

    gen = torch.Generator().manual_seed(seed)
    positions = torch.randperm(seq_len, generator=gen)[:k].sort().values
    tokenizer = Tokenizer.word_level([f"s{i}" for i in range(symbols)])
    # Each position marks its own random half of the alphabet, so a symbol counts or not
    # depending on where it stands: a head that averages two positions cannot tell.
    marks = torch.stack([torch.randperm(symbols, generator=gen) < symbols // 2 for _ in range(k)])

    def make(n: int) -> ClassificationData:
        seqs = torch.randint(symbols, (n, seq_len), generator=gen)
        texts = [" ".join(f"s{i}" for i in row) for row in seqs.tolist()]
        picked = seqs[:, positions]
        if rule == "count":
            labels = marks[torch.arange(k), picked].sum(dim=1)
        elif rule == "tuple":
            labels = (picked * symbols ** torch.arange(k)).sum(dim=1)
        else:
            labels = picked.sum(dim=1) % num_labels
        return ClassificationData(tokenizer.encode(texts, add_cls=True, max_len=None), labels)

    return _generated(
        "retrieval",
        make,
        n_train,
        n_val,
        tokenizer=tokenizer,
        num_labels=num_labels,
        label_names=[str(i) for i in range(num_labels)],
        # Sequences have a fixed length, so that is all the positions a model needs.
        max_len=seq_len + 1,
        info={
            "positions": positions.tolist(),
            "k": k,
            "seq_len": seq_len,
            "symbols": symbols,
            "label": rule,
            **({"marks": marks.int().tolist()} if rule == "count" else {}),
        },
    )


def _load_channels(request: TaskRequest) -> TaskData:
    """k channels: channel c is ``m0`` tokens ``c{c}-`` and ``m1`` tokens ``c{c}+``
    (``m0 != m1``, each uniform in 1..max_count), scattered among distractor tokens; its
    vote is ``m1 > m0`` and the label is the k votes (bit c = channel c).

    A head reads a vote by attending to its channel's two token kinds alike and giving
    them values of opposite sign; the counts vary, so a one-dimensional head that mixes
    two channels cannot tell their votes apart. Measured with ``head_dim`` 1 (1 layer,
    3 seeds, ``benchmarks/known_heads.py``): k-1 heads fail and k heads solve it, so the
    task's head requirement is k.
    """
    opts, seed, max_len = request.options, request.seed, request.max_len
    k = int_option("channels", "k", opts["k"], 1)
    if 2**k > MAX_TUPLE_LABELS:
        raise ConfigError(f"task 'channels': k={k} has 2^k classes, more than {MAX_TUPLE_LABELS:,}")
    most = int_option("channels", "max_count", opts["max_count"], 2)
    distractors = int_option("channels", "distractors", opts["distractors"], 1)
    room = 2 * most * k  # the most channel tokens a sequence can hold
    seq_len = (
        room + 8
        if opts["seq_len"] is None
        else int_option("channels", "seq_len", opts["seq_len"], 1)
    )
    if seq_len < room:
        raise ConfigError(
            f"task 'channels': seq_len {seq_len} cannot hold 2 * max_count * k = {room} "
            "channel tokens"
        )
    if max_len < seq_len + 1:
        raise ConfigError(
            f"task 'channels': max_len {max_len} is shorter than seq_len+1 = {seq_len + 1}"
        )
    n_train = int_option("channels", "n_train", opts["n_train"], 1)
    n_val = int_option("channels", "n_val", opts["n_val"], 1)
    names = [
        f"{kind}{i}{sign}"
        for kind, n in (("c", k), ("d", distractors))
        for i in range(n)
        for sign in "-+"
    ]
    tokenizer = Tokenizer.word_level(names)
    gen = torch.Generator().manual_seed(seed)

    def make(n: int) -> ClassificationData:
        m0 = torch.randint(1, most + 1, (n, k), generator=gen)
        m1 = torch.randint(1, most, (n, k), generator=gen)
        m1 += (m1 >= m0).long()  # uniform over 1..max_count except m0
        counts = torch.stack([m0, m1], 2)  # (n, k, side)
        # Every channel token a sequence could hold, and which of them it does hold.
        kinds = torch.arange(2 * k).view(k, 2, 1).expand(k, 2, most).reshape(-1)
        held = (torch.arange(most) < counts.unsqueeze(-1)).reshape(n, -1)
        noise = 2 * k + torch.randint(2 * distractors, (n, seq_len), generator=gen)
        pool = torch.cat([kinds.expand(n, -1), noise], 1)
        # Held channel tokens first, then distractors to fill the sequence, then shuffled.
        rank = torch.cat([torch.where(held, 0, 2), torch.ones_like(noise)], 1)
        picked = pool.gather(1, rank.argsort(dim=1, stable=True)[:, :seq_len])
        seqs = picked.gather(1, torch.rand(n, seq_len, generator=gen).argsort(1))
        texts = [" ".join(names[i] for i in row) for row in seqs.tolist()]
        votes = (m1 > m0).long()
        labels = (votes * 2 ** torch.arange(k)).sum(1)
        return ClassificationData(tokenizer.encode(texts, add_cls=True, max_len=None), labels)

    return _generated(
        "channels",
        make,
        n_train,
        n_val,
        tokenizer=tokenizer,
        num_labels=2**k,
        # Channel 0's vote first: "+-" is channel 0 for, channel 1 against.
        label_names=["".join("+" if c >> i & 1 else "-" for i in range(k)) for c in range(2**k)],
        max_len=seq_len + 1,
        info={"k": k, "max_count": most, "distractors": distractors, "seq_len": seq_len},
    )


RETRIEVAL = TaskSpec(
    load=_load_retrieval,
    options={
        "k": 2,
        "seq_len": 16,
        "symbols": 16,
        "label": "sum_mod",
        "num_labels": None,
        "n_train": 20_000,
        "n_val": 2_000,
    },
)
"""The label is read off the symbols at k hidden positions: their sum modulo `num_labels`;
with `label="count"` how many of them fall in their position's own random half of the
alphabet; with `label="tuple"` the ordered k-tuple itself, symbols^k classes, which needs
every position read apart."""

CHANNELS = TaskSpec(
    load=_load_channels,
    options={
        "k": 4,
        "max_count": 4,
        "distractors": 16,
        "seq_len": None,
        "n_train": 20_000,
        "n_val": 2_000,
    },
)
"""A known head requirement: k channels, each a vote between two token kinds repeated 1 to
`max_count` times at random places among distractor tokens; the label is the k majorities,
2^k classes."""
