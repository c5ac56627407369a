"""Statistics a structure policy decides from, computed from the model and its batches.

This is the one place that reads model tensors on a policy's behalf: policies receive
the results (plain tensors detached from the model) and never see the model itself.

A policy names what it needs (:data:`STATISTICS`): ``"moments"`` (INCRT: per layer a
:class:`LayerStats`), ``"entropy"`` (SGT: per layer a (heads,) tensor of normalised
attention entropies of one query row per sequence), ``"entropy_all"`` (the same,
averaged over every valid query row) or ``"contribution"`` (INCRT's pruning: per layer a
(heads,) tensor of the relative change of the step's loss with each head switched off)
or ``"demand"`` (INCRT's demand gate: per layer a :class:`Demand`, what the step's loss
asks of the heads' query-key forms). :func:`capture` records the first three during the
training forward pass, the demand during its forward and backward passes; the
contributions take one more forward pass per head after the step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from growformer.fsdp import full
from growformer.model import Block, ElasticModel, split_heads
from growformer.model.rotary import rotary_angles

MOMENTS = "moments"
ENTROPY = "entropy"
ENTROPY_ALL = "entropy_all"
CONTRIBUTION = "contribution"
DEMAND = "demand"
STATISTICS = (MOMENTS, ENTROPY, ENTROPY_ALL, CONTRIBUTION, DEMAND)


@dataclass
class LayerStats:
    """What the INCRT gate needs of one layer.

    Args:
        cov: (d, d) second moment ``X^T X / n`` of the layer's attention input (after
            its pre-norm), over real tokens only.
        forms: (heads, d, d) antisymmetric part of each head's query-key form
            ``M^h = W_Q^h (W_K^h)^T`` (``W_K^h`` the key weights of the head's group
            where keys are grouped).
        tokens: Number of tokens ``cov`` was taken over.
    """

    cov: Tensor
    forms: Tensor
    tokens: int


class InputCapture:
    """Accumulates every layer's attention-input second moment over forward passes."""

    def __init__(self, n_layers: int) -> None:
        self.sums: list[Tensor | None] = [None] * n_layers
        self.tokens = [0] * n_layers

    def add(self, layer: int, x: Tensor, mask: Tensor | None) -> None:
        x = x.detach().to(torch.float64)
        x = x.reshape(-1, x.shape[-1]) if mask is None else x[mask.bool()]
        s = x.T @ x
        self.sums[layer] = s if self.sums[layer] is None else self.sums[layer] + s
        self.tokens[layer] += x.shape[0]

    def reduce(self, sum_: Callable[[list[Tensor]], None]) -> None:
        """Add the other processes' sums and counts (see :meth:`Capture.reduce`)."""
        self.tokens = _reduce(self.sums, self.tokens, sum_)

    def covariances(self) -> list[Tensor]:
        return [s / max(n, 1) for s, n in zip(self.sums, self.tokens, strict=True)]


@contextlib.contextmanager
def capture_inputs(
    model: ElasticModel, attention_mask: Tensor | None, capture: InputCapture | None = None
) -> Iterator[InputCapture]:
    """Record each layer's normalised attention input during the forward passes inside.

    Only the layer's first attention pass counts: the hook sits on the block and applies
    its pre-norm itself, because loop passes and block loops call the pre-norm again on
    streams the gate does not describe.

    Args:
        model: The model whose layers to watch.
        attention_mask: (batch, seq) True for real tokens (None: all real).
        capture: Accumulate into this capture (several batches); a new one by default.
    """
    layers = model.transformer.layers
    capture = capture or InputCapture(len(layers))

    def hook(i: int, block: Block, hidden_states: Tensor) -> None:
        with torch.no_grad():
            capture.add(i, block.attn_input(hidden_states), attention_mask)

    handles = [
        block.register_forward_pre_hook(lambda module, args, i=i: hook(i, module, args[0]))
        for i, block in enumerate(layers)
    ]
    try:
        yield capture
    finally:
        for h in handles:
            h.remove()


