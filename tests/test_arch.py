"""Architecture: JSON round trip and validation with clear errors."""

from __future__ import annotations

import json

import pytest
from helpers import KINDS, VARIANTS, arch

from growformer.arch import Architecture, LayerSpec
from growformer.errors import ArchitectureError


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_json_round_trip(kind, variant, tmp_path):
    a = arch(kind, variant, dropout=0.1)
    assert Architecture.from_json(a.to_json()) == a
    a.save(tmp_path / "a.json")
    assert Architecture.load(tmp_path / "a.json") == a
    layers = json.loads(a.to_json())["layers"]
    assert {"heads", "head_dim", "loops"} <= layers[0].keys()


def _base(**changes):
    d = arch("classifier", "uniform").to_dict()
    d.update(changes)
    return d


def _layer(**changes):
    d = _base()
    d["layers"][0].update(changes)
    return d


@pytest.mark.parametrize(
    "d, message",
    [
        (_base(kind="decoder"), "kind must be one of"),
        (_base(d_model=0), "d_model must be a positive integer"),
        (_base(vocab_size=-3), "vocab_size must be a positive integer"),
        (_base(max_len=2.5), "max_len must be a positive integer"),
        (_base(num_labels=None), "num_labels must be a positive integer"),
        (_base(num_labels=1), "num_labels must be >= 2"),
        (_base(embed_rank=0), "embed_rank must be a positive integer, got 0"),
        (_base(embed_rank="8"), "embed_rank must be a positive integer"),
        (_base(kind="causal_lm"), "num_labels is only allowed"),
        (_base(dropout=1.0), "dropout must be in"),
        (_base(layers=[]), "at least one layer"),
        (_base(layers={}), "must be a list"),
        (_base(extra=1), "unknown field"),
        (_layer(heads=-1), "layer 0: heads must be an integer >= 0"),
        (_layer(head_dim=0), "layer 0: head_dim must be a positive integer"),
        (_layer(ffn_dim=-8), "layer 0: ffn_dim must be a positive integer"),
        (_layer(loops=1, looped_heads=[2]), "layer 0: looped head 2 is out of range"),
        (_layer(loops=1, looped_heads=[0, 0]), "duplicates"),
        (_layer(loops=1, looped_heads=[]), "needs at least one looped head"),
        (_layer(looped_heads=[0]), "loops is 0"),
        (_layer(heads=0, loops=1, looped_heads=[0]), "out of range"),
        (_layer(width=3), "layer 0 has unknown field"),
        (_layer(looped_heads="0"), "must be a list"),
        (_layer(block_loops=-1), "layer 0: block_loops must be an integer >= 0"),
        (_layer(fade={"start": 0, "steps": 4}), "a fade needs loops > 0"),
        (_layer(loops=1, looped_heads=[0], fade={"start": 0}), "fade is missing steps"),
        (_layer(loops=1, looped_heads=[0], fade=[0, 4]), "fade must be an object"),
        (_layer(loops=1, looped_heads=[0], fade={"start": 0, "steps": 0}), "steps must be an"),
        (_layer(loops=1, looped_heads=[0], fade={"start": -1, "steps": 2}), "start must be an"),
        (
            _layer(loops=1, looped_heads=[0], fade={"start": 0, "steps": 2, "shape": "step"}),
            "fade shape must be one of",
        ),
        (_layer(loops=1, looped_heads=[0], fade={"start": 0, "steps": 2, "at": 1}), "unknown"),
        (_layer(kv_heads=0), "layer 0: kv_heads must be None or an integer >= 1, got 0"),
        (_layer(kv_heads=True), "layer 0: kv_heads must be None or an integer >= 1, got True"),
        (_layer(kv_heads=1.0), "layer 0: kv_heads must be None or an integer >= 1, got 1.0"),
        (_layer(kv_heads=4), "layer 0: kv_heads=4 exceeds heads=2"),
        (_layer(heads=0, kv_heads=1), "layer 0: kv_heads=1 exceeds heads=0"),
        (_layer(heads=3, kv_heads=2), "layer 0: heads=3 is not a multiple of kv_heads=2"),
    ],
)
def test_invalid_architectures_name_the_problem(d, message):
    with pytest.raises(ArchitectureError, match=message):
        Architecture.from_dict(d)


def test_loop_fields_at_their_defaults_are_left_out_of_the_json():
    plain = arch("causal_lm", "looped").to_dict()["layers"]
    assert all("block_loops" not in layer and "fade" not in layer for layer in plain)
    fading = arch("causal_lm", "fading").to_dict()["layers"]
    assert fading[0]["block_loops"] == 1 and "fade" not in fading[0]
    assert fading[1]["fade"] == {"start": 0, "steps": 8, "shape": "cosine"}


def test_kv_heads_only_where_set():
    plain = arch("causal_lm", "uniform")
    assert all("kv_heads" not in layer for layer in plain.to_dict()["layers"])
    assert plain.layers[0].kv_heads is None and plain.layers[0].kv_dim == 16
    grouped = arch("causal_lm", "compressed")
    assert [layer["kv_heads"] for layer in grouped.to_dict()["layers"]] == [2, 2, 1]
    first, _, last = grouped.layers
    assert (first.attn_dim, first.kv_dim, first.group_size) == (32, 16, 2)
    assert (last.attn_dim, last.kv_dim, last.group_size) == (16, 8, 2)
    # Written before kv_heads existed: reads as one key/value head per query head.
    assert Architecture.from_dict(plain.to_dict()) == plain
    assert Architecture.from_dict(_layer(kv_heads=None)).layers[0].kv_heads is None
    assert plain.with_layer(1, kv_heads=1).layers[1] == LayerSpec(2, 8, 48, kv_heads=1)


def test_embed_rank_only_where_set():
    assert "embed_rank" not in arch("causal_lm", "uniform").to_dict()
    compressed = arch("causal_lm", "compressed")
    assert compressed.to_dict()["embed_rank"] == 8
    assert Architecture.from_dict(compressed.to_dict()) == compressed


def test_missing_fields_and_bad_json(tmp_path):
    with pytest.raises(ArchitectureError, match="missing layers"):
        Architecture.from_dict({"kind": "causal_lm", "d_model": 8, "vocab_size": 8, "max_len": 8})
    with pytest.raises(ArchitectureError, match="layer 0 is missing ffn_dim"):
        Architecture.from_dict(_base(layers=[{"heads": 1, "head_dim": 4}]))
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        Architecture.from_json("{layers: [")
    p = tmp_path / "bad.json"
    p.write_text("[1, 2]")
    with pytest.raises(ArchitectureError, match=f"{p}: architecture must be a JSON object"):
        Architecture.load(p)


def test_zero_heads_allowed_without_loops():
    a = Architecture.uniform(
        kind="causal_lm",
        d_model=8,
        vocab_size=8,
        max_len=8,
        n_layers=1,
        heads=0,
        head_dim=4,
        ffn_dim=8,
    )
    assert a.layers[0].heads == 0 and a.layers[0].attn_dim == 0
    assert a.with_layer(0, heads=2).layers[0] == LayerSpec(2, 4, 8)
    with pytest.raises(ArchitectureError):
        a.with_layer(0, loops=1, looped_heads=(0,))
