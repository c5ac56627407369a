"""ONNX export: every model variant reproduced by onnxruntime, the CLI on a trained checkpoint."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from helpers import VARIANTS, arch

from growformer import checkpoint, surgery
from growformer.arch import Architecture
from growformer.cli import main
from growformer.errors import ExportError
from growformer.export import (
    META_ARCHITECTURE,
    META_LABEL_NAMES,
    checkpoint_inputs,
    export_onnx,
    sample_inputs,
    verify_onnx,
)
from growformer.model import build_model
from growformer.training.config import TrainConfig
from growformer.training.setup import task_data

pytestmark = pytest.mark.usefixtures("one_thread")

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

LABELS = ("neg", "neutral", "pos")
LM_VARIANTS = ("looped", "compressed", "llama")
# Non-uniform heads and head dimensions, SGT loops over some heads, a block loop: the
# acceptance case, trained for real by the CLI test.
TRAIN_CONFIG = {
    "model": {
        "d_model": 64,
        "layers": [
            {"heads": 1, "head_dim": 16, "ffn_dim": 64},
            # Weights above the exporter's own folding limit (8192 elements).
            {"heads": 3, "head_dim": 48, "ffn_dim": 32, "loops": 1, "looped_heads": [2, 0]},
            {
                "heads": 2,
                "head_dim": 8,
                "ffn_dim": 48,
                "loops": 2,
                "looped_heads": [1],
                "block_loops": 1,
            },
        ],
    },
    "vocab_size": 300,
    "max_len": 48,
    "batch_size": 16,
    "eval_every": 10,
    "checkpoint_every": 10,
    "warmup_steps": 2,
    "device": "cpu",
}


# Every variant as a classifier (the kind that pads); as a language model, the variants
# whose attention calls differ (a loop over a subset of heads, grouped keys and values,
# rotary positions under a causal mask): the rest of the block code is shared by both
# kinds, and each export costs ~4 s of CPU.
CASES = [("classifier", v) for v in VARIANTS] + [("causal_lm", v) for v in LM_VARIANTS]


@pytest.fixture(scope="module", params=CASES, ids=lambda p: "-".join(p))
def exported(request, tmp_path_factory):
    """A model of each case and its ONNX file (fades ended: a fade is refused)."""
    kind, variant = request.param
    torch.manual_seed(0)
    model = build_model(arch(kind, variant))
    for i, layer in enumerate(model.arch.layers):
        if layer.fade is not None:
            surgery.end_fade(model, i)
        if layer.head_fade is not None:
            surgery.remove_head(model, None, i, layer.head_fade.head)
    labels = LABELS if kind == "classifier" else None
    path = tmp_path_factory.mktemp("onnx") / f"{kind}-{variant}.onnx"
    return model, export_onnx(model, path, label_names=labels)


def test_onnxruntime_matches_pytorch(exported):
    model, path = exported
    batches = sample_inputs(model, 100)
    assert sum(len(b["input_ids"]) for b in batches) == 100
    assert len({tuple(b["input_ids"].shape) for b in batches}) > 10
    if model.arch.kind == "classifier":
        assert any(not b["attention_mask"].all() for b in batches)
    assert verify_onnx(model, path, batches) <= 1e-4


def test_file_describes_itself(exported):
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert Architecture.from_dict(json.loads(meta[META_ARCHITECTURE])) == model.arch
    classifier = model.arch.kind == "classifier"
    assert json.loads(meta.get(META_LABEL_NAMES, "null")) == (list(LABELS) if classifier else None)
    inputs = {i.name: i for i in session.get_inputs()}
    assert list(inputs) == (["input_ids", "attention_mask"] if classifier else ["input_ids"])
    for i in inputs.values():
        assert i.type == "tensor(int64)" and all(isinstance(d, str) for d in i.shape)
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_weight_transforms_are_precomputed(exported):
    """A loop's head rows and the query/key/value concatenation are pre-sliced weights."""
    assert _nodes_of_constants(exported[1]) == []


def _nodes_of_constants(path: Path) -> list[str]:
    """The nodes that compute on weights alone (work an export can do once for all)."""
    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    return [n.op_type for n in graph.node if n.input and all(x in weights for x in n.input)]


