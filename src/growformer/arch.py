"""Structure as data: what every layer of an elastic transformer looks like.

An :class:`Architecture` is the single source of truth for a model's shape. Models are
built from it, surgery edits it together with the parameters, and checkpoints store it
as JSON next to the weights.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from growformer.errors import ArchitectureError
from growformer.validation import is_int, key_list

KINDS = ("classifier", "causal_lm")
FADES = ("linear", "cosine", "exponential")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
MLPS = ("gelu", "gelu_tanh", "swiglu")
POSITIONS = ("learned", "rotary", "none")
# Decay rate of the "exponential" fade, rescaled to end at exactly 0: the level is at
# about 8% of its start halfway through.
_EXP_RATE = 5.0


@dataclass(frozen=True)
class LoopFade:
    """Soft start of a layer's loops (SGT): while it lasts, the loop passes run every head,
    the heads outside ``looped_heads`` weighted by a level that falls from 1 to 0.

    Args:
        start: Optimizer steps done when the fade began (the forward pass of that step
            index runs at level 1).
        steps: Length of the fade in optimizer steps.
        shape: ``"linear"``, ``"cosine"`` or ``"exponential"`` fall of the level.
    """

    start: int
    steps: int
    shape: str = "linear"

    @property
    def end(self) -> int:
        """Step index from which only the looped heads run."""
        return self.start + self.steps

    def level(self, step: int) -> float:
        """Weight of the non-looped heads in the forward pass of step index ``step``."""
        p = min(1.0, max(0.0, (step - self.start) / self.steps))
        if self.shape == "linear":
            return 1.0 - p
        if self.shape == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * p))
        floor = math.exp(-_EXP_RATE)
        return (math.exp(-_EXP_RATE * p) - floor) / (1.0 - floor)


@dataclass(frozen=True)
class HeadFade(LoopFade):
    """A head fading out before its removal (INCRT's pruning): while it lasts, the head's
    output in the layer's first attention pass is weighted by a level that falls from 1
    to 0; at its end surgery removes the head, which then changes nothing.

    Args:
        start: Optimizer steps done when the fade began.
        steps: Length of the fade in optimizer steps.
        shape: ``"linear"``, ``"cosine"`` or ``"exponential"`` fall of the level.
        head: The head fading out.
    """

    head: int = 0


@dataclass(frozen=True)
class LayerSpec:
    """Shape of one transformer layer.

    Args:
        heads: Number of attention heads (0 means the attention sublayer is skipped).
        head_dim: Width of every head's queries, keys and values.
        ffn_dim: Hidden width of the feed-forward sublayer.
        loops: Extra attention passes (SGT); each re-runs only ``looped_heads``.
        looped_heads: Indices of the heads that the extra passes re-run.
        block_loops: Extra passes of the whole layer (attention with its loops, then the
            feed-forward), the static block-looping baseline.
        fade: Soft start of the loops in progress, or None (see :class:`LoopFade`).
        head_fade: A head fading out before its removal, or None (see :class:`HeadFade`).
        kv_heads: Number of key/value heads, shared by consecutive query heads (grouped
            keys and values): query head ``h`` uses key/value head ``h // group_size``.
            None gives every query head its own. Grouped layers keep their head count
            (surgery neither adds nor removes their heads).
    """

    heads: int
    head_dim: int
    ffn_dim: int
    loops: int = 0
    looped_heads: tuple[int, ...] = field(default_factory=tuple)
    block_loops: int = 0
    fade: LoopFade | None = None
    head_fade: HeadFade | None = None
    kv_heads: int | None = None

    @property
    def attn_dim(self) -> int:
        """Total width of the concatenated heads."""
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Total width of the keys (and of the values)."""
        return (self.heads if self.kv_heads is None else self.kv_heads) * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouping)."""
        return 1 if self.kv_heads is None else self.heads // self.kv_heads


@dataclass(frozen=True)
class Architecture:
    """Whole-model structure.

    Args:
        kind: ``"classifier"`` (bidirectional encoder, [CLS] pooling) or ``"causal_lm"``.
        d_model: Width of the residual stream.
        vocab_size: Number of token ids.
        max_len: Longest sequence the position embedding covers.
        layers: One :class:`LayerSpec` per layer, input side first.
        num_labels: Number of classes (classifier only).
        dropout: Dropout probability on embeddings, attention output and feed-forward.
        embed_rank: Width of a factored token embedding (a ``vocab_size x embed_rank``
            table times an ``embed_rank x d_model`` projection); None: one
            ``vocab_size x d_model`` table.
        norm: ``"layernorm"`` or ``"rmsnorm"`` (no mean subtraction, no bias: Llama).
        norm_eps: The normalisations' epsilon.
        norm_position: ``"pre"`` (GPT-2, Llama: ``h + f(norm(h))``, a final norm after
            the last layer) or ``"post"`` (BERT: ``norm(h + f(h))``, the embeddings
            normalised, no final norm).
        mlp: Feed-forward sublayer: ``"gelu"`` (exact GELU, BERT), ``"gelu_tanh"`` (its
            tanh approximation, GPT-2) or ``"swiglu"`` (``down(silu(gate(x)) * up(x))``,
            Llama).
        positions: ``"learned"`` (a position table), ``"rotary"`` (RoPE applied to each
            head's queries and keys, rotate-half layout; heads stay independent, so they
            can still be added, removed and looped) or ``"none"``.
        rope_theta: Base of the rotary frequencies.
        attn_bias: Biases on the query, key, value and output projections.
        mlp_bias: Biases on the feed-forward projections.
        type_vocab_size: Token-type (segment) embeddings, added to the token embeddings
            (BERT); 0: none.
        pooler: Classifier only: a tanh dense layer on [CLS] before the classifier (BERT).
    """

    kind: str
    d_model: int
    vocab_size: int
    max_len: int
    layers: tuple[LayerSpec, ...]
    num_labels: int | None = None
    dropout: float = 0.0
    embed_rank: int | None = None
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"
    mlp: str = "gelu"
    positions: str = "learned"
    rope_theta: float = 10000.0
    attn_bias: bool = False
    mlp_bias: bool = True
    type_vocab_size: int = 0
    pooler: bool = False

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def uniform(
        cls,
        *,
        kind: str,
        d_model: int,
        vocab_size: int,
        max_len: int,
        n_layers: int,
        heads: int,
        head_dim: int,
        ffn_dim: int,
        num_labels: int | None = None,
        dropout: float = 0.0,
    ) -> Architecture:
        """Same layer shape everywhere."""
        layer = LayerSpec(heads=heads, head_dim=head_dim, ffn_dim=ffn_dim)
        return cls(
            kind=kind,
            d_model=d_model,
            vocab_size=vocab_size,
            max_len=max_len,
            layers=(layer,) * n_layers,
            num_labels=num_labels,
            dropout=dropout,
        )

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def with_layer(self, index: int, **changes: Any) -> Architecture:
        """A copy with layer ``index`` changed (validated)."""
        layers = list(self.layers)
        layers[index] = replace(layers[index], **changes)
        return replace(self, layers=tuple(layers))

    def validate(self) -> None:
        """Raise :class:`ArchitectureError` naming the first invalid field."""
        if self.kind not in KINDS:
            raise ArchitectureError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("d_model", "vocab_size", "max_len"):
            _positive_int(name, getattr(self, name))
        if self.kind == "classifier":
            _positive_int("num_labels", self.num_labels)
            if self.num_labels < 2:
                raise ArchitectureError(f"num_labels must be >= 2, got {self.num_labels}")
        elif self.num_labels is not None:
            raise ArchitectureError("num_labels is only allowed for kind 'classifier'")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ArchitectureError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.embed_rank is not None:
            _positive_int("embed_rank", self.embed_rank)
        self._validate_family()
        if not self.layers:
            raise ArchitectureError("an architecture needs at least one layer")
        for i, layer in enumerate(self.layers):
            _validate_layer(i, layer)

    def _validate_family(self) -> None:
        for name, allowed in (
            ("norm", NORMS),
            ("norm_position", NORM_POSITIONS),
            ("mlp", MLPS),
            ("positions", POSITIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ArchitectureError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ArchitectureError(f"{name} must be a positive number, got {value!r}")
        for name in ("attn_bias", "mlp_bias", "pooler"):
            if not isinstance(getattr(self, name), bool):
                raise ArchitectureError(
                    f"{name} must be true or false, got {getattr(self, name)!r}"
                )
        if not is_int(self.type_vocab_size) or self.type_vocab_size < 0:
            raise ArchitectureError(
                f"type_vocab_size must be an integer >= 0, got {self.type_vocab_size!r}"
            )
        if self.pooler and self.kind != "classifier":
            raise ArchitectureError("pooler is only allowed for kind 'classifier'")
        if self.positions == "rotary":
            odd = sorted({layer.head_dim for layer in self.layers if layer.head_dim % 2})
            if odd:
                raise ArchitectureError(
                    f"rotary positions need even head widths, got head_dim {odd[0]}"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``embed_rank``, the block-family fields, ``block_loops``, fades
        and ``kv_heads`` only where they differ from the default, so files of models
        without them read as before."""
        d = asdict(self)
        if d["embed_rank"] is None:
            del d["embed_rank"]
        for f in fields(self):
            if f.name in FAMILY_FIELDS and d[f.name] == f.default:
                del d[f.name]
        layers = []
        for layer in d["layers"]:
            layer["looped_heads"] = list(layer["looped_heads"])
            if not layer["block_loops"]:
                del layer["block_loops"]
            for name in ("fade", "head_fade"):
                if layer[name] is None:
                    del layer[name]
            if layer["kv_heads"] is None:
                del layer["kv_heads"]
            layers.append(layer)
        d["layers"] = layers
        return d

    @classmethod
    def from_dict(cls, d: Any) -> Architecture:
        """Build from a dict as written by :meth:`to_dict`, with clear errors."""
        if not isinstance(d, dict):
            raise ArchitectureError(f"architecture must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        _no_unknown_keys("architecture", d, known)
        missing = sorted({"kind", "d_model", "vocab_size", "max_len", "layers"} - d.keys())
        if missing:
            raise ArchitectureError(f"architecture is missing {', '.join(missing)}")
        if not isinstance(d["layers"], list):
            raise ArchitectureError("architecture 'layers' must be a list of layer objects")
        layers = tuple(layer_from_dict(i, layer) for i, layer in enumerate(d["layers"]))
        return cls(**{**d, "layers": layers})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        try:
            d = json.loads(text)
        except ValueError as e:  # JSONDecodeError, or an integer beyond the 4300-digit limit
            raise ArchitectureError(f"architecture is not valid JSON: {e}") from None
        except RecursionError:
            raise ArchitectureError("architecture JSON is nested too deeply") from None
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Architecture:
        p = Path(path)
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ArchitectureError(f"cannot read architecture file {p}: {e}") from None
        try:
            return cls.from_json(text)
        except ArchitectureError as e:
            raise ArchitectureError(f"{p}: {e}") from None


FAMILY_FIELDS = (
    "norm",
    "norm_eps",
    "norm_position",
    "mlp",
    "positions",
    "rope_theta",
    "attn_bias",
    "mlp_bias",
    "type_vocab_size",
    "pooler",
)
"""The fields of :class:`Architecture` that choose a model family's block design (the
defaults: growformer's own GPT-2-style block)."""


def layer_from_dict(i: int, layer: Any) -> LayerSpec:
    """Layer ``i`` from a dict as written by :meth:`Architecture.to_dict` (not validated
    against the other fields until it is part of an :class:`Architecture`)."""
    if not isinstance(layer, dict):
        raise ArchitectureError(f"layer {i} must be an object")
    _no_unknown_keys(f"layer {i}", layer, {f.name for f in fields(LayerSpec)})
    missing = sorted({"heads", "head_dim", "ffn_dim"} - layer.keys())
    if missing:
        raise ArchitectureError(f"layer {i} is missing {', '.join(missing)}")
    looped = layer.get("looped_heads", [])
    if not isinstance(looped, list):
        raise ArchitectureError(f"layer {i}: looped_heads must be a list of head indices")
    fades = {
        name: _fade_from_dict(i, name, layer.get(name), kind)
        for name, kind in (("fade", LoopFade), ("head_fade", HeadFade))
    }
    return LayerSpec(**{**layer, "looped_heads": tuple(looped), **fades})


def _fade_from_dict(i: int, name: str, fade: Any, kind: type[LoopFade]) -> LoopFade | None:
    if fade is None:
        return None
    if not isinstance(fade, dict):
        raise ArchitectureError(f"layer {i}: {name} must be an object or null")
    _no_unknown_keys(f"layer {i} {name}", fade, {f.name for f in fields(kind)})
    required = {f.name for f in fields(kind)} - {"shape"}
    missing = sorted(required - fade.keys())
    if missing:
        raise ArchitectureError(f"layer {i} {name} is missing {', '.join(missing)}")
    return kind(**fade)


def _positive_int(name: str, value: Any) -> None:
    if not is_int(value) or value <= 0:
        raise ArchitectureError(f"{name} must be a positive integer, got {value!r}")


def _no_unknown_keys(where: str, d: dict, known: set[str]) -> None:
    unknown = sorted(d.keys() - known)
    if unknown:
        raise ArchitectureError(
            f"{where} has unknown field(s) {key_list(unknown)} (known: {key_list(known)})"
        )


def _validate_layer(i: int, layer: LayerSpec) -> None:
    for name in ("heads", "loops", "block_loops"):
        value = getattr(layer, name)
        if not is_int(value) or value < 0:
            raise ArchitectureError(f"layer {i}: {name} must be an integer >= 0, got {value!r}")
    for name in ("head_dim", "ffn_dim"):
        value = getattr(layer, name)
        if not is_int(value) or value <= 0:
            raise ArchitectureError(f"layer {i}: {name} must be a positive integer, got {value!r}")
    looped = layer.looped_heads
    for h in looped:
        if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < layer.heads:
            raise ArchitectureError(
                f"layer {i}: looped head {h!r} is out of range (layer has {layer.heads} heads)"
            )
    if len(set(looped)) != len(looped):
        raise ArchitectureError(f"layer {i}: looped_heads has duplicates {list(looped)}")
    if layer.loops > 0 and not looped:
        raise ArchitectureError(f"layer {i}: loops={layer.loops} needs at least one looped head")
    if layer.loops == 0 and looped:
        raise ArchitectureError(f"layer {i}: looped_heads given but loops is 0")
    _validate_kv_heads(i, layer)
    if layer.fade is not None:
        if layer.loops == 0:
            raise ArchitectureError(f"layer {i}: a fade needs loops > 0")
        _validate_fade(i, "fade", layer.fade, LoopFade)
    if layer.head_fade is not None:
        _validate_fade(i, "head_fade", layer.head_fade, HeadFade)
        head = layer.head_fade.head
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < layer.heads:
            raise ArchitectureError(
                f"layer {i}: head_fade head {head!r} is out of range (layer has "
                f"{layer.heads} heads)"
            )


def _validate_fade(i: int, name: str, fade: Any, kind: type[LoopFade]) -> None:
    if type(fade) is not kind:
        raise ArchitectureError(f"layer {i}: {name} must be a {kind.__name__}, got {fade!r}")
    for field_name, low in (("start", 0), ("steps", 1)):
        value = getattr(fade, field_name)
        if not is_int(value) or value < low:
            raise ArchitectureError(
                f"layer {i}: {name} {field_name} must be an integer >= {low}, got {value!r}"
            )
    if fade.shape not in FADES:
        raise ArchitectureError(
            f"layer {i}: {name} shape must be one of {', '.join(FADES)}, got {fade.shape!r}"
        )


def _validate_kv_heads(i: int, layer: LayerSpec) -> None:
    kv = layer.kv_heads
    if kv is None:
        return
    if isinstance(kv, bool) or not isinstance(kv, int) or kv < 1:
        raise ArchitectureError(f"layer {i}: kv_heads must be None or an integer >= 1, got {kv!r}")
    if kv > layer.heads:
        raise ArchitectureError(f"layer {i}: kv_heads={kv} exceeds heads={layer.heads}")
    if layer.heads % kv:
        raise ArchitectureError(
            f"layer {i}: heads={layer.heads} is not a multiple of kv_heads={kv} "
            "(every key/value head serves the same number of query heads)"
        )
