"""Surgery: function preservation, optimizer carry-over, metadata, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import GROWABLE, KINDS, arch, batch

from growformer import surgery
from growformer.errors import SurgeryError
from growformer.events import Event
from growformer.model import build_model
from growformer.training.config import TrainConfig
from growformer.training.setup import make_optimizer

TOL = 1e-6


def _trained(kind, variant, optimizer="adamw", steps=3):
    torch.manual_seed(0)
    model = build_model(arch(kind, variant))
    opt = _optimizer(optimizer, model)
    for s in range(steps):
        model(**batch(kind, seed=s)).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return model, opt


def _optimizer(name, model):
    if name == "adamw":
        return make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)


def _outputs(model, kind):
    model.eval()
    b = batch(kind, seed=99)
    with torch.no_grad():
        return model(b["input_ids"], b.get("attention_mask")).logits


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", GROWABLE)
def test_function_preserving_insertion_keeps_outputs(kind, variant):
    model, opt = _trained(kind, variant)
    before = _outputs(model, kind)
    for layer in range(len(model.transformer.layers)):
        surgery.add_head(model, opt, layer, init="function_preserving")
    assert (_outputs(model, kind) - before).abs().max().item() <= TOL


@pytest.mark.parametrize("kind", KINDS)
def test_random_insertion_changes_outputs(kind):
    model, opt = _trained(kind, "uniform")
    before = _outputs(model, kind)
    surgery.add_head(model, opt, 0, init="random")
    assert (_outputs(model, kind) - before).abs().max().item() > 1e-4


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ("uniform", "nonuniform", "looped"))
def test_removing_a_silent_head_keeps_outputs(kind, variant):
    model, opt = _trained(kind, variant)
    attn = model.transformer.layers[0].attn
    head = attn.heads - 1
    with torch.no_grad():
        attn.o_proj.weight[:, head * attn.head_dim : (head + 1) * attn.head_dim] = 0
    before = _outputs(model, kind)
    surgery.remove_head(model, opt, 0, head)
    assert (_outputs(model, kind) - before).abs().max().item() <= TOL


def _expected_state(old_state, names_before, event, hd, d_model):
    """The optimizer state surgery should produce, built here by explicit slicing."""
    rows_of = lambda h: slice(h * hd, (h + 1) * hd)  # noqa: E731
    prefix = f"transformer.layers.{event.layer}.attn."
    expected = {}
    for name, state in old_state.items():
        new = {}
        for k, v in state.items():
            if v.dim() == 0 or not name.startswith(prefix):
                new[k] = v.clone()
                continue
            dim = 1 if name.endswith("o_proj.weight") else 0
            if event.op == "remove_head":
                kept = [
                    i
                    for i in range(v.shape[dim])
                    if not rows_of(event.head).start <= i < rows_of(event.head).stop
                ]
                new[k] = v.index_select(dim, torch.tensor(kept))
            else:
                shape = list(v.shape)
                shape[dim] = hd
                new[k] = torch.cat([v, torch.zeros(shape)], dim)
        expected[name] = new
    return expected


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize(
    "event",
    [
        Event(op="add_head", layer=1, init="random"),
        Event(op="add_head", layer=0, init="function_preserving"),
        Event(op="remove_head", layer=1, head=0),
        Event(op="remove_head", layer=1, head=1),
    ],
    ids=["add-random", "add-fp", "remove-first", "remove-middle"],
)
def test_step_after_surgery_equals_step_on_directly_built_model(optimizer, event):
    kind = "classifier"
    model, opt = _trained(kind, "nonuniform", optimizer)
    names = [n for n, _ in model.named_parameters()]
    old_state = {
        n: {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
        for n, p in model.named_parameters()
    }
    surgery.apply(model, opt, Event(**vars(event)))

    # A model built directly with the new structure, the surgically changed weights and the
    # optimizer state derived by hand from the old one.
    direct = build_model(model.arch)
    direct.load_state_dict(model.state_dict())
    direct_opt = _optimizer(optimizer, direct)
    hd = model.transformer.layers[event.layer].attn.head_dim
    expected = _expected_state(old_state, names, event, hd, model.arch.d_model)
    for name, p in direct.named_parameters():
        direct_opt.state[p] = expected[name]
    for name, p in model.named_parameters():
        for k, v in opt.state[p].items():
            assert torch.equal(v, expected[name][k]), f"{name}.{k} not carried over"

    for m, o in ((model, opt), (direct, direct_opt)):
        m.train()
        m(**batch(kind, seed=7)).loss.backward()
        o.step()
    for (name, a), b in zip(model.named_parameters(), direct.parameters(), strict=True):
        assert (a - b).abs().max().item() <= TOL, name


def test_optimizer_groups_and_hyperparameters_survive():
    model, opt = _trained("classifier", "uniform")
    surgery.add_head(model, opt, 0)
    surgery.remove_head(model, opt, 1, 0)
    params = list(model.parameters())
    in_opt = [p for g in opt.param_groups for p in g["params"]]
    assert {id(p) for p in in_opt} == {id(p) for p in params}
    assert set(map(id, opt.state)) <= {id(p) for p in params}
    decay = opt.param_groups[0]
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])


def test_pending_gradient_is_carried():
    model, opt = _trained("classifier", "uniform")
    model(**batch("classifier")).loss.backward()
    q = model.transformer.layers[0].attn.q_proj.weight
    grad = q.grad.clone()
    surgery.add_head(model, opt, 0)
    new = model.transformer.layers[0].attn.q_proj.weight
    assert torch.equal(new.grad[: grad.shape[0]], grad)
    assert torch.equal(new.grad[grad.shape[0] :], torch.zeros(8, 32))


def test_metadata_and_records():
    model, opt = _trained("causal_lm", "looped")
    record = surgery.add_head(model, opt, 1, init="random")
    assert record.to_dict() == {
        "op": "add_head",
        "layer": 1,
        "head": 2,
        "init": "random",
        "heads_after": 3,
        "params_after": model.num_params(),
    }
    attn = model.transformer.layers[1].attn
    assert attn.q_proj.out_features == attn.o_proj.in_features == 24
    assert model.arch.layers[1].heads == 3
    # Removing a head below the looped one shifts its index; removing the looped one stops the loop.
    surgery.remove_head(model, opt, 1, 0)
    assert model.arch.layers[1].looped_heads == (0,) and model.arch.layers[1].loops == 2
    surgery.remove_head(model, opt, 1, 0)
    assert model.arch.layers[1].loops == 0 and model.arch.layers[1].looped_heads == ()
    record = surgery.set_loops(model, 0, 1, [0, 2])
    assert model.arch.layers[0].looped_heads == (0, 2) and record.loops == 1
    assert torch.equal(
        model.transformer.layers[0].loop_rows, torch.cat([torch.arange(8), torch.arange(16, 24)])
    )


@pytest.mark.parametrize(
    "event, message",
    [
        (Event(op="add_head", layer=5), "layer 5 is out of range"),
        (Event(op="remove_head", layer=0, head=2), "cannot remove head 2"),
        (Event(op="remove_head", layer=0), "needs a head index"),
        (Event(op="add_head", layer=0, init="zeros"), "unknown head init"),
        (Event(op="set_loops", layer=0, loops=1, looped_heads=(3,)), "out of range"),
        (Event(op="set_loops", layer=0, loops=1), "needs at least one looped head"),
        (Event(op="grow", layer=0), "unknown structural op"),
    ],
)
def test_invalid_requests_are_refused_without_change(event, message):
    model, opt = _trained("classifier", "uniform")
    before = model.arch
    with pytest.raises(SurgeryError, match=message):
        surgery.apply(model, opt, event)
    assert model.arch == before


@pytest.mark.parametrize(
    "event, message",
    [
        (
            Event(op="add_head", layer=0),
            r"cannot add a head to layer 0: it has grouped keys and values \(4 query heads, "
            r"kv_heads=2\), and grouped layers keep their structure",
        ),
        (
            Event(op="remove_head", layer=2, head=1),
            r"cannot remove a head from layer 2: it has grouped keys and values \(2 query "
            r"heads, kv_heads=1\)",
        ),
    ],
)
def test_grouped_layers_refuse_head_surgery(event, message):
    model, opt = _trained("causal_lm", "compressed")
    before = model.arch
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(SurgeryError, match=message):
        surgery.apply(model, opt, event)
    assert model.arch == before
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name


def test_grouped_layers_take_loop_changes():
    model, _ = _trained("causal_lm", "compressed")
    surgery.set_loops(model, 0, 1, (1, 2, 3))
    surgery.set_loops(model, 1, 0)
    assert model.arch.layers[0].looped_heads == (1, 2, 3) and model.arch.layers[0].kv_heads == 2
    block = model.transformer.layers[0]
    # Heads 1, 2, 3 use key/value heads 0, 1, 1.
    assert block.loop_kv_rows.tolist() == list(range(16))
    assert block.loop_kv_index.tolist() == [0, 1, 1]
    # The changed model computes what a model built with that structure computes.
    direct = build_model(model.arch)
    direct.load_state_dict(model.state_dict())
    assert (_outputs(model, "causal_lm") - _outputs(direct, "causal_lm")).abs().max() <= TOL


def test_surgery_timing_is_below_one_step():
    """Surgery is cheap relative to a training step (ratio measured in one run)."""
    import time

    model, opt = _trained("classifier", "uniform")
    b = batch("classifier", b=16, t=24)
    t0 = time.perf_counter()
    for _ in range(5):
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad()
    step = (time.perf_counter() - t0) / 5
    t0 = time.perf_counter()
    for _ in range(5):
        surgery.add_head(model, opt, 0)
        surgery.remove_head(model, opt, 0, 0)
    cost = (time.perf_counter() - t0) / 10
    assert cost < step, (cost, step)


@pytest.mark.parametrize("kind", KINDS)
def test_a_faded_head_is_removed_without_changing_the_function(kind):
    model, opt = _trained(kind, "uniform")
    full = _outputs(model, kind)
    record = surgery.apply(
        model, opt, Event(op="fade_head", layer=0, head=0, fade="linear", fade_steps=4, step=3)
    )
    assert (record.op, record.head, record.fade_steps) == ("fade_head", 0, 4)
    assert model.arch.layers[0].head_fade.end == 7
    assert (_outputs(model, kind) - full).abs().max().item() <= TOL  # level 1 at the start
    assert surgery.advance(model, 5) == []
    assert model.transformer.layers[0].head_fade_level.item() == pytest.approx(0.5)
    [request] = surgery.advance(model, 7)
    assert (request.op, request.layer, request.head) == ("remove_head", 0, 0)
    faded = _outputs(model, kind)
    assert (faded - full).abs().max().item() > 1e-4
    surgery.apply(model, opt, request)
    assert model.arch.layers[0].heads == 1 and model.arch.layers[0].head_fade is None
    assert (_outputs(model, kind) - faded).abs().max().item() <= TOL


def test_a_fade_keeps_its_level_when_a_lower_head_goes():
    model, opt = _trained("classifier", "uniform")
    surgery.add_head(model, opt, 0)
    surgery.apply(
        model, opt, Event(op="fade_head", layer=0, head=2, fade="linear", fade_steps=4, step=0)
    )
    surgery.advance(model, 1)
    attn = model.transformer.layers[0].attn
    with torch.no_grad():
        attn.o_proj.weight[:, : attn.head_dim] = 0  # head 0 silent: removing it changes nothing
    before = _outputs(model, "classifier")
    surgery.remove_head(model, opt, 0, 0)
    fade = model.arch.layers[0].head_fade
    assert fade.head == 1 and model.transformer.layers[0].head_fade_level.item() == 0.75
    assert (_outputs(model, "classifier") - before).abs().max().item() <= TOL
    with pytest.raises(SurgeryError, match="already fading out head 1"):
        surgery.apply(
            model, opt, Event(op="fade_head", layer=0, head=0, fade="linear", fade_steps=4, step=1)
        )
