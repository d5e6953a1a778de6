"""The prepared-data directory, between `prepare` (pipeline stage 2) and batching (stage 3):
which characters get an id, the directory's files, writing it all at once, and loading it.

    train.bin   the first (1 - val_fraction) of the characters, as raw little-endian ids
    val.bin     the last val_fraction, contiguous (the end of the text, not a sample)
    meta.json   {"format": "charrnn-data", "version": 1, "vocab": ..., "dtype": "uint8", ...}

Ids are of the smallest unsigned type that fits the vocabulary (uint8 up to 256 characters),
read back with np.memmap so a corpus never needs to fit in memory.

The vocabulary is the text's characters sorted by code point. A cut (`--max-vocab`,
`--min-count`) maps the characters it leaves out to the unknown symbol U+FFFD. A document
separator (training.prepare) is always kept, however rare: it marks where every document
starts, and the service stops a sample at it.

A model fine-tuned on the data keeps its own vocabulary and appends the data's new
characters to it; the ids on disk stay the data's own (training.finetune).

The directory is written into a hidden temporary sibling that is renamed into place when
complete, so readers see the old directory or the new one, never a mix, and a failure
leaves nothing half-written behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.checkpoint_header import MAX_VOCAB_SIZE
from model.text import NEWLINE_MODES, NEWLINES_KEEP
from model.vocab import Vocabulary
from training.sources import DataError

FORMAT = "charrnn-data"
VERSION = 1
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
    Raises DataError when the limits leave no character, or when there is no max_vocab and
    the text has more characters than a checkpoint can hold."""
    present = np.flatnonzero(counts)  # code points in the text, ascending
    if max_vocab is None and len(present) > MAX_VOCAB_SIZE:
        raise DataError(
            f"{name}: {len(present):,} distinct characters; a checkpoint holds at most "
            f"{MAX_VOCAB_SIZE:,}: prepare with --max-vocab (rarer ones become U+FFFD)"
        )
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


@dataclass(frozen=True)
class PreparedMeta:
    """What meta.json records about a prepared-data directory."""

    vocab: Vocabulary
    train_size: int
    val_size: int
    corpus: str
    val_fraction: float
    unknown_count: int = 0
    """Characters of the text mapped to the unknown symbol by a vocabulary cut."""
    documents: str | None = None
    """How the text was cut into documents ("file", "line"), None when it was not."""
    document_count: int = 0
    """Documents in the text (separators written), 0 without documents."""
    newlines: str = NEWLINES_KEEP
    """"lf": CRLF and lone CR were turned into LF (model.text); "keep": as they were."""

    @property
    def source_chars(self) -> int:
        return self.train_size + self.val_size

    @property
    def dtype(self) -> np.dtype:
        """The ids' on-disk type: little-endian, whatever the machine."""
        return self.vocab.id_dtype.newbyteorder("<")

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "vocab": self.vocab.to_json(),
            "dtype": self.dtype.name,
            "train_size": self.train_size,
            "val_size": self.val_size,
            "corpus": self.corpus,
            "source_chars": self.source_chars,
            "val_fraction": self.val_fraction,
            "unknown_count": self.unknown_count,
            "documents": self.documents,
            "separator": self.vocab.separator,
            "document_count": self.document_count,
            "newlines": self.newlines,
        }

    @classmethod
    def from_json(cls, data: dict) -> PreparedMeta:
        """Raises ValueError, KeyError or TypeError for a malformed record."""
        meta = cls(
            vocab=Vocabulary.from_json(data["vocab"]),
            train_size=int(data["train_size"]),
            val_size=int(data["val_size"]),
            corpus=str(data["corpus"]),
            val_fraction=float(data["val_fraction"]),
            unknown_count=int(data.get("unknown_count", 0)),
            documents=data.get("documents"),
            document_count=int(data.get("document_count", 0)),
            # Data prepared before the mode was recorded kept its line endings.
            newlines=data.get("newlines", NEWLINES_KEEP),
        )
        if data["dtype"] != meta.dtype.name:
            raise ValueError(f"dtype {data['dtype']!r} does not fit the vocabulary")
        if min(meta.train_size, meta.val_size) < 0:
            raise ValueError("negative split size")
        if data.get("source_chars", meta.source_chars) != meta.source_chars:
            raise ValueError("source_chars is not train_size + val_size")
        if meta.newlines not in NEWLINE_MODES:
            raise ValueError(f"unknown newlines mode {meta.newlines!r}")
        if (meta.documents is None) != (meta.vocab.separator is None):
            raise ValueError("documents and the vocabulary's separator disagree")
        return meta


