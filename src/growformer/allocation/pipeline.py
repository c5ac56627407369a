"""Compression of a trained checkpoint, measured: the cut model written as a new checkpoint
with a report of parameters, FLOPs, latency and metrics before and after."""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from growformer import checkpoint
from growformer.allocation.compression import compress_head_dim, factor_embedding, group_kv
from growformer.allocation.curves import ranks_for_tolerance, saturation_curves
from growformer.allocation.planner import budget_of, plan
from growformer.checkpoint import Checkpoint
from growformer.data import Tokenizer, eval_batches
from growformer.errors import ConfigError
from growformer.evaluation import evaluate
from growformer.flops import forward_flops
from growformer.fsutil import atomic_write_text
from growformer.model import ElasticModel
from growformer.training.runtime import keep_freed_memory


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
    ``kv_heads`` groups keys and values (:func:`~growformer.allocation.compression.group_kv`)
    and ``embed_rank`` factors the token embedding
    (:func:`~growformer.allocation.compression.factor_embedding`).

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
