"""SGT: attention entropy, the schedule, soft starts, FLOPs, whole and composed runs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from helpers import arch, batch

from growformer import surgery
from growformer.arch import Architecture, LayerSpec, LoopFade
from growformer.errors import ConfigError, SurgeryError
from growformer.events import Event
from growformer.flops import layer_components, train_step_flops, without_loops
from growformer.model import build_model, head_rows
from growformer.policies import SgtPolicy, make_policy
from growformer.statistics import ENTROPY, ENTROPY_ALL, attention_entropy, capture
from growformer.training.config import TrainConfig
from growformer.training.loop import Trainer, train
from growformer.training.setup import make_optimizer

# --- attention entropy -------------------------------------------------------------------


def _brute_entropy(z, wq, wk, hd, mask, causal, all_rows):
    """Per sequence and head: softmax rows written out key by key, in float64."""
    b, t, _ = z.shape
    heads = wq.shape[0] // hd
    z, wq, wk = z.double(), wq.double(), wk.double()
    out = torch.zeros(b, heads, dtype=torch.float64)
    for i in range(b):
        real = [j for j in range(t) if mask is None or mask[i, j]]
        rows = real if all_rows else [real[-1] if causal else 0]
        for h in range(heads):
            sl = slice(h * hd, (h + 1) * hd)
            values = []
            for r in rows:
                keys = [j for j in real if not causal or j <= r]
                q = wq[sl] @ z[i, r]
                scores = torch.stack([q @ (wk[sl] @ z[i, j]) for j in keys]) / math.sqrt(hd)
                p = torch.softmax(scores, 0)
                ent = -(p * p.log()).sum().item()
                values.append(ent / math.log(len(keys)) if len(keys) > 1 else 0.0)
            out[i, h] = sum(values) / len(values)
    return out


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("all_rows", [False, True], ids=["one-row", "all-rows"])
def test_entropy_equals_brute_force_softmax(causal, all_rows):
    g = torch.Generator().manual_seed(0)
    b, t, d, hd, heads = 4, 9, 12, 3, 4
    z = torch.randn(b, t, d, generator=g)
    # Large weights: entropies spread over (0, 1) instead of sitting at the uniform 1.
    wq = torch.randn(heads * hd, d, generator=g) * 0.6
    wk = torch.randn(heads * hd, d, generator=g) * 0.6
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 5:] = False  # padding
    mask[2, 1:] = False  # one real token: entropy 0 by definition
    got = attention_entropy(z, wq, wk, hd, mask, causal=causal, all_rows=all_rows)
    expected = _brute_entropy(z, wq, wk, hd, mask, causal, all_rows)
    assert got.shape == (b, heads)
    assert torch.allclose(got.double(), expected, atol=1e-5)
    assert (got[2] == 0).all() and got[0].min() > 0.05 and got[0].max() < 0.99
    # Without a mask every position is real.
    full = attention_entropy(z, wq, wk, hd, None, causal=causal, all_rows=all_rows)
    expected = _brute_entropy(z, wq, wk, hd, None, causal, all_rows)
    assert torch.allclose(full.double(), expected, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "encoder"])
@pytest.mark.parametrize("all_rows", [False, True], ids=["one-row", "all-rows"])
def test_grouped_entropy_uses_each_head_group_keys(causal, all_rows):
    g = torch.Generator().manual_seed(0)
    b, t, d, hd, heads, kv_heads = 3, 8, 12, 3, 4, 2
    z = torch.randn(b, t, d, generator=g)
    wq = torch.randn(heads * hd, d, generator=g) * 0.6
    wk = torch.randn(kv_heads * hd, d, generator=g) * 0.6
    # Query head h uses key head h // 2: heads 0, 1 the first rows, heads 2, 3 the second.
    repeated = torch.cat([wk[:hd], wk[:hd], wk[hd:], wk[hd:]])
    got = attention_entropy(z, wq, wk, hd, None, causal=causal, all_rows=all_rows)
    expected = _brute_entropy(z, wq, repeated, hd, None, causal, all_rows)
    assert got.shape == (b, heads)
    assert torch.allclose(got.double(), expected, atol=1e-5)


@pytest.mark.parametrize("variant", ["looped", "compressed"])
@pytest.mark.parametrize("kind", ["causal_lm", "classifier"])
def test_captured_entropy_is_the_first_attention_pass(kind, variant):
    """The capture averages each layer's first pass over the batch: loop passes and block
    loops, which run the same pre-norm again, do not count."""
    torch.manual_seed(0)
    a = arch(kind, variant)
    a = a.with_layer(0, block_loops=2)
    model = build_model(a).eval()
    b = batch(kind)
    mask = b.get("attention_mask")
    inputs = {}

    def first_input(i, args):
        inputs.setdefault(i, args[0])

    hooks = [
        block.register_forward_pre_hook(lambda m, args, i=i: first_input(i, args))
        for i, block in enumerate(model.transformer.layers)
    ]
    with torch.no_grad(), capture(model, mask, {ENTROPY, ENTROPY_ALL}) as captured:
        model(b["input_ids"], mask)
    for h in hooks:
        h.remove()
    stats = captured.results(model, loss=lambda: 0.0)
    assert set(stats) == {ENTROPY, ENTROPY_ALL}
    for name, all_rows in ((ENTROPY, False), (ENTROPY_ALL, True)):
        for i, block in enumerate(model.transformer.layers):
            a_ = block.attn
            expected = attention_entropy(
                block.ln_1(inputs[i]),
                a_.q_proj.weight,
                a_.k_proj.weight,
                a_.head_dim,
                mask,
                causal=kind == "causal_lm",
                all_rows=all_rows,
            ).mean(0)
            assert torch.allclose(stats[name][i], expected, atol=1e-6)
            assert stats[name][i].shape == (a_.heads,)


# --- the schedule on constructed entropies -----------------------------------------------

# Layer scores (mean over 3 heads) 0.85, 0.25, 0.65, 0.6: the top 3 are layers 1, 3 and 4;
# layer 0 is never ranked.
SCORES = [[0.99] * 3, [0.9, 0.8, 0.85], [0.2, 0.3, 0.25], [0.7, 0.6, 0.65], [0.5, 0.7, 0.6]]


def _drive(policy, entropies, steps):
    """Feed ``entropies(step)`` whenever asked; return (step, op, layer, loops, heads, fade)."""
    out, asked = [], []
    for step in range(1, steps + 1):
        needs = policy.needs(step)
        asked.append(bool(needs))
        stats = {
            name: [torch.tensor(e, dtype=torch.float32) for e in entropies(step)] for name in needs
        }
        for e in (e for turn in policy.decide_from(step, stats) for e in turn):
            out.append((step, e.op, e.layer, e.loops, e.looped_heads, e.fade))
    return out, asked


OPTIONS = {"warmup": 10, "window": 10}


def test_selects_deep_to_shallow_then_freezes():
    p = make_policy("sgt", OPTIONS)
    events, asked = _drive(p, lambda s: SCORES, 60)
    assert events == [
        (10, "set_loops", 4, 1, (1, 2), "linear"),
        (20, "set_loops", 3, 1, (0, 2), "linear"),
        (30, "set_loops", 1, 1, (0, 2), "linear"),
    ]
    assert p.frozen_step == 40
    # Statistics in the 8 steps before each decision until frozen, then never again.
    assert asked == ([False] * 2 + [True] * 8) * 4 + [False] * 20
    every = make_policy("sgt", {**OPTIONS, "stat_steps": None})
    assert _drive(every, lambda s: SCORES, 60) == (events, [True] * 40 + [False] * 20)
    log = p.drain_log()
    assert [r["action"] for r in log] == ["select", "select", "select", "freeze"]
    assert log[0]["scores"][0] is None and log[0]["scores"][1] == pytest.approx(0.85)
    assert log[0]["top"] == [1, 3, 4] and log[-1]["selected"] == [4, 3, 1]


def test_deepening_comes_first_up_to_max_loops():
    p = make_policy("sgt", {**OPTIONS, "max_loops": 2})
    events, _ = _drive(p, lambda s: SCORES, 80)
    assert [(s, layer, loops) for s, _, layer, loops, _, _ in events] == [
        (10, 4, 1),
        (20, 4, 2),
        (30, 3, 1),
        (40, 3, 2),
        (50, 1, 1),
        (60, 1, 2),
    ]
    # A deeper loop keeps the heads chosen at selection (None: surgery keeps them).
    assert [heads for *_, heads, _ in events] == [(1, 2), None, (0, 2), None, (0, 2), None]
    assert p.frozen_step == 70


def test_shallow_to_deep_order():
    p = make_policy("sgt", {**OPTIONS, "order": "shallow_to_deep"})
    events, _ = _drive(p, lambda s: SCORES, 50)
    assert [layer for _, _, layer, *_ in events] == [1, 3, 4]


def test_a_layer_out_of_the_top_is_not_deepened_and_no_candidate_freezes():
    p = make_policy("sgt", {**OPTIONS, "top_layers": 2, "max_loops": 3})
    first = [[0.5, 0.5], [0.9, 0.9], [0.8, 0.8], [0.1, 0.1]]  # top 1, 2: select 2
    later = [[0.5, 0.5], [0.1, 0.1], [0.8, 0.8], [0.9, 0.9]]  # top 3, 2: deepen 2
    last = [[0.5, 0.5], [0.1, 0.1], [0.05, 0.05], [0.9, 0.9]]  # top 3, 1: 2 is out; select 1

    def entropies(step):
        return first if step <= 10 else later if step <= 20 else last

    events, _ = _drive(p, entropies, 60)
    assert [(s, layer, loops) for s, _, layer, loops, _, _ in events] == [
        (10, 2, 1),
        (20, 2, 2),
        (30, 1, 1),
        (40, 1, 2),
        (50, 1, 3),
    ]
    assert p.frozen_step == 60
    # Nothing shallower than the selected layer in the top: freeze with one layer selected.
    q = make_policy("sgt", {**OPTIONS, "top_layers": 2})
    events, _ = _drive(q, lambda s: first if s <= 10 else later, 40)
    assert [layer for _, _, layer, *_ in events] == [2] and q.frozen_step == 20


def test_ema_of_entropies_and_head_choice():
    a = [[0.5] * 3, [0.25, 0.5, 0.75], [0.125] * 3]
    b = [[0.5] * 3, [0.75, 0.0, 0.25], [0.125] * 3]
    options = {"warmup": 4, "window": 4, "top_layers": 1}

    def first_event(name, **changes):
        p = make_policy(name, {**options, **changes})
        events, _ = _drive(p, lambda s: a if s < 4 else b, 4)
        return p, events[0]

    p, event = first_event("sgt")
    # EMA with decay 0.5: a constant a, then 0.5 a + 0.5 b at step 4.
    assert p.drain_log()[0]["entropies"][1] == [0.5, 0.25, 0.5]
    assert event == (4, "set_loops", 1, 1, (0, 2), "linear")
    # Lowest entropies; ties go to the lower head index.
    assert first_event("low_entropy_loop")[1][4] == (0, 1)
    # Every head looped: nothing to fade; fade "none": the kept heads alone at once.
    assert first_event("all_head_loop")[1][4:] == ((0, 1, 2), None)
    assert first_event("sgt", fade="none")[1][4:] == ((0, 2), None)
    assert first_event("sgt", fade="cosine")[1][5] == "cosine"


def test_query_option_picks_the_statistic_and_bad_options_are_refused():
    assert make_policy("sgt").needs(250) == {ENTROPY}
    assert make_policy("sgt", {"query": "all"}).needs(250) == {ENTROPY_ALL}
    assert make_policy("sgt").needs(242) == frozenset()  # not yet: 8 steps before a decision
    for bad in (
        {"warmup": 0},
        {"window": 2.5},
        {"max_loops": True},
        {"ema_decay": 1.0},
        {"fade": "step"},
        {"query": "last"},
        {"order": "random"},
        {"stat_steps": 0},
        {"heads": "mid"},
        {"speed": 1},
    ):
        with pytest.raises(ConfigError):
            make_policy("sgt", bad)
    for bad in ({"loops": 0}, {"layers": "deep"}, {"depth": 1}):
        with pytest.raises(ConfigError):
            make_policy("block_loop", bad)
    with pytest.raises(ConfigError, match="out of range"):
        make_policy("block_loop", {"layers": [5]}).initial_arch(arch("causal_lm", "uniform"))
    with pytest.raises(ConfigError, match="options per part"):
        make_policy("incrt+sgt", {"window": 3})
    with pytest.raises(ConfigError, match="distinct parts"):
        make_policy("sgt+sgt")


def test_observed_head_changes_and_state_round_trip():
    p = make_policy("sgt", {**OPTIONS, "max_loops": 3})
    _drive(p, lambda s: SCORES, 10)
    assert p.selected == [4] and p.kept == [[1, 2]]
    # Another policy removes head 0 of layer 4: the looped heads 1, 2 become 0, 1, and the
    # layer's running entropies start again, from statistics of its two remaining heads.
    p.observe([Event(op="remove_head", layer=4, head=0, heads_after=2)])
    assert p.kept == [[0, 1]] and p.ema[4] is None
    stale = {ENTROPY: [torch.tensor(e) for e in SCORES]}  # taken before the removal
    assert list(p.decide_from(11, stale)) == [[]] and p.ema[4] is None
    q = SgtPolicy({**OPTIONS, "max_loops": 3})
    q.load_state_dict(json.loads(json.dumps(p.state_dict())))
    two_heads = [*SCORES[:4], [0.7, 0.6]]
    for step in range(12, 31):
        stats = {ENTROPY: [torch.tensor(e) for e in two_heads]}
        assert [[vars(e) for e in turn] for turn in p.decide_from(step, stats)] == [
            [vars(e) for e in turn] for turn in q.decide_from(step, stats)
        ]
    assert p.ema[4].tolist() == pytest.approx([0.7, 0.6])
    assert p.drain_log()[1:] == q.drain_log()
    # Its last looped head removed, the layer's loop stopped: it is never deepened again.
    p.observe(
        [
            Event(op="remove_head", layer=4, head=0, heads_after=1),
            Event(op="remove_head", layer=4, head=0, heads_after=0),
        ]
    )
    assert p.kept[0] == [] and p.loops[0] == 3


def test_composed_parts_take_turns():
    """The second part decides on the structure the first part's events left: a head
    removed at a decision step takes its layer out of that decision, instead of SGT
    looping head indices that no longer exist."""
    torch.manual_seed(0)
    a = Architecture(
        kind="causal_lm", d_model=32, vocab_size=61, max_len=24, layers=(LayerSpec(3, 8, 32),) * 5
    )
    model = build_model(a)
    removal = {"step": 10, "op": "remove_head", "layer": 4, "head": 0}
    policy = make_policy("scheduled+sgt", {"scheduled": {"events": [removal]}, "sgt": OPTIONS})
    applied = []
    for step in range(1, 11):
        heads = [b.attn.heads for b in model.transformer.layers]
        stats = {
            name: [torch.tensor(e[: heads[i]]) for i, e in enumerate(SCORES)]
            for name in policy.needs(step)
        }
        for requests in policy.decide_from(step, stats):
            records = []
            for r in requests:
                r.step = step
                records.append(surgery.apply(model, None, r))
            policy.observe(records)
            applied += records
    assert [(r.op, r.layer) for r in applied] == [("remove_head", 4), ("set_loops", 3)]
    assert model.arch.layers[3].looped_heads == (0, 2)


# --- the soft start: schedule, computation, surgery ----------------------------------------


def test_fade_levels():
    lin, cos, exp = (
        LoopFade(start=10, steps=4, shape=s) for s in ("linear", "cosine", "exponential")
    )
    assert [lin.level(s) for s in (9, 10, 11, 12, 13, 14, 20)] == [1, 1, 0.75, 0.5, 0.25, 0, 0]
    assert cos.level(12) == pytest.approx(0.5) and cos.level(11) == pytest.approx(0.8535534)
    expected = (math.exp(-2.5) - math.exp(-5)) / (1 - math.exp(-5))
    assert exp.level(12) == pytest.approx(expected) and exp.level(14) == 0 and exp.level(10) == 1
    assert lin.end == 14


def _loop_calls(block):
    """Record (rows, head_weights) of every attention call of ``block``."""
    calls = []
    handle = block.attn.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((kwargs.get("rows"), kwargs.get("head_weights"))),
        with_kwargs=True,
    )
    return calls, handle


def _manual_block(block, x, heads, weights, causal):
    """The block by hand: full attention, then loop passes over ``heads`` weighted."""
    attn, hd = block.attn, block.attn.head_dim
    b, t, _ = x.shape
    h = x + attn(block.ln_1(x), None, causal)
    rows = head_rows(heads, hd)
    for _ in range(block.loops):
        z = block.ln_1(h)
        q, k, v = (
            F.linear(z, w[rows]).view(b, t, len(heads), hd).transpose(1, 2)
            for w in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        y = y * torch.tensor(weights).view(1, -1, 1, 1)
        h = h + F.linear(y.transpose(1, 2).reshape(b, t, -1), attn.o_proj.weight[:, rows])
    return h + block.mlp(block.ln_2(h))


def test_fade_runs_every_head_weighted_then_only_the_kept_heads():
    torch.manual_seed(0)
    model = build_model(arch("causal_lm", "nonuniform")).eval()
    block = model.transformer.layers[1]  # 3 heads
    opt = make_optimizer(model, TrainConfig())
    event = Event(
        op="set_loops", layer=1, loops=2, looped_heads=(2,), fade="linear", fade_steps=4, step=8
    )
    record = surgery.apply(model, opt, event)
    assert (record.fade, record.fade_steps, record.looped_heads) == ("linear", 4, (2,))
    assert model.arch.layers[1].fade == LoopFade(start=8, steps=4, shape="linear")
    x = torch.randn(2, 7, 32)
    calls, handle = _loop_calls(block)
    for step, level in ((8, 1.0), (9, 0.75), (11, 0.25)):
        assert surgery.advance(model, step) == []
        calls.clear()
        with torch.no_grad():
            out = block(x, None, True)
            made = list(calls)
            expected = _manual_block(block, x, [0, 1, 2], [level, level, 1.0], True)
        assert (out - expected).abs().max() <= 1e-6
        # Loop passes: every head's rows (rows=None), non-kept heads at the level.
        assert [r for r, _ in made] == [None] * 3
        assert torch.equal(made[1][1], torch.tensor([level, level, 1.0]))
    with torch.no_grad():
        surgery.advance(model, 11)
        before = block(x, None, True)
    (request,) = surgery.advance(model, 12)
    with torch.no_grad():
        at_zero = block(x, None, True)
    assert request.op == "end_fade" and request.layer == 1
    surgery.apply(model, opt, request)
    assert model.arch.layers[1].fade is None and "fade" not in model.arch.to_dict()["layers"][1]
    calls.clear()
    with torch.no_grad():
        after = block(x, None, True)
        made = list(calls)
        expected = _manual_block(block, x, [2], [1.0], True)
    handle.remove()
    # After the fade: only the kept head's projection rows, and the same function as at 0.
    assert [(r.tolist() if r is not None else None, w) for r, w in made[1:]] == [
        (list(range(16, 24)), None)
    ] * 2
    assert (after - expected).abs().max() <= 1e-6
    assert (after - at_zero).abs().max() <= 1e-6 and (after - before).abs().max() > 1e-6
    assert surgery.advance(model, 13) == []


def test_loop_surgery_leaves_parameters_and_optimizer_state_alone():
    torch.manual_seed(0)
    model = build_model(arch("classifier", "nonuniform"))
    opt = make_optimizer(model, TrainConfig(lr=1e-2))
    for s in range(2):
        model(**batch("classifier", seed=s)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    params = list(model.parameters())
    ids = [id(p) for p in params]
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params}
    for event in (
        Event(op="set_loops", layer=1, loops=1, looped_heads=(0, 2), fade="cosine", fade_steps=5),
        Event(op="set_loops", layer=1, loops=3),  # deeper, same heads, same fade
        Event(op="end_fade", layer=1),
        Event(op="set_loops", layer=2, loops=2, looped_heads=(1,)),
    ):
        event.step = 3
        surgery.apply(model, opt, event)
    assert model.arch.layers[1] == LayerSpec(3, 8, 32, loops=3, looped_heads=(0, 2))
    assert [id(p) for p in model.parameters()] == ids  # the very same tensors
    assert sorted(id(p) for g in opt.param_groups for p in g["params"]) == sorted(ids)
    for p in params:
        for k, v in opt.state[p].items():
            assert torch.equal(v, state[id(p)][k])
    with pytest.raises(SurgeryError, match="no fade to end"):
        surgery.apply(model, opt, Event(op="end_fade", layer=1))
    fade = {"op": "set_loops", "layer": 0, "loops": 1, "looped_heads": (0,), "step": 1}
    for changes, message in (
        ({"fade": "linear"}, "fade_steps"),
        ({"fade": "step", "fade_steps": 2}, "unknown fade"),
        ({"fade": "linear", "fade_steps": 2, "step": None}, "has none"),
    ):
        with pytest.raises(SurgeryError, match=message):
            surgery.apply(model, opt, Event(**{**fade, **changes}))


def test_head_changes_during_a_fade_keep_its_level():
    torch.manual_seed(0)
    model = build_model(arch("causal_lm", "nonuniform")).eval()
    opt = make_optimizer(model, TrainConfig())
    surgery.set_loops(model, 1, 1, (1,), fade=LoopFade(start=0, steps=4))
    surgery.advance(model, 2)
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        before = model.transformer.layers[1](x, None, True)
    surgery.add_head(model, opt, 1, init="function_preserving")
    block = model.transformer.layers[1]
    assert block.loop_fade_level.item() == 0.5 and block.loop_kept.tolist() == [0, 1, 0, 0]
    with torch.no_grad():
        assert (block(x, None, True) - before).abs().max() <= 1e-6
    surgery.remove_head(model, opt, 1, 0)
    assert block.looped_heads == (0,) and block.loop_kept.tolist() == [1, 0, 0]
    assert block.loop_fade_level.item() == 0.5
    surgery.remove_head(model, opt, 1, 0)  # the looped head: the loop and its fade stop
    assert model.arch.layers[1].loops == 0 and model.arch.layers[1].fade is None


# --- FLOPs ---------------------------------------------------------------------------------


def test_flops_by_hand():
    layer = LayerSpec(heads=2, head_dim=2, ffn_dim=8, loops=1, looped_heads=(1,))
    # d_model 4, seq 3. Attention over 2 heads (width 4): projections 4*2*4*4 = 128, scores
    # and mixing 2*2*3*4 = 48. The loop over 1 head (width 2): 64 + 24. FFN: 2*2*4*8.
    assert layer_components(4, layer, 3) == {
        "attention": 176,
        "head_loops": 88,
        "ffn": 128,
        "block_loops": 0,
    }
    fading = replace(layer, fade=LoopFade(start=0, steps=5))
    assert layer_components(4, fading, 3)["head_loops"] == 176  # every head during a fade
    twice = replace(layer, loops=2, block_loops=1)
    assert layer_components(4, twice, 3) == {
        "attention": 176,
        "head_loops": 176,
        "ffn": 128,
        "block_loops": 176 + 176 + 128,
    }
    a = Architecture(kind="causal_lm", d_model=4, vocab_size=5, max_len=8, layers=(layer,))
    # 2 x 3 tokens x (176 + 88 + 128) + LM head 2 x 3 x 2*4*5, times 3 for the backward.
    assert train_step_flops(a, 2, 3) == 3 * (6 * 392 + 6 * 40)
    assert train_step_flops(without_loops(a), 2, 3) == 3 * (6 * 304 + 6 * 40)


def test_grouped_flops_count_keys_and_values_by_their_width():
    layer = LayerSpec(heads=4, head_dim=2, ffn_dim=8, loops=1, looped_heads=(0, 1), kv_heads=2)
    # d_model 4, seq 3. Queries and outputs over 4 heads (width 8): 2*2*4*8 = 128; keys and
    # values over 2 key/value heads (width 4): 2*2*4*4 = 64; scores and mixing per query
    # head 2*2*3*8 = 96. The loop over heads 0 and 1 (one group): 64 + 32 + 48.
    assert layer_components(4, layer, 3) == {
        "attention": 288,
        "head_loops": 144,
        "ffn": 128,
        "block_loops": 0,
    }
    # Heads of two groups need both key/value heads; a fade runs everything.
    assert layer_components(4, replace(layer, looped_heads=(0, 2)), 3)["head_loops"] == 176
    fading = replace(layer, fade=LoopFade(start=0, steps=5))
    assert layer_components(4, fading, 3)["head_loops"] == 288
    plain = replace(layer, kv_heads=None)
    assert layer_components(4, plain, 3)["attention"] == 288 + 64
    grouped = Architecture(
        kind="causal_lm", d_model=4, vocab_size=5, max_len=8, layers=(layer, layer)
    )
    mha = replace(grouped, layers=(plain, plain))
    # Per token and layer, the keys and values save 2*2*d_model*(attn_dim - kv_dim) = 64 in
    # the attention and 32 in the loop (one key/value head instead of two); times 2 layers,
    # 2 x 3 tokens and 3 for forward and backward.
    saved = 3 * (2 * 3) * 2 * (64 + 32)
    assert train_step_flops(mha, 2, 3) - train_step_flops(grouped, 2, 3) == saved
    # A factored token embedding costs its projection: 2 * embed_rank * d_model per token.
    factored = replace(mha, embed_rank=2)
    assert train_step_flops(factored, 2, 3) - train_step_flops(mha, 2, 3) == 3 * 6 * 2 * 2 * 4


# --- whole runs --------------------------------------------------------------------------


def run_config(**changes):
    base = {
        "task": "retrieval",
        "policy": "sgt",
        "policy_options": {
            "warmup": 4,
            "window": 5,
            "top_layers": 2,
            "kept_heads": 1,
            "max_loops": 2,
        },
        "steps": 20,
        "decay_steps": 20,
        "batch_size": 8,
        "warmup_steps": 2,
        "eval_every": 100,
        "checkpoint_every": 100,
        "log_every": 5,
        "task_options": {"n_train": 128, "n_val": 16, "k": 2, "seq_len": 8},
        "model": {
            "d_model": 16,
            "n_layers": 3,
            "heads": 2,
            "head_dim": 8,
            "ffn_dim": 32,
            "dropout": 0.1,
        },
        "device": "cpu",
    }
    return {**base, **changes}


def _replayed_flops(trainer, initial, steps):
    """train_flops rebuilt from the event log: each step costs its structure at the time."""
    layers = list(initial.layers)
    events = trainer.logs.read_events()
    total = 0
    for t in range(steps):
        shape = trainer.stream.batch(t)["input_ids"].shape
        total += train_step_flops(replace(initial, layers=tuple(layers)), *shape)
        for e in (e for e in events if e["step"] == t + 1):
            old = layers[e["layer"]]
            if e["op"] == "set_loops":
                fade = LoopFade(t + 1, e["fade_steps"], e["fade"]) if "fade" in e else old.fade
                layers[e["layer"]] = replace(
                    old, loops=e["loops"], looped_heads=tuple(e["looped_heads"]), fade=fade
                )
            elif e["op"] == "end_fade":
                layers[e["layer"]] = replace(old, fade=None)
    return total


def test_sgt_run_grows_loops_counts_their_flops_and_reports(tmp_path):
    trainer = Trainer(TrainConfig.from_dict(run_config()), tmp_path)
    initial = trainer.arch
    summary = trainer.run(progress=False)
    ops = [(e["step"], e["op"], e["layer"]) for e in summary["events"]]
    # Select at 4 (fade to 9), its fade ends at 9 and a new decision comes at 9, ...
    assert ops[0][:2] == (4, "set_loops") and (9, "end_fade", ops[0][2]) in ops
    assert summary["events"][0]["fade"] == "linear" and summary["events"][0]["fade_steps"] == 5
    for e in summary["events"]:
        if e["op"] == "end_fade":  # the level is 0 when the fade ends: no jump
            assert e["loss_after"] == pytest.approx(e["loss_before"], abs=1e-6)
    assert summary["train_flops"] == _replayed_flops(trainer, initial, 20)
    assert summary["flops_overhead_pct"] > 0
    looped = [s for s in summary["loop_structure"] if s["loops"]]
    assert looped and all(len(s["looped_heads"]) == 1 for s in looped)
    assert summary["architecture"]["layers"][0]["loops"] == 0  # layer 0 is never looped
    rows = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [(r["step"], r["action"]) for r in rows] == [
        (4, "select"),
        (9, "deepen"),
        (14, "select"),
        (19, "deepen"),
    ]
    assert {"scores", "entropies", "top", "action"} <= rows[0].keys()


def test_block_loop_baseline_overhead(tmp_path):
    cfg = run_config(policy="block_loop", policy_options={"layers": [2]}, steps=3)
    summary = train(TrainConfig.from_dict(cfg), tmp_path, progress=False)
    a = Architecture.from_dict(summary["architecture"])
    assert [layer.block_loops for layer in a.layers] == [0, 0, 1]
    ratio = train_step_flops(a, 8, 9) / train_step_flops(without_loops(a), 8, 9)
    assert summary["flops_overhead_pct"] == pytest.approx(100 * (ratio - 1))
    assert summary["loop_structure"][2] == {"loops": 0, "looped_heads": [], "block_loops": 1}
    default = make_policy("block_loop").initial_arch(arch("causal_lm", "nonuniform"))
    assert [layer.block_loops for layer in default.layers] == [1, 1, 1]


def _files(run):
    ckpt = run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()
    return {
        "events": (run / "events.jsonl").read_bytes(),
        "stats": (run / "stats.jsonl").read_bytes(),
        "weights": (ckpt / "model.safetensors").read_bytes(),
        "optimizer": (ckpt / "optimizer.safetensors").read_bytes(),
        "architecture": (ckpt / "architecture.json").read_bytes(),
    }


def test_resume_in_the_middle_of_a_fade_is_exact(tmp_path):
    straight = train(TrainConfig.from_dict(run_config()), tmp_path / "s", progress=False)
    train(TrainConfig.from_dict(run_config(steps=6)), tmp_path / "h", progress=False)
    saved = json.loads(
        (tmp_path / "h" / "checkpoints" / "step_00000006" / "architecture.json").read_text()
    )
    assert any("fade" in layer for layer in saved["layers"])  # stopped during a fade
    resumed = train(
        TrainConfig.from_dict(run_config()), tmp_path / "h", resume=True, progress=False
    )
    assert resumed["events"] == straight["events"]
    assert _files(tmp_path / "h") == _files(tmp_path / "s")


def test_incrt_and_sgt_composed_in_one_run(tmp_path):
    options = {
        "incrt": {
            "calibration_batches": 2,
            "heldout_batches": 1,
            # Growth at steps 4 and 8, between SGT's decisions at 6 and 12.
            "refractory_steps": 3,
            "max_heads": 3,
            "check_every": 2,
        },
        "sgt": {"warmup": 6, "window": 6, "top_layers": 2, "kept_heads": 1},
    }
    cfg = run_config(policy="incrt+sgt", policy_options=options, steps=24, decay_steps=24)
    straight = train(TrainConfig.from_dict(cfg), tmp_path / "s", progress=False)
    ops = {e["op"] for e in straight["events"]}
    assert {"add_head", "set_loops"} <= ops
    assert "converged_step" in straight  # INCRT's report
    rows = [json.loads(line) for line in (tmp_path / "s" / "stats.jsonl").read_text().splitlines()]
    assert {r["policy"] for r in rows} == {"incrt", "sgt"}
    # Resumed between the parts' events, the composition continues exactly.
    train(TrainConfig.from_dict({**cfg, "steps": 9}), tmp_path / "h", progress=False)
    resumed = train(TrainConfig.from_dict(cfg), tmp_path / "h", resume=True, progress=False)
    assert resumed["events"] == straight["events"]
    assert _files(tmp_path / "h") == _files(tmp_path / "s")
    # A head budget refuses INCRT's growth past it (INCRT's turn) and SGT goes on looping.
    heads = {i: 1 for i in range(cfg["model"]["n_layers"])}
    for e in straight["events"]:
        heads[e["layer"]] += e["op"] == "add_head"
    cap = max(heads.values()) - 1
    capped = train(
        TrainConfig.from_dict({**cfg, "max_heads_per_layer": cap}),
        tmp_path / "capped",
        progress=False,
    )
    rows = [
        json.loads(line) for line in (tmp_path / "capped" / "stats.jsonl").read_text().splitlines()
    ]
    refused = [r for r in rows if "refused" in r]
    assert refused and all(r["refused"].endswith(f"> max_heads_per_layer {cap}") for r in refused)
    assert (
        max(layer.heads for layer in Architecture.from_dict(capped["architecture"]).layers) == cap
    )
    assert "set_loops" in {e["op"] for e in capped["events"]}
