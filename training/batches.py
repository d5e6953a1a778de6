"""Pipeline stage 3, ids → batches for a stateful RNN: the id stream laid out in columns,
read window by window.

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
(B, T + 1) slice and converts that to int64. A memmap of a whole file is read with pread,
one small read per column, not through its mapping: on a fault the kernel maps whole
page-cache folios into the process (up to 2 MB each on ext4 with large folios), so reading
64 columns of a 200 MB file through the mapping added ~130 MB to the process's RSS, and a
pass over an epoch would map the whole file. With pread the RSS does not grow with the
corpus (benchmarks/train_memory.py); the page cache still serves the reads.
"""

from __future__ import annotations

import copy
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided
from torch import Tensor


class ColumnBatches:
    """The windows of one split in the column layout above; `window(k)` is batch k."""

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        drop_last: bool = True,
        id_map: np.ndarray | None = None,
    ):
        """`drop_last`: leave out a final window shorter than `seq_len` (training, so every
        step has the same shape); keep it for evaluation, so every prediction is scored.
        `id_map`: (V_data,) the model's id of each stored id, when the model's vocabulary
        is not the data's own (fine-tuning: training.finetune.merge_vocabularies)."""
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be ≥ 1, got {batch_size}, {seq_len}")
        if ids.ndim != 1:
            raise ValueError(f"ids must be one-dimensional, got shape {ids.shape}")
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.id_map = id_map
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

        self._first_column = 0  # of the layout: a share (`columns`) starts further on
        # (path, byte offset of id 0) when the ids are a whole file's memmap; None: in memory
        whole_file = isinstance(ids, np.memmap) and isinstance(ids.base, mmap.mmap)
        self._file = (Path(ids.filename), ids.offset) if whole_file else None
        if not hasattr(os, "preadv"):  # not on Windows: read through the mapping there
            self._file = None

    def __len__(self) -> int:
        return self.num_batches

    @property
    def predictions(self) -> int:
        """Targets in one pass over all windows: B·L, or B·T·num_batches with drop_last."""
        return self.batch_size * min(self.column_len, self.num_batches * self.seq_len)

    def window(self, index: int, pin_memory: bool = False) -> tuple[Tensor, Tensor]:
        """Batch `index`: inputs (B, T) and targets (B, T), int64, targets shifted by one.
        `pin_memory`: in page-locked memory, so a copy to a CUDA device can be asynchronous
        (needs CUDA)."""
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch {index} out of range [0, {self.num_batches})")
        start = index * self.seq_len
        stop = min(start + self.seq_len, self.column_len)
        rows = self._read(start, stop + 1)  # (B, T + 1) ids in the stored dtype
        block = torch.empty(rows.shape, dtype=torch.int64, pin_memory=pin_memory)
        # The one read and conversion, straight into the block.
        block.numpy()[...] = rows if self.id_map is None else self.id_map[rows]
        return block[:, :-1], block[:, 1:]  # (B, T) each

    def columns(self, part: slice) -> ColumnBatches:
        """The same windows restricted to the columns `part` (a data-parallel rank's share
        of the batch): window k of the result is rows `part` of window k."""
        kept = range(self.batch_size)[part]
        if kept.step != 1:
            raise ValueError(f"a share of the columns must be contiguous, got {part}")
        shard = copy.copy(self)
        shard._columns = self._columns[part]
        shard.batch_size = len(kept)
        shard._first_column = self._first_column + kept.start
        return shard

    def _read(self, start: int, stop: int) -> np.ndarray:
        """(B, stop - start) ids: positions [start, stop) of every column."""
        if self._file is None:
            return self._columns[:, start:stop]
        path, first_id = self._file
        rows = np.empty((self.batch_size, stop - start), dtype=self._columns.dtype)
        itemsize = rows.dtype.itemsize
        with path.open("rb", buffering=0) as file:
            for row in range(self.batch_size):
                column = self._first_column + row
                offset = first_id + (column * self.column_len + start) * itemsize
                if os.preadv(file.fileno(), [rows[row]], offset) != rows[row].nbytes:
                    raise OSError(f"{path}: shorter than its ids (changed while training?)")
        return rows


def validation_batches(
    ids: np.ndarray, batch_size: int, seq_len: int, id_map: np.ndarray | None = None
) -> ColumnBatches:
    """The held-out split in the same layout, keeping the short last window. Fewer columns
    than `batch_size` when the split is small, so each column holds at least one full
    window: every column starts from a zero state, and short columns would score mostly
    cold-start predictions."""
    if len(ids) < 2:
        raise ValueError(f"{len(ids)} characters are too few: at least 2 are needed")
    columns = min(batch_size, max(1, (len(ids) - 1) // seq_len))
    return ColumnBatches(ids, columns, seq_len, drop_last=False, id_map=id_map)


def split_batches(
    train: np.ndarray,
    val: np.ndarray,
    batch_size: int,
    seq_len: int,
    id_map: np.ndarray | None = None,
) -> tuple[ColumnBatches, ColumnBatches]:
    """Training and validation batches of a prepared corpus's two splits (`id_map`: see
    ColumnBatches). Raises ValueError naming the split that is too small."""
    try:
        train_batches = ColumnBatches(train, batch_size, seq_len, id_map=id_map)
    except ValueError as error:
        raise ValueError(f"training split: {error}") from None
    try:
        return train_batches, validation_batches(val, batch_size, seq_len, id_map)
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
