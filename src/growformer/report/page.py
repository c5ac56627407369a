"""The report page: ``RUN/report/index.html``, its figures embedded, and the PNG files."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from growformer.errors import ConfigError
from growformer.fsutil import atomic_write_bytes, atomic_write_text
from growformer.report.figures import (
    architecture_figure,
    curves_figure,
    heads_figure,
    loops_figure,
)
from growformer.report.logs import RunRecords, read_run, reason
from growformer.report.plotting import load_matplotlib
from growformer.report.policy_figures import (
    energies_figure,
    incrt_figure,
    prediction_figure,
    sgt_figure,
)
from growformer.validation import is_number

_DPI = 100

# Name of the PNG, section title, drawing function; in page order.
FIGURES: list[tuple[str, str, Callable[[RunRecords, Any], Any]]] = [
    ("curves", "Learning curves", curves_figure),
    ("heads", "Heads per layer", heads_figure),
    ("architecture", "Final architecture", architecture_figure),
    ("prediction", "Forecast, certified and observed heads", prediction_figure),
    ("incrt_threshold", "INCRT certificate", incrt_figure),
    ("incrt_energies", "INCRT head energies", energies_figure),
    ("loops", "Loop schedule", loops_figure),
    ("sgt_scores", "SGT decisions", sgt_figure),
]


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the HTML report of a run and its figures.

    Args:
        run_dir: The run directory.
        out: Directory for ``index.html`` and the PNG files (default: ``run_dir/report``).

    Returns:
        The path of ``index.html``.

    Raises:
        ConfigError: ``run_dir`` is not a finished run (see
            :func:`~growformer.report.logs.read_run`).
    """
    run = read_run(run_dir)
    out = Path(out) if out is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    mpl = load_matplotlib()
    sections = []
    for name, title, draw in FIGURES:
        png = out / f"{name}.png"
        # Tick labels in full: an offset ("1e-5+9.999e-1") hides nearly equal scores.
        try:
            with mpl.rc_context({"axes.formatter.useoffset": False}):
                figure = draw(run, mpl)
        except _DAMAGED as e:
            # One damaged log line costs its figures, not the whole page.
            figure = f"Not drawn: the run's logs hold a value it cannot use ({reason(e)})."
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
            f"({reason(e)})"
        ) from None
    index = out / "index.html"
    atomic_write_text(index, page)
    return index


# What malformed values in hand-edited or damaged logs raise while they are drawn.
_DAMAGED = (KeyError, TypeError, ValueError, IndexError, AttributeError)


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


def _page(run: RunRecords, sections: list[str]) -> str:
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


def _summary_table(run: RunRecords) -> str:
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
    if not is_number(value):
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
