"""What one request has produced so far: its characters, the part of them that can be
shown, their log-probabilities, and how it ended.

Written by the decoding thread, read by another (an HTTP handler) without a lock: the
lists only grow (an append is atomic in CPython) and `released` only moves forward after
the characters it covers are in place, so a reader always sees a consistent prefix.

Characters that may begin a stop string are held back until they cannot (`held`), and a
stop string, once complete, is never released: a stream never shows text that later turns
out to belong to a stop string.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CharLogprob:
    """A character's log-probability (natural log) under the network, and the likeliest
    characters at that position with theirs (ids), most likely first."""

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


class RowOutput:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.logprobs: list[CharLogprob] = []  # one per generated char, when asked for
        self.prompt_logprobs: list[CharLogprob] = []  # one per prime char after the first
        self.released = 0  # ids[:released] can be shown
        self.finish_reason: str | None = None  # "length", "stop" or "regex" once ended
        self.regex_complete: bool | None = None  # with a regex: is the output a whole match

    def append(self, char_id: int, held: int, logprob: CharLogprob | None = None) -> None:
        """One more character; the last `held` characters may begin a stop string."""
        self.ids.append(char_id)
        if logprob is not None:
            self.logprobs.append(logprob)
        self.released = max(self.released, len(self.ids) - held)

    def finish(self, reason: str, stop_length: int = 0) -> None:
        """The end: everything is released but a stop string (its `stop_length` chars)."""
        self.released = len(self.ids) - stop_length
        self.finish_reason = reason
