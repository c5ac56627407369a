"""Where to put attention width: per-layer heads and head dimensions for a budget.

The budget is ``D = sum over layers of heads x head_dim`` (the paper's). A plan keeps
every head dimension a multiple of ``multiple`` and never exceeds ``D``: each strategy
states a target per layer and an exact solver picks the integer allocation closest to the
targets and to ``D`` (it meets ``D`` exactly unless only a distorted profile would).

Strategies:
    uniform: the same heads and head dimension in every layer.
    front_loaded_heads: more heads in early layers (they retrieve information), falling
        linearly with depth; one head dimension.
    tapered_head_dim: the same heads everywhere, head dimensions falling linearly with
        depth (later layers saturate: with bounded logits, wider heads buy little).
    front_loaded_tapered: both.
    measured: heads of the model the curves were measured on; head dimensions that
        minimise the sum of the per-layer losses read off its saturation curves (see
        :func:`growformer.allocation.curves.saturation_curves`), so the layers that lose
        least when cut give up width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from growformer.arch import Architecture
from growformer.errors import ConfigError
from growformer.validation import is_int

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
        curves: Saturation curves (``measured`` only), as
            :func:`~growformer.allocation.curves.saturation_curves` returns.

    Returns:
        ``base`` with the planned layers.

    Raises:
        ConfigError: Unknown strategy, bad numbers, or a budget too small for the heads.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r} (valid: {', '.join(STRATEGIES)})")
    for name, value in (("budget", budget), ("multiple", multiple)):
        if not is_int(value) or value < 1:
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
