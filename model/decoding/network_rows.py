"""The network state of a decoder's rows, and how it advances: one backend per decoder,
chosen once when the decoder is built.

- KernelRows: the CPU path for float32 LSTMs. State in numpy, steps in the compiled kernel
  (model/decoding/step.py: GIL released, row-invariant by construction, no padding: one
  stream costs one row), the sampler fused into the same compiled call.
- TorchRows: any device and cell (cuDNN on GPUs), through the network's own forward.
  Steps are padded to a multiple of MIN_ROWS rows: MKL gives a row of a product the same
  bits in steps of 8, 16, 24, ... rows, but not below 8 nor in the tail rows of 9 to 11.
  Sampling is the same compiled chain, on a CPU copy of the rows' logits (B × V a step).

Rows are slots addressed by index, in any order; a step takes the rows it advances.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit

from model.decoding.sampler import sample_rows
from model.decoding.sampler_rows import SamplerRows, StepBlock
from model.decoding.step import ROWS, lstm_rows_step, step_weights
from model.fast_math import JIT
from model.network import CharRNN

MIN_ROWS = 8
ROWS_PER_THREAD = 8  # fewer rows than this per thread: not worth a hand-off
Automata = tuple[np.ndarray, np.ndarray, np.ndarray]  # model/decoding/automaton.py's pool


@dataclass(frozen=True)
class RowSnapshot:
    """One row's network state and next-character logits, as a copy (the prime cache)."""

    state: tuple[np.ndarray | torch.Tensor, ...]  # each (L, H)
    logits: np.ndarray | torch.Tensor  # (V,)

    @property
    def nbytes(self) -> int:
        arrays = (*self.state, self.logits)
        return sum(array.nbytes for array in arrays)  # numpy arrays and tensors alike


def kernel_supported(model: CharRNN) -> bool:
    weight = model.head.weight
    return (
        model.config.cell == "lstm"
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
    )


@njit(**JIT)
def keep_step(k, rows, out, block):
    """Copy step k's sampler outputs (out) for `rows` into the block; they took k + 1 steps."""
    ids, status, held, records, counts = block
    for i in range(rows.shape[0]):
        r = rows[i]
        ids[k, r] = out[0][r]
        status[k, r] = out[1][r]
        held[k, r] = out[2][r]
        for j in range(records.shape[2]):
            records[k, r, j] = out[3][r, j]
        counts[r] = k + 1


