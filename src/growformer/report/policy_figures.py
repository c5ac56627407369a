"""Figures of what a growth policy measured: INCRT's head-count forecast, certificate and
head energies; SGT's decisions. Each returns a matplotlib Figure, or a line saying why
there is none."""

from __future__ import annotations

from typing import Any

from growformer.report.logs import RunRecords
from growformer.report.plotting import (
    BLOCK_COLOR,
    HEAD_COLOR,
    LOOPED_COLOR,
    OP_COLORS,
    figure,
    label_grid,
    layer_colors,
    layer_grid,
)


def prediction_figure(run: RunRecords, mpl: Any) -> Any:
    """Heads per layer: observed, INCRT's forecast, certified and null intervals, K*."""
    certified = run.summary.get("certified_interval")
    if not certified:
        return "No head-count forecast (an INCRT run reports one)."
    observed = [layer["heads"] for layer in run.layers]
    n = len(observed)
    series: list[tuple[str, list[float], list[list[int]] | None, Any]] = [
        ("observed (final)", observed, None, HEAD_COLOR),
        ("forecast (first decision)", run.summary.get("forecast_heads") or [], None, LOOPED_COLOR),
        ("certified on held-out", [lo for lo, _ in certified], certified, "#2a9d8f"),
        (
            "null (random init)",
            [lo for lo, _ in run.summary.get("null_interval") or []],
            run.summary.get("null_interval"),
            "#adb5bd",
        ),
        ("K* (paper, information)", run.summary.get("kstar_heads") or [], None, BLOCK_COLOR),
    ]
    series = [x for x in series if x[1]]
    fig, (ax,) = figure(mpl, 4.5 + 1.4 * n, 3.4, right=2.3)
    width = 0.8 / len(series)
    for i, (label, values, spans, color) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(values))]
        drawn = ax.bar(xs, values, width, label=label, color=color)
        ax.bar_label(drawn, fmt="%.3g", fontsize=7)
        if spans:  # the interval's upper end as an error bar above the lower one
            ax.errorbar(
                xs,
                values,
                yerr=[[0] * len(spans), [hi - lo for lo, hi in spans]],
                fmt="none",
                ecolor="black",
                capsize=3,
                lw=1,
            )
    ax.set_xticks(range(n), [f"layer {i}" for i in range(n)])
    ax.set(ylabel="heads")
    ax.margins(y=0.15)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Heads per layer (interval: bar to whisker)", loc="left", fontsize=10)
    return fig


def incrt_figure(run: RunRecords, mpl: Any) -> Any:
    """Per layer, the INCRT certificate's quantities and thresholds over the steps."""
    gates = run.of("incrt.gate")
    if not gates:
        return "No INCRT statistics in this run (its policy does not grow heads)."
    fig, axes = layer_grid(mpl, len(run.layers))
    certified = run.summary.get("converged_step")
    for layer, ax in enumerate(axes):
        rows = [r for r in gates if r["layer"] == layer]
        if not rows:
            ax.set_axis_off()
            continue
        steps = [r["step"] for r in rows]
        for key, label, style in (
            ("residual", "uncaptured (λ_{H+1})", {"lw": 1}),
            ("grow_at", "growth threshold (θ_w)", {"color": "black", "ls": "--", "lw": 1.2}),
            ("weakest", "weakest captured (λ_H)", {"lw": 1}),
            ("keep_at", "keep threshold (φ_w)", {"color": "grey", "ls": ":", "lw": 1.2}),
        ):
            ax.plot(steps, [r[key] for r in rows], label=label, **style)
        for e in run.events:
            if e["op"] in ("add_head", "remove_head", "fade_head") and e["layer"] == layer:
                ax.axvline(e["step"], color=OP_COLORS[e["op"]], lw=0.8, alpha=0.7)
        if certified is not None:
            ax.axvline(certified, color="#264653", lw=2, alpha=0.8, label="certified")
        ax.set_title(f"layer {layer}", loc="left", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    label_grid(axes, len(run.layers), "optimizer step", "gate quantity")
    fig.suptitle(
        "INCRT certificate: sufficient while uncaptured ≤ growth threshold, minimal while "
        "weakest captured ≥ keep threshold\n(vertical lines: heads added / fading / removed)",
        x=0.01,
        ha="left",
        fontsize=11,
    )
    return fig


def energies_figure(run: RunRecords, mpl: Any) -> Any:
    """Per layer, every head's INCRT energy against the pruning threshold."""
    gates = run.of("incrt.gate")
    if not gates:
        return "No head energies (they are INCRT statistics)."
    fig, axes = layer_grid(mpl, len(run.layers))
    cmap = mpl.colormaps["viridis"]
    most = max(len(r["energies"]) for r in gates)
    for layer, ax in enumerate(axes):
        rows = [r for r in gates if r["layer"] == layer and r["energies"]]
        if not rows:
            ax.set_axis_off()
            continue
        for h in range(max(len(r["energies"]) for r in rows)):
            points = [(r["step"], r["energies"][h]) for r in rows if h < len(r["energies"])]
            ax.plot(*zip(*points, strict=True), lw=0.9, color=cmap(h / max(1, most - 1)))
        ax.plot(
            [r["step"] for r in rows],
            [r["phi_g"] for r in rows],
            color="black",
            ls="--",
            lw=1.2,
            label="φ_g (pruning threshold)",
        )
        ax.set_yscale("log")
        ax.minorticks_off()  # dozens of ticks per panel: half the time of this figure
        ax.set_title(f"layer {layer}", loc="left", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    label_grid(axes, len(run.layers), "optimizer step", "head energy")
    fig.suptitle(
        "INCRT: energy of every head (colour: head index, dark = first) vs the pruning threshold",
        x=0.01,
        ha="left",
        fontsize=11,
    )
    return fig


def sgt_figure(run: RunRecords, mpl: Any) -> Any:
    """SGT's layer scores at each decision, the layer it looped or deepened marked."""
    decisions = run.of("sgt.decision")
    if not decisions:
        return "No SGT decisions in this run."
    fig, (ax,) = figure(mpl, 11, 3.6)
    n = max(len(r["scores"]) for r in decisions)
    colors = layer_colors(mpl, n)
    for layer in range(n):
        points = [
            (r["step"], r["scores"][layer])
            for r in decisions
            if layer < len(r["scores"]) and r["scores"][layer] is not None
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", ms=4, color=colors[layer])
            ax.annotate(
                f"L{layer}",
                points[-1],
                xytext=(5, 0),
                textcoords="offset points",
                fontsize=8,
                va="center",
                color=colors[layer],
            )
    for r in decisions:
        if r["layer"] is not None:
            ax.plot(r["step"], r["scores"][r["layer"]], marker="*", ms=14, color="black", ls="")
            ax.annotate(
                r["action"],
                (r["step"], r["scores"][r["layer"]]),
                xytext=(0, 8),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
    ax.margins(y=0.15)
    ax.set(xlabel="optimizer step", ylabel="mean normalised head entropy")
    ax.set_title(
        "SGT: layer scores at each decision (star: the layer looped or deepened)", loc="left"
    )
    ax.grid(alpha=0.3)
    return fig
