"""Training-step time of frozen structures under ``torch.compile`` against eager mode.

Three structures of the 6-layer causal LM of ``sgt_lm.py`` (d_model 128, 8 heads of 16,
batch 16 x 64 tokens): uniform, SGT's final structure (2 looped heads in 3 layers) and a
per-layer allocation (heads 8..3, head dims 24..8). Each is built twice with the same
weights, one copy compiled; the compile time is the first compiled step, then both copies
are timed in alternation (forward, backward, AdamW) and the report gives the ratio of
medians.

    python benchmarks/compile_speed.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import torch
from common import save_report, time_steps

from growformer.arch import Architecture, LayerSpec
from growformer.model import build_model


def structures() -> dict[str, Architecture]:
    uniform = Architecture.uniform(
        kind="causal_lm",
        d_model=128,
        vocab_size=2000,
        max_len=64,
        n_layers=6,
        heads=8,
        head_dim=16,
        ffn_dim=512,
    )
    looped = uniform
    for layer, heads in ((1, (0, 2)), (2, (2, 7)), (3, (2, 3))):
        looped = looped.with_layer(layer, loops=1, looped_heads=heads)
    shapes = ((8, 24), (7, 20), (6, 16), (5, 12), (4, 12), (3, 8))
    allocated = Architecture(
        kind="causal_lm",
        d_model=128,
        vocab_size=2000,
        max_len=64,
        layers=tuple(LayerSpec(h, d, 512) for h, d in shapes),
    )
    return {"uniform": uniform, "SGT final structure": looped, "per-layer allocation": allocated}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=5, help="steps per timing round")
    p.add_argument("--out", default="runs/compile_speed")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    ids = torch.randint(0, 2000, (16, 64))
    batch = {"input_ids": ids, "labels": ids}
    rows = []
    for name, arch in structures().items():
        print(f"[{time.perf_counter() - t0:.0f} s] {name}", flush=True)
        eager = build_model(arch)
        compiled = torch.compile(copy.deepcopy(eager))
        start = time.perf_counter()
        compiled(**batch).loss.backward()
        compile_s = time.perf_counter() - start
        t = time_steps(
            {"eager": (eager, False), "compiled": (compiled, False)}, batch, args.rounds, args.steps
        )
        rows.append(
            {
                "structure": name,
                "eager_step_s": t["eager"],
                "compiled_step_s": t["compiled"],
                "ratio": t.ratio("compiled", "eager"),
                "compile_s": compile_s,
            }
        )
    lines = [
        f"Causal LM training step (batch 16 x 64, forward + backward + AdamW), eager vs "
        f"torch.compile (inductor), {args.rounds} alternating rounds x {args.steps} steps, "
        f"medians; CPU {torch.get_num_threads()} threads ({os.cpu_count()} cores), torch "
        f"{torch.__version__}.",
        "",
        "| structure | eager step s | compiled step s | compiled / eager | compile s |",
        "|---|---|---|---|---|",
        *(
            f"| {r['structure']} | {r['eager_step_s']:.4f} | {r['compiled_step_s']:.4f} | "
            f"{r['ratio']:.3f} | {r['compile_s']:.0f} |"
            for r in rows
        ),
    ]
    save_report(out, "compile_speed", lines, args, t0, rows=rows)


if __name__ == "__main__":
    main()
