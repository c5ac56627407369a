"""Tests of growformer.data on real data: GLUE SST-2, the stdlib LM corpus, user files."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import growformer.data.tasks.proteins
from growformer.data import (
    BatchStream,
    ClassificationData,
    LMData,
    Tokenizer,
    collate,
    encode_classification,
    encode_lm,
    eval_batches,
    label_vocab,
    load_task,
    read_labeled,
    read_text,
)
from growformer.data.shared import beside_checkout
from growformer.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SST2_DIR = SHARED / "sst2"
needs_sst2 = pytest.mark.skipif(
    not (SST2_DIR / "train.tsv").is_file(), reason=f"SST-2 files not found in {SST2_DIR}"
)


@pytest.fixture(scope="module")
def sst2():
    return load_task("sst2", data_dir=SST2_DIR, options={"train_limit": 2000}, vocab_size=2000)


@pytest.fixture(scope="module")
def lm():
    return load_task("lm", max_len=64, vocab_size=1000, options={"max_chars": 200_000})


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def raises_naming(path: Path, fn, *args, match: str | None = None) -> str:
    """Call fn, expect a one-line DataError that names `path`; return the message."""
    with pytest.raises(DataError, match=match) as info:
        fn(*args)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


# --- SST-2 -----------------------------------------------------------------------------------


@needs_sst2
def test_sst2_loads(sst2):
    assert sst2.kind == "classification"
    assert (len(sst2.train), len(sst2.val)) == (2000, 872)
    assert sst2.label_names == ["0", "1"] and sst2.num_labels == 2
    # The dev set's published class balance: 444 positive, 428 negative.
    assert torch.bincount(sst2.val.labels).tolist() == [428, 444]
    assert set(sst2.train.labels.tolist()) == {0, 1}
    assert sst2.vocab_size <= 2000
    for ids in sst2.train.ids + sst2.val.ids:
        assert ids[0] == sst2.tokenizer.cls_id
        assert 2 <= len(ids) <= sst2.max_len
        assert max(ids) < sst2.vocab_size


@needs_sst2
def test_sst2_tokenizer_round_trip(sst2, tmp_path):
    texts, _ = read_labeled(SST2_DIR / "dev.tsv")
    expected = sst2.tokenizer.encode(texts, add_cls=True, max_len=None)
    assert (
        Tokenizer.from_json(sst2.tokenizer.to_json()).encode(texts, add_cls=True, max_len=None)
        == expected
    )
    sst2.tokenizer.save(tmp_path / "tok.json")
    assert Tokenizer.load(tmp_path / "tok.json").encode(texts, add_cls=True, max_len=None) == (
        expected
    )


@needs_sst2
def test_tokenizer_training_is_deterministic():
    texts, _ = read_labeled(SST2_DIR / "dev.tsv")
    assert Tokenizer.train(texts, 600).to_json() == Tokenizer.train(texts, 600).to_json()


@needs_sst2
def test_sst2_from_environment(monkeypatch):
    monkeypatch.setenv("GROWFORMER_SST2_DIR", str(SST2_DIR))
    task = load_task("sst2", options={"train_limit": 300}, vocab_size=500)
    assert (len(task.train), len(task.val)) == (300, 872)


@needs_sst2
def test_sst2_defaults_to_the_data_beside_the_checkout(monkeypatch):
    monkeypatch.delenv("GROWFORMER_SST2_DIR", raising=False)
    assert beside_checkout("sst2") == SST2_DIR.resolve()
    task = load_task("sst2", options={"train_limit": 300}, vocab_size=500)
    assert (len(task.train), len(task.val)) == (300, 872)
    assert task.info["source"] == str(SST2_DIR.resolve())


def test_sst2_without_data_or_datasets_says_what_to_pass(monkeypatch, no_checkout_data):
    monkeypatch.delenv("GROWFORMER_SST2_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(DataError, match="`datasets` is not installed: pass --data-dir DIR"):
        load_task("sst2")


def test_sst2_offline_without_data_says_what_to_pass(tmp_path):
    """The hub unreachable (its offline mode, in a process of its own: the setting is read
    when the libraries are imported)."""
    pytest.importorskip("datasets")
    env = {k: v for k, v in os.environ.items() if k != "GROWFORMER_SST2_DIR"}
    env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = (
        "import growformer.data.shared as shared; shared.CHECKOUT_DATA = None; "
        "from growformer.data import load_task; load_task('sst2')"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    last = proc.stderr.strip().splitlines()[-1]
    assert "SST-2 could not be downloaded" in last and "pass --data-dir DIR" in last


@needs_sst2
def test_collate_pads_to_longest_in_batch(sst2):
    data = sst2.val
    batch = collate(data, [3, 0, 7], pad_id=sst2.tokenizer.pad_id)
    lengths = [len(data.ids[i]) for i in (3, 0, 7)]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].dtype == torch.bool
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for row, i in enumerate((3, 0, 7)):
        n = lengths[row]
        assert batch["input_ids"][row, :n].tolist() == data.ids[i]
        assert (batch["input_ids"][row, n:] == sst2.tokenizer.pad_id).all()
    assert batch["labels"].tolist() == data.labels[[3, 0, 7]].tolist()


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_specials_and_truncation():
    code = inspect.getsource(growformer.data.tasks.proteins)
    tok = Tokenizer.train([code], 400)
    assert (tok.pad_id, tok.cls_id, tok.eos_id) == (0, 1, 2)
    full = tok.encode(["def f(x):\n    return x"], add_cls=True, max_len=None)[0]
    assert full[0] == tok.cls_id
    assert tok.encode(["def f(x):\n    return x"], add_cls=True, max_len=4) == [full[:4]]
    # Special tokens are only inserted by id, never recognised in text.
    assert tok.cls_id not in tok.encode(["[CLS] [EOS]"], add_cls=False, max_len=None)[0]
    with pytest.raises(ConfigError, match="vocab_size"):
        Tokenizer.train([code], 100)


def test_word_level_tokenizer():
    tok = Tokenizer.word_level(["a", "b", "c"])
    assert tok.vocab_size == 7
    assert tok.encode(["c a  b", "z"], add_cls=True, max_len=None) == [[1, 6, 4, 5], [1, 3]]
    assert Tokenizer.from_json(tok.to_json()).encode(["b c"], add_cls=False, max_len=None) == [
        [5, 6]
    ]


def test_tokenizer_load_errors(tmp_path):
    raises_naming(tmp_path / "nope.json", Tokenizer.load, tmp_path / "nope.json")
    bad = write(tmp_path / "bad.json", '{"version": "1.0", "model": ')
    raises_naming(bad, Tokenizer.load, bad, match="corrupt")


# --- batching --------------------------------------------------------------------------------


def indexed_blocks(n: int, block: int = 4) -> LMData:
    """LM data whose example i starts with token i*block, so batches reveal their indices."""
    return LMData(tokens=torch.arange(n * block + 1), block=block)


def batch_indices(batch: dict[str, torch.Tensor], block: int = 4) -> list[int]:
    return (batch["input_ids"][:, 0] // block).tolist()


def test_batch_stream_is_a_pure_function_of_step():
    data = indexed_blocks(40)
    a, b = BatchStream(data, 8, seed=3, pad_id=0), BatchStream(data, 8, seed=3, pad_id=0)
    assert a.batches_per_epoch == 5
    # Jumping between epochs in two different orders: the epoch cache must not leak state.
    steps = [0, 1, 7, 4, 12, 0, 30, 5]
    expected = {step: a.batch(step) for step in steps}
    for step in reversed(steps):
        batch = b.batch(step)
        assert torch.equal(batch["input_ids"], expected[step]["input_ids"])
        assert torch.equal(batch["labels"], expected[step]["labels"])


def test_batch_stream_epochs_cover_every_example_once():
    data = indexed_blocks(40)
    stream = BatchStream(data, 8, seed=0, pad_id=0)
    epochs = [
        [i for s in range(e * 5, e * 5 + 5) for i in batch_indices(stream.batch(s))]
        for e in range(3)
    ]
    for order in epochs:
        assert sorted(order) == list(range(40))
    assert epochs[0] != epochs[1] != epochs[2]
    other_seed = BatchStream(data, 8, seed=1, pad_id=0)
    assert batch_indices(other_seed.batch(0)) != batch_indices(stream.batch(0))


def test_batch_stream_drops_remainder_and_handles_tiny_sets():
    stream = BatchStream(indexed_blocks(21), 5, seed=0, pad_id=0)
    assert stream.batches_per_epoch == 4
    seen = [i for s in range(4) for i in batch_indices(stream.batch(s))]
    assert len(set(seen)) == 20
    tiny = BatchStream(indexed_blocks(3), 8, seed=0, pad_id=0)
    assert tiny.batches_per_epoch == 1
    for step in range(3):
        assert sorted(batch_indices(tiny.batch(step))) == [0, 1, 2]


def test_eval_batches_in_order():
    data = ClassificationData(ids=[[1] + [5] * i for i in range(10)], labels=torch.arange(10))
    batches = list(eval_batches(data, 4, pad_id=0))
    assert [len(b["labels"]) for b in batches] == [4, 4, 2]
    assert torch.cat([b["labels"] for b in batches]).tolist() == list(range(10))
    assert batches[2]["attention_mask"].sum(dim=1).tolist() == [9, 10]


# --- LM --------------------------------------------------------------------------------------


def test_lm_task_splits_by_file(lm):
    assert lm.kind == "lm" and lm.max_len == 64 and lm.num_labels is None
    train_files, val_files = set(lm.info["train_files"]), set(lm.info["val_files"])
    assert train_files and val_files and not train_files & val_files
    assert not any(part in ("test", "tests") for f in train_files for part in f.split("/"))
    assert len(lm.train) == (len(lm.train.tokens) - 1) // 64 and len(lm.val) > 0
    assert (lm.train.tokens == lm.tokenizer.eos_id).sum() == len(train_files)
    again = load_task("lm", max_len=64, vocab_size=1000, options={"max_chars": 200_000})
    assert again.info == lm.info and torch.equal(again.val.tokens, lm.val.tokens)


def test_lm_labels_are_inputs_shifted(lm):
    batch = collate(lm.train, [0, 5, len(lm.train) - 1], pad_id=lm.tokenizer.pad_id)
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 64)
    assert torch.equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])
    assert batch["labels"][1, -1] == lm.train.tokens[5 * 64 + 64]
    assert batch["labels"].is_contiguous()


def test_lm_from_directory(tmp_path):
    # Real source text, long enough that every file below has some whatever the module's size.
    source = inspect.getsource(growformer.data.tasks.proteins) * 3
    for i in range(12):
        write(tmp_path / f"mod{i}.py", source[i * 900 :])
    write(tmp_path / "notes.txt", source)
    write(tmp_path / "ignored.md", "not part of the corpus")
    task = load_task(
        "lm", data_dir=tmp_path, max_len=32, vocab_size=400, options={"val_fraction": 0.3}
    )
    files = task.info["train_files"] + task.info["val_files"]
    assert sorted(files) == sorted([f"mod{i}.py" for i in range(12)] + ["notes.txt"])
    (tmp_path / "latin1.py").write_bytes(b"# caf\xe9\n")
    raises_naming(tmp_path / "latin1.py", lambda: load_task("lm", data_dir=tmp_path), match="UTF-8")


def test_encode_lm_needs_one_block(tmp_path):
    tok = Tokenizer.word_level(["a"])
    data = encode_lm(tok, "a a a", 3)
    assert data.tokens.tolist() == [4, 4, 4, 2] and len(data) == 1
    path = write(tmp_path / "short.txt", "a a")
    raises_naming(path, lambda: encode_lm(tok, read_text(path), 3, source=f"text file {path}"))


# --- retrieval -------------------------------------------------------------------------------


def retrieval(seed: int):
    options = {"k": 3, "seq_len": 16, "symbols": 8, "num_labels": 3, "n_train": 500, "n_val": 100}
    return load_task("retrieval", seed=seed, options=options)


def test_retrieval_labels_follow_the_sum_rule():
    task = retrieval(0)
    positions = task.info["positions"]
    assert len(set(positions)) == 3 and positions == sorted(positions)
    assert task.max_len == 17 and task.num_labels == 3 and task.vocab_size == 4 + 8
    for data in (task.train, task.val):
        x = collate(data, list(range(len(data))), pad_id=0)["input_ids"]
        assert x.shape[1] == 17 and (x[:, 0] == task.tokenizer.cls_id).all()
        symbols = x[:, 1:] - 4  # "s{i}" has id 4 + i after the four special tokens
        assert ((symbols >= 0) & (symbols < 8)).all()
        assert torch.equal(data.labels, symbols[:, positions].sum(dim=1) % 3)
    assert len(set(task.train.labels.tolist())) == 3


def test_retrieval_count_label_uses_a_mark_per_position():
    options = {"k": 3, "seq_len": 10, "symbols": 6, "label": "count", "n_train": 400, "n_val": 50}
    task = load_task("retrieval", seed=2, options=options)
    assert task.num_labels == 4 and task.info["label"] == "count"
    marks = torch.tensor(task.info["marks"])
    assert marks.shape == (3, 6) and (marks.sum(dim=1) == 3).all()
    assert len({tuple(m) for m in marks.tolist()}) > 1  # positions mark different halves
    x = collate(task.train, list(range(len(task.train))), pad_id=0)["input_ids"]
    picked = (x[:, 1:] - 4)[:, task.info["positions"]]
    assert torch.equal(task.train.labels, marks[torch.arange(3), picked].sum(dim=1))
    assert set(task.train.labels.tolist()) == {0, 1, 2, 3}


def test_retrieval_tuple_label_is_the_ordered_tuple():
    options = {"k": 2, "seq_len": 8, "symbols": 3, "label": "tuple", "n_train": 300, "n_val": 30}
    task = load_task("retrieval", seed=1, options=options)
    assert task.num_labels == 9 and task.label_names == [str(i) for i in range(9)]
    x = collate(task.train, list(range(len(task.train))), pad_id=0)["input_ids"]
    picked = (x[:, 1:] - 4)[:, task.info["positions"]]
    assert torch.equal(task.train.labels, picked[:, 0] + 3 * picked[:, 1])
    assert set(task.train.labels.tolist()) == set(range(9))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"label": "max"}, "label must be one of sum_mod, count, tuple"),
        ({"label": "count", "k": 2, "num_labels": 5}, "k\\+1 = 3 classes, not num_labels=5"),
        ({"label": "tuple", "k": 2, "num_labels": 5}, "symbols\\^k = 256 classes"),
    ],
)
def test_retrieval_label_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        load_task("retrieval", options=options)


def test_retrieval_is_deterministic_per_seed():
    a, b, c = retrieval(0), retrieval(0), retrieval(1)
    assert a.info == b.info and a.train.ids == b.train.ids and a.val.ids == b.val.ids
    assert torch.equal(a.train.labels, b.train.labels)
    assert a.train.ids != c.train.ids


# --- channels --------------------------------------------------------------------------------


def channels(seed: int, **options):
    options = {"k": 3, "max_count": 3, "distractors": 4, "n_train": 600, "n_val": 50, **options}
    return load_task("channels", seed=seed, options=options)


def test_channels_label_is_each_channels_majority():
    task = channels(0)
    assert task.num_labels == 8 and task.label_names[:3] == ["---", "+--", "-+-"]
    assert task.max_len == 2 * 3 * 3 + 8 + 1 and task.vocab_size == 4 + 2 * (3 + 4)
    for data in (task.train, task.val):
        x = collate(data, list(range(len(data))), pad_id=0)["input_ids"]
        assert x.shape[1] == task.max_len and (x[:, 0] == task.tokenizer.cls_id).all()
        tokens = x[:, 1:] - 4  # token j of the task's names has id 4 + j
        against = torch.stack([(tokens == 2 * c).sum(1) for c in range(3)], 1)
        for_ = torch.stack([(tokens == 2 * c + 1).sum(1) for c in range(3)], 1)
        assert ((against >= 1) & (against <= 3) & (for_ >= 1) & (for_ <= 3)).all()
        assert (against != for_).all()
        assert torch.equal(data.labels, ((for_ > against).long() * torch.tensor([1, 2, 4])).sum(1))
    assert set(task.train.labels.tolist()) == set(range(8))
    # Where the channel tokens stand is random: not always the same positions.
    first = collate(task.train, [0, 1], pad_id=0)["input_ids"][:, 1:] - 4
    assert not torch.equal(first[0] < 6, first[1] < 6)


def test_channels_is_deterministic_per_seed_and_checks_its_options():
    a, b, c = channels(0), channels(0), channels(1)
    assert a.train.ids == b.train.ids and torch.equal(a.train.labels, b.train.labels)
    assert a.train.ids != c.train.ids
    with pytest.raises(ConfigError, match="seq_len 10 cannot hold 2 \\* max_count \\* k = 18"):
        channels(0, seq_len=10)
    with pytest.raises(ConfigError, match="k=21 has 2\\^k classes"):
        channels(0, k=21)
    with pytest.raises(ConfigError, match="max_count must be"):
        channels(0, max_count=1)


def test_task_config_errors():
    with pytest.raises(ConfigError, match="channels, fasta, file, lm, retrieval, sarscov2, sst2"):
        load_task("imdb")
    with pytest.raises(ConfigError, match="valid: k, label, n_train"):
        load_task("retrieval", options={"heads": 2})
    with pytest.raises(ConfigError, match="k=5 exceeds"):
        load_task("retrieval", options={"k": 5, "seq_len": 4})
    with pytest.raises(ConfigError, match="pass --data FILE"):
        load_task("file")


# --- user files ------------------------------------------------------------------------------


def test_read_tsv_and_csv(tmp_path):
    tsv = write(
        tmp_path / "a.tsv",
        "id\tsentence\tlabel\n1\tit 's \" quoted , fine \tpos\n\n2\tdull\tneg\n",
    )
    assert read_labeled(tsv) == (["it 's \" quoted , fine", "dull"], ["pos", "neg"])
    csv_file = write(
        tmp_path / "b.csv",
        '\ufeffText,source,Label\n"great, truly ""great""",web,10\nmeh,web,2\n"multi\nline",x,2\n',
    )
    assert read_labeled(csv_file) == (
        ['great, truly "great"', "meh", "multi\nline"],
        ["10", "2", "2"],
    )
    sniffed = write(tmp_path / "c.data", "text\tlabel\na, b\tx\n")
    assert read_labeled(sniffed) == (["a, b"], ["x"])
    assert label_vocab(["10", "2", "2", "-1"]) == ["-1", "2", "10"]
    assert label_vocab(["pos", "neg", "2"]) == ["2", "neg", "pos"]


