"""model/decoding/regex_workers.py: a regex compiled in a process of its own gives the
same automaton as in this one, refusals come back as ParamErrors, and a worker that does
not answer in time is killed and replaced."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from model.decoding.params import ParamError
from model.decoding.regex import RegexLimits, compile_regex
from model.decoding.regex_workers import RegexWorker, WorkerTimeout, _automaton, wall_seconds

LIMITS = RegexLimits()


@pytest.fixture
def worker() -> Iterator[RegexWorker]:
    worker = RegexWorker()
    yield worker
    worker.close()


def test_a_worker_compiles_what_this_process_would(worker, vocab):
    for pattern in ["[a-h ]+", "(ab|cd)e", "a[bc]*d|e", "a{50}"]:
        here = compile_regex(pattern, vocab, LIMITS)
        there = worker.compile(pattern, vocab.chars, LIMITS)
        for name in ("next", "final", "open"):
            assert np.array_equal(getattr(here, name), getattr(there, name)), (pattern, name)
        assert there.next.dtype == np.int32 and there.next.flags.c_contiguous
    first = worker.pid
    worker.compile("b+", vocab.chars, LIMITS)
    assert worker.pid == first  # one process, many compiles


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [("(ab", "regex_invalid"), ("é+", "regex_unmatchable"), ("", "string_length")],
)
def test_refusals_come_back_as_param_errors(worker, vocab, pattern, kind):
    with pytest.raises(ParamError) as raised:
        worker.compile(pattern, vocab.chars, LIMITS)
    assert raised.value.field == "regex" and raised.value.kind == kind
    assert worker.compile("a", vocab.chars, LIMITS).states == 2  # still serving


def test_the_cpu_deadline_holds_in_the_worker(worker, vocab):
    limits = RegexLimits(compile_seconds=0.2)
    with pytest.raises(ParamError) as raised:
        worker.compile("(a|b)*a(a|b){20}", vocab.chars, limits)  # 2^20 states
    assert raised.value.kind == "regex_too_complex" and "0.2 s" in raised.value.message


def test_a_worker_that_does_not_answer_is_killed_and_replaced(worker, vocab):
    limits = RegexLimits(compile_seconds=0.01)  # wall limit: 1.05 s
    worker.compile("a", vocab.chars, limits)
    stopped = worker.pid
    assert stopped is not None
    os.kill(stopped, signal.SIGSTOP)  # it will never answer
    started = time.monotonic()
    with pytest.raises(WorkerTimeout):
        worker.compile("b", vocab.chars, limits)
    assert wall_seconds(limits) <= time.monotonic() - started < wall_seconds(limits) + 2
    with pytest.raises(ProcessLookupError):
        os.kill(stopped, 0)  # killed and reaped
    assert worker.compile("b", vocab.chars, limits).states == 2
    assert worker.pid != stopped


def test_a_worker_that_dies_is_replaced(worker, vocab):
    worker.compile("a", vocab.chars, LIMITS)
    gone = worker.pid
    assert gone is not None
    os.kill(gone, signal.SIGKILL)
    time.sleep(0.1)
    assert worker.compile("a", vocab.chars, LIMITS).states == 2  # a new one
    assert worker.pid != gone
    # Dead in the middle of a compile: that compile fails, the next one is served.
    dying = worker.pid
    assert dying is not None
    threading.Timer(0.2, os.kill, (dying, signal.SIGKILL)).start()
    with pytest.raises(RuntimeError, match="regex worker failed"):
        worker.compile("(a|b)*a(a|b){20}", vocab.chars, RegexLimits(compile_seconds=30))
    assert worker.compile("a", vocab.chars, LIMITS).states == 2


@pytest.mark.parametrize(
    "arrays",
    [
        {"next": np.zeros((2, 3), np.int32), "final": np.zeros(2, bool), "open": np.zeros(2, bool)},
        {"next": np.zeros((2, 4), np.int64), "final": np.zeros(2, bool), "open": np.zeros(2, bool)},
        {"next": np.zeros((2, 4), np.int32), "final": np.zeros(2, bool), "open": np.zeros(3, bool)},
        {"next": np.zeros((2, 4), np.int32), "final": np.zeros(2, int), "open": np.zeros(2, bool)},
    ],
)
def test_tables_of_the_wrong_shape_are_refused(arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with pytest.raises(RuntimeError, match="wrong shape"):
        _automaton(buffer.getvalue(), vocab_size=4)


def test_answers_are_never_unpickled():
    buffer = io.BytesIO()
    objects = np.array([object()], dtype=object)
    np.savez(buffer, next=objects, final=objects, open=objects)
    with pytest.raises(ValueError, match="pickle"):
        _automaton(buffer.getvalue(), vocab_size=1)
