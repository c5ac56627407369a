"""Pre-norm transformer block: attention (with optional looped passes) and feed-forward."""

from __future__ import annotations

from torch import Tensor, nn

from growformer.arch import LayerSpec
from growformer.model.attention import ElasticAttention, head_rows


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
    through the same projections (SGT), then ``h + mlp(ln(h))``.

    Args:
        d_model: Width of the residual stream.
        spec: The layer's shape.
        dropout: Dropout probability.
    """

    def __init__(self, *, d_model: int, spec: LayerSpec, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = ElasticAttention(
            d_model=d_model, heads=spec.heads, head_dim=spec.head_dim, dropout=dropout
        )
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model=d_model, ffn_dim=spec.ffn_dim, dropout=dropout)
        self.set_loops(spec.loops, spec.looped_heads)

    def set_loops(self, loops: int, looped_heads: tuple[int, ...]) -> None:
        """Set the looped passes; called by construction and by surgery only."""
        self.loops = loops
        self.looped_heads = tuple(looped_heads)
        device = self.attn.q_proj.weight.device
        self.register_buffer(
            "loop_rows",
            head_rows(self.looped_heads, self.attn.head_dim).to(device),
            persistent=False,
        )

    @property
    def spec(self) -> LayerSpec:
        """The layer's shape, read off its modules."""
        return LayerSpec(
            heads=self.attn.heads,
            head_dim=self.attn.head_dim,
            ffn_dim=self.mlp.fc_in.out_features,
            loops=self.loops,
            looped_heads=self.looped_heads,
        )

    def forward(self, hidden_states: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        h = hidden_states
        if self.attn.heads:
            h = h + self.attn(self.ln_1(h), attn_mask, is_causal)
            for _ in range(self.loops):
                h = h + self.attn(self.ln_1(h), attn_mask, is_causal, rows=self.loop_rows)
        return h + self.mlp(self.ln_2(h))
