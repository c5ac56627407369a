"""Figures of the run's training and structure: learning curves, heads per layer, the final
architecture, the loop schedule. Each returns a matplotlib Figure, or a line saying why
there is none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from growformer.report.logs import RunRecords
from growformer.report.plotting import (
    BLOCK_COLOR,
    HEAD_COLOR,
    LOOPED_COLOR,
    OP_COLORS,
    figure,
    layer_colors,
    mark_events,
)


def curves_figure(run: RunRecords, mpl: Any) -> Any:
    """Training and validation loss, and validation accuracy or perplexity, over the
    steps; structural events marked."""
    train = [r for r in run.metrics if "train_loss" in r]
    evals = [r for r in run.metrics if "val_loss" in r]
    if not train and not evals:
        return "No metrics.jsonl: no learning curves."
    quality = next((k for k in ("val_accuracy", "val_ppl") if any(k in r for r in evals)), None)
    fig, axes = figure(mpl, 11, 3.8, cols=2 if quality else 1)
    if train:
        axes[0].plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train")
    if evals:
        axes[0].plot(
            [r["step"] for r in evals], [r["val_loss"] for r in evals], marker="o", label="val"
        )
    axes[0].set(xlabel="optimizer step", ylabel="loss", title="Loss")
    if quality:
        keys = ["val_accuracy", "val_macro_f1"] if quality == "val_accuracy" else ["val_ppl"]
        for key in keys:
            points = [(r["step"], r[key]) for r in evals if key in r]
            axes[1].plot(*zip(*points, strict=True), marker="o", label=key.removeprefix("val_"))
        title = "Validation accuracy" if quality == "val_accuracy" else "Validation perplexity"
        axes[1].set(xlabel="optimizer step", title=title)
    for ax in axes:
        mark_events(ax, run.events)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return fig


def heads_figure(run: RunRecords, mpl: Any) -> Any:
    """Each layer's head count over the steps."""
    changes = [e for e in run.events if e["op"] in ("add_head", "remove_head")]
    if not changes:
        heads = "/".join(str(layer["heads"]) for layer in run.layers)
        return f"The head counts never changed: {heads} heads per layer throughout."
    history = _head_history(run.layers, changes)
    n = len(history)
    fig, (ax,) = figure(mpl, 11, 3.8)
    colors = layer_colors(mpl, n)
    # Layers with the same count would hide one another: spread them a little.
    spread = min(0.08, 0.5 / n)
    for i, points in enumerate(history):
        xs = [s for s, _ in points] + [run.steps]
        ys = [h for _, h in points] + [points[-1][1]]
        offset = (i - (n - 1) / 2) * spread
        ax.step(
            xs, [y + offset for y in ys], where="post", color=colors[i], lw=1.8, label=f"layer {i}"
        )
    ax.legend(fontsize=8, loc="upper left", ncol=min(n, 6))
    # One label per final count, naming its layers (their lines end together).
    final: dict[int, list[int]] = {}
    for i, points in enumerate(history):
        final.setdefault(points[-1][1], []).append(i)
    for heads, layers in final.items():
        ax.annotate(
            f"{', '.join(f'L{i}' for i in layers)}: {heads}",
            (run.steps, heads),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=colors[layers[0]] if len(layers) == 1 else "black",
        )
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="optimizer step", ylabel="heads", xlim=(0, run.steps * 1.1))
    ax.set_title("Heads per layer over training", loc="left")
    ax.grid(alpha=0.3)
    return fig


def _head_history(
    layers: list[dict[str, Any]], changes: list[dict[str, Any]]
) -> list[list[tuple[int, int]]]:
    """Per layer, ``(step, heads)`` from step 0: the initial counts are the final ones
    with every change undone."""
    initial = [layer["heads"] for layer in layers]
    for e in changes:
        initial[e["layer"]] -= 1 if e["op"] == "add_head" else -1
    history = [[(0, h)] for h in initial]
    for e in changes:
        last = history[e["layer"]][-1][1]
        after = e.get("heads_after", last + (1 if e["op"] == "add_head" else -1))
        history[e["layer"]].append((e["step"], after))
    return history


def architecture_figure(run: RunRecords, mpl: Any) -> Any:
    """The final architecture: every layer's heads, the looped ones marked."""
    arch = run.summary["architecture"]
    layers = run.layers
    widest = max([layer["heads"] for layer in layers] + [4])
    fig, (ax,) = figure(mpl, 5 + 0.55 * widest, 0.7 + 0.6 * len(layers), bottom=0.15)
    for i, layer in enumerate(layers):
        looped = set(layer.get("looped_heads", []))
        for h in range(layer["heads"]):
            is_looped = layer.get("loops", 0) > 0 and h in looped
            ax.add_patch(
                mpl.patches.Rectangle(
                    (h, i - 0.35),
                    0.85,
                    0.7,
                    facecolor=LOOPED_COLOR if is_looped else HEAD_COLOR,
                    edgecolor="black",
                    lw=0.6,
                )
            )
            ax.text(
                h + 0.425,
                i,
                f"{h} ↻{layer['loops']}" if is_looped else str(h),
                ha="center",
                va="center",
                fontsize=7,
            )
        if not layer["heads"]:
            ax.text(0, i, "no attention heads", va="center", fontsize=8, style="italic")
        ax.text(widest + 0.3, i, _layer_caption(layer), va="center", fontsize=8)
    ax.set_yticks(range(len(layers)), [f"layer {i}" for i in range(len(layers))])
    ax.set(xlim=(-0.2, widest + 7.5), ylim=(-0.6, len(layers) - 0.4))
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(
        f"Final architecture ({arch['kind']}, d_model {arch['d_model']}; input at the bottom; "
        "orange: looped heads)",
        loc="left",
        fontsize=10,
    )
    return fig


