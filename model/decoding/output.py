"""What one request has produced so far: its characters, the part of them that can be
shown, their log-probabilities, and how it ended.

Written by the decoding thread, read by another (an HTTP handler) without a lock: the
lists only grow (an append is atomic in CPython) and `released` only moves forward after
the characters it covers are in place, so a reader always sees a consistent prefix.

Characters that may begin a stop string are held back until they cannot (`held`), and a
stop string, once complete, is never released: a stream never shows text that later turns
out to belong to a stop string.

Log-probabilities are kept as columns (one list per field), the way they are read out in
bulk and sent, rather than as an object per character.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CharLogprob:
    """A character's log-probability (natural log) under the network, and the likeliest
    characters at that position with theirs (ids), most likely first."""

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass
class Logprobs:
    """Log-probabilities of a run of characters, one entry per character in each list."""

    ids: list[int] = field(default_factory=list)  # the characters
    chosen: list[float] = field(default_factory=list)  # their log-probabilities
    top_ids: list[list[int]] = field(default_factory=list)  # the likeliest, most likely first
    top_logprobs: list[list[float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def append(self, char_id: int, chosen: float, top_ids: list[int], top: list[float]) -> None:
        # The lists grow in this order and a reader slices below the output's `released`
        # (or takes the whole after the end), so it never sees a half-written entry.
        self.top_logprobs.append(top)
        self.top_ids.append(top_ids)
        self.chosen.append(chosen)
        self.ids.append(char_id)

    def slice(self, start: int, end: int) -> Logprobs:
        return Logprobs(
            self.ids[start:end],
            self.chosen[start:end],
            self.top_ids[start:end],
            self.top_logprobs[start:end],
        )

    def entries(self) -> list[CharLogprob]:
        """The same, an object per character (for readers that want one)."""
        return [
            CharLogprob(char, chosen, tuple(zip(ids, logprobs, strict=True)))
            for char, chosen, ids, logprobs in zip(
                self.ids, self.chosen, self.top_ids, self.top_logprobs, strict=True
            )
        ]


class RowOutput:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.logprobs = Logprobs()  # one per generated char, when asked for
        self.prompt_logprobs = Logprobs()  # one per prime char after the first
        self.released = 0  # ids[:released] can be shown
        self.finish_reason: str | None = None  # "length", "stop" or "regex" once ended
        self.regex_complete: bool | None = None  # with a regex: is the output a whole match

    def append(self, char_id: int, held: int) -> None:
        """One more character (its logprobs, if any, already in `logprobs`); the last
        `held` characters may begin a stop string."""
        self.ids.append(char_id)
        self.released = max(self.released, len(self.ids) - held)

    def finish(self, reason: str, stop_length: int = 0) -> None:
        """The end: everything is released but a stop string (its `stop_length` chars)."""
        self.released = len(self.ids) - stop_length
        self.finish_reason = reason
