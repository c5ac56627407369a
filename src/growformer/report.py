"""What a run did, for people: an HTML report after training, TensorBoard while it trains.

:func:`write_report` reads a run directory (``summary.json``, and where present
``events.jsonl``, ``metrics.jsonl`` and ``stats.jsonl``) and writes ``RUN/report/index.html``
with its figures beside it as PNG files. The page is self-contained (the figures are
embedded as data URIs, the style is inline): it can be mailed or archived on its own. A
figure whose data the run lacks (a static run has no INCRT statistics) is replaced by a
line saying so. The trainer writes the report at the end of every run; ``growformer report
RUN`` writes it again.

:class:`TensorBoardLog` writes the same statistics to ``RUN/tensorboard`` as training goes
(``TrainConfig.tensorboard``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from growformer.arch import Architecture
from growformer.errors import ConfigError, read_json
from growformer.events import Event
from growformer.fsutil import atomic_write_bytes, atomic_write_text

# Colour of each structural operation, in the figures that mark events.
OP_COLORS = {
    "add_head": "#2a9d8f",
    "remove_head": "#e63946",
    "fade_head": "#f4a261",
    "set_loops": "#7b2cbf",
    "end_fade": "#c77dff",
}
_HEAD = "#8ecae6"
_LOOPED = "#fb8500"
_BLOCK = "#94a3b8"
_DPI = 100


@dataclass
class RunLogs:
    """The files of a run directory, parsed.

    Args:
        path: The run directory.
        summary: ``summary.json``.
        events: Structural events (``events.jsonl``, else the summary's), in order.
        metrics: ``metrics.jsonl`` records (training loss and evaluations).
        incrt: INCRT records of ``stats.jsonl`` (one per layer and check).
        sgt: SGT records of ``stats.jsonl`` (one per decision).
    """

    path: Path
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    incrt: list[dict[str, Any]]
    sgt: list[dict[str, Any]]

    @property
    def layers(self) -> list[dict[str, Any]]:
        """The final architecture's layers (dicts of :meth:`Architecture.to_dict`)."""
        return self.summary["architecture"]["layers"]

    @property
    def steps(self) -> int:
        return int(self.summary.get("steps", 0))


def read_run(run_dir: str | Path) -> RunLogs:
    """Parse a finished run directory.

    Args:
        run_dir: Directory written by ``growformer train``.

    Returns:
        Its logs; a missing optional log reads as empty.

    Raises:
        ConfigError: ``run_dir`` is not a finished run, or one of its files is not valid JSON.
    """
    path = Path(run_dir)
    summary_file = path / "summary.json"
    if not summary_file.is_file():
        if not path.is_dir():
            raise ConfigError(f"run directory {path} does not exist")
        if (path / "checkpoints").is_dir():
            raise ConfigError(
                f"the run in {path} has not finished: no summary.json yet (written when "
                "training ends; resume it with growformer train --resume)"
            )
        raise ConfigError(
            f"{path} is not a run directory: it has no summary.json (growformer train writes "
            "one when training ends)"
        )
    summary = read_json(summary_file, "run summary")
    arch = summary.get("architecture") if isinstance(summary, dict) else None
    if not isinstance(arch, dict) or not isinstance(arch.get("layers"), list):
        raise ConfigError(f"{summary_file} has no architecture: not a growformer run summary")
    events = _read_jsonl(path / "events.jsonl")
    stats = _read_jsonl(path / "stats.jsonl")
    return RunLogs(
        path=path,
        summary=summary,
        events=events if (path / "events.jsonl").exists() else summary.get("events", []),
        metrics=_read_jsonl(path / "metrics.jsonl"),
        incrt=[r for r in stats if "residual" in r],
        sgt=[r for r in stats if "scores" in r],
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of a run and its figures.

    Args:
        run_dir: The run directory.
        out: Directory for ``index.html`` and the PNG files (default: ``run_dir/report``).

    Returns:
        The path of ``index.html``.

    Raises:
        ConfigError: ``run_dir`` is not a finished run (see :func:`read_run`).
    """
    run = read_run(run_dir)
    out = Path(out) if out is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    mpl = _matplotlib()
    sections = []
    for name, title, draw in FIGURES:
        png = out / f"{name}.png"
        # Tick labels in full: an offset ("1e-5+9.999e-1") hides nearly equal scores.
        try:
            with mpl.rc_context({"axes.formatter.useoffset": False}):
                figure = draw(run, mpl)
        except _DAMAGED as e:
            # One damaged log line costs its figures, not the whole page.
            figure = f"Not drawn: the run's logs hold a value it cannot use ({_reason(e)})."
        if isinstance(figure, str):
            png.unlink(missing_ok=True)  # left by an earlier report of the run
            sections.append(_section(title, f'<p class="note">{html.escape(figure)}</p>'))
            continue
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=_DPI)
        data = buffer.getvalue()
        atomic_write_bytes(png, data)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        sections.append(
            _section(title, f'<img src="{uri}" alt="{html.escape(title)}" data-file="{png.name}">')
        )
    try:
        page = _page(run, sections)
    except _DAMAGED as e:
        raise ConfigError(
            f"{run.path}: summary.json or events.jsonl hold a value the report cannot show "
            f"({_reason(e)})"
        ) from None
    index = out / "index.html"
    atomic_write_text(index, page)
    return index


# What malformed values in hand-edited or damaged logs raise while they are drawn.
_DAMAGED = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text:.100}"


# --- figures: each returns a matplotlib Figure, or a line saying why there is none ---------


def _heads_figure(run: RunLogs, mpl: Any) -> Any:
    changes = [e for e in run.events if e["op"] in ("add_head", "remove_head")]
    if not changes:
        heads = "/".join(str(layer["heads"]) for layer in run.layers)
        return f"The head counts never changed: {heads} heads per layer throughout."
    history = _head_history(run.layers, changes)
    n = len(history)
    fig, (ax,) = _figure(mpl, 11, 3.8)
    colors = _layer_colors(mpl, n)
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


def _incrt_figure(run: RunLogs, mpl: Any) -> Any:
    if not run.incrt:
        return "No INCRT statistics in this run (its policy does not grow heads)."
    fig, axes = _layer_grid(mpl, len(run.layers))
    certified = run.summary.get("converged_step")
    for layer, ax in enumerate(axes):
        rows = [r for r in run.incrt if r["layer"] == layer]
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
    _label_grid(axes, len(run.layers), "optimizer step", "gate quantity")
    fig.suptitle(
        "INCRT certificate: sufficient while uncaptured ≤ growth threshold, minimal while "
        "weakest captured ≥ keep threshold\n(vertical lines: heads added / fading / removed)",
        x=0.01,
        ha="left",
        fontsize=11,
    )
    return fig


def _energies_figure(run: RunLogs, mpl: Any) -> Any:
    if not run.incrt:
        return "No head energies (they are INCRT statistics)."
    fig, axes = _layer_grid(mpl, len(run.layers))
    cmap = mpl.colormaps["viridis"]
    most = max(len(r["energies"]) for r in run.incrt)
    for layer, ax in enumerate(axes):
        rows = [r for r in run.incrt if r["layer"] == layer and r["energies"]]
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
    _label_grid(axes, len(run.layers), "optimizer step", "head energy")
    fig.suptitle(
        "INCRT: energy of every head (colour: head index, dark = first) vs the pruning threshold",
        x=0.01,
        ha="left",
        fontsize=11,
    )
    return fig


def _loops_figure(run: RunLogs, mpl: Any) -> Any:
    segments = _loop_segments(run)
    if not any(segments):
        return "No loops: every layer ran its attention once."
    n = len(run.layers)
    fig, (ax,) = _figure(mpl, 11, 1.2 + 0.55 * n, right=2.4)
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
        mpl.patches.Rectangle((0, 0), 1, 1, color=_LOOPED),
        mpl.patches.Rectangle((0, 0), 1, 1, facecolor=_LOOPED, alpha=0.35, hatch="///"),
        mpl.patches.Rectangle((0, 0), 1, 1, color=_BLOCK),
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


def _loop_segments(run: RunLogs) -> list[list[_Segment]]:
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
        ax.barh(y, seg.end - seg.start, left=seg.start, height=height, color=_BLOCK)
        ax.text(seg.start + pad, y, seg.label, va="center", fontsize=8)
        return
    solid = max(seg.start, min(seg.fade_end or seg.start, seg.end))
    if solid > seg.start:
        ax.barh(
            layer,
            solid - seg.start,
            left=seg.start,
            height=0.5,
            facecolor=_LOOPED,
            alpha=0.35,
            hatch="///",
            edgecolor=_LOOPED,
        )
    ax.barh(layer, seg.end - solid, left=solid, height=0.5, color=_LOOPED)
    ax.text(seg.start + pad, layer, seg.label, va="center", fontsize=8)


def _sgt_figure(run: RunLogs, mpl: Any) -> Any:
    if not run.sgt:
        return "No SGT decisions in this run."
    fig, (ax,) = _figure(mpl, 11, 3.6)
    n = max(len(r["scores"]) for r in run.sgt)
    colors = _layer_colors(mpl, n)
    for layer in range(n):
        points = [
            (r["step"], r["scores"][layer])
            for r in run.sgt
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
    for r in run.sgt:
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


def _curves_figure(run: RunLogs, mpl: Any) -> Any:
    train = [r for r in run.metrics if "train_loss" in r]
    evals = [r for r in run.metrics if "val_loss" in r]
    if not train and not evals:
        return "No metrics.jsonl: no learning curves."
    quality = next((k for k in ("val_accuracy", "val_ppl") if any(k in r for r in evals)), None)
    fig, axes = _figure(mpl, 11, 3.8, cols=2 if quality else 1)
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
        _mark_events(ax, run.events)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return fig


def _mark_events(ax: Any, events: list[dict[str, Any]]) -> None:
    """Vertical lines at the steps of structural changes, one legend entry per operation."""
    seen: set[str] = set()
    for step, op in sorted({(e["step"], e["op"]) for e in events}):
        ax.axvline(
            step,
            color=OP_COLORS.get(op, "grey"),
            lw=0.8,
            alpha=0.6,
            ls=":" if op == "end_fade" else "-",
            label=None if op in seen else op,
        )
        seen.add(op)


def _prediction_figure(run: RunLogs, mpl: Any) -> Any:
    certified = run.summary.get("certified_interval")
    if not certified:
        return "No head-count forecast (an INCRT run reports one)."
    observed = [layer["heads"] for layer in run.layers]
    n = len(observed)
    series: list[tuple[str, list[float], list[list[int]] | None, Any]] = [
        ("observed (final)", observed, None, _HEAD),
        ("forecast (first decision)", run.summary.get("forecast_heads") or [], None, _LOOPED),
        ("certified on held-out", [lo for lo, _ in certified], certified, "#2a9d8f"),
        (
            "null (random init)",
            [lo for lo, _ in run.summary.get("null_interval") or []],
            run.summary.get("null_interval"),
            "#adb5bd",
        ),
        ("K* (paper, information)", run.summary.get("kstar_heads") or [], None, _BLOCK),
    ]
    series = [x for x in series if x[1]]
    fig, (ax,) = _figure(mpl, 4.5 + 1.4 * n, 3.4, right=2.3)
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


def _architecture_figure(run: RunLogs, mpl: Any) -> Any:
    arch = run.summary["architecture"]
    layers = run.layers
    widest = max([layer["heads"] for layer in layers] + [4])
    fig, (ax,) = _figure(mpl, 5 + 0.55 * widest, 0.7 + 0.6 * len(layers), bottom=0.15)
    for i, layer in enumerate(layers):
        looped = set(layer.get("looped_heads", []))
        for h in range(layer["heads"]):
            is_looped = layer.get("loops", 0) > 0 and h in looped
            ax.add_patch(
                mpl.patches.Rectangle(
                    (h, i - 0.35),
                    0.85,
                    0.7,
                    facecolor=_LOOPED if is_looped else _HEAD,
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


# Name of the PNG, section title, drawing function; in page order.
FIGURES: list[tuple[str, str, Callable[[RunLogs, Any], Any]]] = [
    ("curves", "Learning curves", _curves_figure),
    ("heads", "Heads per layer", _heads_figure),
    ("architecture", "Final architecture", _architecture_figure),
    ("prediction", "Forecast, certified and observed heads", _prediction_figure),
    ("incrt_threshold", "INCRT certificate", _incrt_figure),
    ("incrt_energies", "INCRT head energies", _energies_figure),
    ("loops", "Loop schedule", _loops_figure),
    ("sgt_scores", "SGT decisions", _sgt_figure),
]


def _figure(
    mpl: Any,
    width: float,
    height: float,
    *,
    rows: int = 1,
    cols: int = 1,
    left: float = 1.0,
    right: float = 0.3,
    top: float = 0.45,
    bottom: float = 0.55,
    **subplots: Any,
) -> tuple[Any, list[Any]]:
    """A figure of ``rows x cols`` axes, its margins fixed in inches: a layout engine
    would cost as much time as all the drawing, at the end of every run."""
    fig = mpl.figure.Figure(figsize=(width, height))
    grid = fig.subplots(rows, cols, squeeze=False, **subplots)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        top=1 - top / height,
        bottom=bottom / height,
        wspace=0.2,
        hspace=0.45,
    )
    return fig, list(grid.flat)


def _layer_grid(mpl: Any, n: int) -> tuple[Any, list[Any]]:
    """One panel per layer, three to a row."""
    cols = min(3, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = _figure(mpl, 11, 0.9 + 2.6 * rows, rows=rows, cols=cols, top=0.7, sharex=True)
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def _label_grid(axes: list[Any], n: int, xlabel: str, ylabel: str) -> None:
    cols = min(3, max(1, n))
    for i, ax in enumerate(axes):
        if i % cols == 0:
            ax.set_ylabel(ylabel)
        if i >= n - cols:
            ax.set_xlabel(xlabel)
            ax.xaxis.set_tick_params(labelbottom=True)


def _layer_colors(mpl: Any, n: int) -> list[Any]:
    cmap = mpl.colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(1, n - 1)) for i in range(n)]


def _matplotlib() -> Any:
    """matplotlib with the figure and patch modules loaded (imported on first use: it takes
    a good part of a second; figures are made without pyplot, whose backend is the user's)."""
    import matplotlib
    import matplotlib.figure
    import matplotlib.patches

    return matplotlib


# --- the page --------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #1f2933; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #d9e2ec; }
.path { color: #52606d; font-family: monospace; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #d9e2ec; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; }
.note { color: #52606d; font-style: italic; }
"""


def _page(run: RunLogs, sections: list[str]) -> str:
    s = run.summary
    title = f"{s.get('task', '?')} / {s.get('policy', '?')} (seed {s.get('seed', '?')})"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>growformer report: {html.escape(title)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>growformer run: {html.escape(title)}</h1>",
            f'<div class="path">{html.escape(str(run.path.resolve()))}</div>',
            _section("Summary", _summary_table(run)),
            *sections,
            _section("Structural events", _events_table(run.events)),
            "</body></html>",
            "",
        ]
    )


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>"


def _summary_table(run: RunLogs) -> str:
    s = run.summary
    arch = s["architecture"]
    ops = Counter(e["op"] for e in run.events)
    rows: list[tuple[str, Any]] = [
        ("task", s.get("task")),
        ("policy", s.get("policy")),
        ("seed", s.get("seed")),
        ("steps", s.get("steps")),
        ("params", s.get("params")),
        ("heads per layer", "/".join(str(layer["heads"]) for layer in run.layers)),
        ("layers · d_model", f"{len(run.layers)} · {arch.get('d_model')}"),
        *((name, value) for name, value in (s.get("metrics") or {}).items()),
        ("train_flops", s.get("train_flops")),
        ("flops_overhead_pct", s.get("flops_overhead_pct")),
        ("wall_s", s.get("wall_s")),
        ("device", s.get("device")),
        ("events", ", ".join(f"{n} {op}" for op, n in ops.items()) or "none"),
        ("converged_step", s.get("converged_step")),
        ("forecast_heads", s.get("forecast_heads")),
        ("data", s.get("data")),
    ]
    cells = "\n".join(
        f"<tr><th>{html.escape(name)}</th>{_cell(value)}</tr>"
        for name, value in rows
        if value is not None
    )
    return f"<table>\n{cells}\n</table>"


def _cell(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        text = json.dumps(value) if isinstance(value, dict) else str(value)
        return f"<td>{html.escape(text)}</td>"
    if isinstance(value, int):
        return f'<td class="num">{value:,}</td>'
    return f'<td class="num">{value:.6g}</td>'


def _events_table(events: list[dict[str, Any]]) -> str:
    if not events:
        return '<p class="note">No structural events.</p>'
    head = "".join(f"<th>{c}</th>" for c in ("step", "op", "layer", "head", "loss jump", "reason"))
    rows = []
    for e in events:
        jump = (
            f"{e['loss_after'] - e['loss_before']:+.3g}"
            if "loss_after" in e and "loss_before" in e
            else ""
        )
        cells = [e["step"], e["op"], e["layer"], e.get("head", e.get("looped_heads", ""))]
        rows.append(
            "<tr>"
            + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
            + f'<td class="num">{jump}</td><td>{html.escape(e.get("reason", ""))}</td></tr>'
        )
    return (
        f"<details><summary>{len(events)} events</summary><table>\n<tr>{head}</tr>\n"
        + "\n".join(rows)
        + "\n</table></details>"
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines log; none if the file is absent."""
    if not path.exists():
        return []
    records = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read: {_reason(e)}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise ConfigError(f"{path}:{n} is not valid JSON: {_reason(e)}") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{n} is not a JSON object")
        records.append(record)
    return records


# --- TensorBoard -------------------------------------------------------------------------------


class TensorBoardLog:
    """Training statistics as TensorBoard scalars and text, written while a run trains.

    Tags: ``train/loss``, ``train/lr``; ``val/<metric>``; ``structure/heads/layer_<i>``,
    ``structure/heads_total``, ``structure/loops/layer_<i>``, ``structure/params``;
    ``incrt/{residual,grow_at,weakest,keep_at}/layer_<i>`` (the certificate's quantities),
    ``incrt/min_energy/layer_<i>``; ``sgt/score/layer_<i>``,
    ``sgt/entropy/layer_<i>/head_<h>``; the structural events of each step as the text
    ``events``.

    Args:
        log_dir: Directory of the event files (``RUN/tensorboard``).
        step: Optimizer steps already done: a resumed run drops what an earlier session
            logged from this step on (it is logged again).

    Raises:
        ConfigError: TensorBoard is not installed.
    """

    def __init__(self, log_dir: str | Path, step: int = 0) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                'TensorBoard logging needs the tensorboard package: pip install -e ".[tensorboard]"'
            ) from None
        self.writer = SummaryWriter(str(log_dir), purge_step=step or None)

    def train(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def evaluation(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(f"val/{name.removeprefix('val_')}", value, step)

    def structure(self, step: int, arch: Architecture, params: int) -> None:
        for i, layer in enumerate(arch.layers):
            self.writer.add_scalar(f"structure/heads/layer_{i}", layer.heads, step)
            self.writer.add_scalar(f"structure/loops/layer_{i}", layer.loops, step)
        self.writer.add_scalar("structure/heads_total", sum(x.heads for x in arch.layers), step)
        self.writer.add_scalar("structure/params", params, step)

    def events(self, step: int, records: list[Event]) -> None:
        lines = [
            f"- {r.op} layer {r.layer}"
            + ("" if r.head is None else f" head {r.head}")
            + ("" if r.reason is None else f": {r.reason}")
            for r in records
        ]
        self.writer.add_text("events", "\n".join(lines), step)

    def stats(self, record: dict[str, Any]) -> None:
        """One record of the policy's statistics log (``stats.jsonl``)."""
        step = record["step"]
        if "residual" in record:
            layer = record["layer"]
            for key in ("residual", "grow_at", "weakest", "keep_at"):
                if record[key] is not None:
                    self.writer.add_scalar(f"incrt/{key}/layer_{layer}", record[key], step)
            if record["energies"]:
                energy = min(record["energies"])
                self.writer.add_scalar(f"incrt/min_energy/layer_{layer}", energy, step)
        if "scores" in record:
            for layer, score in enumerate(record["scores"]):
                if score is not None:
                    self.writer.add_scalar(f"sgt/score/layer_{layer}", score, step)
            for layer, entropies in enumerate(record["entropies"]):
                for h, value in enumerate(entropies):
                    self.writer.add_scalar(f"sgt/entropy/layer_{layer}/head_{h}", value, step)

    def close(self) -> None:
        self.writer.close()
