"""Llama-family decoders (Llama, and the models that share its layout: RMSNorm, SwiGLU,
rotary positions, grouped keys and values, optional biases) as language models."""

from __future__ import annotations

from typing import Any

import torch

from growformer.arch import Architecture, LayerSpec
from growformer.hf.convert.common import (
    Family,
    State,
    require,
    setting,
    take,
    uniform_layers,
)
from growformer.model import ElasticModel

NAME = "llama"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
# growformer's module, Llama's.
LAYER = {
    "ln_1": "input_layernorm",
    "ln_2": "post_attention_layernorm",
    "mlp.gate": "mlp.gate_proj",
    "mlp.fc_in": "mlp.up_proj",
    "mlp.fc_out": "mlp.down_proj",
    **{f"attn.{n}": f"self_attn.{n}" for n in ATTENTION},
}


def _rope_theta(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    require(kind == "default", NAME, f"rope type {kind!r} (only the default RoPE is supported)")
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def to_growformer(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], *, num_labels: int | None
) -> tuple[Architecture, State]:
    require(num_labels is None, NAME, "it is a language model (no num_labels)")
    act = config.get("hidden_act", "silu")
    require(act == "silu", NAME, f"hidden_act {act!r} (SwiGLU needs silu)")
    d_model = setting(config, "hidden_size")
    heads = setting(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    attn_bias = bool(config.get("attention_bias", False))
    mlp_bias = bool(config.get("mlp_bias", False))
    layer = LayerSpec(
        heads=heads,
        head_dim=config.get("head_dim") or d_model // heads,
        ffn_dim=setting(config, "intermediate_size"),
        kv_heads=None if kv_heads == heads else kv_heads,
    )
    arch = Architecture(
        kind="causal_lm",
        d_model=d_model,
        vocab_size=setting(config, "vocab_size"),
        max_len=setting(config, "max_position_embeddings"),
        layers=(layer,) * setting(config, "num_hidden_layers"),
        dropout=float(config.get("attention_dropout", 0.0)),
        norm="rmsnorm",
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        mlp="swiglu",
        positions="rotary",
        rope_theta=_rope_theta(config),
        attn_bias=attn_bias,
        mlp_bias=mlp_bias,
    )
    table = take(tensors, "model.embed_tokens.weight", NAME)
    state: State = {
        "transformer.tok_emb.weight": table,
        "transformer.ln_f.weight": take(tensors, "model.norm.weight", NAME),
        "lm_head.weight": tensors.get("lm_head.weight", table).clone(),
    }
    for i in range(arch.n_layers):
        for ours, theirs in LAYER.items():
            parts = ["weight"]
            if (ours.startswith("attn.") and attn_bias) or (ours.startswith("mlp.") and mlp_bias):
                parts.append("bias")
            for part in parts:
                key = f"model.layers.{i}.{theirs}.{part}"
                state[f"transformer.layers.{i}.{ours}.{part}"] = take(tensors, key, NAME)
    return arch, state


def from_growformer(model: ElasticModel) -> tuple[dict[str, Any], State]:
    arch = model.arch
    heads, head_dim, ffn_dim, kv_heads = uniform_layers(model, NAME)
    require(
        arch.norm == "rmsnorm"
        and arch.norm_position == "pre"
        and arch.mlp == "swiglu"
        and arch.positions == "rotary"
        and arch.embed_rank is None,
        NAME,
        "only a pre-RMSNorm model with SwiGLU and rotary positions is a Llama",
    )
    require(
        arch.d_model % heads == 0,
        NAME,
        f"transformers' Llama configuration needs a width divisible by the head count "
        f"({arch.d_model} by {heads}): keep this model as a growformer checkpoint",
    )
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors: State = {
        "model.embed_tokens.weight": state["transformer.tok_emb.weight"],
        "model.norm.weight": state["transformer.ln_f.weight"],
        "lm_head.weight": state["lm_head.weight"],
    }
    for i in range(arch.n_layers):
        for ours, theirs in LAYER.items():
            for part in ("weight", "bias"):
                key = f"transformer.layers.{i}.{ours}.{part}"
                if key in state:
                    tensors[f"model.layers.{i}.{theirs}.{part}"] = state[key]
    config = {
        "model_type": NAME,
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": arch.d_model,
        "num_hidden_layers": arch.n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads,
        "head_dim": head_dim,
        "intermediate_size": ffn_dim,
        "vocab_size": arch.vocab_size,
        "max_position_embeddings": arch.max_len,
        "rms_norm_eps": arch.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": arch.rope_theta},
        "attention_bias": arch.attn_bias,
        "mlp_bias": arch.mlp_bias,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
    }
    return config, tensors


FAMILY = Family(to_growformer, from_growformer)