@dataclass
class Demand:
    """What the loss asks of one layer's query-key forms.

    The loss's gradient on head h's form (logits ``X M^h X^T / sqrt(head_dim)``) is
    ``G_h = X^T (dL/dlogits_h) X / sqrt(head_dim)``. Its *normal* part
    ``(I - P_q) G_h (I - P_k)``, with ``P_q``, ``P_k`` the projections on the spans of the
    head's query and key maps, is the part no change of those maps can follow: demand
    that needs a new head. Energies are taken between the gradients of the two halves of
    the batch (even and odd sequences), ``<G_a, G_b>_F``, an estimate of ``||E G||_F^2``
    free of the batch noise (it can be negative when there is no signal).

    Args:
        normal: (heads,) signal energy of each head's normal part.
        query: (d,) query direction of the strongest normal demand (the top singular
            pair of the mean normal part, summed over heads).
        key: (d,) its key direction.
    """

    normal: Tensor
    query: Tensor
    key: Tensor


class DemandCapture:
    """Puts a zero bias on each layer's first-pass attention logits during the forward
    passes; after their backward, the bias's gradient gives :class:`Demand`."""

    def __init__(self, n_layers: int) -> None:
        self.pending: list[list[tuple[Tensor, Tensor]]] = [[] for _ in range(n_layers)]
        self.sums: list[Tensor | None] = [None] * n_layers  # (2, heads, d, d) per layer
        self.processes = [0] * n_layers

    def probe(self, layer: int, block: Block) -> Callable[[Tensor], Tensor]:
        """The block's ``logit_probe`` for ``layer``."""

        def bias(x: Tensor) -> Tensor:
            b, t, _ = x.shape
            shape = (b, block.attn.heads, t, t)
            zero = torch.zeros(shape, dtype=x.dtype, device=x.device, requires_grad=True)
            self.pending[layer].append((x.detach(), zero))
            return zero

        return bias

    def _collect(self) -> None:
        """Turn the recorded passes whose backward has run into gradient sums."""
        for layer, passes in enumerate(self.pending):
            for x, bias in passes:
                if bias.grad is None:
                    continue  # no backward through this pass (e.g. a probe under no_grad)
                # In the activations' precision (at least float32): this product is the
                # statistic's main cost.
                dtype = torch.promote_types(x.dtype, torch.float32)
                x, g = x.to(dtype), bias.grad.to(dtype)
                halves = torch.stack(
                    [
                        torch.einsum("bti,bhts,bsj->hij", x[half::2], g[half::2], x[half::2])
                        for half in (0, 1)
                    ]
                )
                # Each half of the batch estimates the whole batch's (mean) gradient.
                s = halves * 2
                self.sums[layer] = s if self.sums[layer] is None else self.sums[layer] + s
                self.processes[layer] = 1
            passes.clear()

    def reduce(self, sum_: Callable[[list[Tensor]], None]) -> None:
        """Add the other processes' sums (see :meth:`Capture.reduce`)."""
        self._collect()
        self.processes = _reduce(self.sums, self.processes, sum_)

    def demands(self, model: ElasticModel) -> list[Demand | None]:
        """Per layer, the demand on the model's current forms (None: no backward ran)."""
        self._collect()
        out: list[Demand | None] = []
        for layer, (s, n) in enumerate(zip(self.sums, self.processes, strict=True)):
            if s is None or s.shape[1] != model.transformer.layers[layer].attn.heads:
                out.append(None)
                continue
            out.append(_demand(model, layer, s / max(n, 1)))
        return out


def _span(w: Tensor) -> Tensor:
    """(heads, d, head_dim) orthonormal bases of each (head_dim, d) row span."""
    return torch.linalg.qr(w.transpose(1, 2)).Q


@torch.no_grad()
def _demand(model: ElasticModel, layer: int, halves: Tensor) -> Demand:
    attn = model.transformer.layers[layer].attn
    h, hd = attn.heads, attn.head_dim
    g = halves.to(attn.q_proj.weight.device, torch.float64) / math.sqrt(hd)
    u = _span(full(attn.q_proj.weight).detach().to(torch.float64).view(h, hd, -1))
    v = _span(keys_per_head(full(attn.k_proj.weight).detach().to(torch.float64), h, hd))
    # (I - U U^T) G (I - V V^T), without forming the d x d projections.
    g = g - u @ (u.transpose(1, 2) @ g)
    normal = g - (g @ v) @ v.transpose(1, 2)
    query, key = _top_pair(normal.mean(0).sum(0))
    return Demand(
        normal=(normal[0] * normal[1]).sum((-1, -2)).cpu(),
        query=query.cpu(),
        key=key.cpu(),
    )


