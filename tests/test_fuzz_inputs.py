"""Bad input, fuzzed and hand-written: every loader either returns a valid result or raises a
growformer error naming the file or field; never another exception, a hang or a huge
allocation. Also: nothing is ever unpickled, and names read from files cannot leave the run
directory."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from growformer import checkpoint
from growformer.arch import Architecture
from growformer.cli import main
from growformer.data import load_task, read_fasta_labels, read_labeled
from growformer.errors import GrowformerError
from growformer.policies import POLICIES, make_policy
from growformer.report import write_report
from growformer.training.config import TrainConfig
from growformer.training.config_files import read_config
from growformer.training.loop import Trainer, train
from growformer.training.setup import make_optimizer

SRC = Path(__file__).resolve().parents[1] / "src" / "growformer"
GUARD_S = 10  # per case: far above the milliseconds a case takes, far below a hang


def fuzz(n: int) -> settings:
    """Reproducible hypothesis settings running ``n`` cases."""
    return settings(
        max_examples=n,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@contextmanager
def time_guard(seconds: float = GUARD_S) -> Iterator[None]:
    """Fail the case (TimeoutError) if it runs longer than ``seconds``."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"case ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(load: Callable[[], Any], *names: str) -> Any:
    """``load()``'s result, or None if it raised a growformer error mentioning one of
    ``names``; any other exception fails the test."""
    with time_guard():
        try:
            return load()
        except GrowformerError as e:
            message = str(e)
            assert "\n" not in message, f"not one line: {message!r}"
            assert any(n in message for n in names), f"{message!r} names none of {names}"
            return None


# --- JSON structure mutations ------------------------------------------------------------