@njit(**JIT)
def _sample_and_step(rows, settings, state, automata, out, block, weights, h, c, gates, logits):
    """Up to block-steps draws for each row, each fed back, until the row ends."""
    for k in range(block[0].shape[0]):
        if rows.shape[0] == 0:
            break
        running = sample_rows(rows, logits, settings, state, automata, out)
        keep_step(k, rows, out, block)
        lstm_rows_step(running, out[0][running], weights, h, c, gates, logits)
        rows = running


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
        self._weights = step_weights(model)
        self.h = np.zeros((config.num_layers, capacity, config.hidden_size), np.float32)
        self.c = np.zeros_like(self.h)
        self.gates = np.zeros((capacity, 4 * config.hidden_size), np.float32)
        self.logits = np.zeros((capacity, config.vocab_size), np.float32)
        self.threads = threads
        # Its idle threads end when the pool is garbage-collected with these rows.
        self._pool = ThreadPoolExecutor(threads - 1, "decoder") if threads > 1 else None
        # Compile now (or load the compiled code from numba's cache), not on a first request.
        none = np.zeros(0, np.int64)
        self.advance(none, none)

    def _in_parts(self, rows: np.ndarray, work: Callable[[np.ndarray], object]) -> list:
        """work(a part of rows) for each part of `rows`, the parts at once; → the results."""
        count = len(rows)
        parts = min(self.threads, count // ROWS_PER_THREAD)
        if parts < 2:
            return [work(rows)]
        # Parts of whole 4-row blocks (the kernel's tile), so only the last has a remainder.
        bounds = [min(count, -(-count * part // parts // ROWS) * ROWS) for part in range(parts)]
        bounds.append(count)
        assert self._pool is not None
        first, *others = itertools.pairwise(bounds)
        helpers = [self._pool.submit(work, rows[start:end]) for start, end in others]
        return [work(rows[first[0] : first[1]]), *(helper.result() for helper in helpers)]

    def reset(self, row: int) -> None:
        self.h[:, row] = 0.0
        self.c[:, row] = 0.0

    def advance(self, rows: np.ndarray, ids: np.ndarray) -> None:
        """Feed each of rows (m,) its character ids (m,) → their next logits."""

        def work(part: np.ndarray) -> None:
            lstm_rows_step(
                rows[part], ids[part], self._weights, self.h, self.c, self.gates, self.logits
            )

        self._in_parts(np.arange(len(rows)), work)

    def sample_and_advance(
        self,
        rows: np.ndarray,
        sampler: SamplerRows,
        automata: Automata,
        block: StepBlock,
        split: bool = True,
    ) -> None:
        """Up to block.steps times: draw each row's next character, then advance the rows
        still running with it; the outputs of each step go to `block`. One compiled call
        per thread (one call on the calling thread with split False: the caller runs
        several decoders side by side instead): a row's steps never wait for another's."""

        def work(part: np.ndarray) -> None:
            _sample_and_step(
                part, sampler.settings, sampler.state, automata, sampler.out, block.arrays,
                self._weights, self.h, self.c, self.gates, self.logits,
            )  # fmt: skip

        if not split:
            work(rows)
        else:
            self._in_parts(rows, work)

    def snapshot(self, row: int) -> RowSnapshot:
        return RowSnapshot((self.h[:, row].copy(), self.c[:, row].copy()), self.logits[row].copy())

    def restore(self, row: int, snapshot: RowSnapshot) -> None:
        self.h[:, row], self.c[:, row] = snapshot.state
        self.logits[row] = snapshot.logits


class TorchRows:
    """Rows stepped by the network's forward on its device (GPU, or cells the kernel lacks)."""

    def __init__(self, model: CharRNN, capacity: int):
        self.model = model.eval()
        self.device = model.head.weight.device
        self.hidden = model.init_hidden(capacity, self.device)  # each (L, R, H)
        self.logits = np.zeros((capacity, model.config.vocab_size), np.float32)  # CPU copy

    def reset(self, row: int) -> None:
        for buffer in self.hidden:
            buffer[:, row] = 0.0

    @torch.no_grad()
    def advance(self, rows: np.ndarray, ids: np.ndarray) -> None:
        if len(rows) == 0:
            return
        padded = -(-len(rows) // MIN_ROWS) * MIN_ROWS  # a multiple of MIN_ROWS
        index = torch.zeros(padded, dtype=torch.long, device=self.device)
        index[: len(rows)] = torch.from_numpy(np.asarray(rows, np.int64))
        step_ids = torch.zeros(padded, 1, dtype=torch.long, device=self.device)
        step_ids[: len(rows), 0] = torch.from_numpy(np.asarray(ids, np.int64))
        hidden = tuple(buffer[:, index] for buffer in self.hidden)  # (L, padded, H)
        logits, hidden = self.model(step_ids, hidden)  # (padded, 1, V)
        live = index[: len(rows)]
        for buffer, state in zip(self.hidden, hidden, strict=True):
            buffer[:, live] = state[:, : len(rows)]
        self.logits[rows] = logits[: len(rows), 0].float().cpu().numpy()

    def sample_and_advance(
        self,
        rows: np.ndarray,
        sampler: SamplerRows,
        automata: Automata,
        block: StepBlock,
        split: bool = True,
    ) -> None:
        for k in range(block.steps):
            if len(rows) == 0:
                break
            running = sample_rows(
                rows, self.logits, sampler.settings, sampler.state, automata, sampler.out
            )
            keep_step(k, rows, sampler.out, block.arrays)
            self.advance(running, sampler.ids[running])
            rows = running

    def snapshot(self, row: int) -> RowSnapshot:
        state = tuple(buffer[:, row].clone() for buffer in self.hidden)
        return RowSnapshot(state, self.logits[row].copy())

    def restore(self, row: int, snapshot: RowSnapshot) -> None:
        for buffer, state in zip(self.hidden, snapshot.state, strict=True):
            buffer[:, row] = state
        self.logits[row] = snapshot.logits