def _top_pair(m: Tensor, iterations: int = 30) -> tuple[Tensor, Tensor]:
    """The top singular pair (left, right) of ``m``, by power iteration from its largest
    row (deterministic; a full SVD costs more than the rest of the statistic)."""
    right = m[m.norm(dim=1).argmax()]
    for _ in range(iterations):
        right = m.T @ (m @ right)
        right = right / right.norm().clamp_min(1e-300)
    left = m @ right
    return left / left.norm().clamp_min(1e-300), right


@torch.no_grad()
def query_key_forms(model: ElasticModel, layer: int) -> Tensor:
    """(heads, d, d) antisymmetric parts of the layer's per-head query-key forms."""
    attn = model.transformer.layers[layer].attn
    h, hd = attn.heads, attn.head_dim
    wq = full(attn.q_proj.weight).detach().to(torch.float64).view(h, hd, -1)
    wk = keys_per_head(full(attn.k_proj.weight).detach().to(torch.float64), h, hd)
    # Scores are z_i^T (W_q^T W_k) z_j with PyTorch's (out, in) weight layout.
    m = wq.transpose(1, 2) @ wk
    return (m - m.transpose(1, 2)) / 2


def layer_stats(model: ElasticModel, capture: InputCapture) -> list[LayerStats]:
    """Combine captured input moments with the model's current query-key forms."""
    covs = capture.covariances()
    return [
        LayerStats(
            cov=covs[i].cpu(), forms=query_key_forms(model, i).cpu(), tokens=capture.tokens[i]
        )
        for i in range(len(covs))
    ]


