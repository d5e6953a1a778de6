"""Text normalisation shared by training and the service, so that a prime reaches a model in
the form its training text had.

Line endings: `prepare` turns CRLF ("\\r\\n") and a lone CR ("\\r") into LF ("\\n") by default
(NEWLINES_LF), as Python's text mode, nanoGPT and most char-RNN tools do, so a Windows file
adds no "\\r" to the vocabulary and its per-character loss compares with other tools'. With
NEWLINES_KEEP the bytes are kept as they are. The mode is recorded in the prepared data's
meta.json and in the checkpoint's `info["newlines"]`.
"""

from __future__ import annotations

from collections.abc import Container, Mapping

NEWLINES_LF = "lf"  # CRLF and lone CR become LF
NEWLINES_KEEP = "keep"  # line endings kept as they are
NEWLINE_MODES: tuple[str, ...] = (NEWLINES_LF, NEWLINES_KEEP)


def normalize_newlines(text: str) -> str:
    """`text` with every CRLF and every lone CR turned into LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def newline_mode(info: Mapping[str, object], chars: Container[str]) -> str:
    """A checkpoint's newline mode: what its `info` records, or for a checkpoint that
    records none, "keep" if its vocabulary holds "\r" (it was trained on it), else "lf"."""
    recorded = info.get("newlines")
    if recorded in NEWLINE_MODES:
        return str(recorded)
    return NEWLINES_KEEP if "\r" in chars else NEWLINES_LF


def as_read(text: str, mode: str) -> str:
    """`text` as a model of this newline mode reads it."""
    return normalize_newlines(text) if mode == NEWLINES_LF else text
