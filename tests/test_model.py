"""Behaviour every model variant must show (the shared model test suite)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import KINDS, MAX_LEN, VARIANTS, VOCAB, arch, batch

from growformer import checkpoint, surgery
from growformer.arch import Architecture, LayerSpec, LoopFade
from growformer.data import Tokenizer
from growformer.errors import CheckpointError
from growformer.model import ElasticAttention, KVCache, build_model, head_rows
from growformer.training.config import TrainConfig
from growformer.training.setup import make_optimizer


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


def _grouped_and_reference(kv_heads, heads=4, hd=8, d_model=32):
    """A grouped attention layer and a plain one whose head h has the keys and values of
    the grouped layer's head h // (heads // kv_heads), written out row by row (float64:
    the two differ only by rounding)."""
    torch.manual_seed(0)
    grouped = ElasticAttention(d_model=d_model, heads=heads, head_dim=hd, kv_heads=kv_heads)
    reference = ElasticAttention(d_model=d_model, heads=heads, head_dim=hd)
    grouped, reference = grouped.double(), reference.double()
    group = heads // kv_heads
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            getattr(grouped, name).weight.normal_(0.0, 0.3)
        reference.q_proj.weight.copy_(grouped.q_proj.weight)
        reference.o_proj.weight.copy_(grouped.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(grouped, name).weight
            rows = [w[(h // group) * hd : (h // group + 1) * hd] for h in range(heads)]
            getattr(reference, name).weight.copy_(torch.cat(rows))
    return grouped, reference


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("heads", [None, (3, 0, 1), (1,), (2, 0), (0, 1, 2, 3)])
@pytest.mark.parametrize("masking", ["causal", "padding"])
def test_grouped_attention_equals_repeated_keys_and_values(kv_heads, heads, masking):
    grouped, reference = _grouped_and_reference(kv_heads)
    assert (grouped.heads, grouped.kv_heads, grouped.grouped) == (4, kv_heads, True)
    assert grouped.k_proj.weight.shape == grouped.v_proj.weight.shape == (kv_heads * 8, 32)
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[0, ..., 4:] = False
    args = (x, None, True) if masking == "causal" else (x, mask, False)
    with torch.no_grad():
        if heads is None:
            got, expected = grouped(*args), reference(*args)
        else:
            rows, kv_rows, kv_index = grouped.subset_rows(heads)
            got = grouped(*args, rows=rows, kv_rows=kv_rows, kv_index=kv_index)
            expected = reference(*args, rows=head_rows(heads, 8))
    assert (got - expected).abs().max().item() <= 1e-6


def test_subset_rows_pick_each_group_once():
    grouped, reference = _grouped_and_reference(2)
    # Heads 3, 0, 1 use key/value heads 1, 0, 0: computed once each, then expanded.
    rows, kv_rows, kv_index = grouped.subset_rows((3, 0, 1))
    assert torch.equal(rows, head_rows((3, 0, 1), 8))
    assert torch.equal(kv_rows, head_rows((1, 0), 8)) and kv_index.tolist() == [0, 1, 1]
    # One head per group: no expansion.
    rows, kv_rows, kv_index = grouped.subset_rows((2, 0))
    assert torch.equal(kv_rows, head_rows((1, 0), 8)) and kv_index is None
    # Without grouping the keys and values are the heads' own rows.
    rows, kv_rows, kv_index = reference.subset_rows((3, 1))
    assert torch.equal(rows, kv_rows) and kv_index is None and not reference.grouped
    with pytest.raises(ValueError, match="must be a divisor of heads=4"):
        ElasticAttention(d_model=32, heads=4, head_dim=8, kv_heads=3)


def _decoding_model():
    """Non-uniform heads; loops of depth 1-3 over head subsets; block loops; fades;
    grouped keys and values, looped over heads that use their groups unevenly."""
    layers = (
        LayerSpec(2, 8, 48, loops=1, looped_heads=(1,)),
        LayerSpec(3, 8, 32, loops=3, looped_heads=(0, 2), block_loops=1),
        LayerSpec(1, 16, 64, block_loops=2),
        LayerSpec(4, 4, 48, loops=2, looped_heads=(3,), fade=LoopFade(0, 10, "linear")),
        LayerSpec(2, 8, 32, loops=2, looped_heads=(0, 1)),
        LayerSpec(4, 8, 48, loops=2, looped_heads=(3, 0, 1), kv_heads=2),
        LayerSpec(
            4, 4, 32, loops=1, looped_heads=(2,), block_loops=1, fade=LoopFade(0, 10), kv_heads=1
        ),
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
    # One entry per attention call: 1+1 | (1+3)*2 | 1*3 | 1+2 | 1+2 | 1+2 | (1+1)*2.
    assert len(cache.entries) == 2 + 8 + 3 + 3 + 3 + 3 + 4 and cache.length == 16
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= 1e-5
    # Grouped layers cache their key/value heads, not the copies for each query head: the
    # loops of layer 5 compute key/value heads 1 and 0 (for heads 3, 0, 1).
    assert [k.shape[1] for k, _ in cache.entries[19:]] == [2, 2, 2, 1, 1, 1, 1]


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
    with pytest.raises(ValueError, match="covers 6 positions, but there are 6 cached and 1"):
        cache = KVCache()
        model(prompt, cache=cache)
        model(prompt[:, :1], torch.ones_like(prompt), cache=cache)


def test_cached_decoding_of_left_padded_rows():
    """Left-padded rows, their positions counted from the first real token, decode in
    pieces as in one full forward, and each as if alone."""
    model = _decoding_model()
    ids = torch.randint(4, VOCAB, (3, 16))
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[1, :4] = mask[2, :2] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    bounds = [(0, 5), (5, 8), *((t, t + 1) for t in range(8, 16))]
    with torch.no_grad():
        full = model(ids, mask, position_ids=pos).logits
        cache = KVCache()
        pieces = [
            model(ids[:, a:b], mask[:, :b], cache=cache, position_ids=pos[:, a:b]).logits
            for a, b in bounds
        ]
        alone = model(ids[1:2, 4:]).logits
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= 1e-5
    assert (full[1, 4:] - alone[0]).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    ("layer", "loops"),
    [(4, 0), (0, 0), (6, 2)],
    # More calls (a regression): the fading last layer's extra loop passes have the shapes of
    # the others, and were cached from the new positions on instead of refused.
    ids=["fewer-calls-of-the-same-shape", "a-call-of-another-shape", "more-calls"],
)
def test_a_cache_refuses_a_changed_structure(layer, loops):
    model = _decoding_model()
    cache = KVCache()
    ids = torch.randint(4, VOCAB, (1, 4))
    with torch.no_grad():
        model(ids, cache=cache)
        surgery.set_loops(model, layer, loops, (0,) if loops else None)
        with pytest.raises(ValueError, match="structure changed"):
            model(ids[:, :1], cache=cache)


def test_cached_decoding_without_any_attention_call():
    # Regression (found by tests/test_properties.py): with no head left in any layer the
    # cache counted no position, so every continuation restarted at position 0.
    a = Architecture(
        kind="causal_lm", d_model=8, vocab_size=VOCAB, max_len=MAX_LEN, layers=(LayerSpec(0, 2, 4),)
    )
    torch.manual_seed(0)
    model = build_model(a).eval()
    ids = torch.randint(4, VOCAB, (2, 6))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache()
        pieces = [model(ids[:, :1], cache=cache).logits, model(ids[:, 1:], cache=cache).logits]
    assert cache.length == 6 and not cache.entries
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= 1e-5


def test_grouped_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(arch("causal_lm", "compressed"))
    opt = make_optimizer(model, TrainConfig(lr=1e-2))
    model(**batch("causal_lm")).loss.backward()
    opt.step()
    ckpt_dir = checkpoint.save(
        tmp_path,
        step=1,
        model=model,
        optimizer=opt,
        config={},
        tokenizer_json=Tokenizer.word_level([f"w{i}" for i in range(VOCAB - 4)]).to_json(),
        task={"name": "lm", "kind": "causal_lm"},
        trainer_state={"step": 1},
    )
    written = json.loads((ckpt_dir / "architecture.json").read_text())
    assert [layer["kv_heads"] for layer in written["layers"]] == [2, 2, 1]
    ckpt = checkpoint.load(tmp_path)
    assert ckpt.model.arch == model.arch
    assert ckpt.model.transformer.layers[2].attn.k_proj.weight.shape == (8, 32)
    loaded = ckpt.model.state_dict()
    assert loaded.keys() == model.state_dict().keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded[name]), name
    loaded_opt = make_optimizer(ckpt.model, TrainConfig(lr=1e-2))
    ckpt.load_optimizer(loaded_opt)
    for p, q in zip(model.parameters(), ckpt.model.parameters(), strict=True):
        assert torch.equal(opt.state[p]["exp_avg"], loaded_opt.state[q]["exp_avg"])
    b = batch("causal_lm", seed=5)
    model.eval()
    ckpt.model.eval()
    with torch.no_grad():
        assert torch.equal(model(**b).logits, ckpt.model(**b).logits)
    # An architecture file that groups differently from the weights is refused by name.
    written["layers"][0]["kv_heads"] = 1
    (ckpt_dir / "architecture.json").write_text(json.dumps(written))
    manifest = json.loads((ckpt_dir / "manifest.json").read_text())
    manifest["files"]["architecture.json"] = checkpoint._digest(ckpt_dir / "architecture.json")
    (ckpt_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        CheckpointError,
        match=r"layers.0.attn.k_proj.weight has shape \(16, 32\) but the architecture needs "
        r"\(8, 32\)",
    ):
        checkpoint.load(ckpt_dir)


def test_init_weights_covers_the_smaller_keys_and_values():
    torch.manual_seed(0)
    model = build_model(arch("causal_lm", "compressed"), attn_init="reference")
    attn = model.transformer.layers[0].attn
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert abs(proj.weight.std().item() - 32**-0.5) < 0.03
    model.init_weights()
    assert abs(attn.k_proj.weight.std().item() - 0.02) < 0.003


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
