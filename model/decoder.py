"""Batched decoding: many independent streams advanced together, one character per step.

Each row of the batch is one stream with its own hidden state, its own sampling settings
(temperature, top_k, top_p) and its own random stream, so a seeded stream produces the
same text whether it is decoded alone or beside any number of others:

- Its random numbers come from its own PCG64 generator (numpy), drawn in blocks.
- The network's GEMMs always run on at least MIN_ROWS rows: MKL computes each row of an
  (M, K)·(K, N) product bit-identically for every M ≥ 8, but takes other code paths (with
  another summation order) below that. Padding costs a little at batch 1, and buys
  seeds that are exact whatever else is being served.
- Primes run through the network one request at a time (a batch of 1 has one shape,
  whoever else is waiting), then the request's state is copied into a free row.

Rows are kept dense: rows [0, n) are live; removing a row moves the last one into its place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.network import CharRNN
from model.sampling import SamplingConfig, prime_ids, resolve_seed, sample_rows
from model.stepper import Stepper
from model.vocab import Vocabulary

MIN_ROWS = 8
UNIFORM_BLOCK = 64


class UniformStream:
    """A request's own uniform random numbers in [0, 1), from a seeded PCG64."""

    def __init__(self, seed: int):
        self._generator = np.random.Generator(np.random.PCG64(seed))

    def block(self, size: int = UNIFORM_BLOCK) -> Tensor:
        return torch.from_numpy(self._generator.random(size))


@dataclass
class RowSettings:
    temperature: float
    top_k: int | None
    top_p: float


class BatchDecoder:
    """Fixed-capacity decoding state for up to `capacity` streams."""

    def __init__(self, model: CharRNN, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.model = model.eval()
        self.stepper = Stepper(model)
        self.capacity = capacity
        rows = max(capacity, MIN_ROWS)
        device = model.head.weight.device
        vocab_size = model.config.vocab_size
        self.hidden = model.init_hidden(rows, device)  # each (L, rows, H)
        self.logits = torch.zeros(rows, vocab_size, device=device)  # next-char logits per row
        self.temperature = torch.ones(rows)
        self.top_k = torch.full((rows,), vocab_size, dtype=torch.long)
        self.top_p = torch.ones(rows)
        self.uniforms = torch.zeros(rows, UNIFORM_BLOCK, dtype=torch.float64)
        self.uniform_pos = torch.zeros(rows, dtype=torch.long)
        self.streams: list[UniformStream | None] = [None] * rows
        self.size = 0  # live rows

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    @torch.no_grad()
    def add(self, prime: list[int], config: SamplingConfig, seed: int) -> int:
        """Run a prime through the network and give its state a row; returns the row."""
        if self.full:
            raise RuntimeError("decoder is full")
        if not prime:
            raise ValueError("a prime needs at least one character (see prime_ids)")
        device = self.logits.device
        ids = torch.tensor([prime], dtype=torch.long, device=device)  # (1, T)
        logits, hidden = self.stepper.prime(ids)  # (1, V)
        row = self.size
        for buffer, state in zip(self.hidden, hidden, strict=True):
            buffer[:, row] = state[:, 0]
        self.logits[row] = logits[0]
        self.temperature[row] = config.temperature
        self.top_k[row] = config.top_k or self.logits.shape[1]
        self.top_p[row] = config.top_p
        stream = UniformStream(seed)
        self.streams[row] = stream
        self.uniforms[row] = stream.block()
        self.uniform_pos[row] = 0
        self.size += 1
        return row

    def remove(self, row: int) -> int | None:
        """Free a row; the last live row moves into it. Returns the moved row's old index."""
        last = self.size - 1
        if not 0 <= row <= last:
            raise IndexError(f"row {row} is not live")
        moved = None
        if row != last:
            for buffer in self.hidden:
                buffer[:, row] = buffer[:, last]
            for tensor in (
                self.logits,
                self.temperature,
                self.top_k,
                self.top_p,
                self.uniforms,
                self.uniform_pos,
            ):
                tensor[row] = tensor[last]
            self.streams[row] = self.streams[last]
            moved = last
        self.streams[last] = None
        self.size -= 1
        return moved

    @torch.no_grad()
    def sample(self) -> Tensor:
        """Draw the next character of every live row: → ids (n,)."""
        n = self.size
        rows = torch.arange(n)
        uniform = self.uniforms[rows, self.uniform_pos[:n]]  # (n,)
        self.uniform_pos[:n] += 1
        for row in (self.uniform_pos[:n] == UNIFORM_BLOCK).nonzero().flatten().tolist():
            self.uniforms[row] = self.streams[row].block()
            self.uniform_pos[row] = 0
        return sample_rows(
            self.logits[:n].cpu(), self.temperature[:n], self.top_k[:n], self.top_p[:n], uniform
        )

    @torch.no_grad()
    def advance(self, ids: Tensor) -> None:
        """Feed each live row its sampled character: ids (n,) → new logits."""
        n = self.size
        padded = max(n, MIN_ROWS)
        step_ids = torch.zeros(padded, dtype=torch.long)
        step_ids[:n] = ids
        hidden = tuple(buffer[:, :padded] for buffer in self.hidden)
        logits, _ = self.stepper.step(step_ids.to(self.logits.device), hidden)
        self.logits[:padded] = logits


def generate(
    model: CharRNN, vocab: Vocabulary, prime: str, config: SamplingConfig
) -> Iterator[str]:
    """Yield `config.length` characters continuing `prime`, one at a time.

    The prime goes through the network in one forward pass; then each sampled character is
    fed back with the carried hidden state. This is the service's batched decoder with a
    single row, so the same seed gives the same text here and from the service.
    """
    decoder = BatchDecoder(model, capacity=1)
    decoder.add(prime_ids(vocab, prime, config.skip_unknown), config, resolve_seed(config.seed))
    for _ in range(config.length):
        next_id = decoder.sample()
        yield vocab.chars[int(next_id[0])]
        decoder.advance(next_id)
