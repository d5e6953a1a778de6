"""The two streaming passes of `prepare` over the text chunks: count every code point,
then encode each chunk to ids and append it to train.bin and, past the split, val.bin.
Memory is bounded by the chunk size, whatever the corpus size."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from training.errors import DataError
from training.vocab_choice import CODE_POINTS

Advance = Callable[[int], object]  # a progress bar's update(bytes read)


def code_points(text: str) -> np.ndarray:
    """(len(text),) uint32 code points, without a Python loop over characters."""
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


def count_code_points(chunks: Iterable[tuple[str, int]], advance: Advance) -> np.ndarray:
    """Pass 1: (0x110000,) int64 occurrences of every code point in the text."""
    counts = np.zeros(CODE_POINTS, dtype=np.int64)
    for text, nbytes in chunks:
        # bincount's output reaches only the chunk's largest code point: add that prefix.
        chunk_counts = np.bincount(code_points(text))
        counts[: len(chunk_counts)] += chunk_counts
        advance(nbytes)
    return counts


def write_ids(
    chunks: Iterable[tuple[str, int]],
    table: np.ndarray,
    train_size: int,
    total: int,
    name: str,
    out_dir: Path,
    advance: Advance,
) -> None:
    """Pass 2: encode every chunk through `table` (code point → id) and append the first
    `train_size` ids to out_dir/train.bin, the rest to out_dir/val.bin. Raises DataError
    when the text no longer holds `total` characters (it changed since pass 1)."""
    train_left = train_size
    written = 0
    with (out_dir / "train.bin").open("wb") as train, (out_dir / "val.bin").open("wb") as val:
        for text, nbytes in chunks:
            ids = table[code_points(text)]  # (len(text),) ids in the on-disk dtype
            head = ids[:train_left]
            train.write(head.data)
            val.write(ids[len(head) :].data)
            train_left -= len(head)
            written += len(ids)
            advance(nbytes)
        if written != total:
            raise DataError(f"{name}: the input changed while it was being prepared")
        for file in (train, val):
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes the directory visible
