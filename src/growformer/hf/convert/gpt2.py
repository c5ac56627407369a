"""GPT-2 as a language model: pre-norm layers with biases, tanh GELU, learned positions,
the output layer tied to the token table (copied: growformer's output layer is its own).

GPT-2 stores its projections as ``Conv1D`` (input x output) and its query, key and value
projections as one ``c_attn``: both are undone here."""

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

NAME = "gpt2"
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
NORMS = {"ln_1": "ln_1", "ln_2": "ln_2"}
# growformer's module, GPT-2's Conv1D (weights stored transposed).
DENSE = {"attn.o_proj": "attn.c_proj", "mlp.fc_in": "mlp.c_fc", "mlp.fc_out": "mlp.c_proj"}


def to_growformer(
    config: dict[str, Any], tensors: dict[str, torch.Tensor], *, num_labels: int | None
) -> tuple[Architecture, State]:
    require(num_labels is None, NAME, "it is a language model (no num_labels)")
    act = config.get("activation_function", "gelu_new")
    require(act in ACTIVATIONS, NAME, f"activation_function {act!r}")
    require(config.get("scale_attn_weights", True), NAME, "scale_attn_weights is false")
    require(
        not config.get("scale_attn_by_inverse_layer_idx"),
        NAME,
        "scale_attn_by_inverse_layer_idx is set",
    )
    base = prefix_of(tensors, "wte.weight", ("transformer.", ""))
    d_model = setting(config, "n_embd")
    heads = setting(config, "n_head")
    layer = LayerSpec(
        heads=heads, head_dim=d_model // heads, ffn_dim=config.get("n_inner") or 4 * d_model
    )
    arch = Architecture(
        kind="causal_lm",
        d_model=d_model,
        vocab_size=setting(config, "vocab_size"),
        max_len=setting(config, "n_positions"),
        layers=(layer,) * setting(config, "n_layer"),
        dropout=float(config.get("resid_pdrop", 0.1)),
        norm_eps=float(config.get("layer_norm_epsilon", 1e-5)),
        mlp=ACTIVATIONS[act],
        attn_bias=True,
    )
    wte = take(tensors, base + "wte.weight", NAME)
    state: State = {
        "transformer.tok_emb.weight": wte,
        "transformer.pos_emb.weight": take(tensors, base + "wpe.weight", NAME),
        "transformer.ln_f.weight": take(tensors, base + "ln_f.weight", NAME),
        "transformer.ln_f.bias": take(tensors, base + "ln_f.bias", NAME),
        "lm_head.weight": tensors.get("lm_head.weight", wte).clone(),
    }
    for i in range(arch.n_layers):
        theirs, ours = f"{base}h.{i}.", f"transformer.layers.{i}."
        for name in ("ln_1", "ln_2"):
            for part in ("weight", "bias"):
                state[f"{ours}{name}.{part}"] = take(tensors, f"{theirs}{name}.{part}", NAME)
        qkv = take(tensors, theirs + "attn.c_attn.weight", NAME).T
        qkv_bias = take(tensors, theirs + "attn.c_attn.bias", NAME)
        for n, w, b in zip("qkv", qkv.chunk(3), qkv_bias.chunk(3), strict=True):
            state[f"{ours}attn.{n}_proj.weight"] = w
            state[f"{ours}attn.{n}_proj.bias"] = b
        for mine, conv in DENSE.items():
            state[f"{ours}{mine}.weight"] = take(tensors, f"{theirs}{conv}.weight", NAME).T
            state[f"{ours}{mine}.bias"] = take(tensors, f"{theirs}{conv}.bias", NAME)
    return arch, state


def from_growformer(model: ElasticModel) -> tuple[dict[str, Any], State]:
    arch = model.arch
    heads, head_dim, ffn_dim, kv_heads = uniform_layers(model, NAME)
    require(
        arch.norm == "layernorm"
        and arch.norm_position == "pre"
        and arch.mlp in ("gelu", "gelu_tanh")
        and arch.attn_bias
        and arch.mlp_bias
        and arch.positions == "learned"
        and arch.embed_rank is None,
        NAME,
        "only a pre-LayerNorm model with biases, a GELU MLP and learned positions is a GPT-2",
    )
    require(
        heads * head_dim == arch.d_model and kv_heads is None,
        NAME,
        f"GPT-2's heads span the width ({heads} x {head_dim} != {arch.d_model}): keep this "
        "model as a growformer checkpoint",
    )
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors: State = {
        "transformer.wte.weight": state["transformer.tok_emb.weight"],
        "transformer.wpe.weight": state["transformer.pos_emb.weight"],
        "transformer.ln_f.weight": state["transformer.ln_f.weight"],
        "transformer.ln_f.bias": state["transformer.ln_f.bias"],
        "lm_head.weight": state["lm_head.weight"],
    }
    for i in range(arch.n_layers):
        theirs, ours = f"transformer.h.{i}.", f"transformer.layers.{i}."
        for name in ("ln_1", "ln_2"):
            for part in ("weight", "bias"):
                tensors[f"{theirs}{name}.{part}"] = state[f"{ours}{name}.{part}"]
        tensors[theirs + "attn.c_attn.weight"] = torch.cat(
            [state[f"{ours}attn.{n}_proj.weight"] for n in "qkv"]
        ).T
        tensors[theirs + "attn.c_attn.bias"] = torch.cat(
            [state[f"{ours}attn.{n}_proj.bias"] for n in "qkv"]
        )
        for mine, conv in DENSE.items():
            tensors[f"{theirs}{conv}.weight"] = state[f"{ours}{mine}.weight"].T
            tensors[f"{theirs}{conv}.bias"] = state[f"{ours}{mine}.bias"]
    config = {
        "model_type": NAME,
        "architectures": ["GPT2LMHeadModel"],
        "n_embd": arch.d_model,
        "n_layer": arch.n_layers,
        "n_head": heads,
        "n_inner": ffn_dim,
        "n_positions": arch.max_len,
        "vocab_size": arch.vocab_size,
        "activation_function": {"gelu": "gelu", "gelu_tanh": "gelu_new"}[arch.mlp],
        "layer_norm_epsilon": arch.norm_eps,
        "resid_pdrop": arch.dropout,
        "embd_pdrop": arch.dropout,
        "attn_pdrop": arch.dropout,
        # growformer's output layer is its own: the exported model keeps it untied.
        "tie_word_embeddings": bool(
            torch.equal(state["lm_head.weight"], state["transformer.tok_emb.weight"])
        ),
    }
    return config, tensors


FAMILY = Family(to_growformer, from_growformer)
