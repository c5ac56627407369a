"""Compression of trained models: smaller head dimensions, grouped keys and values, a
factored token embedding.

Each pass returns a new model (the input is left alone), rebuilt from the input's state
dict with the changed weights:
    :func:`compress_head_dim`: every head's query-key and value-output products replaced
        by their best rank-r factors (truncated SVD), i.e. a smaller head dimension.
    :func:`group_kv`: consecutive heads share one key and one value head, the mean of
        theirs (the mean-pooling conversion of multi-head to grouped-query attention).
    :func:`factor_embedding`: the token embedding table replaced by its truncated SVD, a
        narrow table times a projection (on small models the table holds most of the
        parameters, and no attention pass reaches it).

:func:`truncate_heads` cuts heads in place at their full width (what the saturation
curves measure). Heads are found in the projection weights by
:func:`growformer.model.split_heads`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from growformer.errors import ConfigError
from growformer.model import ElasticModel, build_model, split_heads


def qk_factors(wq: Tensor, wk: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-``rank`` factors of one head's query-key product.

    The head scores ``x Wq^T Wk y / sqrt(head_dim)``; the returned ``(rank, d_model)``
    pair scores ``x Wq'^T Wk' y / sqrt(rank)`` with ``Wq'^T Wk'`` the truncated SVD of
    ``Wq^T Wk`` rescaled by ``sqrt(rank / head_dim)``, so the scores are the truncation's.

    Args:
        wq: (head_dim, d_model) query rows of the head.
        wk: (head_dim, d_model) key rows of the head.
        rank: Rows kept (<= head_dim).
    """
    left, right = _factors(wq.T @ wk, rank)  # (d, r), (r, d)
    scale = math.sqrt(rank / wq.shape[0])
    return (left * scale).T.contiguous(), right.contiguous()


