"""Stop sequences over a stream of text chunks: emit everything before the first one.

A sequence can straddle two chunks ("ROM" + "EO:"), so the scanner holds back the longest
tail that could still grow into one, and releases it once it cannot (or at the end):

    stops=["\\n\\n"]   feed("ab\\n") -> "ab"   (holds "\\n")   feed("c") -> "\\nc"
                     feed("\\n")   -> ""     (holds "\\n")   feed("\\nx") -> ""   stopped
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stop for stop in stops if stop)
        self.stopped = False
        self._held = ""

    def feed(self, chunk: str) -> str:
        """The text that can be emitted now; sets `stopped` once a stop sequence appears
        (the sequence and everything after it are dropped)."""
        if self.stopped:
            return ""
        text = self._held + chunk
        found = [index for stop in self.stops if (index := text.find(stop)) >= 0]
        if found:
            self.stopped = True
            self._held = ""
            return text[: min(found)]
        hold = self._partial_stop_at_end(text)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold]

    def flush(self) -> str:
        """What is held back, once the text has ended without a stop sequence."""
        held, self._held = self._held, ""
        return held

    def _partial_stop_at_end(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop sequence."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
