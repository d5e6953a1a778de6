"""Sampling: the settings of a request and pure functions from logits to characters.

Randomness comes only from an explicit torch.Generator seeded per request, and sampling
happens on the CPU, so the same seed gives the same text wherever the network runs.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch
from torch import Tensor

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


def sorted_filtered_probs(
    logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor
) -> tuple[Tensor, Tensor]:
    """Temperature, top-k, then top-p, each per row: logits (n, V) → probabilities sorted
    from the most likely character (n, V) and the order that sorts them (n, V).

    temperature (n,) > 0; top_k (n,) in [1, V]; top_p (n,) in (0, 1]. Filtered-out
    characters get probability 0; the rest are renormalised.
    """
    scaled = logits.float() / temperature.unsqueeze(1)
    sorted_logits, order = torch.sort(scaled, dim=1, descending=True, stable=True)
    rank = torch.arange(logits.shape[1])
    sorted_logits = sorted_logits.masked_fill(rank >= top_k.unsqueeze(1), float("-inf"))
    probs = torch.softmax(sorted_logits, dim=1)
    # Nucleus: drop a character once the more likely ones already reach top_p; the most
    # likely one always stays.
    before = torch.cumsum(probs, dim=1) - probs
    probs = probs.masked_fill(before >= top_p.unsqueeze(1), 0.0)
    return probs / probs.sum(dim=1, keepdim=True), order


def sample_rows(
    logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, uniform: Tensor
) -> Tensor:
    """One character per row by inverse-CDF sampling with the caller's uniform numbers
    (n,) in [0, 1): deterministic given them, so each row can bring its own random stream."""
    probs, order = sorted_filtered_probs(logits, temperature, top_k, top_p)
    cdf = torch.cumsum(probs, dim=1)  # (n, V)
    picked = (cdf < uniform.to(cdf.dtype).unsqueeze(1) * cdf[:, -1:]).sum(dim=1)
    picked = picked.clamp_(max=logits.shape[1] - 1)
    return order.gather(1, picked.unsqueeze(1)).squeeze(1)


def prime_ids(vocab: Vocabulary, prime: str, skip_unknown: bool = False) -> list[int]:
    """Ids of the prime; an empty prime starts from a newline (or the first character),
    as if at the start of a paragraph. Raises OutOfVocabularyError naming unknown chars."""
    ids = vocab.encode(prime, skip_unknown=skip_unknown)
    if ids:
        return ids
    return [vocab.encode("\n")[0] if "\n" in vocab else 0]