def test_verification_sees_a_different_model(exported):
    model, path = exported
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.transformer.tok_emb.weight[:, 0].add_(1.0)
    assert verify_onnx(changed, path, sample_inputs(model, 8)) > 1e-3


def test_a_model_mid_fade_is_refused(tmp_path):
    model = build_model(arch("causal_lm", "fading"))
    with pytest.raises(ExportError, match=r"soft start \(layer 1 until step 8\)"):
        export_onnx(model, tmp_path / "m.onnx")
    surgery.end_fade(model, 1)
    with pytest.raises(ExportError, match=r"fading out before its removal \(layer 0 head 1 until"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_missing_onnx_packages_name_the_extra(monkeypatch, tmp_path):
    model = build_model(arch("causal_lm", "uniform"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ExportError, match=r'needs onnxruntime.*pip install -e "\.\[onnx\]"'):
        verify_onnx(model, tmp_path / "m.onnx", sample_inputs(model, 1))
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ExportError, match=r'needs onnxscript.*pip install -e "\.\[onnx\]"'):
        export_onnx(model, tmp_path / "m.onnx")


def test_bad_label_names_and_paths(tmp_path):
    model = build_model(arch("classifier", "uniform"))
    with pytest.raises(ExportError, match="2 label names for a model with num_labels=3"):
        export_onnx(model, tmp_path / "m.onnx", label_names=["a", "b"])
    with pytest.raises(ExportError, match=r"directory .*missing does not exist"):
        export_onnx(model, tmp_path / "missing" / "m.onnx")
    with pytest.raises(ExportError, match="it is a directory"):
        export_onnx(model, tmp_path)


@pytest.fixture(scope="module")
def run(sst2_dir, tmp_path_factory) -> Path:
    """A short real training run of the acceptance architecture on SST-2 rows."""
    d = tmp_path_factory.mktemp("run")
    rows = (sst2_dir / "train.tsv").read_text().splitlines(keepends=True)[:401]
    (d / "train.tsv").write_text("".join(rows))
    (d / "config.json").write_text(json.dumps(TRAIN_CONFIG))
    args = ["train", "--data", str(d / "train.tsv"), "--config", str(d / "config.json")]
    assert main([*args, "--out", str(d / "run"), "--steps", "10", "--no-progress"]) == 0
    return d / "run"


def _max_diff(out: str) -> float:
    return float(re.search(r"logit difference (\S+) on", out).group(1))


def test_cli_exports_and_checks_a_trained_checkpoint(run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_text("an older file, replaced atomically")
    assert main(["export", str(run), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed
    assert "on 100 inputs: the validation split of task 'file'" in printed
    assert _max_diff(printed) <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    assert _nodes_of_constants(out) == []
    ckpt = checkpoint.load(run)
    assert ckpt.model.arch.layers[1].looped_heads == (2, 0)
    meta = ort.InferenceSession(str(out)).get_modelmeta().custom_metadata_map
    assert json.loads(meta[META_LABEL_NAMES]) == ckpt.task["label_names"]


def test_check_inputs_come_from_the_task_or_are_random(run):
    ckpt = checkpoint.load(run)
    batches, source = checkpoint_inputs(ckpt, 30)
    assert source == "the validation split of task 'file'"
    val = {tuple(ids) for ids in task_data(TrainConfig.from_dict(ckpt.config), ckpt).val.ids}
    for b in batches:
        for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True):
            assert tuple(ids[mask].tolist()) in val
    data = Path(ckpt.config["data_file"])
    hidden = data.rename(data.with_suffix(".hidden"))
    try:
        batches, source = checkpoint_inputs(ckpt, 30)
    finally:
        hidden.rename(data)
    assert source.startswith(f"random token ids (the task's data are unavailable: data file {data}")
    assert sum(len(b["input_ids"]) for b in batches) == 30


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/run"], "no checkpoint at /nonexistent/run"),
        (["RUN", "--onnx", "/nonexistent/m.onnx"], "directory /nonexistent does not exist"),
        (["RUN", "--check", "-1"], "--check must be >= 0"),
    ],
)
def test_cli_bad_input(run, tmp_path, capsys, args, message):
    args = [str(run) if a == "RUN" else a for a in args]
    if "--onnx" not in args:
        args += ["--onnx", str(tmp_path / "m.onnx")]
    assert main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("growformer: error: ") and message in err and "\n" not in err
