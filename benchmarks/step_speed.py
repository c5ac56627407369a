"""Training-step cost of the elastic model against a plain static transformer of the same shape.

The reference is written the way a hand-sized model usually is (nanoGPT style: one fused
QKV projection, fixed head counts). Both models get identical weights and the same batches;
steps alternate between them so that machine noise hits both alike, and the result is the
ratio of medians. Surgery (add a head, remove a head) is timed against the same step.

    python benchmarks/step_speed.py            # prints a table and writes step_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from growformer import surgery
from growformer.arch import Architecture, LayerSpec
from growformer.model import build_model
from growformer.training.runtime import keep_freed_memory


class RefAttention(nn.Module):
    def __init__(self, d: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.c_attn = nn.Linear(d, 3 * heads * head_dim, bias=False)
        self.c_proj = nn.Linear(heads * head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.c_attn(x).split(self.heads * self.head_dim, dim=2)
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, -1))


class RefBlock(nn.Module):
    def __init__(self, d: int, spec: LayerSpec) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = RefAttention(d, spec.heads, spec.head_dim)
        self.mlp = nn.Sequential(nn.Linear(d, spec.ffn_dim), nn.GELU(), nn.Linear(spec.ffn_dim, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class RefClassifier(nn.Module):
    """A static pre-norm encoder classifier of fixed shape."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        d = arch.d_model
        self.wte, self.wpe = nn.Embedding(arch.vocab_size, d), nn.Embedding(arch.max_len, d)
        self.blocks = nn.ModuleList(RefBlock(d, spec) for spec in arch.layers)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, arch.num_labels)

    def forward(self, input_ids, attention_mask, labels):
        x = self.wte(input_ids) + self.wpe(torch.arange(input_ids.shape[1]))
        mask = attention_mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, mask)
        return F.cross_entropy(self.head(self.ln_f(x)[:, 0]), labels)


def copy_weights(elastic: nn.Module, ref: RefClassifier) -> None:
    """Give the reference exactly the elastic model's weights."""
    t = elastic.transformer
    with torch.no_grad():
        ref.wte.weight.copy_(t.tok_emb.weight)
        ref.wpe.weight.copy_(t.pos_emb.weight)
        for blk, rb in zip(t.layers, ref.blocks, strict=True):
            a = blk.attn
            rb.attn.c_attn.weight.copy_(
                torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            )
            rb.attn.c_proj.weight.copy_(a.o_proj.weight)
            for src, dst in (
                (blk.ln_1, rb.ln_1),
                (blk.ln_2, rb.ln_2),
                (blk.mlp.fc_in, rb.mlp[0]),
                (blk.mlp.fc_out, rb.mlp[2]),
                (t.ln_f, ref.ln_f),
            ):
                dst.load_state_dict(src.state_dict())
        ref.head.load_state_dict(elastic.classifier.state_dict())


def structures(d: int) -> dict[str, tuple[LayerSpec, ...]]:
    return {
        "uniform": (LayerSpec(8, 32, 4 * d),) * 4,
        "non-uniform": (
            LayerSpec(8, 32, 4 * d),
            LayerSpec(6, 32, 4 * d),
            LayerSpec(3, 48, 2 * d),
            LayerSpec(1, 64, 2 * d),
        ),
    }


def measure(name: str, layers, args) -> dict:
    arch = Architecture(
        kind="classifier",
        d_model=args.d_model,
        vocab_size=8000,
        max_len=args.seq,
        layers=layers,
        num_labels=2,
    )
    torch.manual_seed(0)
    elastic = build_model(arch)
    ref = RefClassifier(arch)
    copy_weights(elastic, ref)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 8000, (args.batch, args.seq), generator=g)
    mask = torch.ones(args.batch, args.seq, dtype=torch.bool)
    mask[::2, args.seq // 2 :] = False
    labels = torch.randint(0, 2, (args.batch,), generator=g)
    with torch.no_grad():
        loss_e = elastic(ids, mask, labels).loss.item()
        loss_r = ref(ids, mask, labels).item()
    assert abs(loss_e - loss_r) < 1e-4, (loss_e, loss_r)

    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (elastic, ref)}

    def step(model) -> float:
        t0 = time.perf_counter()
        out = model(ids, mask, labels)
        loss = out.loss if hasattr(out, "loss") else out
        loss.backward()
        opts[model].step()
        opts[model].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step(elastic), step(ref)
    times = {"elastic": [], "reference": []}
    for i in range(args.rounds):
        order = (elastic, ref) if i % 2 == 0 else (ref, elastic)
        for model in order:
            times["elastic" if model is elastic else "reference"].append(step(model))
    med = {k: statistics.median(v) for k, v in times.items()}

    surgery_times = []
    opt = opts[elastic]
    for _ in range(args.surgery_rounds):
        t0 = time.perf_counter()
        surgery.add_head(elastic, opt, 0)
        surgery_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        surgery.remove_head(elastic, opt, 0, 0)
        surgery_times.append(time.perf_counter() - t0)
    return {
        "structure": name,
        "heads": [s.heads for s in layers],
        "step_ms_elastic": 1e3 * med["elastic"],
        "step_ms_reference": 1e3 * med["reference"],
        "ratio": med["elastic"] / med["reference"],
        "surgery_ms": 1e3 * statistics.median(surgery_times),
        "surgery_over_step": statistics.median(surgery_times) / med["elastic"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--surgery-rounds", type=int, default=10)
    p.add_argument("--out", default="step_speed.json")
    args = p.parse_args()
    keep_freed_memory()  # as training does; see its docstring
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, d_model {args.d_model}, "
        f"batch {args.batch} x seq {args.seq}, {args.rounds} alternating rounds"
    )
    results = [measure(name, layers, args) for name, layers in structures(args.d_model).items()]
    print(
        f"{'structure':<12} {'heads':<14} {'elastic ms':>10} {'static ms':>10} {'ratio':>6} "
        f"{'surgery ms':>10} {'surg/step':>9}"
    )
    for r in results:
        print(
            f"{r['structure']:<12} {r['heads']!s:<14} {r['step_ms_elastic']:>10.2f} "
            f"{r['step_ms_reference']:>10.2f} {r['ratio']:>6.3f} {r['surgery_ms']:>10.2f} "
            f"{r['surgery_over_step']:>9.3f}"
        )
    ok = all(r["ratio"] <= 1.05 and r["surgery_over_step"] < 1 for r in results)
    print("PASS" if ok else "FAIL", "(target: ratio <= 1.05, surgery < one step)")
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
