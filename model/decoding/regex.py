"""Regular expressions as automata over a model's characters: output that must match.

A pattern is parsed and made deterministic by interegular (the library outlines built
on), then laid out as a table over the vocabulary, keeping only the states from which a
match can still be completed:

    next   (S, V) int32   the state after writing character j, or -1 when no match could
                          follow (the sampler bans that character: one lookup per step)
    final  (S,) bool      a match ends here
    open   (S,) bool      some character may follow (generation ends in a final state that
                          is not open: finish_reason "regex")

State 0 is the start. Over characters this is exact; there are no token boundaries to fight.
Compiling is pure Python and a few patterns blow up (`(a|b)*a(a|b){20}` has 2^20 states),
so it runs under a deadline and a state cap, and a bad pattern is a ParamError naming it.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from threading import Lock

import interegular
import numpy as np

from model.decoding.automaton import Automaton
from model.decoding.params import ParamError
from model.vocab import Vocabulary


@dataclass(frozen=True)
class RegexLimits:
    max_pattern_chars: int = 256
    max_states: int = 4096
    compile_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.max_pattern_chars < 1 or self.max_states < 1 or not self.compile_seconds > 0:
            raise ValueError("regex limits must be positive")


class _Deadline(Exception):
    pass


YIELD_SECONDS = 0.002  # a compile gives the GIL away this often (see _deadline)


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Abort pure-Python work in this thread after `seconds` of its CPU time: a trace
    function, called at every Python function call, raises once the time is up. It also
    gives the GIL away every YIELD_SECONDS, so a long compile in a worker thread slows
    the event loop and the decoding thread little."""
    end = time.thread_time() + seconds
    next_yield = time.monotonic() + YIELD_SECONDS

    def trace(frame: object, event: str, arg: object) -> None:
        nonlocal next_yield
        now = time.monotonic()
        if now > next_yield:
            time.sleep(0)  # lets a waiting thread take the GIL
            next_yield = time.monotonic() + YIELD_SECONDS
            if time.thread_time() > end:
                raise _Deadline

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(previous)


def compile_regex(pattern: str, vocab: Vocabulary, limits: RegexLimits) -> Automaton:
    """The pattern's automaton over `vocab`. Raises ParamError("regex") when the pattern is
    too long, cannot be parsed, is too complex, or matches no string of the vocabulary's
    characters."""
    shown = pattern if len(pattern) <= 40 else pattern[:37] + "..."
    if not 1 <= len(pattern) <= limits.max_pattern_chars:
        raise ParamError(
            "regex",
            f"a pattern has 1 to {limits.max_pattern_chars} characters",
            "string_length",
        )
    try:
        with _deadline(limits.compile_seconds):
            fsm = interegular.parse_pattern(pattern).to_fsm()
    except _Deadline:
        raise ParamError(
            "regex",
            f"{shown!r} is too complex to compile in {limits.compile_seconds:g} s",
            "regex_too_complex",
        ) from None
    except Exception as error:  # interegular's InvalidSyntax, Unsupported, ...
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ParamError("regex", f"cannot compile {shown!r}: {reason}", "regex_invalid") from None
    return _table(fsm, vocab, shown, limits.max_states)


def _table(fsm: interegular.FSM, vocab: Vocabulary, shown: str, max_states: int) -> Automaton:
    symbols = np.array([fsm.alphabet[char] for char in vocab.chars], np.int64)  # (V,)
    width = max(fsm.alphabet.by_transition) + 1 if fsm.alphabet.by_transition else 1
    states = list(fsm.states)
    number = {state: index for index, state in enumerate(states)}
    raw = np.full((len(states), width), -1, np.int64)
    for state, moves in fsm.map.items():
        for symbol, target in moves.items():
            raw[number[state], symbol] = number[target]
    by_char = raw[:, symbols]  # (states, V): the next state after each character
    # Live states: a final state is reachable from them through the vocabulary's chars.
    live = np.zeros(len(states), np.bool_)
    live[[number[state] for state in fsm.finals]] = True
    while True:
        reaches = live | ((by_char >= 0) & live[np.maximum(by_char, 0)]).any(axis=1)
        if (reaches == live).all():
            break
        live = reaches
    start = number[fsm.initial]
    # ...and reachable from the start through them: a pattern's states no text of this
    # vocabulary leads to (the "é" branch of `é|ab`) are dropped too.
    reachable = np.zeros(len(states), np.bool_)
    reachable[start] = True
    while True:
        targets = by_char[reachable & live]
        grown = reachable.copy()
        grown[targets[(targets >= 0)]] = True
        if (grown == reachable).all():
            break
        reachable = grown
    live &= reachable
    if not live[start]:
        raise ParamError(
            "regex",
            f"no text of this model's characters matches {shown!r}",
            "regex_unmatchable",
        )
    kept = np.flatnonzero(live)
    kept = np.concatenate([[start], kept[kept != start]])  # state 0 is the start
    if len(kept) > max_states:
        raise ParamError(
            "regex",
            f"{shown!r} needs {len(kept)} states; the limit is {max_states}",
            "regex_too_complex",
        )
    renumber = np.full(len(states), -1, np.int64)
    renumber[kept] = np.arange(len(kept))
    table = by_char[kept]
    next_state = np.where(table >= 0, renumber[np.maximum(table, 0)], -1).astype(np.int32)
    final = np.zeros(len(kept), np.bool_)
    final[renumber[[number[state] for state in fsm.finals if live[number[state]]]]] = True
    return Automaton(next_state, final, (next_state >= 0).any(axis=1))


class RegexCache:
    """Compiled automata of one vocabulary, least recently used dropped past `max_bytes`,
    and the patterns that failed (the last REFUSED_KEPT), so a pattern compiles once
    however many requests send it. Thread-safe; one compile runs at a time, so requests
    full of costly patterns take one thread's time at most."""

    REFUSED_KEPT = 1024

    def __init__(self, vocab: Vocabulary, limits: RegexLimits, max_bytes: int = 64 << 20):
        self.vocab = vocab
        self.limits = limits
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Automaton] = OrderedDict()
        self._refused: OrderedDict[str, ParamError] = OrderedDict()
        self._bytes = 0
        self._lock = Lock()
        self._compiling = Lock()

    def get(self, pattern: str) -> Automaton:
        with self._compiling:
            with self._lock:
                found = self._entries.get(pattern)
                if found is not None:
                    self._entries.move_to_end(pattern)
                    return found
                refused = self._refused.get(pattern)
                if refused is not None:
                    raise refused
            try:
                automaton = compile_regex(pattern, self.vocab, self.limits)
            except ParamError as error:
                with self._lock:
                    self._refused[pattern] = error
                    while len(self._refused) > self.REFUSED_KEPT:
                        self._refused.popitem(last=False)
                raise
        with self._lock:
            if pattern not in self._entries:
                self._entries[pattern] = automaton
                self._bytes += automaton.nbytes
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
        return automaton
