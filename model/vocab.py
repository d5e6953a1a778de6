"""The character vocabulary: unique characters, id = position. `from_text` sorts them by
code point (so ids do not depend on where characters first appear); a fine-tuned model's
vocabulary is its base model's characters followed by the new ones (training/finetune.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np


class OutOfVocabularyError(ValueError):
    """Raised when text holds characters the vocabulary does not know."""

    def __init__(self, missing: list[str]):
        self.missing = missing
        shown = ", ".join(repr(c) for c in missing[:20])
        more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        super().__init__(f"characters not in the model's vocabulary: {shown}{more}")


@dataclass(frozen=True)
class Vocabulary:
    """Maps characters to ids and back, id = position in `chars`. Made from text, the order
    is by code point, so it does not depend on where characters first appear in the corpus
    (torch-rnn's weakness); fine-tuning appends new characters, keeping old ids."""

    chars: tuple[str, ...]
    # Optional stand-in for characters left out of the vocabulary (rare characters cut by
    # `prepare --max-vocab/--min-count`); when set, unknown characters encode to it.
    unknown: str | None = None
    # Optional document separator (`prepare --documents/--doc-per-line`): the character
    # written before every document, so a model learns where documents start and end.
    separator: str | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.chars:
            raise ValueError("a vocabulary needs at least one character")
        if any(len(c) != 1 for c in self.chars):
            raise ValueError("every vocabulary entry must be exactly one character")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("vocabulary characters must be unique")
        if self.unknown is not None and self.unknown not in self.chars:
            raise ValueError("the unknown symbol must be one of the vocabulary's characters")
        if self.separator is not None and self.separator not in self.chars:
            raise ValueError("the document separator must be one of the vocabulary's characters")
        if self.separator is not None and self.separator == self.unknown:
            raise ValueError("the document separator cannot also be the unknown symbol")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})

    @classmethod
    def from_text(cls, text: str | Iterable[str]) -> Vocabulary:
        return cls(tuple(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: object) -> bool:
        return char in self._index

    @property
    def id_dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every id."""
        for dtype in (np.uint8, np.uint16, np.uint32):
            if len(self) - 1 <= np.iinfo(dtype).max:
                return np.dtype(dtype)
        raise ValueError("vocabulary too large")  # pragma: no cover - 4 billion chars

    def missing(self, text: str) -> list[str]:
        """Characters of `text` not in the vocabulary, each once, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self._index))

    def encode(self, text: str, *, skip_unknown: bool = False) -> list[int]:
        """Ids of `text`. Unknown characters map to the unknown symbol when the vocabulary
        has one; otherwise they raise OutOfVocabularyError listing them all, or are dropped
        when `skip_unknown` is set."""
        if self.unknown is not None:
            unknown_id = self._index[self.unknown]
            return [self._index.get(c, unknown_id) for c in text]
        if skip_unknown:
            return [self._index[c] for c in text if c in self._index]
        missing = self.missing(text)
        if missing:
            raise OutOfVocabularyError(missing)
        return [self._index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> dict:
        return {"chars": list(self.chars), "unknown": self.unknown, "separator": self.separator}

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        if not isinstance(data, dict) or not isinstance(data.get("chars"), list):
            raise ValueError("vocabulary must be an object with a 'chars' list")
        return cls(
            tuple(data["chars"]), unknown=data.get("unknown"), separator=data.get("separator")
        )
