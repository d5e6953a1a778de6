"""Newlines in text a model reads: Windows (CRLF) and old Mac (CR) line ends become "\\n",
as Python's text mode, nanoGPT and most char-RNN tools read text, unless a corpus was
prepared keeping its bytes. The same rule applies to a corpus at `prepare` and to a prime
at the service, so a prime typed on Windows reads as the training text did.
"""

from __future__ import annotations

NEWLINES_LF = "lf"  # CRLF and lone CR read as LF (the default)
NEWLINES_KEEP = "keep"  # every character as it is in the file
NEWLINE_MODES: tuple[str, ...] = (NEWLINES_LF, NEWLINES_KEEP)


def normalize_newlines(text: str) -> str:
    """`text` with CRLF and lone CR turned into LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")
