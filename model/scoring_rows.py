"""Several texts scored together: each reads its next slice in one batched pass per layer,
as the decoder steps its generation rows together (model/scoring.py scores one text).

    weights = step_weights(model)                 # once per model, shared by every scorer
    scorers = [Scorer(model, ids, top_n, weights=weights) for ids in texts]
    while any(not s.done for s in scorers):
        read_rows([s for s in scorers if not s.done], weights, 1024)

One pass over B texts, slice length T (the longest left; shorter ones drop out early):

    layer 0:    pre[t, b] = input_table[ids_b[t]]            (T, B, 4H), a lookup
                for t: rows b with t < len_b step together  (h, c: (B, H))
    layer l>0:  pre = below · W_ihᵀ + bias                   (T·B rows at once)
                the same recurrence
    head:       each text's outputs (len_b, H) → logits (len_b, V) → its log-probabilities

Every product is the decoding step's fixed chain per row (model/decoding/step.py), so a
text's numbers are the same scored alone or beside others, bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from numba import njit

from model.decoding.step import StepWeights, cell_rows, multiply_rows
from model.fast_math import JIT
from model.network import CharRNN


class ScoredText(Protocol):
    """What read_rows needs of a text being scored (model/scoring.py's Scorer)."""

    ids: np.ndarray  # (N,) the text's ids
    model: CharRNN
    hidden_state: tuple[np.ndarray, np.ndarray]  # h and c (L, 1, H), read and written

    def claim_slice(self, max_chars: int) -> tuple[int, int]: ...

    def record_logits(self, start: int, logits: torch.Tensor) -> None: ...


@njit(**JIT)
def lstm_rows_sequence(pre, counts, panels, h, c, out):
    """One LSTM layer over a sequence, several streams: pre (T, B, 4H) the input products
    (and both biases), counts (T,) how many streams (a prefix: the longest first) read
    step t, panels W_hhᵀ (pack_panels), h and c (B, H) the states (updated in place), out
    (T, B, H) the outputs (rows past counts[t] untouched)."""
    batch = pre.shape[1]
    gates = np.empty((batch, pre.shape[2]), np.float32)
    for t in range(pre.shape[0]):
        rows = np.arange(counts[t])
        gates[: counts[t]] = pre[t, : counts[t]]
        multiply_rows(h, rows, panels, gates)
        cell_rows(rows, gates, h, c)
        out[t, : counts[t]] = h[: counts[t]]


@njit(**JIT)
def _input_products(below, counts, panels, bias, pre):
    """pre[t, b] = bias + below[t, b] · W for the rows that read step t; below (T, B, H),
    pre (T, B, 4H)."""
    for t in range(below.shape[0]):
        rows = np.arange(counts[t])
        pre[t, : counts[t]] = bias
        multiply_rows(below[t], rows, panels, pre[t])


# torch's CPU Linear takes another kernel for fewer rows, whose sums round differently
# (measured with torch 2.13: rows of 1 to 3 differ in the last bits from the same rows
# among more; 4 and up agree).
HEAD_MIN_ROWS = 4


@torch.no_grad()
def head_logits(model: CharRNN, rows: torch.Tensor) -> torch.Tensor:
    """The output layer on `rows` (T, H) → logits (T, V), each row's bits the same however
    many rows come with it, so a text's scores do not depend on how it was sliced: a slice
    of fewer than HEAD_MIN_ROWS is padded with zero rows."""
    count = len(rows)
    if count >= HEAD_MIN_ROWS:
        return model.head(rows)
    padded = rows.new_zeros((HEAD_MIN_ROWS, rows.shape[1]))
    padded[:count] = rows
    return model.head(padded)[:count]


@torch.no_grad()
def read_rows(scorers: Sequence[ScoredText], weights: StepWeights, max_chars: int) -> int:
    """Each scorer (made with these shared `weights`) reads up to `max_chars` more
    characters, all in one batched pass; → the characters read, all texts together."""
    slices = [(scorer, *scorer.claim_slice(max_chars)) for scorer in scorers]
    slices = [item for item in slices if item[2] > item[1]]
    if not slices:
        return 0
    slices.sort(key=lambda item: item[1] - item[2])  # the longest first: a prefix reads
    lengths = np.array([end - start for _, start, end in slices])
    steps, batch = int(lengths[0]), len(slices)
    counts = (lengths[None, :] > np.arange(steps)[:, None]).sum(axis=1)  # (T,)
    table, recurrent0, upper_input, upper_recurrent, upper_bias = weights[:5]
    layers = 1 + len(upper_bias)
    hidden = recurrent0.shape[1]
    h = np.stack([scorer.hidden_state[0][:, 0] for scorer, _, _ in slices], axis=1)  # (L, B, H)
    c = np.stack([scorer.hidden_state[1][:, 0] for scorer, _, _ in slices], axis=1)
    pre = np.zeros((steps, batch, 4 * hidden), np.float32)  # (T, B, 4H)
    for b, (scorer, start, end) in enumerate(slices):
        pre[: end - start, b] = table[scorer.ids[start:end]]
    below = np.zeros((steps, batch, hidden), np.float32)  # (T, B, H)
    lstm_rows_sequence(pre, counts, recurrent0, h[0], c[0], below)
    for layer in range(1, layers):
        _input_products(below, counts, upper_input[layer - 1], upper_bias[layer - 1], pre)
        out = np.zeros_like(below)
        lstm_rows_sequence(pre, counts, upper_recurrent[layer - 1], h[layer], c[layer], out)
        below = out
    for b, (scorer, start, end) in enumerate(slices):
        scorer.hidden_state[0][:, 0] = h[:, b]
        scorer.hidden_state[1][:, 0] = c[:, b]
        top = torch.from_numpy(np.ascontiguousarray(below[: end - start, b]))  # (T_b, H)
        scorer.record_logits(start, head_logits(scorer.model, top))  # (T_b, V)
    return int(lengths.sum())
