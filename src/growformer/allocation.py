"""Where to put attention width: per-layer heads and head dimensions for a budget, and
compression of trained models.

The budget is ``D = sum over layers of heads x head_dim`` (the paper's; see
``../shared/specs/allocation.md``). A plan keeps every head dimension a multiple of
``multiple`` and never exceeds ``D``: each strategy states a target per layer and an exact
solver picks the integer allocation closest to the targets and to ``D`` (it meets ``D``
exactly unless only a distorted profile would).

Strategies:
    uniform: the same heads and head dimension in every layer.
    front_loaded_heads: more heads in early layers (they retrieve information), falling
        linearly with depth; one head dimension.
    tapered_head_dim: the same heads everywhere, head dimensions falling linearly with
        depth (later layers saturate: with bounded logits, wider heads buy little).
    front_loaded_tapered: both.
    measured: heads of the model the curves were measured on; head dimensions that
        minimise the sum of the per-layer losses read off its saturation curves (see
        :func:`saturation_curves`), so the layers that lose least when cut give up width.

Compression passes (each returns a new model; the input is left alone):
    :func:`compress_head_dim`: every head's query-key and value-output products replaced
        by their best rank-r factors (truncated SVD), i.e. a smaller head dimension.
    :func:`group_kv`: consecutive heads share one key and one value head, the mean of
        theirs (the mean-pooling conversion of multi-head to grouped-query attention).
    :func:`factor_embedding`: the token embedding table replaced by its truncated SVD, a
        narrow table times a projection (on small models the table holds most of the
        parameters, and no attention pass reaches it).
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from growformer import checkpoint
from growformer.arch import Architecture
from growformer.checkpoint import Checkpoint
from growformer.data import Tokenizer, eval_batches
from growformer.errors import ConfigError
from growformer.evaluation import evaluate
from growformer.flops import forward_flops
from growformer.fsutil import atomic_write_text
from growformer.model import ElasticModel, build_model
from growformer.training.runtime import keep_freed_memory

# Cost of leaving a fraction f of the budget unused: 100 f^2 (1% costs as much as one
# layer 10% off its target width).
SHORTFALL_COST = 100.0

STRATEGIES = (
    "uniform",
    "front_loaded_heads",
    "tapered_head_dim",
    "front_loaded_tapered",
    "measured",
)


def plan(
    strategy: str,
    *,
    budget: int,
    base: Architecture,
    head_dim: int | None = None,
    multiple: int = 8,
    skew: float = 0.5,
    curves: dict[str, Any] | None = None,
) -> Architecture:
    """Per-layer heads and head dimensions for an attention budget.

    Args:
        strategy: One of :data:`STRATEGIES`.
        budget: ``D``, the sum over layers of heads x head_dim.
        base: Everything else (depth, d_model, ffn widths, kind, vocabulary, sequence
            length as ``max_len``); its heads and head dimensions are replaced.
        head_dim: The reference head dimension (default: ``base``'s first layer's).
        multiple: Every head dimension is a multiple of this.
        skew: How far the linear profiles move from the mean: the first layer gets
            ``1 + skew`` times it, the last ``1 - skew`` times.
        curves: Saturation curves (``measured`` only), as :func:`saturation_curves` returns.

    Returns:
        ``base`` with the planned layers.

    Raises:
        ConfigError: Unknown strategy, bad numbers, or a budget too small for the heads.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r} (valid: {', '.join(STRATEGIES)})")
    for name, value in (("budget", budget), ("multiple", multiple)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not 0 <= skew < 1:
        raise ConfigError(f"skew must be in [0, 1), got {skew!r}")
    n = base.n_layers
    d0 = base.layers[0].head_dim if head_dim is None else head_dim
    if d0 < 1 or d0 % multiple:
        raise ConfigError(f"head_dim {d0} must be a positive multiple of {multiple}")
    if budget % multiple:
        raise ConfigError(f"budget {budget} must be a multiple of {multiple}")
    if strategy == "measured":
        heads, costs = _measured(curves, n, multiple)
        widest = [2 * c["head_dim"] // multiple for c in curves["layers"]]
    else:
        if budget % d0:
            raise ConfigError(f"budget {budget} must be a multiple of head_dim {d0}")
        total_heads = budget // d0
        if total_heads < n:
            raise ConfigError(f"budget {budget} gives fewer than one head of {d0} per layer")
        front = strategy in ("front_loaded_heads", "front_loaded_tapered")
        taper = strategy in ("tapered_head_dim", "front_loaded_tapered")
        heads = _apportion(total_heads, _profile(n, skew if front else 0.0))
        width = _profile(n, skew if taper else 0.0)
        # Head dimensions follow the width profile, scaled so the heads meet the budget.
        scale = budget / sum(w * h for w, h in zip(width, heads, strict=True))
        targets = [w * scale / multiple for w in width]
        costs = [_squared_distance(t) for t in targets]
        widest = [math.ceil(2 * t) + 1 for t in targets]
    # Tapered plans keep their head dimensions falling with depth, whatever the rounding.
    falling = strategy in ("tapered_head_dim", "front_loaded_tapered")
    units = _solve(heads, costs, widest, budget // multiple, falling=falling)
    if units is None:
        raise ConfigError(
            f"the budget {budget} is too small for heads {heads} with head dimensions of at "
            f"least {multiple}"
        )
    layers = tuple(
        replace(
            layer,
            heads=h,
            head_dim=u * multiple,
            kv_heads=None,
            loops=0,
            looped_heads=(),
            fade=None,
        )
        for layer, h, u in zip(base.layers, heads, units, strict=True)
    )
    return replace(base, layers=layers)


def budget_of(arch: Architecture) -> int:
    """``D``: the sum over layers of heads x head_dim."""
    return sum(layer.heads * layer.head_dim for layer in arch.layers)


def _profile(n: int, skew: float) -> list[float]:
    """Weights falling linearly from ``1 + skew`` (first layer) to ``1 - skew`` (last)."""
    if n == 1:
        return [1.0]
    return [1 + skew - 2 * skew * i / (n - 1) for i in range(n)]


def _apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, at least 1 each (largest remainders)."""
    n = len(weights)
    share = [(total - n) * w / sum(weights) for w in weights]
    out = [1 + math.floor(s) for s in share]
    by_remainder = sorted(range(n), key=lambda i: (-(share[i] - math.floor(share[i])), i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def _squared_distance(target: float) -> Callable[[int], float]:
    return lambda u: ((u - target) / target) ** 2


def _measured(
    curves: dict[str, Any] | None, n: int, multiple: int
) -> tuple[list[int], list[Callable[[int], float]]]:
    if curves is None:
        raise ConfigError("strategy 'measured' needs saturation curves (growformer analyze)")
    layers = curves.get("layers")
    if not isinstance(layers, list) or len(layers) != n:
        raise ConfigError(
            f"the saturation curves cover {len(layers) if isinstance(layers, list) else 0} "
            f"layers, the plan has {n}"
        )
    heads = [c["heads"] for c in layers]
    costs = []
    for c in layers:
        dims, loss = c["head_dims"], c["loss"]
        # Linear between measured head dimensions; flat beyond the widest (saturated).
        costs.append(lambda u, dims=dims, loss=loss: _interpolate(dims, loss, u * multiple))
    return heads, costs


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    if x >= xs[-1]:
        return ys[-1]
    if x <= xs[0]:
        # Below the narrowest measured cut, extrapolate towards "no head at all".
        return ys[0] + (ys[0] - ys[1]) * (xs[0] - x) / (xs[1] - xs[0]) if len(xs) > 1 else ys[0]
    for i in range(len(xs) - 1):
        if xs[i] <= x <= xs[i + 1]:
            return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i])
    raise AssertionError("unreachable: xs must be increasing")


def _solve(
    heads: Sequence[int],
    costs: Sequence[Callable[[int], float]],
    widest: Sequence[int],
    units: int,
    *,
    falling: bool = False,
) -> list[int] | None:
    """Head widths (in units, 1 to ``widest[l]``) per layer with ``sum heads[l] * u[l] <=
    units`` and the least total cost, by dynamic programming over (units used, last
    width); with ``falling``, no layer is wider than the one before. Units left unused
    cost ``SHORTFALL_COST * (unused / units)**2``: an exact fit wins unless it needs a
    profile far from the target (widths are coarse). None if nothing fits."""
    # (units used, width of the last layer; 0 when widths are free) -> (cost, widths)
    best: dict[tuple[int, int], tuple[float, list[int]]] = {(0, 0): (0.0, [])}
    for h, cost, top in zip(heads, costs, widest, strict=True):
        nxt: dict[tuple[int, int], tuple[float, list[int]]] = {}
        for (used, last), (c, picks) in best.items():
            cap = min(top, (units - used) // h, last if falling and last else top)
            for u in range(1, cap + 1):
                key, value = (used + h * u, u if falling else 0), c + cost(u)
                if key not in nxt or value < nxt[key][0]:
                    nxt[key] = (value, [*picks, u])
        best = nxt
    done = [
        (c + SHORTFALL_COST * (1 - used / units) ** 2, picks)
        for (used, _), (c, picks) in best.items()
    ]
    return min(done)[1] if done else None


# --- low-rank factors -------------------------------------------------------------------


def qk_factors(wq: Tensor, wk: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-``rank`` factors of one head's query-key product.

    The head scores ``x Wq^T Wk y / sqrt(head_dim)``; the returned ``(rank, d_model)``
    pair scores ``x Wq'^T Wk' y / sqrt(rank)`` with ``Wq'^T Wk'`` the truncated SVD of
    ``Wq^T Wk`` rescaled by ``sqrt(rank / head_dim)``, so the scores are the truncation's.

    Args:
        wq: (head_dim, d_model) query rows of the head.
        wk: (head_dim, d_model) key rows of the head.
        rank: Rows kept (<= head_dim).
    """
    left, right = _factors(wq.T @ wk, rank)  # (d, r), (r, d)
    scale = math.sqrt(rank / wq.shape[0])
    return (left * scale).T.contiguous(), right.contiguous()


def vo_factors(wv: Tensor, wo: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-``rank`` factors of one head's value-output product ``Wo Wv``.

    Args:
        wv: (head_dim, d_model) value rows of the head.
        wo: (d_model, head_dim) output columns of the head.
        rank: Rows kept (<= head_dim).

    Returns:
        ``(wv', wo')`` of shapes (rank, d_model) and (d_model, rank).
    """
    left, right = _factors(wo @ wv, rank)
    return right.contiguous(), left.contiguous()


def _factors(m: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(left, right) with ``left @ right`` the best rank-``rank`` approximation of ``m``,
    the singular values split evenly between them."""
    u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(m.dtype), (root[:, None] * vh[:rank]).to(m.dtype)


def _head_slice(head: int, head_dim: int) -> slice:
    return slice(head * head_dim, (head + 1) * head_dim)


def _head_factors(
    q: Tensor, k: Tensor, v: Tensor, o: Tensor, s: slice, rank: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rank-``rank`` (wq, wk, wv, wo) of the head whose rows (columns of ``o``) are ``s``."""
    wq, wk = qk_factors(q[s], k[s], rank)
    wv, wo = vo_factors(v[s], o[:, s], rank)
    return wq, wk, wv, wo


@torch.no_grad()
def _truncate_heads(model: ElasticModel, layer: int, heads: Iterable[int], rank: int) -> None:
    """Replace, in place, the given heads of ``layer`` by their rank-``rank`` truncation,
    keeping the head dimension (zero rows fill the rest), so the function is the cut one."""
    attn = model.transformer.layers[layer].attn
    hd = attn.head_dim
    if rank >= hd:
        return
    _ungrouped(model, layer)
    q, k, v, o = (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight)
    for h in heads:
        s = _head_slice(h, hd)
        wq, wk, wv, wo = _head_factors(q, k, v, o, s, rank)
        # The factors score over sqrt(rank); kept at head_dim width they score over
        # sqrt(head_dim), so undo qk_factors' rescaling.
        wq = wq * math.sqrt(hd / rank)
        for weight, new in ((q, wq), (k, wk), (v, wv)):
            weight[s] = 0
            weight[s.start : s.start + rank] = new
        o[:, s] = 0
        o[:, s.start : s.start + rank] = wo


def compress_head_dim(model: ElasticModel, ranks: Sequence[int]) -> ElasticModel:
    """A copy of ``model`` whose layer ``l`` has head dimension ``ranks[l]``, every head's
    query-key and value-output products replaced by their truncated SVD.

    A rank at or above the layer's head dimension leaves the layer as it is.

    Args:
        model: A trained model (not changed).
        ranks: New head dimension per layer.

    Raises:
        ConfigError: Wrong number of ranks or a rank below 1.
    """
    arch = model.arch
    if len(ranks) != arch.n_layers:
        raise ConfigError(f"got {len(ranks)} ranks for a model with {arch.n_layers} layers")
    bad = [r for r in ranks if isinstance(r, bool) or not isinstance(r, int) or r < 1]
    if bad:
        raise ConfigError(f"ranks must be positive integers, got {bad[0]!r}")
    new_layers = tuple(
        replace(layer, head_dim=min(r, layer.head_dim))
        for layer, r in zip(arch.layers, ranks, strict=True)
    )
    new = build_model(replace(arch, layers=new_layers))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for i, (old, spec) in enumerate(zip(arch.layers, new_layers, strict=True)):
            if spec.head_dim == old.head_dim:
                continue
            _ungrouped(model, i)
            prefix = f"transformer.layers.{i}.attn."
            q, k, v, o = (state[prefix + f"{n}_proj.weight"] for n in "qkvo")
            parts: dict[str, list[Tensor]] = {n: [] for n in "qkvo"}
            for h in range(old.heads):
                factors = _head_factors(q, k, v, o, _head_slice(h, old.head_dim), spec.head_dim)
                for n, t in zip("qkvo", factors, strict=True):
                    parts[n].append(t)
            for n in "qkv":
                state[prefix + f"{n}_proj.weight"] = torch.cat(parts[n], 0)
            state[prefix + "o_proj.weight"] = torch.cat(parts["o"], 1)
    new.load_state_dict(state)
    new.train(model.training)
    return new


def _ungrouped(model: ElasticModel, layer: int) -> None:
    if model.transformer.layers[layer].attn.grouped:
        raise ConfigError(
            f"layer {layer} shares keys and values between heads: cut head dimensions before "
            "grouping them"
        )


def group_kv(model: ElasticModel, kv_heads: Sequence[int | None]) -> ElasticModel:
    """A copy of ``model`` whose layer ``l`` has ``kv_heads[l]`` key/value heads, each
    shared by ``heads / kv_heads[l]`` consecutive query heads and set to the mean of their
    key and value rows (None leaves a layer as it is).

    Args:
        model: A trained model (not changed), without grouped layers where it is grouped.
        kv_heads: Key/value heads per layer, each a divisor of the layer's heads, or None.

    Raises:
        ConfigError: Wrong length, a count that does not divide the heads, or a layer that
            is grouped already.
    """
    arch = model.arch
    if len(kv_heads) != arch.n_layers:
        raise ConfigError(f"got {len(kv_heads)} kv_heads for a model with {arch.n_layers} layers")
    for i, (layer, g) in enumerate(zip(arch.layers, kv_heads, strict=True)):
        if g is None:
            continue
        if isinstance(g, bool) or not isinstance(g, int) or g < 1 or layer.heads % g:
            raise ConfigError(f"layer {i}: kv_heads must divide its {layer.heads} heads, got {g!r}")
        _ungrouped(model, i)
    new_layers = tuple(
        layer if g is None else replace(layer, kv_heads=g)
        for layer, g in zip(arch.layers, kv_heads, strict=True)
    )
    new = build_model(replace(arch, layers=new_layers))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, (layer, g) in enumerate(zip(arch.layers, kv_heads, strict=True)):
        if g is None:
            continue
        for name in ("k_proj", "v_proj"):
            key = f"transformer.layers.{i}.attn.{name}.weight"
            w = state[key].view(g, layer.heads // g, layer.head_dim, -1)
            state[key] = w.mean(1).reshape(g * layer.head_dim, -1)
    new.load_state_dict(state)
    new.train(model.training)
    return new


def factor_embedding(model: ElasticModel, rank: int) -> ElasticModel:
    """A copy of ``model`` whose token embedding is the best rank-``rank`` factoring of its
    table: a ``vocab x rank`` table times a ``rank x d_model`` projection.

    Args:
        model: A trained model (not changed); its embedding may be factored already.
        rank: Width of the new table.

    Raises:
        ConfigError: A rank below 1 or not below ``d_model`` (nothing to save).
    """
    arch = model.arch
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank < arch.d_model:
        raise ConfigError(f"embed_rank must be an integer in [1, {arch.d_model}), got {rank!r}")
    t = model.transformer
    with torch.no_grad():
        table = t.tok_proj(t.tok_emb.weight)  # (vocab, d_model), factored or not
    new = build_model(replace(arch, embed_rank=rank))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows, proj = _factors(table, rank)
    state["transformer.tok_emb.weight"] = rows.contiguous()
    state["transformer.tok_proj.weight"] = proj.T.contiguous()
    new.load_state_dict(state)
    new.train(model.training)
    return new


# --- saturation curves ------------------------------------------------------------------


def default_ranks(head_dim: int, multiple: int = 4) -> list[int]:
    """Head dimensions to measure: multiples of ``multiple`` up to ``head_dim`` (at most 8
    points, always including 1 and ``head_dim``)."""
    step = max(multiple, math.ceil(head_dim / 8 / multiple) * multiple)
    return sorted({1, *range(step, head_dim, step), head_dim})


@torch.no_grad()
def saturation_curves(
    model: ElasticModel,
    batches: Sequence[dict[str, Tensor]],
    *,
    ranks: Sequence[int] | None = None,
    per_head: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Loss as each layer's (and each head's) head dimension is cut by truncated SVD.

    For every layer and every rank r: the mean loss over ``batches`` with all heads of
    that layer truncated to rank r (the other layers intact); with ``per_head``, also
    with one head at a time truncated. The model runs in eval mode and is not changed.

    Args:
        model: A trained model.
        batches: Held-out batches (the model's forward keyword arguments, with labels).
        ranks: Head dimensions to measure (default: :func:`default_ranks` per layer).
        per_head: Measure single heads as well (layers x heads x ranks evaluations).
        progress: Called with a line of text after each layer.

    Returns:
        ``{"base_loss", "layers": [{"layer", "heads", "head_dim", "head_dims", "loss",
        "head_loss" (per head, per rank; only with per_head)}]}``.
    """
    was_training = model.training
    model.eval()

    def loss_of(m: ElasticModel) -> float:
        return sum(m(**b).loss.item() for b in batches) / len(batches)

    def cut_loss(layer: int, heads: Iterable[int], rank: int) -> float:
        # Cut in place and put the weights back: cheaper than a copy of the model.
        attn = model.transformer.layers[layer].attn
        saved = [p.detach().clone() for p in attn.parameters()]
        _truncate_heads(model, layer, heads, rank)
        try:
            return loss_of(model)
        finally:
            for p, old in zip(attn.parameters(), saved, strict=True):
                p.copy_(old)

    base = loss_of(model)
    layers = []
    for i, spec in enumerate(model.arch.layers):
        dims = [r for r in (ranks or default_ranks(spec.head_dim)) if r <= spec.head_dim]
        entry: dict[str, Any] = {
            "layer": i,
            "heads": spec.heads,
            "head_dim": spec.head_dim,
            "head_dims": dims,
            "loss": [cut_loss(i, range(spec.heads), r) for r in dims],
        }
        if per_head:
            entry["head_loss"] = [[cut_loss(i, [h], r) for r in dims] for h in range(spec.heads)]
        layers.append(entry)
        if progress is not None:
            progress(f"layer {i}: loss {', '.join(f'{x:.4f}' for x in entry['loss'])}")
    model.train(was_training)
    return {"base_loss": base, "layers": layers}


def ranks_for_tolerance(curves: dict[str, Any], tolerance: float) -> list[int]:
    """Per layer, the smallest measured head dimension whose loss is within ``tolerance``
    (relative) of the uncut model's.

    Args:
        curves: As :func:`saturation_curves` returns.
        tolerance: Allowed relative loss increase per layer, e.g. 0.01.
    """
    limit = curves["base_loss"] * (1 + tolerance)
    return [
        next(
            (r for r, x in zip(c["head_dims"], c["loss"], strict=True) if x <= limit), c["head_dim"]
        )
        for c in curves["layers"]
    ]


@torch.no_grad()
def latency(
    models: dict[str, ElasticModel], batch: dict[str, Tensor], rounds: int = 20
) -> dict[str, float]:
    """Median seconds of one inference forward pass per model on ``batch``, the models timed
    in alternation so that machine noise hits them alike, with freed memory kept for
    reuse (:func:`~growformer.training.runtime.keep_freed_memory`) so that no model pays for fresh
    pages that another does not.

    Args:
        models: Name -> model (put in eval mode for the timing, then restored).
        batch: Forward keyword arguments.
        rounds: Timings per model.
    """
    keep_freed_memory()
    modes = {name: m.training for name, m in models.items()}
    for m in models.values():
        m.eval()
        m(**batch)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            m(**batch)
            times[name].append(time.perf_counter() - t0)
    for name, m in models.items():
        m.train(modes[name])
    return {name: statistics.median(t) for name, t in times.items()}


def plot_curves(curves: dict[str, Any], png: str | Path) -> None:
    """Saturation curves as a PNG: one panel per layer, the layer's curve bold over its
    single-head curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = curves["layers"]
    cols = min(3, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, c in zip(axes.flat, layers, strict=False):
        for h, row in enumerate(c.get("head_loss", [])):
            ax.plot(
                c["head_dims"],
                row,
                color="grey",
                lw=0.8,
                alpha=0.6,
                label="one head cut" if h == 0 else None,
            )
        ax.plot(c["head_dims"], c["loss"], marker="o", lw=2, label="all heads cut")
        ax.axhline(curves["base_loss"], color="black", ls="--", lw=0.8, label="uncut")
        ax.set(
            title=f"layer {c['layer']} ({c['heads']} x {c['head_dim']})",
            xlabel="head dimension kept (SVD)",
            ylabel="held-out loss",
        )
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def compress(
    ckpt: Checkpoint,
    data: Any,
    out: str | Path,
    *,
    ranks: Sequence[int] | None = None,
    tolerance: float | None = None,
    budget: int | None = None,
    curves: dict[str, Any] | None = None,
    kv_heads: Sequence[int | None] | None = None,
    embed_rank: int | None = None,
    batch_size: int = 64,
    rounds: int = 20,
) -> dict[str, Any]:
    """Compress a trained checkpoint and write the result as a new one.

    At most one of ``ranks`` (head dimension per layer), ``tolerance`` (per layer, the
    smallest measured head dimension within this relative loss of the uncut model) or
    ``budget`` (the ``measured`` plan of that attention budget) says how far to cut head
    dimensions; the last two read ``curves`` (measured on ``data`` when not given). Then
    ``kv_heads`` groups keys and values (:func:`group_kv`) and ``embed_rank`` factors the
    token embedding (:func:`factor_embedding`).

    Args:
        ckpt: The loaded checkpoint (not changed).
        data: Held-out data to measure the metric (and the curves) on.
        out: Directory for the compressed checkpoint and ``compression.json``.
        ranks: Head dimension per layer.
        tolerance: Allowed relative loss increase per layer.
        budget: Attention budget (sum of heads x head_dim) to meet.
        curves: Saturation curves of ``ckpt``'s model on ``data``.
        kv_heads: Key/value heads per layer (None entries: not grouped).
        embed_rank: Width of the factored token embedding.
        batch_size: Evaluation batch size.
        rounds: Latency timings per model.

    Returns:
        The report: ranks, kv_heads, and params, forward FLOPs per batch, latency and
        metrics before and after.
    """
    cuts = sum(x is not None for x in (ranks, tolerance, budget))
    if cuts > 1 or (cuts == 0 and kv_heads is None and embed_rank is None):
        raise ConfigError("give one of ranks, tolerance or budget, and/or kv_heads, embed_rank")
    model = ckpt.model.eval()
    pad_id = Tokenizer.from_json(ckpt.tokenizer_json).pad_id
    # The curves and the latency need a few batches; the metrics go over all of ``data``.
    batches = list(itertools.islice(eval_batches(data, batch_size, pad_id), 8))
    if tolerance is not None or budget is not None:
        if curves is None:
            curves = saturation_curves(model, batches, per_head=False)
        if tolerance is not None:
            ranks = ranks_for_tolerance(curves, tolerance)
        else:
            planned = plan("measured", budget=budget, base=model.arch, multiple=1, curves=curves)
            ranks = [layer.head_dim for layer in planned.layers]
    small = model if ranks is None else compress_head_dim(model, ranks).eval()
    if kv_heads is not None:
        small = group_kv(small, kv_heads).eval()
    if embed_rank is not None:
        small = factor_embedding(small, embed_rank).eval()
    batch = batches[0]
    shape = tuple(batch["input_ids"].shape)
    times = latency({"before": model, "after": small}, batch, rounds)
    report: dict[str, Any] = {
        "source": str(ckpt.path),
        "ranks": [layer.head_dim for layer in small.arch.layers],
        "kv_heads": None if kv_heads is None else list(kv_heads),
        "embed_rank": embed_rank,
    }
    for name, m in (("before", model), ("after", small)):
        report[name] = {
            "architecture": m.arch.to_dict(),
            "params": m.num_params(),
            "attention_budget": budget_of(m.arch),
            "forward_flops": forward_flops(m.arch, *shape),
            "latency_s": times[name],
            "metrics": evaluate(m, data, batch_size=batch_size, pad_id=pad_id),
        }
    report["batch_shape"] = list(shape)
    # The configuration describes the model it holds (and builds it, as model.layers).
    layers = small.arch.to_dict()["layers"]
    model_config = {**ckpt.config["model"], "layers": layers, "embed_rank": small.arch.embed_rank}
    config = {**ckpt.config, "model": model_config}
    step = ckpt.trainer_state["step"]
    path = checkpoint.save(
        out,
        step=step,
        model=small,
        optimizer=torch.optim.AdamW(small.parameters()),
        config=config,
        tokenizer_json=ckpt.tokenizer_json,
        task=ckpt.task,
        trainer_state={**ckpt.trainer_state, "compressed_from": str(ckpt.path)},
    )
    report["checkpoint"] = str(path)
    atomic_write_text(Path(out) / "compression.json", json.dumps(report, indent=2))
    return report
