"""Property-based tests of the structural invariants (hypothesis).

Random architectures of both kinds (per-layer heads, head and feed-forward widths, grouped
keys and values, factored embeddings, SGT loops in or out of their soft start, block
loops) go through random sequences of structural events between real optimizer steps
(AdamW; and every supported optimizer in a test of its own), driven
the way the trainer drives them (fades advanced after every step, their ``end_fade``
requests applied). The invariants:

* the weights have the shapes of ``model.arch``, which follows the event's documented
  effect, and a model rebuilt from it has the same tensors and computes the same function;
* the optimizer holds exactly the model's parameters, in :func:`make_optimizer`'s order,
  with state laid along them as its layout says; surviving heads keep their weights,
  gradients and optimizer state bitwise, new heads start from zero state;
* the events that promise it keep the outputs (within ``TOL``): a function-preserving
  head insertion, and the end of a fade whose level reached 0 (a fade falls from exactly
  1 to exactly 0);
* events that surgery refuses raise :class:`SurgeryError` and change nothing;
* architectures survive JSON, a model with its optimizer survives a checkpoint, and
  decoding with a key/value cache matches the full forward pass.

The profile is derandomized, so every run draws the same cases.
"""

from __future__ import annotations

import itertools
import json
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import hypothesis
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import Tensor

from growformer import checkpoint, surgery
from growformer.arch import (
    FADES,
    KINDS,
    MLPS,
    NORM_POSITIONS,
    NORMS,
    POSITIONS,
    Architecture,
    LayerSpec,
    LoopFade,
)
from growformer.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from growformer.errors import SurgeryError
from growformer.events import INITS, OPS, Event
from growformer.model import ElasticModel, KVCache, build_model, head_rows
from growformer.optim import OPTIMIZERS, STATE_LAYOUTS
from growformer.optim.state import StateLayout
from growformer.training.config import TrainConfig
from growformer.training.setup import make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

settings.register_profile(
    "structure",
    deadline=None,
    derandomize=True,
    database=None,
    # No "explain" phase: on a failure it reruns the test hundreds of times.
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink),
    suppress_health_check=(HealthCheck.too_slow, HealthCheck.function_scoped_fixture),
)
PROFILE = settings.get_profile("structure")

VOCAB, SEQ, BATCH = 30, 8, 3
# Largest change of a logit that still counts as the same function (float32 rounding).
TOL = 1e-5
CONFIG = TrainConfig(lr=1e-2, weight_decay=0.1)
MAX_ACTIONS = 8
DROPOUTS = st.sampled_from((0.0, 0.1))


# -- strategies -------------------------------------------------------------------------


@st.composite
def layer_specs(draw: st.DrawFn) -> LayerSpec:
    """A valid layer: 0-4 heads, optionally grouped, looped (fading or not), block-looped."""
    heads = draw(st.integers(0, 4))
    divisors = [d for d in range(1, heads + 1) if heads % d == 0]
    kv_heads = draw(st.none() | st.sampled_from(divisors)) if heads else None
    loops = draw(st.integers(0, 2)) if heads else 0
    looped: tuple[int, ...] = ()
    fade = None
    if loops:
        looped = tuple(draw(st.lists(st.integers(0, heads - 1), min_size=1, unique=True)))
        fade = draw(
            st.none()
            | st.builds(LoopFade, st.integers(0, 3), st.integers(1, 4), st.sampled_from(FADES))
        )
    return LayerSpec(
        heads=heads,
        head_dim=draw(st.sampled_from((2, 4, 8))),
        ffn_dim=draw(st.integers(4, 32)),
        loops=loops,
        looped_heads=looped,
        block_loops=draw(st.integers(0, 1)),
        fade=fade,
        kv_heads=kv_heads,
    )


