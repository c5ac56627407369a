"""Behaviour every model variant must show (the shared model test suite)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import KINDS, MAX_LEN, VARIANTS, VOCAB, arch, batch

from growformer import surgery
from growformer.arch import Architecture, LayerSpec, LoopFade
from growformer.model import KVCache, build_model


@pytest.fixture(params=[(k, v) for k in KINDS for v in VARIANTS], ids=lambda p: "-".join(p))
def case(request):
    kind, variant = request.param
    torch.manual_seed(0)
    return kind, build_model(arch(kind, variant))


def test_architecture_is_read_off_the_modules(case):
    kind, model = case
    assert model.arch == arch(kind, model.arch.layers and _variant_of(model))
    assert model.arch.to_dict()["layers"][0]["heads"] == model.transformer.layers[0].attn.heads


def _variant_of(model):
    return next(v for v in VARIANTS if arch(model.arch.kind, v).layers == model.arch.layers)


def test_output_shapes_and_loss(case):
    kind, model = case
    b = batch(kind)
    out = model(**b)
    expected = (4, 3) if kind == "classifier" else (4, 12, VOCAB)
    assert out.logits.shape == expected
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        layer = name.split(".")[2] if name.startswith("transformer.layers.") else None
        idle = layer is not None and model.arch.layers[int(layer)].heads == 0 and ".ln_1." in name
        if p.numel() and not idle:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_does_not_change_real_positions(variant):
    """Classifiers see padded batches (language models train on unpadded blocks)."""
    torch.manual_seed(0)
    model = build_model(arch("classifier", variant))
    model.eval()
    ids = torch.randint(4, VOCAB, (1, 8))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 5)], 1).bool()
    with torch.no_grad():
        a = model(ids).logits
        b = model(padded, mask).logits
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_causal_model_ignores_the_future(variant):
    torch.manual_seed(0)
    model = build_model(arch("causal_lm", variant))
    model.eval()
    ids = torch.randint(4, VOCAB, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = torch.randint(4, VOCAB, (2, 4))
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_loops_rerun_only_the_looped_heads():
    """A looped layer equals: full attention, then passes through only the looped heads."""
    torch.manual_seed(0)
    model = build_model(arch("causal_lm", "looped"))
    model.eval()
    block = model.transformer.layers[1]
    attn, hd = block.attn, block.attn.head_dim
    x = torch.randn(2, 7, 32)
    h = x + attn(block.ln_1(x), None, True)
    rows = slice(1 * hd, 2 * hd)
    for _ in range(2):
        z = block.ln_1(h)
        q, k, v = (
            F.linear(z, w[rows]).view(2, 7, 1, hd).transpose(1, 2)
            for w in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight)
        )
        y = (
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
            .transpose(1, 2)
            .reshape(2, 7, hd)
        )
        h = h + F.linear(y, attn.o_proj.weight[:, rows])
    expected = h + block.mlp(block.ln_2(h))
    with torch.no_grad():
        assert torch.allclose(block(x, None, True), expected, atol=1e-6)


def test_block_loops_rerun_the_whole_block():
    torch.manual_seed(0)
    model = build_model(arch("classifier", "fading")).eval()
    block = model.transformer.layers[0]
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        looped = block(x, None, False)
        block.block_loops = 0  # the same block, one pass at a time
        once = block(block(x, None, False), None, False)
    assert torch.allclose(looped, once, atol=1e-6)


def _decoding_model():
    """Non-uniform heads; loops of depth 1-3 over head subsets; block loops; a fade."""
    layers = (
        LayerSpec(2, 8, 48, loops=1, looped_heads=(1,)),
        LayerSpec(3, 8, 32, loops=3, looped_heads=(0, 2), block_loops=1),
        LayerSpec(1, 16, 64, block_loops=2),
        LayerSpec(4, 4, 48, loops=2, looped_heads=(3,), fade=LoopFade(0, 10, "linear")),
        LayerSpec(2, 8, 32, loops=2, looped_heads=(0, 1)),
    )
    a = Architecture(kind="causal_lm", d_model=32, vocab_size=VOCAB, max_len=MAX_LEN, layers=layers)
    torch.manual_seed(0)
    model = build_model(a).eval()
    surgery.advance(model, 3)  # the fading layer at level 0.7
    return model


def test_cached_decoding_equals_the_full_forward():
    model = _decoding_model()
    ids = torch.randint(4, VOCAB, (3, 16))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache()
        pieces = [model(ids[:, :5], cache=cache).logits, model(ids[:, 5:8], cache=cache).logits]
        pieces += [model(ids[:, t : t + 1], cache=cache).logits for t in range(8, 16)]
    # One entry per attention call: 1+1 | (1+3)*2 | 1*3 | 1+2 | 1+2.
    assert len(cache.entries) == 2 + 8 + 3 + 3 + 3 and cache.length == 16
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= 1e-5


def test_generate_continues_greedily_with_the_cache():
    model = _decoding_model()
    prompt = torch.randint(4, VOCAB, (2, 6))
    out = model.generate(prompt, 8)
    ids = prompt
    with torch.no_grad():
        for _ in range(8):  # without a cache: the whole sequence every time
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    sampled = model.generate(prompt, 4, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (2, 10) and torch.equal(sampled[:, :6], prompt)
    with pytest.raises(ValueError, match="exceeds max_len"):
        model.generate(prompt, MAX_LEN)
    with pytest.raises(ValueError, match="causal, unpadded"):
        model(prompt, torch.ones_like(prompt), cache=KVCache())


@pytest.mark.parametrize(
    "layer", [4, 0], ids=["fewer-calls-of-the-same-shape", "a-call-of-another-shape"]
)
def test_a_cache_refuses_a_changed_structure(layer):
    model = _decoding_model()
    cache = KVCache()
    ids = torch.randint(4, VOCAB, (1, 4))
    with torch.no_grad():
        model(ids, cache=cache)
        surgery.set_loops(model, layer, 0)
        with pytest.raises(ValueError, match="structure changed"):
            model(ids[:, :1], cache=cache)


def test_too_long_input_is_refused():
    model = build_model(arch("classifier", "uniform"))
    with pytest.raises(ValueError, match="exceeds max_len"):
        model(torch.zeros(1, MAX_LEN + 1, dtype=torch.long))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = build_model(arch("classifier", "uniform", dropout=0.5))
    b = batch("classifier")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**b).logits, model(**b).logits)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(**b).logits, model(**b).logits)
