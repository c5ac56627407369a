"""Export a trained checkpoint to ONNX, check it, and time onnxruntime against PyTorch.

The checkpoint's model is exported (``growformer.export``), compared with PyTorch on 100
validation inputs, then one batch of 1 and one of 64 validation sentences are run by both
runtimes in alternation (inference, no gradients), medians of ``--rounds``. Idle worker
threads must not spin (onnxruntime's spinning is switched off; run with
``OMP_WAIT_POLICY=PASSIVE`` for more than one thread): the two runtimes share the cores.

    python benchmarks/onnx_latency.py --checkpoint runs/incrt_sst2/incrt [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from common import save_report

from growformer import checkpoint
from growformer.data import Tokenizer, eval_batches
from growformer.export import checkpoint_inputs, export_onnx, verify_onnx
from growformer.training.config import TrainConfig
from growformer.training.runtime import keep_freed_memory
from growformer.training.setup import task_data


def alternate(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds of each callable, the callables run in turn every round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for f in runs.values():
        f()  # warm-up
    for _ in range(rounds):
        for name, f in runs.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="run or checkpoint directory")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--out", default="runs/onnx_latency")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    ckpt = checkpoint.load(args.checkpoint)
    t0 = time.perf_counter()
    path = export_onnx(ckpt.model, out / "model.onnx", label_names=ckpt.task.get("label_names"))
    export_s = time.perf_counter() - t0
    checks, source = checkpoint_inputs(ckpt, 100)
    diff = verify_onnx(ckpt.model, path, checks)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = ckpt.model.eval()
    val = task_data(TrainConfig.from_dict(ckpt.config), ckpt).val
    pad_id = Tokenizer.from_json(ckpt.tokenizer_json).pad_id
    rows = []
    with torch.no_grad():
        for size in (1, 64):
            batch = next(eval_batches(val, size, pad_id))
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            feeds = {k: v.long().numpy() for k, v in inputs.items()}
            runs = {
                "pytorch": lambda i=inputs: model(**i),
                "onnx": lambda f=feeds: session.run(None, f),
            }
            t = alternate(runs, args.rounds)
            shape = tuple(inputs["input_ids"].shape)
            rows.append({"batch": shape, **t, "ratio": t["pytorch"] / t["onnx"]})
    lines = [
        f"{args.checkpoint}: export {export_s:.1f} s, {path.stat().st_size / 2**20:.2f} MiB, "
        f"max |logit difference| {diff:.2g} on 100 inputs ({source}); CPU, {args.threads} "
        f"thread(s), torch {torch.__version__}, onnxruntime {ort.__version__}, "
        f"{args.rounds} alternating rounds, medians.",
        "",
        "| batch x seq | PyTorch ms | onnxruntime ms | PyTorch / onnxruntime |",
        "|---|---|---|---|",
        *(
            f"| {r['batch'][0]} x {r['batch'][1]} | {1e3 * r['pytorch']:.2f} | "
            f"{1e3 * r['onnx']:.2f} | {r['ratio']:.2f}x |"
            for r in rows
        ),
    ]
    save_report(
        out, "onnx_latency", lines, args, started, export_s=export_s, max_abs_diff=diff, rows=rows
    )


if __name__ == "__main__":
    main()
