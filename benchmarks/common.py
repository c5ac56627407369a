"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from growformer import statistics as stats_capture
from growformer.model import ElasticModel
from growformer.training.config import TrainConfig
from growformer.training.loop import Trainer
from growformer.training.runtime import keep_freed_memory

RUN_CONFIG = "benchmark_config.json"


def run(cfg: dict[str, Any], out: Path, fresh: bool = False) -> dict[str, Any]:
    """Train ``cfg`` into ``out``, or reuse the summary a previous run of ``cfg`` left there.

    Args:
        cfg: A :class:`TrainConfig` as a dict.
        out: The run directory.
        fresh: Train again even if ``out`` holds a finished run (of any configuration).

    Returns:
        The run's summary.
    """
    summary_path, cfg_path = out / "summary.json", out / RUN_CONFIG
    if not fresh and summary_path.exists():
        if cfg_path.exists() and json.loads(cfg_path.read_text()) == cfg:
            print(f"  reused  {out}", flush=True)
            return json.loads(summary_path.read_text())
        # A finished run is never thrown away silently (a data path given relative to
        # another working directory is enough to change the configuration).
        raise SystemExit(
            f"{out} holds a finished run of another configuration: pass --fresh to replace "
            "it, or choose another --out"
        )
    # A run without a summary was interrupted; start it over rather than trust it.
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    t0 = time.perf_counter()
    summary = Trainer(TrainConfig.from_dict(cfg), out).run(progress=False)
    print(f"  trained {out} in {time.perf_counter() - t0:.0f} s", flush=True)
    return summary


@dataclass
class StepTimes:
    """Seconds per training step of each model in each timing round."""

    rounds: dict[str, list[float]]

    def __getitem__(self, name: str) -> float:
        """Median seconds of one step of ``name``."""
        return statistics.median(self.rounds[name])

    def ratio(self, name: str, base: str) -> float:
        """Median over the rounds of ``name``'s step time over ``base``'s in the same round:
        drifts of the machine's speed between rounds cancel out."""
        pairs = zip(self.rounds[name], self.rounds[base], strict=True)
        return statistics.median(a / b for a, b in pairs)


def time_steps(
    models: dict[str, tuple[ElasticModel, bool]],
    batch: dict[str, torch.Tensor],
    rounds: int,
    steps: int,
) -> StepTimes:
    """Time training steps (forward, backward, AdamW) of several models in alternation, so
    that machine noise hits them alike; every other round runs them in reverse order, so
    that no model always follows the same one (whose memory traffic it would inherit).
    With ``steps=1`` every round pairs one step of each model. A model marked True also
    records the attention entropies, as SGT does until its structure freezes. glibc is
    first told to keep freed memory (:func:`~growformer.training.runtime.keep_freed_memory`, as
    training does): otherwise which model pays for fresh pages depends on allocation
    order, a bias of several percent between identical models.

    Args:
        models: Name -> (model, record entropies).
        batch: One training batch, used for every step.
        rounds: Timing rounds; each times every model in turn.
        steps: Steps per model and round.
    """
    keep_freed_memory()
    optims = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, (m, _) in models.items()}
    times: dict[str, list[float]] = {n: [] for n in models}

    def step(name: str) -> None:
        model, entropy = models[name]
        needs = ("entropy",) if entropy else ()
        with stats_capture.capture(model, batch.get("attention_mask"), needs) as captured:
            loss = model(**batch).loss
        loss.backward()
        optims[name].step()
        optims[name].zero_grad(set_to_none=True)
        captured.results(model)

    for name in models:  # warm-up
        for _ in range(2):
            step(name)
    for r in range(rounds):
        for name in list(models)[:: -1 if r % 2 else 1]:
            t0 = time.perf_counter()
            for _ in range(steps):
                step(name)
            times[name].append((time.perf_counter() - t0) / steps)
    return StepTimes(times)


def save_report(
    out: Path, name: str, lines: list[str], args: Any, started: float, **results: Any
) -> None:
    """Print the report and write it as ``out/name.md``, with ``out/name.json`` holding the
    arguments, ``results`` and the benchmark's wall time since ``started``."""
    report = "\n".join(lines)
    print(report)
    (out / f"{name}.md").write_text(report + "\n")
    data = {"args": vars(args), **results}
    data["benchmark_wall_s"] = round(time.perf_counter() - started, 1)
    (out / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(f"wrote {out / name}.md and .json")
