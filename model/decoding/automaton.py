"""Compiled regular expressions as tables, and the pool that holds a decoder's tables.

An `Automaton` is what model/decoding/regex.py compiles a pattern into; it lives here,
apart from the compiler, so that sampling parameters can name it without importing the
compiler (which imports them for its errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True, eq=False)
class Automaton:
    next: np.ndarray  # (S, V) int32
    final: np.ndarray  # (S,) bool
    open: np.ndarray  # (S,) bool

    @property
    def states(self) -> int:
        return len(self.final)

    @property
    def nbytes(self) -> int:
        return self.next.nbytes + self.final.nbytes + self.open.nbytes


class AutomatonTables(NamedTuple):
    """A pool's tables as the compiled sampler reads them (S: the pool's states)."""

    next: np.ndarray  # (S, V) int32: the state after each character, -1: no match follows
    final: np.ndarray  # (S,) bool: a match ends here
    open: np.ndarray  # (S,) bool: some character may follow


class AutomatonPool:
    """The automata of a decoder's rows in one table, so the compiled sampler reads a
    row's allowed characters with one lookup: a row's regex state is a global state index,
    its automaton's offset plus its own state. Tables are reference-counted by row and the
    pool is rebuilt without the unused ones when they take over half of it."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._offsets: dict[int, tuple[Automaton, int, int]] = {}  # id → (automaton, offset, rows)
        self._build([])

    def _build(self, automata: list[Automaton]) -> None:
        tables = [np.full((1, self.vocab_size), -1, np.int32)]  # state 0 of the pool: unused
        finals, opens = [np.zeros(1, np.bool_)], [np.zeros(1, np.bool_)]
        offset = 1
        offsets = {}
        for automaton in automata:
            tables.append(automaton.next + np.where(automaton.next >= 0, offset, 0))
            finals.append(automaton.final)
            opens.append(automaton.open)
            rows = self._offsets[id(automaton)][2] if id(automaton) in self._offsets else 0
            offsets[id(automaton)] = (automaton, offset, rows)
            offset += automaton.states
        self.next = np.ascontiguousarray(np.concatenate(tables).astype(np.int32))
        self.final = np.concatenate(finals)
        self.open = np.concatenate(opens)
        self._offsets = offsets

    @property
    def tables(self) -> AutomatonTables:
        return AutomatonTables(self.next, self.final, self.open)

    def acquire(self, automaton: Automaton) -> int:
        """A row starts with `automaton`: → its start state in the pool."""
        entry = self._offsets.get(id(automaton))
        if entry is None:
            self._build([*(a for a, _, _ in self._offsets.values()), automaton])
            entry = self._offsets[id(automaton)]
        self._offsets[id(automaton)] = (automaton, entry[1], entry[2] + 1)
        return entry[1]

    def release(self, automaton: Automaton) -> None:
        entry = self._offsets[id(automaton)]
        self._offsets[id(automaton)] = (automaton, entry[1], entry[2] - 1)

    def compact(self, states: np.ndarray) -> None:
        """Drop unused automata when they fill over half the pool; `states` (rows' global
        regex states, -1 for none) are renumbered in place."""
        if not self._offsets:  # no automaton at all: every step of a regex-free decoder
            return
        used = [(a, offset) for a, offset, rows in self._offsets.values() if rows > 0]
        if 2 * sum(a.states for a, _ in used) + 1 >= len(self.final):
            return
        old = {id(a): offset for a, offset in used}
        counts = {id(a): rows for a, _, rows in self._offsets.values() if rows > 0}
        self._offsets = {id(a): (a, 0, counts[id(a)]) for a, _ in used}
        self._build([a for a, _ in used])
        original = states.copy()
        for automaton, _ in used:
            start = old[id(automaton)]
            inside = (original >= start) & (original < start + automaton.states)
            states[inside] = original[inside] + self._offsets[id(automaton)][1] - start
