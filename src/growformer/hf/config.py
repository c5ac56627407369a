"""The transformers configuration of growformer models (``model_type`` ``"growformer"``).

Kept apart from :mod:`growformer.hf.model` because it needs only transformers'
configuration module: it is registered with ``AutoConfig`` while transformers itself is
still being imported (see :mod:`growformer.hf.auto`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from growformer.arch import Architecture
from growformer.errors import ConfigError
from growformer.hf.files import MISSING_TRANSFORMERS, MODEL_TYPE

try:
    import transformers
    from transformers.configuration_utils import PreTrainedConfig
except ImportError:
    raise ImportError(MISSING_TRANSFORMERS) from None

if int(transformers.__version__.split(".")[0]) < 5:
    raise ImportError(
        f"growformer's Hugging Face integration needs transformers>=5, found "
        f"{transformers.__version__}: pip install -U -e '.[hf]'"
    )


class GrowformerConfig(PreTrainedConfig):
    """A growformer model for transformers: its :class:`~growformer.arch.Architecture`
    as a dict, the class names (``id2label``) and the padding id.

    The model classes of :mod:`growformer.hf.model` are registered with transformers'
    Auto model classes when those are imported (:mod:`growformer.hf.auto`), so that
    ``AutoModelFor*.from_pretrained`` of a growformer directory finds them.

    Args:
        architecture: :meth:`Architecture.to_dict` of the model (None only for the
            defaults transformers builds to compare against).
        pad_token_id: Id of ``[PAD]``.
        eos_token_id: Id of ``[EOS]``, the end of a document (language models).
        growformer_version: The growformer version that wrote the configuration.
    """

    model_type = MODEL_TYPE

    architecture: dict[str, Any] | None = None
    pad_token_id: int | None = 0
    eos_token_id: int | None = None
    growformer_version: str | None = None

    @property
    def vocab_size(self) -> int | None:
        """The architecture's vocabulary size, under the name transformers reads (beam
        search before transformers 5.18 sizes its scores by it)."""
        return None if self.architecture is None else self.architecture["vocab_size"]

    @property
    def arch(self) -> Architecture:
        """The architecture; a classifier's class count is that of ``id2label``, which
        transformers lets a user change (``from_pretrained(..., num_labels=n)``)."""
        if self.architecture is None:
            raise ConfigError("this growformer configuration has no architecture")
        arch = Architecture.from_dict(self.architecture)
        if arch.kind == "classifier":
            arch = replace(arch, num_labels=self.num_labels)
        return arch
