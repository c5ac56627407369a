"""The block families (``Architecture.norm``, ``norm_position``, ``mlp``, ``positions``,
biases, token types, pooler): what each computes, and that structure changes keep their
function. The shared variants (``bert``, ``gpt2``, ``llama`` in ``helpers.VARIANTS``) run
through every other model, surgery, checkpoint and export test besides."""

from __future__ import annotations

import pytest
import torch
from helpers import VOCAB, arch, batch

from growformer import surgery
from growformer.allocation import compression
from growformer.arch import Architecture
from growformer.errors import ArchitectureError, ConfigError
from growformer.model import KVCache, build_model
from growformer.model.rotary import apply_rotary, rotary_angles


def _random_biases(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every bias a random value (models initialise them at zero, which would hide a
    bias dropped or misplaced by surgery)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"norm": "batchnorm"}, "norm must be one of layernorm, rmsnorm, got 'batchnorm'"),
        ({"norm_position": "sandwich"}, "norm_position must be one of pre, post"),
        ({"mlp": "relu"}, "mlp must be one of gelu, gelu_tanh, swiglu, got 'relu'"),
        ({"positions": "alibi"}, "positions must be one of learned, rotary, none"),
        ({"norm_eps": 0}, "norm_eps must be a positive number, got 0"),
        ({"rope_theta": "big"}, "rope_theta must be a positive number"),
        ({"attn_bias": 1}, "attn_bias must be true or false, got 1"),
        ({"type_vocab_size": -1}, "type_vocab_size must be an integer >= 0, got -1"),
        ({"pooler": True}, "pooler is only allowed for kind 'classifier'"),
    ],
)
def test_invalid_family_fields_name_the_problem(changes, message):
    d = {**arch("causal_lm", "uniform").to_dict(), **changes}
    with pytest.raises(ArchitectureError, match=message):
        Architecture.from_dict(d)


def test_rotary_needs_even_head_widths():
    d = arch("causal_lm", "uniform").to_dict()
    d["layers"][0]["head_dim"] = 7
    with pytest.raises(ArchitectureError, match="rotary positions need even head widths"):
        Architecture.from_dict({**d, "positions": "rotary"})


def test_family_fields_only_where_they_differ_from_the_default():
    assert (
        not {"norm", "mlp", "positions", "attn_bias"}
        & arch("causal_lm", "uniform").to_dict().keys()
    )
    llama = arch("causal_lm", "llama")
    d = llama.to_dict()
    assert {k: d[k] for k in ("norm", "mlp", "positions", "mlp_bias")} == {
        "norm": "rmsnorm",
        "mlp": "swiglu",
        "positions": "rotary",
        "mlp_bias": False,
    }
    assert "attn_bias" not in d and Architecture.from_dict(d) == llama


