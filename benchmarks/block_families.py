"""Training-step cost of each block family, and of the Llama-style elastic model against a
plain PyTorch Llama-style model of the same shape.

One run, one shape (causal language models, 4 layers, d_model 256, 8 heads of 32, feed-forward
1024, vocabulary 512, batch 16 x 128): growformer's own GPT-2-style block, and the ``bert``
(post-norm, biases), ``gpt2`` (biases, tanh GELU) and ``llama`` (RMSNorm, SwiGLU, rotary)
families. The reference is written the way a hand-sized Llama usually is: one fused QKV
projection, rotary tables computed once, fixed head counts; it gets the elastic model's
weights (its loss is checked equal before timing). Steps (forward, backward, AdamW)
alternate between the models so that machine noise hits all alike; the table gives the
medians and their ratios.

    python benchmarks/block_families.py [--out benchmarks/results/block_families.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from growformer.arch import Architecture, LayerSpec
from growformer.flops import train_step_flops
from growformer.model import build_model
from growformer.model.rotary import apply_rotary, rotary_angles
from growformer.training.runtime import keep_freed_memory

FAMILIES = {
    "growformer (GPT-2 style)": {},
    "bert": {"norm_position": "post", "attn_bias": True},
    "gpt2": {"mlp": "gelu_tanh", "attn_bias": True},
    "llama": {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rotary", "mlp_bias": False},
}


class PlainLlamaBlock(nn.Module):
    def __init__(self, d: int, heads: int, head_dim: int, ffn: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm_1, self.norm_2 = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
        self.qkv = nn.Linear(d, 3 * heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, d, bias=False)
        self.gate = nn.Linear(d, ffn, bias=False)
        self.up = nn.Linear(d, ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm_1(x)).split(self.heads * self.head_dim, dim=2)
        q, k, v = (z.view(b, t, self.heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(b, t, -1))
        h = self.norm_2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class PlainLlama(nn.Module):
    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        layer = arch.layers[0]
        self.embed = nn.Embedding(arch.vocab_size, arch.d_model)
        self.blocks = nn.ModuleList(
            PlainLlamaBlock(arch.d_model, layer.heads, layer.head_dim, layer.ffn_dim)
            for _ in arch.layers
        )
        self.norm = nn.RMSNorm(arch.d_model, eps=1e-5)
        self.head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        self.head_dim, self.theta = layer.head_dim, arch.rope_theta

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos, sin = rotary_angles(torch.arange(input_ids.shape[1]), self.head_dim, self.theta)
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def copy_into(plain: PlainLlama, elastic: nn.Module) -> None:
    t = elastic.transformer
    with torch.no_grad():
        plain.embed.weight.copy_(t.tok_emb.weight)
        plain.norm.weight.copy_(t.ln_f.weight)
        plain.head.weight.copy_(elastic.lm_head.weight)
        for ours, theirs in zip(t.layers, plain.blocks, strict=True):
            a = ours.attn
            theirs.qkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            theirs.out.weight.copy_(a.o_proj.weight)
            theirs.norm_1.weight.copy_(ours.ln_1.weight)
            theirs.norm_2.weight.copy_(ours.ln_2.weight)
            theirs.gate.weight.copy_(ours.mlp.gate.weight)
            theirs.up.weight.copy_(ours.mlp.fc_in.weight)
            theirs.down.weight.copy_(ours.mlp.fc_out.weight)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--out", default="block_families.json")
    args = p.parse_args()
    keep_freed_memory()  # as training does
    d = args.d_model
    base = Architecture(
        kind="causal_lm",
        d_model=d,
        vocab_size=512,
        max_len=args.seq,
        layers=(LayerSpec(8, d // 8, 4 * d),) * args.layers,
    )
    models: dict[str, nn.Module] = {}
    for name, family in FAMILIES.items():
        torch.manual_seed(0)
        models[name] = build_model(replace(base, **family))
    plain = PlainLlama(models["llama"].arch)
    copy_into(plain, models["llama"])
    models["plain PyTorch Llama"] = plain
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 512, (args.batch, args.seq), generator=g)
    labels = torch.randint(4, 512, (args.batch, args.seq), generator=g)

    def loss_of(model: nn.Module) -> torch.Tensor:
        out = model(ids, labels=labels)
        return out if isinstance(out, torch.Tensor) else out.loss

    with torch.no_grad():
        same = abs(loss_of(models["llama"]).item() - loss_of(plain).item())
    assert same < 1e-4, f"the plain Llama computes something else (loss differs by {same})"
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

    def step(name: str) -> float:
        t0 = time.perf_counter()
        loss_of(models[name]).backward()
        opts[name].step()
        opts[name].zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    names = list(models)
    for _ in range(args.warmup):
        for name in names:
            step(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.rounds):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(step(name))
    med = {name: statistics.median(t) for name, t in times.items()}
    first = names[0]
    rows = []
    for name in names:
        arch = models["llama" if name == "plain PyTorch Llama" else name].arch
        rows.append(
            {
                "model": name,
                "step_ms": round(1e3 * med[name], 2),
                "vs_growformer_gpt2_style": round(med[name] / med[first], 3),
                "train_gflops": round(train_step_flops(arch, args.batch, args.seq) / 1e9, 2),
            }
        )
    ratio = med["llama"] / med["plain PyTorch Llama"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.layers} layers, "
        f"d_model {d}, 8 heads, batch {args.batch} x {args.seq}, {args.rounds} rounds"
    )
    print(f"{'model':<26} {'step ms':>8} {'ratio':>6} {'GFLOP':>6}")
    for r in rows:
        print(
            f"{r['model']:<26} {r['step_ms']:>8.2f} {r['vs_growformer_gpt2_style']:>6.3f} "
            f"{r['train_gflops']:>6.2f}"
        )
    print(f"elastic llama / plain PyTorch llama: {ratio:.3f} (target <= 1.05)")
    result = {"rows": rows, "llama_vs_plain": round(ratio, 3), "args": vars(args)}
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