def test_file_task_random_split(tmp_path):
    rows = [
        f"review number {i} was {'good' if i % 3 else 'bad'}\t{'pos' if i % 3 else 'neg'}"
        for i in range(40)
    ]
    path = write(tmp_path / "reviews.tsv", "sentence\tlabel\n" + "\n".join(rows) + "\n")
    task = load_task("file", data_file=path, seed=1, vocab_size=300, max_len=6)
    assert task.label_names == ["neg", "pos"] and task.num_labels == 2
    assert (len(task.train), len(task.val)) == (36, 4)
    assert max(len(ids) for ids in task.train.ids) == 6
    again = load_task("file", data_file=path, seed=1, vocab_size=300, max_len=6)
    assert again.val.ids == task.val.ids
    other = load_task("file", data_file=path, seed=2, vocab_size=300, max_len=6)
    assert other.val.ids != task.val.ids


def test_file_task_val_file(tmp_path):
    train = write(tmp_path / "train.csv", "text,label\ngood film,pos\nbad film,neg\nfine,pos\n")
    val = write(tmp_path / "val.csv", "text,label\ngood,pos\nawful,neg\n")
    task = load_task("file", data_file=train, vocab_size=300, options={"val_file": val})
    assert (len(task.train), len(task.val)) == (3, 2)
    assert task.val.labels.tolist() == [1, 0]
    typo = write(tmp_path / "typo.csv", "text,label\ngood,postive\n")
    options = {"val_file": typo}
    raises_naming(
        typo,
        lambda: load_task("file", data_file=train, vocab_size=300, options=options),
        match="'postive'",
    )


