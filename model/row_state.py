"""The network state of a batch of decoding rows, and how it advances one character.

Two interchangeable backends, both exact per row (a row's numbers do not depend on which
other rows share its step):

- KernelRows: the CPU path for LSTMs. State in numpy, steps in model/kernels.py (compiled,
  GIL released, row-invariant by construction, no padding: one stream costs one row).
- TorchRows: any device and cell (cuDNN on GPUs). GEMMs are padded to MIN_ROWS rows, as
  MKL computes each row of a product bit-identically only from M = 8; primes run one
  request at a time, so a prime's batch has one shape whoever else is waiting.

Rows are addressed by index; the caller (model/decoder.py) keeps live rows dense.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from model.kernels import lstm_rows_step, sample_and_step, sample_rows
from model.network import CharRNN
from model.stepper import Stepper

MIN_ROWS = 8
ROWS_PER_THREAD = 8  # fewer rows than this per thread: not worth a hand-off
# Each row's sampling settings and random numbers, as model/kernels.py's sample_rows takes
# them: temperature, top_k, top_p, uniforms, positions.
Sampling = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class RowState(Protocol):
    def prime(self, rows: list[int], primes: list[list[int]]) -> None:
        """Start each row from a zero state and run its prime; leaves its next logits."""

    def advance(self, count: int, ids: np.ndarray) -> None:
        """Feed rows [0, count) their characters ids (count,) → new logits."""

    def move(self, source: int, target: int) -> None:
        """Copy a row's state and logits into another row."""

    def logits(self, count: int) -> np.ndarray:
        """Next-character logits of rows [0, count): (count, V) float32 on the CPU."""

    def sample_and_advance(self, count: int, sampling: Sampling, out: np.ndarray) -> None:
        """Draw each of rows [0, count)'s next character into out (R,) with the compiled
        sampler (model/kernels.py: sample_rows), then advance the rows with them."""


def kernel_supported(model: CharRNN) -> bool:
    weight = model.head.weight
    return (
        model.config.cell == "lstm"
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
    )


