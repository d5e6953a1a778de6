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
Compiling is pure Python and a few patterns blow up (`(a|b)*a(a|b){20}` has 2^20 states,
`a{3000}` takes a second to parse), so the whole of it, parsing and the table, runs under
one deadline of CPU time and one state cap, and a bad pattern is a ParamError naming it.
The table costs O(transitions) to find the kept states and O(S × V) to lay out, S at most
the cap. The service compiles in worker processes (model/decoding/regex_workers.py).
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
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
    compile_seconds: float = 1.0  # CPU time of one compile, parsing and table together
    compile_workers: int = 2  # compiles running at once, per model (each a process)

    def __post_init__(self) -> None:
        if self.max_pattern_chars < 1 or self.max_states < 1 or not self.compile_seconds > 0:
            raise ValueError("regex limits must be positive")
        if not 1 <= self.compile_workers <= 64:
            raise ValueError("compile_workers must be 1 to 64")


class _Deadline(BaseException):  # not an Exception: no `except Exception` of a parser stops it
    pass


YIELD_SECONDS = 0.002  # a compile gives the GIL away this often (see _deadline)
CHECK_EVERY = 4096  # loop iterations of the table between two looks at the clock


@contextmanager
def _deadline(seconds: float) -> Iterator[Callable[[], None]]:
    """Abort pure-Python work in this thread after `seconds` of its CPU time: a trace
    function, called at every Python function call, raises once the time is up, and the
    check it yields does the same where a loop calls no Python function. It also gives the
    GIL away every YIELD_SECONDS, so a compile in a thread of a busy process slows the
    others little."""
    end = time.thread_time() + seconds
    next_yield = time.monotonic() + YIELD_SECONDS

    def check() -> None:
        if time.thread_time() > end:
            raise _Deadline

    def trace(frame: object, event: str, arg: object) -> None:
        nonlocal next_yield
        now = time.monotonic()
        if now > next_yield:
            time.sleep(0)  # lets a waiting thread take the GIL
            next_yield = time.monotonic() + YIELD_SECONDS
            check()

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        yield check
    finally:
        sys.settrace(previous)


def compile_regex(pattern: str, vocab: Vocabulary, limits: RegexLimits) -> Automaton:
    """The pattern's automaton over `vocab`. Raises ParamError("regex") when the pattern is
    too long, cannot be parsed, is too complex (past `limits.compile_seconds` of CPU time
    or `limits.max_states`), or matches no string of the vocabulary's characters."""
    check_length(pattern, limits)
    shown = pattern if len(pattern) <= 40 else pattern[:37] + "..."
    try:
        with _deadline(limits.compile_seconds) as check:
            try:
                fsm = interegular.parse_pattern(pattern).to_fsm()
            except Exception as error:  # interegular's InvalidSyntax, Unsupported, ...
                reason = " ".join(str(error).split()) or type(error).__name__
                raise ParamError(
                    "regex", f"cannot compile {shown!r}: {reason}", "regex_invalid"
                ) from None
            return _table(fsm, vocab, shown, limits.max_states, check)
    except _Deadline:
        raise ParamError(
            "regex",
            f"{shown!r} is too complex to compile in {limits.compile_seconds:g} s",
            "regex_too_complex",
        ) from None


def check_length(pattern: str, limits: RegexLimits) -> None:
    """ParamError("regex") for a pattern of no characters or past the limit's."""
    if not 1 <= len(pattern) <= limits.max_pattern_chars:
        raise ParamError(
            "regex",
            f"a pattern has 1 to {limits.max_pattern_chars} characters",
            "string_length",
        )