def test_file_task_too_small(tmp_path):
    one = write(tmp_path / "one.tsv", "sentence\tlabel\nonly row\t1\n")
    raises_naming(one, lambda: load_task("file", data_file=one), match="too few rows")
    same = write(tmp_path / "same.tsv", "sentence\tlabel\na\t1\nb\t1\n")
    raises_naming(same, lambda: load_task("file", data_file=same), match="single label")


BAD_FILES = {
    "empty": ("", "is empty"),
    "blank": ("\n \n", "is empty"),
    "header_only": ("sentence\tlabel\n", "no data rows"),
    "wrong_columns": (
        "review\tstars\nok\t1\n",
        r"no 'sentence' or 'text' column \(columns: review",
    ),
    "no_label": ("sentence\tscore\nok\t1\n", "no 'label' column"),
    "ragged": ("sentence\tlabel\nok\t1\nbad\t0\textra\n", "line 3 has 3 field"),
    "empty_text": ("sentence\tlabel\nok\t1\n  \t0\n", "line 3 has an empty 'sentence'"),
    "empty_label": ("sentence\tlabel\nok\t\n", "line 2 has an empty 'label'"),
    "csv_as_tsv": ("sentence,label\nok,1\n", "comma-separated"),
    "unclosed_quote.csv": ('text,label\n"ok,1\nfine,0\n', "line 2 .*unclosed quote"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_labeled_files(tmp_path, case):
    content, match = BAD_FILES[case]
    path = write(tmp_path / (case if "." in case else f"{case}.tsv"), content)
    raises_naming(path, read_labeled, path, match=match)


def test_unreadable_files(tmp_path):
    for reader in (read_labeled, read_text):
        raises_naming(tmp_path / "missing.tsv", reader, tmp_path / "missing.tsv", match="not exist")
        raises_naming(tmp_path, reader, tmp_path, match="directory")
    latin1 = tmp_path / "latin1.tsv"
    latin1.write_bytes("sentence\tlabel\ncaf\xe9\t1\n".encode("latin-1"))
    raises_naming(latin1, read_labeled, latin1, match="not UTF-8.*line 2")
    raises_naming(latin1, read_text, latin1, match="not UTF-8")
    empty = write(tmp_path / "empty.txt", "  \n")
    raises_naming(empty, read_text, empty, match="empty")


def test_encode_classification_unknown_label(tmp_path):
    path = write(tmp_path / "dev.tsv", "sentence\tlabel\nfine\t1\nodd\t7\n")
    texts, raw = read_labeled(path)
    tok = Tokenizer.word_level(["fine", "odd"])
    data = encode_classification(tok, texts[:1], raw[:1], ["0", "1"], 8)
    assert data.ids == [[1, 4]] and data.labels.tolist() == [1]
    raises_naming(
        path,
        lambda: encode_classification(tok, texts, raw, ["0", "1"], 8, source=f"data file {path}"),
        match="'7'",
    )
