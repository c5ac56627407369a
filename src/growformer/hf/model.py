"""growformer models as transformers ``PreTrainedModel``s.

After ``import growformer``, a growformer checkpoint directory loads like any
transformers model::

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    pipeline("text-classification", model=checkpoint_dir, tokenizer=checkpoint_dir)

The transformers model *is* the growformer model: it holds the growformer model's own
modules under the same names (``transformer``, ``classifier`` or ``lm_head``), so the
weights are the same tensors and the state-dict keys are growformer's, and the
growformer model itself is :attr:`GrowformerPreTrainedModel.elastic`, which surgery,
statistics and evaluation take.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# First: names the extra to install when transformers is missing or too old.
from growformer.hf.config import GrowformerConfig

# isort: split
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.initialization import guard_torch_init_functions
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput

from growformer.errors import ConfigError
from growformer.model import (
    ElasticForCausalLM,
    ElasticForSequenceClassification,
    ElasticModel,
    KVCache,
)
from growformer.version import __version__

__all__ = [
    "CACHE_FIELD",
    "GrowformerCache",
    "GrowformerForCausalLM",
    "GrowformerForSequenceClassification",
    "GrowformerPreTrainedModel",
]


class GrowformerPreTrainedModel(PreTrainedModel):
    """A growformer model inside a transformers ``PreTrainedModel``.

    Args:
        config: The model's configuration.

    Attributes:
        elastic: The growformer model, which shares every module with this one: pass it
            to :mod:`growformer.surgery`, :mod:`growformer.statistics` or
            :func:`growformer.evaluate`.
    """

    config_class = GrowformerConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _no_split_modules: ClassVar[list[str]] = ["Block"]
    elastic_class: ClassVar[type[ElasticModel]]
    elastic: ElasticModel

    def __init__(self, config: GrowformerConfig) -> None:
        super().__init__(config)
        elastic = self.elastic_class(config.arch)
        # The growformer model's modules become this model's (registered once, here, so
        # the state-dict keys are growformer's); the growformer model itself is kept
        # outside the module tree.
        for name, module in elastic.named_children():
            setattr(self, name, module)
        object.__setattr__(self, "elastic", elastic)
        self.post_init()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """growformer's initialisation (:meth:`ElasticModel.init_weights`) of every
        parameter not loaded from a file, and the loop index buffers, which files lack.

        transformers calls it after building the model and after loading weights, when it
        marks the loaded parameters: its guard keeps their values.
        """
        with guard_torch_init_functions():
            self.elastic.init_weights()
        for block in self.transformer.layers:
            block.set_loops(block.loops, block.looped_heads, block.fade)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.tok_emb

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """``PreTrainedModel.save_pretrained``, with the architecture the model has now
        (surgery may have changed it since the configuration was written)."""
        self.config.architecture = self.elastic.arch.to_dict()
        self.config.growformer_version = __version__
        super().save_pretrained(save_directory, *args, **kwargs)


class GrowformerForSequenceClassification(GrowformerPreTrainedModel):
    """A growformer classifier (bidirectional encoder, ``[CLS]`` pooling)."""

    elastic_class = ElasticForSequenceClassification

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> SequenceClassifierOutput:
        """Class logits of each sequence, and the mean cross-entropy when ``labels`` given.

        Args:
            input_ids: (batch, seq) token ids, ``[CLS]`` first.
            attention_mask: (batch, seq) 1 for real tokens, 0 for padding.
            labels: (batch,) class indices.
        """
        out = self.elastic(input_ids, attention_mask, labels)
        return SequenceClassifierOutput(loss=out.loss, logits=out.logits)


# transformers 5.24 renamed generation's cache argument and output field from
# ``past_key_values`` to ``cache``; the model takes both and returns the installed name.
CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


class GrowformerCache(KVCache):
    """growformer's key/value cache (one entry per attention call, so per loop pass) with
    the parts of transformers' cache interface that ``generate`` uses."""

    is_compileable = False

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Positions cached so far (the same for every layer)."""
        return self.length

    def reorder_cache(self, beam_idx: Tensor) -> None:
        """Keep the batch rows ``beam_idx`` (beam search's surviving beams), in that order."""
        self.entries = [
            (k.index_select(0, beam_idx.to(k.device)), v.index_select(0, beam_idx.to(v.device)))
            for k, v in self.entries
        ]


class GrowformerForCausalLM(GrowformerPreTrainedModel, GenerationMixin):
    """A growformer causal language model.

    transformers' ``generate`` (and the ``text-generation`` pipeline) decode it with
    growformer's own key/value cache (:class:`GrowformerCache`): a looped layer needs keys
    and values for each of its passes, which transformers' per-layer caches do not hold.
    Left-padded batches decode like each prompt alone (positions count from each row's
    first real token).
    """

    elastic_class = ElasticForCausalLM

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The forward makes its own cache: transformers' DynamicCache has one entry per layer.
        return False

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        cache: GrowformerCache | None = None,
        use_cache: bool | None = None,
        position_ids: Tensor | None = None,
        past_key_values: GrowformerCache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Next-token logits at every position, and the loss when ``labels`` given.

        Args:
            input_ids: (batch, seq) token ids; with a ``cache``, the positions that follow
                the cached ones.
            attention_mask: (batch, keys) 1 for real tokens, 0 for padding; with a cache,
                the whole sequence's (cached positions first).
            labels: (batch, seq) as transformers has them: the tokens themselves (position
                ``t`` is predicted at ``t - 1``), -100 where ignored.
            cache: The cache a previous call returned.
            use_cache: Return a cache holding this call's keys and values (a new one when
                ``cache`` is None).
            position_ids: (batch, seq) positions of ``input_ids``; None counts each row's
                real tokens from 0 (left padding included), from the cached length on.
            past_key_values: ``cache`` under its name before transformers 5.24.
            **kwargs: What transformers' generation passes besides (``return_dict``).

        Returns:
            The logits and loss, and the cache under the installed transformers' name for
            it (:data:`CACHE_FIELD`).
        """
        if past_key_values is not None:
            if cache is not None:
                raise ConfigError(
                    "pass the key/value cache as cache or as past_key_values, not both"
                )
            cache = past_key_values
        if cache is not None and not isinstance(cache, GrowformerCache):
            raise ConfigError(
                f"growformer models take their own key/value cache, not a "
                f"{type(cache).__name__}: a looped layer needs one entry per pass. "
                "Let generate make it (use_cache=True) or pass use_cache=False"
            )
        if cache is None and use_cache:
            cache = GrowformerCache()
        if position_ids is None and attention_mask is not None:
            counted = attention_mask.long().cumsum(-1) - 1
            position_ids = counted[:, -input_ids.shape[1] :].clamp(min=0)
        # growformer's targets are aligned with the positions that predict them.
        targets = None if labels is None else F.pad(labels[:, 1:], (0, 1), value=-100)
        out = self.elastic(input_ids, attention_mask, targets, cache, position_ids)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits, **{CACHE_FIELD: cache})


def register() -> None:
    """Register the growformer classes with transformers' Auto classes (idempotent)."""
    AutoModelForSequenceClassification.register(
        GrowformerConfig, GrowformerForSequenceClassification, exist_ok=True
    )
    AutoModelForCausalLM.register(GrowformerConfig, GrowformerForCausalLM, exist_ok=True)


register()