def vo_factors(wv: Tensor, wo: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-``rank`` factors of one head's value-output product ``Wo Wv``.

    Args:
        wv: (head_dim, d_model) value rows of the head.
        wo: (d_model, head_dim) output columns of the head.
        rank: Rows kept (<= head_dim).

    Returns:
        ``(wv', wo')`` of shapes (rank, d_model) and (d_model, rank).
    """
    left, right = _factors(wo @ wv, rank)
    return right.contiguous(), left.contiguous()


def _factors(m: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(left, right) with ``left @ right`` the best rank-``rank`` approximation of ``m``,
    the singular values split evenly between them."""
    u, s, vh = torch.linalg.svd(m.double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(m.dtype), (root[:, None] * vh[:rank]).to(m.dtype)


def _head_factors(
    q: Tensor, k: Tensor, v: Tensor, o: Tensor, head: int, head_dim: int, rank: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rank-``rank`` (wq, wk, wv, wo) of head ``head`` (of width ``head_dim``) of the
    projection weights ``q``, ``k``, ``v`` and ``o``."""
    wq, wk = qk_factors(split_heads(q, head_dim)[head], split_heads(k, head_dim)[head], rank)
    wv, wo = vo_factors(split_heads(v, head_dim)[head], split_heads(o, head_dim, 1)[:, head], rank)
    return wq, wk, wv, wo


@torch.no_grad()
def truncate_heads(model: ElasticModel, layer: int, heads: Iterable[int], rank: int) -> None:
    """Replace, in place, the given heads of ``layer`` by their rank-``rank`` truncation,
    keeping the head dimension (zero rows fill the rest), so the function is the cut one.

    Args:
        model: The model to change.
        layer: Index of the layer.
        heads: Indices of the heads to cut.
        rank: Rows kept per head; at or above the head dimension nothing changes.

    Raises:
        ConfigError: The layer shares keys and values between heads, or its logits are not
            the query-key product alone (see :func:`_factorable`).
    """
    attn = model.transformer.layers[layer].attn
    hd = attn.head_dim
    if rank >= hd:
        return
    _ungrouped(model, layer)
    _factorable(model)
    q, k, v, o = (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight)
    for h in heads:
        wq, wk, wv, wo = _head_factors(q, k, v, o, h, hd, rank)
        # The factors score over sqrt(rank); kept at head_dim width they score over
        # sqrt(head_dim), so undo qk_factors' rescaling.
        wq = wq * math.sqrt(hd / rank)
        for weight, new in ((q, wq), (k, wk), (v, wv)):
            rows = split_heads(weight, hd)
            rows[h] = 0
            rows[h, :rank] = new
        columns = split_heads(o, hd, 1)
        columns[:, h] = 0
        columns[:, h, :rank] = wo


def compress_head_dim(model: ElasticModel, ranks: Sequence[int]) -> ElasticModel:
    """A copy of ``model`` whose layer ``l`` has head dimension ``ranks[l]``, every head's
    query-key and value-output products replaced by their truncated SVD.

    A rank at or above the layer's head dimension leaves the layer as it is.

    Args:
        model: A trained model (not changed).
        ranks: New head dimension per layer.

    Raises:
        ConfigError: Wrong number of ranks or a rank below 1, or a model whose logits are
            not the query-key product alone (see :func:`_factorable`).
    """
    arch = model.arch
    if len(ranks) != arch.n_layers:
        raise ConfigError(f"got {len(ranks)} ranks for a model with {arch.n_layers} layers")
    bad = [r for r in ranks if isinstance(r, bool) or not isinstance(r, int) or r < 1]
    if bad:
        raise ConfigError(f"ranks must be positive integers, got {bad[0]!r}")
    new_layers = tuple(
        replace(layer, head_dim=min(r, layer.head_dim))
        for layer, r in zip(arch.layers, ranks, strict=True)
    )
    if new_layers != arch.layers:
        _factorable(model)
    new = build_model(replace(arch, layers=new_layers))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for i, (old, spec) in enumerate(zip(arch.layers, new_layers, strict=True)):
            if spec.head_dim == old.head_dim:
                continue
            _ungrouped(model, i)
            prefix = _prefix(new, new.transformer.layers[i].attn)
            q, k, v, o = (state[prefix + f"{n}_proj.weight"] for n in "qkvo")
            parts: dict[str, list[Tensor]] = {n: [] for n in "qkvo"}
            for h in range(old.heads):
                factors = _head_factors(q, k, v, o, h, old.head_dim, spec.head_dim)
                for n, t in zip("qkvo", factors, strict=True):
                    parts[n].append(t)
            for n in "qkv":
                state[prefix + f"{n}_proj.weight"] = torch.cat(parts[n], 0)
            state[prefix + "o_proj.weight"] = torch.cat(parts["o"], 1)
    new.load_state_dict(state)
    new.train(model.training)
    return new


def _factorable(model: ElasticModel) -> None:
    """Raise :class:`ConfigError` unless every head's logits are ``x W_Q^T W_K x'`` alone,
    the product whose truncated SVD cuts the head dimension."""
    arch = model.arch
    if arch.positions == "rotary":
        raise ConfigError(
            "cannot cut the head dimension of a model with rotary positions: the rotation "
            "between queries and keys changes with the position, so no single query-key "
            "product has an SVD to truncate"
        )
    if arch.attn_bias:
        raise ConfigError(
            "cannot cut the head dimension of a model with attention biases (attn_bias): "
            "the query and key biases add terms the query-key product does not hold"
        )


def _ungrouped(model: ElasticModel, layer: int) -> None:
    """Raise :class:`ConfigError` if ``layer`` shares keys and values between heads."""
    if model.transformer.layers[layer].attn.grouped:
        raise ConfigError(
            f"layer {layer} shares keys and values between heads: cut head dimensions before "
            "grouping them"
        )


def group_kv(model: ElasticModel, kv_heads: Sequence[int | None]) -> ElasticModel:
    """A copy of ``model`` whose layer ``l`` has ``kv_heads[l]`` key/value heads, each
    shared by ``heads / kv_heads[l]`` consecutive query heads and set to the mean of their
    key and value rows (None leaves a layer as it is).

    Args:
        model: A trained model (not changed), without grouped layers where it is grouped.
        kv_heads: Key/value heads per layer, each a divisor of the layer's heads, or None.

    Raises:
        ConfigError: Wrong length, a count that does not divide the heads, or a layer that
            is grouped already.
    """
    arch = model.arch
    if len(kv_heads) != arch.n_layers:
        raise ConfigError(f"got {len(kv_heads)} kv_heads for a model with {arch.n_layers} layers")
    for i, (layer, g) in enumerate(zip(arch.layers, kv_heads, strict=True)):
        if g is None:
            continue
        if isinstance(g, bool) or not isinstance(g, int) or g < 1 or layer.heads % g:
            raise ConfigError(f"layer {i}: kv_heads must divide its {layer.heads} heads, got {g!r}")
        _ungrouped(model, i)
    new_layers = tuple(
        layer if g is None else replace(layer, kv_heads=g)
        for layer, g in zip(arch.layers, kv_heads, strict=True)
    )
    new = build_model(replace(arch, layers=new_layers))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i, (layer, g) in enumerate(zip(arch.layers, kv_heads, strict=True)):
        if g is None:
            continue
        prefix = _prefix(new, new.transformer.layers[i].attn)
        for name in ("k_proj", "v_proj"):
            for part in ("weight", "bias") if arch.attn_bias else ("weight",):
                key = prefix + f"{name}.{part}"
                # (groups, heads per group, head_dim, ...): a group is consecutive heads.
                w = split_heads(state[key], layer.head_dim).unflatten(0, (g, layer.heads // g))
                state[key] = w.mean(1).reshape(g * layer.head_dim, *w.shape[3:])
    new.load_state_dict(state)
    new.train(model.training)
    return new


def factor_embedding(model: ElasticModel, rank: int) -> ElasticModel:
    """A copy of ``model`` whose token embedding is the best rank-``rank`` factoring of its
    table: a ``vocab x rank`` table times a ``rank x d_model`` projection.

    Args:
        model: A trained model (not changed); its embedding may be factored already.
        rank: Width of the new table.

    Raises:
        ConfigError: A rank below 1 or not below ``d_model`` (nothing to save).
    """
    arch = model.arch
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank < arch.d_model:
        raise ConfigError(f"embed_rank must be an integer in [1, {arch.d_model}), got {rank!r}")
    t = model.transformer
    with torch.no_grad():
        table = t.tok_proj(t.tok_emb.weight)  # (vocab, d_model), factored or not
    new = build_model(replace(arch, embed_rank=rank))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows, proj = _factors(table, rank)
    prefix = _prefix(new, new.transformer)
    state[prefix + "tok_emb.weight"] = rows.contiguous()
    state[prefix + "tok_proj.weight"] = proj.T.contiguous()
    new.load_state_dict(state)
    new.train(model.training)
    return new


def _prefix(model: ElasticModel, module: nn.Module) -> str:
    """The prefix of ``module``'s keys in ``model``'s state dict."""
    return next(f"{name}." for name, m in model.named_modules() if m is module)