@st.composite
def architectures(
    draw: st.DrawFn, dropouts: st.SearchStrategy[float] = DROPOUTS, kinds: tuple[str, ...] = KINDS
) -> Architecture:
    """A valid tiny architecture of one of ``kinds`` (d_model 8-32, 1-3 layers)."""
    kind = draw(st.sampled_from(kinds))
    d_model = draw(st.sampled_from((8, 16, 32)))
    layers = tuple(draw(st.lists(layer_specs(), min_size=1, max_size=3)))
    # Rotary positions rotate channel pairs: only with even head widths.
    even = all(layer.head_dim % 2 == 0 for layer in layers)
    positions = tuple(p for p in POSITIONS if even or p != "rotary")
    return Architecture(
        kind=kind,
        d_model=d_model,
        vocab_size=VOCAB,
        max_len=draw(st.integers(SEQ, 2 * SEQ)),
        layers=layers,
        num_labels=draw(st.integers(2, 4)) if kind == "classifier" else None,
        dropout=draw(dropouts),
        embed_rank=draw(st.none() | st.integers(1, d_model)),
        norm=draw(st.sampled_from(NORMS)),
        norm_position=draw(st.sampled_from(NORM_POSITIONS)),
        mlp=draw(st.sampled_from(MLPS)),
        positions=draw(st.sampled_from(positions)),
        attn_bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()),
        type_vocab_size=draw(st.integers(0, 2)),
        pooler=kind == "classifier" and draw(st.booleans()),
    )


@st.composite
def set_loops_events(draw: st.DrawFn, i: int, layer: LayerSpec, fading: bool = False) -> Event:
    """A valid ``set_loops`` request for layer ``i``: stop, restart, re-aim, with or without
    a fade (``fading``: loops with a fade, on a layer with heads)."""
    loops = draw(st.integers(int(fading), 3)) if layer.heads else 0
    looped = None
    if loops and (not layer.loops or draw(st.booleans())):
        heads = st.integers(0, layer.heads - 1)
        looped = tuple(draw(st.lists(heads, min_size=1, unique=True)))
    fade = None
    if loops:
        fade = draw(st.sampled_from(FADES) if fading else st.none() | st.sampled_from(FADES))
    steps = draw(st.integers(1, 4)) if fade else None
    return Event(
        op="set_loops", layer=i, loops=loops, looped_heads=looped, fade=fade, fade_steps=steps
    )


@st.composite
def actions(draw: st.DrawFn, arch: Architecture) -> Event | str:
    """What can happen next to a model of ``arch``: a valid structural request, ``"train"``
    (one optimizer step) or ``"backward"`` (a gradient left pending)."""
    choices: list[Any] = ["train", "backward"]
    for i, layer in enumerate(arch.layers):
        if layer.kv_heads is None:
            choices.append(("add_head", i))
            if layer.heads:
                choices.append(("remove_head", i))
        choices.append(("set_loops", i))
        if layer.fade is not None:
            choices.append(("end_fade", i))
    choice = draw(st.sampled_from(choices))
    if isinstance(choice, str):
        return choice
    op, i = choice
    if op == "add_head":
        init_std = draw(st.none() | st.sampled_from((0.02, 0.5)))
        return Event(op, i, init=draw(st.sampled_from(INITS)), init_std=init_std)
    if op == "remove_head":
        return Event(op, i, head=draw(st.integers(0, arch.layers[i].heads - 1)))
    if op == "set_loops":
        return draw(set_loops_events(i, arch.layers[i]))
    return Event(op, i)


