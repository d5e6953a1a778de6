"""What one request has produced so far: its characters, the part of them that can be
shown, their log-probabilities, and how it ended.

Written by the decoding thread, read by another (an HTTP handler) without a lock: the
lists only grow (an append or extend is atomic in CPython) and `released` only moves
forward after the characters it covers are in place, so a reader always sees a
consistent prefix.

Characters that may begin a stop string are held back until they cannot (`held`), and a
stop string, once complete, is never released: a stream never shows text that later turns
out to belong to a stop string.

Log-probabilities are kept as records of numbers (ROW_WIDTH float64 per character, appended
by the engine as slices of the step's bytes), and read out as arrays: a stream of
logprobs then costs no Python object per value on either thread, and orjson writes the
arrays directly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from model.decoding.params import MAX_LOGPROBS

# A character's row in a LogprobBuffer: its id, its logprob, then the MAX_LOGPROBS
# likeliest ids and their logprobs (ids as float64: exact below 2**53).
ID, CHOSEN, TOP_IDS, TOP_LOGPROBS = 0, 1, 2, 2 + MAX_LOGPROBS
ROW_WIDTH = 2 + 2 * MAX_LOGPROBS
RECORD_BYTES = 8 * ROW_WIDTH


@dataclass(frozen=True)
class CharLogprob:
    """A character's log-probability (natural log) under the network, and the likeliest
    characters at that position with theirs (ids), most likely first."""

    id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True, eq=False)
class Logprobs:
    """Log-probabilities of a run of N characters, as arrays (copies: the reader's own)."""

    ids: np.ndarray  # (N,) int64: the characters
    chosen: np.ndarray  # (N,) float64: their log-probabilities
    top_ids: np.ndarray  # (N, k) int64: the k likeliest, most likely first
    top_logprobs: np.ndarray  # (N, k) float64

    @classmethod
    @functools.cache
    def empty(cls, count: int = 0) -> Logprobs:
        """No characters (one shared object per width: every chunk of a request without
        logprobs carries one; its arrays are read-only)."""
        columns = (
            np.zeros(0, np.int64),
            np.zeros(0),
            np.zeros((0, count), np.int64),
            np.zeros((0, count)),
        )
        for column in columns:
            column.setflags(write=False)
        return cls(*columns)

    def __len__(self) -> int:
        return len(self.ids)

    def entries(self) -> list[CharLogprob]:
        """The same, an object per character (for readers that want one)."""
        return [
            CharLogprob(char, chosen, tuple(zip(ids, logprobs, strict=True)))
            for char, chosen, ids, logprobs in zip(
                self.ids.tolist(),
                self.chosen.tolist(),
                self.top_ids.tolist(),
                self.top_logprobs.tolist(),
                strict=True,
            )
        ]


class LogprobBuffer:
    """Log-probabilities as they are made: one ROW_WIDTH record of float64 per character,
    appended as bytes. Written by one thread and read by another without a lock: a record
    is complete before the reader may ask for it (RowOutput.released), and appending to or
    slicing a bytearray is one step under the GIL. The bytearray grows as it is written
    (amortised), so a request's length reserves nothing, and a request that asks for no
    logprobs holds an empty one."""

    def __init__(self) -> None:
        self._bytes = bytearray()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def append(self, records: bytes) -> None:
        """Characters' records: RECORD_BYTES of float64 each, laid out as ROW_WIDTH says."""
        self._bytes += records
        self._length += len(records) // RECORD_BYTES

    def slice(self, start: int, end: int, count: int) -> Logprobs:
        """Characters start..end (clipped to what is written), with `count` alternatives."""
        end = min(end, self._length)
        raw = self._bytes[start * RECORD_BYTES : end * RECORD_BYTES]  # the reader's copy
        rows = np.frombuffer(raw).reshape(-1, ROW_WIDTH)  # (N, ROW_WIDTH)
        return Logprobs(
            rows[:, ID].astype(np.int64),
            rows[:, CHOSEN].copy(),
            rows[:, TOP_IDS : TOP_IDS + count].astype(np.int64),
            rows[:, TOP_LOGPROBS : TOP_LOGPROBS + count].copy(),
        )

    def read(self, count: int) -> Logprobs:
        """Everything written so far."""
        return self.slice(0, self._length, count)


class RowOutput:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.logprobs = LogprobBuffer()  # one per generated char, when asked for
        self.prompt_logprobs = LogprobBuffer()  # one per prime char after the first
        self.released = 0  # ids[:released] can be shown
        self.finish_reason: str | None = None  # "length", "stop" or "regex" once ended
        self.regex_complete: bool | None = None  # with a regex: is the output a whole match

    def extend(self, char_ids: list[int], held: int) -> None:
        """More characters (their logprobs, if any, already in `logprobs`); the last `held`
        of them may begin a stop string. (Characters drawn one at a time never hold back
        fewer than they did before, so the last draw's `held` covers those before it.)"""
        self.ids.extend(char_ids)
        self.released = max(self.released, len(self.ids) - held)

    def finish(self, reason: str, stop_length: int = 0) -> None:
        """The end: everything is released but a stop string (its `stop_length` chars)."""
        self.released = len(self.ids) - stop_length
        self.finish_reason = reason
