"""Which characters get an id: the vocabulary `prepare` chooses from pass 1's counts, its
cut to `--max-vocab`/`--min-count`, and the code point → id table pass 2 encodes with.

A cut maps the characters it leaves out to the unknown symbol U+FFFD. A document
separator (see training.documents) is always kept, however rare: it marks where every
document starts, and the service stops a sample at it.
"""

from __future__ import annotations

import numpy as np

from model.vocab import Vocabulary
from training.errors import DataError

UNKNOWN = "\ufffd"  # stands in for characters cut from the vocabulary
CODE_POINTS = 0x110000  # every Unicode code point: the size of the count and id tables


def choose_vocabulary(
    counts: np.ndarray,
    name: str,
    max_vocab: int | None = None,
    min_count: int = 1,
    separator: str | None = None,
) -> tuple[Vocabulary, int]:
    """The vocabulary for `counts` ((0x110000,) occurrences by code point) and how many
    characters of the text its cut maps to the unknown symbol (0 without a cut).
    `separator`, when given, must occur in the counts and is kept whatever the limits.
    Raises DataError when the limits leave no character."""
    present = np.flatnonzero(counts)  # code points in the text, ascending
    kept = present[counts[present] >= min_count]
    over = max_vocab is not None and len(kept) > max_vocab
    must_keep = [] if separator is None else [ord(separator)]
    if len(kept) == len(present) and not over:
        return Vocabulary(tuple(map(chr, present)), separator=separator), 0
    unknown_point = ord(UNKNOWN)
    # U+FFFD in the text stays, as the unknown symbol; the separator is added back below.
    kept = kept[~np.isin(kept, [unknown_point, *must_keep])]
    budget = None if max_vocab is None else max_vocab - 1 - len(must_keep)
    if budget is not None and len(kept) > budget:
        # The most frequent first, ties by code point so the cut is deterministic.
        order = np.lexsort((kept, -counts[kept]))
        kept = np.sort(kept[order[: max(budget, 0)]])
    if len(kept) == 0:
        limits = f"min_count {min_count}" + (f" with max_vocab {max_vocab}" if max_vocab else "")
        raise DataError(f"{name}: {limits} leaves no character in the vocabulary")
    mapped = int(counts.sum() - counts[kept].sum() - counts[unknown_point])
    mapped -= int(counts[must_keep].sum())
    chars = tuple(map(chr, sorted([*kept.tolist(), *must_keep, unknown_point])))
    return Vocabulary(chars, unknown=UNKNOWN, separator=separator), mapped


def id_table(vocab: Vocabulary, dtype: np.dtype) -> np.ndarray:
    """(0x110000,) ids by code point; every code point left out maps to the unknown id."""
    table = np.zeros(CODE_POINTS, dtype=dtype)
    if vocab.unknown is not None:
        table[:] = vocab.chars.index(vocab.unknown)
    table[[ord(c) for c in vocab.chars]] = np.arange(len(vocab), dtype=dtype)
    return table
