"""Batched decoding: many independent streams advanced together, one character per step.

Each row of the batch is one stream with its own hidden state, its own sampling settings
(temperature, top_k, top_p) and its own random stream, so a seeded stream produces the
same text whether it is decoded alone or beside any number of others:

- Its random numbers come from its own PCG64 generator (numpy), drawn in blocks.
- Its network numbers do not depend on the other rows: see model/row_state.py (the
  compiled CPU kernel is row-invariant by construction; the torch path pads its GEMMs).
- Sampling runs on the CPU, row by row, in a compiled kernel (model/kernels.py).

Rows are kept dense: rows [0, n) are live; removing a row moves the last one into its place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from model.kernels import sample_rows
from model.network import CharRNN
from model.row_state import KernelRows, RowState, Sampling, TorchRows, kernel_supported
from model.sampling import SamplingConfig, prime_ids, resolve_seed
from model.vocab import Vocabulary

UNIFORM_BLOCK = 64
BACKENDS = ("auto", "kernel", "torch")


class UniformStream:
    """A request's own uniform random numbers in [0, 1), from a seeded PCG64."""

    def __init__(self, seed: int):
        self._generator = np.random.Generator(np.random.PCG64(seed))

    def block(self, size: int = UNIFORM_BLOCK) -> np.ndarray:
        return self._generator.random(size)


@dataclass(frozen=True)
class Request:
    """What a row needs to start: prime ids, sampling settings and the resolved seed."""

    prime: list[int]
    config: SamplingConfig
    seed: int


class BatchDecoder:
    """Fixed-capacity decoding state for up to `capacity` streams.

    backend: "kernel" (the compiled CPU LSTM step), "torch" (any device or cell), or
    "auto": the kernel where it applies (a float32 LSTM on the CPU), torch elsewhere.
    threads: how many threads the kernel may split a step's rows over.
    """

    def __init__(self, model: CharRNN, capacity: int, backend: str = "auto", threads: int = 1):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        model = model.eval()
        use_kernel = backend == "kernel" or (backend == "auto" and kernel_supported(model))
        self.backend = "kernel" if use_kernel else "torch"
        self.state: RowState = (
            KernelRows(model, capacity, threads) if use_kernel else TorchRows(model, capacity)
        )
        self.capacity = capacity
        vocab_size = model.config.vocab_size
        self.vocab_size = vocab_size
        self.temperature = np.ones(capacity)
        self.top_k = np.full(capacity, vocab_size, dtype=np.int64)
        self.top_p = np.ones(capacity)
        self.uniforms = np.zeros((capacity, UNIFORM_BLOCK))
        self.uniform_pos = np.zeros(capacity, dtype=np.int64)
        self.streams: list[UniformStream | None] = [None] * capacity
        self._ids = np.zeros(capacity, dtype=np.int64)
        self.size = 0  # live rows
        self.sample()  # compiles the sampling kernel now (or loads it from numba's cache)

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    def add(self, prime: list[int], config: SamplingConfig, seed: int) -> int:
        """Run a prime through the network and give its state a row; returns the row."""
        return self.add_many([Request(prime, config, seed)])[0]

    def add_many(self, requests: list[Request]) -> list[int]:
        """Start several requests at once (their primes run together); returns their rows."""
        if self.size + len(requests) > self.capacity:
            raise RuntimeError("decoder is full")
        if any(not request.prime for request in requests):
            raise ValueError("a prime needs at least one character (see prime_ids)")
        rows = list(range(self.size, self.size + len(requests)))
        if not rows:
            return rows
        self.state.prime(rows, [request.prime for request in requests])
        for row, request in zip(rows, requests, strict=True):
            config = request.config
            self.temperature[row] = config.temperature
            self.top_k[row] = config.top_k or self.vocab_size
            self.top_p[row] = config.top_p
            stream = UniformStream(request.seed)
            self.streams[row] = stream
            self.uniforms[row] = stream.block()
            self.uniform_pos[row] = 0
        self.size += len(rows)
        return rows

    def remove(self, row: int) -> int | None:
        """Free a row; the last live row moves into it. Returns the moved row's old index."""
        last = self.size - 1
        if not 0 <= row <= last:
            raise IndexError(f"row {row} is not live")
        moved = None
        if row != last:
            self.state.move(last, row)
            for array in (
                self.temperature,
                self.top_k,
                self.top_p,
                self.uniforms,
                self.uniform_pos,
            ):
                array[row] = array[last]
            self.streams[row] = self.streams[last]
            moved = last
        self.streams[last] = None
        self.size -= 1
        return moved

    def sample(self) -> np.ndarray:
        """Draw the next character of every live row: → ids (n,) int64."""
        n = self.size
        sample_rows(n, self.state.logits(n), *self._sampling(), self._ids)
        self._refill_uniforms()
        return self._ids[:n].copy()

    def step(self) -> np.ndarray:
        """sample() then advance() with the characters drawn: → ids (n,). On the CPU kernel
        both run in one compiled call per thread."""
        n = self.size
        self.state.sample_and_advance(n, self._sampling(), self._ids)
        self._refill_uniforms()
        return self._ids[:n].copy()

    def _sampling(self) -> Sampling:
        return self.temperature, self.top_k, self.top_p, self.uniforms, self.uniform_pos

    def _refill_uniforms(self) -> None:
        for row in np.flatnonzero(self.uniform_pos[: self.size] == UNIFORM_BLOCK).tolist():
            self.uniforms[row] = self.streams[row].block()
            self.uniform_pos[row] = 0

    def advance(self, ids: np.ndarray) -> None:
        """Feed each live row its sampled character: ids (n,) → new logits."""
        self.state.advance(self.size, ids)


def generate(
    model: CharRNN, vocab: Vocabulary, prime: str, config: SamplingConfig
) -> Iterator[str]:
    """Yield `config.length` characters continuing `prime`, one at a time.

    The prime runs through the network first; then each sampled character is fed back with
    the carried hidden state. This is the service's batched decoder with a
    single row, so the same seed gives the same text here and from the service.
    """
    decoder = BatchDecoder(model, capacity=1)
    decoder.add(prime_ids(vocab, prime, config.skip_unknown), config, resolve_seed(config.seed))
    for _ in range(config.length):
        next_id = decoder.sample()
        yield vocab.chars[int(next_id[0])]
        decoder.advance(next_id)