NASTY_SCALARS = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2,
    10**9,
    10**30,
    -(10**9),
    0.5,
    1e308,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "1",
    "-3",
    "x" * 200,
    "../../etc/passwd",
    "\x00",
]
json_values = st.recursive(
    st.sampled_from(NASTY_SCALARS) | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (dict keys and list indices), the root included."""
    found = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _paths(v, (*prefix, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` with one to three values replaced, keys deleted or keys added."""
    obj = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(obj)))
        if not path:
            obj = draw(json_values)
            continue
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return obj


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` cut, with bytes flipped, inserted or deleted, or replaced by random bytes."""
    how = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "random"]))
    if how == "random":
        return draw(st.binary(max_size=300))
    data = bytearray(base)
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif how == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif data:
            del data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


NASTY_JSON_TEXTS = [
    "",
    "{",
    "null",
    "[]",
    "3",
    '"x"',
    "NaN",
    "\ufeff{}",
    "[" * 100_000 + "]" * 100_000,
    '{"a": ' * 50_000 + "1" + "}" * 50_000,
    '{"steps": ' + "9" * 5000 + "}",
]


# --- user tables (task 'file') -----------------------------------------------------------

TABLE = b"sentence\tlabel\na good film\t1\na bad film\t0\nfine\t1\nawful\t0\n"
NASTY_TABLES = [
    b"",
    b"\n\n  \n",
    b"sentence\tlabel\n",
    b"\xef\xbb\xbfsentence\tlabel\nok\t1\nno\t0\n",
    b"sentence\tlabel\r\nok\t1\r\nno\t0\r\n",
    b"sentence\tlabel\nok\x00\t1\nno\t0\n",
    b"sentence\tlabel\n" + b"w " * 200_000 + b"\t1\nno\t0\n",
    b"sentence\tlabel\n\xff\xfe bad\t1\n",
    b"text,category\nok,1\n",
    b"sentence\n ok\n",
    b"sentence\tlabel\nok\n",
    b"sentence\tlabel\nok\t\n",
    b"sentence\tlabel\tlabel\nok\t1\t2\n",
    b'sentence,label\n"open quote,1\nx,0\n',
    b"sentence,label\n" + b'"' + b"x" * 200_000 + b'",1\n',
    "\x1c\x1d\x1e\x85\u2028".encode(),
    b"sentence\tlabel\nok\t1\nok\t1\n",
    b"sentence\tlabel\n\t\t\n",
]


def _check_table(result: tuple[list[str], list[str]] | None) -> None:
    if result is None:
        return
    texts, labels = result
    assert texts and len(texts) == len(labels)
    assert all(t and t == t.strip() for t in texts + labels)


@pytest.mark.parametrize("suffix", [".tsv", ".csv", ".txt"])
@pytest.mark.parametrize("content", NASTY_TABLES, ids=range(len(NASTY_TABLES)))
def test_table_nasty_cases(tmp_path: Path, content: bytes, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    _check_table(outcome(lambda: read_labeled(path), str(path)))


@fuzz(250)
@given(data=st.data())
def test_table_fuzzed(tmp_path: Path, data: st.DataObject) -> None:
    suffix = data.draw(st.sampled_from([".tsv", ".csv", ".dat"]))
    base = TABLE if suffix != ".csv" else TABLE.replace(b"\t", b",")
    path = tmp_path / f"data{suffix}"
    path.write_bytes(data.draw(mutated_bytes(base)))
    _check_table(outcome(lambda: read_labeled(path), str(path)))


@fuzz(40)
@given(data=st.data())
def test_file_task_fuzzed(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "data.tsv"
    path.write_bytes(data.draw(mutated_bytes(TABLE * 2)))
    options = data.draw(mutated({"val_fraction": 0.25}).filter(lambda d: isinstance(d, dict)))
    task = outcome(
        lambda: load_task("file", data_file=path, vocab_size=300, max_len=16, options=options),
        str(path),
        "task 'file'",
        "option",
    )
    if task is not None:
        assert task.num_labels == len(task.label_names) >= 2
        assert len(task.train) and len(task.val)


# --- FASTA and labels CSV (task 'fasta') -------------------------------------------------

FASTA = b">a1 first\nMFVFLVLLPLVSSQ\nCVNL\n>a2\nMFVFLVLLPLVSSA\n>b1\nMFVALVLLPLVSSQ\n>b2\nMKVFL*\n"
LABELS = b"id,label\na1,alpha\na2,alpha\nb1,beta\nb2,beta\n"
NASTY_FASTA = [
    (b"", LABELS),
    (b">\n\n", LABELS),
    (b"MFVF\n>a1\nMF\n", LABELS),
    (b">a1\n>a2\nMF\n", LABELS),
    (b">a1\nMF\n>a1\nMF\n", LABELS),
    (b">a1\nMF\x00V\n", LABELS),
    (b">a1\n" + b"ACGT" * 5000 + b"\n", b"id,label\na1,x\n"),
    (b"\xef\xbb\xbf>a1\r\nMFV\r\n>b1\r\nMKV\r\n", b"id,label\r\na1,x\r\nb1,y\r\n"),
    (b">a1\n\xff\xfeMF\n", LABELS),
    (FASTA, b""),
    (FASTA, b"id,label\n"),
    (FASTA, b"name,class\na1,x\n"),
    (FASTA, b"id,label\na1\n"),
    (FASTA, b"id,label\na1,x\na1,y\n"),
    (FASTA, b'id,label\n"a1,x\n'),
    (FASTA, b"id\tlabel\na1\tx\n"),
    (FASTA, b"id,label\nzz,x\n"),
    (FASTA, b"id,label\n\xff,x\n"),
]


def _check_records(result: Any) -> None:
    if result is None:
        return
    assert result.ids and len(result.ids) == len(result.sequences) == len(result.labels)
    assert len(set(result.ids)) == len(result.ids)
    assert result.kind in ("protein", "genome") and all(result.sequences)


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("fasta,labels", NASTY_FASTA, ids=range(len(NASTY_FASTA)))
def test_fasta_nasty_cases(tmp_path: Path, fasta: bytes, labels: bytes, skip_bad: bool) -> None:
    fa, lab = tmp_path / "x.fasta", tmp_path / "labels.csv"
    fa.write_bytes(fasta)
    lab.write_bytes(labels)
    result = outcome(lambda: read_fasta_labels(fa, lab, skip_bad=skip_bad), str(fa), str(lab))
    _check_records(result)


@fuzz(200)
@given(data=st.data())
def test_fasta_fuzzed(tmp_path: Path, data: st.DataObject) -> None:
    fa, lab = tmp_path / "x.fasta", tmp_path / "labels.csv"
    fa.write_bytes(data.draw(mutated_bytes(FASTA)))
    lab.write_bytes(data.draw(mutated_bytes(LABELS)))
    skip_bad = data.draw(st.booleans())
    _check_records(
        outcome(lambda: read_fasta_labels(fa, lab, skip_bad=skip_bad), str(fa), str(lab))
    )


@fuzz(60)
@given(data=st.data())
def test_fasta_task_fuzzed(tmp_path: Path, data: st.DataObject) -> None:
    fa, lab = tmp_path / "x.fasta", tmp_path / "labels.csv"
    fa.write_bytes(data.draw(mutated_bytes(FASTA * 2)) if data.draw(st.booleans()) else FASTA)
    lab.write_bytes(data.draw(mutated_bytes(LABELS)))
    base = {"test_fraction": 0.5, "dedup": False, "kmer": 1, "sites": "all", "skip_bad": False}
    options = data.draw(mutated(base).filter(lambda d: isinstance(d, dict)))
    task = outcome(
        lambda: load_task("fasta", data_file=fa, labels_file=lab, max_len=64, options=options),
        str(fa),
        str(lab),
        "task 'fasta'",
        "option",
    )
    if task is not None:
        assert task.num_labels == len(task.label_names) >= 2
        assert max(map(len, task.train.ids)) <= task.max_len


# --- architecture JSON -------------------------------------------------------------------

ARCH = {
    "kind": "classifier",
    "d_model": 16,
    "vocab_size": 20,
    "max_len": 8,
    "num_labels": 2,
    "dropout": 0.1,
    "embed_rank": 4,
    "layers": [
        {"heads": 2, "head_dim": 8, "ffn_dim": 16, "loops": 1, "looped_heads": [1]},
        {"heads": 4, "head_dim": 4, "ffn_dim": 16, "kv_heads": 2, "block_loops": 1},
        {
            "heads": 2,
            "head_dim": 8,
            "ffn_dim": 16,
            "loops": 2,
            "looped_heads": [0],
            "fade": {"start": 0, "steps": 4, "shape": "cosine"},
        },
    ],
}
NASTY_ARCHES = [
    {**ARCH, "layers": [{**ARCH["layers"][0], "heads": 10**9}]},
    {**ARCH, "d_model": 10**9},
    {**ARCH, "vocab_size": 10**12},
    {**ARCH, "layers": [{"heads": 10**5, "head_dim": 10**5, "ffn_dim": 10**5}] * 2},
    {**ARCH, "d_model": -16},
    {**ARCH, "d_model": 16.0},
    {**ARCH, "d_model": "16"},
    {**ARCH, "d_model": True},
    {**ARCH, "dropout": math.nan},
    {**ARCH, "layers": []},
    {**ARCH, "layers": {}},
    {**ARCH, "layers": [None]},
    {**ARCH, "layers": [{**ARCH["layers"][0], "looped_heads": [[1]]}]},
    {**ARCH, "layers": [{**ARCH["layers"][0], "looped_heads": [{"a": 1}]}]},
    {**ARCH, "layers": [{**ARCH["layers"][2], "fade": {"start": 0, "steps": 0}}]},
    {**ARCH, "layers": [{**ARCH["layers"][2], "fade": {"start": 0, "steps": 1, "shape": []}}]},
    {**ARCH, "kind": ["classifier"]},
    {**ARCH, "kind": "causal_lm"},
]


# An error about an architecture names the file, the layer or the field.
ARCH_NAMES = ("architecture", "layer", *(f.name for f in dataclasses.fields(Architecture)))


def _check_arch(arch: Architecture | None) -> None:
    if arch is not None:
        assert Architecture.from_dict(json.loads(arch.to_json())) == arch


@pytest.mark.parametrize("text", NASTY_JSON_TEXTS, ids=range(len(NASTY_JSON_TEXTS)))
def test_architecture_nasty_texts(tmp_path: Path, text: str) -> None:
    path = tmp_path / "architecture.json"
    path.write_text(text)
    _check_arch(outcome(lambda: Architecture.load(path), str(path)))


@pytest.mark.parametrize("d", NASTY_ARCHES, ids=range(len(NASTY_ARCHES)))
def test_architecture_nasty_values(d: dict[str, Any]) -> None:
    _check_arch(outcome(lambda: Architecture.from_json(json.dumps(d)), *ARCH_NAMES))


@fuzz(300)
@given(d=mutated(ARCH))
def test_architecture_fuzzed(d: Any) -> None:
    _check_arch(outcome(lambda: Architecture.from_json(json.dumps(d)), *ARCH_NAMES))


# --- training configuration JSON ---------------------------------------------------------

CONFIG = {
    "task": "file",
    "policy": "incrt",
    "steps": 10,
    "lr": 0.001,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
    "decay_steps": None,
    "data_file": "data.tsv",
    "task_options": {"val_fraction": 0.2},
    "policy_options": {"max_heads": 4},
    "model": {"d_model": 16, "heads": 2, "layers": [{"heads": 2, "head_dim": 8, "ffn_dim": 16}]},
}


def _check_config(d: dict[str, Any] | None) -> None:
    if d is None:
        return
    cfg = TrainConfig.from_dict(d)
    for name, value in cfg.to_dict().items():
        if isinstance(value, float):
            assert math.isfinite(value), name
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("text", NASTY_JSON_TEXTS, ids=range(len(NASTY_JSON_TEXTS)))
def test_config_nasty_texts(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    _check_config(outcome(lambda: read_config(path), str(path)))


@pytest.mark.parametrize("key", ["lr", "weight_decay", "grad_clip", "min_lr_ratio"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_config_refuses_non_finite_numbers(tmp_path: Path, key: str, value: float) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({key: value}))
    assert outcome(lambda: read_config(path), str(path)) is None


@pytest.mark.parametrize(
    "task,options",
    [
        ("file", {"val_file": 5}),
        ("file", {"val_file": ["a.tsv"]}),
        ("sarscov2", {"cache_dir": 5}),
        ("sarscov2", {"reference": {}}),
        ("retrieval", {"label": "tuple", "k": 40, "seq_len": 40, "symbols": 16}),
    ],
)
def test_task_options_of_the_wrong_kind(tmp_path: Path, task: str, options: dict) -> None:
    data = tmp_path / "data.tsv"
    data.write_bytes(TABLE)
    where = {"file": {"data_file": data}, "sarscov2": {"data_dir": tmp_path}}.get(task, {})
    with time_guard(), pytest.raises(GrowformerError, match=f"task '{task}'|not found"):
        load_task(task, max_len=64, vocab_size=300, options=options, **where)


@pytest.mark.parametrize(
    "name,options",
    [
        ("scheduled", {"events": None}),
        ("incrt", {"initial_heads": True}),
        ("incrt", {"kappa": math.nan}),
        ("incrt", {"check_every": 2.5}),
        ("sgt", {"fade": 3}),
        ("incrt+sgt", {"incrt": True}),
    ],
)
def test_policy_options_of_the_wrong_type(name: str, options: dict) -> None:
    with pytest.raises(GrowformerError, match="policy"):
        make_policy(name, options)


@fuzz(300)
@given(d=mutated(CONFIG))
def test_config_fuzzed(tmp_path: Path, d: Any) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    _check_config(outcome(lambda: read_config(path), str(path)))


# --- policy options ----------------------------------------------------------------------

POLICY_NAMES = [*sorted(POLICIES), "incrt+sgt"]


@fuzz(200)
@given(data=st.data())
def test_policy_options_fuzzed(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(POLICY_NAMES))
    options = data.draw(mutated(make_policy(name).options).filter(lambda d: isinstance(d, dict)))
    base = Architecture.from_dict({**ARCH, "layers": [{"heads": 2, "head_dim": 8, "ffn_dim": 16}]})
    names = (name, *options, *name.split("+"), "option", "policy")
    policy = outcome(lambda: make_policy(name, options), *names)
    if policy is not None:
        arch = outcome(lambda: policy.initial_arch(base), *names)
        assert arch is None or isinstance(arch, Architecture)


# --- checkpoints -------------------------------------------------------------------------

RUN_CONFIG = {
    "task": "retrieval",
    "steps": 2,
    "batch_size": 4,
    "eval_every": 2,
    "checkpoint_every": 2,
    "log_every": 1,
    "max_len": 16,
    "device": "cpu",
    "warmup_steps": 0,
    "task_options": {"seq_len": 8, "n_train": 16, "n_val": 8, "symbols": 4},
    "model": {"d_model": 16, "n_layers": 1, "heads": 2, "head_dim": 8, "ffn_dim": 16},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory (2 training steps), written in a directory of its own."""
    root = tmp_path_factory.mktemp("trained")
    before = set(Path(tmp_path_factory.getbasetemp()).rglob("*"))
    train(TrainConfig.from_dict(RUN_CONFIG), root / "run", progress=False)
    written = set(Path(tmp_path_factory.getbasetemp()).rglob("*")) - before
    assert all(p == root / "run" or (root / "run") in p.parents for p in written - {root})
    return root / "run"


def _copy(run: Path, dest: Path) -> Path:
    """A fresh copy of ``run``'s checkpoint directory at ``dest``."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(checkpoint.resolve(run), dest)
    return dest


def _reseal(ckpt: Path) -> None:
    """Rewrite the manifest to vouch for the files as they are now (a consistent forgery)."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    files = {f: checkpoint._digest(ckpt / f) for f in manifest["files"] if (ckpt / f).is_file()}
    (ckpt / "manifest.json").write_text(json.dumps({**manifest, "files": files}))


def _use(path: Path) -> checkpoint.Checkpoint:
    """Load a checkpoint and everything a resumed run reads from it."""
    ckpt = checkpoint.load(path)
    ckpt.load_optimizer(make_optimizer(ckpt.model, TrainConfig.from_dict(ckpt.config)))
    rng = torch.get_rng_state()
    try:
        ckpt.restore_rng()
    finally:
        torch.set_rng_state(rng)
    return ckpt


def _check_checkpoint(ckpt: checkpoint.Checkpoint | None) -> None:
    if ckpt is None:
        return
    arch = Architecture.load(ckpt.path / "architecture.json")
    assert ckpt.model.arch == arch
    for name, tensor in ckpt.model.state_dict().items():
        assert tensor.isfinite().all(), name
    assert isinstance(ckpt.task["name"], str) and isinstance(ckpt.trainer_state["step"], int)


def _tampered_tensors(draw: st.DrawFn, tensors: dict[str, torch.Tensor]) -> dict:
    tensors = dict(tensors)
    name = draw(st.sampled_from(sorted(tensors)))
    how = draw(st.sampled_from(["shape", "dtype", "nan", "inf", "extra", "missing", "rename"]))
    t = tensors[name]
    if how == "shape":
        tensors[name] = torch.zeros(*[s + draw(st.integers(-1, 2)) for s in t.shape], 1)[..., 0]
    elif how == "dtype":
        dtype = draw(st.sampled_from([torch.float16, torch.float64, torch.int64, torch.uint8]))
        tensors[name] = t.to(dtype)
    elif how in ("nan", "inf") and t.is_floating_point() and t.numel():
        t = t.clone()
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = math.nan if how == "nan" else math.inf
        tensors[name] = t
    elif how == "extra":
        tensors[draw(st.sampled_from(["extra", "state.x.y", "state.0", "cuda.0", name + "_"]))] = (
            t.clone()
        )
    elif how == "missing":
        del tensors[name]
    else:
        tensors[name.replace(".", "_") or "x"] = tensors.pop(name)
    return tensors


CKPT_JSON = [
    "architecture.json",
    "train_config.json",
    "trainer_state.json",
    "task.json",
    "optimizer.json",
    "tokenizer.json",
    "manifest.json",
]
TENSOR_FILES = ["model.safetensors", "optimizer.safetensors", "rng.safetensors"]


@fuzz(120)
@given(data=st.data())
def test_checkpoint_tensors_fuzzed(trained: Path, tmp_path: Path, data: st.DataObject) -> None:
    ckpt = _copy(trained, tmp_path / "ckpt")
    name = data.draw(st.sampled_from(TENSOR_FILES))
    if data.draw(st.booleans()):
        save_file(_tampered_tensors(data.draw, load_file(ckpt / name)), ckpt / name)
    else:
        (ckpt / name).write_bytes(data.draw(mutated_bytes((ckpt / name).read_bytes()[:400])))
    if data.draw(st.integers(0, 4)):  # mostly a consistent forgery, sometimes a plain one
        _reseal(ckpt)
    _check_checkpoint(outcome(lambda: _use(ckpt), str(ckpt), "config"))


@fuzz(250)
@given(data=st.data())
def test_checkpoint_json_fuzzed(trained: Path, tmp_path: Path, data: st.DataObject) -> None:
    ckpt = _copy(trained, tmp_path / "ckpt")
    name = data.draw(st.sampled_from(CKPT_JSON))
    if data.draw(st.integers(0, 3)):
        value = data.draw(mutated(json.loads((ckpt / name).read_text())))
        (ckpt / name).write_text(json.dumps(value))
    else:
        (ckpt / name).write_text(data.draw(st.sampled_from(NASTY_JSON_TEXTS)))
    if name != "manifest.json" and data.draw(st.integers(0, 4)):
        _reseal(ckpt)
    _check_checkpoint(outcome(lambda: _use(ckpt), str(ckpt), "config"))


@pytest.fixture(scope="module")
def trained_incrt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real INCRT run (2 steps): its trainer state holds the policy's gates."""
    out = tmp_path_factory.mktemp("trained_incrt") / "run"
    train(TrainConfig.from_dict({**RUN_CONFIG, "policy": "incrt"}), out, progress=False)
    return out


@fuzz(60)
@given(data=st.data())
def test_resume_from_a_fuzzed_trainer_state(
    trained_incrt: Path, tmp_path: Path, data: st.DataObject
) -> None:
    # What checkpoint.load reads is fuzzed above; a resumed run also reads the counters,
    # the policy's state and Python's random state.
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(trained_incrt, run)
    ckpt = checkpoint.resolve(run)
    state = json.loads((ckpt / "trainer_state.json").read_text())
    (ckpt / "trainer_state.json").write_text(json.dumps(data.draw(mutated(state))))
    _reseal(ckpt)
    cfg = TrainConfig.from_dict({**RUN_CONFIG, "policy": "incrt", "steps": 4})
    summary = outcome(lambda: Trainer(cfg, run, resume=True).run(progress=False), "trainer_state")
    assert summary is None or summary["steps"] == 4


RUN_LOGS = ["summary.json", "metrics.jsonl", "events.jsonl", "stats.jsonl"]


@fuzz(80)
@given(data=st.data())
def test_report_of_fuzzed_run_logs(
    trained_incrt: Path, tmp_path: Path, data: st.DataObject
) -> None:
    # Hand-edited or damaged logs: the report is drawn (a figure it cannot draw says so)
    # or refused naming the run; never a raw exception.
    run = tmp_path / "logs"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(trained_incrt, run, ignore=shutil.ignore_patterns("checkpoints", "report"))
    name = data.draw(st.sampled_from(RUN_LOGS))
    path = run / name
    if name == "summary.json":
        path.write_text(json.dumps(data.draw(mutated(json.loads(path.read_text())))))
    else:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(x) for x in text.splitlines()] or [{}]
        i = data.draw(st.integers(0, len(lines) - 1))
        lines[i] = data.draw(mutated(lines[i]))
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    index = outcome(lambda: write_report(run), str(run))
    assert index is None or index.read_text().startswith("<!DOCTYPE html>")


NASTY_CHECKPOINT_EDITS: list[tuple[str, Callable[[Path], None]]] = [
    ("no manifest", lambda c: (c / "manifest.json").unlink()),
    ("manifest lists /etc/passwd", lambda c: _add_to_manifest(c, "/etc/passwd")),
    ("manifest lists ../x", lambda c: _add_to_manifest(c, "../" + c.name + "/task.json")),
    ("manifest entry not an object", lambda c: _set_manifest_files(c, {"task.json": 5})),
    ("manifest files a list", lambda c: _set_manifest_files(c, ["task.json"])),
    ("huge architecture", lambda c: _set_json(c, "architecture.json", NASTY_ARCHES[0])),
    ("huge d_model", lambda c: _set_json(c, "architecture.json", NASTY_ARCHES[1])),
    ("safetensors header 10^15", lambda c: _set_bytes(c, "model.safetensors", b"\xff" * 8)),
    ("safetensors header cut", lambda c: _cut(c, "model.safetensors", 40)),
    ("empty model file", lambda c: _set_bytes(c, "model.safetensors", b"")),
    ("garbage model file", lambda c: _set_bytes(c, "model.safetensors", b"\x00" * 64)),
    ("state of a param 99", lambda c: _set_json(c, "optimizer.json", {"type": "AdamW"})),
    ("trainer_state a list", lambda c: _set_json(c, "trainer_state.json", [1])),
    ("task without name", lambda c: _set_json(c, "task.json", {"kind": "classification"})),
    ("config a string", lambda c: _set_json(c, "train_config.json", "sst2")),
    ("tokenizer not JSON", lambda c: _set_bytes(c, "tokenizer.json", b"\xff\xfe")),
    (
        "deep trainer_state",
        lambda c: _set_bytes(c, "trainer_state.json", NASTY_JSON_TEXTS[8].encode()),
    ),
    ("NaN weight", lambda c: _edit_tensor(c, "model.safetensors", math.nan)),
    ("rng state as floats", lambda c: _edit_tensor(c, "rng.safetensors", 0.5)),
]


def _edit_tensor(ckpt: Path, name: str, value: float) -> None:
    tensors = {k: v.float() for k, v in load_file(ckpt / name).items()}
    next(iter(tensors.values())).view(-1)[0] = value
    save_file(tensors, ckpt / name)
    _reseal(ckpt)


def _set_bytes(ckpt: Path, name: str, data: bytes) -> None:
    (ckpt / name).write_bytes(data)
    _reseal(ckpt)


def _set_json(ckpt: Path, name: str, value: Any) -> None:
    _set_bytes(ckpt, name, json.dumps(value).encode())


def _cut(ckpt: Path, name: str, n: int) -> None:
    _set_bytes(ckpt, name, (ckpt / name).read_bytes()[:n])


def _set_manifest_files(ckpt: Path, files: Any) -> None:
    manifest = json.loads((ckpt / "manifest.json").read_text())
    (ckpt / "manifest.json").write_text(json.dumps({**manifest, "files": files}))


def _add_to_manifest(ckpt: Path, name: str) -> None:
    manifest = json.loads((ckpt / "manifest.json").read_text())
    target = Path(name) if name.startswith("/") else ckpt / name
    manifest["files"][name] = checkpoint._digest(target)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "edit", [e for _, e in NASTY_CHECKPOINT_EDITS], ids=[n for n, _ in NASTY_CHECKPOINT_EDITS]
)
def test_checkpoint_nasty_cases(trained: Path, tmp_path: Path, edit: Callable) -> None:
    ckpt = _copy(trained, tmp_path / "ckpt")
    edit(ckpt)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert outcome(lambda: _use(ckpt), str(ckpt)) is None
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB


@pytest.mark.parametrize("latest", ["../../etc", "/etc", "step_1/../../..", "..", ""])
def test_latest_cannot_point_outside_the_run(trained: Path, tmp_path: Path, latest: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained / "checkpoints", run / "checkpoints")
    # A complete checkpoint outside the run, where the name would lead.
    shutil.copytree(checkpoint.resolve(trained), tmp_path / "etc")
    (run / "checkpoints" / "LATEST").write_bytes(latest.encode("utf-8", "surrogateescape"))
    with pytest.raises(GrowformerError, match="LATEST"):
        checkpoint.load(run)


@pytest.mark.parametrize("name", ["/etc/passwd", "../ckpt/task.json"])
def test_manifest_cannot_vouch_for_files_outside(trained: Path, tmp_path: Path, name: str) -> None:
    ckpt = _copy(trained, tmp_path / "ckpt")
    _add_to_manifest(ckpt, name)
    with pytest.raises(GrowformerError, match="manifest names"):
        checkpoint.load(ckpt)


def test_bad_latest_bytes_are_a_checkpoint_error(trained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained / "checkpoints", run / "checkpoints")
    (run / "checkpoints" / "LATEST").write_bytes(b"\xff\xfe")
    with pytest.raises(GrowformerError, match="LATEST"):
        checkpoint.resolve(run)


# --- through the command line ------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with time_guard(60):
        code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("growformer: error: "), err
    return err[0]


@pytest.mark.parametrize("content", [NASTY_TABLES[i] for i in (0, 2, 7, 8, 13)])
def test_cli_train_bad_data(tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes) -> None:
    data = tmp_path / "bad.tsv"
    data.write_bytes(content)
    line = _cli(capsys, "train", "--data", str(data), "--out", str(tmp_path / "run"))
    assert str(data) in line
    assert not (tmp_path / "run" / "checkpoints").exists()


CLI_EDITS = [(n, e) for n, e in NASTY_CHECKPOINT_EDITS if re.search("huge|task|trainer|NaN", n)]


@pytest.mark.parametrize("edit", [e for _, e in CLI_EDITS], ids=[n for n, _ in CLI_EDITS])
def test_cli_evaluate_and_info_tampered(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture, edit: Callable
) -> None:
    ckpt = _copy(trained, tmp_path / "ckpt")
    edit(ckpt)
    data = tmp_path / "eval.tsv"
    data.write_bytes(TABLE)
    assert str(ckpt) in _cli(capsys, "evaluate", "--checkpoint", str(ckpt), "--data", str(data))
    assert str(ckpt) in _cli(capsys, "info", str(ckpt))


def test_cli_subprocess_prints_no_traceback(trained: Path, tmp_path: Path) -> None:
    ckpt = _copy(trained, tmp_path / "ckpt")
    _set_json(ckpt, "architecture.json", NASTY_ARCHES[0])
    run = subprocess.run(
        [sys.executable, "-m", "growformer.cli", "info", str(ckpt)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("growformer: error: ") and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr


# --- no pickle ---------------------------------------------------------------------------

UNSAFE = [
    (r"\bimport pickle\b|\bpickle\.", "pickle"),
    (r"\bimport (cPickle|dill|joblib|shelve|marshal)\b", "pickle-like module"),
    (r"torch\.load\((?![^)]*weights_only=True)", "torch.load without weights_only=True"),
    (r"allow_pickle\s*=\s*True", "np.load(allow_pickle=True)"),
    (r"(?<![\w.])eval\(|(?<![\w.])exec\(", "eval/exec"),
]


def test_no_unsafe_deserialization_in_source() -> None:
    found = [
        f"{path.relative_to(SRC)}:{n}: {what}"
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for pattern, what in UNSAFE
        if re.search(pattern, line)
    ]
    assert not found


def test_loading_a_checkpoint_never_unpickles(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a checkpoint was unpickled")

    for name in ("load", "loads", "Unpickler", "_Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ckpt = _use(trained)
    assert ckpt.model.num_params() > 0
