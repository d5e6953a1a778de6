"""Sampling: pure filters over logits, and the char-by-char generation loop.

Randomness comes only from an explicit torch.Generator seeded per request, and sampling
happens on the CPU, so the same seed gives the same text wherever the network runs.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from model.network import CharRNN
from model.stepper import Stepper
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


def top_k_filter(logits: Tensor, top_k: int | None) -> Tensor:
    """logits (..., V) with all but the k largest set to -inf."""
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    threshold = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """logits (..., V) keeping the smallest most-likely set whose probability ≥ top_p."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Drop a character when the ones more likely than it already reach top_p; the most
    # likely character always stays.
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_char_probs(logits: Tensor, config: SamplingConfig) -> Tensor:
    """Temperature, top-k, then top-p: logits (..., V) → probabilities (..., V)."""
    scaled = logits.float() / config.temperature
    return torch.softmax(top_p_filter(top_k_filter(scaled, config.top_k), config.top_p), dim=-1)


def prime_ids(vocab: Vocabulary, prime: str, skip_unknown: bool = False) -> list[int]:
    """Ids of the prime; an empty prime starts from a newline (or the first character),
    as if at the start of a paragraph. Raises OutOfVocabularyError naming unknown chars."""
    ids = vocab.encode(prime, skip_unknown=skip_unknown)
    if ids:
        return ids
    return [vocab.encode("\n")[0] if "\n" in vocab else 0]


@torch.no_grad()
def generate(
    model: CharRNN, vocab: Vocabulary, prime: str, config: SamplingConfig
) -> Iterator[str]:
    """Yield `config.length` characters continuing `prime`, one at a time.

    The prime goes through the network in one forward pass; then each sampled character is
    fed back with the carried hidden state. `config.seed` must be set (see resolve_seed)
    for the text to be repeatable; None draws a fresh seed.
    """
    stepper = Stepper(model)
    device = model.head.weight.device
    generator = torch.Generator().manual_seed(resolve_seed(config.seed))
    ids = torch.tensor([prime_ids(vocab, prime, config.skip_unknown)], device=device)  # (1, T)
    logits, hidden = stepper.prime(ids)  # (1, V)
    for _ in range(config.length):
        probs = next_char_probs(logits[0].cpu(), config)  # (V,)
        next_id = torch.multinomial(probs, 1, generator=generator)  # (1,)
        yield vocab.chars[int(next_id)]
        logits, hidden = stepper.step(next_id.to(device), hidden)
