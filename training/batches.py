"""Batches for a stateful RNN: the id stream laid out in columns, read window by window.

The stream is cut into `batch_size` contiguous columns of L predictions each, and a batch is
the next `seq_len` ids of every column. Row b of batch k+1 therefore continues row b of
batch k exactly, which is what lets training carry the hidden state from one batch to the
next (truncated backpropagation through time, as pytorch/examples' word_language_model).
Neighbouring columns share one id: the last target of column b is the first input of
column b+1, so every id but the first is a target exactly once.

    ids  a b c d e f g h i j k l m n o p q r s t u v w x y      N = 25, B = 3, T = 4
         L = (N - 1) // B = 8 predictions per column, L // T = 2 windows

    column 0   a b c d e f g h i
    column 1                   i j k l m n o p q
    column 2                                   q r s t u v w x y

                  batch 0                    batch 1
    inputs     [a b c d]  targets [b c d e]    [e f g h]  targets [f g h i]
               [i j k l]          [j k l m]    [m n o p]          [n o p q]
               [q r s t]          [r s t u]    [u v w x]          [v w x y]

The ids stay where they are (a read-only memmap is fine): each window reads only its own
(B, T + 1) slice and converts that to int64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided
from torch import Tensor


class ColumnBatches:
    """The windows of one split in the column layout above; `window(k)` is batch k."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, drop_last: bool = True):
        """`drop_last`: leave out a final window shorter than `seq_len` (training, so every
        step has the same shape); keep it for evaluation, so every prediction is scored."""
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be ≥ 1, got {batch_size}, {seq_len}")
        if ids.ndim != 1:
            raise ValueError(f"ids must be one-dimensional, got shape {ids.shape}")
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.column_len = (len(ids) - 1) // batch_size  # L: predictions per column
        needed = batch_size * seq_len + 1 if drop_last else batch_size + 1
        if self.column_len < 1 or (drop_last and self.column_len < seq_len):
            raise ValueError(
                f"{len(ids):,} characters are too few for batch_size {batch_size} and seq_len "
                f"{seq_len}: one batch needs {needed:,}"
            )
        whole, rest = divmod(self.column_len, seq_len)
        self.num_batches = whole + (1 if rest and not drop_last else 0)
        # (B, L + 1) view of the stream, row b starting at b·L: nothing is read here.
        stride = ids.strides[0]
        self._columns = as_strided(
            ids,
            shape=(batch_size, self.column_len + 1),
            strides=(self.column_len * stride, stride),
            writeable=False,
        )

    def __len__(self) -> int:
        return self.num_batches

    @property
    def predictions(self) -> int:
        """Targets in one pass over all windows: B·L, or B·T·num_batches with drop_last."""
        return self.batch_size * min(self.column_len, self.num_batches * self.seq_len)

    def window(self, index: int) -> tuple[Tensor, Tensor]:
        """Batch `index`: inputs (B, T) and targets (B, T), int64, targets shifted by one."""
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range [0, {self.num_batches})")
        start = index * self.seq_len
        stop = min(start + self.seq_len, self.column_len)
        block = torch.from_numpy(np.array(self._columns[:, start : stop + 1], dtype=np.int64))
        return block[:, :-1], block[:, 1:]  # (B, T) each


def validation_batches(ids: np.ndarray, batch_size: int, seq_len: int) -> ColumnBatches:
    """The held-out split in the same layout, keeping the short last window. Fewer columns
    than `batch_size` when the split is small, so each column holds at least one full
    window: every column starts from a zero state, and short columns would score mostly
    cold-start predictions."""
    if len(ids) < 2:
        raise ValueError(f"{len(ids)} characters are too few: at least 2 are needed")
    columns = min(batch_size, max(1, (len(ids) - 1) // seq_len))
    return ColumnBatches(ids, columns, seq_len, drop_last=False)


def split_batches(
    train: np.ndarray, val: np.ndarray, batch_size: int, seq_len: int
) -> tuple[ColumnBatches, ColumnBatches]:
    """Training and validation batches of a prepared corpus's two splits. Raises ValueError
    naming the split that is too small."""
    try:
        train_batches = ColumnBatches(train, batch_size, seq_len)
    except ValueError as error:
        raise ValueError(f"training split: {error}") from None
    try:
        return train_batches, validation_batches(val, batch_size, seq_len)
    except ValueError as error:
        raise ValueError(f"validation split: {error}") from None


@dataclass(frozen=True)
class BatchPosition:
    """Where training is in the data: the batch to run next. Saved for an exact resume."""

    epoch: int = 0  # completed passes over the training columns
    batch: int = 0  # index of the next window within this epoch

    def __post_init__(self) -> None:
        if self.epoch < 0 or self.batch < 0:
            raise ValueError(f"a batch position cannot be negative: {self}")

    def advance(self, num_batches: int) -> BatchPosition:
        """The position after running this batch; the last one rolls over to a new epoch."""
        if self.batch + 1 >= num_batches:
            return BatchPosition(self.epoch + 1, 0)
        return BatchPosition(self.epoch, self.batch + 1)

    def fraction(self, num_batches: int) -> float:
        """Epochs done, counting the partial one: 1.5 is halfway through the second."""
        return self.epoch + self.batch / num_batches

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    @classmethod
    def from_json(cls, data: dict) -> BatchPosition:
        return cls(int(data["epoch"]), int(data["batch"]))
