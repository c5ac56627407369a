"""Structural surgery: the only code that changes a model's structure.

Every change rebuilds the affected parameters, carries the optimizer state of every
surviving slice (per optimizer, as :mod:`growformer.optim.state` says its state lies along
the parameter: moments, momentum, factored second moments, step counts), gives new slices
zero state, keeps the gradient if one is pending, and returns an :class:`Event` record. It
is safe between two optimizer steps.

A loop's soft start and a head's fade-out are structures that change with the step:
:func:`advance`, called by the trainer after every optimizer step, sets each fading
layer's level for the next forward pass from the schedule that the ``set_loops`` or
``fade_head`` event recorded in the layer (:class:`~growformer.arch.LoopFade`,
:class:`~growformer.arch.HeadFade`), and asks for ``end_fade`` or ``remove_head`` once it
is over. The level is a Python float written into a device buffer (no host
synchronisation), and a fade costs one event to start and one to end instead of one a
step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor, nn

from growformer.arch import FADES, Architecture, HeadFade, LoopFade
from growformer.errors import ArchitectureError, SurgeryError
from growformer.events import INITS, Event
from growformer.model import ElasticModel, build_model, head_rows
from growformer.model.block import Block
from growformer.optim.state import carry_state

Surgeon = Callable[[ElasticModel, torch.optim.Optimizer | None, Event], Event]


def _add_head(model: ElasticModel, optimizer: torch.optim.Optimizer | None, event: Event) -> Event:
    return add_head(
        model,
        optimizer,
        event.layer,
        init=event.init or "function_preserving",
        init_std=event.init_std,
        form=None if event.query is None or event.key is None else (event.query, event.key),
    )


def _remove_head(
    model: ElasticModel, optimizer: torch.optim.Optimizer | None, event: Event
) -> Event:
    if event.head is None:
        raise SurgeryError("remove_head needs a head index")
    return remove_head(model, optimizer, event.layer, event.head)


def _fade_head(model: ElasticModel, optimizer: torch.optim.Optimizer | None, event: Event) -> Event:
    if event.head is None:
        raise SurgeryError("fade_head needs a head index")
    return fade_head(model, event.layer, event.head, _fade_of(event, HeadFade, event.head))


def _set_loops(model: ElasticModel, optimizer: torch.optim.Optimizer | None, event: Event) -> Event:
    if event.loops is None:
        raise SurgeryError("set_loops needs a loop depth")
    return set_loops(
        model, event.layer, event.loops, event.looped_heads, fade=_fade_of(event, LoopFade)
    )


def _end_fade(model: ElasticModel, optimizer: torch.optim.Optimizer | None, event: Event) -> Event:
    return end_fade(model, event.layer)


# What carries out each op (a new op is one function and one line here).
SURGEONS: dict[str, Surgeon] = {
    "add_head": _add_head,
    "remove_head": _remove_head,
    "fade_head": _fade_head,
    "set_loops": _set_loops,
    "end_fade": _end_fade,
}


def apply(model: ElasticModel, optimizer: torch.optim.Optimizer | None, event: Event) -> Event:
    """Apply a requested change and return its completed record."""
    surgeon = SURGEONS.get(event.op)
    if surgeon is None:
        raise SurgeryError(f"unknown structural op {event.op!r} (known: {', '.join(SURGEONS)})")
    record = surgeon(model, optimizer, event)
    # The record names the op asked for (a registered op may be made of built-in ones).
    record.op = event.op
    record.step, record.reason, record.loss_change = event.step, event.reason, event.loss_change
    return record


def predict(arch: Architecture, event: Event) -> Architecture:
    """The architecture that applying ``event`` to a model of ``arch`` would leave.

    The change is made by the same surgery on a model without weights (on the ``meta``
    device), so the prediction holds for every op, a registered one included.

    Raises:
        SurgeryError: The change cannot be made (as :func:`apply` would raise).
    """
    with torch.device("meta"):
        model = build_model(arch)
    apply(model, None, event)
    return model.arch


def _fade_of(event: Event, kind: type[LoopFade], head: int | None = None) -> LoopFade | None:
    if event.fade is None:
        if kind is HeadFade:
            raise SurgeryError("fade_head needs a fade shape")
        return None
    if event.fade not in FADES:
        raise SurgeryError(f"unknown fade {event.fade!r} (known: {', '.join(FADES)})")
    if event.step is None:
        raise SurgeryError("a fade starts at the event's step, but the event has none")
    if not isinstance(event.fade_steps, int) or event.fade_steps < 1:
        raise SurgeryError(f"a fade needs fade_steps >= 1, got {event.fade_steps!r}")
    fade = LoopFade(start=event.step, steps=event.fade_steps, shape=event.fade)
    return fade if head is None else HeadFade(**vars(fade), head=head)


def add_head(
    model: ElasticModel,
    optimizer: torch.optim.Optimizer | None,
    layer: int,
    init: str = "function_preserving",
    init_std: float | None = None,
    form: tuple[list[float], list[float]] | None = None,
) -> Event:
    """Append one head to ``layer``.

    Args:
        model: The model to change in place.
        optimizer: Its optimizer (state carried), or None.
        layer: Layer index.
        init: ``"random"`` or ``"function_preserving"`` (the same, but W_O starts at zero,
            so the model's outputs do not change at insertion).
        init_std: W_Q, W_K, W_V ~ N(0, init_std^2) and W_O ~ N(0, init_std^2 / (2 n_layers)),
            as the model initialises its own heads; None: the INCRT reference scale,
            W_Q, W_K, W_V ~ N(0, 1/d_model) and W_O ~ N(0, 1/head_dim).
        form: (query, key) directions (d_model each): the new head's first query and key
            rows start along them, at the mean row norm of the layer's other heads, so it
            attends along that query-key form from its first step (the rest as ``init``).

    Raises:
        SurgeryError: For a layer with grouped keys and values (``kv_heads`` set), or a
            form of the wrong width.
    """
    if init not in INITS:
        raise SurgeryError(f"unknown head init {init!r} (known: {', '.join(INITS)})")
    block = _block(model, layer)
    _refuse_grouped(block, layer, "add a head to")
    attn = block.attn
    d_model, hd = attn.q_proj.in_features, attn.head_dim
    if init_std is None:
        in_std, out_std = 1 / math.sqrt(d_model), 1 / math.sqrt(hd)
    else:
        in_std, out_std = init_std, init_std / math.sqrt(2 * len(model.transformer.layers))
    keep = torch.arange(attn.heads * hd, device=attn.q_proj.weight.device)
    rows = (None, None, None) if form is None else (*form, None)
    if form is not None and any(len(r) != d_model for r in form):
        raise SurgeryError(f"a head's form needs directions of width {d_model}")
    for proj, row in zip((attn.q_proj, attn.k_proj, attn.v_proj), rows, strict=True):
        w = proj.weight
        extra = torch.randn(hd, d_model, dtype=w.dtype, device=w.device) * in_std
        if row is not None:
            direction = torch.tensor(row, dtype=w.dtype, device=w.device)
            norm = w.norm(dim=1).mean() if w.shape[0] else in_std * math.sqrt(d_model)
            extra[0] = direction / direction.norm().clamp_min(1e-12) * norm
        _rebuild(proj, optimizer, dim=0, keep=keep, extra=extra)
    w = attn.o_proj.weight
    extra = torch.randn(d_model, hd, dtype=w.dtype, device=w.device) * out_std
    if init == "function_preserving":
        extra.zero_()
    _rebuild(attn.o_proj, optimizer, dim=1, keep=keep, extra=extra)
    # A fade's per-head weights follow the head count (the new head is not looped).
    block.set_loops(block.loops, block.looped_heads, block.fade)
    return _record(model, Event(op="add_head", layer=layer, head=attn.heads - 1, init=init))


def remove_head(
    model: ElasticModel, optimizer: torch.optim.Optimizer | None, layer: int, head: int
) -> Event:
    """Remove head ``head`` of ``layer``; higher heads shift down by one.

    A looped head that is removed leaves the loop; a loop left with no head stops.

    Raises:
        SurgeryError: For a layer with grouped keys and values (``kv_heads`` set), or a
            head out of range.
    """
    block = _block(model, layer)
    _refuse_grouped(block, layer, "remove a head from")
    attn = block.attn
    if not 0 <= head < attn.heads:
        raise SurgeryError(f"layer {layer} has {attn.heads} heads; cannot remove head {head}")
    survivors = [h for h in range(attn.heads) if h != head]
    keep = head_rows(survivors, attn.head_dim).to(attn.q_proj.weight.device)
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        _rebuild(proj, optimizer, dim=0, keep=keep)
    _rebuild(attn.o_proj, optimizer, dim=1, keep=keep)
    looped = tuple(h - (h > head) for h in block.looped_heads if h != head)
    if looped:
        block.set_loops(block.loops, looped, block.fade)
    else:
        block.set_loops(0, ())
    fading = block.head_fade
    if fading is not None:
        # The fading head leaves with its fade; a higher one moves down with its level.
        moved = replace(fading, head=fading.head - (fading.head > head))
        block.set_head_fade(None if fading.head == head else moved)
    return _record(model, Event(op="remove_head", layer=layer, head=head))


def fade_head(model: ElasticModel, layer: int, head: int, fade: HeadFade) -> Event:
    """Start fading ``head`` of ``layer`` out: its output weight falls from 1 to 0 over
    ``fade``, after which :func:`advance` asks for its removal. No parameter changes.

    Raises:
        SurgeryError: For a head out of range, a layer already fading a head out, or a
            layer with grouped keys and values.
    """
    block = _block(model, layer)
    _refuse_grouped(block, layer, "fade out a head of")
    if block.head_fade is not None:
        raise SurgeryError(f"layer {layer} is already fading out head {block.head_fade.head}")
    try:
        model.arch.with_layer(layer, head_fade=fade)
    except ArchitectureError as e:
        raise SurgeryError(str(e)) from None
    block.set_head_fade(fade)
    record = Event(op="fade_head", layer=layer, head=head, fade=fade.shape, fade_steps=fade.steps)
    return _record(model, record)


def set_loops(
    model: ElasticModel,
    layer: int,
    loops: int,
    looped_heads: tuple[int, ...] | list[int] | None = None,
    fade: LoopFade | None = None,
) -> Event:
    """Set how many extra attention passes ``layer`` runs and which heads they re-run.

    No parameter changes: the loops reuse the layer's projections, so the optimizer
    state is untouched.

    Args:
        model: The model to change in place.
        layer: Layer index.
        loops: New loop depth (0 stops the loops).
        looped_heads: Heads the loops re-run; None keeps the layer's current ones.
        fade: Start a soft start (every head in the loops, the others at weight 1 falling
            to 0 by ``fade.end``); None lets a fade in progress go on.
    """
    block = _block(model, layer)
    if looped_heads is None:
        looped_heads = block.looped_heads if loops else ()
    looped_heads = tuple(looped_heads)
    started = fade is not None
    if fade is None and loops:
        fade = block.fade
    try:
        model.arch.with_layer(layer, loops=loops, looped_heads=looped_heads, fade=fade)
    except ArchitectureError as e:
        raise SurgeryError(str(e)) from None
    block.set_loops(loops, looped_heads, fade)
    record = Event(op="set_loops", layer=layer, loops=loops, looped_heads=looped_heads)
    if started:
        record.fade, record.fade_steps = fade.shape, fade.steps
    return _record(model, record)


def end_fade(model: ElasticModel, layer: int) -> Event:
    """End ``layer``'s soft start: from now on its loops compute only the looped heads."""
    block = _block(model, layer)
    if block.fade is None:
        raise SurgeryError(f"layer {layer} has no fade to end")
    block.set_loops(block.loops, block.looped_heads)
    return _record(
        model,
        Event(op="end_fade", layer=layer, loops=block.loops, looped_heads=block.looped_heads),
    )


def advance(model: ElasticModel, step: int) -> list[Event]:
    """Set every fading layer's level for the forward pass of step index ``step``.

    Args:
        model: The model whose fades to move on.
        step: Optimizer steps done.

    Returns:
        ``end_fade`` and ``remove_head`` requests for the fades that are over (their
        level is now 0, so ending them does not change the function).
    """
    requests = []
    for i, block in enumerate(model.transformer.layers):
        if block.fade is not None:
            block.loop_fade_level.fill_(block.fade.level(step))
            if step >= block.fade.end:
                requests.append(Event(op="end_fade", layer=i, reason="fade over"))
        if block.head_fade is not None:
            block.head_fade_level.fill_(block.head_fade.level(step))
            if step >= block.head_fade.end:
                requests.append(
                    Event(op="remove_head", layer=i, head=block.head_fade.head, reason="faded out")
                )
    return requests


def _block(model: ElasticModel, layer: int) -> Block:
    n = len(model.transformer.layers)
    if not 0 <= layer < n:
        raise SurgeryError(f"layer {layer} is out of range (model has {n} layers)")
    return model.transformer.layers[layer]


def _refuse_grouped(block: Block, layer: int, what: str) -> None:
    # One head more or less would leave a group of another size: grouping is equal groups.
    attn = block.attn
    if attn.grouped:
        raise SurgeryError(
            f"cannot {what} layer {layer}: it has grouped keys and values ({attn.heads} "
            f"query heads, kv_heads={attn.kv_heads}), and grouped layers keep their structure"
        )


def _record(model: ElasticModel, event: Event) -> Event:
    event.heads_after = model.transformer.layers[event.layer].attn.heads
    event.params_after = model.num_params()
    return event


def _rebuild(
    linear: nn.Linear,
    optimizer: torch.optim.Optimizer | None,
    *,
    dim: int,
    keep: Tensor,
    extra: Tensor | None = None,
) -> None:
    """Replace ``linear.weight`` by its slices ``keep`` along ``dim``, then ``extra``; with
    ``dim`` 0 (output rows), its bias too, new rows' biases at zero.

    The gradient gets the same slicing, with zeros where ``extra`` is new; so does every
    optimizer state tensor that runs along ``dim`` (as :mod:`growformer.optim.state` lays
    it out), while statistics averaged over ``dim`` and scalars (a step count) are kept.
    """
    _rebuild_param(linear, "weight", optimizer, dim, keep, extra)
    if dim == 0 and linear.bias is not None:
        new_rows = None if extra is None else extra.new_zeros(extra.shape[0])
        _rebuild_param(linear, "bias", optimizer, 0, keep, new_rows)
    linear.out_features, linear.in_features = linear.weight.shape


def _rebuild_param(
    module: nn.Module,
    name: str,
    optimizer: torch.optim.Optimizer | None,
    dim: int,
    keep: Tensor,
    extra: Tensor | None,
) -> None:
    old = getattr(module, name)
    added = 0 if extra is None else extra.shape[dim]

    def cut(t: Tensor, axis: int) -> Tensor:
        """``t`` with the kept slices along ``axis``, then zeros for the new ones."""
        kept = t.index_select(axis, keep)
        if not added:
            return kept
        shape = list(t.shape)
        shape[axis] = added
        return torch.cat([kept, t.new_zeros(shape)], axis)

    data = old.detach().index_select(dim, keep)
    if extra is not None:
        data = torch.cat([data, extra.to(data.dtype)], dim)
    new = nn.Parameter(data, requires_grad=old.requires_grad)
    if old.grad is not None:
        new.grad = cut(old.grad, dim)
    if optimizer is not None:
        carry_state(optimizer, old, new, dim, cut)
    setattr(module, name, new)
