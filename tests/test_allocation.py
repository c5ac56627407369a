"""Allocation: budget planner, SVD factors, head-dimension compression, saturation curves."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from helpers import KINDS, arch, batch

from growformer.allocation import (
    STRATEGIES,
    budget_of,
    compress_head_dim,
    factor_embedding,
    group_kv,
    plan,
    qk_factors,
    ranks_for_tolerance,
    saturation_curves,
    vo_factors,
)
from growformer.arch import Architecture
from growformer.errors import ConfigError
from growformer.model import build_model

PROFILES = [s for s in STRATEGIES if s != "measured"]


def base(n_layers: int = 6, head_dim: int = 32) -> Architecture:
    return Architecture.uniform(
        kind="causal_lm",
        d_model=64,
        vocab_size=50,
        max_len=32,
        n_layers=n_layers,
        heads=4,
        head_dim=head_dim,
        ffn_dim=128,
    )


@pytest.mark.parametrize("strategy", PROFILES)
@pytest.mark.parametrize("budget", [384, 768, 1536])
def test_plan_meets_the_budget(strategy: str, budget: int) -> None:
    planned = plan(strategy, budget=budget, base=base(head_dim=32), head_dim=32)
    if strategy in ("uniform", "front_loaded_heads"):
        assert budget_of(planned) == budget
    else:  # falling head dimensions in multiples of 8 may leave a little unused
        assert 0.9 * budget <= budget_of(planned) <= budget
    assert all(layer.heads >= 1 and layer.head_dim % 8 == 0 for layer in planned.layers)
    assert planned.n_layers == 6 and planned.d_model == 64


def test_plan_profiles() -> None:
    b = base()
    uniform = plan("uniform", budget=768, base=b)
    assert [(x.heads, x.head_dim) for x in uniform.layers] == [(4, 32)] * 6
    front = plan("front_loaded_heads", budget=768, base=b)
    heads = [x.heads for x in front.layers]
    assert heads == sorted(heads, reverse=True) and heads[0] > heads[-1]
    assert {x.head_dim for x in front.layers} == {32}
    tapered = plan("tapered_head_dim", budget=768, base=b)
    dims = [x.head_dim for x in tapered.layers]
    assert dims == sorted(dims, reverse=True) and dims[0] > dims[-1]
    assert {x.heads for x in tapered.layers} == {4}
    both = plan("front_loaded_tapered", budget=768, base=b)
    heads = [x.heads for x in both.layers]
    dims = [x.head_dim for x in both.layers]
    assert heads == sorted(heads, reverse=True) and heads[0] > heads[-1]
    assert dims == sorted(dims, reverse=True) and dims[0] > dims[-1]


def test_plan_measured_gives_width_where_cutting_hurts() -> None:
    def layer(i: int, loss: list[float]) -> dict:
        return {"layer": i, "heads": 2, "head_dim": 32, "head_dims": [8, 16, 32], "loss": loss}

    # Layer 0 loses a lot when cut, layer 1 nothing, layer 2 a little.
    curves = {
        "base_loss": 1.0,
        "layers": [layer(0, [3.0, 2.0, 1.0]), layer(1, [1.0, 1.0, 1.0]), layer(2, [1.3, 1.1, 1.0])],
    }
    planned = plan("measured", budget=96, base=base(n_layers=3), curves=curves)
    dims = [x.head_dim for x in planned.layers]
    assert budget_of(planned) == 96
    assert dims[0] == 32 and dims[1] == 8 and dims[2] == 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strategy": "wide"}, "unknown strategy"),
        ({"budget": 100}, "multiple of 8"),
        ({"budget": 0}, "positive integer"),
        ({"budget": 32 * 5}, "fewer than one head"),
        ({"skew": 1.5}, "skew"),
        ({"strategy": "measured"}, "needs saturation curves"),
        ({"head_dim": 12}, "multiple of 8"),
    ],
)
def test_plan_rejects_bad_input(kwargs: dict, message: str) -> None:
    args = {"strategy": "uniform", "budget": 768, "base": base(), **kwargs}
    with pytest.raises(ConfigError, match=message):
        plan(**args)


def test_factors_are_the_truncated_svd() -> None:
    g = torch.Generator().manual_seed(0)
    wq, wk, wv = (torch.randn(8, 16, generator=g, dtype=torch.float64) for _ in range(3))
    wo = torch.randn(16, 8, generator=g, dtype=torch.float64)
    # Full rank: the same scores and the same value-output map.
    q2, k2 = qk_factors(wq, wk, 8)
    torch.testing.assert_close(q2.T @ k2, wq.T @ wk)
    v2, o2 = vo_factors(wv, wo, 8)
    torch.testing.assert_close(o2 @ v2, wo @ wv)
    # Rank 3: the best rank-3 approximation (Eckart-Young), scores rescaled to sqrt(3).
    u, s, vh = torch.linalg.svd(wq.T @ wk)
    best = (u[:, :3] * s[:3]) @ vh[:3]
    q3, k3 = qk_factors(wq, wk, 3)
    assert q3.shape == (3, 16) and k3.shape == (3, 16)
    torch.testing.assert_close(q3.T @ k3 / math.sqrt(3), best / math.sqrt(8))
    v3, o3 = vo_factors(wv, wo, 3)
    u, s, vh = torch.linalg.svd(wo @ wv)
    torch.testing.assert_close(o3 @ v3, (u[:, :3] * s[:3]) @ vh[:3])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["uniform", "nonuniform", "looped", "fading"])
def test_compress_at_full_rank_keeps_the_function(kind: str, variant: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch(kind, variant)).eval()
    data = batch(kind)
    ranks = [layer.head_dim for layer in model.arch.layers]
    same = compress_head_dim(model, ranks).eval()
    assert same.arch == model.arch
    torch.testing.assert_close(same(**data).logits, model(**data).logits)


@pytest.mark.parametrize("kind", KINDS)
def test_compressed_model_is_the_measured_cut(kind: str) -> None:
    """A model compressed to rank r computes what the saturation curve measured at r."""
    torch.manual_seed(0)
    model = build_model(arch(kind, "nonuniform")).eval()  # head dims 16, 8, 4
    data = batch(kind)
    curves = saturation_curves(model, [data], ranks=[2, 4], per_head=False)
    for layer, rank_index, ranks in ((1, 0, [16, 2, 4]), (0, 1, [4, 8, 4])):
        small = compress_head_dim(model, ranks).eval()
        assert [x.head_dim for x in small.arch.layers] == ranks
        assert small.num_params() < model.num_params()
        measured = curves["layers"][layer]["loss"][rank_index]
        assert small(**data).loss.item() == pytest.approx(measured, rel=1e-5)
        assert measured != pytest.approx(curves["base_loss"], rel=1e-5)


def test_compress_rejects_bad_ranks() -> None:
    model = build_model(arch("causal_lm", "uniform"))
    with pytest.raises(ConfigError, match="2 layers"):
        compress_head_dim(model, [4])
    with pytest.raises(ConfigError, match="positive"):
        compress_head_dim(model, [4, 0])


def test_saturation_curves() -> None:
    torch.manual_seed(0)
    model = build_model(arch("classifier", "uniform"))
    model.train()
    data = batch("classifier")
    curves = saturation_curves(model, [data], ranks=[1, 4, 8])
    assert model.training  # left as it was
    for c in curves["layers"]:
        assert c["head_dims"] == [1, 4, 8]
        # At the full head dimension nothing is cut.
        assert c["loss"][-1] == pytest.approx(curves["base_loss"], rel=1e-6)
        assert len(c["head_loss"]) == c["heads"] == 2
        assert all(
            row[-1] == pytest.approx(curves["base_loss"], rel=1e-6) for row in c["head_loss"]
        )
    assert ranks_for_tolerance(curves, 1e9) == [1, 1]
    assert ranks_for_tolerance(curves, -1.0) == [8, 8]


@pytest.mark.parametrize("kind", KINDS)
def test_group_kv_is_the_mean_of_the_group(kind: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch(kind, "looped")).eval()  # 3 and 2 heads of 8
    data = batch(kind)
    same = group_kv(model, [3, None]).eval()  # one head per group: nothing changes
    torch.testing.assert_close(same(**data).logits, model(**data).logits)
    grouped = group_kv(model, [1, 1]).eval()
    assert [x.kv_heads for x in grouped.arch.layers] == [1, 1]
    k = model.transformer.layers[1].attn.k_proj.weight.view(2, 8, -1).mean(0)
    torch.testing.assert_close(grouped.transformer.layers[1].attn.k_proj.weight, k)
    assert grouped.num_params() < model.num_params()
    assert torch.isfinite(grouped(**data).logits).all()
    with pytest.raises(ConfigError, match="cut head dimensions before"):
        compress_head_dim(grouped, [4, 4])
    with pytest.raises(ConfigError, match="must divide its 3 heads"):
        group_kv(model, [2, None])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["uniform", "compressed"])
def test_factor_embedding_is_the_truncated_svd(kind: str, variant: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch(kind, variant)).eval()  # d_model 32; "compressed" has rank 8
    t = model.transformer
    with torch.no_grad():  # a table of rank 4: factoring it to 4 loses nothing
        t.tok_emb.weight.copy_(t.tok_emb.weight[:, :4] @ torch.randn(4, t.tok_emb.embedding_dim))
    data = batch(kind)
    small = factor_embedding(model, 4).eval()
    assert small.arch == replace(model.arch, embed_rank=4)
    vocab = model.arch.vocab_size
    assert small.num_params() == model.num_params() - sum(
        p.numel() for p in (t.tok_emb.weight, *t.tok_proj.parameters())
    ) + (vocab * 4 + 4 * 32)
    torch.testing.assert_close(small(**data).logits, model(**data).logits, atol=1e-5, rtol=1e-4)
    # Below the table's rank, the best rank-2 table (Eckart-Young).
    table = small.transformer.tok_proj(small.transformer.tok_emb.weight).detach()
    cut = factor_embedding(small, 2).transformer
    u, s, vh = torch.linalg.svd(table.double())
    best = ((u[:, :2] * s[:2]) @ vh[:2]).float()
    torch.testing.assert_close(cut.tok_proj(cut.tok_emb.weight).detach(), best, atol=1e-5, rtol=0)
    for rank in (0, 32, 2.5):
        with pytest.raises(ConfigError, match=r"embed_rank must be an integer in \[1, 32\)"):
            factor_embedding(model, rank)
