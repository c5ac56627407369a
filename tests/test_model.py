"""Behaviour every model variant must show (the shared model test suite)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import KINDS, MAX_LEN, VARIANTS, VOCAB, arch, batch

from growformer.model import build_model


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