def keys_per_head(wk: Tensor, heads: int, head_dim: int) -> Tensor:
    """Each query head's key weights, shared ones repeated for every head of their group.

    Args:
        wk: (kv_heads * head_dim, d_model) key projection; query head ``h`` uses key head
            ``h // (heads // kv_heads)``.
        heads: Number of query heads.
        head_dim: Width of each head.

    Returns:
        (heads, head_dim, d_model) key weights.
    """
    wk = split_heads(wk, head_dim)
    kv_heads = wk.shape[0]
    return wk if kv_heads == heads else wk.repeat_interleave(heads // kv_heads, 0)


@torch.no_grad()
def attention_entropy(
    z: Tensor,
    wq: Tensor,
    wk: Tensor,
    head_dim: int,
    key_mask: Tensor | None = None,
    *,
    causal: bool,
    all_rows: bool = False,
    qk: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Per sequence and head, the Shannon entropy of attention rows over log(valid keys).

    The row is the last real position (causal) or the first, [CLS], position (encoder),
    or, with ``all_rows``, every real position, averaged. Valid keys are the real
    positions (causal: up to the query); a row with one valid key has entropy 0.

    Args:
        z: (batch, seq, d_model) the layer's normalised attention input.
        wq: (heads * head_dim, d_model) query projection.
        wk: (kv_heads * head_dim, d_model) key projection (see :func:`keys_per_head`).
        head_dim: Width of each head.
        key_mask: (batch, seq) True for real tokens (None: all real).
        causal: Whether queries see only earlier keys.
        all_rows: Average over every real query row instead of one.
        qk: The layer's (batch, heads, seq, head_dim) queries and keys (keys repeated per
            query head) where the logits are not ``z wq^T wk z^T`` alone (projection
            biases, rotary positions): the scores are taken from them.

    Returns:
        (batch, heads) normalised entropies in [0, 1].
    """
    z = z.float()
    b, t, d = z.shape
    heads = wq.shape[0] // head_dim
    wq = wq.float().view(heads, head_dim, d)
    wk = keys_per_head(wk.float(), heads, head_dim)
    real = torch.ones(b, t, dtype=torch.bool, device=z.device) if key_mask is None else key_mask
    real = real.bool()
    pos = torch.arange(t, device=z.device)
    scale = 1 / math.sqrt(head_dim)
    if all_rows:
        if qk is None:
            qk = (torch.einsum("btd,hed->bhte", z, wq), torch.einsum("btd,hed->bhte", z, wk))
        scores = qk[0].float() @ qk[1].float().transpose(-1, -2) * scale  # (b, h, query, key)
        keys = real[:, None, None, :]
        if causal:
            keys = keys & (pos[None, :] <= pos[:, None])
    else:
        row = (pos * real).argmax(-1) if causal else torch.zeros_like(real[:, 0], dtype=torch.long)
        batch = torch.arange(b, device=z.device)
        if qk is None:
            # One query row: fold its query into the key projection, so the scores cost
            # seq * d_model per head instead of projecting every key.
            q = torch.einsum("bd,hed->bhe", z[batch, row], wq)
            u = torch.einsum("bhe,hed->bhd", q, wk)
            scores = torch.einsum("btd,bhd->bht", z, u)[:, :, None, :] * scale  # (b, h, 1, key)
        else:
            q = qk[0].float()[batch, :, row]  # (b, h, head_dim)
            scores = torch.einsum("bhe,bhte->bht", q, qk[1].float())[:, :, None, :] * scale
        keys = real[:, None, None, :]
        if causal:
            keys = keys & (pos <= row[:, None])[:, None, None, :]
    log_p = torch.log_softmax(scores.masked_fill(~keys, -math.inf), -1)
    entropy = -torch.where(keys, log_p.exp() * log_p, 0.0).sum(-1)
    n = keys.sum(-1)
    normalised = torch.where(n > 1, entropy / torch.log(n.clamp_min(2).float()), 0.0)
    if not all_rows:
        return normalised[:, :, 0]
    rows = real[:, None, :].float()
    return (normalised * rows).sum(-1) / rows.sum(-1).clamp_min(1)


def _queries_keys(block: Block, z: Tensor) -> tuple[Tensor, Tensor] | None:
    """The layer's queries and keys (keys per query head) on its attention input ``z``, for
    a layer whose logits are more than the bilinear form (biases, rotary positions); None
    for one whose logits it gives exactly."""
    attn = block.attn
    if attn.rope_theta is None and attn.q_proj.bias is None:
        return None
    angles = None
    if attn.rope_theta is not None:
        positions = torch.arange(z.shape[1], device=z.device)
        angles = rotary_angles(positions, attn.head_dim, attn.rope_theta)
    q, k, _ = attn.project(z, angles=angles)
    return q, k.repeat_interleave(attn.heads // max(attn.kv_heads, 1), 1)


class EntropyCapture:
    """Accumulates every layer's per-head attention entropy, averaged over sequences.

    Args:
        n_layers: Number of layers.
        all_rows: Average over every real query row (see :func:`attention_entropy`).
    """

    def __init__(self, n_layers: int, all_rows: bool = False) -> None:
        self.all_rows = all_rows
        self.sums: list[Tensor | None] = [None] * n_layers
        self.sequences = [0] * n_layers

    def add(self, layer: int, block: Block, h: Tensor, mask: Tensor | None, causal: bool) -> None:
        """Record the first attention pass of layer ``layer``.

        Args:
            layer: Layer index.
            block: The layer.
            h: (batch, seq, d_model) the block's input (before its pre-norm).
            mask: (batch, seq) True for real tokens (None: all real).
            causal: Whether the model is causal.
        """
        attn = block.attn
        with torch.no_grad():
            z = block.attn_input(h)
            e = attention_entropy(
                z,
                attn.q_proj.weight,
                attn.k_proj.weight,
                attn.head_dim,
                mask,
                causal=causal,
                all_rows=self.all_rows,
                qk=_queries_keys(block, z),
            ).sum(0)
        self.sums[layer] = e if self.sums[layer] is None else self.sums[layer] + e
        self.sequences[layer] += h.shape[0]

    def reduce(self, sum_: Callable[[list[Tensor]], None]) -> None:
        """Add the other processes' sums and counts (see :meth:`Capture.reduce`)."""
        self.sequences = _reduce(self.sums, self.sequences, sum_)

    def entropies(self) -> list[Tensor]:
        """(heads,) mean entropy per layer, on the model's device (no host synchronisation)."""
        return [s / max(n, 1) for s, n in zip(self.sums, self.sequences, strict=True)]


@contextlib.contextmanager
def capture_entropy(
    model: ElasticModel, attention_mask: Tensor | None, capture: EntropyCapture
) -> Iterator[EntropyCapture]:
    """Record each layer's attention entropy during the forward passes inside.

    The hook sits on the block, not on its pre-norm, so that a layer's loop passes and
    block loops (which reuse the pre-norm) do not count: the entropy is that of the
    layer's first attention pass.
    """
    handles = [
        block.register_forward_pre_hook(
            lambda module, args, i=i: capture.add(i, module, args[0], attention_mask, args[2])
        )
        for i, block in enumerate(model.transformer.layers)
    ]
    try:
        yield capture
    finally:
        for h in handles:
            h.remove()


class Capture:
    """The statistics named in ``needs``, recorded over forward passes (see :func:`capture`).

    Args:
        n_layers: Number of layers.
        needs: Names from :data:`STATISTICS`.
    """

    def __init__(self, n_layers: int, needs: Collection[str]) -> None:
        unknown = sorted(set(needs) - set(STATISTICS))
        if unknown:
            raise ValueError(f"unknown statistics {unknown} (known: {', '.join(STATISTICS)})")
        self.inputs = InputCapture(n_layers) if MOMENTS in needs else None
        self.entropy = {
            name: EntropyCapture(n_layers, all_rows=name == ENTROPY_ALL)
            for name in (ENTROPY, ENTROPY_ALL)
            if name in needs
        }
        self.contribution = CONTRIBUTION in needs
        self.demand = DemandCapture(n_layers) if DEMAND in needs else None

    def reduce(self, sum_: Callable[[list[Tensor]], None]) -> None:
        """Make the recorded statistics those of every process's batches together.

        Args:
            sum_: Sums a list of tensors in place over the processes (data-parallel ranks,
                see :meth:`growformer.distributed.Ranks.sum_`).
        """
        for c in (self.inputs, *self.entropy.values(), self.demand):
            if c is not None:
                c.reduce(sum_)

    @contextlib.contextmanager
    def watch(self, model: ElasticModel, attention_mask: Tensor | None) -> Iterator[None]:
        """Record the forward passes of ``model`` inside (inputs masked by
        ``attention_mask``, True for real tokens, None: all real) into this capture."""
        with contextlib.ExitStack() as stack:
            if self.inputs is not None:
                stack.enter_context(capture_inputs(model, attention_mask, self.inputs))
            for c in self.entropy.values():
                stack.enter_context(capture_entropy(model, attention_mask, c))
            if self.demand is not None:
                stack.enter_context(capture_demand(model, self.demand))
            yield

    def results(self, model: ElasticModel, loss: Callable[[], float]) -> dict[str, Any]:
        """Statistic name -> per-layer values (moments use the model's current forms).

        Args:
            model: The model the statistics describe.
            loss: The loss of the step's batch (without dropout), for contributions.
        """
        out: dict[str, Any] = {name: c.entropies() for name, c in self.entropy.items()}
        if self.inputs is not None:
            out[MOMENTS] = layer_stats(model, self.inputs)
        if self.demand is not None:
            out[DEMAND] = self.demand.demands(model)
        if self.contribution:
            out[CONTRIBUTION] = head_contributions(model, loss)
        return out


@contextlib.contextmanager
def capture_demand(model: ElasticModel, capture: DemandCapture) -> Iterator[DemandCapture]:
    """Put :class:`DemandCapture`'s zero logit bias on every layer's first attention
    pass during the forward passes inside (their backward may run later)."""
    layers = model.transformer.layers
    for i, block in enumerate(layers):
        block.logit_probe = capture.probe(i, block)
    try:
        yield capture
    finally:
        for block in layers:
            block.logit_probe = None


@torch.no_grad()
def head_contributions(model: ElasticModel, loss: Callable[[], float]) -> list[Tensor]:
    """Per layer, (heads,) relative change of ``loss()`` when each head's output is
    switched off in the layer's first attention pass (positive: the loss rises).

    Args:
        model: The model (restored as it was afterwards).
        loss: Evaluates the loss of a fixed batch, without dropout.
    """
    base = loss()
    scale = abs(base) or 1.0
    out = []
    for block in model.transformer.layers:
        changes = []
        for head in range(block.attn.heads):
            block.ablated = head
            try:
                changes.append((loss() - base) / scale)
            finally:
                block.ablated = None
        out.append(torch.tensor(changes, dtype=torch.float64))
    return out


def _reduce(
    sums: list[Tensor | None], counts: list[int], sum_: Callable[[list[Tensor]], None]
) -> list[int]:
    """Sum ``sums`` in place and ``counts`` over the processes; return the summed counts."""
    present = [s for s in sums if s is not None]
    if not present:
        return counts
    total = torch.tensor(counts, dtype=torch.float64, device=present[0].device)
    sum_([*present, total])
    return [int(n) for n in total.tolist()]


@contextlib.contextmanager
def capture(
    model: ElasticModel, attention_mask: Tensor | None, needs: Collection[str]
) -> Iterator[Capture]:
    """Record the statistics named in ``needs`` during the forward passes inside; nothing
    (no hook) when ``needs`` is empty."""
    recorded = Capture(len(model.transformer.layers), needs)
    with recorded.watch(model, attention_mask):
        yield recorded
