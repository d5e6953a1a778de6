"""Regexes compiled in a process of their own, so that a compile neither holds the
service's GIL nor outlives its deadline:

    a compile thread of the service                 python -m model.decoding.regex_workers
    RegexWorker.compile(pattern, chars, limits)
        ── size + JSON {pattern, chars, limits} ──▶ compile_regex (its own CPU deadline)
        ◀── size + b"A" + .npz (next, final, open)
         or size + b"E" + JSON {message, kind}     (a ParamError: the pattern is refused)

The worker runs at a lower CPU priority (NICE) than the service, so a compile takes what
the decoding threads and the event loop leave over. Its deadline counts CPU time; the
caller also gives up after `wall_seconds(limits)` of wall time, kills the process (its
memory goes with it) and starts a new one for the next compile. Nothing is pickled: the
answer is JSON or arrays read with allow_pickle=False.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO

import numpy as np

from model.decoding.automaton import Automaton
from model.decoding.params import ParamError
from model.decoding.regex import RegexLimits, compile_regex
from model.vocab import Vocabulary

# Added to the worker's niceness: the lowest priority, a CPU weight of 15 against a service
# thread's 1024. At nice 10 (weight 110) a flood of compiles still took the decoding
# threads' CPU: woken after each step's hand-offs, they waited behind the workers
# (hostile_load's regex flood: 0.56x of quiet chars/s at nice 10, 0.92x at nice 19).
NICE = 19
START_SECONDS = 30.0  # a new worker's imports (numpy, interegular), on a busy machine
SIZE = struct.Struct("<I")  # each message: its length, then its bytes


class WorkerTimeout(RuntimeError):
    """The worker took longer than its wall-clock limit and was killed (a machine too busy
    to give it its CPU time; the pattern itself is stopped by its CPU deadline)."""


def wall_seconds(limits: RegexLimits) -> float:
    """How long a caller waits for one compile: its CPU deadline, stretched for a niced
    worker on a busy machine, plus a second for the round trip."""
    return 5 * limits.compile_seconds + 1.0


class RegexWorker:
    """One worker process, started on first use and again after it is killed. Not
    thread-safe: one compile at a time (the service keeps one worker per compile thread)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def compile(self, pattern: str, chars: tuple[str, ...], limits: RegexLimits) -> Automaton:
        """compile_regex(pattern, Vocabulary(chars), limits) in the worker. Raises its
        ParamError, WorkerTimeout past wall_seconds(limits), RuntimeError when the worker
        fails otherwise."""
        process = self.start()
        request = json.dumps({"pattern": pattern, "chars": chars, "limits": asdict(limits)})
        try:
            _write(process.stdin, request.encode())
            answer = _read(process.stdout, time.monotonic() + wall_seconds(limits))
        except TimeoutError:
            self.close()
            raise WorkerTimeout(
                f"no answer from the regex worker within {wall_seconds(limits):g} s"
            ) from None
        except (OSError, EOFError) as error:
            self.close()
            raise RuntimeError(
                f"the regex worker failed: {error or type(error).__name__}"
            ) from None
        tag, body = answer[:1], answer[1:]
        if tag == b"E":
            refusal = json.loads(body)
            raise ParamError("regex", refusal["message"], refusal["kind"], refusal["ctx"])
        if tag != b"A":
            self.close()
            raise RuntimeError(f"the regex worker answered {tag!r}")
        return _automaton(body, len(chars))

    def close(self) -> None:
        """Stop the worker (killed: it holds nothing that needs a goodbye)."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    stream.close()

    def start(self) -> subprocess.Popen[bytes]:
        """The worker's process, started now if it is not running. Raises RuntimeError
        when it does not start."""
        if self._process is not None and self._process.poll() is None:
            return self._process
        self.close()
        root = str(Path(__file__).resolve().parents[2])  # where `model` is importable from
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        process = subprocess.Popen(
            [sys.executable, "-m", "model.decoding.regex_workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": path},
            start_new_session=True,  # a terminal's Ctrl-C is for the service, which stops it
        )
        self._process = process
        try:
            if _read(process.stdout, time.monotonic() + START_SECONDS) != b"ready":
                raise OSError("unexpected greeting")
        except (TimeoutError, OSError, EOFError) as error:
            self.close()
            raise RuntimeError(f"the regex worker did not start: {error}") from None
        return process


def _write(stream: BinaryIO | None, data: bytes) -> None:
    if stream is None:
        raise OSError("no pipe to the worker")
    stream.write(SIZE.pack(len(data)) + data)
    stream.flush()


def _read(stream: BinaryIO | None, deadline: float) -> bytes:
    """One message from `stream` (a pipe, unbuffered reads), or TimeoutError at
    `deadline` (time.monotonic()); EOFError when the other side is gone."""
    if stream is None:
        raise OSError("no pipe from the worker")
    fd = stream.fileno()

    def exactly(count: int) -> bytes:
        parts, missing = [], count
        while missing:
            left = deadline - time.monotonic()
            wait = None if left == float("inf") else max(left, 0.0)
            if left <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
            part = os.read(fd, min(missing, 1 << 20))
            if not part:
                raise EOFError("the worker exited")
            parts.append(part)
            missing -= len(part)
        return b"".join(parts)

    return exactly(SIZE.unpack(exactly(SIZE.size))[0])


def _automaton(data: bytes, vocab_size: int) -> Automaton:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        next_state, final, open_ = arrays["next"], arrays["final"], arrays["open"]
    states = len(final)
    if (
        next_state.shape != (states, vocab_size)
        or next_state.dtype != np.int32
        or final.dtype != np.bool_
        or open_.shape != (states,)
        or open_.dtype != np.bool_
    ):
        raise RuntimeError("the regex worker answered tables of the wrong shape")
    return Automaton(next_state, final, open_)


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """The worker's loop: a request in, an answer out, until its input ends."""
    _write(answers, b"ready")
    while True:
        try:
            request = json.loads(_read(requests, float("inf")))
        except EOFError:
            return
        limits = RegexLimits(**request["limits"])
        try:
            automaton = compile_regex(
                request["pattern"], Vocabulary(tuple(request["chars"])), limits
            )
        except ParamError as error:
            refusal = {"message": error.message, "kind": error.kind, "ctx": error.ctx}
            _write(answers, b"E" + json.dumps(refusal).encode())
            continue
        buffer = io.BytesIO()
        np.savez(buffer, next=automaton.next, final=automaton.final, open=automaton.open)
        _write(answers, b"A" + buffer.getvalue())


def main() -> None:
    os.nice(NICE)
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to the log, not into an answer
    serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
