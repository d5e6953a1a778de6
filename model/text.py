"""Text normalisation shared by training and the service, so that a prime reaches a model in
the form its training text had.

Line endings: `prepare` turns CRLF ("\\r\\n") and a lone CR ("\\r") into LF ("\\n") by default
(NEWLINES_LF), as Python's text mode, nanoGPT and most char-RNN tools do, so a Windows file
adds no "\\r" to the vocabulary and its per-character loss compares with other tools'. With
NEWLINES_KEEP the bytes are kept as they are. The mode is recorded in the prepared data's
meta.json and in the checkpoint's `info["newlines"]`.
"""

from __future__ import annotations

NEWLINES_LF = "lf"  # CRLF and lone CR become LF
NEWLINES_KEEP = "keep"  # line endings kept as they are
NEWLINE_MODES: tuple[str, ...] = (NEWLINES_LF, NEWLINES_KEEP)


def normalize_newlines(text: str) -> str:
    """`text` with every CRLF and every lone CR turned into LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")