@dataclass(frozen=True)
class PreparedCorpus:
    """A loaded prepared-data directory. The id arrays are read-only memory maps."""

    train: np.ndarray  # (train_size,) ids
    val: np.ndarray  # (val_size,) ids
    vocab: Vocabulary
    meta: dict  # meta.json as written


def load_prepared(path: Path) -> PreparedCorpus:
    """Open a prepared-data directory. Raises DataError when it is missing, its meta.json is
    missing, garbled or of another format or version, or a .bin size disagrees with it."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not path.is_dir():
        raise DataError(f"{path}: no prepared-data directory there (run prepare first)")
    if not meta_path.is_file():
        raise DataError(f"{path}: no meta.json, so not a prepared-data directory")
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{meta_path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{meta_path}: not a {FORMAT} file")
    if data.get("version") != VERSION:
        raise DataError(
            f"{meta_path}: format version {data.get('version')!r} is not supported "
            f"(this code reads version {VERSION}); prepare the data again"
        )
    try:
        meta = PreparedMeta.from_json(data)
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{meta_path}: malformed ({type(error).__name__}: {error})") from None
    train = _map_ids(path / "train.bin", meta.train_size, meta.dtype)
    val = _map_ids(path / "val.bin", meta.val_size, meta.dtype)
    return PreparedCorpus(train=train, val=val, vocab=meta.vocab, meta=data)


def _is_prepared_dir(path: Path) -> bool:
    try:
        return json.loads((path / "meta.json").read_text(encoding="utf-8"))["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_replaceable(out_dir: Path) -> None:
    """Refuse to overwrite anything but nothing, an empty directory or prepared data."""
    if not out_dir.exists():
        return
    if out_dir.is_dir() and (not any(out_dir.iterdir()) or _is_prepared_dir(out_dir)):
        return
    raise DataError(f"{out_dir}: exists and is not a prepared-data directory; not replacing it")


@contextmanager
def atomic_directory(out_dir: Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to `out_dir`; on leaving the block without
    an error it replaces `out_dir` (which may exist), otherwise it is deleted."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling on the same file system, so the final rename is atomic; made with
    # os.mkdir (not mkdtemp's 0700) so the result gets the usual umask permissions.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, data: dict) -> None:
    """`data` as JSON, one top-level key a line (readable, and a long list stays on one
    line), flushed to disk before returning."""
    lines = (f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in data.items())
    with path.open("w", encoding="utf-8") as file:
        file.write("{\n" + ",\n".join(lines) + "\n}\n")
        file.flush()
        os.fsync(file.fileno())


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    # A directory cannot be renamed over a non-empty one: move the old one aside first.
    # A crash between the two renames leaves no out_dir, never a mix of old and new files.
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "data")
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _map_ids(path: Path, size: int, dtype: np.dtype) -> np.ndarray:
    """(size,) read-only ids memory-mapped from `path`, after checking its length."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    actual = path.stat().st_size
    if actual != size * dtype.itemsize:
        raise DataError(
            f"{path}: {actual:,} bytes, but meta.json says {size:,} ids of {dtype.name} "
            f"({size * dtype.itemsize:,} bytes); incomplete or from another run"
        )
    if size == 0:  # mmap cannot map an empty file
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", shape=(size,))
