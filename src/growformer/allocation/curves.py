"""Saturation curves: the held-out loss as each layer's (and each head's) head dimension
is cut by truncated SVD, the head dimensions they allow, and their figure."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from growformer.allocation.compression import truncate_heads
from growformer.model import ElasticModel


def default_ranks(head_dim: int, multiple: int = 4) -> list[int]:
    """Head dimensions to measure: multiples of ``multiple`` up to ``head_dim`` (at most 8
    points, always including 1 and ``head_dim``).

    Args:
        head_dim: The layer's head dimension.
        multiple: Every point but 1 and ``head_dim`` is a multiple of this.
    """
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
        truncate_heads(model, layer, heads, rank)
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


def plot_curves(curves: dict[str, Any], png: str | Path) -> None:
    """Saturation curves as a PNG: one panel per layer, the layer's curve bold over its
    single-head curves.

    Args:
        curves: As :func:`saturation_curves` returns.
        png: Path of the figure to write.
    """
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