def refused_events(arch: Architecture, step: int) -> st.SearchStrategy[Event]:
    """Requests that surgery must refuse for a model of ``arch`` at ``step``."""
    n = arch.n_layers
    bad_layer = st.sampled_from((-1, n, n + 3))
    options = [
        st.builds(Event, st.sampled_from(("grow", "prune", "")), st.integers(0, n - 1)),
        st.builds(Event, st.sampled_from(OPS), bad_layer, head=st.just(0), loops=st.just(0)),
        st.builds(Event, st.just("add_head"), st.integers(0, n - 1), init=st.just("zeros")),
        st.builds(Event, st.just("remove_head"), st.integers(0, n - 1)),
        st.builds(Event, st.just("set_loops"), st.integers(0, n - 1)),
    ]
    for i, layer in enumerate(arch.layers):
        if layer.kv_heads is not None:
            options.append(st.builds(Event, st.just("add_head"), st.just(i)))
            head = st.integers(0, layer.heads - 1)
            options.append(st.builds(Event, st.just("remove_head"), st.just(i), head=head))
        else:
            head = st.sampled_from((-1, layer.heads, layer.heads + 2))
            options.append(st.builds(Event, st.just("remove_head"), st.just(i), head=head))
        if layer.fade is None:
            options.append(st.builds(Event, st.just("end_fade"), st.just(i)))
        options.append(_bad_loops(i, layer, step))
    return st.one_of(options)


def _bad_loops(i: int, layer: LayerSpec, step: int) -> st.SearchStrategy[Event]:
    h = layer.heads
    fade = {"fade": "linear", "fade_steps": 2, "step": step}
    cases = [
        Event("set_loops", i, loops=-1, looped_heads=(0,)),
        Event("set_loops", i, loops=1, looped_heads=()),
        Event("set_loops", i, loops=1, looped_heads=(h,)),
        Event("set_loops", i, loops=1, looped_heads=(0, 0)),
        Event("set_loops", i, loops=0, **fade),
        Event("set_loops", i, loops=1, looped_heads=(0,), **{**fade, "fade": "sudden"}),
        Event("set_loops", i, loops=1, looped_heads=(0,), **{**fade, "fade_steps": 0}),
        Event("set_loops", i, loops=1, looped_heads=(0,), **{**fade, "step": None}),
    ]
    return st.sampled_from(cases).map(lambda e: replace(e))


# -- driving a model as the trainer does ---------------------------------------------------