def _layer_caption(layer: dict[str, Any]) -> str:
    parts = [f"head_dim {layer['head_dim']}", f"ffn {layer['ffn_dim']}"]
    if layer.get("kv_heads") is not None:
        parts.append(f"kv_heads {layer['kv_heads']}")
    if layer.get("loops"):
        parts.append(f"loops {layer['loops']}")
    if layer.get("block_loops"):
        parts.append(f"block loops {layer['block_loops']}")
    return " · ".join(parts)


def loops_figure(run: RunRecords, mpl: Any) -> Any:
    """Which layers loop, over which heads, from which step (head and block loops)."""
    segments = _loop_segments(run)
    if not any(segments):
        return "No loops: every layer ran its attention once."
    n = len(run.layers)
    fig, (ax,) = figure(mpl, 11, 1.2 + 0.55 * n, right=2.4)
    for layer, layer_segments in enumerate(segments):
        shared = not all(seg.block for seg in layer_segments)
        for seg in layer_segments:
            _draw_segment(ax, layer, seg, run.steps, shared)
    for e in run.events:
        if e["op"] == "set_loops":
            ax.plot(e["step"], e["layer"], marker="|", ms=18, color=OP_COLORS["set_loops"])
    ax.set_yticks(range(n), [f"layer {i}" for i in range(n)])
    ax.set(xlim=(0, max(1, run.steps)), ylim=(-0.6, n - 0.4), xlabel="optimizer step")
    ax.grid(axis="x", alpha=0.3)
    handles = [
        mpl.patches.Rectangle((0, 0), 1, 1, color=LOOPED_COLOR),
        mpl.patches.Rectangle((0, 0), 1, 1, facecolor=LOOPED_COLOR, alpha=0.35, hatch="///"),
        mpl.patches.Rectangle((0, 0), 1, 1, color=BLOCK_COLOR),
    ]
    labels = ["head loops (heads, extra passes)", "fading in", "whole-block loops"]
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Loop schedule: which layers loop, over which heads, from when", loc="left")
    return fig


@dataclass
class _Segment:
    """A span of steps ``[start, end)`` with the same loops, fading in until ``fade_end``."""

    start: int
    end: int
    label: str
    block: bool = False
    fade_end: int | None = None


def _loop_segments(run: RunRecords) -> list[list[_Segment]]:
    """Per layer, the spans of steps with loops, from the ``set_loops`` events; a layer
    with loops but no such event (loops configured, block loops) loops from step 0."""
    segments: list[list[_Segment]] = [[] for _ in run.layers]
    for layer, spec in enumerate(run.layers):
        if spec.get("block_loops"):
            segments[layer].append(_Segment(0, run.steps, f"block ×{spec['block_loops']}", True))
        events = [e for e in run.events if e["layer"] == layer and e["op"] == "set_loops"]
        if not events and spec.get("loops"):
            events = [{"step": 0, "loops": spec["loops"], "looped_heads": spec["looped_heads"]}]
        heads: list[int] = []
        fade_end = None
        for e in events:
            if segments[layer] and not segments[layer][-1].block:
                segments[layer][-1].end = e["step"]
            heads = e.get("looped_heads", heads)
            if e.get("fade"):
                fade_end = e["step"] + e["fade_steps"]
            if e["loops"]:
                label = f"heads {','.join(map(str, heads))} ×{e['loops']}"
                segments[layer].append(_Segment(e["step"], run.steps, label, fade_end=fade_end))
    return segments


def _draw_segment(ax: Any, layer: int, seg: _Segment, steps: int, shared: bool) -> None:
    """One span of loops; a block-loop span that shares its row with head loops takes its
    lower part."""
    pad = steps * 0.005
    if seg.block:
        y, height = (layer - 0.33, 0.16) if shared else (layer, 0.5)
        ax.barh(y, seg.end - seg.start, left=seg.start, height=height, color=BLOCK_COLOR)
        ax.text(seg.start + pad, y, seg.label, va="center", fontsize=8)
        return
    solid = max(seg.start, min(seg.fade_end or seg.start, seg.end))
    if solid > seg.start:
        ax.barh(
            layer,
            solid - seg.start,
            left=seg.start,
            height=0.5,
            facecolor=LOOPED_COLOR,
            alpha=0.35,
            hatch="///",
            edgecolor=LOOPED_COLOR,
        )
    ax.barh(layer, seg.end - solid, left=solid, height=0.5, color=LOOPED_COLOR)
    ax.text(seg.start + pad, layer, seg.label, va="center", fontsize=8)
