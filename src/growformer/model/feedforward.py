"""The feed-forward sublayers and normalisations of the supported block families."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """Two-layer feed-forward sublayer: ``fc_out(act(fc_in(x)))``.

    Args:
        d_model: Width of the residual stream.
        ffn_dim: Hidden width.
        dropout: Dropout on the output.
        approximate: GELU's ``"none"`` (exact, BERT) or ``"tanh"`` (GPT-2) form.
        bias: Biases on both projections.
    """

    def __init__(
        self,
        *,
        d_model: int,
        ffn_dim: int,
        dropout: float = 0.0,
        approximate: str = "none",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, ffn_dim, bias=bias)
        self.act = nn.GELU(approximate=approximate)
        self.fc_out = nn.Linear(ffn_dim, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    @property
    def ffn_dim(self) -> int:
        return self.fc_in.out_features

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.drop(self.fc_out(self.act(self.fc_in(hidden_states))))


class GatedMLP(MLP):
    """SwiGLU feed-forward sublayer (Llama): ``fc_out(silu(gate(x)) * fc_in(x))``.

    Args:
        d_model: Width of the residual stream.
        ffn_dim: Hidden width.
        dropout: Dropout on the output.
        bias: Biases on the three projections.
    """

    def __init__(
        self, *, d_model: int, ffn_dim: int, dropout: float = 0.0, bias: bool = False
    ) -> None:
        super().__init__(d_model=d_model, ffn_dim=ffn_dim, dropout=dropout, bias=bias)
        self.gate = nn.Linear(d_model, ffn_dim, bias=bias)
        self.act = nn.SiLU()

    def forward(self, hidden_states: Tensor) -> Tensor:
        gated = self.act(self.gate(hidden_states)) * self.fc_in(hidden_states)
        return self.drop(self.fc_out(gated))


def feed_forward(
    kind: str, *, d_model: int, ffn_dim: int, dropout: float, bias: bool
) -> MLP | GatedMLP:
    """The feed-forward sublayer ``kind`` (an ``Architecture.mlp`` value)."""
    if kind == "swiglu":
        return GatedMLP(d_model=d_model, ffn_dim=ffn_dim, dropout=dropout, bias=bias)
    approximate = {"gelu": "none", "gelu_tanh": "tanh"}[kind]
    return MLP(
        d_model=d_model, ffn_dim=ffn_dim, dropout=dropout, approximate=approximate, bias=bias
    )


def norm(kind: str, d_model: int, eps: float) -> nn.LayerNorm | nn.RMSNorm:
    """The normalisation ``kind`` (an ``Architecture.norm`` value) over ``d_model``."""
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=eps)
    return nn.LayerNorm(d_model, eps=eps)
