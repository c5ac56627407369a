"""Your own data and tokenizer in ``train``: records in memory (a list, a torch ``Dataset``,
a ``datasets.Dataset``) and streamed ones (never held), bad records, resume."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

import pytest
import tokenizers
import torch
import yaml
from test_train import _files, _without_session_end_eval, config

from growformer import TrainConfig, train
from growformer.data import StreamBatches, load_task
from growformer.data.records import as_tokenizer
from growformer.data.streaming import shuffled
from growformer.errors import ConfigError, DataError
from growformer.training.config_files import read_config

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

WORDS = ["good", "bad", "fine", "awful", "great", "terrible", "nice", "poor"]


def row(i: int) -> dict:
    """Record ``i``: eight words, positive when at least four are."""
    r = random.Random(i)
    words = [r.choice(WORDS) for _ in range(8)]
    positive = sum(w in ("good", "fine", "great", "nice") for w in words) >= 4
    return {"text": " ".join(words), "label": "pos" if positive else "neg"}


class Rows:
    """``n`` generated records, read again from the start at every ``iter``; ``made``
    counts the records built so far."""

    def __init__(self, n: int, record=row) -> None:
        self.n, self.record, self.made = n, record, 0

    def __iter__(self) -> Iterator:
        for i in range(self.n):
            self.made += 1
            yield self.record(i)


class Live(Mapping):
    """A record that counts how many of its kind exist at once."""

    alive = 0
    most = 0

    def __init__(self, i: int) -> None:
        self._d = row(i)
        Live.alive += 1
        Live.most = max(Live.most, Live.alive)

    def __del__(self) -> None:
        Live.alive -= 1

    def __getitem__(self, key):
        return self._d[key]

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)


def task(data, val=None, **options):
    return load_task(
        "file", seed=0, max_len=12, vocab_size=300, options=options, train_data=data, val_data=val
    )


class MapDataset(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


class IterDataset(torch.utils.data.IterableDataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):  # allowed on an IterableDataset; it is still streamed
        return self.n

    def __iter__(self):
        return (row(i) for i in range(self.n))


@pytest.mark.parametrize(
    "make",
    [
        lambda rows: MapDataset(rows),
        lambda rows: datasets.Dataset.from_list(rows),
        lambda rows: tuple(rows),
    ],
    ids=["torch_dataset", "datasets_dataset", "tuple"],
)
def test_records_in_memory_of_every_kind_encode_alike(make):
    rows = [row(i) for i in range(200)]
    expected, got = task(rows), task(make(rows))
    assert got.train.ids == expected.train.ids and got.val.ids == expected.val.ids
    assert torch.equal(got.train.labels, expected.train.labels)
    assert got.label_names == ["neg", "pos"] and len(got.val) == 20  # val_fraction 0.1


@pytest.mark.parametrize(
    "make",
    [
        lambda n: Rows(n),
        lambda n: IterDataset(n),
        lambda n: datasets.IterableDataset.from_generator(lambda: (row(i) for i in range(n))),
    ],
    ids=["iterable", "torch_iterable", "datasets_iterable"],
)
def test_streams_of_every_kind_give_the_same_batches(make):
    expected = task(Rows(3000), val_records=100)
    got = task(make(3000), val_records=100)
    assert got.val.ids == expected.val.ids and got.info["streamed"]
    ours, theirs = StreamBatches(got.train, 16, 0, 0), StreamBatches(expected.train, 16, 0, 0)
    for step in (0, 1, 5, 250):  # 250: the second pass over the stream
        a, b = ours.batch(step), theirs.batch(step)
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_stream_is_never_held_and_batches_depend_on_the_step_alone():
    Live.most = 0
    data = task(Rows(60_000, Live), shuffle_buffer=500).train
    assert Live.most < 1_000 + 50_000  # validation and the tokenizer's first records
    Live.most = 0
    stream = StreamBatches(data, 32, seed=3, pad_id=0)
    ordered = [stream.batch(s) for s in range(40)]
    assert Live.most < 500 + 256 + 64  # the buffer, one chunk being encoded, slack
    late = stream.batch(1500)  # the next pass over the stream
    fresh = StreamBatches(data, 32, seed=3, pad_id=0)
    for step in (1500, 7, 39):  # resumed far on, then asked for earlier steps again
        got = fresh.batch(step)
        want = late if step == 1500 else ordered[step]
        assert all(torch.equal(got[k], want[k]) for k in want)
    other = StreamBatches(data, 32, seed=4, pad_id=0).batch(0)
    assert not torch.equal(other["input_ids"], ordered[0]["input_ids"])


def test_the_shuffle_buffer_permutes_within_its_reach():
    items = list(range(1000))
    out = list(shuffled(items, 50, random.Random(0)))
    assert sorted(out) == items and out != items
    # An item leaves the buffer at most ~buffer places before it arrived.
    assert all(i - 50 <= pos for pos, i in enumerate(out))
    assert list(shuffled(items, 1, random.Random(0))) == items


def test_bad_records_are_counted_warned_and_left_out():
    rows = [row(i) for i in range(100)]
    rows[3] = {"text": "", "label": "pos"}
    rows[7] = {"sentence": "good good", "label": True}
    rows[9] = "good"
    rows[11] = {"text": "good good"}
    with pytest.warns(UserWarning) as warned:
        data = task(rows)
    assert [str(w.message).split(":")[0] for w in warned] == [
        f"train_data record {i} left out" for i in (3, 7, 9, 11)
    ]
    assert len(data.train) + len(data.val) == 96
    assert data.info["skipped_records"] == {
        "'label' is not a string or an integer (True)": 1,
        "'text' is not a non-empty string": 1,
        "no 'label'": 1,
        "not a mapping (str)": 1,
    }


def test_a_stream_counts_records_with_a_label_its_first_records_lacked():
    def late_label(i):
        return {**row(i), "label": "mixed"} if i == 50_500 else row(i)

    data = task(Rows(51_000, late_label), val_records=100)
    assert data.label_names == ["neg", "pos"]  # read before record 50,500
    with pytest.warns(UserWarning, match="record 50500 left out: label 'mixed' not among"):
        StreamBatches(data.train, 1000, 0, 0).batch(49)
    assert data.info["skipped_records"] == {"label 'mixed' not among neg, pos": 1}


@pytest.mark.parametrize("kind", [int, torch.tensor, __import__("numpy").int64])
def test_integer_labels_of_every_kind_and_an_lm_from_records(kind):
    records = [
        {"text": r["text"], "label": kind(int(r["label"] == "pos"))} for r in map(row, range(50))
    ]
    ints = task(records)
    assert ints.label_names == ["0", "1"] and not ints.info["skipped_records"]
    held = load_task("lm", max_len=8, vocab_size=300, train_data=[row(i) for i in range(200)])
    assert held.kind == "lm" and len(held.train) > 0 and len(held.val) > 0
    streamed = load_task("lm", max_len=8, vocab_size=300, train_data=Rows(200), val_data=Rows(20))
    batch = StreamBatches(streamed.train, 4, 0, 0).batch(3)
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 8)
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    assert (batch["labels"] == streamed.tokenizer.eos_id).any()  # records packed together


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: task(row(i) for i in range(10)), "one-shot iterator"),
        (lambda: task({"text": ["a"], "label": ["b"]}), "got a mapping"),
        (lambda: task(42), "got int"),
        (lambda: task(Rows(30), val_records=100), "no good record among its first"),
        (lambda: load_task("sst2", train_data=[row(0)]), "reads its own data"),
        (lambda: load_task("file", val_data=[row(0)]), "val_data needs train_data"),
        (lambda: task([{"text": "a", "label": "x"}] * 5), "single label"),
    ],
)
def test_unusable_data_is_one_clear_error(call, message):
    with pytest.raises((ConfigError, DataError), match=message):
        call()


def test_a_stream_smaller_than_one_batch_is_an_error():
    data = task(Rows(1100), val_records=1000)
    with pytest.raises(DataError, match="fewer than one batch of 128"):
        StreamBatches(data.train, 128, 0, 0).batch(0)


def bert_tokenizer():
    """A transformers fast tokenizer (BERT's special tokens), built here without the hub."""
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = tokenizers.trainers.WordPieceTrainer(
        vocab_size=60, special_tokens=special, show_progress=False
    )
    tok.train_from_iterator([r["text"] for r in map(row, range(200))], trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    )


def test_your_tokenizer_encodes_and_is_left_as_it_was():
    theirs = bert_tokenizer()
    before = theirs.backend_tokenizer.to_str()
    assert task([row(i) for i in range(50)]).vocab_size <= 300  # by default a BPE of the texts
    given = load_task(
        "file", max_len=12, train_data=[row(i) for i in range(50)], tokenizer=as_tokenizer(theirs)
    )
    assert (
        given.train.ids[0][0] == theirs.cls_token_id
        and given.train.ids[0][-1] == theirs.sep_token_id
    )
    assert theirs.backend_tokenizer.to_str() == before
    with pytest.raises(ConfigError, match="use_fast=True"):
        as_tokenizer(object())
    bare = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0}, unk_token="a"))
    with pytest.raises(DataError, match="no pad token"):
        as_tokenizer(bare)


def test_a_stream_with_your_tokenizer_and_a_yaml_config_resumes_bit_identically(tmp_path):
    """Straight 24 steps vs 12, stop, resume: same weights, optimizer, events, metrics."""
    cfg = config(task="file", max_len=12, task_options={"val_records": 64, "shuffle_buffer": 64})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    tok = bert_tokenizer()

    def run(out, **changes):
        c = TrainConfig.from_dict({**read_config(path), **changes})
        resume = (out / "checkpoints").exists()
        return train(c, out, resume=resume, progress=False, train_data=Rows(600), tokenizer=tok)

    straight = run(tmp_path / "straight")
    assert straight["data"]["train"] == "streamed" and straight["steps"] == 24
    run(tmp_path / "halves", steps=12)
    run(tmp_path / "halves")
    halves, expected = _files(tmp_path / "halves"), _files(tmp_path / "straight")
    halves["metrics"] = _without_session_end_eval(halves["metrics"], 12)
    assert halves == expected
    assert b"add_head" in expected["events"]
