"""Corpora of documents: `prepare --documents` (each input file is a document) and
`--doc-per-line` (each line is). The documents are joined into one text with a separator
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
"""

from __future__ import annotations

from collections.abc import Iterator

from training.sources import Corpus
from training.vocab_choice import UNKNOWN

SEPARATOR = "\u241e"
DOCUMENT_MODES: tuple[str, ...] = ("file", "line")

Chunks = Iterator[tuple[str, int]]  # (text, input bytes read), as Corpus.chunks


def text_chunks(corpus: Corpus, chunk_chars: int, documents: str | None) -> Chunks:
    """The text `prepare` encodes: the corpus as it is (documents None), or its documents
    joined as above ("file" or "line")."""
    if documents is None:
        return corpus.chunks(chunk_chars)
    if documents == "file":
        return file_documents(corpus, chunk_chars)
    if documents == "line":
        return line_documents(corpus, chunk_chars)
    raise ValueError(f"documents must be one of {', '.join(DOCUMENT_MODES)}, got {documents!r}")


def file_documents(corpus: Corpus, chunk_chars: int) -> Chunks:
    """Each source (file, stdin, built-in corpus) a document, the separator before each."""
    for source in corpus.sources:
        started = False
        for text, nbytes in source.chunks(chunk_chars):
            if text and not started:
                yield SEPARATOR, 0
                started = True
            yield text.replace(SEPARATOR, UNKNOWN), nbytes


def line_documents(corpus: Corpus, chunk_chars: int) -> Chunks:
    """Each non-empty line a document. Lines run across chunks, so the state between chunks
    is whether the current line has started (its separator written) and whether the chunk
    ended in a "\\r" that may be half of a "\\r\\n"."""
    in_line = False
    pending_cr = False
    for text, nbytes in corpus.chunks(chunk_chars):
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
