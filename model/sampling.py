"""Sampling: the settings of a request, its seed and its prime.

The sampling itself (temperature, top-k, top-p, inverse CDF with a request's own uniform
random numbers) is compiled: model/kernels.py; the batched decoder drives it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from model.vocab import Vocabulary

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SamplingConfig:
    """How to continue a prime. Defaults: plain sampling from the model's distribution."""

    length: int = 200
    temperature: float = 1.0
    top_k: int | None = None  # keep only the k most likely characters
    top_p: float = 1.0  # nucleus: the smallest set whose probability reaches top_p
    seed: int | None = None  # None: a fresh random seed (reported back to the caller)
    skip_unknown: bool = False  # drop prime characters outside the vocabulary

    def __post_init__(self) -> None:
        if self.length < 0:
            raise ValueError(f"length must be ≥ 0, got {self.length}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be ≥ 1, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must be in [0, 2^63 - 1], got {self.seed}")


def resolve_seed(seed: int | None) -> int:
    """The seed to use: the caller's, or a fresh random one they can reuse to repeat a run."""
    return secrets.randbelow(MAX_SEED) if seed is None else seed


def prime_ids(vocab: Vocabulary, prime: str, skip_unknown: bool = False) -> list[int]:
    """Ids of the prime; an empty prime starts from a newline (or the first character),
    as if at the start of a paragraph. Raises OutOfVocabularyError naming unknown chars."""
    ids = vocab.encode(prime, skip_unknown=skip_unknown)
    if ids:
        return ids
    return [vocab.encode("\n")[0] if "\n" in vocab else 0]