class KernelRows:
    """LSTM rows on the CPU, stepped by the compiled kernel.

    threads > 1 splits a step's rows into that many parts (of at least ROWS_PER_THREAD
    rows), run at once on a small thread pool: the kernel releases the GIL, and a row's
    numbers do not depend on which part it is in.
    """

    def __init__(self, model: CharRNN, capacity: int, threads: int = 1):
        if not kernel_supported(model):
            raise ValueError("the CPU kernel runs float32 LSTMs on the CPU only")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        config = model.config
        layers, hidden, vocab = config.num_layers, config.hidden_size, config.vocab_size

        def array(tensor: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(tensor.detach().numpy(), dtype=np.float32)

        gate_width = 4 * hidden
        upper_input = np.zeros((layers - 1, hidden, gate_width), np.float32)
        upper_recurrent = np.zeros_like(upper_input)
        upper_bias = np.zeros((layers - 1, gate_width), np.float32)
        with torch.no_grad():
            weight_hh = model.layer_weights(0)[1]
            for index in range(layers - 1):
                w_ih, w_hh, b_ih, b_hh = model.layer_weights(index + 1)
                upper_input[index] = array(w_ih.t())
                upper_recurrent[index] = array(w_hh.t())
                upper_bias[index] = array(b_ih + b_hh)
            # The kernels' weights argument, in their order (model/kernels.py).
            self._weights = (
                array(model.input_table()),  # (V, 4H): the one-hot product
                array(weight_hh.t()),  # (H, 4H)
                upper_input,
                upper_recurrent,
                upper_bias,
                array(model.head.weight.t()),  # (H, V)
                array(model.head.bias),
            )
        rows = capacity
        self.h = np.zeros((layers, rows, hidden), np.float32)
        self.c = np.zeros_like(self.h)
        self.gates = np.zeros((rows, gate_width), np.float32)
        self._logits = np.zeros((rows, vocab), np.float32)
        self._buffers = (self.h, self.c, self.gates, self._logits)  # updated in place
        self._all_rows = np.arange(capacity, dtype=np.int64)
        self.threads = threads
        # Its idle threads end when the pool is garbage-collected with these rows.
        self._pool = ThreadPoolExecutor(threads - 1, "decoder") if threads > 1 else None
        # Compile now (or load the compiled code from numba's cache), not on a first request.
        self._step(self._all_rows[:0], self._all_rows[:0])

    def _in_parts(self, rows: np.ndarray, work: Callable[[np.ndarray], None]) -> None:
        """work(a part of rows) for each part of `rows`, the parts at once."""
        count = len(rows)
        parts = min(self.threads, count // ROWS_PER_THREAD)
        if parts < 2:
            work(rows)
            return
        bounds = [count * part // parts for part in range(parts + 1)]
        assert self._pool is not None
        first, *others = itertools.pairwise(bounds)
        helpers = [self._pool.submit(work, rows[start:end]) for start, end in others]
        work(rows[first[0] : first[1]])
        for helper in helpers:
            helper.result()

    def _step(self, rows: np.ndarray, ids: np.ndarray) -> None:
        def work(positions: np.ndarray) -> None:  # a part of rows, and their ids
            lstm_rows_step(rows[positions], ids[positions], self._weights, *self._buffers)

        self._in_parts(np.arange(len(rows)), work)

    def sample_and_advance(self, count: int, sampling: Sampling, out: np.ndarray) -> None:
        # Both in one compiled call per thread.
        def work(rows: np.ndarray) -> None:
            sample_and_step(rows, *sampling, out, self._weights, *self._buffers)

        self._in_parts(self._all_rows[:count], work)

    def prime(self, rows: list[int], primes: list[list[int]]) -> None:
        # All primes advance together, one character per step; a row drops out when its
        # prime ends, leaving its logits in place.
        self.h[:, rows] = 0.0
        self.c[:, rows] = 0.0
        for t in range(max(len(prime) for prime in primes)):
            active = [i for i, prime in enumerate(primes) if t < len(prime)]
            self._step(
                np.array([rows[i] for i in active], dtype=np.int64),
                np.array([primes[i][t] for i in active], dtype=np.int64),
            )

    def advance(self, count: int, ids: np.ndarray) -> None:
        self._step(self._all_rows[:count], np.ascontiguousarray(ids[:count], dtype=np.int64))

    def move(self, source: int, target: int) -> None:
        self.h[:, target] = self.h[:, source]
        self.c[:, target] = self.c[:, source]
        self._logits[target] = self._logits[source]

    def logits(self, count: int) -> np.ndarray:
        return self._logits[:count]


class TorchRows:
    """Rows stepped by torch on the model's device (GPU, or cells the kernel lacks)."""

    def __init__(self, model: CharRNN, capacity: int):
        self.stepper = Stepper(model)
        self.device = model.head.weight.device
        rows = max(capacity, MIN_ROWS)
        self.hidden = model.init_hidden(rows, self.device)  # each (L, rows, H)
        self._logits = torch.zeros(rows, model.config.vocab_size, device=self.device)

    @torch.no_grad()
    def prime(self, rows: list[int], primes: list[list[int]]) -> None:
        for row, prime in zip(rows, primes, strict=True):
            ids = torch.tensor([prime], dtype=torch.long, device=self.device)  # (1, T)
            logits, hidden = self.stepper.prime(ids)  # (1, V)
            for buffer, state in zip(self.hidden, hidden, strict=True):
                buffer[:, row] = state[:, 0]
            self._logits[row] = logits[0]

    @torch.no_grad()
    def advance(self, count: int, ids: np.ndarray) -> None:
        padded = max(count, MIN_ROWS)
        step_ids = torch.zeros(padded, dtype=torch.long)
        step_ids[:count] = torch.from_numpy(np.asarray(ids[:count], dtype=np.int64))
        hidden = tuple(buffer[:, :padded] for buffer in self.hidden)
        logits, _ = self.stepper.step(step_ids.to(self.device), hidden)
        self._logits[:padded] = logits

    def move(self, source: int, target: int) -> None:
        for buffer in self.hidden:
            buffer[:, target] = buffer[:, source]
        self._logits[target] = self._logits[source]

    def logits(self, count: int) -> np.ndarray:
        return self._logits[:count].float().cpu().numpy()

    def sample_and_advance(self, count: int, sampling: Sampling, out: np.ndarray) -> None:
        sample_rows(count, self.logits(count), *sampling, out)
        self.advance(count, out[:count])
