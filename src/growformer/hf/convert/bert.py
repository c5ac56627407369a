"""BERT-family encoders (BERT, MiniLM, sentence-transformers' BERT models) as
classifiers: post-norm layers with biases, exact GELU, learned positions, token types, the
tanh pooler on [CLS] where the source has one, and its classifier (or a new one)."""

from __future__ import annotations

from typing import Any

import torch

from growformer.arch import Architecture, LayerSpec
from growformer.hf.convert.common import (
    Family,
    State,
    prefix_of,
    require,
    setting,
    take,
    uniform_layers,
)
from growformer.model import ElasticModel

NAME = "bert"
# growformer's names for a layer's modules, and BERT's.
LAYER = {
    "attn.q_proj": "attention.self.query",
    "attn.k_proj": "attention.self.key",
    "attn.v_proj": "attention.self.value",
    "attn.o_proj": "attention.output.dense",
    "ln_1": "attention.output.LayerNorm",
    "mlp.fc_in": "intermediate.dense",
    "mlp.fc_out": "output.dense",
    "ln_2": "output.LayerNorm",
}
EMBEDDINGS = {
    "tok_emb.weight": "word_embeddings.weight",
    "pos_emb.weight": "position_embeddings.weight",
    "type_emb.weight": "token_type_embeddings.weight",
    "ln_emb.weight": "LayerNorm.weight",
    "ln_emb.bias": "LayerNorm.bias",
}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def to_growformer(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], *, num_labels: int | None
) -> tuple[Architecture, State]:
    act = config.get("hidden_act", "gelu")
    require(act in ACTIVATIONS, NAME, f"hidden_act {act!r} (supported: {', '.join(ACTIVATIONS)})")
    positions = config.get("position_embedding_type", "absolute")
    require(positions == "absolute", NAME, f"position_embedding_type {positions!r}")
    require(not config.get("is_decoder"), NAME, "it is a decoder (is_decoder)")
    base = prefix_of(tensors, "embeddings.word_embeddings.weight", ("bert.", ""))
    d_model = setting(config, "hidden_size")
    heads = setting(config, "num_attention_heads")
    classifier = tensors.get("classifier.weight")
    if classifier is not None:
        require(
            num_labels in (None, classifier.shape[0]),
            NAME,
            f"its classifier has {classifier.shape[0]} classes, not {num_labels}",
        )
        num_labels = classifier.shape[0]
    pooled = base + "pooler.dense.weight" in tensors
    layer = LayerSpec(
        heads=heads, head_dim=d_model // heads, ffn_dim=setting(config, "intermediate_size")
    )
    arch = Architecture(
        kind="classifier",
        d_model=d_model,
        vocab_size=setting(config, "vocab_size"),
        max_len=setting(config, "max_position_embeddings"),
        layers=(layer,) * setting(config, "num_hidden_layers"),
        num_labels=num_labels or 2,
        dropout=float(config.get("hidden_dropout_prob", 0.1)),
        norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        norm_position="post",
        mlp=ACTIVATIONS[act],
        attn_bias=True,
        type_vocab_size=setting(config, "type_vocab_size", 2),
        pooler=pooled,
    )
    state: State = {}
    for ours, theirs in EMBEDDINGS.items():
        state["transformer." + ours] = take(tensors, f"{base}embeddings.{theirs}", NAME)
    for i in range(arch.n_layers):
        for ours, theirs in LAYER.items():
            for part in ("weight", "bias"):
                key = f"{base}encoder.layer.{i}.{theirs}.{part}"
                state[f"transformer.layers.{i}.{ours}.{part}"] = take(tensors, key, NAME)
    if pooled:
        for part in ("weight", "bias"):
            state[f"pooler.0.{part}"] = take(tensors, f"{base}pooler.dense.{part}", NAME)
    if classifier is not None:
        state["classifier.weight"] = classifier
        state["classifier.bias"] = take(tensors, "classifier.bias", NAME)
    return arch, state


def from_growformer(model: ElasticModel) -> tuple[dict[str, Any], State]:
    arch = model.arch
    heads, head_dim, ffn_dim, kv_heads = uniform_layers(model, NAME)
    require(
        arch.norm_position == "post" and arch.attn_bias and arch.positions == "learned",
        NAME,
        "only a post-norm model with biases and learned positions is a BERT",
    )
    require(
        arch.pooler and arch.type_vocab_size > 0,
        NAME,
        "transformers' BERT classifier has a pooler and token types",
    )
    require(
        heads * head_dim == arch.d_model and kv_heads is None,
        NAME,
        f"BERT's heads span the width ({heads} x {head_dim} != {arch.d_model}): "
        "transformers has no pruned-head BERT, keep this model as a growformer checkpoint",
    )
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors: State = {}
    for ours, theirs in EMBEDDINGS.items():
        tensors[f"bert.embeddings.{theirs}"] = state["transformer." + ours]
    for i in range(arch.n_layers):
        for ours, theirs in LAYER.items():
            for part in ("weight", "bias"):
                tensors[f"bert.encoder.layer.{i}.{theirs}.{part}"] = state[
                    f"transformer.layers.{i}.{ours}.{part}"
                ]
    if arch.pooler:
        for part in ("weight", "bias"):
            tensors[f"bert.pooler.dense.{part}"] = state[f"pooler.0.{part}"]
    tensors["classifier.weight"] = state["classifier.weight"]
    tensors["classifier.bias"] = state["classifier.bias"]
    config = {
        "model_type": NAME,
        "architectures": ["BertForSequenceClassification"],
        "hidden_size": arch.d_model,
        "num_hidden_layers": arch.n_layers,
        "num_attention_heads": heads,
        "intermediate_size": ffn_dim,
        "hidden_act": {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[arch.mlp],
        "vocab_size": arch.vocab_size,
        "max_position_embeddings": arch.max_len,
        "type_vocab_size": arch.type_vocab_size,
        "layer_norm_eps": arch.norm_eps,
        "hidden_dropout_prob": arch.dropout,
        "attention_probs_dropout_prob": arch.dropout,
        "num_labels": arch.num_labels,
    }
    return config, tensors


FAMILY = Family(to_growformer, from_growformer, may_be_new=("classifier.weight", "classifier.bias"))
