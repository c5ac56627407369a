"""The elastic transformer backbone and its task heads."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from growformer.arch import Architecture
from growformer.model.attention import KVCache
from growformer.model.block import Block
from growformer.model.feedforward import norm
from growformer.model.rotary import rotary_angles


@dataclass
class ModelOutput:
    """What every model returns.

    Args:
        logits: (batch, num_labels) for classifiers, (batch, seq, vocab) for language models.
        loss: Mean cross-entropy when labels were given.
    """

    logits: Tensor
    loss: Tensor | None = None


class ElasticTransformer(nn.Module):
    """Token embeddings (plus learned positions ``pos_emb`` and token types ``type_emb``
    where the architecture has them), a stack of :class:`Block` of per-layer shapes, and a
    final norm ``ln_f`` (pre-norm) or a norm of the embeddings ``ln_emb`` (post-norm).

    With ``arch.embed_rank`` the token embedding is factored: a narrow table ``tok_emb``
    and a projection ``tok_proj`` up to ``d_model``.

    Args:
        arch: The structure to build.
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        rank = arch.embed_rank
        self.max_len = arch.max_len
        self.rope_theta = arch.rope_theta if arch.positions == "rotary" else None
        self.tok_emb = nn.Embedding(arch.vocab_size, rank or arch.d_model)
        self.tok_proj = nn.Linear(rank, arch.d_model, bias=False) if rank else nn.Identity()
        if arch.positions == "learned":
            self.pos_emb = nn.Embedding(arch.max_len, arch.d_model)
        if arch.type_vocab_size:
            self.type_emb = nn.Embedding(arch.type_vocab_size, arch.d_model)
        if arch.norm_position == "post":
            self.ln_emb = norm(arch.norm, arch.d_model, arch.norm_eps)
        self.drop = nn.Dropout(arch.dropout)
        self.layers = nn.ModuleList(Block(arch=arch, spec=spec) for spec in arch.layers)
        if arch.norm_position == "pre":
            self.ln_f = norm(arch.norm, arch.d_model, arch.norm_eps)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        position_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Return the final hidden states (batch, seq, d_model).

        Args:
            input_ids: (batch, seq) token ids.
            attention_mask: (batch, keys) bool or 0/1, True for real tokens; None = all
                real. Keys are ``input_ids``' positions, with a cache the cached ones too.
            is_causal: Mask future positions.
            cache: Keys and values of the positions before ``input_ids`` (causal input
                only); this pass's are appended.
            position_ids: (batch, seq) position of each token; None counts from 0 (or from
                the cached length). Left-padded rows start their real tokens at 0.
            token_type_ids: (batch, seq) segment of each token, with token-type
                embeddings; None: segment 0 everywhere.
        """
        past, t = 0, input_ids.shape[1]
        if cache is not None:
            if not is_causal:
                raise ValueError("a key/value cache needs causal input")
            past = cache.length
            cache.start()
        if attention_mask is not None and attention_mask.shape[1] != past + t:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[1]} positions, but there are "
                f"{past} cached and {t} new ones"
            )
        if past + t > self.max_len:
            raise ValueError(f"sequence length {past + t} exceeds max_len {self.max_len}")
        pos = position_ids
        if pos is None:
            pos = torch.arange(past, past + t, device=input_ids.device)
        h = self.tok_proj(self.tok_emb(input_ids))
        if hasattr(self, "pos_emb"):
            h = h + self.pos_emb(pos)
        if hasattr(self, "type_emb"):
            if token_type_ids is None:
                h = h + self.type_emb.weight[0]
            else:
                h = h + self.type_emb(token_type_ids)
        if hasattr(self, "ln_emb"):
            h = self.ln_emb(h)
        h = self.drop(h)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        angles: dict[int, tuple[Tensor, Tensor]] = {}
        for block in self.layers:
            head_dim = block.attn.head_dim
            if self.rope_theta is not None and head_dim not in angles:
                angles[head_dim] = rotary_angles(pos, head_dim, self.rope_theta)
            h = block(h, mask, is_causal, cache, angles.get(head_dim))
        if cache is not None:
            cache.finish(t)
        return self.ln_f(h) if hasattr(self, "ln_f") else h


class ElasticModel(nn.Module):
    """Shared base of the task models: construction, initialisation, the live architecture.

    Args:
        arch: The structure to build.
    """

    kind: str

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        if arch.kind != self.kind:
            raise ValueError(f"{type(self).__name__} needs kind {self.kind!r}, got {arch.kind!r}")
        self._base = replace(arch, layers=arch.layers[:1])
        self.transformer = ElasticTransformer(arch)

    @property
    def arch(self) -> Architecture:
        """The current architecture, read off the modules (always in sync with the weights)."""
        return replace(self._base, layers=tuple(b.spec for b in self.transformer.layers))

    def init_weights(self, attn_init: str = "gpt2") -> None:
        """GPT-2 style initialisation; residual output projections scaled down by depth.

        Args:
            attn_init: ``"gpt2"`` (N(0, 0.02^2) like every matrix) or ``"reference"``: the
                INCRT reference scale for attention, W_Q, W_K, W_V ~ N(0, 1/d_model) and
                W_O ~ N(0, 1/head_dim), the scale at which :func:`surgery.add_head` inserts
                heads by default.
        """
        if attn_init not in ATTN_INITS:
            raise ValueError(f"attn_init must be one of {ATTN_INITS}, got {attn_init!r}")
        std = 0.02
        resid_std = std / math.sqrt(2 * len(self.transformer.layers))
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "ln_" in name:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "fc_out.weight")):
                nn.init.normal_(p, 0.0, resid_std)
            else:
                nn.init.normal_(p, 0.0, std)
        if attn_init == "reference":
            d_model = self._base.d_model
            for block in self.transformer.layers:
                a = block.attn
                for proj in (a.q_proj, a.k_proj, a.v_proj):
                    nn.init.normal_(proj.weight, 0.0, 1 / math.sqrt(d_model))
                nn.init.normal_(a.o_proj.weight, 0.0, 1 / math.sqrt(a.head_dim))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class ElasticForSequenceClassification(ElasticModel):
    """Bidirectional encoder with a linear classifier on the [CLS] (first) position (after
    a tanh dense ``pooler`` where the architecture has one, as BERT)."""

    kind = "classifier"

    def __init__(self, arch: Architecture, attn_init: str = "gpt2") -> None:
        super().__init__(arch)
        self.pooler = (
            nn.Sequential(nn.Linear(arch.d_model, arch.d_model), nn.Tanh())
            if arch.pooler
            else nn.Identity()
        )
        self.classifier = nn.Linear(arch.d_model, arch.num_labels)
        self.init_weights(attn_init)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> ModelOutput:
        hidden_states = self.transformer(input_ids, attention_mask, token_type_ids=token_type_ids)
        logits = self.classifier(self.pooler(hidden_states[:, 0]))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return ModelOutput(logits=logits, loss=loss)


class ElasticForCausalLM(ElasticModel):
    """Causal decoder with a language-model head; ``labels[b, t]`` is the target at ``t``."""

    kind = "causal_lm"

    def __init__(self, arch: Architecture, attn_init: str = "gpt2") -> None:
        super().__init__(arch)
        self.lm_head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        self.init_weights(attn_init)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        cache: KVCache | None = None,
        position_ids: Tensor | None = None,
    ) -> ModelOutput:
        """Logits (and loss) of every position of ``input_ids``.

        Args:
            input_ids: (batch, seq) token ids.
            attention_mask: (batch, keys) True for real tokens (with a cache, the cached
                positions' too); None = all real.
            labels: (batch, seq) targets, -100 where ignored.
            cache: Incremental decoding: ``input_ids`` continue the positions cached so
                far; the cache is extended in place.
            position_ids: (batch, seq) positions (see :meth:`ElasticTransformer.forward`).
        """
        hidden_states = self.transformer(
            input_ids, attention_mask, is_causal=True, cache=cache, position_ids=position_ids
        )
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return ModelOutput(logits=logits, loss=loss)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue the (batch, seq) prompts by ``max_new_tokens`` tokens with a cache.

        Call it in eval mode (dropout would make the cached passes disagree).

        Args:
            input_ids: (batch, seq) unpadded prompts.
            max_new_tokens: Tokens to add.
            temperature: 0 picks the most likely token; above 0 samples from the softmax
                of ``logits / temperature``.
            generator: Random generator of the sampling.

        Returns:
            (batch, seq + max_new_tokens) prompts and continuations.
        """
        cache = KVCache()
        tokens = [input_ids]
        step_ids = input_ids
        for _ in range(max_new_tokens):
            logits = self(step_ids, cache=cache).logits[:, -1]
            if temperature > 0:
                probs = F.softmax(logits / temperature, -1)
                step_ids = torch.multinomial(probs, 1, generator=generator)
            else:
                step_ids = logits.argmax(-1, keepdim=True)
            tokens.append(step_ids)
        return torch.cat(tokens, 1)


ATTN_INITS = ("gpt2", "reference")

MODELS: dict[str, type[ElasticModel]] = {
    "classifier": ElasticForSequenceClassification,
    "causal_lm": ElasticForCausalLM,
}


def build_model(arch: Architecture, attn_init: str = "gpt2") -> ElasticModel:
    """Instantiate the model class for ``arch.kind`` (see :meth:`ElasticModel.init_weights`)."""
    return MODELS[arch.kind](arch, attn_init)