def _batch(arch: Architecture, seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_TOKENS), VOCAB, (BATCH, SEQ), generator=g)
    if arch.kind == "causal_lm":
        return {"input_ids": ids, "labels": torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)}
    mask = torch.ones(BATCH, SEQ, dtype=torch.bool)
    mask[0, SEQ // 2 :] = False
    return {
        "input_ids": ids.masked_fill(~mask, 0),
        "attention_mask": mask,
        "labels": torch.randint(0, arch.num_labels, (BATCH,), generator=g),
    }


def tally(arch: Architecture) -> None:
    """Count the features of ``arch`` in the hypothesis statistics (to see what was covered)."""
    features = {
        arch.kind: True,
        "factored embedding": arch.embed_rank is not None,
        "layer without heads": any(not layer.heads for layer in arch.layers),
        "grouped keys/values": any(layer.kv_heads is not None for layer in arch.layers),
        "head loops": any(layer.loops for layer in arch.layers),
        "fading loops": any(layer.fade is not None for layer in arch.layers),
        "block loops": any(layer.block_loops for layer in arch.layers),
        "post-norm": arch.norm_position == "post",
        "rotary positions": arch.positions == "rotary",
        "swiglu": arch.mlp == "swiglu",
        "attention biases": arch.attn_bias,
    }
    for name, present in features.items():
        if present:
            hypothesis.event(f"arch: {name}")


class Run:
    """A model, its optimizer (two real steps taken) and its step count.

    Args:
        arch: The structure to build.
        seed: Seed of the initialisation and the batch.
        optimizer: A name of :data:`growformer.optim.OPTIMIZERS`.
    """

    def __init__(self, arch: Architecture, seed: int = 0, optimizer: str = "adamw") -> None:
        torch.manual_seed(seed)
        self.model = build_model(arch)
        self.optimizer = make_optimizer(self.model, replace(CONFIG, optimizer=optimizer))
        self.batch = _batch(arch, seed)
        self.step = 0
        for _ in range(2):
            for request in self.train():
                request.step = self.step
                surgery.apply(self.model, self.optimizer, request)

    def backward(self) -> None:
        """Leave a gradient pending (surgery must carry it)."""
        self.model.train()
        self.model(**self.batch).loss.backward()

    def train(self) -> list[Event]:
        """One optimizer step; returns the ``end_fade`` requests of the fades now over."""
        self.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return surgery.advance(self.model, self.step)

    @torch.no_grad()
    def outputs(self, model: ElasticModel | None = None) -> Tensor:
        """Logits on the fixed batch in eval mode."""
        model = model or self.model
        model.eval()
        inputs = {k: v for k, v in self.batch.items() if k != "labels"}
        return model(**inputs).logits


def drive(
    data: st.DataObject,
    run: Run,
    check: Callable[[Run, Event], Any],
    max_actions: int = MAX_ACTIONS,
) -> None:
    """Draw and carry out up to ``max_actions`` actions; every structural request (drawn or
    asked for by a fade that ended) goes through ``check``."""
    tally(run.model.arch)
    for _ in range(data.draw(st.integers(1, max_actions), label="actions")):
        action = data.draw(actions(run.model.arch), label="action")
        if action == "backward":
            run.backward()
        elif action == "train":
            for request in run.train():
                check(run, request)
        else:
            check(run, action)


def finale(data: st.DataObject, run: Run, check: Callable[[Run, Event], Any]) -> None:
    """Every kind of event once more, in whatever state the drawn ones left: a
    function-preserving head added to and a head removed from every layer that takes
    them, a fade started in every layer with heads, and training until all fades ended."""
    for i, layer in enumerate(run.model.arch.layers):
        if layer.kv_heads is None:
            check(run, Event("add_head", i, init="function_preserving"))
            head = data.draw(st.integers(0, layer.heads), label="removed head")
            check(run, Event("remove_head", i, head=head))
    for i, layer in enumerate(run.model.arch.layers):
        if layer.heads and layer.fade is None:
            check(run, data.draw(set_loops_events(i, layer, fading=True), label="fade"))
    while any(block.fade is not None for block in run.model.transformer.layers):
        assert run.step < 100, "a fade never ended"
        for request in run.train():
            check(run, request)


def apply(run: Run, request: Event) -> Event:
    """Apply ``request`` at the run's step, as the trainer does."""
    request.step = run.step
    record = surgery.apply(run.model, run.optimizer, request)
    hypothesis.event(f"op: {record.op}")
    return record


# -- expected effects --------------------------------------------------------------------


def expected_arch(arch: Architecture, e: Event, step: int) -> Architecture:
    """The architecture after ``e`` at ``step``, from the documented effect of each op."""
    layer = arch.layers[e.layer]
    if e.op == "add_head":
        return arch.with_layer(e.layer, heads=layer.heads + 1)
    if e.op == "remove_head":
        looped = tuple(h - (h > e.head) for h in layer.looped_heads if h != e.head)
        if not looped:
            return arch.with_layer(
                e.layer, heads=layer.heads - 1, loops=0, looped_heads=(), fade=None
            )
        return arch.with_layer(e.layer, heads=layer.heads - 1, looped_heads=looped)
    if e.op == "set_loops":
        looped = e.looped_heads
        if looped is None:
            looped = layer.looped_heads if e.loops else ()
        fade = layer.fade if e.loops else None
        if e.fade is not None:
            fade = LoopFade(step, e.fade_steps, e.fade)
        return arch.with_layer(e.layer, loops=e.loops, looped_heads=looped, fade=fade)
    assert e.op == "end_fade"
    return arch.with_layer(e.layer, fade=None)


def _moved_heads(e: Event, heads_before: int) -> tuple[list[int], list[int], list[int]]:
    """For an add/remove on ``e.layer``: the surviving heads' old and new indices, and the
    new heads."""
    if e.op == "add_head":
        old = list(range(heads_before))
        return old, old, [heads_before]
    old = [h for h in range(heads_before) if h != e.head]
    return old, list(range(len(old))), []


# -- invariants --------------------------------------------------------------------------


def check_structure(model: ElasticModel, expected: Architecture) -> None:
    """``model.arch`` (read off the modules) is ``expected``, and every weight has the shape
    that it implies."""
    arch = model.arch
    assert arch == expected
    t, d = model.transformer, arch.d_model
    assert t.tok_emb.weight.shape == (arch.vocab_size, arch.embed_rank or d)
    for spec, block in zip(arch.layers, t.layers, strict=True):
        a, mlp = block.attn, block.mlp
        assert a.q_proj.weight.shape == (spec.attn_dim, d)
        assert a.k_proj.weight.shape == a.v_proj.weight.shape == (spec.kv_dim, d)
        assert a.o_proj.weight.shape == (d, spec.attn_dim)
        assert mlp.fc_in.weight.shape == (spec.ffn_dim, d)
        assert mlp.fc_out.weight.shape == (d, spec.ffn_dim)
        assert block.loop_rows.numel() == len(spec.looped_heads) * spec.head_dim
        if spec.fade is not None:
            kept = torch.zeros(spec.heads)
            kept[list(spec.looped_heads)] = 1
            assert torch.equal(block.loop_kept, kept)
            assert 0.0 <= block.loop_fade_level.item() <= 1.0


def check_rebuilt(run: Run) -> None:
    """A model built from ``model.arch`` has the same parameters and buffers and, loaded
    with the same values, computes the same logits."""
    rebuilt = build_model(run.model.arch)
    assert _shapes(rebuilt.named_parameters()) == _shapes(run.model.named_parameters())
    state = run.model.state_dict()
    assert _shapes(rebuilt.state_dict().items()) == _shapes(state.items())
    rebuilt.load_state_dict(state)
    assert torch.equal(run.outputs(rebuilt), run.outputs())


def _shapes(named: Iterable[tuple[str, Tensor]]) -> list[tuple[str, torch.Size]]:
    return [(name, t.shape) for name, t in named]


def _param_groups(model: ElasticModel) -> list[list[int]]:
    ps = list(model.parameters())
    return [[id(p) for p in ps if p.dim() >= 2], [id(p) for p in ps if p.dim() < 2]]


def check_optimizer_aligned(model: ElasticModel, optimizer: torch.optim.Optimizer) -> None:
    """Exactly the model's parameters, in the order a fresh optimizer (hence a checkpoint)
    lists them, and no state of any other tensor or of another shape."""
    assert [[id(p) for p in g["params"]] for g in optimizer.param_groups] == _param_groups(model)
    params = {id(p): p for p in model.parameters()}
    layouts = STATE_LAYOUTS[type(optimizer).__name__]
    for p, state in optimizer.state.items():
        assert id(p) in params, "state of a tensor that is no longer a parameter"
        for k, v in state.items():
            if v.dim():
                assert v.shape == _state_shape(p.shape, layouts[k]), k


def _state_shape(shape: torch.Size, layout: StateLayout) -> tuple[int, ...]:
    """The shape of a state tensor of ``layout`` for a parameter of ``shape``."""
    reduced = {r % len(shape) for r in layout.reduced}
    return tuple(
        1 if i in reduced else n for i, n in enumerate(shape) if layout.keepdim or i not in reduced
    )


@dataclass
class Slot:
    """A parameter before an event: the object, and copies of its value, gradient and state."""

    param: Tensor
    value: Tensor
    grad: Tensor | None
    state: dict[str, Tensor]


def snapshot(run: Run) -> dict[str, Slot]:
    return {
        name: Slot(
            param=p,
            value=p.detach().clone(),
            grad=None if p.grad is None else p.grad.clone(),
            state={k: v.clone() for k, v in run.optimizer.state.get(p, {}).items()},
        )
        for name, p in run.model.named_parameters()
    }


def check_carried(before: dict[str, Slot], run: Run, record: Event) -> None:
    """Untouched parameters are the same objects with the same state; the attention
    projections of an added or removed head keep their surviving heads' slices of value,
    gradient and moments, and give the new head zero gradient and moments (and zero query,
    key and value biases; the output bias belongs to no head and stays)."""
    after = dict(run.model.named_parameters())
    assert after.keys() == before.keys()
    prefix = f"transformer.layers.{record.layer}.attn."
    resized = record.op in ("add_head", "remove_head")
    for name, p in after.items():
        old = before[name]
        state = run.optimizer.state.get(p, {})
        assert state.keys() == old.state.keys(), name
        if not (resized and name.startswith(prefix)) or name.endswith("o_proj.bias"):
            _check_untouched(name, p, old, state)
            continue
        hd = run.model.transformer.layers[record.layer].attn.head_dim
        heads_before = before[prefix + "q_proj.weight"].value.shape[0] // hd
        old_heads, new_heads, fresh = _moved_heads(record, heads_before)
        dim = 1 if name.endswith("o_proj.weight") else 0
        rows = [head_rows(h, hd) for h in (old_heads, new_heads, fresh)]
        _check_rows(old.value, p.detach(), dim, *rows, fresh_zero=name.endswith("bias"))
        assert (p.grad is None) == (old.grad is None), name
        if old.grad is not None:
            _check_rows(old.grad, p.grad, dim, *rows)
        layouts = STATE_LAYOUTS[type(run.optimizer).__name__]
        for k, v in old.state.items():
            axis = layouts[k].axis(p.dim(), dim) if v.dim() else None
            if axis is not None:
                _check_rows(v, state[k], axis, *rows)
            else:  # a step count, or a statistic averaged over the cut dimension
                assert torch.equal(state[k], v), f"{name} {k}"


def check_unchanged(before: dict[str, Slot], run: Run) -> None:
    """Every parameter is the same object with the same value, gradient and state."""
    after = dict(run.model.named_parameters())
    assert after.keys() == before.keys()
    for name, p in after.items():
        _check_untouched(name, p, before[name], run.optimizer.state.get(p, {}))


def _check_untouched(name: str, p: Tensor, old: Slot, state: dict[str, Tensor]) -> None:
    assert p is old.param, name
    assert torch.equal(p, old.value), name
    assert (p.grad is None) == (old.grad is None), name
    assert old.grad is None or torch.equal(p.grad, old.grad), name
    assert state.keys() == old.state.keys(), name
    for k, v in old.state.items():
        assert torch.equal(state[k], v), f"{name} {k}"


def _check_rows(
    old: Tensor,
    new: Tensor,
    dim: int,
    old_rows: Tensor,
    new_rows: Tensor,
    fresh_rows: Tensor,
    fresh_zero: bool = True,
) -> None:
    assert new.shape[dim] == new_rows.numel() + fresh_rows.numel()
    assert torch.equal(new.index_select(dim, new_rows), old.index_select(dim, old_rows))
    if fresh_zero:
        assert not new.index_select(dim, fresh_rows).any()


def promises_same_function(run: Run, request: Event) -> bool:
    """Whether surgery documents ``request`` as keeping the outputs: a function-preserving
    head insertion, or the end of a fade whose level has reached 0."""
    if request.op == "add_head":
        return (request.init or "function_preserving") == "function_preserving"
    if request.op == "end_fade":
        block = run.model.transformer.layers[request.layer]
        return block.fade.level(run.step) == 0.0
    return False


# -- properties --------------------------------------------------------------------------


@settings(PROFILE, max_examples=100)
@given(architectures(), st.data())
def test_weights_follow_the_architecture(arch, data):
    run = Run(arch)

    def check(run: Run, request: Event) -> None:
        expected = expected_arch(run.model.arch, request, run.step)
        record = apply(run, request)
        assert record.heads_after == expected.layers[request.layer].heads
        if record.op == "add_head":
            assert record.head == record.heads_after - 1
        assert record.params_after == run.model.num_params()
        check_structure(run.model, expected)

    # Rebuilding costs more than the events: once after the drawn ones, once at the end.
    drive(data, run, check)
    check_rebuilt(run)
    finale(data, run, check)
    check_rebuilt(run)


@settings(PROFILE, max_examples=100)
@given(architectures(), st.data())
def test_optimizer_state_follows_the_weights(arch, data):
    run = Run(arch)

    def check(run: Run, request: Event) -> None:
        before = snapshot(run)
        record = apply(run, request)
        check_optimizer_aligned(run.model, run.optimizer)
        check_carried(before, run, record)

    drive(data, run, check)
    finale(data, run, check)
    # The moved state is usable: another real step works on every parameter.
    run.train()
    check_optimizer_aligned(run.model, run.optimizer)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@settings(PROFILE, max_examples=15)
@given(architectures(), st.data())
def test_every_optimizer_survives_fifty_random_events(optimizer, arch, data):
    """Each supported optimizer's state (moments, momentum, factored second moments)
    follows 50 drawn actions (structural events between real steps), then the finale."""
    run = Run(arch, optimizer=optimizer)

    def check(run: Run, request: Event) -> None:
        before = snapshot(run)
        record = apply(run, request)
        check_optimizer_aligned(run.model, run.optimizer)
        check_carried(before, run, record)

    drive(data, run, check, max_actions=50)
    finale(data, run, check)
    loss = run.model(**run.batch).loss.item()
    run.train()
    assert math.isfinite(loss) and math.isfinite(run.model(**run.batch).loss.item())
    check_optimizer_aligned(run.model, run.optimizer)


@settings(PROFILE, max_examples=100)
@given(architectures(), st.data())
def test_events_that_promise_it_keep_the_outputs(arch, data):
    run = Run(arch)

    def check(run: Run, request: Event) -> None:
        if not promises_same_function(run, request):
            apply(run, request)
            return
        before = run.outputs()
        apply(run, request)
        hypothesis.event(f"outputs compared after {request.op}")
        assert (run.outputs() - before).abs().max().item() <= TOL

    drive(data, run, check)
    finale(data, run, check)


@settings(PROFILE, max_examples=60)
@given(architectures(), st.data())
def test_refused_events_change_nothing(arch, data):
    run = Run(arch)
    drive(data, run, apply, max_actions=3)
    run.backward()
    for _ in range(3):
        request = data.draw(refused_events(run.model.arch, run.step), label="refused")
        arch_before, before = run.model.arch, snapshot(run)
        buffers = {k: v.clone() for k, v in run.model.state_dict().items()}
        try:
            surgery.apply(run.model, run.optimizer, request)
        except SurgeryError:
            pass
        else:
            raise AssertionError(f"surgery accepted {request}")
        assert run.model.arch == arch_before
        assert run.model.state_dict().keys() == buffers.keys()
        assert all(torch.equal(v, buffers[k]) for k, v in run.model.state_dict().items())
        check_optimizer_aligned(run.model, run.optimizer)
        check_unchanged(before, run)


@settings(PROFILE, max_examples=300)
@given(architectures(dropouts=st.floats(0.0, 1.0, exclude_max=True)))
def test_architecture_json_round_trip(arch):
    assert Architecture.from_json(arch.to_json()) == arch
    assert Architecture.from_dict(arch.to_dict()) == arch
    assert Architecture.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch


@settings(PROFILE, max_examples=60)
@given(architectures(kinds=("causal_lm",)), st.data())
def test_cached_decoding_follows_the_structure(arch, data):
    run = Run(arch)
    drive(data, run, apply)
    ids = run.batch["input_ids"]
    cuts = sorted(data.draw(st.sets(st.integers(1, SEQ - 1), max_size=3), label="cuts"))
    cache = KVCache()
    with torch.no_grad():
        run.model.eval()
        bounds = itertools.pairwise([0, *cuts, SEQ])
        pieces = [run.model(ids[:, a:b], cache=cache).logits for a, b in bounds]
        full = run.model(ids).logits
    assert cache.length == SEQ
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= TOL


@settings(PROFILE, max_examples=100)
@given(
    st.builds(LoopFade, st.integers(0, 10**6), st.integers(1, 10**6), st.sampled_from(FADES)),
    st.lists(st.integers(0, 2 * 10**6), min_size=2, max_size=2).map(sorted),
)
def test_fade_level_falls_from_one_to_exactly_zero(fade, steps):
    # Exactly 0 at the end: that is what makes ending a finished fade keep the outputs.
    early, late = steps
    assert fade.level(fade.start) == 1.0
    assert fade.level(fade.end) == fade.level(fade.end + early) == 0.0
    assert 1.0 >= fade.level(early) >= fade.level(late) >= 0.0


@settings(PROFILE, max_examples=50)
@given(architectures(), st.data())
def test_checkpoint_round_trip(tmp_path, arch, data):
    run = Run(arch)
    drive(data, run, apply, max_actions=4)
    # A fade often in progress at saving (it ends within 1-4 steps): its level is state too.
    with_heads = [i for i, layer in enumerate(run.model.arch.layers) if layer.heads]
    if with_heads:
        i = data.draw(st.sampled_from(with_heads), label="fading layer")
        apply(run, data.draw(set_loops_events(i, run.model.arch.layers[i], fading=True)))
    for _ in range(data.draw(st.integers(1, 2), label="steps before saving")):
        for request in run.train():
            apply(run, request)
    # Checkpoints are taken between steps, with no gradient pending (they do not hold one).
    run.optimizer.zero_grad(set_to_none=True)
    levels = [b.loop_fade_level.item() for b in run.model.transformer.layers if b.fade]
    if any(0 < level < 1 for level in levels):
        hypothesis.event("saved during a fade")
    tokenizer = Tokenizer.word_level([f"w{i}" for i in range(VOCAB - len(SPECIAL_TOKENS))])
    labels = [f"class{i}" for i in range(arch.num_labels)] if arch.num_labels else None
    task = {"name": "fuzz", "kind": arch.kind, "label_names": labels, "max_len": SEQ, "info": {}}
    # What the trainer saves (see Trainer.save), with a word-level tokenizer of the vocabulary.
    saved = {
        "config": CONFIG.to_dict(),
        "tokenizer_json": tokenizer.to_json(),
        "task": task,
        "trainer_state": {"step": run.step, "events": 0, "policy": {}},
    }
    out = tempfile.mkdtemp(dir=tmp_path)
    checkpoint.save(out, step=run.step, model=run.model, optimizer=run.optimizer, **saved)
    ckpt = checkpoint.load(out)
    loaded = ckpt.model
    optimizer = make_optimizer(loaded, CONFIG)
    ckpt.load_optimizer(optimizer)

    assert loaded.arch == run.model.arch
    assert {k: getattr(ckpt, k) for k in saved} == saved
    _assert_same_tensors(loaded, optimizer, run.model, run.optimizer)
    assert torch.equal(run.outputs(loaded), run.outputs())
    for model, opt in ((loaded, optimizer), (run.model, run.optimizer)):
        torch.manual_seed(1)  # the same dropout masks
        model.train()
        model(**run.batch).loss.backward()
        opt.step()
    _assert_same_tensors(loaded, optimizer, run.model, run.optimizer)


def _assert_same_tensors(
    model_a: ElasticModel,
    opt_a: torch.optim.Optimizer,
    model_b: ElasticModel,
    opt_b: torch.optim.Optimizer,
) -> None:
    """Bitwise the same weights, buffers, optimizer state and hyperparameters."""
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        sa, sb = opt_a.state.get(p, {}), opt_b.state.get(q, {})
        assert sa.keys() == sb.keys(), name
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{name} {k}"
    assert _hyperparameters(opt_a) == _hyperparameters(opt_b)


def _hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
