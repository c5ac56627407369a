"""Tokenizer: a thin wrapper over Hugging Face `tokenizers`, with the special tokens found by
their role."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from growformer.errors import ConfigError, DataError

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[CLS]", "[EOS]", "[UNK]")
"""The special tokens of the tokenizers growformer trains, at ids 0-3."""
# Where a tokenizer comes from elsewhere (a pretrained model's), each role is the first of
# these tokens its vocabulary holds: growformer's names, then BERT's, Llama's and GPT-2's.
ROLE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>", "<|endoftext|>", "</s>"),
    "cls": ("[CLS]", "<s>", "<|endoftext|>"),
    "eos": ("[EOS]", "[SEP]", "</s>", "<|endoftext|>"),
    "unk": ("[UNK]", "<unk>"),
}
SEP = "[SEP]"


@dataclass(frozen=True)
class SpecialTokens:
    """The token playing each role (``unk`` None where the vocabulary has none: byte-level
    BPE needs none); ``sep``: BERT's separator, which closes a classifier's input after
    the text where the vocabulary has one."""

    pad: str
    cls: str
    eos: str
    unk: str | None
    sep: str | None

    @classmethod
    def of(cls, tok: tokenizers.Tokenizer) -> SpecialTokens:
        """The roles in ``tok``'s vocabulary (see ``ROLE_CANDIDATES``).

        Raises:
            DataError: No token of the vocabulary can play a required role.
        """
        found: dict[str, str | None] = {}
        for role, candidates in ROLE_CANDIDATES.items():
            found[role] = next((t for t in candidates if tok.token_to_id(t) is not None), None)
            if found[role] is None and role != "unk":
                raise DataError(
                    f"tokenizer has no {role} token (looked for {', '.join(candidates)})"
                )
        sep = SEP if found["eos"] == SEP else None
        return cls(sep=sep, **found)  # type: ignore[arg-type]


# Every byte must be in the vocabulary, so a BPE vocabulary smaller than this cannot exist.
MIN_BPE_VOCAB = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())


class Tokenizer:
    """Text <-> token ids, with a padding, a [CLS], an end-of-sequence and (where the
    vocabulary has one) an unknown token: growformer's own tokenizers have `[PAD]`=0,
    `[CLS]`=1, `[EOS]`=2, `[UNK]`=3; a pretrained model's keeps its ids, its tokens found
    by role (`SpecialTokens.of`).

    Special tokens are only ever inserted by id: a literal "[CLS]" in user text is encoded as
    ordinary text, so data cannot forge control tokens.

    Args:
        tok: A `tokenizers.Tokenizer` (its post-processor unused: growformer inserts the
            special tokens itself).
    """

    def __init__(self, tok: tokenizers.Tokenizer) -> None:
        self.special = SpecialTokens.of(tok)
        # growformer pads, truncates and inserts special tokens itself: a pretrained
        # tokenizer's own settings for them would change the ids.
        tok.no_padding()
        tok.no_truncation()
        # Not part of the serialized JSON, so it is set here for every construction path.
        tok.encode_special_tokens = True
        self._tok = tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Train a byte-level BPE tokenizer (deterministic for the same texts).

        Args:
            texts: Training texts (sentences or whole source files).
            vocab_size: Target vocabulary size including special tokens; the result may be
                smaller when the texts have too few frequent pairs.

        Returns:
            The trained tokenizer.
        """
        if vocab_size < MIN_BPE_VOCAB:
            raise ConfigError(
                f"vocab_size {vocab_size} is too small for a byte-level BPE tokenizer "
                f"(minimum {MIN_BPE_VOCAB})"
            )
        tok = tokenizers.Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=list(SPECIAL_TOKENS),
            # Seed all 256 bytes so no input can ever map to [UNK].
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def word_level(cls, symbols: list[str]) -> Tokenizer:
        """Build a fixed whitespace-split vocabulary: special tokens, then `symbols` in order.

        Args:
            symbols: Distinct words; symbol `i` gets id `len(SPECIAL_TOKENS) + i`.

        Returns:
            The tokenizer.
        """
        vocab = [*SPECIAL_TOKENS, *symbols]
        if len(set(vocab)) != len(vocab):
            raise ValueError("word_level symbols must be distinct and not special tokens")
        tok = tokenizers.Tokenizer(
            models.WordLevel({s: i for i, s in enumerate(vocab)}, unk_token="[UNK]")
        )
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        return cls(tok)

    @cached_property
    def pad_id(self) -> int:
        """Id of the padding token."""
        return self._tok.token_to_id(self.special.pad)

    @cached_property
    def cls_id(self) -> int:
        """Id of the [CLS] token, first in a classifier's input."""
        return self._tok.token_to_id(self.special.cls)

    @cached_property
    def eos_id(self) -> int:
        """Id of the end-of-sequence token (between a language model's documents)."""
        return self._tok.token_to_id(self.special.eos)

    @cached_property
    def unk_id(self) -> int:
        """Id of the unknown token: a word a word-level vocabulary does not hold."""
        if self.special.unk is None:
            raise DataError("this tokenizer has no unknown token")
        return self._tok.token_to_id(self.special.unk)

    @cached_property
    def _cls_suffix(self) -> list[int]:
        """What closes a classifier's input: [SEP] for BERT-family vocabularies, nothing
        for growformer's."""
        return [] if self.special.sep is None else [self._tok.token_to_id(self.special.sep)]

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, texts: list[str], *, add_cls: bool, max_len: int | None) -> list[list[int]]:
        """Encode a batch of texts (no padding).

        Args:
            texts: Texts to encode.
            add_cls: Classifier input: `[CLS]` first (and `[SEP]` last where the vocabulary
                is BERT's, kept when the text is cut).
            max_len: Keep at most this many ids per sequence, special tokens included; None
                keeps all.

        Returns:
            One list of ids per text.
        """
        prefix = [self.cls_id] if add_cls else []
        suffix = self._cls_suffix if add_cls else []
        room = None if max_len is None else max(0, max_len - len(prefix) - len(suffix))
        return [
            (prefix + enc.ids[:room] + suffix)[:max_len]
            for enc in self._tok.encode_batch(texts, add_special_tokens=False)
        ]

    def encode_words(self, words: Sequence[Sequence[str]], *, add_cls: bool) -> list[list[int]]:
        """Encode pre-split words with a word-level tokenizer (`word_level`) by lookup.

        Gives the ids `encode` gives for the words joined by spaces, without the per-token
        cost of the `tokenizers` pipeline: about 20x faster on protein-length sequences.

        Args:
            words: Words per sequence; none may contain whitespace.
            add_cls: Prepend `[CLS]` to every sequence.

        Returns:
            One list of ids per sequence (no truncation).

        Raises:
            ValueError: The tokenizer is not word-level.
        """
        vocab, unk = self._word_ids, self.unk_id
        prefix = [self.cls_id] if add_cls else []
        return [prefix + [vocab.get(w, unk) for w in seq] for seq in words]

    @cached_property
    def _word_ids(self) -> dict[str, int]:
        # Fetched once: the vocabulary never changes, and copying it out of `tokenizers`
        # costs milliseconds per call (minutes over a data set encoded genome by genome).
        if not isinstance(self._tok.model, models.WordLevel):
            raise ValueError("encode_words needs a word-level tokenizer")
        return self._tok.get_vocab()

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The token strings of `ids` (for a word-level tokenizer, the words they encode)."""
        return [self._tok.id_to_token(i) for i in ids]

    def to_json(self) -> str:
        """Serialize to the `tokenizers` JSON format."""
        return self._tok.to_str()

    @classmethod
    def from_json(cls, s: str) -> Tokenizer:
        """Rebuild a tokenizer from `to_json()` output.

        Args:
            s: The JSON string.

        Returns:
            The tokenizer.
        """
        try:
            tok = tokenizers.Tokenizer.from_str(s)
        except Exception as e:  # the Rust side raises bare Exception for any parse error
            raise DataError(f"tokenizer JSON is invalid: {str(e).splitlines()[0]}") from e
        return cls(tok)

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as JSON to `path`."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer saved with `save`.

        Args:
            path: JSON file written by `save`.

        Returns:
            The tokenizer.
        """
        path = Path(path)
        try:
            s = path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise DataError(f"tokenizer file {path} does not exist") from e
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"tokenizer file {path} cannot be read: {e}") from e
        try:
            return cls.from_json(s)
        except DataError as e:
            raise DataError(f"tokenizer file {path} is corrupt ({e})") from e