def _table(
    fsm: interegular.FSM,
    vocab: Vocabulary,
    shown: str,
    max_states: int,
    check: Callable[[], None],
) -> Automaton:
    symbols = [fsm.alphabet[char] for char in vocab.chars]  # (V,): each char's symbol class
    usable = set(symbols)
    moves: dict[object, dict[int, object]] = fsm.map
    # Reachable from the start through the vocabulary's characters (the "é" branch of
    # `é|ab` is not), remembering who leads where for the walk back.
    start = fsm.initial
    reachable = {start}
    sources: dict[object, list[object]] = {}
    todo = [start]
    steps = 0
    while todo:
        state = todo.pop()
        for symbol, target in moves.get(state, {}).items():
            steps += 1
            if steps % CHECK_EVERY == 0:
                check()
            if symbol not in usable:
                continue
            sources.setdefault(target, []).append(state)
            if target not in reachable:
                reachable.add(target)
                todo.append(target)
    # ...and live: a final state is reachable from them.
    live = {state for state in fsm.finals if state in reachable}
    todo = list(live)
    while todo:
        for source in sources.get(todo.pop(), ()):
            steps += 1
            if steps % CHECK_EVERY == 0:
                check()
            if source not in live:
                live.add(source)
                todo.append(source)
    if start not in live:
        raise ParamError(
            "regex",
            f"no text of this model's characters matches {shown!r}",
            "regex_unmatchable",
        )
    if len(live) > max_states:
        raise ParamError(
            "regex",
            f"{shown!r} needs {len(live)} states; the limit is {max_states}",
            "regex_too_complex",
        )
    # Numbered in the order a walk from the start meets them, characters in the
    # vocabulary's order: the same table whatever numbers interegular gave (they vary with
    # the process's hash seed). State 0 is the start.
    rank = {}
    for index, symbol in enumerate(symbols):
        rank.setdefault(symbol, index)
    number = {start: 0}
    kept = [start]
    for visited, state in enumerate(kept):  # `kept` grows as it goes: a breadth-first walk
        ranked = [
            (rank[symbol], target)
            for symbol, target in moves.get(state, {}).items()
            if symbol in rank
        ]
        for _, target in sorted(ranked):
            if target in live and target not in number:
                number[target] = len(kept)
                kept.append(target)
        if visited % CHECK_EVERY == 0:
            check()
    width = max(fsm.alphabet.by_transition) + 1 if fsm.alphabet.by_transition else 1
    raw = np.full((len(kept), width), -1, np.int32)  # (S, symbol classes)
    for index, state in enumerate(kept):
        for symbol, target in moves.get(state, {}).items():
            row = number.get(target)
            if row is not None:
                raw[index, symbol] = row
        if index % CHECK_EVERY == 0:
            check()
    next_state = np.ascontiguousarray(raw[:, np.array(symbols, np.int64)])  # (S, V)
    final = np.array([state in fsm.finals for state in kept], np.bool_)
    return Automaton(next_state, final, (next_state >= 0).any(axis=1))


class RegexCache:
    """Compiled automata of one vocabulary, least recently used dropped past `max_bytes`,
    and the patterns that were refused (the last REFUSED_KEPT), so a pattern compiles once
    however many requests send it. Thread-safe; its lock is held for a dictionary's work,
    never while compiling, so a cached pattern never waits for a compile."""

    REFUSED_KEPT = 1024

    def __init__(self, vocab: Vocabulary, limits: RegexLimits, max_bytes: int = 64 << 20):
        self.vocab = vocab
        self.limits = limits
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, Automaton] = OrderedDict()
        self._refused: OrderedDict[str, ParamError] = OrderedDict()
        self._bytes = 0
        self._lock = Lock()

    def lookup(self, pattern: str) -> Automaton | None:
        """The pattern's automaton if it is cached, else None; raises its ParamError if it
        was refused."""
        with self._lock:
            found = self._entries.get(pattern)
            if found is not None:
                self._entries.move_to_end(pattern)
                return found
            refused = self._refused.get(pattern)
        if refused is not None:
            raise refused
        return None

    def store(self, pattern: str, automaton: Automaton) -> None:
        with self._lock:
            if pattern not in self._entries:
                self._entries[pattern] = automaton
                self._bytes += automaton.nbytes
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes

    def refuse(self, pattern: str, error: ParamError) -> None:
        with self._lock:
            self._refused[pattern] = error
            while len(self._refused) > self.REFUSED_KEPT:
                self._refused.popitem(last=False)

    def get(self, pattern: str) -> Automaton:
        """The pattern's automaton, compiled in this thread if it is not cached (two
        threads asking for the same new pattern may both compile it). Raises ParamError."""
        found = self.lookup(pattern)
        if found is not None:
            return found
        try:
            automaton = compile_regex(pattern, self.vocab, self.limits)
        except ParamError as error:
            self.refuse(pattern, error)
            raise
        self.store(pattern, automaton)
        return automaton
