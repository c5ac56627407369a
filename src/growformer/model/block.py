"""Pre-norm transformer block: attention (with optional looped passes) and feed-forward."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from growformer.arch import HeadFade, LayerSpec, LoopFade
from growformer.model.attention import ElasticAttention, KVCache


class MLP(nn.Module):
    """Two-layer GELU feed-forward sublayer.

    Args:
        d_model: Width of the residual stream.
        ffn_dim: Hidden width.
        dropout: Dropout on the output.
    """

    def __init__(self, *, d_model: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, ffn_dim)
        self.act = nn.GELU()
        self.fc_out = nn.Linear(ffn_dim, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.drop(self.fc_out(self.act(self.fc_in(hidden_states))))


class Block(nn.Module):
    """One layer: ``h + attn(ln(h))``, then ``loops`` extra passes of the looped heads
    through the same projections (SGT), then ``h + mlp(ln(h))``; all of it run
    ``1 + block_loops`` times.

    During a loop's soft start (``fade``) the loop passes run every head, the heads outside
    ``looped_heads`` weighted by ``loop_fade_level``; afterwards they compute only the
    looped heads' projection rows (and, with grouped keys and values, those of the
    key/value heads they use), so their cost follows the looped head count.

    While a head fades out before its removal (``head_fade``), its output in the first
    attention pass is weighted by ``head_fade_level``. ``ablated`` (a head index, or None)
    switches one head's output off there: a measurement of what the head contributes.
    ``logit_probe`` (None, or set by :mod:`growformer.statistics` for a measurement) is
    given the first attention pass's normalised input and returns a bias added to its
    logits.

    Args:
        d_model: Width of the residual stream.
        spec: The layer's shape.
        dropout: Dropout probability.
    """

    def __init__(self, *, d_model: int, spec: LayerSpec, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = ElasticAttention(
            d_model=d_model,
            heads=spec.heads,
            head_dim=spec.head_dim,
            dropout=dropout,
            kv_heads=spec.kv_heads,
        )
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model=d_model, ffn_dim=spec.ffn_dim, dropout=dropout)
        self.block_loops = spec.block_loops
        self.fade: LoopFade | None = None
        self.set_loops(spec.loops, spec.looped_heads, spec.fade)
        self.head_fade: HeadFade | None = None
        self.set_head_fade(spec.head_fade)
        self.ablated: int | None = None
        self.logit_probe: Callable[[Tensor], Tensor] | None = None

    def set_loops(
        self, loops: int, looped_heads: tuple[int, ...], fade: LoopFade | None = None
    ) -> None:
        """Set the looped passes; called by construction and by surgery only.

        A new ``fade`` starts at level 1; the same fade as before keeps its level (the
        head count or loop depth changed during it). The level is a persistent buffer, so
        a checkpoint taken during a fade restores the exact function.
        """
        continuing = fade is not None and fade == self.fade
        self.loops = loops
        self.looped_heads = tuple(looped_heads)
        self.fade = fade
        weight = self.attn.q_proj.weight
        rows, kv_rows, kv_index = self.attn.subset_rows(self.looped_heads)
        self.register_buffer("loop_rows", rows.to(weight.device), persistent=False)
        self.register_buffer("loop_kv_rows", kv_rows.to(weight.device), persistent=False)
        self.register_buffer(
            "loop_kv_index",
            None if kv_index is None else kv_index.to(weight.device),
            persistent=False,
        )
        if fade is None:
            self.register_buffer("loop_kept", None, persistent=False)
            self.register_buffer("loop_fade_level", None)
            return
        kept = torch.zeros(self.attn.heads, dtype=weight.dtype, device=weight.device)
        kept[list(self.looped_heads)] = 1.0
        self.register_buffer("loop_kept", kept, persistent=False)
        if not continuing:
            self.register_buffer(
                "loop_fade_level", torch.ones((), dtype=weight.dtype, device=weight.device)
            )

    def set_head_fade(self, fade: HeadFade | None) -> None:
        """Start, keep or end a head's fade-out; called by construction and by surgery only.

        As with loops, the same fade as before keeps its level (a persistent buffer), also
        when the head's index moved (a lower head was removed).
        """
        old = self.head_fade
        continuing = fade is not None and old is not None and fade.end == old.end
        self.head_fade = fade
        if fade is None:
            self.register_buffer("head_fade_level", None)
        elif not continuing:
            weight = self.attn.q_proj.weight
            self.register_buffer(
                "head_fade_level", torch.ones((), dtype=weight.dtype, device=weight.device)
            )

    def _head_weights(self) -> Tensor | None:
        """Factors on each head's output in the first attention pass (None: all 1)."""
        if self.head_fade is None and self.ablated is None:
            return None
        weight = self.attn.q_proj.weight
        weights = torch.ones(self.attn.heads, dtype=weight.dtype, device=weight.device)
        if self.head_fade is not None:
            weights[self.head_fade.head] = self.head_fade_level
        if self.ablated is not None:
            weights[self.ablated] = 0.0
        return weights

    @property
    def spec(self) -> LayerSpec:
        """The layer's shape, read off its modules."""
        return LayerSpec(
            heads=self.attn.heads,
            head_dim=self.attn.head_dim,
            ffn_dim=self.mlp.fc_in.out_features,
            loops=self.loops,
            looped_heads=self.looped_heads,
            block_loops=self.block_loops,
            fade=self.fade,
            head_fade=self.head_fade,
            kv_heads=self.attn.kv_heads if self.attn.grouped else None,
        )

    def forward(
        self,
        hidden_states: Tensor,
        attn_mask: Tensor | None,
        is_causal: bool,
        cache: KVCache | None = None,
    ) -> Tensor:
        h = hidden_states
        for i in range(1 + self.block_loops):
            h = self._pass(h, attn_mask, is_causal, cache, first=i == 0)
        return h

    def _pass(
        self,
        h: Tensor,
        attn_mask: Tensor | None,
        is_causal: bool,
        cache: KVCache | None,
        first: bool,
    ) -> Tensor:
        if self.attn.heads:
            x = self.ln_1(h)
            probe = self.logit_probe if first else None
            h = h + self.attn(
                x,
                attn_mask,
                is_causal,
                head_weights=self._head_weights(),
                cache=cache,
                logit_bias=None if probe is None else probe(x),
            )
            rows, kv_rows, kv_index = self.loop_rows, self.loop_kv_rows, self.loop_kv_index
            weights = None
            if self.fade is not None:
                rows = kv_rows = kv_index = None
                weights = self.loop_kept + (1 - self.loop_kept) * self.loop_fade_level
            for _ in range(self.loops):
                h = h + self.attn(
                    self.ln_1(h),
                    attn_mask,
                    is_causal,
                    rows=rows,
                    head_weights=weights,
                    cache=cache,
                    kv_rows=kv_rows,
                    kv_index=kv_index,
                )
        return h + self.mlp(self.ln_2(h))