def test_rotary_is_a_rotation_of_each_channel_pair():
    """Channels i and i + head_dim/2 as one complex number, turned by position * frequency."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64)
    positions = torch.tensor([0, 1, 4, 9, 30])
    cos, sin = rotary_angles(positions, 8, 100.0)
    got = apply_rotary(x, cos.double(), sin.double())
    z = torch.complex(x[..., :4], x[..., 4:])
    freq = 100.0 ** (-torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    turned = z * torch.polar(torch.ones(5, 4, dtype=torch.float64), positions[:, None] * freq)
    # The angles are float32, as transformers' Llama computes them.
    torch.testing.assert_close(got, torch.cat((turned.real, turned.imag), -1), atol=1e-5, rtol=0)


def test_rotary_attention_sees_only_relative_positions():
    """Without a position table, shifting every position changes nothing: the logits of a
    rotary model depend on the distance between query and key alone."""
    torch.manual_seed(0)
    model = build_model(arch("classifier", "llama")).eval()
    ids = batch("classifier")["input_ids"]
    positions = torch.arange(ids.shape[1])
    with torch.no_grad():
        at_zero = model.transformer(ids, position_ids=positions)
        shifted = model.transformer(ids, position_ids=positions + 7)
    torch.testing.assert_close(at_zero, shifted, atol=1e-5, rtol=1e-5)
    assert not hasattr(model.transformer, "pos_emb")


@pytest.mark.parametrize("variant", ["bert", "gpt2", "llama"])
def test_cached_decoding_equals_the_full_forward(variant):
    torch.manual_seed(0)
    model = build_model(arch("causal_lm", variant)).eval()
    _random_biases(model)
    ids = torch.randint(4, VOCAB, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache()
        pieces = [model(ids[:, :5], cache=cache).logits]
        pieces += [model(ids[:, t : t + 1], cache=cache).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_without_positions_an_encoder_is_blind_to_order():
    torch.manual_seed(0)
    a = Architecture.from_dict({**arch("classifier", "uniform").to_dict(), "positions": "none"})
    model = build_model(a).eval()
    ids = torch.randint(4, VOCAB, (3, 10))
    order = torch.cat((torch.tensor([0]), torch.randperm(9) + 1))  # [CLS] stays first
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, model(ids[:, order]).logits)


def test_blocks_compute_their_family():
    """One layer by hand: post-norm BERT (biases, exact GELU, token types, pooler) and
    pre-norm Llama (RMSNorm, SwiGLU)."""
    torch.manual_seed(0)
    bert = build_model(arch("classifier", "bert")).eval()
    _random_biases(bert)
    t, block = bert.transformer, bert.transformer.layers[0]
    ids, types = torch.randint(4, VOCAB, (2, 6)), torch.randint(0, 2, (2, 6))
    x = t.tok_emb(ids) + t.pos_emb(torch.arange(6)) + t.type_emb(types)
    x = t.ln_emb(x)
    h = block.ln_1(x + block.attn(x))
    ffn = block.mlp.fc_out(torch.nn.functional.gelu(block.mlp.fc_in(h)))
    expected = block.ln_2(h + ffn)
    with torch.no_grad():
        got = block(x, None, False)
        torch.testing.assert_close(got, expected)
        hidden = t(ids, token_type_ids=types)
        logits = bert(ids, token_type_ids=types).logits
    pooled = torch.tanh(bert.pooler[0](hidden[:, 0]))
    torch.testing.assert_close(logits, bert.classifier(pooled))

    llama = build_model(arch("causal_lm", "llama")).eval()
    block = llama.transformer.layers[0]
    h = torch.randn(2, 6, 32)
    rms = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * block.ln_2.weight
    mlp = block.mlp
    expected = h + mlp.fc_out(torch.nn.functional.silu(mlp.gate(rms)) * mlp.fc_in(rms))
    with torch.no_grad():
        got = h + block.mlp(block.ln_2(h))
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("variant", ["bert", "gpt2", "llama"])
def test_head_surgery_carries_biases(variant):
    """A removed head takes its query, key and value biases with it (the output bias
    stays); a head added with a zero output changes nothing; AdamW's moments of the bias
    rows follow their heads."""
    torch.manual_seed(0)
    model = build_model(arch("causal_lm", variant)).eval()
    _random_biases(model)
    attn = model.transformer.layers[1].attn
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(**batch("causal_lm")).loss.backward()
    optimizer.step()
    ids = batch("causal_lm")["input_ids"]
    bias = attn.q_proj.bias if attn.q_proj.bias is not None else None
    moment = None if bias is None else optimizer.state[bias]["exp_avg"].clone()
    with torch.no_grad():
        before = model(ids).logits
        surgery.add_head(model, optimizer, 1)
        torch.testing.assert_close(model(ids).logits, before, atol=1e-6, rtol=0)
        # Head 0's output switched off by hand, then the head removed: the same function.
        hd = attn.head_dim
        attn.o_proj.weight[:, :hd] = 0
        silenced = model(ids).logits
        surgery.remove_head(model, optimizer, 1, 0)
        torch.testing.assert_close(model(ids).logits, silenced, atol=1e-6, rtol=0)
    if moment is not None:
        new_moment = optimizer.state[attn.q_proj.bias]["exp_avg"]
        # Heads 1.. moved down by one; the added head (last) starts with zero moments.
        torch.testing.assert_close(new_moment[: moment.numel() - hd], moment[hd:])
        assert not new_moment[moment.numel() - hd :].any()


def test_head_dimension_cuts_refuse_what_the_svd_cannot_hold():
    for variant, reason in (("llama", "rotary positions"), ("gpt2", "attention biases")):
        model = build_model(arch("causal_lm", variant))
        ranks = [layer.head_dim // 2 for layer in model.arch.layers]
        with pytest.raises(ConfigError, match=reason):
            compression.compress_head_dim(model, ranks)
        with pytest.raises(ConfigError, match=reason):
            compression.truncate_heads(model, 0, [0], 2)


def test_grouping_keys_and_values_averages_their_biases():
    torch.manual_seed(0)
    model = build_model(arch("causal_lm", "gpt2")).eval()
    _random_biases(model)
    ids = batch("causal_lm")["input_ids"]
    # One key/value head per query head: nothing is averaged, the function stays.
    same = compression.group_kv(model, [2, 1])
    with torch.no_grad():
        torch.testing.assert_close(same(ids).logits, model(ids).logits)
    pair = compression.group_kv(model, [1, None])
    k_bias = model.transformer.layers[0].attn.k_proj.bias.view(2, -1).mean(0)
    torch.testing.assert_close(pair.transformer.layers[0].attn.k_proj.bias, k_bias)
